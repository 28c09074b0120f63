"""``spibatch run`` / ``resume``: the stages chained on a site through Parsl, in one run folder, resumable.

The stages are :mod:`spibatch.stages` (the same functions the standalone commands run).  Here they
get the site's :class:`ParslWorkers`: the data stage and validation run as one task each on a
worker; EMC and phasing orchestrate from the driver -- EMC as one MPI job (HPC mode:
``python -m spibatch.stages emc RUN_DIR`` under the provider's MPI launcher) or one task per shard
per iteration (HTC mode), phasing as one task per start and one for the merge.  Every stage writes
``stages/<name>.json`` when done; ``spibatch resume`` runs the rest.  Parsl's ``runinfo/`` stays
inside the run folder.
"""

from __future__ import annotations

import errno
import logging
import os
import shlex
import shutil
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

from spibatch import interrupts, parsl_wait, stages
from spibatch.backends import TASKS_LABEL, Site, dump_site, load_site, provider_for
from spibatch.errors import InputError, StageFailed
from spibatch.io.atomic import disk_full
from spibatch.layout import RunLayout

log = logging.getLogger("spibatch")

FULL_BELOW = 1 << 20   # bytes free: a job that failed without a word on a disk this full failed for lack of room


def _job(command: str, parsl_resource_specification: dict | None = None, stdout=None, stderr=None) -> str:
    return command


class ParslWorkers(stages.Workers):
    """The site's workers, through the loaded Parsl DataFlowKernel (:class:`spibatch.stages.Workers`)."""

    def __init__(self, site: Site):
        self.site = site
        self.provider = provider_for(site)
        self.emc_mode = site.emc_mode
        self.count = site.workers
        self._apps = {}

    def submit(self, fn, *args):
        from parsl import python_app

        if fn not in self._apps:
            self._apps[fn] = python_app(fn, executors=[TASKS_LABEL])
        return self._apps[fn](*args)

    def threads(self, per_node: int | None = None) -> int:
        return self.provider.threads_per_worker(per_node)

    def run_job(self, stage: str, run: RunLayout, ranks: int) -> None:
        """``python -m spibatch.stages STAGE RUN_DIR`` as one MPI job on the executor the provider names."""
        from parsl import bash_app

        from spibatch.backends.parsl_common import stage_command
        from spibatch.stages.__main__ import read_result
        from spibatch.worker_reach import snapshot

        command = stage_command(self.site, stage, run.path)
        launch = self.provider.emc_launch(run.path, command, ranks)
        line = f"export NUMBA_NUM_THREADS={self.threads(-(-ranks // launch.nodes))}\n{launch.command}"
        run.stage_result(stage).unlink(missing_ok=True)
        run.stage_result(stage).parent.mkdir(parents=True, exist_ok=True)
        stdout, stderr = run.stage_stream(stage, "stdout"), run.stage_stream(stage, "stderr")
        before = snapshot(run.path)
        future = bash_app(_job, executors=[launch.executor])(line, parsl_resource_specification=launch.resources or None,
                                                             stdout=str(stdout), stderr=str(stderr))
        try:
            parsl_wait.results([future], f"{stage} jobs")
        except parsl_wait.PlatformLost as exc:
            raise StageFailed(f"the {stage} job's end cannot be known: {exc}; {_go_on(run)}") from None
        except Exception as exc:
            result = read_result(run, stage) or {}
            if result.get("exit_code") == InputError.exit_code:
                raise InputError(result["error"], field=stage) from None
            if not result and shutil.disk_usage(run.path).free < FULL_BELOW:   # it could not even say why
                raise disk_full(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), run.stage_result(stage)) from None
            cause = None if result else _platform_cause(exc, run, self.site, before, start_only=True)
            if cause:   # it never ran: its block was refused, or its pool never reached the driver
                raise StageFailed(f"the {stage} job could not start: {cause}; {_go_on(run)}") from None
            said = f": {result['error'].rstrip('.')}" if result.get("error") else f" ({exc.__class__.__name__})"
            raise StageFailed(f"the {stage} job failed{said}; its output: {stderr}; {_go_on(run)}") from None


def check_pipeline(pipeline, config: Path, site: Site | None = None, folder: Path | None = None) -> None:
    """What can be checked before anything is created, on ``site``'s workers (None: this machine): every
    input read in full and every stage's memory and time (:func:`spibatch.stages.preflight.check_run`), the
    validate stage's inputs, and that the site can run its EMC mode; InputError (one line)."""
    from spibatch.stages.checks import budget_for
    from spibatch.stages.preflight import check_run

    if site is not None:
        provider_for(site).check_counts()   # the stages' memory is judged on the processes a node holds
    check_run(pipeline, config, site, folder)
    stages.module("validate").check(pipeline, config, budget=budget_for(site))   # on the site's workers
    if pipeline.device == "gpu" and (site is None or site.provider == "local"):   # the GPU is this machine's
        from spibatch.kernels.device import resolve

        resolve(pipeline.device, pipeline.gpu_runtime, path=config)
    elif pipeline.device == "gpu":
        provider_for(site).check_gpus(f"the pipeline's device is gpu ({config.name})")
    if site is not None and site.emc_mode == "hpc" and not provider_for(site).supports_hpc:
        raise InputError(f"provider {site.provider} runs EMC in HTC mode only", path=site.source, field="emc_mode",
                         fix="set emc_mode: htc (or leave it out)")


def execute(run: RunLayout, site: Site, pipeline, until: str | None = None) -> dict[str, dict]:
    """Run every unfinished stage on ``site`` (up to and including ``until``); returns ``{stage: marker}``.

    However it ends -- done, failed, Ctrl-C or SIGTERM --, Parsl is shut down within a deadline and what it
    started is stopped (:mod:`spibatch.parsl_shutdown`)."""
    from spibatch.kernels.device import declared
    from spibatch.parsl_shutdown import load, shutdown
    from spibatch.progress import progress

    names = stages.order(pipeline)
    if until is not None:
        names = names[:names.index(until) + 1]
    stages.forget_damaged(run, names)   # a finished stage whose output was deleted or damaged since runs again
    todo = [n for n in names if stages.finished(run, n) is None]
    if not todo:
        log.info("every stage has finished already")
        return {n: stages.finished(run, n) for n in names}
    log.info("stages to run: %s (finished: %s)", ", ".join(todo), ", ".join(n for n in names if n not in todo) or "none")
    dfk = None
    try:
        dfk = load(provider_for(site).parsl_config(run.path))
        workers = ParslWorkers(site)
        device = declared(pipeline.device, pipeline.gpu_runtime)   # unchecked here: the tasks run where the GPUs are
        driven = [n for n in todo if n != "follow"]
        with Follower(run, "follow" in todo) as follower, progress(len(driven), "stages") as bar:
            for name in driven:
                interrupts.raise_if_swallowed()
                bar.describe(f"stage {name}: running ({driven.index(name) + 1} of {len(driven)})")
                with failures_as_one_line(run, name, site):
                    if name == "emc" and pipeline.source is not None:
                        _follow_emc(run, pipeline, device, workers, follower)
                    elif name in stages.ORCHESTRATING:
                        stages.run_stage(name, run, pipeline, device, workers)
                    else:
                        parsl_wait.results([workers.submit(stages.run_task, name, str(run.path))], f"{name} tasks")
                bar.advance(1)
                bar.note(f"{name}: done")
    finally:
        shutdown(dfk)
    return {n: stages.finished(run, n) for n in names}


def _go_on(run: RunLayout) -> str:
    return f"once its cause is fixed, continue with: spibatch resume {shlex.quote(str(run.path))} (--site FILE: with a fixed site)"


@contextmanager
def failures_as_one_line(run: RunLayout, stage: str, site: Site | None = None):
    """A stage that raises anything but bad input, a StageFailed or a signal raises StageFailed instead: one line
    with the cause and where its traceback was written (``stages/<stage>.traceback``), not a traceback.  When
    Parsl gave up on ``site``'s workers, the cause says why (:mod:`spibatch.worker_reach`)."""
    from spibatch.interrupts import chained_interrupt
    from spibatch.worker_reach import snapshot

    before = snapshot(run.path) if site is not None else {}     # pool logs of an earlier attempt: not this stage's
    try:
        yield
    except (InputError, StageFailed):
        raise
    except Exception as exc:
        if chained_interrupt(exc) is not None:
            raise
        first = (str(exc).strip().splitlines() or [""])[0].rstrip(".")
        cause = f"{exc.__class__.__name__}: {first}" if first else exc.__class__.__name__
        cause = _platform_cause(exc, run, site, before) or cause
        path = run.stage_log(stage).with_suffix(".traceback")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(traceback.format_exception(exc)))
            where = f"its traceback: {path}"
        except OSError:
            where = "its traceback could not be written"
        log.debug("stage %s failed", stage, exc_info=exc)
        raise StageFailed(f"the {stage} stage failed: {cause}; {where}; {_go_on(run)}") from exc


def _platform_cause(exc: BaseException, run: RunLayout, site: Site | None, before: dict,
                    start_only: bool = False) -> str | None:
    """Why Parsl gave up on ``site``'s workers (:func:`spibatch.worker_reach.explain`), None otherwise or when that
    cannot be told."""
    from spibatch.worker_reach import explain

    if site is None:
        return None
    try:
        source = Path(site.source) if site.source else None
        inside = source is not None and run.path.resolve() in source.resolve().parents   # resumed: the run's copy
        return explain(exc, run.path, provider_for(site).address_key, "" if inside or source is None else str(source),
                       before=before, section=site.provider, start_only=start_only)
    except Exception:  # noqa: BLE001 - the stage's own failure line must still come
        log.debug("could not read the worker pools' logs", exc_info=True)
        return None


class Follower:
    """The follow stage as a process of its own beside the driver (``python -m spibatch.stages follow RUN``),
    while EMC takes its chunks; stopped (SIGTERM) if the run fails before the source ended."""

    def __init__(self, run: RunLayout, wanted: bool):
        self.run, self.wanted, self.process = run, wanted, None

    def __enter__(self) -> "Follower":
        if self.wanted:
            import subprocess

            out = self.run.stage_stream("follow", "stdout")
            out.parent.mkdir(parents=True, exist_ok=True)
            self.run.stage_result("follow").unlink(missing_ok=True)   # an earlier follower's end, not this one's
            with open(out, "ab") as stdout, open(self.run.stage_stream("follow", "stderr"), "ab") as stderr:
                self.process = subprocess.Popen([sys.executable, "-m", "spibatch.stages", "follow", str(self.run.path)],
                                                stdout=stdout, stderr=stderr)
            log.info("follow: following the source in process %d (spibatch stop %s ends it)", self.process.pid,
                     self.run.path)
        return self

    def wait(self) -> None:
        """Wait for the follower to end (the source has); InputError or RuntimeError when it failed."""
        from spibatch.stages.__main__ import read_result

        if self.process is None:
            return
        code, self.process = self.process.wait(), None
        if code != 0:
            result = read_result(self.run, "follow") or {}
            if result.get("exit_code") == InputError.exit_code:
                raise InputError(result["error"], field="source")
            raise StageFailed(f"the follower failed: {result.get('error') or f'exit status {code}'}; its output: "
                              f"{self.run.stage_stream('follow', 'stderr')}; {_go_on(self.run)}")

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except Exception:  # noqa: BLE001 - it will not stop: the owner's sweep ends it
                self.process.kill()


def _follow_emc(run: RunLayout, pipeline, device, workers, follower: Follower) -> None:
    """EMC on a live source, with previews on a spare worker, then the quick final density."""
    from spibatch.stages.live import Previews, say_how_the_follow_ended

    with Previews(run, workers.submit, pipeline.source.preview_every_iterations) as previews:
        stages.run_stage("emc", run, pipeline, device, workers)
        follower.wait()
        say_how_the_follow_ended(run)
        final = previews.final()
    log.info("the quick final density: %s", final)


def external_inputs(pipeline) -> dict[str, list[Path]]:
    """The files each stage reads from outside the run folder (what provenance.json fingerprints)."""
    from spibatch.io.frame_selection import input_files

    emc, validation, source = pipeline.emc, pipeline.validation, pipeline.source
    files = {"simulate": [pipeline.simulation and pipeline.simulation.pdb], "ingest": [pipeline.ingest and pipeline.ingest.cxi],
             "follow": [source and source.detector, source and source.geometry],   # not the live data: they grow
             "emc": [*input_files(emc), emc.detector, emc.start_model, emc.background_file],
             "phase": [pipeline.phasing.intensity],
             "validate": [validation.reference, validation.volume]}
    return {stage: [Path(p) for p in paths if p] for stage, paths in files.items()}


def needed_inputs(run: RunLayout, pipeline) -> list[Path]:
    """The outside files the stages of ``run`` that have not finished still read; InputError (one line) when one
    of them is gone."""
    files = external_inputs(pipeline)
    needed = [p for name in stages.order(pipeline) if stages.finished(run, name) is None for p in files[name]]
    for path in needed:
        if not path.is_file():
            raise InputError("this input of the run is gone, and a stage still to run reads it", path=path,
                             field="RUN_DIR", fix="put the original file back, or start a new run")
    return list(dict.fromkeys(needed))


def _check_until(pipeline, until: str | None) -> None:
    names = stages.order(pipeline)
    if until is not None and until not in names:
        raise InputError(f"no stage '{until}' in this pipeline (stages: {', '.join(names)})", field="--until",
                         fix="give one of the stages")


def _outputs(markers: dict) -> dict:
    out = {}
    for marker in markers.values():
        out.update((marker or {}).get("outputs", {}))
    return out


def start(config: Path, site_path: Path | None, out: Path | None, *, dry_run: bool = False,
          runs_dir: Path | None = None, adjust=None, command: list[str] | None = None, until: str | None = None):
    """``spibatch run``: validate, preflight, create the run folder, run.  Returns (run_dir, outputs).

    With ``dry_run`` nothing is created or submitted: returns (would-be run dir, :class:`~spibatch.backends.Rendered`).
    ``adjust(pipeline)``: changes applied after loading (the demo's options).
    """
    from spibatch.config import dump_pipeline, load_pipeline
    from spibatch.rundir import check_new_run_path, check_shell_safe, new_run_path, open_run

    pipeline = load_pipeline(config)
    if runs_dir is not None:
        pipeline.output.runs_dir = runs_dir.resolve()
    if adjust is not None:
        adjust(pipeline)
    _check_until(pipeline, until)
    site = load_site(site_path)
    check_pipeline(pipeline, config, site, out)
    provider = provider_for(site)
    target = check_new_run_path((out if out is not None else new_run_path(pipeline.name,
                                                                         pipeline.output.runs_dir)).resolve())
    check_shell_safe(target, "--out" if out is not None else "output.runs_dir")
    argv = list(command if command is not None else sys.argv)
    if dry_run:
        return target, provider.dry_run(target, argv)
    provider.preflight(target)
    inputs = [config] + ([site.source] if site_path is not None else [])
    inputs += list(dict.fromkeys(p for name in stages.order(pipeline) for p in external_inputs(pipeline)[name]))
    from spibatch.run_checks import config_digest

    site_text = dump_site(site)
    with open_run(name=pipeline.name, runs_dir=pipeline.output.runs_dir, out=target, command=argv,
                  config_text=dump_pipeline(pipeline), inputs=tuple(inputs), resume_hint=f"spibatch resume {shlex.quote(str(target))}",
                  extra=dict(site=site.name, provider=site.provider, emc_mode=site.emc_mode,
                             workers=site.workers, site_sha256=config_digest(site_text))) as run:
        from spibatch.io.atomic import write_text

        write_text(run.layout.site, site_text)
        run.outputs.update(_outputs(execute(run.layout, site, pipeline, until)))
    return run.path, run.outputs


def resume(run_dir: Path, command: list[str] | None = None, site_path: Path | None = None):
    """``spibatch resume``: run the stages of ``run_dir`` that have not finished, on its own site, or on the site
    file ``site_path``, which then replaces the run's copy (checked before anything is touched)."""
    from spibatch.config import load_pipeline
    from spibatch.parsl_shutdown import cancel_left_jobs
    from spibatch.rundir import check_shell_safe, open_run
    from spibatch.run_checks import check_config_unchanged, check_site_unchanged, config_digest, read_provenance

    run = RunLayout(Path(run_dir).resolve())
    check_shell_safe(run.path, "RUN_DIR")
    for path in (run.provenance, run.config, run.site):
        if not path.is_file():
            raise InputError(f"no {path.name} here: not a run of `spibatch run`", path=run.path, field="RUN_DIR",
                             fix="give the run directory `spibatch run` printed")
    record = read_provenance(run.path, "RUN_DIR", deep=False)
    check_config_unchanged(record, run.config)   # (open_run looks deeper)
    if site_path is None:
        check_site_unchanged(record, run.site)
    pipeline = load_pipeline(run.config)
    own = load_site(run.site)
    site = own if site_path is None else load_site(site_path)
    if site_path is not None:
        check_pipeline(pipeline, run.config, site, run.path)   # the stages still fit the new site's workers
    provider_for(site).preflight(run.path)
    needed = tuple(needed_inputs(run, pipeline))

    def check() -> None:   # under the lock, before anything is written: EMC's checkpoint fits settings and data
        if stages.finished(run, "emc") is None:
            stages.module("emc").check_resume(run, pipeline, run.config)
        if site_path is not None:
            from spibatch.io.atomic import write_text

            write_text(run.site, dump_site(site))
            log.info("site: %s (was %s), from %s", site.name, own.name, site_path)
        if run.stop.exists() and stages.finished(run, "follow") is None:   # asked of the run that stopped, not
            # of this one: left there, it ended the resumed follow at once, with 0 frames read
            asked = run.stop.read_text(encoding="utf-8", errors="replace").strip()
            run.stop.unlink()
            log.warning("an earlier `spibatch stop` (%s) was for the run before this resume: cleared; the follow "
                        "goes on until `spibatch stop` is given again", asked)

    with open_run(resume=run.path, command=command, inputs=needed, check=check, field="RUN_DIR",
                  stop_old=lambda: cancel_left_jobs(run, own), resume_hint=f"spibatch resume {shlex.quote(str(run.path))}",
                  extra=None if site_path is None else {"site_sha256": config_digest(dump_site(site))}) as opened:
        opened.outputs.update(_outputs(execute(run, site, pipeline)))
    return opened.path, opened.outputs
