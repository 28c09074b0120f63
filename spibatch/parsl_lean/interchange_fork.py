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

What the zygote gives up of the driver's, and when it is not made: :mod:`spibatch.parsl_lean.zygote`.

Where it cannot fork (:func:`spibatch.parsl_lean.zygote.why_not`, or a Parsl whose executor module no longer
calls ``subprocess.Popen``), nothing changes: Parsl starts ``interchange.py`` as before.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time

from spibatch.parsl_lean.zygote import Zygote, why_not

log = logging.getLogger("spibatch")


class ForkedCommand(list):
    """An interchange's launch words (what Parsl would run without a zygote) and the :class:`Zygote` to run it."""

    zygote: Zygote | None = None


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


def _why_not() -> str | None:
    """Why the driver cannot fork its interchanges now (None: it can)."""
    why = why_not()
    if why is not None:
        return why
    from parsl.executors.high_throughput import executor

    if getattr(executor, "subprocess", None) is not subprocess and not isinstance(executor.subprocess, _Subprocess):
        return "this Parsl starts its interchange some other way"
    return None


def _run_interchange(config: dict) -> None:
    """In the zygote: Parsl's ``Interchange`` with the configuration Parsl wrote to the pipe."""
    from parsl.executors.high_throughput.interchange import Interchange
    from parsl.utils import setproctitle

    setproctitle("parsl: HTEX interchange")
    Interchange(**config).start()


class _Subprocess:
    """``subprocess`` as Parsl's executor module sees it: ``Popen`` of a :class:`ForkedCommand` whose zygote lives
    starts the interchange there; anything else is the real module's."""

    def __getattr__(self, name):
        return getattr(subprocess, name)

    def Popen(self, args, *more, **options):  # noqa: N802 - subprocess's name
        waiting = getattr(args, "zygote", None)
        if waiting is not None and not waiting.used and waiting.alive() and options.get("stdin") == subprocess.PIPE:
            waiting.used = True   # Parsl writes the pickled configuration to the pipe itself
            return ForkedProcess(args, waiting.pid, waiting.write_fd)
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
        command.zygote = Zygote(_run_interchange)
        each.interchange_launch_cmd = command
    return len(chosen)


def release(executors) -> None:
    """After ``parsl.load`` failed: let the zygotes of ``executors`` that were never started go, and stop the
    interchanges that were."""
    for each in executors:
        waiting = getattr(getattr(each, "interchange_launch_cmd", None), "zygote", None)
        if waiting is not None:
            waiting.close()
        proc = getattr(each, "interchange_proc", None)
        if isinstance(proc, ForkedProcess) and proc.poll() is None:   # started before load failed: no owner token
            proc.kill()                                                # finds a fork (spibatch.owners): stopped here
            proc.wait_quietly(10.0)
