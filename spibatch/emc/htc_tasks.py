"""What an HTC worker runs (:class:`spibatch.emc.executors.Tasks`): read a shard once and keep it, then per
iteration its step on the model a file holds (and, for the per-rotation merge, first its rotations' weights).

A worker keeps the geometry and its shards between tasks (``lru_cache``); a task may run on any worker.
"""

from __future__ import annotations

import threading
import time
from functools import lru_cache, partial
from typing import Callable
from pathlib import Path

import numpy as np

from spibatch.emc import htc_sums
from spibatch.emc.gpu_step import gpu_shard_step, gpu_shard_weights
from spibatch.emc.step import expectation_from, shard_step, shard_weights, warm_up
from spibatch.emc.types import Geometry, GeometrySpec, Shard, ShardSpec, ShardSums, StepState
from spibatch.io.atomic import atomic_path
from spibatch.kernels.device import CPU, Device
from spibatch.layout import htc_expectation_name


def step_function(device: Device) -> Callable[..., ShardSums]:
    """The shard step for ``device``: ``fn(model, rotations, pixels, shard, state) -> ShardSums``."""
    return partial(gpu_shard_step, device=device) if device.is_gpu else shard_step


def weights_function(device: Device) -> Callable[..., np.ndarray]:
    """The per-rotation merge's first half for ``device``: ``fn(model, rotations, pixels, shard, state) -> (R,)``."""
    return partial(gpu_shard_weights, device=device) if device.is_gpu else shard_weights


def peak_count(shards: list[Shard]) -> float:
    """The largest photon count in one pixel of ``shards`` (1 when they hold no photons)."""
    return max((float(s.count.max()) for s in shards if len(s.count)), default=1.0)


def task_first_frame(spec: ShardSpec | tuple[ShardSpec, ...]) -> int:
    """The first run frame of a task's shard(s)."""
    return spec.first_frame if isinstance(spec, ShardSpec) else min(s.first_frame for s in spec)



@lru_cache(maxsize=2)
def _geometry(recipe: GeometrySpec) -> Geometry:
    return recipe.build()


@lru_cache(maxsize=4)
def _shard(spec: ShardSpec, recipe: GeometrySpec) -> Shard:
    return spec.load(_geometry(recipe).pixels)


@lru_cache(maxsize=4)
def _shards(specs: tuple[ShardSpec, ...], recipe: GeometrySpec) -> Shard:
    """The frames of ``specs`` (shards that follow each other) as one shard."""
    return _shard(specs[0], recipe) if len(specs) == 1 else Shard.joined([_shard(s, recipe) for s in specs])


_last_model: list = [None, None]     # (path, size, mtime) and the array this worker read last
# Tasks of one worker may run as threads (the Tasks executor's pool): the cache above is shared, and numpy reads an
# .npy header with ast.literal_eval, whose compile() run in two threads at once fails on CPython before 3.11.9
# ("AST constructor recursion depth mismatch", seen once in CI): one load at a time
_LOADING = threading.Lock()


def _model(path: str) -> np.ndarray:
    """The model in ``path`` (.npy); the one this worker read last again if the file is the same (the
    per-rotation merge's two rounds of tasks read one model per iteration: a worker that runs both reads it
    once)."""
    stat = Path(path).stat()
    key = (path, stat.st_size, stat.st_mtime_ns)
    with _LOADING:
        if _last_model[0] != key:
            _last_model[:] = [None, None]       # the old one goes before the new one is read
            _last_model[:] = [key, np.load(path)]
        return _last_model[1]


def _threads(threads: int) -> None:
    import numba

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))


def prepare_task(spec: ShardSpec, recipe: GeometrySpec, threads: int) -> tuple[np.ndarray, float]:
    """Read one shard (and keep it in this worker); return its frames' photon counts (D,) and peak count.

    Also compiles / loads the kernels, so that the first iteration's time is the iteration's.
    """
    _threads(threads)
    warm_up(background=recipe.background_file is not None)
    shard = _shard(spec, recipe)
    return shard.counts, peak_count([shard])


def shard_task(spec: ShardSpec | tuple[ShardSpec, ...], recipe: GeometrySpec, model_path: str, state: StepState,
               threads: int, device: Device = CPU) -> htc_sums.Part:
    """The shard step of ``spec``'s frames (a shard, or shards that follow each other) on the model in ``model_path`` (.npy, (M, M, M) float64, or
    (V, M, M, M) with modes); its sums written beside the model (:func:`spibatch.emc.htc_sums.write_part`),
    the small record returned.

    ``timings`` also holds ``load_model_s``, ``write_sums_s``, ``task_s`` (this task's own seconds) and
    ``ended_at`` (its end, seconds since the epoch: how long the record took to reach the driver)."""
    began = time.perf_counter()
    _threads(threads)
    model = _model(model_path)
    loaded = time.perf_counter()
    geometry = _geometry(recipe)
    shard = _shard(spec, recipe) if isinstance(spec, ShardSpec) else _shards(tuple(spec), recipe)
    kept = Path(model_path).parent / htc_expectation_name(state.iteration, task_first_frame(spec))
    if state.rotation_factor is not None and kept.exists():      # the per-rotation merge: weights_task's
        with _LOADING, np.load(kept) as arrays:
            shard.__dict__["_expectation"] = expectation_from(arrays)
        kept.unlink()
    sums = step_function(device)(model, geometry.rotations, geometry.pixels, shard, state)
    sums.timings["load_model_s"] = loaded - began
    part = htc_sums.write_part(Path(model_path).parent, state.iteration, sums)
    part.timings["task_s"] = time.perf_counter() - began
    part.timings["ended_at"] = time.time()
    return part


def weights_task(spec: ShardSpec | tuple[ShardSpec, ...], recipe: GeometrySpec, model_path: str, state: StepState,
                 threads: int, device: Device = CPU) -> np.ndarray:
    """The per-rotation merge's first half for ``spec``'s frames: their rotations' weights (R,) float64; on the
    CPU the kept probabilities are written beside the model for this iteration's :func:`shard_task` to merge
    (a task may run on another worker)."""
    _threads(threads)
    model = _model(model_path)
    geometry = _geometry(recipe)
    shard = _shard(spec, recipe) if isinstance(spec, ShardSpec) else _shards(tuple(spec), recipe)
    weights = weights_function(device)(model, geometry.rotations, geometry.pixels, shard, state)
    if not device.is_gpu:
        expected = shard.__dict__.pop("_expectation")
        kept = Path(model_path).parent / htc_expectation_name(state.iteration, task_first_frame(spec))
        with atomic_path(kept) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **expected.arrays())
    return weights
