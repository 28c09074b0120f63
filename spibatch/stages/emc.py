"""The emc stage: photons + detector -> ``emc/`` (output_NNN.h5 per iteration, EMC.log, metrics, checkpoint).

Runs wherever it is called: in this process (all cores), across the ranks of an MPI launch
(``mpirun -n N spibatch emc``, or the pipeline's HPC job ``python -m spibatch.stages emc RUN_DIR``),
or -- given the pipeline's workers in HTC mode -- as one task per shard per iteration.  It continues
from ``emc/checkpoint.h5`` when a previous attempt left one.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from spibatch.errors import InputError
from spibatch.layout import RunLayout
from spibatch.stages import inputs
from spibatch.stages.checks import budget_for, naming, require_file

log = logging.getLogger("spibatch")


def settings_of(pipeline):
    """The pipeline's emc section as :class:`spibatch.emc.settings.EMCSettings` (plain values)."""
    from spibatch.emc.settings import EMCSettings

    return EMCSettings.from_dict(pipeline.emc.model_dump())


def following_settings(pipeline):
    """The settings of a following run's EMC: iterations without a set end (the stopping rule of
    :class:`spibatch.stages.live.FollowStop` ends it), annealing held after ``emc.iterations``."""
    import dataclasses

    from spibatch.stages.live import MAX_ITERATIONS

    batch = settings_of(pipeline)
    return dataclasses.replace(batch, iterations=MAX_ITERATIONS, anneal_until=batch.iterations)


def check(pipeline, config: Path | None = None, run: RunLayout | None = None, ranks: int = 1, *, budget=None):
    """Before anything is created: the photons and detector exist and match, every rank gets a shard, the
    model, the rotations and the iterations fit the memory and time of ``budget`` (default: this machine),
    the start model fits the grid, and every frame of the photons is sound (one vectorised pass on rank 0:
    pixel indices, counts, row lengths, readable to the end).  Returns :class:`spibatch.emc.driver.Inputs`."""
    import dataclasses

    from spibatch import estimates
    from spibatch.emc.checks import check_values
    from spibatch.emc.driver import check_inputs
    from spibatch.emc.mpi import world
    from spibatch.io.dragonfly import check_photons, photons_info
    from spibatch.io.frame_selection import FrameSelection, gathers

    selection = FrameSelection.of(pipeline.emc, config) if gathers(pipeline.emc) else None
    if selection is None:
        photons, detector = inputs.photons_and_detector(run, pipeline, config)
        require_file(photons, "emc.photons", fix="give a Dragonfly photons file (HDF5 or binary .emc)")
    else:   # several files, or frames left out: the first file stands for them in the header checks
        photons, detector = selection.files[0], pipeline.emc.detector
    require_file(detector, "emc.detector", fix="give the Dragonfly detector file of these photons")
    settings = settings_of(pipeline)
    frames = None if selection is None else selection.kept
    if settings.num_volumes > 1 and getattr(pipeline, "source", None) is None:   # before the modes' memory
        check_modes_frames(settings, frames or photons_info(photons)[0], config)
    with naming(config):
        found = check_inputs(dataclasses.replace(settings, start_model=None), photons, detector, ranks, values=False,
                             frames=frames)
    budget = budget or budget_for()
    gpu = pipeline.device == "gpu"
    refine = settings.refine
    rotations = orientations(settings.num_div if refine is None else refine.num_div, settings.num_modes,
                             settings.nonrot_modes)
    estimates.emc(found.size, rotations,
                  found.num_frames, settings.frames_per_shard, int((found.detector.mask == 0).sum()),
                  settings.iterations, model_field="emc.model_size" if settings.model_size else "emc.detector",
                  gpu=gpu, parallel=budget.parallel(gpu), volumes=settings.num_volumes,
                  rotations_field="emc.num_div" if refine is None else "emc.refine.num_div",
                  **budget.sharing(ranks, -(-found.num_frames // settings.frames_per_shard)),
                  ).check(config, budget, paths={"emc.photons": photons, "emc.detector": detector})
    with naming(config):     # after the estimate: 1e12 iterations are too many before they anneal too far
        check_values(settings)
    if settings.start_model is not None:
        found.start_model = check_start_model(settings.start_model, found.size, settings.num_volumes)
        check_start_voxel(settings.start_model, found.detector.voxel_size_per_m)
    if settings.halves:
        check_halves(pipeline, found.num_frames, ranks, photons if selection is None else None, config)
    comm = world()
    if comm is not None and comm.Get_rank() != 0:
        return found
    tally = [] if found.background is not None else None
    if selection is None:
        check_photons(photons, used=found.detector.mask == 0, tally=tally)
    else:
        selection.check_frames(used=found.detector.mask == 0, tally=tally)
    if tally:
        from spibatch.emc.checks import check_background_level

        (photons_used, frames_read), = tally
        check_background_level(float(found.background[found.detector.mask == 0].sum()),
                               photons_used / max(frames_read, 1), settings.background_file)
    return found


def gather_frames(run: RunLayout, pipeline) -> None:
    """Several emc.photons files, or frames left out (:mod:`spibatch.io.frame_selection`): their kept frames into
    ``emc/photons.h5``, which every rank and task reads, unless it holds them already; under MPI rank 0 writes
    while the others wait."""
    from spibatch.emc import mpi
    from spibatch.io.frame_selection import FrameSelection, gathers

    if not gathers(pipeline.emc):
        return

    def write() -> None:
        from spibatch.estimates import free_disk, human_bytes

        selection = FrameSelection.of(pipeline.emc, run.config)
        if selection.matches(run.gathered_photons):     # an interrupted or resumed run gathered them already
            return
        need, free = selection.gathered_bytes(), free_disk(run.emc)
        if free is not None and need > free:
            raise InputError(f"the {selection.kept:,} kept frames need about {human_bytes(need)} gathered into "
                             f"{run.gathered_photons} but {run.emc} has {human_bytes(free)} free",
                             path=run.config, field="emc.photons", fix="free disk space or write the run elsewhere")
        began = time.perf_counter()
        selection.write(run.gathered_photons)
        log.info("emc: %s, gathered into %s in %.1f s", selection.describe(), run.gathered_photons,
                 time.perf_counter() - began)

    comm = mpi.world()     # the other ranks wait without spinning while rank 0 reads and writes the files
    mpi.patient_collective(comm, lambda: write() if comm is None or comm.Get_rank() == 0 else None)


def check_output_disk(run: RunLayout, pipeline, photons, detector, htc: bool = False, gpu: bool = False) -> None:
    """EMC writes an output_NNN.h5 an iteration (the model as float32, gzip above 128^3, ~68 B a frame): the
    iterations still to run (a resume: after the last output there) must fit on the disk of ``run.emc``
    (``iterations: 1000000000`` wrote 70 MB/s until the disk was full).  At the stage's start, where the run
    folder is known (``--out`` may be on another disk than ``output.runs_dir``).  Beside them, the larger of the
    checkpoint (float64, twice while it is replaced) and, with ``htc``, one iteration's scratch in ``emc/htc/``
    (each shard's sums, float32 -- float64 from the ``gpu`` --, the model sent out; a 50 MB disk the outputs
    fitted filled in iteration 3 before); they are not on disk at once.  A lower bound: halves write a little
    more, the reduced totals' slabs too."""
    from spibatch import estimates
    from spibatch.detector import Detector
    from spibatch.io.dragonfly import photons_info
    from spibatch.io.results import GZIP_MIN_VOXELS

    settings = settings_of(pipeline)
    done = max((int(p.stem[7:]) for p in run.emc.glob("output_*.h5") if p.stem[7:].isdigit()), default=0)
    left = max(settings.iterations - done, 0) * (1 + settings.halves)
    if left == 0:
        return
    size = settings.model_size or Detector.read(detector).model_size()
    volumes = settings.num_volumes + (settings.num_volumes > 1)      # with modes: the first again as `intensity`
    frames = photons_info(photons)[0]
    each = volumes * size ** 3 * 4 * (0.25 if size ** 3 >= GZIP_MIN_VOXELS else 1) + 68 * frames
    voxels = settings.num_volumes * size ** 3
    scratch = (-(-frames // settings.frames_per_shard) * 2 * (8 if gpu else 4) + 8) * voxels if htc else 0
    checkpoint = (1 if run.checkpoint.exists() else 2) * 8 * voxels   # (a resume's is on the disk already)
    estimates.check_disk(each * left + max(checkpoint, scratch), run.emc, run.config, "emc.iterations",
                         f"{left:,} more iterations' output_NNN.h5 ({estimates.human_bytes(each)} each), with the "
                         f"{'HTC scratch of an iteration' if scratch > checkpoint else 'checkpoint'} "
                         f"({estimates.human_bytes(max(checkpoint, scratch))})")


def check_modes_frames(settings, frames: int, config: Path | None = None) -> None:
    """Every mode (rotating and non-rotating) needs frames: more modes than frames (than a half set's, with
    ``halves``) is refused."""
    each = frames // 2 if settings.halves else frames
    if settings.num_volumes > each:
        what = f"{each} frames a half set" if settings.halves else f"{frames} frames"
        raise InputError(f"{settings.num_modes} rotating + {settings.nonrot_modes} non-rotating modes for {what}: "
                         "a mode without frames is an empty volume", path=config,
                         field="emc.nonrot_modes" if settings.nonrot_modes > settings.num_modes else "emc.num_modes",
                         fix=f"use at most {each} modes in all, or more frames")


def check_halves(pipeline, frames: int, ranks: int = 1, photons=None, config: Path | None = None) -> None:
    """emc.halves: each half set has frames enough (and shards for its MPI ranks); not with a live source."""
    from spibatch.emc.halves import check_halves as check_frames

    if getattr(pipeline, "source", None) is not None:
        raise InputError("gold-standard half sets are not made while following a live source", path=config,
                         field="emc.halves", fix="set emc.halves: false, or run EMC on the data once they are in")
    check_frames(frames, pipeline.emc.frames_per_shard, ranks, path=photons or config)


def orientations(num_div: int, num_modes: int = 1, nonrot_modes: int = 0) -> int:
    """The orientations EMC samples: the 600-cell's rotations for each rotating mode, one per junk mode."""
    from spibatch.emc.rotations import num_rotations

    return num_rotations(num_div) * num_modes + nonrot_modes


def check_start_model(path: Path, size: int, volumes: int = 1):
    """The start model (size, size, size) float64 -- (volumes, size, size, size) with modes -- its shape
    checked from the header before it is read (with modes, as it is read)."""
    from spibatch.emc.driver import read_start_model
    from spibatch.io.results import check_not_density, volume_shape

    require_file(path, "emc.start_model", fix="give an (M, M, M) intensity, e.g. an earlier run's output_NNN.h5")
    if volumes > 1:
        return read_start_model(path, (volumes,) + (size,) * 3)
    check_not_density(path, None, "emc.start_model")
    shape = volume_shape(path, field="emc.start_model")
    if shape != (size,) * 3:
        raise InputError(f"shape {shape}, but the model grid is {(size,) * 3}", path=path, field="emc.start_model",
                         fix=f"give an intensity on the {size}^3 grid (emc.model_size or the detector's)")
    return read_start_model(path, size)


def check_start_voxel(path: Path, dq: float | None) -> None:
    """A start model whose file gives its Fourier voxel (``voxel_size_per_m``) samples q as the detector does
    (one of another geometry, on a grid of the same size, was taken silently)."""
    from spibatch.io.results import is_hdf5, positive_attribute, read_result

    if dq is None or not is_hdf5(path):
        return
    given = positive_attribute(read_result(path, attrs_only=True)[1].get("voxel_size_per_m"), path,
                               "voxel_size_per_m")
    if given is not None and abs(given / dq - 1) > 1e-3:
        raise InputError(f"its Fourier voxel is {given:.6g} 1/m, the detector's {dq:.6g} 1/m: a model of another "
                         "geometry", path=path, field="emc.start_model",
                         fix="start from an intensity of this geometry (an output_NNN.h5 of these data), or leave "
                         "emc.start_model out")


def check_resume(run: RunLayout, pipeline, config: Path | None = None) -> None:
    """Before a resume of ``run`` writes anything (``open_run(check=...)``): its EMC checkpoint, if there is one,
    reads and was computed with this pipeline's EMC settings from the photons and detector files EMC would
    read now (the pipeline's, or this run's own simulate/ingest stage's); InputError (one line) otherwise."""
    from spibatch.emc.driver import check_resume as check_checkpoint

    if not run.checkpoint.exists():
        outputs = sorted(run.emc.glob("output_*.h5")) if run.emc.is_dir() else []
        if len(outputs) > 1:   # the checkpoint follows each iteration's output: one output alone may be a run
                               # killed before its first checkpoint (started again, it writes output_001 anew)
            raise InputError(f"{len(outputs)} EMC output file(s) here but no checkpoint.h5 to continue from",
                             path=run.emc, field="--resume", fix="put checkpoint.h5 back, or start a new run")
        if not run.emc.exists() and run.marker("phase").exists():
            raise InputError("this run phased a given intensity: it holds no EMC run to continue", path=run.path,
                             field="--resume", fix="give the run folder of an EMC run, or start a new one")
        return
    photons, detector = inputs.photons_and_detector(run, pipeline, config)
    check_gathered(run, pipeline, config)
    available = None
    if getattr(pipeline, "source", None) is not None:    # the chunks joined while it ran: all committed hits count
        from spibatch.stream.shards import ChunkShards

        shards = ChunkShards(run.follow)
        shards.poll()
        available = shards.hits
    settings = settings_of(pipeline) if available is None else following_settings(pipeline)
    check_checkpoint(settings, photons, detector, run.emc, available)


def check_rerun(run: RunLayout, path: Path, problem: str) -> None:
    """InputError when EMC, run again for its damaged output ``path``, could not write it: a resume continues from
    the checkpoint, which is past the iteration that wrote it (stages.forget_damaged)."""
    checkpoint = Path(run.path) / "emc" / "checkpoint.h5"
    if path != checkpoint and checkpoint.exists():
        raise InputError(f"{problem}, and EMC's checkpoint is past the iteration that wrote it: it cannot be written "
                         "again", path=path, field="emc", fix=f"delete {checkpoint} to run EMC again from its first "
                         "iteration, then resume")


def check_gathered(run: RunLayout, pipeline, config: Path | None = None) -> None:
    """A resumed run's checkpoint was computed from the frames gathered in ``emc/photons.h5``: emc.photons,
    emc.blacklist_file or emc.selection now leaving out other frames is refused (one line) before anything is
    written."""
    from spibatch.io.frame_selection import FrameSelection, gathers

    if not gathers(pipeline.emc):
        return
    if not run.gathered_photons.exists():
        raise InputError("this run's EMC checkpoint is here but not the frames it was computed from",
                         path=run.gathered_photons, field="--resume", fix="start a new run")
    if not FrameSelection.of(pipeline.emc, config).matches(run.gathered_photons):
        raise InputError("emc.photons, emc.blacklist_file or emc.selection now leave out other frames than this "
                         "run's EMC read (its checkpoint is from those)", path=config, field="emc.blacklist_file",
                         fix="put the files back as they were, or start a new run")


def ranks_for(pipeline, run: RunLayout, workers) -> int:
    """MPI ranks of the HPC-mode job: the site's workers, at most one per shard."""
    from spibatch.emc.mpi import shard_bounds
    from spibatch.io.dragonfly import photons_info

    following = getattr(pipeline, "source", None) is not None
    if following:          # EMC starts on the first chunk (the MPI job waits for the same one); a worker is kept free
        from spibatch.stages.live import first_photons   # for the previews

        frames = first_photons(run, pipeline.source.emc_start_hits)[1]
    else:
        frames = photons_info(inputs.photons_and_detector(run, pipeline)[0])[0]
    shards = len(shard_bounds(frames, pipeline.emc.frames_per_shard))
    most = max(1, workers.count - 1) if following else workers.count
    if pipeline.emc.halves:   # two sub-communicators: each rank needs a shard of its half too
        shards = min(shards, 2 * len(shard_bounds(frames // 2, pipeline.emc.frames_per_shard)))
    if shards < most:
        log.info("emc: %d frames make %d shard(s) of at most emc.frames_per_shard = %d: %d MPI rank(s) (a rank "
                 "needs a shard), not the %d workers", frames, shards, pipeline.emc.frames_per_shard, shards, most)
    return max(1, min(most, shards))


def outputs(run: RunLayout, pipeline) -> dict[str, Path]:
    out = {"intensity": inputs.emc_intensity(run, pipeline), "emc_log": run.emc_log, "metrics": run.emc_metrics,
           "checkpoint": run.checkpoint}
    if pipeline.emc.halves:
        from spibatch.layout import output_name

        last = output_name(pipeline.emc.iterations)
        out.update({"half_1": run.half(0) / last, "half_2": run.half(1) / last, "halves": run.halves_json})
    return out


def executor_for(run: RunLayout, device, workers):
    """Where the shard steps run: the pipeline's workers (HTC: one task per shard per iteration), the ranks of
    an MPI launch, or this process."""
    from spibatch.emc.executors import InProcess, MPIRanks, Tasks
    from spibatch.emc.mpi import world

    if workers is not None:
        return Tasks(workers.submit, run.htc, workers.threads(), device, reducers=workers.count)
    comm = world()
    return InProcess(device) if comm is None else MPIRanks(comm, device)


def run(run: RunLayout, pipeline, device, workers=None) -> dict[str, Path]:
    from spibatch.emc import hooks
    from spibatch.emc.driver import run_emc

    gather_frames(run, pipeline)     # before the HPC job: its ranks are counted from the gathered frames
    if workers is not None and workers.emc_mode == "hpc":
        workers.run_job("emc", run, ranks_for(pipeline, run, workers))
        return outputs(run, pipeline)
    if getattr(pipeline, "source", None) is not None:   # frames still arriving: spibatch.stages.live
        return run_emc_following(run, pipeline, device, workers)
    settings = settings_of(pipeline)
    photons, detector = inputs.photons_and_detector(run, pipeline)
    run.emc.mkdir(parents=True, exist_ok=True)
    check_output_disk(run, pipeline, photons, detector, htc=workers is not None,
                      gpu=getattr(device, "is_gpu", False))
    executor = executor_for(run, device, workers)
    bar = workers is None and executor.size == 1
    with hooks.standard(settings.iterations, display=executor.writes, bar=bar) as on_iteration:
        result = run_emc(settings, photons, detector, run.emc, executor=executor, resume=run.checkpoint.exists(),
                         on_iteration=on_iteration)
    if settings.halves:
        from spibatch.stages.emc_halves import run_halves

        result.update(run_halves(run, settings, photons, detector, device, workers))
    return result


def run_emc_following(run: RunLayout, pipeline, device, workers=None) -> dict[str, Path]:
    """The emc stage of a following pipeline (in this process, across MPI ranks, or HTC tasks)."""
    from spibatch.emc import hooks
    from spibatch.emc.driver import run_emc
    from spibatch.stages.live import FollowerLife, FollowStop, first_photons
    from spibatch.stream.shards import ChunkShards

    src = pipeline.source
    settings = following_settings(pipeline)
    executor = executor_for(run, device, workers)
    start = executor.broadcast(executor.collective(
        lambda: first_photons(run, src.emc_start_hits) if executor.writes else None))
    photons, frames = start
    source = ChunkShards(run.follow, start_frame=frames, frames_per_shard=settings.frames_per_shard)
    with hooks.standard(settings.iterations, display=executor.writes, bar=False) as on_iteration:
        return run_emc(settings, photons, run.detector("follow"), run.emc, executor=executor,
                       resume=run.checkpoint.exists(), source=source, on_iteration=on_iteration,
                       until=FollowStop(source, src.iterations_after_end, pipeline.emc.iterations,
                                        FollowerLife(run)))
