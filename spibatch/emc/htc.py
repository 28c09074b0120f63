"""The HTC EMC driver: each iteration, one task per shard, the model shared through the filesystem.

The driver is :func:`spibatch.emc.driver.run_emc` itself (start model, beta, scales, resume,
``output_NNN.h5`` / ``EMC.log`` / ``metrics.jsonl`` / ``checkpoint.h5``) with a
:class:`ShardRunner` in place of its in-process shards.  Per iteration the runner

1. writes the current model to ``<out>/htc/model_NNN.npy`` (atomic; the *broadcast*),
2. submits :func:`shard_task` once per shard (any ``submit(fn, *args) -> Future``: a Parsl
   python app on the site's ``tasks`` executor, or a ``concurrent.futures`` pool): the task
   reads the model and its shard's frames (kept in the worker between iterations), runs
   the existing :func:`~spibatch.emc.step.shard_step` and returns its ``ShardSums``,
3. adds the returned sums in frame order with :func:`~spibatch.emc.step.reduce`.

``run_emc`` then calls ``finish`` and writes the records, as for the serial and MPI runs:
with the same ``frames_per_shard`` and one thread per task the model equals the serial
one bit for bit and the MPI one to rounding (tests/test_platform_slurm.py).  Where the time
goes is appended to ``<out>/htc/timing.jsonl`` per iteration: ``broadcast_s`` (model
written), ``wait_s`` (submit to last result), ``task_s`` (longest task, its own clock),
``load_model_s`` (the longest model read in a task), ``reduce_s``.
"""

from __future__ import annotations

import json
import os
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from spibatch.emc.step import ShardSums, StepState, reduce


@lru_cache(maxsize=2)
def _geometry(detector_path: str, num_div: int):
    from spibatch.emc.step import PixelSet, Rotations
    from spibatch.detector import Detector
    return PixelSet.from_detector(Detector.read(detector_path)), Rotations.refined_600_cell(num_div)


@lru_cache(maxsize=4)
def _shard(photons_path: str, detector_path: str, num_div: int, start: int, stop: int):
    from spibatch.emc.driver import load_shards

    pixels, _ = _geometry(detector_path, num_div)
    return load_shards(photons_path, pixels, [(start, stop)])[0]


def _threads(threads: int) -> None:
    import numba

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))


def prepare_task(photons_path: str, detector_path: str, num_div: int, start: int, stop: int,
                 threads: int) -> tuple[np.ndarray, float]:
    """Read one shard (and keep it in this worker); return its frames' photon counts (D,) and peak count.

    Also compiles / loads the kernels, so that the first iteration's time is the iteration's.
    """
    from spibatch.emc.step import warm_up

    _threads(threads)
    warm_up()
    shard = _shard(photons_path, detector_path, num_div, start, stop)
    return shard.counts, float(shard.count.max()) if len(shard.count) else 1.0


def shard_task(photons_path: str, detector_path: str, num_div: int, start: int, stop: int,
               model_path: str, state: StepState, threads: int, device: str = "cpu",
               gpu_runtime: str = "cupy") -> ShardSums:
    """``shard_step`` of frames ``start:stop`` on the model in ``model_path`` (.npy, (M, M, M) float64)."""
    from spibatch.emc.step import shard_step

    began = time.perf_counter()
    _threads(threads)
    model = np.load(model_path)
    loaded = time.perf_counter()
    pixels, rotations = _geometry(detector_path, num_div)
    sums = shard_step(model, rotations, pixels, _shard(photons_path, detector_path, num_div, start, stop), state,
                      device=device, gpu_runtime=gpu_runtime)
    sums.timings["load_model_s"] = loaded - began
    sums.timings["task_s"] = time.perf_counter() - began
    return sums


class ShardRunner:
    """Runs the shard steps as tasks through ``submit(fn, *args) -> Future`` (see the module docstring).

    threads: Numba threads per task (the cores one worker may use); device, gpu_runtime: the pipeline's
    (on a GPU each worker uses the one GPU Parsl gave it).
    """

    def __init__(self, submit, photons_path, detector_path, num_div: int, out_dir, threads: int = 1,
                 device: str = "cpu", gpu_runtime: str = "cupy"):
        self.submit = submit
        self.device, self.gpu_runtime = device, gpu_runtime
        self.photons, self.detector = os.fspath(photons_path), os.fspath(detector_path)
        self.num_div, self.threads = num_div, threads
        self.dir = Path(out_dir) / "htc"
        self.bounds: list[tuple[int, int]] = []

    def prepare(self, bounds: list[tuple[int, int]]) -> tuple[np.ndarray, float]:
        """Per-frame photon counts (D,) and the largest pixel count, from one task per shard."""
        self.bounds = list(bounds)
        self.dir.mkdir(parents=True, exist_ok=True)
        futures = [self.submit(prepare_task, self.photons, self.detector, self.num_div, a, b, self.threads)
                   for a, b in self.bounds]
        results = [f.result() for f in futures]
        return np.concatenate([c for c, _ in results]), max(p for _, p in results)

    def step(self, model: np.ndarray, state: StepState) -> ShardSums:
        """One iteration's shard steps on ``model``; the reduced sums of all shards."""
        from spibatch.io.atomic import atomic_path

        began = time.perf_counter()
        model_path = self.dir / f"model_{state.iteration:03d}.npy"
        with atomic_path(model_path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(model, np.float64))
        written = time.perf_counter()
        futures = [self.submit(shard_task, self.photons, self.detector, self.num_div, a, b, str(model_path),
                               state, self.threads, self.device, self.gpu_runtime) for a, b in self.bounds]
        parts = [f.result() for f in futures]
        waited = time.perf_counter()
        slowest = max(p.timings["task_s"] for p in parts)
        load = max(p.timings["load_model_s"] for p in parts)
        total = reduce(parts)
        reduced = time.perf_counter()
        for name in ("task_s", "load_model_s"):
            total.timings.pop(name, None)
        model_path.unlink(missing_ok=True)
        record = {"iteration": state.iteration, "tasks": len(parts), "broadcast_s": written - began,
                  "wait_s": waited - written, "task_s": slowest, "load_model_s": load,
                  "reduce_s": reduced - waited, "step_s": reduced - began}
        with open(self.dir / "timing.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        return total


def run_emc_htc(cfg, photons_path, detector_path, out_dir, submit, *, threads: int = 1, resume: bool = False,
                show_progress: bool = False, device: str = "cpu", gpu_runtime: str = "cupy") -> dict[str, Path]:
    """EMC in HTC mode: :func:`~spibatch.emc.driver.run_emc` with its shard steps sent through ``submit``."""
    from spibatch.emc.driver import run_emc

    runner = ShardRunner(submit, photons_path, detector_path, cfg.num_div, out_dir, threads, device, gpu_runtime)
    return run_emc(cfg, photons_path, detector_path, out_dir, resume=resume, show_progress=show_progress,
                   shard_runner=runner)
