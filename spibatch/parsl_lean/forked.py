"""multiprocessing's forkserver and resource tracker as forks of this process, not fresh interpreters.

multiprocessing starts both by executing a new Python (``python -c 'from multiprocessing.forkserver import
main; ...'``): the forkserver then imports its preload modules again -- for Parsl's worker pool, Parsl itself,
0.25 CPU s here, after the pool has just spent 0.35 s importing it --, and the resource tracker costs 0.06 s of
interpreter start.  On a loaded node those CPU seconds are what the first task result waits for.  A process that
has already imported what its forkserver needs, and runs no thread yet, can fork both instead:
:func:`start_forkserver` forks a child that runs multiprocessing's own ``forkserver.main`` (and one that runs
``resource_tracker.main``), then records them where multiprocessing looks, so that the context's processes are
forks of that child, exactly as with a forkserver started the usual way.

Python's internals this relies on (ForkServer's ``_forkserver_address``, ``_forkserver_alive_fd``,
``_forkserver_pid``, ``main(listener_fd, alive_r, preload)``; ResourceTracker's ``_fd`` and ``_pid``) are checked
first: where they differ (Python 3.14 adds an authentication key), :func:`start_forkserver` says so and
multiprocessing starts its processes the usual way.
"""

from __future__ import annotations

import inspect
import os
import socket
import threading


class NotForked(RuntimeError):
    """The forkserver could not be forked here (threads running, internals not as expected)."""


def _check() -> None:
    from multiprocessing import forkserver, resource_tracker

    if threading.active_count() != 1:
        raise NotForked(f"{threading.active_count()} threads run: a fork would copy their locks mid-use")
    server, tracker = getattr(forkserver, "_forkserver", None), getattr(resource_tracker, "_resource_tracker", None)
    if not all(hasattr(server, a) for a in ("_forkserver_address", "_forkserver_alive_fd", "_forkserver_pid")) \
            or not all(hasattr(tracker, a) for a in ("_fd", "_pid")):
        raise NotForked("this Python's multiprocessing keeps its forkserver's state differently")
    if list(inspect.signature(forkserver.main).parameters)[:3] != ["listener_fd", "alive_r", "preload"] or \
            any(p.kind is p.KEYWORD_ONLY for p in inspect.signature(forkserver.main).parameters.values()):
        raise NotForked("this Python's forkserver takes other arguments")


def fork_running(run) -> int:
    """Fork a child that calls ``run()`` and ends with ``os._exit`` (no exit handler of this process runs there; an
    error's traceback on stderr, exit status 1, as a fresh Python's); the child's pid."""
    pid = os.fork()
    if pid == 0:   # pragma: no cover - the child (measured through what it serves)
        code = 1
        try:
            run()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0
        except BaseException:   # noqa: BLE001 - said as Python would say it
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _fork_resource_tracker() -> None:
    from multiprocessing import resource_tracker

    tracker = resource_tracker._resource_tracker
    if tracker._fd is not None:
        return
    read, write = os.pipe()

    def run():
        os.close(write)
        resource_tracker.main(read)

    try:
        pid = fork_running(run)
    finally:
        os.close(read)
    tracker._fd, tracker._pid = write, pid


def start_forkserver() -> int:
    """Fork this process's resource tracker and forkserver (see the module); the forkserver's pid.  Raises
    :class:`NotForked` (nothing started) where this process cannot: multiprocessing then starts them itself."""
    from multiprocessing import connection, forkserver, util

    _check()
    server = forkserver._forkserver
    with server._lock:
        if server._forkserver_pid is not None:
            raise NotForked("a forkserver already runs")
        _fork_resource_tracker()
        with socket.socket(socket.AF_UNIX) as listener:
            address = connection.arbitrary_address("AF_UNIX")
            listener.bind(address)
            if not util.is_abstract_socket_namespace(address):
                os.chmod(address, 0o600)
            listener.listen()
            alive_r, alive_w = os.pipe()

            def run():
                os.close(alive_w)
                server._lock = threading.Lock()   # held by this process's thread at the fork: free it in the
                #                                   forkserver and the workers it forks (a task of theirs that starts
                #                                   a forkserver process waited on it for ever: the review)
                forkserver.main(listener.fileno(), alive_r, [])

            try:
                pid = fork_running(run)
            except BaseException:
                os.close(alive_w)
                raise
            finally:
                os.close(alive_r)
        server._forkserver_address, server._forkserver_alive_fd, server._forkserver_pid = address, alive_w, pid
    return pid
