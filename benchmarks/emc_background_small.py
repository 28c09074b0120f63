"""Background-aware EMC on the shared small Dragonfly set: time per iteration with and without the background.

    python benchmarks/emc_background_small.py [--iterations 6] [--first 1] [--fraction 0.1] [--threads 2]
                                              [--out DIR] [--profile] [--dragonfly N]

The small set's frames (1000, ~996 photons each, num_div 4: 3240 rotations) plus Poisson background photons:
a radial profile (spibatch.sim.background.radial_background) holding ``fraction`` of all photons on average,
times a per-frame level uniform in 0.5-1.5.  Two EMC runs on these same frames from the same seeded random
model, their steps interleaved in one process (so that the load of a shared machine hits both alike): one
without a background (the photons taken as they are), one given the background file.  Beta as the set's
config (Dragonfly's automatic beta, x2 every 10 iterations; ``--first 21`` starts at the x4 regime).
Prints per iteration the seconds of each and their ratio, the medians (wall and CPU seconds) and the phases' medians
(expand, likelihood, normalize, merge); ``--out`` keeps the data (photons.h5, bg.h5, levels.npy) for
``--dragonfly N``: Dragonfly (GPL, run as a program, a reference only) on the same frames, the same
parameters (num_div 4, need_scaling 1, automatic beta x2 every 10 iterations, fixed_seed 1, N iterations),
once without and once with ``background_file`` (and ``bgscale_file``: the true levels, as Dragonfly reads and
does not fit them); its median seconds per iteration from its EMC.log.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPIBATCH_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


def make_data(fraction: float, seed: int = 11):
    """(detector, photons with background, background (num_pix,), levels (D,)) from the small set."""
    from spibatch.detector import Detector
    from spibatch.io.dragonfly import read_photons
    from spibatch.sim.background import add_background, background_scales, radial_background

    dataset = SHARED / "dragonfly-small"
    detector = Detector.read(dataset / "det_sim.h5")
    photons = read_photons(dataset / "photons.emc")
    used = detector.mask == 0
    mean = float(photons.to_dense(0, photons.num_frames)[:, used].sum(axis=1).mean())
    background = radial_background(detector, mean * fraction / (1 - fraction))
    levels = background_scales(photons.num_frames, 0.5, 1.5, seed=seed)
    return detector, add_background(photons, background, levels, seed=seed + 1), background, levels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--first", type=int, default=1, help="the first iteration's number (beta schedule)")
    ap.add_argument("--fraction", type=float, default=0.1, help="background share of all photons")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="keep photons.h5, bg.h5, levels.npy here")
    ap.add_argument("--profile", action="store_true", help="cProfile one background step at the end")
    ap.add_argument("--dragonfly", type=int, default=0, metavar="N",
                    help="then N iterations of Dragonfly on the same frames, without and with the background (its "
                    "background path took 339 s for iteration 1 here: keep N small)")
    args = ap.parse_args()
    import numba

    numba.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO))
    from spibatch.emc.settings import EMCSettings
    from spibatch.emc.step import random_model, shard_step, warm_up
    from spibatch.emc.types import PixelSet, Rotations, Shard, StepState, finish

    detector, photons, background, levels = make_data(args.fraction)
    if args.out is not None:
        from spibatch.io.background import write_background
        from spibatch.io.dragonfly import write_photons

        args.out.mkdir(parents=True, exist_ok=True)
        write_photons(args.out / "photons.h5", photons)
        write_background(args.out / "bg.h5", background)
        np.save(args.out / "levels.npy", levels)
    warm_up()
    warm_up(background=True)
    rotations = Rotations.refined_600_cell(4)
    plain = PixelSet.from_detector(detector)
    aware = PixelSet.from_detector(detector, background=background)
    shards = {"plain": Shard.from_photons(photons, plain), "aware": Shard.from_photons(photons, aware)}
    pixels = {"plain": plain, "aware": aware}
    counts = shards["plain"].counts
    nf = photons.num_frames
    settings = EMCSettings.from_dict({"num_div": 4, "need_scaling": True, "beta": "auto", "beta_factor": 1.0,
                                      "beta_schedule": {"factor": 2.0, "period": 10}})
    start = random_model(detector.model_size(), plain, rotations, float(counts.mean()), 1)
    state = {k: {"model": start.copy(), "scales": np.ones(nf), "levels": np.ones(nf) if k == "aware" else None}
             for k in shards}
    seconds = {k: [] for k in shards}
    cpu = {k: [] for k in shards}      # CPU seconds of this process (all its threads): less moved by others' load
    phases = {k: {} for k in shards}
    print(f"{nf} frames, {counts.mean():.0f} photons per frame on used pixels ({background[detector.mask == 0].sum():.0f}"
          f" background), {len(rotations)} rotations, {args.threads} threads; load {os.getloadavg()[0]:.2f}")
    for it in range(args.first, args.first + args.iterations):
        beta = settings.beta_for(it, counts)
        for k in ("plain", "aware"):
            s = state[k]
            t0, c0 = time.perf_counter(), time.process_time()
            total = shard_step(s["model"], rotations, pixels[k], shards[k], StepState(it, beta, s["scales"],
                                                                                        s["levels"]))
            s["model"], s["scales"], _ = finish(total, s["model"], True, False, pixels[k].background_sum)
            if k == "aware":
                s["levels"] = total.frames["background_scale"]
            seconds[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
            for phase, value in total.timings.items():
                phases[k].setdefault(phase, []).append(value)
        print(f"iteration {it}: no background {seconds['plain'][-1]:.2f} s, background {seconds['aware'][-1]:.2f} s,"
              f" ratio {seconds['aware'][-1] / seconds['plain'][-1]:.2f}; load {os.getloadavg()[0]:.2f}", flush=True)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    print(f"median s/iteration: no background {med['plain']:.3f}, background {med['aware']:.3f}, "
          f"ratio {med['aware'] / med['plain']:.2f} (median of per-iteration ratios "
          f"{statistics.median(a / b for a, b in zip(seconds['aware'], seconds['plain'])):.2f})")
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"median CPU s/iteration: no background {cpu_med['plain']:.3f}, background {cpu_med['aware']:.3f}, "
          f"ratio {cpu_med['aware'] / cpu_med['plain']:.2f}")
    for k in shards:
        print(f"  {k} phases (median s): " + ", ".join(f"{p} {statistics.median(v):.3f}" for p, v in phases[k].items()))
    print(f"fitted levels vs true: CC {np.corrcoef(state['aware']['levels'], levels)[0, 1]:.3f}; "
          f"load {os.getloadavg()[0]:.2f}")
    if args.profile:
        import cProfile
        import pstats

        s = state["aware"]
        it = args.first + args.iterations
        cProfile.runctx("shard_step(s['model'], rotations, aware, shards['aware'], StepState(it, "
                        "settings.beta_for(it, counts), s['scales'], s['levels']))", globals(), locals(),
                        "/tmp/bt_bg2_profile")
        pstats.Stats("/tmp/bt_bg2_profile").sort_stats("cumulative").print_stats(18)


    if args.dragonfly:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="emc_bg_small_dragonfly_") as tmp:
            theirs = {k: dragonfly(Path(tmp) / k, photons, background if k == "aware" else None, levels,
                                   args.dragonfly, args.threads) for k in ("plain", "aware")}
        print(f"Dragonfly median s/iteration (its log, iterations 1-{args.dragonfly}): no background "
              f"{theirs['plain']:.3f}, background {theirs['aware']:.3f}, ratio {theirs['aware'] / theirs['plain']:.2f};"
              f" load {os.getloadavg()[0]:.2f}")


def dragonfly(work: Path, photons, background, levels, iterations: int, threads: int) -> float:
    """Dragonfly's median seconds per iteration on ``photons`` (with ``background`` and the true ``levels``)."""
    import subprocess

    import h5py

    sys.path.insert(0, str(REPO / "benchmarks"))
    from emc_vs_dragonfly import dragonfly_exe
    from spibatch.io.background import write_background
    from spibatch.io.dragonfly import write_photons

    work.mkdir(parents=True)
    (work / "output").mkdir()
    write_photons(work / "photons.h5", photons)
    lines = ["[emc]", "in_photons_file = photons.h5", f"in_detector_file = {SHARED / 'dragonfly-small' / 'det_sim.h5'}",
             "output_folder = output/", "log_file = EMC.log", "num_div = 4", "need_scaling = 1",
             "beta_factor = 1.0", "beta_schedule = 2.0 10", "fixed_seed = 1"]
    if background is not None:
        write_background(work / "bg.h5", background)
        with h5py.File(work / "bgscale.h5", "w") as f:
            f["scale"] = np.asarray(levels, np.float64)
        lines += ["background_file = bg.h5", "bgscale_file = bgscale.h5"]
    (work / "config.ini").write_text("\n".join(lines) + "\n")
    subprocess.run([str(dragonfly_exe()), "-c", "config.ini", "-t", str(threads), str(iterations)], cwd=work,
                   check=True, capture_output=True, text=True)
    rows = [line.split() for line in (work / "EMC.log").read_text().splitlines()]
    return statistics.median(float(r[1]) for r in rows if len(r) >= 7 and r[0].isdigit())


if __name__ == "__main__":
    main()
