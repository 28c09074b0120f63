"""Where the shard steps of an EMC iteration run: one executor, chosen once by the caller.

The driver (:func:`spibatch.emc.driver.run_emc`) sees only this interface:

* ``rank``, ``size``: this process among those running the loop together (MPI ranks; else 0 and 1);
  ``writes``: whether it writes the run's files (rank 0 only);
* ``collective(fn, *args)``: ``fn`` on every process, an InputError on any of them raised on all;
  ``broadcast(value)``: rank 0's value on every process;
* ``add_shards(specs, geometry, join=0) -> (counts (D_new,) float64, peak)``: take new shards
  (:class:`~spibatch.emc.types.ShardSpec`, frames numbered on from those already held); their
  frames' photon counts in frame order and the largest photon count in one pixel among them.  ``join``:
  a held shard may take in new ones that continue it up to this many frames (a live source's chunks are
  small, and every shard costs an expand and a merge of all rotations per iteration);
* ``step(model, geometry, state) -> ShardSums``: one iteration over every shard, reduced over
  shards, ranks and tasks; per-frame arrays in the run's frame order; ``timings`` the phases'
  seconds (this rank's, or all tasks' summed) and ``combine``: the seconds spent reducing.

:class:`InProcess` holds every shard in this process; :class:`MPIRanks` holds this rank's (whole
shards: the first set cut contiguously across the ranks, later ones to the rank holding the fewest
frames) and combines with one Allreduce and one Allgatherv per iteration (:mod:`spibatch.emc.mpi`);
:class:`Tasks` (HTC mode) holds none: per iteration it writes the model to ``scratch_dir`` once (the
*broadcast*), submits :func:`shard_task` once per shard through any ``submit(fn, *args) -> Future``
(a Parsl python app, a ``concurrent.futures`` pool); each task writes its sums to ``scratch_dir`` and
returns a small record, and reduce tasks add them in frame order, slab by slab of voxels
(:mod:`spibatch.emc.htc_sums`: the additions of :func:`~spibatch.emc.types.reduce`).  Each shard's sums
are added in frame order in every case, so with the same ``frames_per_shard`` and threads per step the
three give the same model (MPI: to the order of the ranks' partial sums, measured identical).  Where a
Tasks iteration's time goes is appended to ``scratch_dir/timing.jsonl``: ``broadcast_s`` (model written),
``wait_s`` (submit to last result; with the per-rotation merge ``weights_s`` of it, the first round of
tasks: every shard's rotation weights, summed here before the merging round), ``task_s`` (longest task,
its own clock), ``load_model_s`` (longest model read), ``write_sums_s`` (longest sums write), ``result_s``
(last task's end to its record here), ``reduce_s`` (last record to the total: ``reduce_tasks`` slab tasks,
the longest ``reduce_task_s``, ``gather_s`` reading the total here), ``sums_bytes``.

CPU or GPU is chosen once too: :func:`step_function` of the executor's Device.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from spibatch import parsl_wait
from spibatch.emc import htc_sums, mpi
from spibatch.emc.htc_tasks import (peak_count, prepare_task, shard_task, step_function, task_first_frame,
                                    weights_function, weights_task)
from spibatch.emc.step import expectation_from, rotation_factor
from spibatch.emc.types import Geometry, Shard, ShardSpec, ShardSums, StepState
from spibatch.errors import InputError
from spibatch.io.atomic import atomic_path
from spibatch.kernels.device import CPU, Device
from spibatch.layout import HTC_TIMING, htc_expectation_name, htc_model_name

log = logging.getLogger("spibatch")

TIMING = HTC_TIMING               # in scratch_dir: one line per Tasks iteration


def run_shards(step, model: np.ndarray, geometry: Geometry, shards: list[Shard], state: StepState) -> ShardSums:
    """``step`` on each shard, summed in frame order: exactly ``reduce([step(...) for each shard])``.

    Keeps one shard's sums at a time beside the running total.
    """
    total, frames = None, []
    for shard in sorted(shards, key=lambda s: s.first_frame):
        part = step(model, geometry.rotations, geometry.pixels, shard, state)
        if total is None:    # float64 from here on (a CPU merge's sums are float32 views)
            total = ShardSums(part.first_frame, np.array(part.numerator, np.float64),
                              np.array(part.denominator, np.float64), part.frames, dict(part.timings))
        else:
            total.numerator += part.numerator
            total.denominator += part.denominator
            for phase, seconds in part.timings.items():
                total.timings[phase] = total.timings.get(phase, 0.0) + seconds
        frames.append(part.frames)
    if total is None:
        raise ValueError("an iteration needs at least one shard")
    total.frames = {k: np.concatenate([f[k] for f in frames]) for k in frames[0]}
    return total


def _spill(shard: Shard, folder: Path) -> None:
    """Move the expectation kept on ``shard`` into ``folder`` (one .npz per shard); a full or unwritable folder
    is one line (InputError) naming it."""
    expected = shard.__dict__.pop("_expectation")
    try:
        with open(folder / f"{shard.first_frame:09d}.npz", "wb") as fh:
            np.savez(fh, **expected.arrays())
    except OSError as exc:
        raise InputError(f"cannot keep the per-rotation merge's probabilities here: {exc.strerror or exc}",
                         path=folder, field="emc.merge",
                         fix="free space there or set TMPDIR to a larger folder, or use emc.merge: pooled") from exc


def _unspilled(step, folder: Path, model, rotations, pixels, shard: Shard, state: StepState) -> ShardSums:
    """``step`` on ``shard`` with its expectation back from ``folder`` where :func:`_spill` put it."""
    path = folder / f"{shard.first_frame:09d}.npz"
    if path.exists():
        with np.load(path) as arrays:
            shard.__dict__["_expectation"] = expectation_from(arrays)
        path.unlink()
    return step(model, rotations, pixels, shard, state)


class _OneProcess:
    """The loop runs in this one process: collective calls are plain calls."""

    rank, size, writes = 0, 1, True

    def collective(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)

    def patient(self, fn):
        """:meth:`collective` for a call that may hold the writer long (the other ranks wait without spinning)."""
        return fn()

    def broadcast(self, value):
        return value


class InProcess(_OneProcess):
    """Every shard in this process, stepped one after the other on ``device``."""

    def __init__(self, device: Device = CPU):
        self.device = device
        self.shards: list[Shard] = []
        self._step = step_function(device)
        self._weights = weights_function(device)

    def add_shards(self, specs: list[ShardSpec], geometry: Geometry, join: int = 0) -> tuple[np.ndarray, float]:
        if not self.shards:
            ordinal = self.device.activate()
            if ordinal is not None:
                log.info("EMC on GPU %d (%s) of this node", ordinal, self.device.runtime)   # one GPU per rank
        new = [spec.load(geometry.pixels) for spec in sorted(specs, key=lambda s: s.first_frame)]
        counts = np.concatenate([s.counts for s in new]) if new else np.zeros(0)
        peak = peak_count(new)
        for shard in new:
            last = self.shards[-1] if self.shards else None
            if last is not None and last.first_frame + last.num_frames == shard.first_frame \
                    and last.num_frames + shard.num_frames <= join:
                self.shards[-1] = Shard.joined([last, shard])
            else:
                self.shards.append(shard)
        return counts, peak

    def step(self, model: np.ndarray, geometry: Geometry, state: StepState) -> ShardSums:
        if state.merge != "per_rotation" or state.rotation_factor is not None:
            total = run_shards(self._step, model, geometry, self.shards, state)
            total.timings["combine"] = 0.0
            return total
        # the per-rotation merge: every shard's rotation weights first; the kept probabilities of all but the
        # last shard wait on disk (all of them in memory would outgrow data + model + one shard's at scale)
        shards = sorted(self.shards, key=lambda s: s.first_frame)
        local = np.zeros(len(geometry.rotations))
        with tempfile.TemporaryDirectory(prefix="spibatch-expect-") as spill:
            for k, shard in enumerate(shards):
                local += self._weights(model, geometry.rotations, geometry.pixels, shard, state)
                if k < len(shards) - 1 and "_expectation" in shard.__dict__:
                    _spill(shard, Path(spill))
            began = time.perf_counter()
            state = dataclasses.replace(state, rotation_factor=rotation_factor(self._all_weights(local)))
            combine = time.perf_counter() - began
            total = run_shards(partial(_unspilled, self._step, Path(spill)), model, geometry, shards, state)
        total.timings["combine"] = combine
        return total

    def _all_weights(self, local: np.ndarray) -> np.ndarray:
        """The rotations' weights over every frame of the run from this process's (R,)."""
        return local


class MPIRanks(InProcess):
    """This rank's whole shards; the sums of all ranks combined (one Allreduce, one Allgatherv)."""

    def __init__(self, comm, device: Device = CPU):
        super().__init__(device)
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.writes = self.rank == 0
        self.held: list[list[ShardSpec]] = [[] for _ in range(self.size)]   # every rank's, known to all

    def collective(self, fn, *args, **kwargs):
        return mpi.collective(self.comm, fn, *args, **kwargs)

    def patient(self, fn):
        return mpi.patient_collective(self.comm, fn)

    def broadcast(self, value):
        return mpi.broadcast(self.comm, value)

    def owners(self, specs: list[ShardSpec]) -> list[int]:
        """The rank of each new shard: the first set contiguously (the first ranks one more), later ones
        one by one to the rank holding the fewest frames (the lowest of equals)."""
        if not any(self.held):
            return [r for r in range(self.size) for _ in mpi.rank_shards(len(specs), r, self.size)]
        load = [sum(s.num_frames for s in held) for held in self.held]
        out = []
        for spec in specs:
            out.append(min(range(self.size), key=lambda r: (load[r], r)))
            load[out[-1]] += spec.num_frames
        return out

    def add_shards(self, specs: list[ShardSpec], geometry: Geometry, join: int = 0) -> tuple[np.ndarray, float]:
        specs = sorted(specs, key=lambda s: s.first_frame)
        owners = self.owners(specs)
        mine = [s for s, r in zip(specs, owners) if r == self.rank]
        counts, peak = self.collective(super().add_shards, mine, geometry, join)
        gathered = self.comm.allgather(counts)
        base = specs[0].first_frame if specs else 0
        out = np.empty(sum(s.num_frames for s in specs))
        for r in range(self.size):
            out[_frame_rows([s for s, o in zip(specs, owners) if o == r], base)] = gathered[r]
            self.held[r].extend(s for s, o in zip(specs, owners) if o == r)
        return out, max(self.comm.allgather(peak))

    def _all_weights(self, local: np.ndarray) -> np.ndarray:
        total = np.empty_like(local)
        self.comm.Allreduce(local, total)
        return total

    def step(self, model: np.ndarray, geometry: Geometry, state: StepState) -> ShardSums:
        local = super().step(model, geometry, state)
        began = time.perf_counter() - local.timings.pop("combine", 0.0)
        rows = _frame_rows([s for held in self.held for s in sorted(held, key=lambda s: s.first_frame)])
        in_order = np.array_equal(rows, np.arange(len(rows)))
        total = mpi.combine(self.comm, local, [sum(s.num_frames for s in held) for held in self.held],
                            None if in_order else rows)
        total.timings["combine"] = time.perf_counter() - began
        return total


def _task_state(state: StepState, spec: ShardSpec | tuple[ShardSpec, ...]) -> StepState:
    """``state`` for one task: with coarse-to-fine candidates, only its frames' (not the run's) travel."""
    if state.candidates is None:
        return state
    specs = (spec,) if isinstance(spec, ShardSpec) else spec
    first = min(s.first_frame for s in specs)
    stop = max(s.first_frame + s.num_frames for s in specs)
    return dataclasses.replace(state, candidates=state.candidates.restricted(first, stop))


def _frame_rows(specs: list[ShardSpec], base: int = 0) -> np.ndarray:
    """The run's frame indices (minus ``base``) of ``specs``' frames, in their order."""
    parts = [np.arange(s.first_frame, s.first_frame + s.num_frames) - base for s in specs]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class Tasks(_OneProcess):
    """Each iteration one task per shard through ``submit(fn, *args) -> Future``; this process holds no frames.

    scratch_dir: a folder every task can read and write (the model of each iteration, the tasks' sums, the
    reduced slabs, timing.jsonl); threads: Numba threads per task (the cores one worker may use); device: the
    tasks' (each worker takes its own GPU); reducers: reduce tasks per iteration (the voxels cut into that many
    slabs, :mod:`spibatch.emc.htc_sums`; the site's workers; 1: this process adds the parts itself).
    """

    def __init__(self, submit, scratch_dir: str | Path, threads: int = 1, device: Device = CPU, reducers: int = 1):
        self.submit, self.dir, self.threads, self.device = submit, Path(scratch_dir), threads, device
        self.reducers = max(1, int(reducers))
        self.specs: list[tuple[ShardSpec, ...]] = []     # the shards of each task: one, or several that follow

    def add_shards(self, specs: list[ShardSpec], geometry: Geometry, join: int = 0) -> tuple[np.ndarray, float]:
        """One task per new shard reads it (a worker keeps it) and returns its counts and peak; a new shard that
        continues the last task's frames joins that task while it holds at most ``join`` frames."""
        specs = sorted(specs, key=lambda s: s.first_frame)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.specs:
            left = htc_sums.remove_scratch(self.dir)
            if left:
                log.info("HTC: removed %d file(s) an interrupted iteration left in %s", len(left), self.dir)
        futures = [self.submit(prepare_task, spec, geometry.spec, self.threads) for spec in specs]
        results = parsl_wait.results(futures, "shard-reading tasks")
        for spec in specs:
            last = self.specs[-1] if self.specs else None
            if last is not None and last[-1].first_frame + last[-1].num_frames == spec.first_frame \
                    and sum(s.num_frames for s in last) + spec.num_frames <= join:
                self.specs[-1] = (*last, spec)
            else:
                self.specs.append((spec,))
        return (np.concatenate([c for c, _ in results]) if results else np.zeros(0),
                max((p for _, p in results), default=1.0))

    def step(self, model: np.ndarray, geometry: Geometry, state: StepState) -> ShardSums:
        began = time.perf_counter()
        model_path = self.dir / htc_model_name(state.iteration)
        with atomic_path(model_path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(model, np.float64))
        written = time.perf_counter()
        parts, weighed = [], 0.0
        try:
            if state.merge == "per_rotation" and state.rotation_factor is None:
                weighed = time.perf_counter()       # first half: every task's rotation weights, summed here
                futures = [self.submit(weights_task, spec, geometry.spec, str(model_path), _task_state(state, spec),
                                       self.threads, self.device) for spec in self.specs]
                weights = np.zeros(len(geometry.rotations))
                for part in parsl_wait.results(futures, "rotation-weight tasks"):
                    weights += part
                state = dataclasses.replace(state, rotation_factor=rotation_factor(weights))
                weighed = time.perf_counter() - weighed
            futures = [self.submit(shard_task, spec, geometry.spec, str(model_path), _task_state(state, spec),
                                   self.threads, self.device) for spec in self.specs]
            parts = parsl_wait.results(futures, "shard tasks")
            waited, arrived = time.perf_counter(), time.time()
            last_end = max(p.timings.pop("ended_at") for p in parts)
            slowest = max(p.timings.pop("task_s") for p in parts)
            load = max(p.timings.pop("load_model_s") for p in parts)
            write = max(p.timings.pop("write_sums_s") for p in parts)
            total, cost = htc_sums.reduce_parts(parts, self.submit, self.dir, state.iteration, self.reducers)
        finally:
            htc_sums.remove_parts(parts)
            model_path.unlink(missing_ok=True)
            for spec in self.specs:            # the per-rotation merge's, where a task failed before its merge
                (self.dir / htc_expectation_name(state.iteration, task_first_frame(spec))).unlink(missing_ok=True)
        reduced = time.perf_counter()
        total.timings["combine"] = reduced - waited
        record = {"iteration": state.iteration, "tasks": len(parts), "broadcast_s": written - began,
                  "wait_s": waited - written, "weights_s": weighed, "task_s": slowest, "load_model_s": load,
                  "write_sums_s": write,
                  "result_s": max(0.0, arrived - last_end),
                  "reduce_s": reduced - waited, **cost, "step_s": reduced - began}
        with open(self.dir / TIMING, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        return total
