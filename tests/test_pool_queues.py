"""The worker pool's queues (spibatch.parsl_lean.pool_queues): a worker killed while it waits for a task no longer
leaves the pool's other workers unable to take one (measured before: 3 of 3 tries hung, the pool connected)."""

import multiprocessing
import os
import signal
import time

import pytest

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
    ready = context.Event()
    holder = context.Process(target=_hold_for_ever, args=(lock, ready), daemon=True)
    holder.start()
    try:
        assert ready.wait(60)
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
    from parsl import python_app

    from spibatch.backends import TASKS_LABEL, load_site, provider_for
    from spibatch.parsl_shutdown import load, shutdown

    site = tmp_path / "site.yaml"
    site.write_text("name: t\nprovider: local\nworkers: 2\n")
    (tmp_path / "run").mkdir()
    dfk = load(provider_for(load_site(site)).parsl_config(tmp_path / "run"))
    try:
        namespace = {"__name__": "__main__"}    # sent by value: the workers cannot import this test module
        exec(TASK, namespace)
        app = python_app(namespace["sleep"], executors=[TASKS_LABEL])
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
