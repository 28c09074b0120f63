"""The emc stage: photons + detector -> ``emc/`` (output_NNN.h5 per iteration, EMC.log, metrics, checkpoint).

Runs wherever it is called: in this process (all cores), across the ranks of an MPI launch
(``mpirun -n N spibatch emc``, or the pipeline's HPC job ``python -m spibatch.stages emc RUN_DIR``),
or -- given the pipeline's workers in HTC mode -- as one task per shard per iteration.  It continues
from ``emc/checkpoint.h5`` when a previous attempt left one.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from spibatch.layout import RunLayout
from spibatch.stages import inputs

log = logging.getLogger("spibatch")


def check(pipeline, config: Path | None = None, run: RunLayout | None = None, ranks: int = 1):
    """Before anything is created: the photons and detector exist and match, the start model fits, every rank
    gets a shard (headers only).  Returns :class:`spibatch.emc.driver.Inputs`."""
    from spibatch.emc.driver import check_inputs

    photons, detector = inputs.photons_and_detector(run, pipeline, config)
    return check_inputs(pipeline.emc, photons, detector, ranks)


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


def run(run: RunLayout, pipeline, device, workers=None) -> dict[str, Path]:
    from spibatch.emc.driver import run_emc
    from spibatch.emc.mpi import world

    photons, detector = inputs.photons_and_detector(run, pipeline)
    if workers is not None and workers.emc_mode == "hpc":
        workers.run_job("emc", run, ranks_for(pipeline, run, workers))
        return outputs(run, pipeline)
    runner = None
    if workers is not None:
        from spibatch.emc.htc import ShardRunner

        runner = ShardRunner(workers.submit, photons, detector, pipeline.emc.num_div, run.emc, workers.threads(),
                             device.kind, device.launch_runtime)
    comm = world() if workers is None else None
    resume = run.checkpoint.exists()
    return run_emc(pipeline.emc, photons, detector, run.emc, resume=resume, comm=comm,
                   show_progress=workers is None and sys.stdout.isatty(), device=device.kind,
                   gpu_runtime=device.launch_runtime, shard_runner=runner)
