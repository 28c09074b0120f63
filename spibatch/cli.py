"""The ``spibatch`` command: parses arguments and runs stages (:mod:`spibatch.stages`).

Every command that produces results is a run of one or more stages in a new run folder
(``runs/<name>-<UTC time>/`` or ``--out``).  Bad input stops with one line on stderr and exit 2.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import re
import sys

import typer

from spibatch import __version__, cli_platform, cli_stages
from spibatch.errors import InputError, StageFailed

log = logging.getLogger("spibatch")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="X-ray single-particle imaging: simulate, reconstruct, phase and validate, "
                       "locally, on Slurm or on Kubernetes.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"spibatch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit"),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="only warnings and errors on the terminal")) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("spibatch")
    logger.handlers[:] = [h for h in logger.handlers if not isinstance(h, logging.StreamHandler)
                          or isinstance(h, logging.FileHandler)]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


COMMANDS = [cli_stages.init, cli_stages.schema, cli_platform.demo, cli_stages.simulate, cli_stages.ingest,
            cli_stages.emc, cli_stages.background, cli_stages.classify, cli_stages.phase, cli_stages.validate, cli_platform.run, cli_platform.resume,
            cli_platform.monitor, cli_platform.report, cli_platform.bench, cli_platform.replay, cli_platform.stop]
for command in COMMANDS:
    app.command()(command)


def main() -> None:
    """Console entry point: run the app; bad input (or a full disk) -> one line on stderr, exit 2; a failed stage
    of a run -> one line, exit 1; SIGINT and
    SIGTERM -> status interrupted, the line to resume, exit 130 / 143 (:mod:`spibatch.interrupts`)."""
    from spibatch import interrupts
    from spibatch.io.atomic import DiskFull
    from spibatch.options import run_app

    interrupts.install()
    try:
        run_app(app)   # usage errors as one line too
    except InputError as exc:
        if not interrupts.mpi_rank():   # under mpirun rank 0 speaks for all
            typer.echo(f"spibatch: error: {exc}", err=True)
        if isinstance(exc, DiskFull):   # rank 0 alone writes: the other ranks would wait for it forever
            interrupts.abort_mpi(exc.exit_code)
        sys.exit(exc.exit_code)
    except OSError as exc:       # a path too long, unwritable, or stdout on a full device or a closed pipe
        if exc.errno not in (errno.ENAMETOOLONG, errno.ENOSPC, errno.EPIPE, errno.EACCES, errno.EROFS,
                             errno.ENOTDIR, errno.EEXIST, errno.ELOOP):   # ENOTDIR, EEXIST: a file where a folder goes
            raise
        where = exc.filename or ("standard output" if exc.errno in (errno.EPIPE, errno.ENOSPC) else None)
        if not interrupts.mpi_rank():
            with contextlib.suppress(OSError):
                fix = ("give a shorter path" if exc.errno == errno.ENAMETOOLONG else
                       "point the link at a real file or folder" if exc.errno == errno.ELOOP else
                       "give a writable path (or another output)")
                print(f"spibatch: error: {where + ': ' if where else ''}{exc.strerror or exc}; {fix}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as exc:  # Path.resolve() on a link that leads back to itself (Python 3.11-3.12; 3.13: ELOOP)
        loop = re.fullmatch(r"Symlink loop from '(.*)'", str(exc), re.S)
        if loop is None:
            raise
        if not interrupts.mpi_rank():
            typer.echo(f"spibatch: error: {ascii(loop.group(1))[1:-1]}: a symbolic link loop (it leads back to "
                       "itself); point the link at a real file or folder", err=True)
        sys.exit(2)
    except StageFailed as exc:   # a job or task failed: the stage, the cause, where the traceback is, how to go on
        if not interrupts.mpi_rank():
            typer.echo(f"spibatch: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except BaseException as exc:   # typer turns a KeyboardInterrupt into SystemExit(130); a C extension, into its error
        interrupted = (interrupts.interrupt_in(exc) if isinstance(exc, (KeyboardInterrupt, SystemExit))
                       else interrupts.chained_interrupt(exc))
        if interrupted is None:
            raise
        interrupts.exit_interrupted(interrupted)
    finally:
        # The interpreter's last garbage collections walk every object still alive (Numba's, h5py's,
        # matplotlib's): 0.22 s at the end of an EMC run of the small set.  Nothing is collected there that
        # matters (files are closed, atexit handlers still run): the objects are frozen out of their reach.
        gc.freeze()
