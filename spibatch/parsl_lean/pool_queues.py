"""The worker pool's task and result queues, with locks the kernel frees when the process holding one dies.

Parsl's worker pool hands tasks to its workers through a ``multiprocessing.Queue``: an idle worker waits for a
task inside ``get()``, holding the queue's reader lock (a POSIX semaphore) for the whole wait.  A worker killed
there (the OOM killer, a stray ``kill``) never releases it: the pool restarts the worker, but no worker can take
a task again, the pool stays connected, and the run waited for ever (measured: 3 of 3 tries, both idle workers of a
two-worker pool SIGKILLed, then four 0.2-s tasks: none had run 60 s later).  A worker killed while putting its
result holds the result queue's writer lock the same way.

:class:`FileLock` is a lock on a file of its own (``flock``), which the kernel releases when the holder's last
descriptor closes -- at its death too -- and :func:`context` gives the pool a multiprocessing context whose
``Queue()`` uses two of them.  What it cannot mend: a worker killed in the middle of reading a task's bytes
leaves a half message in the pipe (microseconds of each task's hand-over, against the whole idle wait before).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import tempfile
import threading
import time

STEP_S = 0.002    # how often a waiting process tries the lock again (a task's hand-over waits at most this)


class FileLock:
    """A lock between processes and threads with ``multiprocessing.Lock``'s interface (acquire(block, timeout),
    release, ``with``); pickled, it opens its file again in the process that unpickles it."""

    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None
        self._pid = -1
        self._threads = threading.Lock()   # flock excludes open files, not threads sharing one

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def _descriptor(self) -> int:
        if self._pid != os.getpid():   # a fork shares the parent's open file, and with it the parent's lock
            self._fd, self._pid = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600), os.getpid()
            self._threads = threading.Lock()
        return self._fd

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        deadline = None if not block or timeout is None else time.monotonic() + max(timeout, 0.0)
        fd = self._descriptor()
        if not self._threads.acquire(block, -1 if deadline is None else max(timeout, 0.0)):
            return False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if not block or (deadline is not None and time.monotonic() >= deadline):
                    self._threads.release()
                    return False
                time.sleep(STEP_S)

    def release(self) -> None:
        fcntl.flock(self._descriptor(), fcntl.LOCK_UN)
        self._threads.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


PREFIX = "spibatch-pool-locks-"


def context(base):
    """A multiprocessing context like ``base`` (forkserver or spawn) whose ``Queue()`` has :class:`FileLock`
    reader and writer locks.  Their files live in a node-local folder of this process (``flock`` on a network
    filesystem would be a round trip a try), removed when it exits -- or, when it was killed, by the next pool
    started on the node."""
    _remove_stale(tempfile.gettempdir())
    folder = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
    atexit.register(_remove, folder)
    counter = iter(range(1 << 30))

    class PoolContext(type(base)):
        def Queue(self, maxsize: int = 0):  # noqa: N802 - multiprocessing's name
            queue = super().Queue(maxsize)
            number = next(counter)
            queue._rlock = FileLock(os.path.join(folder, f"queue-{number}.read"))
            queue._wlock = FileLock(os.path.join(folder, f"queue-{number}.write"))
            return queue

    return PoolContext()


def _remove(folder: str) -> None:
    for name in os.listdir(folder):
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, name))
    with contextlib.suppress(OSError):
        os.rmdir(folder)


def _remove_stale(parent: str) -> None:
    """Remove the lock folders of pools that no longer run (killed: no atexit)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(parent):
            pid = name[len(PREFIX):].partition("-")[0]
            if not name.startswith(PREFIX) or not pid.isdigit():
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                _remove(os.path.join(parent, name))
            except OSError:   # another user's pool: not ours to judge
                pass
