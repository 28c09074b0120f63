"""A *zygote*: a fork of the driver, made while it runs one thread, that waits for one message and then becomes
one of Parsl's processes (the interchange, :mod:`spibatch.parsl_lean.interchange_fork`; the local site's worker
pool, :mod:`spibatch.parsl_lean.pool_fork`) with Parsl already imported -- not a fresh interpreter importing it
again.

A fork is not a fresh process; what the zygote gives up of the driver's right after the fork:

* its open files: every descriptor but 1 and 2 is pointed at /dev/null (the numbers stay taken, so no object of
  the driver's that closes its own later closes one of the zygote's); a flock, a pipe's write end or a buffered
  file of the driver's is neither kept nor written by it;
* its Python signal handlers (back to the default; SIGINT stays ignored where :func:`spibatch.parsl_shutdown.load`
  ignores it), its logging handlers and its ``sys.stdout`` / ``sys.stderr`` objects (descriptors 1 and 2 instead,
  as a fresh Python has them);
* its garbage: the objects alive at the fork are never collected in the zygote (``gc.freeze``: an unreachable
  one's finalizer could delete the driver's temporary file, and a collection would copy every page);
* its exit handlers: it ends with ``os._exit`` (:func:`spibatch.parsl_lean.forked.fork_running`);
* its life: it is killed when the driver dies (``PR_SET_PDEATHSIG``), since a fork does not carry the run owner's
  token in ``/proc/<pid>/environ`` that :mod:`spibatch.owners` finds exec'd processes by.

:func:`why_not` says where a fork would be unsafe (not Linux, threads running: a fork copies only the forking
thread, with whatever locks the others hold; a driver of more than :data:`MAX_DRIVER_RSS`, whose pages would stay
with the fork once the driver frees them).
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import threading
import time

from spibatch.parsl_lean import forked

MAX_DRIVER_RSS = 256 << 20   # bytes: a larger driver's processes are started afresh (a fork keeps, privately,
#                              every page the driver later frees or changes: up to the driver's size, against the
#                              20-34 MB of a fresh interpreter; a spibatch driver holds 44-79 MB when Parsl starts)
PR_SET_PDEATHSIG = 1


class Zygote:
    """A fork of the driver waiting for one pickled message on a pipe; then ``become(message)`` runs in it.  With
    ``own_group`` it leads a process group of its own from its first instruction (so that a ``kill -- -PGID`` of
    it never reaches the driver)."""

    def __init__(self, become, own_group: bool = False):
        read, write = (above_stdio(fd) for fd in os.pipe())   # (a driver started with fd 0 closed got it back
        parent = os.getpid()                                      # here, and then /dev/null over it in the fork)
        for stream in (sys.stdout, sys.stderr):   # nothing of the driver's in their buffers is printed twice
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass

        def serve() -> None:   # the child: what the message says, or nothing when it never comes
            if own_group:
                os.setpgid(0, 0)
            os.close(write)
            _serve(read, parent, become)

        pid = forked.fork_running(serve)
        os.close(read)
        if own_group:
            try:
                os.setpgid(pid, pid)   # (the child does it too: whichever runs first)
            except OSError:
                pass
        self.pid, self.write_fd, self.used = pid, write, False

    def alive(self) -> bool:
        try:
            return os.waitpid(self.pid, os.WNOHANG)[0] == 0
        except ChildProcessError:
            return False

    def send(self, message) -> None:
        """Hand it ``message`` (pickled) and close the pipe."""
        self.used = True
        with os.fdopen(self.write_fd, "wb") as pipe:
            pickle.dump(message, pipe)

    def close(self) -> None:
        """Let an unused zygote go (it ends when its pipe closes) and reap it (waiting 1 s at most)."""
        if not self.used:
            self.used = True
            os.close(self.write_fd)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(self.pid, os.WNOHANG)[0]:
                        return
                except ChildProcessError:
                    return
                time.sleep(0.01)


def _serve(read: int, parent: int, become) -> None:
    """The zygote: die with the driver, drop what is the driver's, read the message, ``become(message)``."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:
        os._exit(1)   # no way to die with the driver, or it is gone already
    drop_inherited(keep=read)
    # prints and tracebacks go to descriptors 1 and 2, as a fresh Python's do -- not through the driver's
    # sys.stdout / sys.stderr objects (pytest's capture: a file now on /dev/null)
    sys.stdout = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")
    sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")
    with os.fdopen(read, "rb") as pipe:
        try:
            message = pickle.load(pipe)
        except EOFError:   # never started: nothing to run
            return
    become(message)


def above_stdio(fd: int) -> int:
    """``fd``, or (closing it) a copy numbered 3 or more where it is 0, 1 or 2."""
    if fd > 2:
        return fd
    import fcntl

    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(fd)


def drop_inherited(keep: int) -> None:
    """In the zygote: the objects alive at the fork are never collected here (an unreachable one's finalizer could
    delete the driver's temporary file; and a collection would copy every page); the driver's descriptors point at
    /dev/null, then its signal and logging handlers go (a handler freed then flushes into /dev/null)."""
    import gc

    gc.freeze()
    devnull = above_stdio(os.open(os.devnull, os.O_RDWR))
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in (1, 2, keep, devnull):
            try:
                os.dup2(devnull, fd, inheritable=False)
            except OSError:   # the listing's own descriptor, closed meanwhile
                pass
    os.dup2(devnull, 0)
    os.close(devnull)
    for sig in signal.valid_signals():
        try:
            if callable(signal.getsignal(sig)):
                signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):   # SIGKILL, SIGSTOP, ...
            pass
    signal.set_wakeup_fd(-1)
    for logger in [logging.getLogger()] + list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            logger.handlers = []


def why_not() -> str | None:
    """Why this process cannot fork a zygote now (None: it can)."""
    if not hasattr(os, "fork") or not os.path.isdir("/proc/self/fd"):
        return "not Linux"
    if threading.active_count() != 1:
        return f"{threading.active_count()} threads run"
    openmp = _openmp_running()
    if openmp:
        return f"{openmp}'s threads run (an OpenMP runtime is not safe to use after a fork: a task would hang)"
    try:
        with open("/proc/self/statm") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        rss = 0
    if rss > MAX_DRIVER_RSS:
        return f"the driver holds {rss / 2**30:.1f} GiB"
    return None


OPENMP_RUNTIMES = ("libgomp", "libiomp", "libomp", "libtbb")   # thread pools that do not survive a fork


def _openmp_running() -> str | None:
    """The OpenMP (or TBB) runtime whose thread pool runs in this process (None: none).  Such a runtime is mapped
    and this process runs more native threads than Python's (numba's ``omp`` layer once a parallel kernel ran;
    OpenBLAS's own pthreads, which numpy starts at import, are fork-safe and do not count alone)."""
    try:
        native = len(os.listdir("/proc/self/task"))
        if native <= threading.active_count():
            return None
        with open("/proc/self/maps") as maps:
            for line in maps:
                name = line.rsplit("/", 1)[-1]
                for runtime in OPENMP_RUNTIMES:
                    if name.startswith(runtime):
                        return runtime
    except OSError:
        return None
    return None
