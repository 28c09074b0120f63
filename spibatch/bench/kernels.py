"""This machine's kernel rates, the performance model's inputs, from small microbenchmarks (~1 minute).

* EMC: the product's CPU shard step (:func:`spibatch.emc.step.shard_step`) on synthetic shards of two photon
  densities, its own clock split into expand, likelihood, normalize and merge; solved for seconds per
  rotation x used pixel (expand), per rotation x photon entry and per rotation x frame (likelihood), per
  kept (frame, rotation) entry (normalize), per rotation x merged pixel and per rotation x photon entry
  (merge) with a 49^3 model (in cache), and the expand and merge per rotation x pixel and the merge per
  voxel with a 211^3 one (not).  On one thread, and on all usable cores.
* Phasing: one HIO iteration of the product's :class:`~spibatch.phasing.reconstruction.Reconstruction`
  at two edges; seconds per N^3 log2(N^3) (FFT-bound), one thread and all cores.
* Memory: ``a += b`` of float64 volumes (the HTC reduce), bytes per second; ``.npy`` write and read of a
  model (the HTC broadcast and each task's read).
* Parsl: one local HighThroughputExecutor of 2 workers: time from ``parsl.load`` (spibatch.parsl_shutdown.load,
  as a run starts Parsl) to the first empty task's result, per-task latency of 50 empty tasks, and the bytes
  per second of 16 MB results through the interchange (the HTC return of the sums).

Each rate is the median of ``repeats`` timings (the minimum is kept too): on a loaded machine the median is
what a run meets, the minimum what the hardware can do.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _timed(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times), min(times)


SMALL_MODEL, LARGE_MODEL = 49, 211   # model edges: in cache (the small shared set's 91^3 is between), and not (medium's)


def _problem(frames: int, edge: int, photons: float, num_div: int, model_edge: int, seed: int = 0):
    """A synthetic EMC shard: a flat ``edge``^2 detector whose q-vectors are stretched to span a ``model_edge``^3
    model (so the expand and merge touch as much of it as a real detector does), a random model, Poisson frames."""
    from spibatch.detector import Detector
    from spibatch.emc.step import random_model
    from spibatch.emc.types import PixelSet, Rotations, Shard
    from spibatch.photons import Photons

    detector = Detector.flat(edge, 0.512e-3 * 64 / edge, 0.3, 2.07e-10, beamstop_radius_pixels=3)
    pixels = PixelSet.from_detector(detector)
    qmax = float(np.sqrt((pixels.q ** 2).sum(axis=1)).max())
    pixels.q = np.ascontiguousarray(pixels.q * ((model_edge - 3) / 2 / qmax))
    rotations = Rotations.refined_600_cell(num_div)
    rng = np.random.default_rng(seed)
    counts = rng.poisson(photons / detector.num_pix, (frames, detector.num_pix))
    shard = Shard.from_photons(Photons.from_dense(counts), pixels)
    model = random_model(model_edge, pixels, rotations, photons, seed)
    return model, rotations, pixels, shard


def emc_clock(frames: int, edge: int, photons: float, num_div: int, threads: int, repeats: int,
              model_edge: int = SMALL_MODEL) -> dict:
    """The shard step's clock (median of ``repeats`` after a warm-up) and the problem's counts."""
    import numba

    from spibatch.emc.step import shard_step, warm_up
    from spibatch.emc.types import StepState

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    warm_up()
    model, rotations, pixels, shard = _problem(frames, edge, photons, num_div, model_edge)
    state = StepState(1, np.full(frames, 1e-3), np.ones(frames))   # broad: every rotation kept, as iteration 1
    clocks = []
    for _ in range(repeats + 1):
        clocks.append(shard_step(model, rotations, pixels, shard, state).timings)
    clocks = clocks[1:]
    used = int(np.sum(shard.used_end - shard.ptr[:-1]))
    return {"clock": {k: statistics.median(c[k] for c in clocks) for k in clocks[0]},
            "rotations": len(rotations), "frames": frames, "pixels_used": pixels.num_used,
            "pixels_merged": len(pixels.q), "entries_used": used, "entries_merged": shard.num_entries,
            "kept": frames * len(rotations), "model_edge": model_edge}


def emc_rates(threads: int, repeats: int = 3) -> dict:
    """Seconds per unit of each EMC kernel on ``threads`` threads, from two photon densities (a model in cache);
    the expand and merge per rotation x pixel again with a model that is not (``*_large``: the slopes between 60
    and 420 rotations of a 211^3 model), and the merge's cost per model voxel and shard step (its accumulator
    zeroed and converted: the intercept)."""
    low = emc_clock(200, 48, 100.0, 2, threads, repeats)
    high = emc_clock(200, 48, 1000.0, 2, threads, repeats)
    few = emc_clock(100, 150, 100.0, 1, threads, repeats, LARGE_MODEL)       # 22 500 pixels over 211^3: as the
    many = emc_clock(100, 150, 100.0, 2, threads, repeats, LARGE_MODEL)      # medium set; 60 and 420 rotations
    r = low["rotations"]
    # likelihood = R (E_used l1 + D l2); merge = R (P_merged m1 + E_merged m2): two densities, two unknowns
    dl = high["clock"]["likelihood"] - low["clock"]["likelihood"]
    de = high["entries_used"] - low["entries_used"]
    l1 = max(dl / (r * de), 0.0)
    l2 = max((low["clock"]["likelihood"] - r * low["entries_used"] * l1) / (r * low["frames"]), 0.0)
    dm = high["clock"]["merge"] - low["clock"]["merge"]
    m2 = max(dm / (r * (high["entries_merged"] - low["entries_merged"])), 0.0)
    m1 = max((low["clock"]["merge"] - r * low["entries_merged"] * m2) / (r * low["pixels_merged"]), 0.0)
    dr = many["rotations"] - few["rotations"]      # slopes in rotations: the per-step volume costs drop out
    e_large = max((many["clock"]["expand"] - few["clock"]["expand"]) / (dr * many["pixels_used"]), 0.0)
    m1_large = max((many["clock"]["merge"] - few["clock"]["merge"] - dr * many["entries_merged"] * m2)
                   / (dr * many["pixels_merged"]), 0.0)
    fixed = few["clock"]["merge"] - few["rotations"] * (few["pixels_merged"] * m1_large + few["entries_merged"] * m2)
    return {"threads": threads,
            "expand_per_rot_pixel": statistics.median(c["clock"]["expand"] / (r * c["pixels_used"])
                                                      for c in (low, high)),
            "likelihood_per_rot_entry": l1, "likelihood_per_rot_frame": l2,
            "normalize_per_kept": statistics.median(c["clock"]["normalize"] / c["kept"] for c in (low, high)),
            "merge_per_rot_pixel": m1, "merge_per_rot_entry": m2,
            "expand_per_rot_pixel_large": e_large, "merge_per_rot_pixel_large": m1_large,
            "merge_per_voxel": max(fixed, 0.0) / LARGE_MODEL ** 3, "model_edges": [SMALL_MODEL, LARGE_MODEL],
            "problems": {name: dict(c) for name, c in (("low", low), ("high", high), ("few", few), ("many", many))}}


def phasing_rate(threads: int, edges=(32, 48), iterations: int = 30, extra_edges=()) -> dict:
    """Seconds per N^3 log2(N^3) of one HIO iteration (FFT, modulus, inverse, update), median over ``edges``;
    ``extra_edges`` (the matrix's phasing edges) are timed too and kept under ``edges`` only: an FFT's rate
    depends on the edge's prime factors and, at small edges, on whether a second thread pays."""
    from spibatch.phasing.measurement import Measurement
    from spibatch.phasing.operators import HIO
    from spibatch.phasing.reconstruction import Reconstruction

    import numba

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))   # the modulus and update passes
    per = {}
    for n in dict.fromkeys([*edges, *extra_edges]):
        k = np.fft.fftfreq(n) * n
        r2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
        rho = np.where(r2 < (n / 8) ** 2, 1.0, 0.0).astype(np.float32)
        amplitude = np.abs(np.fft.rfftn(rho)).astype(np.float32)
        rec = Reconstruction(Measurement(amplitude, n, True), r2 < (n / 6) ** 2, [1], threads=threads)
        hio = HIO(beta=0.9)
        hio(rec)
        median, best = _timed(lambda hio=hio, rec=rec: hio(rec), iterations)
        per[str(n)] = {"iteration_s": median, "min_s": best, "per_n3logn3": median / (n ** 3 * np.log2(n ** 3))}
    return {"threads": threads, "per_n3logn3": statistics.median(per[str(n)]["per_n3logn3"] for n in edges),
            "edges": per}


def memory_rates(edge: int = 181, repeats: int = 5) -> dict:
    """Bytes per second of adding two float64 volumes (3 x 8 bytes a voxel moved), and of writing and
    reading a model as .npy (the HTC broadcast and each task's model read)."""
    a, b = np.ones((edge,) * 3), np.ones((edge,) * 3)
    add, add_min = _timed(lambda: np.add(a, b, out=a), repeats)
    with tempfile.TemporaryDirectory(prefix="spibatch-bench-io-") as scratch:
        path = Path(scratch) / "model.npy"
        write, _ = _timed(lambda: np.save(path, a), repeats)
        read, _ = _timed(lambda: np.load(path), repeats)
    return {"add_bytes_per_s": 24 * a.size / add, "add_bytes_per_s_best": 24 * a.size / add_min,
            "npy_write_bytes_per_s": a.nbytes / write, "npy_read_bytes_per_s": a.nbytes / read}


def _empty():
    return 0


def _payload(nbytes: int):
    import numpy

    return numpy.ones(nbytes // 8)


def parsl_rates(tasks: int = 50, payload_bytes: int = 16 * 2 ** 20, payloads: int = 4) -> dict:
    """Parsl's time to the first result, per-task latency and result bandwidth on a local HTEX of 2 workers,
    started as spibatch starts Parsl's interchange and pool (:mod:`spibatch.parsl_lean`)."""
    began = time.perf_counter()
    from spibatch import parsl_lean

    parsl_lean.import_parsl()
    from parsl import python_app
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from spibatch.backends.parsl_common import bare_pool_env, interchange_cmd, lean_launch_cmd, put_bin_on_path
    from spibatch.parsl_lean.pool_fork import ForkedLocalProvider
    from spibatch.parsl_shutdown import load, shutdown

    put_bin_on_path()
    with tempfile.TemporaryDirectory(prefix="spibatch-bench-parsl-") as scratch:
        executor = HighThroughputExecutor(label="bench", max_workers_per_node=2, address="127.0.0.1", encrypted=True,
                                          provider=ForkedLocalProvider(init_blocks=1, max_blocks=1,
                                                                       env=bare_pool_env()),
                                          launch_cmd=lean_launch_cmd([sys.executable]),
                                          interchange_launch_cmd=interchange_cmd())
        config = Config(executors=[executor],
                        run_dir=scratch, usage_tracking=0, strategy_period=0.5)
        dfk = load(config)   # as a run starts Parsl (its interchange and pool forks, its first block at once)
        try:
            empty, payload = python_app(_empty), python_app(_payload)
            empty().result()
            first = time.perf_counter() - began
            t0 = time.perf_counter()
            for future in [empty() for _ in range(tasks)]:
                future.result()
            per_task = (time.perf_counter() - t0) / tasks
            t0 = time.perf_counter()
            for future in [payload(payload_bytes) for _ in range(payloads)]:
                future.result()
            moved = time.perf_counter() - t0
        finally:
            shutdown(dfk)   # (Parsl's cleanup, then its forked block reaped)
    return {"first_result_s": first, "per_task_s": per_task, "workers": 2,
            "result_bytes_per_s": payloads * payload_bytes / moved, "payload_bytes": payload_bytes}


def measure_rates(parsl: bool = True, phasing_edges=()) -> dict:
    """Every rate above (EMC and phasing on 1 thread and on all usable cores; phasing also at ``phasing_edges``),
    with the load at start and end."""
    from spibatch.bench import machine

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    out = {"load_start": machine.load(), "started": machine.now(), "cores": cores,
           "emc": {"1": emc_rates(1)}, "phasing": {"1": phasing_rate(1, extra_edges=phasing_edges)},
           "memory": memory_rates()}
    if cores > 1:
        out["emc"][str(cores)] = emc_rates(cores)
        out["phasing"][str(cores)] = phasing_rate(cores, extra_edges=phasing_edges)
    out["parsl"] = parsl_rates() if parsl else None
    out["container_start_s"] = None      # no container runtime measured here (see docs/scale.md)
    out["load_end"], out["finished"] = machine.load(), machine.now()
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m spibatch.bench.kernels OUT.json``: the rates alone, as ``{"rates": ...}`` (``--rates`` reads it)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m spibatch.bench.kernels", description=main.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--no-parsl", action="store_true", help="skip the Parsl latency measurement")
    args = parser.parse_args(argv)
    args.out.write_text(json.dumps({"rates": measure_rates(parsl=not args.no_parsl)}, indent=1, default=float) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
