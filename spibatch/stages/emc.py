"""The emc stage: photons + detector -> ``emc/`` (output_NNN.h5 per iteration, EMC.log, metrics, checkpoint).

Runs wherever it is called: in this process (all cores), across the ranks of an MPI launch
(``mpirun -n N spibatch emc``, or the pipeline's HPC job ``python -m spibatch.stages emc RUN_DIR``),
or -- given the pipeline's workers in HTC mode -- as one task per shard per iteration.  It continues
from ``emc/checkpoint.h5`` when a previous attempt left one.
"""

from __future__ import annotations

import logging
from pathlib import Path

from spibatch.layout import RunLayout
from spibatch.stages import inputs

log = logging.getLogger("spibatch")


def settings_of(pipeline):
    """The pipeline's emc section as :class:`spibatch.emc.settings.EMCSettings` (plain values)."""
    from spibatch.emc.settings import EMCSettings

    return EMCSettings.from_dict(pipeline.emc.model_dump())


def check(pipeline, config: Path | None = None, run: RunLayout | None = None, ranks: int = 1):
    """Before anything is created: the photons and detector exist and match, the start model fits, every rank
    gets a shard (headers only).  Returns :class:`spibatch.emc.driver.Inputs`."""
    from spibatch.emc.driver import check_inputs

    photons, detector = inputs.photons_and_detector(run, pipeline, config)
    return check_inputs(settings_of(pipeline), photons, detector, ranks)


def check_resume(run: RunLayout, pipeline, config: Path | None = None) -> None:
    """Before a resume of ``run`` writes anything (``open_run(check=...)``): its EMC checkpoint, if there is one,
    reads and was computed with this pipeline's EMC settings from the photons and detector files EMC would
    read now (the pipeline's, or this run's own simulate/ingest stage's); InputError (one line) otherwise."""
    from spibatch.emc.driver import check_resume as check_checkpoint

    if not run.checkpoint.exists():
        return
    photons, detector = inputs.photons_and_detector(run, pipeline, config)
    check_checkpoint(settings_of(pipeline), photons, detector, run.emc)


def ranks_for(pipeline, run: RunLayout, workers) -> int:
    """MPI ranks of the HPC-mode job: the site's workers, at most one per shard."""
    from spibatch.emc.mpi import shard_bounds
    from spibatch.io.dragonfly import photons_info

    photons, _ = inputs.photons_and_detector(run, pipeline)
    shards = len(shard_bounds(photons_info(photons)[0], pipeline.emc.frames_per_shard))
    if shards < workers.count:
        log.info("emc: %d shard(s) of %d frames: %d MPI rank(s), not %d", shards, pipeline.emc.frames_per_shard,
                 shards, workers.count)
    return max(1, min(workers.count, shards))


def outputs(run: RunLayout, pipeline) -> dict[str, Path]:
    return {"intensity": inputs.emc_intensity(run, pipeline), "emc_log": run.emc_log, "metrics": run.emc_metrics,
            "checkpoint": run.checkpoint}


def executor_for(run: RunLayout, device, workers):
    """Where the shard steps run: the pipeline's workers (HTC: one task per shard per iteration), the ranks of
    an MPI launch, or this process."""
    from spibatch.emc.executors import InProcess, MPIRanks, Tasks
    from spibatch.emc.mpi import world

    if workers is not None:
        return Tasks(workers.submit, run.htc, workers.threads(), device)
    comm = world()
    return InProcess(device) if comm is None else MPIRanks(comm, device)


def run(run: RunLayout, pipeline, device, workers=None) -> dict[str, Path]:
    from spibatch.emc import hooks
    from spibatch.emc.driver import run_emc

    if workers is not None and workers.emc_mode == "hpc":
        workers.run_job("emc", run, ranks_for(pipeline, run, workers))
        return outputs(run, pipeline)
    settings = settings_of(pipeline)
    photons, detector = inputs.photons_and_detector(run, pipeline)
    executor = executor_for(run, device, workers)
    bar = workers is None and executor.size == 1
    with hooks.standard(settings.iterations, display=executor.writes, bar=bar) as on_iteration:
        return run_emc(settings, photons, detector, run.emc, executor=executor, resume=run.checkpoint.exists(),
                       on_iteration=on_iteration)
