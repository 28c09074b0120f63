"""The EMC driver: setup, then one loop of iterations over the shards an executor holds.

:func:`run_emc` reads a Dragonfly photons + detector pair, cuts the frames into shards of
``frames_per_shard`` (:class:`~spibatch.emc.types.ShardSpec`) and hands them to the executor the
caller chose (:mod:`spibatch.emc.executors`: in this process, across MPI ranks, or as HTC tasks).
Each iteration: the per-frame beta (with its schedule) and the scales make the
:class:`~spibatch.emc.types.StepState`; the executor returns the sums of every shard, reduced;
:func:`~spibatch.emc.types.finish` (then the point group) makes the new model; the process that
writes (rank 0) writes ``output_NNN.h5``, ``EMC.log``, ``metrics.jsonl`` and then ``checkpoint.h5``
(:class:`~spibatch.emc.records.Recorder`); then the caller's ``on_iteration`` hooks
(:mod:`spibatch.emc.hooks`: progress display, the test's hold) hear the record.

New shards may join between iterations: a ``source`` with ``poll() -> list[ShardSpec]`` (frames
numbered on from the run's, in any photons files matching the detector) is polled before each
iteration; their frames start at scale 1 and join the beta and scale arrays.  Without a source
the frames are the photons file's, as always.

``resume=True`` continues from the checkpoint and ends in the bit-identical model of an
uninterrupted run (same machine, same number of ranks and threads).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Callable, Iterable

import numpy as np

from spibatch import interrupts
from spibatch.emc import records
from spibatch.emc.checks import Inputs, check_inputs, check_shards, read_start_model  # noqa: F401 (the stage's entry)
from spibatch.emc.settings import EMCSettings
from spibatch.emc.step import default_threads, leveled, random_model, warm_up
from spibatch.emc.symmetry import symmetrize
from spibatch.emc.refine import Candidates, CandidateSearch
from spibatch.emc.types import Geometry, ShardSpec, StepState, finish
from spibatch.errors import InputError
from spibatch.io.atomic import remove_partial_files
from spibatch.io.fingerprint import input_fingerprint
from spibatch.layout import CHECKPOINT, EMC_LOG, METRICS, output_name

log = logging.getLogger("spibatch")

SCALE_LIMIT = 1e6        # a scale factor above this (the mean is 1) means the fit diverged
MODEL_LIMIT = 1e6        # ... as does a model voxel above this times the largest photon count in a pixel


@dataclass
class Run:
    """The loop's state: what setup found and what each iteration changes.

    counts, scales (D,) float64: photons on used pixels and scale factor of every frame so far;
    background_scales (D,) float64: each frame's background scale (None without a background);
    peak: the largest photon count in one pixel; first: the first iteration still to run.
    """

    settings: EMCSettings
    photons: Path
    detector: Path
    inputs: Inputs
    geometry: Geometry
    counts: np.ndarray
    peak: float
    model: np.ndarray
    scales: np.ndarray
    first: int
    recorder: records.Recorder
    background_scales: np.ndarray | None = None
    fine: Geometry | None = None            # emc.refine: the fine grid's geometry
    candidates: Candidates | None = None    # ... and each frame's fine rotations, once the coarse iterations end
    whole_grid: int = 0                     # ... the frames among them that search the whole fine grid
    search: CandidateSearch | None = None   # ... and what choosing them shares from iteration to iteration

    @property
    def num_frames(self) -> int:
        return len(self.counts)


def run_emc(settings: EMCSettings, photons, detector, out_dir, *, executor, resume: bool = False, source=None,
            on_iteration: Iterable[Callable[[dict], None]] = (), until: Callable[[dict], bool] | None = None
            ) -> dict[str, Path]:
    """Run EMC with ``settings`` on ``photons`` + ``detector``, writing into ``out_dir``; the outputs' paths.

    executor: where the shard steps run (:mod:`spibatch.emc.executors`; only the process whose
    ``executor.writes`` writes).  resume: continue from ``out_dir/checkpoint.h5`` when it exists.
    source: None, or an object whose ``poll() -> list[ShardSpec]`` gives new shards before each
    iteration.  on_iteration: callables given each iteration's record once its files are written (a hook
    whose ``needs_files`` is False may be called while they are being written).
    until: a stopping rule, asked after each iteration's hooks on the writing process (the answer is
    broadcast): True ends the loop before ``settings.iterations``, which is then the most it runs.
    Returns ``{"intensity", "emc_log", "metrics", "checkpoint": path}`` (on every rank).
    Raises InputError on bad input or a diverging fit (earlier iterations' files are kept).
    """
    out_dir = Path(out_dir)
    run = setup(settings, photons, detector, out_dir, executor, resume, source)
    poll = _poller(source, run, executor)
    hooks = list(on_iteration)
    on_disk = any(getattr(hook, "needs_files", True) for hook in hooks)   # else the files lag one iteration
    last = run.first - 1
    try:
        for iteration in range(run.first, settings.iterations + 1):
            interrupts.raise_if_swallowed()
            _take_shards(run, executor, poll())
            record = iterate(run, executor, iteration)
            last = iteration
            if on_disk:
                run.recorder.flush()
            for hook in hooks:
                hook(record)
            if until is not None and _stop(until, record, executor):
                break
        interrupts.raise_if_swallowed()
    finally:
        run.recorder.close()     # every iteration's files on disk (an error, an interrupt: the ones begun)
    return {"intensity": out_dir / output_name(max(last, 1)), "emc_log": out_dir / EMC_LOG,
            "metrics": out_dir / METRICS, "checkpoint": out_dir / CHECKPOINT}


def _stop(until: Callable[[dict], bool], record: dict, executor) -> bool:
    """The stopping rule's answer on the writing process, the same on every rank."""
    return bool(executor.broadcast(executor.patient(lambda: bool(until(record)) if executor.writes else None)))


def setup(settings: EMCSettings, photons, detector, out_dir: Path, executor, resume: bool, source=None) -> Run:
    """Inputs checked, geometry, the shards handed to the executor, the start (model, scales, history) or the
    checkpoint's, the records started (``EMC.log`` header) and the kernels compiled.

    Resuming a run whose checkpoint holds more frames than the photons file (shards of ``source`` joined it
    while it ran: a following run), the source's shards join first -- the checkpoint's frames are the first
    of them, numbered without gaps as the source numbers them -- and frames committed since start at scale 1."""
    inputs = executor.collective(check_inputs, settings, photons, detector, executor.size)
    photons, detector = Path(photons), Path(detector)
    threads = _limit_threads()
    geometry = Geometry.build(detector, settings.num_div, inputs.detector, settings.detector_corr,
                              settings.num_modes, settings.nonrot_modes, settings.background_file, inputs.background)
    fine = None
    if settings.refine is not None:
        if source is not None:
            raise InputError("the coarse-to-fine search is not supported while following a live source (frames "
                             "that join after the coarse iterations have no candidates)", path=photons,
                             field="emc.refine", fix="remove emc.refine, or run EMC on the data once they are in")
        fine = Geometry.build(detector, settings.refine.num_div, inputs.detector, settings.detector_corr, 1, 0,
                              settings.background_file, inputs.background)
    specs = ShardSpec.cut(photons, 0, inputs.num_frames, settings.frames_per_shard)
    counts, peak = executor.add_shards(specs, geometry)
    recorded = executor.broadcast(executor.collective(   # the writer reads the files' fingerprints
        lambda: resume_record(settings, inputs, photons, detector) if executor.writes else None))
    voxels = settings.num_volumes * inputs.size ** 3      # the model's: a checkpoint's is compared before it is read
    checkpoint = executor.broadcast(executor.collective(_read_checkpoint, out_dir, resume and executor.writes, voxels))
    if checkpoint is not None:
        if source is not None and len(checkpoint["scales"]) > len(counts):
            joined = _polled(source, len(counts), inputs, detector, executor)
            if joined:
                more, more_peak = executor.add_shards(joined, geometry, join=settings.frames_per_shard)
                counts, peak, specs = np.concatenate([counts, more]), max(peak, more_peak), specs + joined
        check_checkpoint(checkpoint, recorded, len(counts), out_dir, photons, detector, growing=source is not None)
        log.info("resuming after iteration %d from %s (%d frames)", checkpoint["iteration"], out_dir / CHECKPOINT,
                 len(checkpoint["scales"]))
        model, history = checkpoint["model"], checkpoint["history"]
        scales = np.concatenate([checkpoint["scales"], np.ones(len(counts) - len(checkpoint["scales"]))])
        background_scales = checkpoint.get("background_scales")
        if background_scales is not None:
            background_scales = np.concatenate([background_scales, np.ones(len(counts) - len(background_scales))])
    else:
        model = random_model(inputs.size, geometry.pixels, geometry.rotations, float(counts.mean()), settings.seed) \
            if inputs.start_model is None else leveled(inputs.start_model, geometry, float(counts.mean()), executor.writes)
        scales, history = np.ones(inputs.num_frames), []
        background_scales = None
    if geometry.pixels.background is not None and background_scales is None:
        background_scales = np.ones(len(counts))   # the background file's level to start with
    header = records.log_header(_header_info(settings, photons, inputs, geometry, counts, threads, executor.size))
    recorder = records.Recorder(out_dir if executor.writes else None, header, recorded,
                                geometry.rotations.quaternions, inputs.detector.voxel_size_per_m, history)
    recorder.start()
    if executor.writes:
        log.info("EMC: %d frames in %d shard(s) on %d rank(s) x %d thread(s), %d rotations (num_div %d), "
                 "model %d^3\n%s", len(counts), len(specs), executor.size, threads, len(geometry.rotations),
                 settings.num_div, inputs.size, "\t".join(records.LOG_COLUMNS))
    # compile or load the kernels now, so that iteration 1's time is the iteration's
    warm_up(background=geometry.pixels.background is not None)
    first = 1 if checkpoint is None else checkpoint["iteration"] + 1
    run = Run(settings, photons, detector, inputs, geometry, counts, peak, model, scales, first, recorder,
              background_scales, fine)
    if fine is not None and first > settings.refine.after:   # resuming after the coarse iterations
        top, info = executor.broadcast(executor.collective(
            lambda: records.read_top_rotations(out_dir, first - 1) if executor.writes else None))
        _next_candidates(run, top, info, first - 1)
    return run


def _next_candidates(run: Run, top: np.ndarray, info: np.ndarray, iteration: int) -> None:
    """Each frame's fine rotations for the next iteration, from its ``top`` (D, k) rotations of ``iteration``
    (on the coarse grid if that was the last coarse one, else on the fine grid) and its mutual information
    ``info`` (D,) nats: near them, or the whole fine grid where ``info`` was below ``refine.min_info``."""
    refine = run.settings.refine
    began = perf_counter()
    centres = run.geometry if iteration == refine.after else run.fine
    top = np.where((info >= refine.min_info)[:, None], top, -1)
    if run.search is None:
        run.search = CandidateSearch(run.geometry.rotations.quaternions, run.fine.rotations.quaternions,
                                     refine.radius)
    run.candidates = run.search.choose(top, centres.rotations.quaternions)
    run.recorder.quaternions = run.fine.rotations.quaternions   # the records name fine rotations from now on
    per_frame = np.diff(run.candidates.ptr)
    run.whole_grid = int((top[:, 0] < 0).sum())
    log.info("EMC: coarse-to-fine after iteration %d: %d fine rotations (num_div %d), %.0f per frame on average "
             "(%.1f %%; %d frame(s) not yet oriented search them all), chosen in %.2f s", iteration,
             len(run.fine.rotations), refine.num_div, per_frame.mean(), 100 * per_frame.mean() /
             len(run.fine.rotations), run.whole_grid, perf_counter() - began)


def _read_checkpoint(out_dir: Path, wanted: bool, voxels: int) -> dict | None:
    if not (wanted and out_dir.exists()):
        return None
    remove_partial_files(out_dir)
    return records.read_checkpoint(out_dir, voxels=voxels)


def resume_record(settings: EMCSettings, inputs: Inputs, photons, detector) -> dict:
    """What the checkpoint records and a resume must find again: the settings that must not change
    (:meth:`EMCSettings.resume_record`), the data's sizes, and the fingerprints of the photons and detector
    files the run reads (:func:`spibatch.io.fingerprint.input_fingerprint`)."""
    return {**settings.resume_record(), "num_frames": inputs.num_frames, "num_pix": inputs.detector.num_pix,
            "model_size": inputs.size, "photons_fingerprint": input_fingerprint(photons),
            "detector_fingerprint": input_fingerprint(detector)}


DATA_KEYS = {"photons_fingerprint": "photons", "detector_fingerprint": "detector"}


PRE_MERGE = {"merge": "pooled"}   # what a checkpoint from before emc.merge was computed with


def check_checkpoint(checkpoint: dict, recorded: dict, num_frames: int, out_dir: Path, photons, detector, *,
                     growing: bool = False) -> None:
    """InputError (one line) unless ``checkpoint`` (:func:`records.read_checkpoint`) was computed with the
    settings and from the data of ``recorded`` (:func:`resume_record`) for ``num_frames`` frames (``growing``:
    a run that takes shards as they come, e.g. a follow's chunks: for at most ``num_frames``, the frames there
    are now).  A checkpoint written before the fingerprints were recorded is not asked for them.  (The model's
    size was compared as it was read: :func:`records.read_checkpoint`.)"""
    saved = {**PRE_MERGE, **checkpoint["settings"]}
    for key, name in DATA_KEYS.items():
        if key in saved and saved[key] != recorded.get(key):
            path = photons if name == "photons" else detector
            raise InputError(f"not the {name} file the checkpoint was computed from (its fingerprint differs from "
                             f"the one {out_dir / CHECKPOINT} records)", path=path, field=f"emc.{name}",
                             fix=f"resume with the run's own {name} file, or start a new run")
    changed = sorted(k for k in recorded.keys() | saved.keys()
                     if k not in DATA_KEYS and recorded.get(k) != saved.get(k))
    if changed:
        raise InputError(f"settings differ from the run being resumed: {', '.join(changed)}",
                         path=out_dir / CHECKPOINT, field="emc",
                         fix="resume with the run's own config.yaml, or start a new run")
    model = np.asarray(checkpoint["model"])
    if not np.all(np.isfinite(model)) or not np.all(np.isfinite(checkpoint["scales"])):
        raise InputError("the checkpoint's model or scales hold NaN or infinite values", path=out_dir / CHECKPOINT,
                         field="model", fix="delete it to start the EMC run again from iteration 1")
    if growing and len(checkpoint["scales"]) > num_frames:
        raise InputError(f"the checkpoint holds the scales of {len(checkpoint['scales'])} frames, the photons file "
                         f"and the shards that joined it only {num_frames}", path=out_dir / CHECKPOINT, field="emc",
                         fix="resume with the run's own follow/ folder, or start a new run")
    if not growing and len(checkpoint["scales"]) != num_frames:
        raise InputError(f"the checkpoint holds the scales of {len(checkpoint['scales'])} frames, the photons file "
                         f"{num_frames} (shards joined the run while it ran)", path=out_dir / CHECKPOINT,
                         field="emc", fix="start a new run: resuming a run that took new shards is not supported")


def check_resume(settings: EMCSettings, photons, detector, out_dir: Path, available: int | None = None) -> int | None:
    """Before a resume writes anything: the checkpoint in ``out_dir``, if there is one, reads and was computed
    with these settings from these data (:func:`check_checkpoint`); the iteration it holds, None without one.
    ``available``: a run taking shards as they come has this many frames now (the photons file's and the
    shards'), at least as many as the checkpoint holds.  InputError otherwise (a corrupt checkpoint too).
    Reads only."""
    if not (Path(out_dir) / CHECKPOINT).exists():
        return None
    inputs = check_inputs(settings, photons, detector)
    checkpoint = records.read_checkpoint(Path(out_dir), voxels=settings.num_volumes * inputs.size ** 3)
    check_checkpoint(checkpoint, resume_record(settings, inputs, photons, detector),
                     inputs.num_frames if available is None else available, Path(out_dir), photons, detector,
                     growing=available is not None)
    return checkpoint["iteration"]


def _header_info(settings: EMCSettings, photons: Path, inputs: Inputs, geometry: Geometry, counts: np.ndarray,
                 threads: int, ranks: int) -> dict:
    schedule = settings.beta_schedule
    return {"photons": os.fspath(photons), "num_data": inputs.num_frames, "mean_count": float(counts.mean()),
            "num_rot": len(geometry.rotations), "num_used": geometry.pixels.num_used,
            "num_pix": inputs.detector.num_pix, "size": inputs.size, "volumes": settings.num_volumes,
            "num_threads": threads, "mpi_ranks": ranks,
            "beta": settings.beta, "beta_factor": settings.beta_factor, "need_scaling": settings.need_scaling,
            "friedel_symmetry": settings.friedel_symmetry, "point_group": settings.point_group or "none",
            "beta_schedule": "none" if schedule is None else f"{schedule.factor} {schedule.period}",
            "start_model": settings.start_model or f"random (seed {settings.seed})"}


def _poller(source, run: Run, executor) -> Callable[[], list[ShardSpec]]:
    """``poll()`` for the loop: no shards without a source; else the source's new shards, polled and checked
    where the files are written (rank 0) and the same list on every rank."""
    if source is None:
        return list
    return lambda: _polled(source, run.num_frames, run.inputs, run.detector, executor)


def _polled(source, num_frames: int, inputs: Inputs, detector, executor) -> list[ShardSpec]:
    """The source's new shards, polled and checked (frames on from ``num_frames``) on the writing process, the
    same list on every rank."""
    def checked():
        if not executor.writes:
            return None
        return check_shards(list(source.poll()), num_frames, inputs.detector, detector)

    return executor.broadcast(executor.collective(checked))


def _take_shards(run: Run, executor, specs: list[ShardSpec]) -> None:
    """Hand new shards to the executor (small ones joining the last it holds, up to ``frames_per_shard``); their
    frames join the counts and start at scale 1."""
    if not specs:
        return
    counts, peak = executor.add_shards(specs, run.geometry, join=run.settings.frames_per_shard)
    run.counts = np.concatenate([run.counts, counts])
    run.scales = np.concatenate([run.scales, np.ones(len(counts))])
    if run.background_scales is not None:
        run.background_scales = np.concatenate([run.background_scales, np.ones(len(counts))])
    run.peak = max(run.peak, peak)
    log.info("EMC: %d new frame(s) in %d shard(s) joined: %d frames", len(counts), len(specs), run.num_frames)


def iterate(run: Run, executor, iteration: int) -> dict:
    """One iteration: step every shard, finish, check, write; the iteration's record."""
    settings = run.settings
    start = perf_counter()
    beta = settings.beta_for(iteration, run.counts)
    refine = settings.refine
    fine = refine is not None and iteration > refine.after
    geometry = run.fine if fine else run.geometry
    state = StepState(iteration, beta, run.scales, run.background_scales, run.candidates if fine else None,
                      refine.top if refine is not None and iteration >= refine.after else 0, settings.merge)
    total = executor.step(run.model, geometry, state)
    stepped = perf_counter()
    combine_s = total.timings.pop("combine", 0.0)
    group = settings.point_group
    model, scales, metrics = finish(total, run.model, settings.need_scaling, settings.friedel_symmetry and not group,
                                    run.geometry.pixels.background_sum, settings.fit_background_scale)
    if group is not None:   # the point group first, then Friedel: both hold exactly in the result
        model = (np.stack([symmetrize(v, group, settings.friedel_symmetry) for v in model]) if model.ndim == 4
                 else symmetrize(model, group, settings.friedel_symmetry))
        metrics["rms_change"] = float(np.sqrt(np.mean((model - run.model) ** 2)))
        metrics["model_rms"] = float(np.sqrt(np.mean(model ** 2)))
    finished = perf_counter()
    _check_diverged(iteration, model, scales, MODEL_LIMIT * max(run.peak, 1.0), run.photons)
    run.model, run.scales = model, scales
    if run.background_scales is not None:
        run.background_scales = total.frames.get("background_scale", run.background_scales)
        metrics["background_scale_mean"] = float(run.background_scales.mean())
    phases = {f"{phase}_s": seconds for phase, seconds in total.timings.items()}   # rank 0's shards
    record = {"iteration": iteration, "num_rot": len(geometry.rotations), "beta_mean": float(beta.mean()),
              "mpi_ranks": executor.size, "num_frames": run.num_frames, **metrics,
              "timing": {"step_s": stepped - start - combine_s, **phases, "combine_s": combine_s,
                         "finish_s": finished - stepped}}
    if fine:
        record["mean_candidates"] = float(np.diff(run.candidates.ptr).mean())
        record["frames_whole_grid"] = run.whole_grid
    record["time_s"] = finished - start
    run.recorder.save(iteration, model, total.frames, scales, record)
    if state.top and iteration < settings.iterations:   # the next fine search is around its top rotations
        _next_candidates(run, total.frames["top_rotations"], total.frames["mutual_info"], iteration)
    return record


def _check_diverged(iteration: int, model: np.ndarray, scales: np.ndarray, model_limit: float, photons) -> None:
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
        raise InputError(f"iteration {iteration}: the reconstruction diverged: {problem}", path=photons,
                         field="emc.need_scaling", fix="set emc.need_scaling: false or use frames with more "
                         f"photons; outputs up to iteration {iteration - 1} are kept")


def _limit_threads() -> int:
    """Numba threads: no more than the cores this process may run on (mpirun binds a rank to one)."""
    import numba

    numba.set_num_threads(max(1, min(numba.get_num_threads(), default_threads())))
    return numba.get_num_threads()
