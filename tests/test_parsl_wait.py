"""Waiting for tasks' results (spibatch.parsl_wait): in order, a word when none ends for long, and one line when
Parsl's interchange died -- the driver waited for ever before (the fault audit: > 10 minutes, nothing logged)."""

import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from platform_helpers import app_by_value, local_parsl
from spibatch import parsl_wait


def test_results_come_in_order_and_a_stall_is_said_once(caplog):
    release = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(lambda: (release.wait(5), "slow")[1]), pool.submit(lambda: "fast")]
        threading.Timer(0.6, release.set).start()
        with caplog.at_level(logging.WARNING, logger="spibatch"):
            assert parsl_wait.results(futures, "shard tasks", poll_s=0.1, stall_s=0.25) == ["slow", "fast"]
    said = [r.getMessage() for r in caplog.records if "has ended for" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("no shard task has ended") and "1 of 2 running" in said[0]


SLEEP = """
def sleep(seconds):
    import time
    time.sleep(seconds)
"""


def test_a_dead_interchange_ends_the_wait_in_one_line(tmp_path):
    """The real local site: a task sleeping 60 s, its interchange killed -- the wait ends within seconds."""
    pytest.importorskip("parsl", reason="Parsl not installed (pip install '.[platform]')")
    from spibatch.backends import TASKS_LABEL
    from spibatch.parsl_shutdown import shutdown

    dfk = local_parsl(tmp_path)
    try:
        future = app_by_value(SLEEP, "sleep")(60)
        time.sleep(1.0)
        dfk.executors[TASKS_LABEL].interchange_proc.kill()
        began = time.monotonic()
        with pytest.raises(parsl_wait.PlatformLost, match=r"interchange \(tasks\) died while 1 of 1 shard tasks"):
            parsl_wait.results([future], "shard tasks", poll_s=0.5)
        assert time.monotonic() - began < 20
    finally:
        shutdown(dfk)


def test_a_failed_task_is_said_at_once_and_other_executors_do_not_count():
    """The review: a task that failed beside a slow one was raised only when the slow one ended (the old
    `[f.result() ...]` said it at once); and a dead interchange of another executor than the futures' own
    (Slurm's idle `tasks` beside a running `mpi` job) ended the wait."""
    release = threading.Event()

    def fail():
        raise ValueError("shard 7 failed")

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(lambda: (release.wait(10), "slow")[1]), pool.submit(fail)]
        with pytest.raises(ValueError, match="shard 7 failed"):
            parsl_wait.results(futures, poll_s=0.1)
        assert not futures[0].done()          # said before the slow one ended (it waits for `release`)
        release.set()
    assert parsl_wait.dead_interchanges(futures) == []          # not Parsl's: nothing to ask


def test_a_stopped_worker_pool_ends_the_wait_in_one_line(tmp_path):
    """The real local site, its heartbeat shortened to 6 s: a task sleeping 60 s, its worker pool stopped
    (SIGSTOP) -- Parsl drops the pool after the heartbeat and, its block still running to the provider, never
    replaces it: the driver waited for ever (a warning after 30 min).  Now one line once no pool has been connected
    for lost_s seconds."""
    pytest.importorskip("parsl", reason="Parsl not installed (pip install '.[platform]')")
    import os
    import signal

    import psutil
    from spibatch.backends import TASKS_LABEL
    from spibatch.parsl_shutdown import shutdown

    dfk = local_parsl(tmp_path, heartbeat=(1, 6))
    stopped = []
    try:
        future = app_by_value(SLEEP, "sleep")(60)
        began = time.monotonic()
        while not dfk.executors[TASKS_LABEL].connected_managers() and time.monotonic() - began < 60:
            time.sleep(0.5)
        time.sleep(1.0)                   # the task on its worker
        pools = []                        # this test's pools only: their log folder is in its run folder
        for process in psutil.process_iter(["cmdline"]):
            line = " ".join(process.info["cmdline"] or [])
            if "process_worker_pool" in line and str(tmp_path) in line:
                pools.append(process)
        assert pools, "no worker pool of this test's Parsl found"
        for pool in pools:
            stopped += [pool, *pool.children(recursive=True)]
        for process in stopped:
            os.kill(process.pid, signal.SIGSTOP)
        began = time.monotonic()
        with pytest.raises(parsl_wait.PlatformLost, match=r"no Parsl worker pool has been connected to the "
                           r"interchange \(tasks\) for \d+ s while 1 of 1 shard tasks wait"):
            parsl_wait.results([future], "shard tasks", poll_s=0.5, lost_s=4)
        assert time.monotonic() - began < 40      # the heartbeat (6 s) + lost_s (4 s) + polls
    finally:
        for process in stopped:
            with contextlib.suppress(psutil.Error, OSError):
                os.kill(process.pid, signal.SIGKILL)
        shutdown(dfk)


def test_a_stopped_interchange_ends_the_wait_and_the_shutdown_in_one_line(tmp_path, monkeypatch):
    """The real local site, a task sleeping 60 s, its interchange stopped (SIGSTOP: a frozen or hung process, not a
    dead one): Parsl's command channel waits for its answer without a timeout, and the driver waited for ever
    (measured: still waiting after 95 s with lost_s 4).  Now one line once a question has gone unanswered for
    ask_s, and Parsl's shutdown does not wait its 30-s deadline for the clean-up that asks it too."""
    pytest.importorskip("parsl", reason="Parsl not installed (pip install '.[platform]')")
    import os
    import signal

    from spibatch.backends import TASKS_LABEL
    from spibatch.parsl_shutdown import shutdown

    monkeypatch.setattr(parsl_wait, "SILENT_S", 4.0)      # production: 10 s, under ASK_S (120 s)
    dfk = local_parsl(tmp_path)
    interchange = dfk.executors[TASKS_LABEL].interchange_proc
    try:
        future = app_by_value(SLEEP, "sleep")(60)
        began = time.monotonic()
        while not dfk.executors[TASKS_LABEL].connected_managers() and time.monotonic() - began < 60:
            time.sleep(0.5)
        os.kill(interchange.pid, signal.SIGSTOP)
        began = time.monotonic()
        with pytest.raises(parsl_wait.PlatformLost, match=r"Parsl's interchange \(tasks\) has not answered for \d+ s "
                           r"while 1 of 1 shard tasks wait: it is stopped or hung"):
            parsl_wait.results([future], "shard tasks", poll_s=0.5, lost_s=4, ask_s=5)
        assert time.monotonic() - began < 30
        began = time.monotonic()
        shutdown(dfk)
        assert time.monotonic() - began < 15 and interchange.wait(timeout=10) is not None   # killed, not waited for
    finally:
        if interchange.poll() is None:
            interchange.kill()
            shutdown(dfk)


def test_a_slow_answer_that_came_is_not_silence(monkeypatch):
    """The review: a question answered after more than ANSWER_S stayed on record, and the next shutdown took the
    healthy interchange for a silent one (killed it, skipped Parsl's clean-up).  Only a question still open counts."""
    from types import SimpleNamespace

    monkeypatch.setattr(parsl_wait, "SILENT_S", 0.2)
    release = threading.Event()

    class Executor:
        status_facade = {}

        def connected_managers(self):
            release.wait(30)
            return [{"active": True}]

        def connected_blocks(self):
            return ["0"]

    executor = Executor()
    future = SimpleNamespace(task_record={"executor": "slow"})
    import unittest.mock

    with unittest.mock.patch.object(parsl_wait, "_executors_of", return_value={"slow": executor}):
        monkeypatch.setattr(parsl_wait, "ANSWER_S", 0.3)
        assert parsl_wait.without_pools([future]) == []              # not answered within a poll: no verdict
        assert parsl_wait.silent(executor) and "slow" in parsl_wait.unanswered([future])
        release.set()
        time.sleep(0.3)
        assert not parsl_wait.silent(executor) and parsl_wait.unanswered([future]) == {}   # it answered


def test_a_pool_that_is_connected_or_queued_is_not_lost():
    """A pending block (Slurm's queue) or a connected pool is waited for: only executors with neither count."""
    from types import SimpleNamespace

    class Executor:
        def __init__(self, managers, states, ever=None):
            self._managers = managers
            self.status_facade = {str(k): SimpleNamespace(state=SimpleNamespace(name=s)) for k, s in enumerate(states)}
            self._ever = [str(k) for k in range(len(states))] if ever is None else ever

        def connected_managers(self):
            return self._managers

        def connected_blocks(self):
            return self._ever

    cases = {"queued": Executor([], ["PENDING"]), "connected": Executor([{"active": True}], ["RUNNING"]),
             "held": Executor([], ["HELD", "FAILED"]), "lost": Executor([], ["RUNNING"]), "none": Executor([], []),
             "starting": Executor([], ["SCALED_IN", "RUNNING"], ever=["0"])}     # block 1's pool not yet up
    import unittest.mock

    with unittest.mock.patch.object(parsl_wait, "_executors_of", return_value=cases):
        assert parsl_wait.without_pools([object()]) == ["lost", "none"]
