"""2-D classification on labelled mixtures, and what its blacklist is worth to EMC.

    python benchmarks/classify_mixtures.py [--seeds 1 2 3] [--frames 3000] [--classes 5] [--emc ITERATIONS]

Mixtures (made here; the tests make their own): A good hits of one particle, B hits of another, C double hits
(two A frames summed: independent orientations and fluences), D weak A frames, E a radial background alone; the
class shares drawn per seed around 60/15/10/10/5 %.  Two cases:

* ``small``: the shared small set's detector (64 x 64, beam stop 6 px), A its true intensity (Dragonfly's, of
  4BED), B 1EI7 on the same grid, ~1000 photons a frame, fluence jitter 0.25, D 7.5 % of A's photons, E an ice
  ring plus a gas rise;
* ``flat80``: a flat 80 x 80 detector of another geometry (beam stop 4 px), A 1EI7, B 1EI7 spread 1.5x (the same
  shape, larger), ~300 photons a frame, jitter 0.4, D 8 %, E gas alone, and a weak gas background (5 % of A's
  photons) on every frame.

For every case and seed: where each true class lands, the purity and recall of A among the frames the suggestion
keeps (``auto``) and among the classes where A is the majority (``oracle``: a user who recognises them), and the
seconds per 10 000 frames.  ``--emc N``: EMC (num_div 4, N iterations) on the small case's first seed: on all frames, on
the frames the suggestion keeps (its blacklist) and on the true A frames alone; each model's CC with A's truth.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPIBATCH_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
NAMES = "ABCDE"


def detector(case: str):
    from spibatch.detector import Detector

    if case == "small":
        return Detector.read(SHARED / "dragonfly-small" / "det_sim.h5")
    return Detector.flat(80, 0.6e-3, 0.25, 6.2e-10, beamstop_radius_pixels=4)


def pdb_intensity(pdb: str, det, voxel_per_m: float, spread: float = 1.0) -> np.ndarray:
    from spibatch.sim.scattering import intensity, structure_factor
    from spibatch.sim.structure import read_structure

    atoms = read_structure(SHARED / "pdb" / f"{pdb}.pdb")
    atoms.positions_m = atoms.positions_m * spread
    return intensity(structure_factor(atoms, det.model_size(), voxel_per_m))


def hits(volume, det, n, photons, jitter, seed):
    from spibatch.photons import Photons
    from spibatch.sim.patterns import mean_photons_scale, simulate_patterns

    parts: list = []
    collect = type("Collect", (), {"append": lambda self, p: parts.append(p)})()
    simulate_patterns(volume, det, num_patterns=n, scale=mean_photons_scale(volume, det, photons),
                      fluence_jitter=jitter, seed=seed, chunk_frames=1024, writer=collect)
    return Photons.concatenate(parts)


def add(a, b):
    """Frame by frame sum of two Photons of one shape."""
    from spibatch.photons import Photons

    def triples(p):
        f1 = np.repeat(np.arange(p.num_frames), np.diff(p.ones_indptr))
        fm = np.repeat(np.arange(p.num_frames), np.diff(p.multi_indptr))
        return (np.concatenate([f1 * p.num_pix + p.ones_index, fm * p.num_pix + p.multi_index]),
                np.concatenate([np.ones(len(f1), np.int64), p.multi_count]))
    (ka, ca), (kb, cb) = triples(a), triples(b)
    keys, inverse = np.unique(np.concatenate([ka, kb]), return_inverse=True)
    counts = np.bincount(inverse, weights=np.concatenate([ca, cb])).astype(np.int64)
    frame, pixel = keys // a.num_pix, (keys % a.num_pix).astype(np.int32)
    one = counts == 1

    def indptr(sel):
        return np.concatenate([[0], np.cumsum(np.bincount(frame[sel], minlength=a.num_frames))])
    return Photons(a.num_pix, indptr(one), pixel[one], indptr(~one), pixel[~one], counts[~one].astype(np.int32))


def background(det, n, mean, ring, seed):
    """Poisson frames of a gas rise (and an ice ring at 0.6 max |q|), levels 0.6-1.4 x ``mean`` photons."""
    from spibatch.detector import MASK_EXCLUDED
    from spibatch.photons import Photons
    from spibatch.sim.background import radial_background

    rng = np.random.default_rng(seed)
    profile = radial_background(det, 1.0, rise=1.0)
    if ring:
        q = np.linalg.norm(det.q_voxels, axis=1)
        ring_profile = np.exp(-0.5 * ((q - 0.6 * q.max()) / (0.03 * q.max())) ** 2) * det.corr
        ring_profile[det.mask == MASK_EXCLUDED] = 0
        profile = 0.5 * profile + 0.5 * ring_profile / ring_profile.sum()
    levels = rng.uniform(0.6, 1.4, n) * mean
    return Photons.concatenate([Photons.from_dense(rng.poisson(np.outer(levels[a:a + 256], profile)))
                                for a in range(0, n, 256)])


def mixture(case: str, seed: int, num: int):
    """(photons, true classes (num,) 0..4, detector, A's intensity)."""
    from spibatch.photons import Photons

    rng = np.random.default_rng(seed)
    det = detector(case)
    if case == "small":
        vol_a = np.fromfile(SHARED / "dragonfly-small" / "intensities.bin").reshape(91, 91, 91)
        vol_b = pdb_intensity("1EI7", det, 0.512e-3 / (6.2e-10 * 0.3))   # pixsize / (lambda detd): its config.ini
        mean, jitter, weak = 1000.0, 0.25, 0.075
    else:
        vol_a = pdb_intensity("1EI7", det, det.voxel_size_per_m)
        vol_b = pdb_intensity("1EI7", det, det.voxel_size_per_m, 1.5)
        mean, jitter, weak = 300.0, 0.4, 0.08
    n = np.maximum((rng.dirichlet(np.array([60, 15, 10, 10, 5]) * 4.0) * num).astype(int), 20)
    n[0] = num - n[1:].sum()
    s = seed * 100
    parts = [hits(vol_a, det, n[0], mean, jitter, s + 1), hits(vol_b, det, n[1], mean * rng.uniform(0.8, 1.2), jitter, s + 2),
             add(hits(vol_a, det, n[2], mean, jitter, s + 3), hits(vol_a, det, n[2], mean, jitter, s + 4)),
             hits(vol_a, det, n[3], mean * weak, jitter, s + 5), background(det, n[4], mean, case == "small", s + 6)]
    photons = Photons.concatenate(parts)
    if case != "small":
        photons = add(photons, background(det, num, 0.05 * mean, False, s + 7))
    order = rng.permutation(num)
    return photons.take(order), np.repeat(np.arange(5), n)[order], det, vol_a


def purity_recall(kept: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    good = truth == 0
    return float((good & kept).sum() / max(kept.sum(), 1)), float((good & kept).sum() / good.sum())


def score(case: str, seed: int, num: int, classes: int) -> dict:
    from spibatch.classify import classify

    photons, truth, det, volume = mixture(case, seed, num)
    blocks = [photons.select(a, min(a + 8192, num)) for a in range(0, num, 8192)]
    began = time.perf_counter()
    found = classify(blocks, det, classes, seed=0)
    seconds = time.perf_counter() - began
    table = np.zeros((5, classes), int)
    np.add.at(table, (truth, found.labels), 1)
    oracle = [c for c in range(classes) if table[:, c].argmax() == 0]
    auto = purity_recall(np.isin(found.labels, found.suggested), truth)
    best = purity_recall(np.isin(found.labels, oracle), truth)
    kept_others = {NAMES[k]: float(np.isin(found.labels, found.suggested)[truth == k].mean()) for k in range(1, 5)}
    print(f"{case:6s} seed {seed}: auto P/R {auto[0]:.3f}/{auto[1]:.3f}  oracle P/R {best[0]:.3f}/{best[1]:.3f}  "
          f"kept of B C D E {' '.join(f'{v:.2f}' for v in kept_others.values())}  "
          f"{seconds / num * 1e4:.2f} s per 10 000 frames", flush=True)
    return {"photons": photons, "truth": truth, "detector": det, "volume": volume, "found": found}


def emc_payoff(result: dict, iterations: int) -> None:
    """EMC on all frames and on the kept ones; each model's CC with A's truth."""
    from spibatch.emc.compare import compare_with_truth
    from spibatch.io.dragonfly import write_detector, write_photons

    with tempfile.TemporaryDirectory(prefix="classify-emc-") as tmp:
        tmp = Path(tmp)
        write_photons(tmp / "photons.h5", result["photons"])
        write_detector(tmp / "det.h5", result["detector"])
        np.save(tmp / "truth.npy", result["volume"])
        kept = np.isin(result["found"].labels, result["found"].suggested)
        (tmp / "bl.txt").write_text("\n".join(str(int(not k)) for k in kept) + "\n")
        (tmp / "true.txt").write_text("\n".join(str(int(t != 0)) for t in result["truth"]) + "\n")
        truth = tmp / "truth.h5"
        import h5py

        with h5py.File(truth, "w") as f:
            f["intensity"] = result["volume"]
        runs = (("all frames", "", len(kept)), ("the suggestion's", f"  blacklist_file: {tmp / 'bl.txt'}\n",
                                                   int(kept.sum())),
                ("the true A frames", f"  blacklist_file: {tmp / 'true.txt'}\n", int((result["truth"] == 0).sum())))
        for name, extra, frames in runs:
            config = tmp / "p.yaml"
            config.write_text(f"name: payoff\nemc:\n  photons: {tmp / 'photons.h5'}\n  detector: {tmp / 'det.h5'}\n"
                              f"  num_div: 4\n  iterations: {iterations}\n{extra}")
            run = tmp / name.replace(" ", "_")
            began = time.perf_counter()
            subprocess.run([sys.executable, "-m", "spibatch", "-q", "emc", str(config), "--out", str(run)], check=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL)
            cc = compare_with_truth(run / "emc" / f"output_{iterations:03d}.h5", truth, tmp / "det.h5")["cc"]
            print(f"EMC on {name} ({frames} frames, {iterations} iterations): "
                  f"CC with A's truth {cc:.4f} ({time.perf_counter() - began:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--emc", type=int, default=0, help="EMC iterations of the payoff run (0: none)")
    args = parser.parse_args()
    first = None
    for case in ("small", "flat80"):
        for seed in args.seeds:
            result = score(case, seed, args.frames, args.classes)
            first = first or result
    if args.emc:
        emc_payoff(first, args.emc)


if __name__ == "__main__":
    main()
