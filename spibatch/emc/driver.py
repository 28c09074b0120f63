"""The EMC driver: iterations of the shard step over a photons file, serial or across MPI ranks.

:func:`run_emc` reads a Dragonfly photons + detector pair, cuts the frames
into shards of ``frames_per_shard`` and iterates: build the
:class:`~spibatch.emc.step.StepState` (per-frame beta with its schedule, the
scales), run :func:`emc_iteration` on the local shards, combine across ranks
(:mod:`spibatch.emc.mpi`: one Allreduce of the merge sums, one Allgatherv of
the per-frame arrays), :func:`~spibatch.emc.step.finish`, and on rank 0
write ``output_NNN.h5``, ``EMC.log``, ``metrics.jsonl`` and then
``checkpoint.h5`` (:mod:`spibatch.emc.records`).  ``resume=True`` continues
from the checkpoint and ends in the bit-identical model of an uninterrupted
run (same machine, same number of ranks and threads).

For the HTC driver (one Parsl task per shard per iteration) the unit is
:func:`emc_iteration` with a one-shard list, or ``shard_step`` itself::

    sums = [emc_iteration(model, rotations, pixels, [shard], state) for shard in shards]  # tasks
    model, scales, metrics = finish(reduce(sums), model, need_scaling, friedel)           # gather

``reduce`` adds the tasks' sums in frame order, as :func:`emc_iteration` does
for the shards of one rank: with the same ``frames_per_shard`` the HTC model
equals the serial one bit for bit, and the MPI one to rounding.  Build the
inputs with :func:`load_shards` (any frame range), :func:`beta_for` and the
scales returned by the previous ``finish``.

Test aid: with ``SPIBATCH_EMC_HOLD_AFTER=N`` in the environment the driver
sleeps after writing checkpoint N (so a test can kill it at a known point).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spibatch.detector import Detector
from spibatch.emc import mpi, records
from spibatch.emc.step import (PixelSet, Rotations, Shard, ShardSums, StepState, auto_beta, default_threads,
                               finish, random_model, shard_step, warm_up)
from spibatch.emc.symmetry import symmetrize
from spibatch.errors import InputError

log = logging.getLogger("spibatch")

SCALE_LIMIT = 1e6        # a scale factor above this (the mean is 1) means the fit diverged
MODEL_LIMIT = 1e6        # ... as does a model voxel above this times the largest photon count in a pixel
HOLD_ENV = "SPIBATCH_EMC_HOLD_AFTER"


@dataclass
class Inputs:
    """What :func:`check_inputs` found: the detector, the frame count and the model grid."""

    detector: Detector
    num_frames: int
    size: int
    start_model: np.ndarray | None


def check_inputs(cfg, photons_path, detector_path, ranks: int = 1) -> Inputs:
    """Read the detector, the photons file's header and the start model; InputError on anything wrong.

    Light (no frames are read): the CLI calls it before creating a run directory.
    ``ranks``: MPI ranks to share the shards (each needs at least one).
    """
    from spibatch.io.dragonfly import check_match, photons_info
    from spibatch.detector import Detector
    for name, path in (("photons", photons_path), ("detector", detector_path)):
        if path is None:
            raise InputError("no file given", field=f"emc.{name}",
                             fix=f"set emc.{name} in the pipeline file (relative to it)")
    detector = Detector.read(detector_path)
    num_frames, num_pix = photons_info(photons_path)
    check_match(detector, num_pix, detector_path, photons_path)
    if num_frames == 0:
        raise InputError("holds 0 frames", path=photons_path, field="place_ones",
                         fix="give a photons file with at least one frame")
    shards = len(mpi.shard_bounds(num_frames, cfg.frames_per_shard))
    if shards < ranks:
        raise InputError(f"{num_frames} frames in shards of {cfg.frames_per_shard} make {shards} shard(s) for "
                         f"{ranks} MPI ranks", field="emc.frames_per_shard",
                         fix=f"set emc.frames_per_shard to at most {num_frames // ranks}, or use fewer ranks")
    smallest = detector.model_size()
    size = cfg.model_size or smallest
    if size < smallest:
        raise InputError(f"{size} voxels is smaller than the detector needs ({smallest} = 2 ceil(max |q|) + 1)",
                         field="emc.model_size", fix=f"set it to at least {smallest}, or leave it out")
    start = None
    if cfg.start_model is not None:
        from spibatch.io.results import read_volume

        start = np.asarray(read_volume(cfg.start_model), np.float64)
        fix = "give a finite, non-negative (M, M, M) intensity in photons per voxel (e.g. an output_NNN.h5)"
        if start.shape != (size,) * 3:
            raise InputError(f"shape {start.shape}, but the model grid is {(size,) * 3}", path=cfg.start_model,
                             field="emc.start_model", fix=fix)
        bad = ~np.isfinite(start)
        if bad.any():
            raise InputError(f"{int(bad.sum())} voxels are NaN or infinite (first at "
                             f"{tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), start.shape))})", path=cfg.start_model,
                             field="emc.start_model", fix=fix)
        if start.min() < 0:
            raise InputError(f"{int((start < 0).sum())} voxels are negative", path=cfg.start_model,
                             field="emc.start_model", fix=fix)
    return Inputs(detector, num_frames, size, start)


def load_shards(photons_path, pixels: PixelSet, bounds: list[tuple[int, int]]) -> list[Shard]:
    """The shards of frames ``[(start, stop), ...]``, each read on its own (a rank reads only its frames)."""
    from spibatch.io.dragonfly import read_photons

    return [Shard.from_photons(read_photons(photons_path, a, b), pixels, a) for a, b in bounds]


def beta_for(cfg, iteration: int, counts: np.ndarray) -> np.ndarray:
    """Per-frame beta (D,) float64 at ``iteration`` (1-based): auto or fixed, times beta_factor and the schedule."""
    beta = auto_beta(counts) if cfg.beta == "auto" else np.full(len(counts), float(cfg.beta))
    beta = beta * cfg.beta_factor
    if cfg.beta_schedule is not None:
        beta = beta * cfg.beta_schedule.factor ** ((iteration - 1) // cfg.beta_schedule.period)
    return beta


def emc_iteration(model: np.ndarray, rotations: Rotations, pixels: PixelSet, shards: list[Shard],
                  state: StepState, *, device: str = "cpu", gpu_runtime="cupy") -> ShardSums:
    """``shard_step`` on each shard, summed in frame order: exactly ``reduce([shard_step(...) ...])``.

    model (M, M, M) float64; state.beta and state.scales (D_total,) float64 for all frames.
    Keeps one shard's sums at a time beside the running total.
    """
    total, frames = None, []
    for shard in sorted(shards, key=lambda s: s.first_frame):
        part = shard_step(model, rotations, pixels, shard, state, device=device, gpu_runtime=gpu_runtime)
        if total is None:
            total = part
        else:
            total.numerator += part.numerator
            total.denominator += part.denominator
            for phase, seconds in part.timings.items():
                total.timings[phase] = total.timings.get(phase, 0.0) + seconds
        frames.append(part.frames)
    if total is None:
        raise ValueError("emc_iteration needs at least one shard")
    total.frames = {k: np.concatenate([f[k] for f in frames]) for k in frames[0]}
    return total


def _settings(cfg, inputs: Inputs) -> dict:
    """What must not change between a run and its resumption."""
    keep = ("num_div", "beta", "beta_factor", "beta_schedule", "need_scaling", "friedel_symmetry", "point_group",
            "seed", "frames_per_shard", "start_model")
    out = {k: v for k, v in cfg.model_dump(mode="json").items() if k in keep}
    out.update(num_frames=inputs.num_frames, num_pix=inputs.detector.num_pix, model_size=inputs.size)
    return out


def _check_diverged(iteration: int, model: np.ndarray, scales: np.ndarray, model_limit: float,
                    photons_path) -> None:
    problem = None
    if not np.isfinite(scales).all():
        problem = f"{int((~np.isfinite(scales)).sum())} scale factors are NaN or infinite"
    elif len(scales) and scales.max() > SCALE_LIMIT:
        problem = f"a scale factor reached {scales.max():.3g} (their mean is 1)"
    elif not np.isfinite(model).all():
        problem = f"{int((~np.isfinite(model)).sum())} model voxels are NaN or infinite"
    elif model.max() > model_limit:
        problem = f"a model voxel reached {model.max():.3g} photons, {MODEL_LIMIT:.0e} x the brightest pixel"
    if problem:
        raise InputError(f"iteration {iteration}: the reconstruction diverged: {problem}", path=photons_path,
                         field="emc.need_scaling", fix="set emc.need_scaling: false or use frames with more "
                         f"photons; outputs up to iteration {iteration - 1} are kept")


def _limit_threads() -> int:
    """Numba threads: no more than the cores this process may run on (mpirun binds a rank to one)."""
    import numba

    numba.set_num_threads(max(1, min(numba.get_num_threads(), default_threads())))
    return numba.get_num_threads()


def run_emc(cfg, photons_path, detector_path, out_dir, *, resume: bool = False, comm=None,
            show_progress: bool = True, device: str = "cpu", gpu_runtime="cupy", shard_runner=None
            ) -> dict[str, Path]:
    """Run EMC with the settings ``cfg`` (:class:`spibatch.config.EMC`) and write into ``out_dir``.

    comm: an mpi4py communicator (frames sharded across its ranks; only rank 0
    writes) or None.  resume: continue from ``out_dir/checkpoint.h5`` when it
    exists.  Returns ``{name: path}`` of the outputs (on every rank).
    shard_runner: run the shard steps elsewhere (the HTC driver, :mod:`spibatch.emc.htc`): an
    object with ``prepare(bounds) -> (counts (D,), peak)`` and ``step(model, state) -> ShardSums``
    (all shards, reduced); serial only; this process then holds no frames.
    Raises InputError on bad input or a diverging fit (earlier iterations' files are kept).
    device, gpu_runtime: the pipeline's ``device`` / ``gpu_runtime`` (each rank takes one GPU of its node).
    """
    from spibatch.progress import progress

    comm = comm if comm is not None and comm.Get_size() > 1 else None
    rank, size = mpi.rank_and_size(comm)
    out_dir = Path(out_dir)
    inputs = mpi.collective(comm, check_inputs, cfg, photons_path, detector_path, size)
    bounds = mpi.shard_bounds(inputs.num_frames, cfg.frames_per_shard)
    owned = [mpi.rank_shards(len(bounds), r, size) for r in range(size)]
    frames_per_rank = [sum(bounds[k][1] - bounds[k][0] for k in ks) for ks in owned]
    threads = _limit_threads()
    pixels = PixelSet.from_detector(inputs.detector)
    rotations = Rotations.refined_600_cell(cfg.num_div)
    if shard_runner is None:
        shards = mpi.collective(comm, load_shards, photons_path, pixels, [bounds[k] for k in owned[rank]])
        local_counts = np.concatenate([s.counts for s in shards])
        local_peak = max((float(s.count.max()) for s in shards if len(s.count)), default=1.0)
    else:
        local_counts, local_peak = shard_runner.prepare(bounds)
    counts = np.concatenate(mpi.allgather(comm, local_counts))
    peak = max(mpi.allgather(comm, local_peak))
    settings = _settings(cfg, inputs)

    def read_checkpoint():
        if not (resume and rank == 0 and out_dir.exists()):
            return None
        records.remove_partial_files(out_dir)
        return records.read_checkpoint(out_dir)

    checkpoint = mpi.broadcast(comm, mpi.collective(comm, read_checkpoint))
    if checkpoint is not None:
        changed = sorted(k for k in settings.keys() | checkpoint["settings"].keys()
                         if settings.get(k) != checkpoint["settings"].get(k))
        if changed:
            raise InputError(f"settings differ from the run being resumed: {', '.join(changed)}",
                             path=out_dir / records.CHECKPOINT, field="emc",
                             fix="resume with the run's own config.yaml, or start a new run")
        model, scales, history = checkpoint["model"], checkpoint["scales"], checkpoint["history"]
        first = checkpoint["iteration"] + 1
        log.info("resuming after iteration %d from %s", first - 1, out_dir / records.CHECKPOINT)
    else:
        model = inputs.start_model if inputs.start_model is not None else \
            random_model(inputs.size, pixels, rotations, float(counts.mean()), cfg.seed)
        scales, history, first = np.ones(inputs.num_frames), [], 1

    header = records.log_header({
        "photons": os.fspath(photons_path), "num_data": inputs.num_frames, "mean_count": float(counts.mean()),
        "num_rot": len(rotations), "num_used": pixels.num_used, "num_pix": inputs.detector.num_pix,
        "size": inputs.size, "num_threads": threads, "mpi_ranks": size, "beta": cfg.beta,
        "beta_factor": cfg.beta_factor, "need_scaling": cfg.need_scaling, "friedel_symmetry": cfg.friedel_symmetry,
        "point_group": cfg.point_group or "none",
        "beta_schedule": "none" if cfg.beta_schedule is None else
        f"{cfg.beta_schedule.factor} {cfg.beta_schedule.period}",
        "start_model": cfg.start_model or f"random (seed {cfg.seed})"})
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        records.write_logs(out_dir, header, history)
        log.info("EMC: %d frames in %d shard(s) on %d rank(s) x %d thread(s), %d rotations (num_div %d), "
                 "model %d^3\n%s", inputs.num_frames, len(bounds), size, threads, len(rotations), cfg.num_div,
                 inputs.size, "\t".join(records.LOG_COLUMNS))
    if device == "gpu" and isinstance(gpu_runtime, str):
        from spibatch.kernels.xp import ensure_device

        log.info("EMC on GPU %d (%s) of this node", ensure_device(), gpu_runtime)   # one GPU per rank
    warm_up()   # compile or load the kernels now, so that iteration 1's time is the iteration's
    hold = int(os.environ.get(HOLD_ENV, "0") or 0)
    bar_wanted = show_progress and comm is None and sys.stdout.isatty()  # else the per-iteration lines only
    with progress(max(cfg.iterations - first + 1, 0), "EMC iterations", enabled=bar_wanted) as bar:
        for iteration in range(first, cfg.iterations + 1):
            start = time.perf_counter()
            beta = beta_for(cfg, iteration, counts)
            state = StepState(iteration, beta, scales)
            local = emc_iteration(model, rotations, pixels, shards, state, device=device, gpu_runtime=gpu_runtime) \
                if shard_runner is None else shard_runner.step(model, state)
            stepped = time.perf_counter()
            total = mpi.combine(comm, local, frames_per_rank)
            combined = time.perf_counter()
            group = cfg.point_group
            new_model, scales, metrics = finish(total, model, cfg.need_scaling, cfg.friedel_symmetry and not group)
            if group is not None:   # the point group first, then Friedel: both hold exactly in the result
                new_model = symmetrize(new_model, group, cfg.friedel_symmetry)
                metrics["rms_change"] = float(np.sqrt(np.mean((new_model - model) ** 2)))
            finished = time.perf_counter()
            _check_diverged(iteration, new_model, scales, MODEL_LIMIT * max(peak, 1.0), photons_path)
            model = new_model
            phases = {f"{phase}_s": seconds for phase, seconds in local.timings.items()}  # rank 0's shards
            record = {"iteration": iteration, "num_rot": len(rotations), "beta_mean": float(beta.mean()),
                      "mpi_ranks": size, "num_frames": inputs.num_frames, **metrics,
                      "timing": {"step_s": stepped - start, **phases, "combine_s": combined - stepped,
                                 "finish_s": finished - combined}}
            record["time_s"] = finished - start
            if rank == 0:
                records.write_iteration(out_dir, iteration, model, total.frames, scales, rotations.quaternions,
                                        record, inputs.detector.voxel_size_per_m)
            record["timing"]["write_s"] = time.perf_counter() - finished
            history.append(record)
            if rank == 0:
                records.write_logs(out_dir, header, history)
                records.write_checkpoint(out_dir, iteration, model, scales, settings, history)
                bar.note(records.log_row(record))
            bar.advance(1)
            if iteration == hold:
                time.sleep(3600)
    last = max(cfg.iterations, first - 1)
    return {"intensity": out_dir / records.output_name(last), "emc_log": out_dir / records.EMC_LOG,
            "metrics": out_dir / records.METRICS, "checkpoint": out_dir / records.CHECKPOINT}
