"""One-stage runs: what ``spibatch simulate``, ``ingest``, ``emc``, ``phase``, ``validate`` do.

:func:`run_stages` checks the stages' inputs (before anything is created), opens a new run folder
(or reopens one with ``resume``) through :func:`spibatch.rundir.open_run`, and runs the stages in
this process -- the very functions ``spibatch run`` chains.  Started by an MPI launcher (``mpirun -n
N spibatch emc ...``) every rank runs it: rank 0 owns the folder and writes, all ranks share EMC's
shards, and an error on any rank stops all of them.
"""

from __future__ import annotations

import shlex
import sys
import traceback
from contextlib import ExitStack
from pathlib import Path

from spibatch import stages
from spibatch.errors import InputError
from spibatch.layout import RunLayout


def run_stages(names: list[str], pipeline, config: Path | None, *, out: Path | None = None,
               resume: Path | None = None, command: list[str] | None = None, inputs: tuple = (),
               name: str | None = None, options: dict[str, str] | None = None) -> tuple[Path, dict]:
    """Run ``names`` (in order) as a new run of ``pipeline`` (or continue ``resume``); (run folder, outputs).

    ``config``: the pipeline file (named in error lines); ``inputs``: files to fingerprint in provenance.json;
    ``name``: the run's name (default: the pipeline's); ``options``: config key -> the command-line argument that
    set it, named instead in the checks' error lines (``validation.reference`` -> ``--truth``).
    """
    from spibatch.config import dump_pipeline
    from spibatch.emc import mpi
    from spibatch.kernels.device import resolve
    from spibatch.rundir import open_run

    if out is not None and resume is not None:
        raise InputError("--out and --resume together", field="--resume",
                         fix="give --resume RUN_DIR alone to continue a run, or --out DIR alone to start one")
    comm = mpi.world() if "emc" in names else None
    rank, size = mpi.rank_and_size(comm)
    device = mpi.collective(comm, resolve, pipeline.device, pipeline.gpu_runtime, path=config)
    existing = None if resume is None else RunLayout(Path(resume))
    try:
        mpi.collective(comm, _check, names, pipeline, config, existing, size, out)
    except InputError as exc:
        exc.field = (options or {}).get(exc.field, exc.field)
        raise
    opening = dict(name=name or pipeline.name, runs_dir=pipeline.output.runs_dir, out=out, resume=resume,
                   config_text=dump_pipeline(pipeline), command=list(command if command is not None else sys.argv),
                   inputs=tuple(inputs), unchanged=tuple(p for p in inputs if p != config),
                   check=None if existing is None else lambda: _check_resume(names, pipeline, config, existing),
                   extra={"mpi_ranks": size} if "emc" in names else None,
                   resume_hint=_resume_hint(names, config, out, resume, command))
    with ExitStack() as stack:
        run = mpi.collective(comm, lambda: stack.enter_context(open_run(**opening)) if rank == 0 else None)
        layout = RunLayout(mpi.broadcast(comm, None if run is None else run.path))
        outputs = _run_all(names, layout, pipeline, device, comm, force=resume is not None)
        if run is not None:
            run.outputs.update(outputs)
    return layout.path, outputs


def _check(names, pipeline, config, existing, ranks, out) -> None:
    for name in names:
        extra = {"ranks": ranks} if name == "emc" else {"need_detector": False} if name == "ingest" else \
            {"folder": out} if name == "simulate" else {}
        stages.module(name).check(pipeline, config, existing, **extra)


def _check_resume(names, pipeline, config, existing: RunLayout) -> None:
    """Under the lock, before a resume writes anything: the folder is not a pipeline run's (``spibatch run``: its
    later stages would be left unrun under a status "completed"), and what it would continue from was made with
    these settings from these data (EMC's checkpoint); InputError otherwise."""
    from spibatch.run_checks import read_provenance

    if "site" in read_provenance(existing.path, deep=False):
        raise InputError("a pipeline run's folder (`spibatch run`): continuing one of its stages alone would mark "
                         "the whole run completed", path=existing.path, field="--resume",
                         fix=f"continue it with: spibatch resume {shlex.quote(str(existing.path))}")
    if "emc" in names:
        stages.module("emc").check_resume(existing, pipeline, config)


def _run_all(names, layout: RunLayout, pipeline, device, comm, *, force: bool) -> dict:
    rank = 0 if comm is None else comm.Get_rank()
    outputs = {}
    try:
        for name in names:
            if force and rank == 0:
                layout.marker(name).unlink(missing_ok=True)   # --resume: the stage continues where it stopped
            marker = stages.run_stage(name, layout, pipeline, device, writer=rank == 0)
            outputs.update(marker.get("outputs", {}))
    except InputError:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:
        if comm is None:
            raise
        traceback.print_exc()
        comm.Abort(1)   # the other ranks would wait in the next collective call forever
    return outputs


def _resume_hint(names, config, out, resume, command: list[str] | None = None) -> str:
    """What the line of an interrupted run says to go on with: EMC continues from its checkpoint (``--resume``);
    every other stage runs again, into a new folder (the command without its ``--out``): ``spibatch resume``
    continues only runs of ``spibatch run``."""
    if names != ["emc"]:
        words = list(command if command is not None else sys.argv)[1:]
        kept = [w for i, w in enumerate(words)
                if not (w == "--out" or w.startswith("--out=") or (i and words[i - 1] == "--out"))]
        return f"spibatch {shlex.join(kept)} (it starts again, in a new run folder)"
    from spibatch.rundir import RUN_MADE

    folder = resume or out          # else the folder open_run makes (runs/<name>-<time>/), quoted there
    return f"spibatch emc {shlex.quote(str(config))} --resume {shlex.quote(str(folder)) if folder else RUN_MADE}"
