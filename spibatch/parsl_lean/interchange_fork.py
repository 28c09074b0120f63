"""Parsl's interchange as a fork of the driver, made before Parsl starts, not a fresh interpreter.

Parsl starts each HighThroughputExecutor's interchange with ``subprocess.Popen(interchange_launch_cmd)``: a new
Python that imports Parsl again (0.16 CPU s and ~0.2 s of the first task result's path here, more on a loaded
login node), although the driver has just imported it.  :func:`prepare`, called by
:func:`spibatch.parsl_shutdown.load` just before ``parsl.load`` -- while the driver still runs one thread, since a
fork copies only the forking thread, with whatever locks the others hold -- forks one waiting process per
executor (a *zygote*), and gives the executor a launch command that names it (:class:`ForkedCommand`: the very
words Parsl would run, which Parsl's ``Popen`` in ``parsl.executors.high_throughput.executor`` now hands to the
zygote).  The zygote reads the interchange's configuration from the pipe Parsl writes it to, exactly as
``interchange.py`` reads its standard input, and runs Parsl's ``Interchange`` in itself.

A fork is not a fresh process; what the zygote gives up of the driver's right after the fork:

* its open files: every descriptor but 1 and 2 is pointed at /dev/null (the numbers stay taken, so no object of
  the driver's that closes its own later closes one of the interchange's); a flock, a pipe's write end or a
  buffered file of the driver's is neither kept nor written by it;
* its Python signal handlers (back to the default; SIGINT stays ignored, as :func:`load` has it), its logging
  handlers (the interchange opens its own log) and its ``sys.stdout`` / ``sys.stderr`` objects (descriptors 1
  and 2 instead, as ``interchange.py`` has them);
* its garbage: the objects alive at the fork are never collected in the zygote (``gc.freeze``: an unreachable
  one's finalizer could delete the driver's temporary file, and a collection would copy every page);
* its life: it is killed when the driver dies (``PR_SET_PDEATHSIG``), since a fork does not carry the run
  owner's token in ``/proc/<pid>/environ`` that :mod:`spibatch.owners` finds the exec'd interchange by.

Where it cannot fork (not Linux, threads running, a driver of more than :data:`MAX_DRIVER_RSS` -- its pages
would stay with the fork once the driver frees them --, a Parsl whose executor module no longer calls
``subprocess.Popen``), nothing changes: Parsl starts ``interchange.py`` as before.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

from spibatch.parsl_lean import forked

log = logging.getLogger("spibatch")

MAX_DRIVER_RSS = 256 << 20   # bytes: a larger driver's interchange is started afresh (a fork keeps, privately,
#                              every page the driver later frees or changes: up to the driver's size, against the
#                              20-34 MB of a fresh interchange; a spibatch driver holds 44-79 MB when Parsl starts)
PR_SET_PDEATHSIG = 1


class ForkedCommand(list):
    """An interchange's launch words (what Parsl would run without a zygote) and the :class:`Zygote` to run it."""

    zygote: "Zygote | None" = None


class ForkedProcess:
    """``subprocess.Popen``'s interface to the zygote once it runs the interchange (as Parsl and
    :mod:`spibatch.parsl_shutdown` use it): ``pid``, ``stdin`` (the configuration pipe), ``poll``, ``wait``,
    ``send_signal``, ``terminate``, ``kill``, ``returncode``."""

    def __init__(self, args: list[str], pid: int, stdin_fd: int):
        self.args, self.pid, self.returncode = list(args), pid, None
        self.stdin = os.fdopen(stdin_fd, "wb")
        self.stdout = self.stderr = None
        self._reaping = threading.Lock()   # the shutdown's thread and the main thread may both poll

    def __repr__(self) -> str:
        return f"<ForkedProcess: pid {self.pid}, returncode {self.returncode}>"

    def poll(self) -> int | None:
        with self._reaping:
            if self.returncode is None:
                try:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:   # reaped elsewhere (as Popen: its status is lost)
                    self.returncode = 0
                else:
                    if pid:
                        self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        step = 0.0005
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(step)
            step = min(2 * step, 0.05)
        return self.returncode

    def wait_quietly(self, seconds: float) -> None:
        """Wait up to ``seconds`` for it to end (reaped then); no error if it has not."""
        try:
            self.wait(seconds)
        except subprocess.TimeoutExpired:
            pass

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:   # not reaped: the pid is still this child's
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """A fork of the driver waiting for one interchange's configuration (see the module)."""

    def __init__(self):
        read, write = (_above_stdio(fd) for fd in os.pipe())   # (a driver started with fd 0 closed got it back
        parent = os.getpid()                                       # here, and then /dev/null over it in the fork)
        for stream in (sys.stdout, sys.stderr):   # nothing of the driver's in their buffers is printed twice
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        def serve() -> None:   # the child: the interchange, or nothing when the executor is never started
            os.close(write)
            _serve(read, parent)

        pid = forked.fork_running(serve)
        os.close(read)
        self.pid, self._write, self.used = pid, write, False

    def alive(self) -> bool:
        try:
            return os.waitpid(self.pid, os.WNOHANG)[0] == 0
        except ChildProcessError:
            return False

    def start(self, args: list[str]) -> ForkedProcess:
        self.used = True
        return ForkedProcess(args, self.pid, self._write)

    def close(self) -> None:
        """Let an unused zygote go (it ends when its pipe closes) and reap it (waiting 1 s at most)."""
        if not self.used:
            self.used = True
            os.close(self._write)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(self.pid, os.WNOHANG)[0]:
                        return
                except ChildProcessError:
                    return
                time.sleep(0.01)


def _serve(read: int, parent: int) -> None:
    """The zygote: die with the driver, drop what is the driver's, read the configuration, run the interchange."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:
        os._exit(1)   # no way to die with the driver, or it is gone already
    _drop_inherited(keep=read)
    # the interchange's prints and tracebacks go to descriptors 1 and 2, as interchange.py's do -- not through the
    # driver's sys.stdout / sys.stderr objects (pytest's capture: a file now on /dev/null)
    sys.stdout = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")
    sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")
    with os.fdopen(read, "rb") as pipe:
        try:
            config = pickle.load(pipe)
        except EOFError:   # the executor was never started: nothing to run
            return
    from parsl.executors.high_throughput.interchange import Interchange
    from parsl.utils import setproctitle

    setproctitle("parsl: HTEX interchange")
    Interchange(**config).start()


def _above_stdio(fd: int) -> int:
    """``fd``, or (closing it) a copy numbered 3 or more where it is 0, 1 or 2."""
    if fd > 2:
        return fd
    import fcntl

    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(fd)


def _drop_inherited(keep: int) -> None:
    """In the zygote: the objects alive at the fork are never collected here (an unreachable one's finalizer could
    delete the driver's temporary file; and a collection would copy every page); the driver's descriptors point at
    /dev/null, then its signal and logging handlers go (a handler freed then flushes into /dev/null)."""
    import gc

    gc.freeze()
    devnull = _above_stdio(os.open(os.devnull, os.O_RDWR))
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


def _why_not() -> str | None:
    """Why the driver cannot fork its interchanges now (None: it can)."""
    if not hasattr(os, "fork") or not os.path.isdir("/proc/self/fd"):
        return "not Linux"
    if threading.active_count() != 1:
        return f"{threading.active_count()} threads run"
    try:
        with open("/proc/self/statm") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        rss = 0
    if rss > MAX_DRIVER_RSS:
        return f"the driver holds {rss / 2**30:.1f} GiB"
    from parsl.executors.high_throughput import executor

    if getattr(executor, "subprocess", None) is not subprocess and not isinstance(executor.subprocess, _Subprocess):
        return "this Parsl starts its interchange some other way"
    return None


class _Subprocess:
    """``subprocess`` as Parsl's executor module sees it: ``Popen`` of a :class:`ForkedCommand` whose zygote lives
    starts the interchange there; anything else is the real module's."""

    def __getattr__(self, name):
        return getattr(subprocess, name)

    def Popen(self, args, *more, **options):  # noqa: N802 - subprocess's name
        zygote = getattr(args, "zygote", None)
        if zygote is not None and not zygote.used and zygote.alive() and options.get("stdin") == subprocess.PIPE:
            return zygote.start(args)
        return subprocess.Popen(args, *more, **options)


def prepare(executors, launch_words: list[str]) -> int:
    """Give each of ``executors`` whose interchange would be started with ``launch_words`` a zygote (see the
    module); how many got one.  Call while this process runs one thread, just before ``parsl.load``."""
    chosen = [e for e in executors if list(getattr(e, "interchange_launch_cmd", None) or []) == list(launch_words)]
    if not chosen:
        return 0
    why = _why_not()
    if why is not None:
        log.debug("Parsl's interchange is started afresh: %s", why)
        return 0
    from parsl.executors.high_throughput import executor

    executor.subprocess = _Subprocess()
    for each in chosen:
        command = ForkedCommand(launch_words)
        command.zygote = Zygote()
        each.interchange_launch_cmd = command
    return len(chosen)


def release(executors) -> None:
    """After ``parsl.load`` failed: let the zygotes of ``executors`` that were never started go, and stop the
    interchanges that were."""
    for each in executors:
        zygote = getattr(getattr(each, "interchange_launch_cmd", None), "zygote", None)
        if zygote is not None:
            zygote.close()
        proc = getattr(each, "interchange_proc", None)
        if isinstance(proc, ForkedProcess) and proc.poll() is None:   # started before load failed: no owner token
            proc.kill()                                                # finds a fork (spibatch.owners): stopped here
            proc.wait_quietly(10.0)
