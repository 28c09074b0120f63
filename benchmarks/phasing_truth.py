"""Phasing against a known density: the two correctness bars of the phasing issue.

    python benchmarks/phasing_truth.py 4bed       [--geometry small|medium] [--photons 1e8] [--starts 16] [--out DIR]
    python benchmarks/phasing_truth.py emc-small  [--starts 16] [--out DIR]

4bed: the protein 4BED through our simulator on the geometry of the shared dragonfly-small set
(64 x 64 pixels of 0.512 mm at 300 mm, 6.2 A, beam stop 6 pixels): the true intensity on the
model grid, the beam-stop hole (|q| < 6 voxels) and everything beyond the detector's corner
marked unmeasured (--geometry medium: that set's 150 x 150 detector, beam stop 10), Poisson noise at --photons photons in all (1e8: 100 000 frames of 1 000
photons), phased with the default recipe and --starts starts; FSC of the aligned average with
the simulator's true density.  Bar: FSC >= 0.5 out to 80% of the data's maximum resolution
(the largest shell with at least half its voxels measured).

emc-small: our EMC on ../shared/datasets/dragonfly-small (Dragonfly's config.ini parameters,
30 iterations), its final intensity (cropped to the truth's 91^3 grid) phased; the density
rotated into the truth's frame by the orientation that aligns the EMC intensity with the true
intensity (intensities.bin), then FSC against densityMap.bin (voxel 41.5 A, resampled onto ours).

Prints a JSON summary with the FSC curve; writes the run's files under --out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"


def fsc_summary(density, voxel_m, truth, truth_voxel_m, data_shell: int) -> dict:
    from spibatch.phasing.compare import compare_with_truth

    s = compare_with_truth(density, voxel_m, truth, truth_voxel_m)
    fsc = np.array([v if v is not None else np.nan for v in s["fsc"]])
    limit = int(math.floor(0.8 * data_shell))
    below = [i for i in range(1, limit + 1) if np.isfinite(fsc[i]) and fsc[i] < 0.5]
    return {"cc": round(s["cc"], 4), "inverted": s["inverted"], "fsc": [round(float(v), 3) for v in fsc],
            "fsc_0.5_shell": s["fsc_0.5_radius"], "resolution_0.5_A": _a(s["resolution_0.5_m"]),
            "resolution_0.143_A": _a(s["resolution_0.143_m"]), "data_max_shell": data_shell,
            "data_max_resolution_A": round(fsc.size and (density.shape[0] * voxel_m / data_shell) * 1e10, 2),
            "shell_80pct": limit, "shells_below_0.5_within_80pct": below,
            "bar_met": not below, "voxel_A": round(voxel_m * 1e10, 3)}


def _a(v):
    return None if v is None else round(v * 1e10, 2)


def phase(intensity, dq, starts: int, out: Path, threads: int = 2) -> tuple:
    from spibatch.config import Phasing
    from spibatch.io.results import write_result
    from spibatch.phasing.driver import run_phasing
    from spibatch.phasing.settings import PhasingSettings

    out.mkdir(parents=True, exist_ok=True)
    write_result(out / "intensity.h5", {"intensity": intensity.astype(np.float32)}, {"voxel_size_per_m": dq})
    cfg = Phasing(num_starts=starts, keep_best=max(1, starts // 2), threads=threads)
    start = time.perf_counter()
    paths = run_phasing(out / "intensity.h5", out, PhasingSettings.from_dict(cfg.model_dump()), show_progress=False)
    seconds = time.perf_counter() - start
    from spibatch.io.results import read_result

    data, attrs = read_result(paths["phasing"])
    return data, attrs, seconds, cfg.recipe


def case_4bed(args) -> dict:
    from spibatch.config import from_dragonfly_ini
    from spibatch.sim.scattering import density, intensity, structure_factor
    from spibatch.sim.structure import read_structure

    geometry = from_dragonfly_ini(SHARED / f"dragonfly-{args.geometry}" / "config.ini")
    detector = geometry.detector()
    n, dq = detector.model_size(), float(detector.voxel_size_per_m)
    atoms = read_structure(SHARED / "pdb" / "4BED.pdb")
    factor = structure_factor(atoms, n, dq)
    true_intensity = intensity(factor)
    true_density, density_voxel = density(factor, dq, atoms.radius_m())
    q = np.linalg.norm(detector.q_voxels, axis=1)
    r_corner = float(q.max())
    g = np.indices((n,) * 3) - n // 2
    r = np.sqrt((g ** 2).sum(0))
    measured = (r >= geometry.beamstop_radius_pixels) & (r <= r_corner)
    rng = np.random.default_rng(args.seed)
    scale = args.photons / true_intensity[measured].sum()
    noisy = np.where(measured, rng.poisson(true_intensity * scale), 0).astype(np.float64)
    data, attrs, seconds, recipe = phase(noisy, dq, args.starts, args.out)
    result = fsc_summary(data["density"], attrs["voxel_size_m"], true_density, density_voxel,
                         int(attrs["max_measured_shell"]))
    result.update({"case": "4bed", "geometry": args.geometry, "model_size": n, "photons": args.photons, "beamstop_voxels":
                   geometry.beamstop_radius_pixels, "corner_voxels": round(r_corner, 2), "starts": args.starts,
                   "recipe": recipe, "phasing_s": round(seconds, 1), "prtf_resolution_A": _a(attrs.get("resolution_m")),
                   "final_errors": [round(float(e), 4) for e in data["final_errors"]]})
    return result


def case_emc_small(args) -> dict:
    from spibatch.align import align_intensity, rotate_intensity
    from spibatch.emc.compare import shell_range
    from spibatch.emc.driver import run_emc
    from spibatch.detector import Detector
    from spibatch.emc.executors import InProcess
    from spibatch.emc.settings import BetaSchedule, EMCSettings
    from spibatch.io.results import read_volume
    from spibatch.phasing.compare import load_truth
    from spibatch.phasing.inputs import crop_centre

    small = SHARED / "dragonfly-small"
    emc_dir = args.out / "emc"
    final = emc_dir / "output_030.h5"
    if not final.exists():
        cfg = EMCSettings(num_div=4, iterations=30, need_scaling=True, beta_schedule=BetaSchedule(factor=2.0, period=10))
        run_emc(cfg, small / "photons.emc", small / "det_sim.h5", emc_dir, executor=InProcess())
    model = np.asarray(read_volume(final), np.float64)
    truth_intensity = np.fromfile(small / "intensities.bin", "<f8").reshape((91,) * 3)
    r_min, r_max = shell_range(Detector.read(small / "det_sim.h5"))
    alignment = align_intensity(model, truth_intensity, r_min, r_max)
    # Dragonfly's voxel in q: one pixel at the detector centre, pixsize / (detd * lambda)
    dq = 0.512e-3 / (0.300 * 6.2e-10)
    cropped = crop_centre(model, 91)
    data, attrs, seconds, recipe = phase(cropped, dq, args.starts, args.out / "phase")
    rotated = rotate_intensity(data["density"], alignment.rotation, order=3)
    truth, _ = load_truth(small / "densityMap.bin")
    result = fsc_summary(rotated, attrs["voxel_size_m"], truth, 41.5e-10, int(attrs["max_measured_shell"]))
    result.update({"case": "emc-small", "emc_cc_with_true_intensity": round(float(alignment.cc), 4),
                   "starts": args.starts, "recipe": recipe, "phasing_s": round(seconds, 1),
                   "prtf_resolution_A": _a(attrs.get("resolution_m")),
                   "final_errors": [round(float(e), 4) for e in data["final_errors"]]})
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", choices=["4bed", "emc-small"])
    ap.add_argument("--photons", type=float, default=1e8)
    ap.add_argument("--geometry", choices=["small", "medium"], default="small",
                    help="4bed: the detector of that shared data set (medium: 150 x 150 pixels, beam stop 10)")
    ap.add_argument("--starts", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.out = args.out or Path(f"/tmp/spibatch-phasing-{args.case}")
    result = case_4bed(args) if args.case == "4bed" else case_emc_small(args)
    result["date"] = time.strftime("%Y-%m-%d")
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
