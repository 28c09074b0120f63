"""The pipeline: its stages as Parsl apps on a site, in one run directory, resumable.

``simulate`` (or ``ingest``: a CXI stack, or the pipeline's own photons) -> ``emc`` -> ``phase``
(one task per start, then the merge) -> ``validate`` -> ``report``.  Stage bodies live in
:mod:`spibatch.stages`; each writes ``stages/<name>.json`` when done, and a stage with
that marker is never run again (``spibatch resume RUN_DIR``).  EMC runs as the site says:

* HPC: ``spibatch emc emc.yaml --out <run>/emc`` (``--resume`` when a previous attempt left
  a checkpoint) as one MPI job: the provider's ``emc_launch`` (``$PARSL_MPI_PREFIX`` on
  Slurm's MPIExecutor, ``mpirun -n`` locally) in a Parsl bash app;
* HTC: :func:`spibatch.emc.htc.run_emc_htc` in this process, one python app per shard per
  iteration on the ``tasks`` executor.

Parsl's ``runinfo/`` (logs, submit scripts) is kept inside the run directory.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from spibatch import stages
from spibatch.backends import TASKS_LABEL, Site, dump_site, load_site, provider_for
from spibatch.errors import InputError

log = logging.getLogger("spibatch")

SITE_FILE = "site.yaml"


def stage_names(pipeline) -> list[str]:
    return ["simulate" if pipeline.simulation is not None else "ingest", "emc", "phase", "validate", "report"]


def check_pipeline(pipeline, config: Path) -> None:
    """The pipeline has data to work on (a simulation, a CXI ingest, or photons + detector); InputError otherwise.

    Reads headers only (the PDB, the CXI stack's shape, mask and geometry, the photons' and detector's sizes).
    """
    if pipeline.simulation is not None:
        from spibatch.sim.structure import read_structure

        read_structure(pipeline.simulation.pdb, assembly=False)  # a bad PDB stops here, before any run directory
    elif pipeline.ingest is not None:
        from spibatch.io.cxi import check_ingest

        check_ingest(pipeline.ingest, pipeline.emc.detector)
    elif pipeline.emc.photons is None or pipeline.emc.detector is None:
        raise InputError("none of a `simulation` section, an `ingest` section, or emc.photons and emc.detector",
                         path=config, field="simulation", fix="add a simulation or an ingest (CXI) section, "
                         "or set emc.photons and emc.detector")
    else:
        from spibatch.emc.driver import check_inputs

        check_inputs(pipeline.emc, pipeline.emc.photons, pipeline.emc.detector)


def threads_per_worker(site: Site, per_node: int | None = None) -> int:
    """Numba / FFT threads of one task when ``per_node`` of them (default: the site's workers per node) share a node."""
    return provider_for(site).threads_per_worker(per_node)


def emc_ranks(site: Site, emc_config: Path) -> int:
    """MPI ranks of the HPC-mode EMC job: the site's workers, at most one per shard."""
    from spibatch.config import load_pipeline
    from spibatch.emc.mpi import shard_bounds
    from spibatch.io.dragonfly import photons_info

    cfg = load_pipeline(emc_config).emc
    shards = len(shard_bounds(photons_info(cfg.photons)[0], cfg.frames_per_shard))
    if shards < site.workers:
        log.info("emc: %d shard(s) of %d frames: %d MPI rank(s), not %d", shards, cfg.frames_per_shard,
                 shards, site.workers)
    return max(1, min(site.workers, shards))


# ------------------------------------------------------------------ Parsl apps (module level: importable)

def _emc_job(command: str, parsl_resource_specification: dict | None = None, stdout=None, stderr=None) -> str:
    return command


def _apps():
    from parsl import python_app

    return (python_app(stages.run_stage, executors=[TASKS_LABEL]),
            python_app(stages.phase_start, executors=[TASKS_LABEL]))


class _Submit:
    """``submit(fn, *args)`` for the HTC EMC driver: a python app on the tasks executor."""

    def __init__(self):
        self.apps = {}

    def __call__(self, fn, *args):
        from parsl import python_app

        if fn not in self.apps:
            self.apps[fn] = python_app(fn, executors=[TASKS_LABEL])
        return self.apps[fn](*args)


def _run_emc(run_dir: Path, site: Site) -> None:
    from spibatch.config import load_pipeline

    began = time.time()
    out = run_dir / "emc"
    resume = (out / "provenance.json").exists()
    if site.emc_mode == "htc":
        from spibatch.emc.htc import run_emc_htc
        from spibatch.rundir import create_run_dir, reopen_run_dir, run_in_dir

        pipeline = load_pipeline(run_dir / stages.EMC_CONFIG)
        config_text = (run_dir / stages.EMC_CONFIG).read_text(encoding="utf-8")
        run = reopen_run_dir(out) if resume else create_run_dir("emc", run_dir, out, config_text=config_text,
                                                                  command=sys.argv)
        run.extra.update(emc_mode="htc", site=site.name, workers=site.workers)
        outputs = run_in_dir(run, run_emc_htc, pipeline.emc, pipeline.emc.photons, pipeline.emc.detector, out,
                             _Submit(), threads=threads_per_worker(site), device=pipeline.device,
                             gpu_runtime=pipeline.gpu_runtime,
                             resume=resume and (out / "checkpoint.h5").exists())
    else:
        from spibatch.backends.parsl_common import emc_command

        command = emc_command(site, run_dir, resume)
        ranks = emc_ranks(site, run_dir / stages.EMC_CONFIG)
        launch = provider_for(site).emc_launch(run_dir, command, ranks)   # the provider names the executor
        line = f"export NUMBA_NUM_THREADS={threads_per_worker(site, -(-ranks // launch.nodes))}\n{launch.command}"
        stdout, stderr = run_dir / "stages" / "emc.stdout", run_dir / "stages" / "emc.stderr"
        from parsl import bash_app

        future = bash_app(_emc_job, executors=[launch.executor])(line, parsl_resource_specification=launch.resources or None, stdout=str(stdout), stderr=str(stderr))
        try:
            future.result()
        except Exception as exc:
            text = stderr.read_text(encoding="utf-8") if stderr.exists() else ""
            said = [ln for ln in text.splitlines() if ln.startswith("spibatch: error:")]
            if said:
                raise InputError(said[-1].removeprefix("spibatch: error: "), field="emc") from None
            raise RuntimeError(f"the EMC job failed ({exc.__class__.__name__}: {exc}); see {stderr}") from exc
        outputs = {"intensity": stages.emc_intensity(run_dir)}
    stages.mark_done(run_dir, "emc", outputs, time.time() - began, emc_mode=site.emc_mode, workers=site.workers)


def execute(run_dir: Path, site: Site, pipeline, until: str | None = None) -> dict[str, dict]:
    """Run every unfinished stage on ``site`` (up to and including ``until``); returns ``{stage: marker}``."""
    import parsl

    names = stage_names(pipeline)
    if until is not None:
        if until not in names:
            raise InputError(f"no stage '{until}' in this pipeline (stages: {', '.join(names)})", field="--until",
                             fix="give one of the stages")
        names = names[:names.index(until) + 1]
    todo = [n for n in names if stages.finished(run_dir, n) is None]
    if not todo:
        log.info("every stage has finished already")
        return {n: stages.finished(run_dir, n) for n in names}
    log.info("stages to run: %s (finished: %s)", ", ".join(todo),
             ", ".join(n for n in names if n not in todo) or "none")
    stage_app, start_app = None, None
    dfk = parsl.load(provider_for(site).parsl_config(run_dir))
    try:
        stage_app, start_app = _apps()
        run = str(run_dir)
        first = names[0]
        if first in todo:
            stage_app(first, run).result()
            log.info("%s: done", first)
        if "emc" in todo:
            _run_emc(run_dir, site)
            log.info("emc: done (%s mode)", site.emc_mode)
        if "phase" in todo:
            since = time.time()
            cfg = pipeline.phasing
            starts = [start_app(run, k, threads_per_worker(site)) for k in range(cfg.num_starts)]
            stage_app("phase", run, [f.result() for f in starts], since=since).result()
            log.info("phase: done (%d starts over %d workers)", cfg.num_starts, site.workers)
        for name in [n for n in ("validate", "report") if n in names]:
            if name in todo:
                stage_app(name, run).result()
                log.info("%s: done", name)
    finally:
        dfk.cleanup()
        parsl.clear()
    return {n: stages.finished(run_dir, n) for n in names}


# ------------------------------------------------------------------ the commands

def start(config: Path, site_path: Path | None, out: Path | None, *, dry_run: bool = False,
          runs_dir: Path | None = None, adjust=None, command: list[str] | None = None, until: str | None = None):
    """``spibatch run``: validate, preflight, create the run directory, run.  Returns (run_dir, markers).

    With ``dry_run`` nothing is created or submitted: returns (would-be run dir, Rendered: the files that
    would be submitted and the checks made; ``Rendered.text()`` is what ``--dry-run`` prints).
    ``adjust(pipeline)``: changes applied after loading (the demo's options).
    """
    from spibatch.config import dump_pipeline, load_pipeline
    from spibatch.rundir import create_run_dir, new_run_path, run_in_dir

    pipeline = load_pipeline(config)
    if runs_dir is not None:
        pipeline.output.runs_dir = runs_dir.resolve()
    if adjust is not None:
        adjust(pipeline)
    check_pipeline(pipeline, config)
    site = load_site(site_path)
    provider = provider_for(site)
    if site.emc_mode == "hpc" and not provider.supports_hpc:
        raise InputError(f"provider {site.provider} runs EMC in HTC mode only", path=site.source, field="emc_mode",
                         fix="set emc_mode: htc (or leave it out)")
    target = (out if out is not None else new_run_path(pipeline.name, pipeline.output.runs_dir)).resolve()
    if (target / "provenance.json").exists():
        raise InputError("this directory already holds a run", path=target, field="--out",
                         fix="choose a new --out directory, or `spibatch resume` it")
    argv = list(command if command is not None else sys.argv)
    if dry_run:
        return target, provider.dry_run(target, argv)
    provider.preflight(target)
    run = create_run_dir(pipeline.name, pipeline.output.runs_dir, target, config_text=dump_pipeline(pipeline),
                         command=argv)
    from spibatch.io.atomic import write_text

    write_text(run.file(SITE_FILE), dump_site(site))
    run.extra.update(site=site.name, provider=site.provider, emc_mode=site.emc_mode, workers=site.workers)
    inputs = [config] + ([site.source] if site_path is not None else [])
    inputs += [p for p in (pipeline.simulation and pipeline.simulation.pdb, pipeline.ingest and pipeline.ingest.cxi,
                           pipeline.emc.photons, pipeline.emc.detector) if p is not None]
    run.add_inputs(*inputs)
    markers = run_in_dir(run, lambda: _outputs(execute(run.path, site, pipeline, until)))
    return run.path, markers


def _outputs(markers: dict) -> dict:
    out = {}
    for marker in markers.values():
        out.update((marker or {}).get("outputs", {}))
    return out


def resume(run_dir: Path, command: list[str] | None = None):
    """``spibatch resume``: run the stages of ``run_dir`` that have not finished, on its own site."""
    from spibatch.config import load_pipeline
    from spibatch.rundir import reopen_run_dir, run_in_dir

    run_dir = Path(run_dir).resolve()
    for name in ("provenance.json", "config.yaml", SITE_FILE):
        if not (run_dir / name).is_file():
            raise InputError(f"no {name} here: not a run of `spibatch run`", path=run_dir, field="RUN_DIR",
                             fix="give the run directory `spibatch run` printed")
    record = json.loads((run_dir / "provenance.json").read_text(encoding="utf-8"))
    pipeline = load_pipeline(run_dir / "config.yaml")
    site = load_site(run_dir / SITE_FILE)
    provider_for(site).preflight(run_dir)
    run = reopen_run_dir(run_dir, command=command, unchanged=tuple(p for p in record.get("inputs", {})
                                                                    if Path(p).exists()))
    markers = run_in_dir(run, lambda: _outputs(execute(run.path, site, pipeline)))
    return run.path, markers
