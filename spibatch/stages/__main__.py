"""``python -m spibatch.stages NAME RUN_DIR``: one stage of a run, in a process of its own.

What ``spibatch run`` launches as the HPC-mode EMC job (every MPI rank runs this; rank 0 writes), and
what anyone may run to (re)do a stage of a run folder.  It reads the run's own ``config.yaml``, resolves
the device on this node, runs the stage through :func:`spibatch.stages.run_stage`, and reports how it
ended in ``stages/jobs/<NAME>.json``: ``{"stage", "status": "done" | "failed", "exit_code", "error",
"host", "finished"}`` -- the caller reads that file, not the process's stderr.  Exit status: 0 done,
2 bad input (the one-line error), 1 anything else.  Run by hand (not by the run's owner, not by an MPI launcher)
it takes the run's lock for its time, as every command that writes into a run does.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from spibatch.errors import InputError
from spibatch.io.atomic import DiskFull, write_text
from spibatch.layout import RunLayout
from spibatch.lock import release_lock
from spibatch.rundir import utc_now
from spibatch import stages
from spibatch.stages import MODULES, load_run, run_stage


def write_result(run: RunLayout, name: str, exit_code: int, error: str | None = None) -> None:
    """``stages/jobs/<name>.json``; on a full disk (which may be why the stage failed) only a line on stderr."""
    record = {"stage": name, "status": "done" if exit_code == 0 else "failed", "exit_code": exit_code,
              "error": error, "host": socket.gethostname(), "finished": utc_now()}
    try:
        write_text(run.stage_result(name), json.dumps(record, indent=2) + "\n")
    except DiskFull as exc:
        print(f"spibatch: could not write {exc.path}: {exc.problem}", file=sys.stderr)


def read_result(run: RunLayout, name: str) -> dict | None:
    """How the last process-run of stage ``name`` ended (see the module docstring), or None."""
    try:
        return json.loads(run.stage_result(name).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError, RecursionError):
        return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in MODULES:
        print(f"usage: python -m spibatch.stages {{{','.join(MODULES)}}} RUN_DIR", file=sys.stderr)
        return 2
    name, run = args[0], RunLayout(Path(args[1]).resolve())
    missing = [p.name for p in (run.provenance, run.config) if not p.is_file()]
    if missing:   # it would write stages/jobs/ into any folder
        print(f"spibatch: error: {args[1]}: RUN_DIR: not a run folder (no {' and no '.join(missing)}); give the "
              "folder of a `spibatch run`", file=sys.stderr)
        return 2
    try:
        held = _lock_if_by_hand(run, args[1])
    except InputError as exc:
        print(f"spibatch: error: {exc}", file=sys.stderr)
        return InputError.exit_code
    try:
        return _main(name, run, args)
    finally:
        if held:
            release_lock(run.path)


def _lock_if_by_hand(run: RunLayout, shown: str) -> bool:
    """Started by the run's owner (its token in our environment: the follower, a stage process) or by an MPI
    launcher (the owner's EMC job; its ranks cannot all hold one lock): nothing to take, False.  Started by hand:
    the run's lock is taken as any command writing into the run takes it (another owner, live or killed, refuses
    it in one line), True."""
    from spibatch.emc.mpi import LAUNCHER_VARS
    from spibatch.lock import read_lock, take_lock
    from spibatch.owners import OWNER_ENV

    if any(name in os.environ for name in LAUNCHER_VARS):
        return False
    lock = read_lock(run.path)
    if lock is not None and os.environ.get(OWNER_ENV) and lock.get("token") == os.environ[OWNER_ENV]:
        return False
    try:
        take_lock(run.path, [sys.executable, "-m", "spibatch.stages", *sys.argv[1:]], field_name="RUN_DIR")
    except InputError as exc:
        raise InputError(exc.problem, path=shown, field="RUN_DIR", fix=exc.fix) from None
    return True


def _main(name: str, run: RunLayout, args: list[str]) -> int:
    from spibatch.emc.mpi import world

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("spibatch")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    comm = None
    from spibatch import interrupts

    if name == "follow":   # SIGTERM (the driver ending, a resume stopping an orphan) or SIGINT: KeyboardInterrupt
        interrupts.install()   # once (later ones noted), so the follower commits what it received
    try:
        comm = world()
        rank = 0 if comm is None else comm.Get_rank()
        if comm is None and name != "follow":   # one process: a SIGTERM is recorded and said, as a Ctrl-C is
            interrupts.install()
        if rank:
            handler.setLevel(logging.CRITICAL + 1)   # rank 0 speaks for all
        layout, pipeline, device = load_run(run.path)
        if name not in stages.order(pipeline):   # (the driver never starts one): nothing to write, nothing written
            print(f"spibatch: error: {args[1]}: RUN_DIR: this run has no {name} stage (its config.yaml has no "
                  f"section for it); run one of: {', '.join(stages.order(pipeline))}", file=sys.stderr)
            return 2
        run_stage(name, layout, pipeline, device, writer=rank == 0)
    except InputError as exc:
        if comm is None or comm.Get_rank() == 0:
            write_result(run, name, InputError.exit_code, str(exc))
            print(f"spibatch: error: {exc}", file=sys.stderr)
            sys.stderr.flush()
        if comm is not None:   # one rank's error (a full disk: rank 0 alone writes) must not leave the others
            if comm.Get_rank():   # waiting in their next collective call; rank 0 first writes what happened
                time.sleep(5)
            comm.Abort(InputError.exit_code)
        return InputError.exit_code
    except BaseException as exc:  # noqa: BLE001 - reported in the result file, then the job fails
        if isinstance(exc, KeyboardInterrupt) and comm is None:   # asked to stop: said in one line
            how = str(exc) or "SIGINT"
            write_result(run, name, 143 if how == "SIGTERM" else 130, f"interrupted ({how})")
            print(f"spibatch: {name}: interrupted ({how})", file=sys.stderr)
            return 143 if how == "SIGTERM" else 130
        first = str(exc).splitlines()[0] if str(exc) else ""
        write_result(run, name, 1, f"{exc.__class__.__name__}: {first}")
        if comm is not None:
            import traceback

            traceback.print_exc()
            comm.Abort(1)   # the other ranks would wait in the next collective call forever
        raise
    if comm is None or comm.Get_rank() == 0:
        write_result(run, name, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
