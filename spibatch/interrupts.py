"""How a ``spibatch`` command stops when it is asked to: SIGINT (Ctrl-C) and SIGTERM (what Slurm and
Kubernetes send) alike, promptly, without a traceback, and leaving nothing running.

* SIGHUP (the terminal or the ssh session closed) is taken as SIGTERM is, unless ignored (``nohup``): before, it
  ended a command at once (exit 129, no line, its lock left).
* The first SIGINT or SIGTERM raises KeyboardInterrupt in the main thread: the run folder is marked
  ``interrupted`` (:func:`spibatch.rundir.open_run`), Parsl is shut down with a deadline and what it
  started is stopped (:mod:`spibatch.pipeline`, :mod:`spibatch.owners`).  Later signals are noted, not
  raised again, so the clean-up itself is not cut short.
* Python drops an exception raised where it cannot propagate (a weakref callback, a ``__del__``, the
  garbage collector: "Exception ignored in ..."), so a signal arriving there would be lost and the run
  go on; :func:`_unraisable` notices our KeyboardInterrupt there and raises it again in the main thread.
* A watchdog makes sure the process ends: :data:`WATCHDOG_S` seconds after the first signal it stops
  what this process started and exits, whatever the clean-up is waiting for.
* The command's last line says how to go on -- ``spibatch: interrupted (SIGTERM); continue with:
  spibatch resume RUN`` (or ``spibatch emc CONFIG --resume RUN``) -- and the exit status is
  128 + the signal: 130 for SIGINT, 143 for SIGTERM.  The process exits at once (``os._exit``, after
  flushing), so no thread left behind by a library can hold it.
* SIGXFSZ is ignored: a write beyond the shell's file-size limit (``ulimit -f``) then fails with EFBIG,
  which ends the command with one line (:class:`spibatch.io.atomic.DiskFull`), not a core dump.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager

from spibatch import owners

WATCHDOG_S = 120.0
REDELIVER_S = 0.05     # after a dropped KeyboardInterrupt (see _unraisable)
_received: list[int] = []
_raised: list[KeyboardInterrupt] = []   # the one raised, so its resume hint survives typer's Exit(130)
_again: list[bool] = []                 # set when Python dropped it (see _unraisable): raise it once more
_where: list[str] = []                  # file:line of the code the signal interrupted
_holding: list[bool] = []               # inside held(): signals wait in _deferred
_deferred: list[int] = []
_previous_hook = sys.unraisablehook


def install() -> None:
    """SIGTERM, SIGINT and SIGHUP stop the command as described above (an ignored SIGINT, as in a background job
    of a script, or SIGHUP, under nohup, stays ignored); SIGXFSZ is ignored; a log record that cannot be written (a full disk) is
    dropped without logging's traceback.  Installing twice changes nothing."""
    if signal.getsignal(signal.SIGTERM) is _handler:
        return
    logging.raiseExceptions = False
    signal.signal(signal.SIGTERM, _handler)
    for name in ("SIGINT", "SIGHUP"):      # SIGHUP: the terminal or ssh session closed (nohup ignores it: kept so)
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) is not signal.SIG_IGN:
            signal.signal(number, _handler)
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    sys.unraisablehook = _unraisable


def _unraisable(info) -> None:
    """Our KeyboardInterrupt dropped by Python (raised inside a weakref callback, a ``__del__``, ...): deliver
    it to the main thread again a moment later, once that code has returned (the same signal, sent to the
    main thread: :func:`_handler` runs there once more and raises it); dropped again, it is sent again."""
    if _raised and info.exc_value is _raised[0]:
        _again[:] = [True]
        timer = threading.Timer(REDELIVER_S, signal.pthread_kill, args=(threading.main_thread().ident, _received[0]))
        timer.daemon = True
        timer.start()
        return
    _previous_hook(info)


@contextmanager
def held():
    """A stretch of the main thread no signal may cut (the follower's commit: an interrupt inside it lost the
    batch): the first SIGTERM or SIGINT arriving inside is received as usual (the watchdog starts) but raised as
    the stretch ends.  Only with :func:`install`'s handler (else a signal acts as Python's default).  (Blocking
    the signal in the main thread would not do: the kernel hands a process's signal to any thread that does not
    block it, and Python runs the handler anyway.)"""
    _holding.append(True)
    try:
        yield
    finally:
        _holding.pop()
        if not _holding and _deferred:
            _deferred.clear()
            raise _raised[0]


def _handler(signum: int, frame) -> None:
    if _again and _again[0]:              # the first one was dropped where it was raised: raise it here
        _again[0] = False
        raise _raised[0]
    if _received:
        os.write(2, f"spibatch: {signal.Signals(signum).name} again: already stopping (at most "
                    f"{WATCHDOG_S:.0f} s)\n".encode())
        return
    _received.append(signum)
    _where[:] = [f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"]
    threading.Thread(target=_watchdog, args=(128 + signum,), name="spibatch-watchdog", daemon=True).start()
    _raised.append(KeyboardInterrupt(signal.Signals(signum).name))
    if _holding:                          # inside held(): raised as it ends
        _deferred.append(signum)
        return
    raise _raised[0]


def raise_if_swallowed() -> None:
    """Between units of work (an EMC iteration): a signal already received, whose KeyboardInterrupt is not
    propagating any more, was caught by code that went on (a library's broad ``except``); raise it again here,
    so the command still stops (and say where it had landed, for the bug report)."""
    if _raised and sys.exc_info()[1] is None:
        logging.getLogger("spibatch").warning("%s had not stopped the run (it arrived at %s and was caught "
                                              "there); stopping now", _raised[0].args[0], _where[0])
        raise _raised[0]


def _watchdog(code: int) -> None:
    threading.Event().wait(WATCHDOG_S)
    os.write(2, f"spibatch: still stopping after {WATCHDOG_S:.0f} s: exiting now\n".encode())
    owners.stop_tagged(owners.own_token(), "this run started that still run", grace_s=2.0)
    os._exit(code)


def exit_code() -> int:
    """128 + the signal received (130 for Ctrl-C, the default)."""
    return 128 + (_received[0] if _received else signal.SIGINT)


def mpi_rank() -> int:
    """This process's MPI rank (from the launcher's environment; 0 outside MPI)."""
    names = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")
    return int(next((os.environ[v] for v in names if os.environ.get(v)), 0))


def abort_mpi(code: int) -> None:
    """Under MPI with several ranks, end every rank now (the others would wait in their next collective call
    for this one forever); nothing outside MPI."""
    comm_module = sys.modules.get("mpi4py.MPI")
    if comm_module is not None and comm_module.Is_initialized() and comm_module.COMM_WORLD.Get_size() > 1:
        _flush()
        comm_module.COMM_WORLD.Abort(code)


def _flush() -> None:
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def interrupt_in(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt ``exc`` is or was raised while handling, or the one our signal handler raised
    (typer turns it into ``Exit(130)``, which click returns as a plain exit code: the chain is lost), or None."""
    return _raised[0] if _raised else chained_interrupt(exc)


REPLACED = (ImportError, SystemError)   # what a C extension turns an exception it did not expect into


def chained_interrupt(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt ``exc`` is, or was caused by / raised while handling, else None: a signal that
    lands inside a compiled call (a Numba kernel) can surface as that library's error with our
    KeyboardInterrupt as its cause ("SystemError: ... returned a result with an exception set").  Also the one our
    handler raised when ``exc`` is an ImportError or SystemError with no chain at all after a signal was received:
    a C extension's import that the signal landed in replaces it so ("numba._devicearray failed to import", seen
    in the fault loop).  Any other error stays itself (a real failure after a signal some code swallowed)."""
    seen, first = set(), exc
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return _raised[0] if replaced_interrupt(first) else None


def replaced_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` stands for a signal received (see :func:`chained_interrupt`) without holding it: an
    ImportError or SystemError with no chain, after our handler raised."""
    return bool(_raised) and isinstance(exc, REPLACED) and exc.__cause__ is None and exc.__context__ is None


def exit_interrupted(exc: KeyboardInterrupt) -> None:
    """The command's last line (see the module docstring), then exit with :func:`exit_code` at once."""
    how = f" ({exc.args[0]})" if exc.args else ""
    hint = getattr(exc, "resume_hint", None)
    if not mpi_rank():   # under mpirun rank 0 speaks for all
        print(f"spibatch: interrupted{how}" + (f"; continue with: {hint}" if hint else ""), file=sys.stderr)
    _flush()
    os._exit(exit_code())
