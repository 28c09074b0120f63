"""Background-aware EMC: the model's bias without and with the known background, and the time per iteration,
in spibatch and (``--dragonfly``) in Dragonfly on the same frames with the same parameters.

    python benchmarks/emc_background.py [--iterations 12] [--dragonfly] [--threads 2] [--out DIR]

The case of tests/test_emc_background.py (a 4-domain particle, ~1500 photons per frame at rotations of num_div 2,
plus ~600 Poisson background photons from a radial profile times a per-frame level in 0.5-1.5), EMC from the
truth (beta 1, scales fitted) three ways: frames without background (EMC's own bias, the reference), frames with
background and EMC blind to it, and EMC given the background file; and a fourth: the true per-frame levels
given and kept (not fitted).  Prints the bias per shell minus the reference's, the correlation of the fitted
levels with the true ones, and the median seconds per iteration.

Dragonfly (GPL, run as a program, a reference only; /opt/dragonfly-venv/bin or $SPIBATCH_DRAGONFLY) runs the
same four with ``dragonfly.emc -c config.ini -t THREADS N``: the same photons, detector (written by
spibatch.io.dragonfly), num_div, ``beta = 1``, ``need_scaling = 1``, ``start_model_file`` the truth (padded
by one voxel: Dragonfly's grid is 2 ceil(qmax) + 3), ``background_file`` (dataset ``background``).  Dragonfly
does not fit the background levels: it reads them from ``bgscale_file`` (dataset ``scale``, default 1), so its
"given" run has no bgscale_file (levels 1) and its "true levels" run gets the true levels.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = ("reference", "blind", "given", "true levels")
NUM_DIV = 2      # the case's rotations (Rotations.refined_600_cell(2) in the test's fixture)


def run_spibatch(case, variant: str, iterations: int):
    """(model, fitted levels or None, median s per iteration) of our EMC from the truth."""
    from spibatch.emc.step import shard_step
    from spibatch.emc.types import PixelSet, Shard, StepState, finish

    photons = case["clean"] if variant == "reference" else case["photons"]
    background = case["background"] if variant in ("given", "true levels") else None
    pixels = PixelSet.from_detector(case["detector"], background=background)
    shard = Shard.from_photons(photons, pixels)
    nf = photons.num_frames
    model, scales = case["truth"].copy(), np.ones(nf)
    levels = None if background is None else (case["levels"].copy() if variant == "true levels" else np.ones(nf))
    seconds = []
    for it in range(1, iterations + 1):
        t0 = time.perf_counter()
        total = shard_step(model, case["rotations"], pixels, shard, StepState(it, np.ones(nf), scales, levels))
        model, scales, _ = finish(total, model, True, False, pixels.background_sum, variant == "given")
        seconds.append(time.perf_counter() - t0)
        if variant == "given":
            levels = total.frames["background_scale"]
    return model, levels, float(np.median(seconds))


def run_dragonfly(case, variant: str, iterations: int, threads: int, work: Path):
    """(model (M, M, M) on our grid, median s per iteration) of Dragonfly's EMC from the truth."""
    import h5py

    from emc_vs_dragonfly import dragonfly_exe
    from spibatch.io.background import write_background
    from spibatch.io.dragonfly import write_detector, write_photons

    work.mkdir(parents=True)
    (work / "output").mkdir()
    write_detector(work / "det.h5", case["detector"])
    write_photons(work / "photons.h5", case["clean"] if variant == "reference" else case["photons"])
    with h5py.File(work / "start.h5", "w") as f:     # Dragonfly's grid has one more voxel on each side
        f["intens"] = np.pad(case["truth"], 1)[None].astype(np.float64)
    lines = ["[emc]", "in_photons_file = photons.h5", "in_detector_file = det.h5", "output_folder = output/",
             "log_file = EMC.log", f"num_div = {NUM_DIV}", "need_scaling = 1", "beta = 1.0",
             "start_model_file = start.h5"]
    if variant in ("given", "true levels"):
        write_background(work / "bg.h5", case["background"])
        lines.append("background_file = bg.h5")
    if variant == "true levels":
        with h5py.File(work / "bgscale.h5", "w") as f:
            f["scale"] = case["levels"].astype(np.float64)
        lines.append("bgscale_file = bgscale.h5")
    (work / "config.ini").write_text("\n".join(lines) + "\n")
    done = subprocess.run([str(dragonfly_exe()), "-c", "config.ini", "-t", str(threads), str(iterations)], cwd=work,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"Dragonfly failed ({variant}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
    rows = [line.split() for line in (work / "EMC.log").read_text().splitlines()]
    times = [float(r[1]) for r in rows if len(r) >= 7 and r[0].isdigit()]
    with h5py.File(work / "output" / f"output_{iterations:03d}.h5") as f:
        model = f["intens"][0][1:-1, 1:-1, 1:-1]
    return model, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--dragonfly", action="store_true", help="run Dragonfly beside, same frames and parameters")
    parser.add_argument("--threads", type=int, default=2, help="Dragonfly's OpenMP threads")
    parser.add_argument("--out", type=Path, default=None, help="Dragonfly's work folders (default: a temporary one)")
    args = parser.parse_args()
    import test_emc_background as case_of   # the test's case and measures: one definition
    from spibatch.emc.step import warm_up

    warm_up()
    warm_up(background=True)
    case = case_of.with_background.__wrapped__()
    shells = " ".join(f"{a}-{b}" for a, b in zip(case_of.SHELLS[:-1], case_of.SHELLS[1:]))
    print(f"shells (voxels): {shells}; load {os.getloadavg()[0]:.2f}")
    ours = {v: run_spibatch(case, v, args.iterations) for v in VARIANTS}
    reference = case_of.shell_bias(ours["reference"][0], case["truth"])
    print(f"spibatch reference (no background in the data): {np.round(reference, 3)} {ours['reference'][2]:.3f} s/it")
    for v in VARIANTS[1:]:
        bias = case_of.shell_bias(ours[v][0], case["truth"]) - reference
        print(f"spibatch {v:12s} minus ref: {np.round(bias, 3)} {ours[v][2]:.3f} s/iteration")
    print(f"spibatch fitted levels vs true: CC {np.corrcoef(ours['given'][1], case['levels'])[0, 1]:.3f}; "
          f"time given / blind: {ours['given'][2] / ours['blind'][2]:.2f}x; load {os.getloadavg()[0]:.2f}")
    if not args.dragonfly:
        return
    with tempfile.TemporaryDirectory(prefix="emc_bg_dragonfly_") as tmp:
        root = args.out or Path(tmp)
        theirs = {v: run_dragonfly(case, v, args.iterations, args.threads, root / v.replace(" ", "_"))
                  for v in VARIANTS}
    reference = case_of.shell_bias(theirs["reference"][0], case["truth"])
    print(f"Dragonfly reference: {np.round(reference, 3)} {theirs['reference'][1]:.3f} s/it")
    for v in VARIANTS[1:]:
        bias = case_of.shell_bias(theirs[v][0], case["truth"]) - reference
        print(f"Dragonfly {v:12s} minus ref: {np.round(bias, 3)} {theirs[v][1]:.3f} s/iteration")
    print(f"Dragonfly time given / blind: {theirs['given'][1] / theirs['blind'][1]:.2f}x; "
          f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
