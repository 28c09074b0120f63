"""Two conformations, Dragonfly and spibatch side by side with ``num_modes: 2``: who separates them.

    python benchmarks/emc_modes.py [--seeds 1 2] [--frames 1000] [--share 0.35] [--num-div 3] [--out DIR]

A particle of 4 domains on a bent arm (benchmarks/emc_cases.py's generator) and the same particle with
its last domain moved by 30-40 A: each simulated by our simulator on the small set's geometry (64 x 64
pixels, 1000 photons a frame, no fluence jitter, beam stop 6 px), ``share`` of the frames from the
second; the two photons files joined (labels kept).  Both tools then run with the same parameters
(num_div, need_scaling, Dragonfly's automatic beta, beta x2 every 10 iterations, 30 iterations,
two rotating modes, a random start).  Measured per run: the share of frames whose most likely mode is
their conformation (either order of the modes), the occupancy found for the second conformation,
and each mode's CC with its conformation's truth (spibatch.align.align_intensity).  One line per run
to stdout, all in ``DIR/results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emc_cases import GEOMETRIES, run_dragonfly, run_spibatch, write_particle  # noqa: E402


def make_pair(seed: int, frames: int, share: float, folder: Path) -> dict:
    """The two conformations' photons joined into ``folder/photons.h5`` (once); files, labels (D,) and truths."""
    from spibatch.detector import Detector
    from spibatch.io.dragonfly import read_photons, write_photons
    from spibatch.photons import Photons
    from spibatch.sim import SimulationSettings, simulate

    folder.mkdir(parents=True, exist_ok=True)
    geometry = GEOMETRIES["small"]
    detector = Detector.flat(geometry["pixels"], geometry["pixel_size_m"], geometry["distance_m"],
                             geometry["wavelength_m"], beamstop_radius_pixels=6, polarization="x")
    rng = np.random.default_rng([seed, 2])
    counts = [frames - int(round(share * frames)), int(round(share * frames))]
    parts = []
    for k in range(2):
        sub = folder / f"conformation{k}"
        sub.mkdir(exist_ok=True)
        if not (sub / "truth.h5").exists():
            particle_rng = np.random.default_rng([seed, 1])          # the same particle for both ...
            write_particle(sub / "particle.pdb", "arm", 4, particle_rng)
            if k == 1:                                              # ... but the last domain moved
                lines = (sub / "particle.pdb").read_text().splitlines()
                shift = rng.normal(size=3)
                shift *= rng.uniform(30, 40) / np.linalg.norm(shift)
                out = []
                for line in lines:
                    if line.startswith("ATOM") and line[21] == "D":
                        xyz = np.array([float(line[30:38]), float(line[38:46]), float(line[46:54])]) + shift
                        line = f"{line[:30]}{xyz[0]:8.3f}{xyz[1]:8.3f}{xyz[2]:8.3f}{line[54:]}"
                    out.append(line)
                (sub / "particle.pdb").write_text("\n".join(out) + "\n")
            simulate(detector, SimulationSettings(pdb=sub / "particle.pdb", num_patterns=counts[k],
                                                  mean_photons_per_frame=1000, fluence_jitter=0.0, assembly=False,
                                                  seed=seed * 10 + k), sub, show_progress=False)
        parts.append(read_photons(sub / "photons.emc"))
    paths = {"photons": folder / "photons.h5", "detector": folder / "conformation0" / "detector.h5",
             "truths": [folder / f"conformation{k}" / "truth.h5" for k in range(2)]}
    if not paths["photons"].exists():
        write_photons(paths["photons"], Photons.concatenate(parts))
    return {**paths, "labels": np.repeat([0, 1], counts)}


def measure(output: Path, pair: dict, tool: str) -> dict:
    """Mode accuracy, occupancy of conformation 1 and each mode's CC with its truth."""
    import h5py

    from spibatch.align import align_intensity
    from spibatch.detector import Detector
    from spibatch.emc.compare import shell_range
    from spibatch.io.results import read_volume

    with h5py.File(output, "r") as f:
        if tool == "dragonfly":
            volumes, share = f["intens"][()], f["occupancies"][()]
        else:
            volumes, share = f["intensities"][()], f["mode_probabilities"][()]
    share = share / share.sum(axis=1, keepdims=True)
    labels = pair["labels"]
    found = share[:, :2].argmax(axis=1)
    flip = int(np.mean(found == labels) < 0.5)
    r_min, r_max = shell_range(Detector.read(pair["detector"]))
    truths = [read_volume(p, "intensity").astype(np.float64) for p in pair["truths"]]
    cc = [float(align_intensity(volumes[k ^ flip].astype(np.float64), truths[k], r_min, r_max).cc) for k in range(2)]
    return {"accuracy": round(float(np.mean((found ^ flip) == labels)), 4),
            "occupancy_1": round(float(share[:, 1 ^ flip].mean()), 4), "true_occupancy_1": float(labels.mean()),
            "cc_0": round(cc[0], 4), "cc_1": round(cc[1], 4)}


def truth_cc(pair: dict) -> float:
    """How different the two conformations are: the CC of their truths at the best alignment."""
    from spibatch.align import align_intensity
    from spibatch.detector import Detector
    from spibatch.emc.compare import shell_range
    from spibatch.io.results import read_volume

    a, b = (read_volume(p, "intensity").astype(np.float64) for p in pair["truths"])
    return round(float(align_intensity(a, b, *shell_range(Detector.read(pair["detector"]))).cc), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--share", type=float, default=0.35)
    ap.add_argument("--num-div", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("emc-modes"))
    args = ap.parse_args()
    results = []
    for seed in args.seeds:
        pair = make_pair(seed, args.frames, args.share, args.out / f"seed{seed}")
        print(json.dumps({"seed": seed, "cc_between_truths": truth_cc(pair)}), flush=True)
        case = {"photons": pair["photons"], "detector": pair["detector"]}
        for tool in ("dragonfly", "spibatch"):
            work = args.out / f"seed{seed}" / tool
            if tool == "dragonfly":
                run = run_dragonfly(case, work, args.iterations, args.threads, args.num_div, "num_modes = 2\n")
            else:
                run = run_spibatch(case, work, args.iterations, args.threads, args.num_div, {"num_modes": 2})
            row = {"seed": seed, "tool": tool, **measure(run["output"], pair, tool),
                   "s_per_iteration": round(float(np.mean(run["times"])), 2)}
            print(json.dumps(row), flush=True)
            results.append(row)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
