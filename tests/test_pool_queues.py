"""The worker pool's queues (spibatch.parsl_lean.pool_queues): a worker killed while it waits for a task no longer
leaves the pool's other workers unable to take one (measured before: 3 of 3 tries hung, the pool connected)."""

import multiprocessing
import os
import signal
import time

import pytest

from platform_helpers import spawned
from spibatch.parsl_lean import pool_queues


def _hold_for_ever(lock, ready):
    lock.acquire()
    ready.set()
    time.sleep(600)


@pytest.mark.parametrize("kind", ["multiprocessing", "file"])
def test_a_lock_whose_holder_is_killed(kind, tmp_path):
    """multiprocessing's lock stays taken for ever when its holder is SIGKILLed (what hung the pool); the file lock
    is free again at once, and excludes a second process while held."""
    context = multiprocessing.get_context("spawn")
    lock = context.Lock() if kind == "multiprocessing" else pool_queues.FileLock(str(tmp_path / "lock"))
    holder, ready = spawned(_hold_for_ever, lock)
    try:
        assert ready
        assert not lock.acquire(True, 0.2)       # held by the other process: excluded, the timeout honoured
        assert not lock.acquire(False)
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(30)
        freed = lock.acquire(True, 1.0)
        assert freed is (kind == "file")
        if freed:
            lock.release()
            with lock:                             # and usable again, as `with` too
                pass
    finally:
        if holder.is_alive():
            holder.kill()


def _hold_and_fork(lock, pid_file, ready):
    lock.acquire()
    if os.fork() == 0:           # a helper the task left behind: it must not keep its parent's lock
        with open(pid_file, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(60)
        os._exit(0)
    while not os.path.exists(pid_file):
        time.sleep(0.01)
    ready.set()
    time.sleep(600)


def test_a_child_forked_by_the_holder_does_not_keep_the_lock(tmp_path):
    """The review: with flock the lock belonged to the open file, which a fork shares, so a worker's forked helper
    kept it after the worker was killed (the hang again); a record lock (lockf) is the process's."""
    lock, pid_file = pool_queues.FileLock(str(tmp_path / "lock")), tmp_path / "helper.pid"
    holder, ready = spawned(_hold_and_fork, lock, str(pid_file))
    try:
        assert ready
        assert not lock.acquire(True, 0.1)
        os.kill(holder.pid, signal.SIGKILL)
        began = time.monotonic()
        while holder.exitcode is None and time.monotonic() - began < 30:   # (join would wait for the helper too)
            time.sleep(0.01)
        helper = int(pid_file.read_text())
        os.kill(helper, 0)                           # the helper still lives, with the lock's file open
        assert lock.acquire(True, 2.0)
        lock.release()
    finally:
        if holder.exitcode is None:
            holder.kill()
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_threads_of_one_process_share_a_lock_without_losing_it(tmp_path):
    """The review: two threads' first use of a fresh lock raced (each opened a file, 102 of 300 locks went wrong)."""
    import threading

    failures = []
    for number in range(100):
        lock = pool_queues.FileLock(str(tmp_path / f"lock-{number}"))
        inside = []

        def use(lock=lock, inside=inside):
            for _ in range(20):
                if not lock.acquire(True, 5.0):
                    failures.append("timed out")
                    return
                inside.append(1)
                if len(inside) > 1:
                    failures.append("two threads inside")
                inside.pop()
                lock.release()

        threads = [threading.Thread(target=use) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert failures == []


def _pool_context_for_ever(parent, ready):
    import tempfile

    tempfile.tempdir = parent
    pool_queues.context(multiprocessing.get_context("spawn"))
    ready.set()
    time.sleep(600)


def test_the_sweep_removes_a_dead_pools_folder_and_keeps_a_live_ones(tmp_path):
    """A pool killed leaves its lock folder (no atexit); the next pool on the node removes it -- judged by the lock
    the pool holds on its ``alive`` file, not by its pid (the review: a pool in another PID namespace sharing /tmp
    looked dead, its folder was removed, and its tasks were lost)."""
    pool, ready = spawned(_pool_context_for_ever, str(tmp_path))
    try:
        assert ready
        (folder,) = [p for p in tmp_path.iterdir() if p.name.startswith(pool_queues.PREFIX)]
        renamed = folder.with_name(f"{pool_queues.PREFIX}999999999-x")    # a pid that says "dead" here
        folder.rename(renamed)
        pool_queues._remove_stale(str(tmp_path))
        assert renamed.is_dir()                                          # its pool holds the lock: kept
        os.kill(pool.pid, signal.SIGKILL)
        pool.join(30)
        pool_queues._remove_stale(str(tmp_path))
        assert not renamed.exists()
    finally:
        if pool.is_alive():
            pool.kill()


def test_a_pool_queue_carries_items_between_processes(tmp_path):
    context = pool_queues.context(multiprocessing.get_context("spawn"))
    queue = context.Queue()
    assert isinstance(queue._rlock, pool_queues.FileLock) and isinstance(queue._wlock, pool_queues.FileLock)
    for item in range(50):
        queue.put(item)
    assert [queue.get(timeout=10) for _ in range(50)] == list(range(50))


TASK = """
def sleep(seconds):
    import os, time
    time.sleep(seconds)
    return os.getpid()
"""


def test_tasks_still_run_after_the_idle_workers_were_killed(tmp_path):
    """The real local site, two workers: both SIGKILLed while idle (one of them waiting for a task inside the
    queue's reader lock), then four tasks: the pool restarts its workers and they take the tasks."""
    pytest.importorskip("parsl", reason="Parsl not installed (pip install '.[platform]')")
    from platform_helpers import app_by_value, local_parsl
    from spibatch.parsl_shutdown import shutdown

    dfk = local_parsl(tmp_path, workers=2)
    try:
        app = app_by_value(TASK, "sleep")
        workers = {future.result(timeout=120) for future in [app(1.0), app(1.0)]}
        assert len(workers) == 2
        time.sleep(2.0)                          # both idle now, in the task queue's get()
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        time.sleep(1.0)
        began = time.monotonic()
        futures = [app(0.2) for _ in range(4)]
        done = [future.result(timeout=max(1.0, 60 - (time.monotonic() - began))) for future in futures]
        assert len(done) == 4 and not set(done) & workers   # run by the restarted workers
    finally:
        shutdown(dfk)


def test_a_lock_that_cannot_be_taken_for_another_reason_says_so(tmp_path):
    """The review: every error of lockf was read as "held by another process", so a lock on a filesystem without
    record locks (or a closed file) was waited for for ever; only EAGAIN / EACCES are that."""
    import errno

    lock = pool_queues.FileLock(str(tmp_path / "lock"))
    os.close(lock._fd)
    lock._fd = 2 ** 20 - 1    # a number no file holds: the lock's own close at its end must not close another's
    with pytest.raises(OSError) as caught:
        lock.acquire(True, 5.0)
    assert caught.value.errno == errno.EBADF
    assert lock._threads.acquire(False)                 # the thread lock was given back


def test_a_pools_folder_is_not_swept_while_it_is_being_made(tmp_path):
    """The review: a sweep between making a pool's folder and locking its ``alive`` file removed the new folder;
    it is made under a hidden name and renamed once locked."""
    making = tmp_path / f".{pool_queues.PREFIX}123-abc"
    making.mkdir()
    (making / pool_queues.ALIVE).write_text("")
    pool_queues._remove_stale(str(tmp_path))
    assert making.is_dir()
