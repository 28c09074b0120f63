"""The worker pool's task and result queues, with locks the kernel frees when the process holding one dies.

Parsl's worker pool hands tasks to its workers through a ``multiprocessing.Queue``: an idle worker waits for a
task inside ``get()``, holding the queue's reader lock (a POSIX semaphore) for the whole wait.  A worker killed
there (the OOM killer, a stray ``kill``) never releases it: the pool restarts the worker, but no worker can take
a task again, the pool stays connected, and the run waited for ever (measured: 3 of 3 tries, both idle workers of a
two-worker pool SIGKILLed, then four 0.2-s tasks: none had run 60 s later).  A worker killed while putting its
result holds the result queue's writer lock the same way.

:class:`FileLock` is a POSIX record lock (``lockf``) on a file of its own, which the kernel releases when the
process holding it dies -- and which, unlike ``flock``, a child forked by the holder (a task's helper process)
does not keep -- and :func:`context` gives the pool a multiprocessing context whose ``Queue()`` uses two of them.  What it cannot mend: a worker killed in the middle of reading a task's bytes
leaves a half message in the pipe (microseconds of each task's hand-over, against the whole idle wait before).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
import threading
import time
import weakref

FIRST_STEP_S = 0.0001   # a waiting process tries the lock again after this, then twice as long each time ...
LAST_STEP_S = 0.002     # ... up to this (a hand-over waits at most this; an idle worker wakes 500 times a s: ~0.5 % of a core)
PREFIX = "spibatch-pool-locks-"
ALIVE = "alive"         # in each pool's folder, locked by the pool for its life: the folder is not stale

_locks: weakref.WeakSet = weakref.WeakSet()
_folder: str | None = None   # this process's folder (its own record lock would not exclude it: never judged stale)
SOCKET_PATH_BYTES = 107   # a Unix socket's path, at most (sun_path less its NUL)
SOCKET_NAME_BYTES = 20    # "/listener-" and multiprocessing's 8 random characters, with room
_alive_fds: list[int] = []   # the open (and locked) alive file of this process's folder


class FileLock:
    """A lock between processes and threads with ``multiprocessing.Lock``'s interface (acquire(block, timeout),
    release, ``with``); pickled, it opens its file again in the process that unpickles it."""

    def __init__(self, path: str):
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._threads = threading.Lock()   # a record lock is the process's: it does not exclude its threads
        _locks.add(self)

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def __del__(self) -> None:
        with contextlib.suppress(OSError, AttributeError, TypeError):
            os.close(self._fd)

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        deadline = None if not block or timeout is None else time.monotonic() + max(timeout, 0.0)
        if not self._threads.acquire(block, -1 if deadline is None else max(timeout, 0.0)):
            return False
        step = FIRST_STEP_S
        while True:
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):   # not "held elsewhere" (no locks on this
                    self._threads.release()                          # filesystem, a closed file): say so
                    raise
                if not block or (deadline is not None and time.monotonic() >= deadline):
                    self._threads.release()
                    return False
                time.sleep(step if deadline is None else max(0.0, min(step, deadline - time.monotonic())))
                step = min(2 * step, LAST_STEP_S)

    def release(self) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN)
        self._threads.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _after_fork_in_child() -> None:
    """A forked child holds none of its parent's record locks; a thread lock taken by another thread of the parent
    at the fork would stay taken in the child."""
    for lock in list(_locks):
        lock._threads = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def own_folder() -> str:
    """This process's node-local folder (made at the first call): the queues' lock files and multiprocessing's
    temporary files (the forkserver's socket, :func:`hold_temporary_files`), removed when it exits -- or, once it
    is dead (its ``alive`` file no longer locked: pids say nothing across containers that share /tmp), by the
    next pool started on the node.  A pool is usually ended by SIGTERM (its block cancelled), which runs no
    exit handler."""
    global _folder
    if _folder is not None:
        return _folder
    parent = tempfile.gettempdir()
    _remove_stale(parent)
    making = tempfile.mkdtemp(prefix=f".{PREFIX}{os.getpid()}-")   # a name the sweep does not look at ...
    alive = os.open(os.path.join(making, ALIVE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.lockf(alive, fcntl.LOCK_EX | fcntl.LOCK_NB)   # held until this process ends (the fd is never closed)
    folder = os.path.join(parent, os.path.basename(making)[1:])
    os.rename(making, folder)                          # ... until its lock is held (the review: a sweep between
    #                                                    making and locking it removed a new pool's folder)
    atexit.register(_remove, folder)
    _alive_fds.append(alive)
    _folder = folder
    return folder


def hold_temporary_files() -> None:
    """multiprocessing's temporary folder (where the forkserver's listening socket is made) is :func:`own_folder`:
    its own ``pymp-*`` folder, removed only by a normal exit, was left on the node by every pool a SIGTERM ended
    (1036 of them in /tmp here after a day of runs).  Call before the forkserver starts."""
    from multiprocessing import process

    folder = own_folder()
    if len(os.fsencode(folder)) + SOCKET_NAME_BYTES <= SOCKET_PATH_BYTES:   # else the forkserver could not bind:
        process.current_process()._config.setdefault("tempdir", folder)     # multiprocessing's own folder, as before


def context(base):
    """A multiprocessing context like ``base`` (forkserver or spawn) whose ``Queue()`` has :class:`FileLock`
    reader and writer locks, their files in :func:`own_folder` (node-local: a lock on a network filesystem would
    be a round trip a try)."""
    folder = own_folder()
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
    shutil.rmtree(folder, ignore_errors=True)   # (multiprocessing may make folders of its own in it)


def _remove_stale(parent: str) -> None:
    """Remove the lock folders of pools that no longer run (killed: no atexit): those whose ``alive`` file can be
    locked (a live pool holds it) or, a minute after it was made, is missing (a pool killed before it made one)."""
    try:
        names = [n for n in os.listdir(parent) if n.startswith(PREFIX) and n != os.path.basename(_folder or "")]
    except OSError:
        return
    for name in names:
        folder = os.path.join(parent, name)
        try:
            fd = os.open(os.path.join(folder, ALIVE), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                if time.time() - os.stat(folder).st_mtime > 60:   # not one being made right now
                    _remove(folder)
            continue
        except OSError:   # another user's, or gone meanwhile: not ours to judge
            continue
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue      # its pool lives
        else:
            _remove(folder)
        finally:
            os.close(fd)
