"""Tasks lost with their worker are sent again once (spibatch.backends.parsl_common.retry_lost), on the real
local site: a worker process killed under its task (as the OOM killer, or a block cancelled at the moment it got
the task, leave it), and a task that fails by itself, which is not sent again."""

import time

import pytest

pytest.importorskip("parsl", reason="Parsl not installed (pip install '.[platform]')")

# Sent by value (the workers cannot import this test module): each try appends a line to a file, then the
# task kills its own worker process while the file has fewer than ``kills`` lines, or raises when asked.
TASK = """
def attempt(path, kills, fail):
    import os, signal
    with open(path, "a") as f:
        f.write("try\\n")
    with open(path) as f:
        tries = len(f.read().splitlines())
    if tries <= kills:
        os.kill(os.getpid(), signal.SIGKILL)
    if fail:
        raise ValueError("failed by itself")
    return tries
"""


@pytest.fixture(scope="module")
def local_dfk(tmp_path_factory):
    from spibatch.backends import load_site, provider_for
    from spibatch.parsl_shutdown import load, shutdown

    root = tmp_path_factory.mktemp("retry")
    site = root / "site.yaml"
    site.write_text("name: t\nprovider: local\nworkers: 1\n")
    run_dir = root / "run"
    run_dir.mkdir()
    dfk = load(provider_for(load_site(site)).parsl_config(run_dir))
    yield dfk
    shutdown(dfk)


def submit(tmp_path, name, kills, fail=False):
    from parsl import python_app

    from spibatch.backends import TASKS_LABEL

    namespace = {"__name__": "__main__"}
    exec(TASK, namespace)
    tries = tmp_path / name
    return tries, python_app(namespace["attempt"], executors=[TASKS_LABEL])(str(tries), kills, fail)


def lines(path):
    return path.read_text().splitlines()


def test_a_task_whose_worker_is_killed_runs_again_and_returns(local_dfk, tmp_path, caplog):
    tries, future = submit(tmp_path, "once", kills=1)
    with caplog.at_level("WARNING", logger="spibatch"):
        assert future.result(timeout=90) == 2
    assert len(lines(tries)) == 2
    assert any("was lost with its worker; sending it again (try 2)" in r.getMessage() for r in caplog.records)


def test_a_task_lost_twice_fails_as_lost_after_two_tries(local_dfk, tmp_path):
    from parsl.executors.high_throughput.errors import WorkerLost

    tries, future = submit(tmp_path, "always", kills=5)
    with pytest.raises(WorkerLost):
        future.result(timeout=90)
    time.sleep(1)
    assert len(lines(tries)) == 2


def test_a_task_that_fails_by_itself_is_not_sent_again(local_dfk, tmp_path):
    tries, future = submit(tmp_path, "raises", kills=0, fail=True)
    with pytest.raises(ValueError, match="failed by itself"):
        future.result(timeout=90)
    time.sleep(1)
    assert len(lines(tries)) == 1


def test_the_budget_a_pool_loss_three_times_a_worker_loss_once():
    """retry_lost's costs against Parsl's retry budget, as Parsl adds them up (dflow: fail_count, then fail_cost
    += cost; tried again while fail_cost <= retries): sequences of losses, and how many tries each gets."""
    from parsl.executors.high_throughput.errors import ManagerLost, WorkerLost

    from spibatch.backends.parsl_common import LOST_BUDGET, retry_lost

    def tries(losses: str) -> int:
        record = {"fail_count": 0, "fail_cost": 0.0, "id": 0, "func_name": "t"}
        for n, kind in enumerate(losses, start=1):
            record["fail_count"] += 1
            record["fail_cost"] += retry_lost(ManagerLost(b"m", "n2") if kind == "M" else WorkerLost(1, "n1"), record)
            if record["fail_cost"] > LOST_BUDGET:
                return n                 # this try was the last
        return len(losses) + 1           # another try follows the losses given

    assert tries("MMMM") == 4            # a pool lost three times: a fourth try, then no more
    assert tries("MMM") == 4
    assert tries("WW") == 2              # a worker lost: tried again once
    assert tries("W") == 2 and tries("WM") == 3 and tries("MW") == 3
    assert tries("MMW") == 3             # after two pool losses a worker loss ends it
    record = {"fail_count": 1, "fail_cost": 0.0}
    assert retry_lost(ValueError("by itself"), record) > LOST_BUDGET     # its own failure: not tried again
