"""The pipeline's stages: each one function of (run folder, validated pipeline, device) -> its outputs.

========  =================================================  ==================================
stage     reads                                              writes (:mod:`spibatch.layout`)
========  =================================================  ==================================
simulate  the PDB, the geometry                              simulate/: photons, detector, truth
ingest    a CXI stack (+ emc.detector)                       ingest/: photons, detector
follow    a live source (EuXFEL run, Karabo bridge, CXI      follow/: hits in chunks, statistics,
          folder) until it ends                              status, detector
emc       emc.photons + emc.detector, or the data stage's    emc/: output_NNN.h5, EMC.log, ...
phase     phasing.intensity, or EMC's last output             phase/: phasing.h5, density.mrc, ...
validate  validation.reference (default: the simulation's      validate/: emc_vs_truth.json,
          truth) against this run's results, or              fsc_vs_truth.json (+ .png), or
          validation.volume against it                         fsc.h5 and fsc.png of two volumes
report    the run folder                                     report.html and its PNGs
========  =================================================  ==================================

A stage body is ``run(run: RunLayout, pipeline, device, workers=None) -> {name: path}``.  Without
``workers`` it runs in this process (the standalone commands; under ``mpirun`` EMC shares its
shards across the ranks).  ``spibatch run`` passes the site's :class:`Workers` (Parsl): EMC and
phasing then orchestrate tasks or an MPI job from the driver, the other stages run as one task
each (:func:`run_task`).  :func:`run_stage` wraps a body: it skips a finished stage, logs into
``stages/<name>.log`` and writes the marker ``stages/<name>.json`` when the body returns.  A stage
run as its own process -- the MPI job -- is ``python -m spibatch.stages NAME RUN_DIR``
(:mod:`spibatch.stages.__main__`), which reports how it ended in ``stages/<name>.result.json``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from spibatch.io.atomic import write_text
from spibatch.layout import RunLayout
from spibatch.rundir import log_to, stop_logging, utc_now

log = logging.getLogger("spibatch")

# name -> the module holding its ``run`` (and ``check``): imported when used, so `import spibatch.stages` is light
MODULES = {name: f"spibatch.stages.{name}" for name in ("simulate", "ingest", "follow", "emc", "phase", "validate",
                                                         "report")}
ORCHESTRATING = ("emc", "phase")   # in a pipeline these run in the driver and send their own tasks out


class Workers:
    """What a stage may ask of the platform it runs on; :class:`spibatch.pipeline.ParslWorkers` is the real one.

    emc_mode: "hpc" (EMC as one MPI job) or "htc" (one task per shard per iteration); count: workers at once.
    """

    emc_mode = "htc"
    count = 1

    def submit(self, fn, *args):
        """Run ``fn(*args)`` on a worker; a future."""
        raise NotImplementedError

    def threads(self, per_node: int | None = None) -> int:
        """Numba/FFT threads one task may use."""
        return 1

    def run_job(self, stage: str, run: RunLayout, ranks: int) -> None:
        """``python -m spibatch.stages STAGE RUN_DIR`` as one MPI job of ``ranks`` ranks; InputError or
        RuntimeError (one line) when it fails."""
        raise NotImplementedError


def module(name: str):
    """The module of stage ``name`` (``run``, ``check``)."""
    return importlib.import_module(MODULES[name])


def order(pipeline) -> list[str]:
    """The stages ``spibatch run`` chains for this pipeline (the report is written when the run ends)."""
    data = ["simulate"] if pipeline.simulation is not None else ["ingest"] if pipeline.ingest is not None else \
        ["follow"] if getattr(pipeline, "source", None) is not None else []
    return data + ["emc", "phase", "validate"]


def finished(run: RunLayout, name: str) -> dict | None:
    """The stage's marker, or None when it has not finished."""
    try:
        record = json.loads(run.marker(name).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:
        log.warning("stage %s: its marker %s is unreadable (%s): the stage counts as not finished and runs again",
                    name, run.marker(name), exc.__class__.__name__)
        return None
    return record if isinstance(record, dict) and record.get("status") == "done" else None


def damaged_output(run: RunLayout, record: dict) -> tuple[Path, str] | None:
    """The first output a finished stage's marker names that is missing, empty or (HDF5) cannot be opened, and
    what is wrong with it (``(path, "is missing")``), or None.  A run folder moved or copied since: an output
    recorded as ``OLD/<stage folder>/<file>`` is judged as ``RUN/<stage folder>/<file>``; other outputs recorded
    outside the run folder (a live source's) are not judged."""
    outputs = record.get("outputs") if isinstance(record.get("outputs"), dict) else {}
    root = Path(run.path).resolve()
    for value in outputs.values():
        path = Path(str(value))
        if not path.is_absolute():
            continue
        if root not in path.parents:
            if len(path.parts) < 3 or not (root / path.parts[-2]).is_dir():
                continue
            path = root / path.parts[-2] / path.parts[-1]
        if not path.exists():
            return path, "is missing"
        if path.is_file() and path.stat().st_size == 0:
            return path, "is empty"
        if path.is_file() and path.suffix in (".h5", ".cxi", ".emc"):
            import h5py

            try:
                if h5py.is_hdf5(path):
                    h5py.File(path, "r").close()
            except OSError as exc:
                return path, f"cannot be read ({' '.join(str(exc).split())[:80]})"
    return None


def forget_damaged(run: RunLayout, names: list[str]) -> None:
    """Of ``names``, the finished stages whose output is missing or damaged (:func:`damaged_output`) lose their
    marker, with a warning: they run again.  A stage that cannot write it again says so first (its module's
    ``check_rerun(run, path, problem)``: InputError)."""
    for name in names:
        record = finished(run, name)
        damaged = damaged_output(run, record) if record is not None else None
        if damaged is None:
            continue
        check_rerun = getattr(module(name), "check_rerun", None)
        if check_rerun is not None:
            check_rerun(run, *damaged)
        log.warning("stage %s: its output %s %s; the stage runs again", name, *damaged)
        run.marker(name).unlink(missing_ok=True)


def mark_done(run: RunLayout, name: str, outputs: dict, seconds: float, **extra) -> dict:
    record = {"stage": name, "status": "done", "outputs": {k: str(v) for k, v in outputs.items()},
              "seconds": round(seconds, 3), "host": socket.gethostname(), "pid": os.getpid(),
              "finished": utc_now(), **extra}
    write_text(run.marker(name), json.dumps(record, indent=2) + "\n")
    return record


@contextmanager
def stage_log(run: RunLayout, name: str, enabled: bool = True):
    """Log records of one stage also to ``stages/<name>.log`` (workers are separate processes)."""
    if not enabled:
        yield None
        return
    path = run.stage_log(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = log_to(path)
    try:
        yield path
    finally:
        stop_logging(handler)


def run_stage(name: str, run: RunLayout, pipeline, device, workers: Workers | None = None, *,
              writer: bool = True) -> dict:
    """Run stage ``name`` unless its marker exists; returns the marker (``outputs``, ``seconds``, ...).

    writer: whether this process writes the marker and the stage log (under MPI: rank 0 only).
    """
    done = finished(run, name)
    if done is not None:
        return done
    with stage_log(run, name, enabled=writer):
        began = time.perf_counter()
        outputs = module(name).run(run, pipeline, device, workers)
        seconds = time.perf_counter() - began
        if not writer:
            return {"stage": name, "status": "done", "outputs": {k: str(v) for k, v in outputs.items()}}
        extra = {"device": str(device)}
        if workers is not None:
            extra.update(workers=workers.count, **({"emc_mode": workers.emc_mode} if name == "emc" else {}))
        return mark_done(run, name, outputs, seconds, **extra)


def load_run(run_dir: str | os.PathLike):
    """(RunLayout, pipeline, device) of a run folder, as a worker or the MPI job sees it (device resolved here)."""
    from spibatch.config import load_pipeline
    from spibatch.kernels.device import resolve

    run = RunLayout(Path(run_dir))
    pipeline = load_pipeline(run.config)
    return run, pipeline, resolve(pipeline.device, pipeline.gpu_runtime, path=run.config)


def run_task(name: str, run_dir: str) -> dict:
    """Stage ``name`` of the run in ``run_dir`` in this (worker) process: what ``spibatch run`` sends out."""
    run, pipeline, device = load_run(run_dir)
    return run_stage(name, run, pipeline, device)


__all__ = ["MODULES", "Workers", "order", "finished", "mark_done", "run_stage", "run_task", "load_run", "module"]
