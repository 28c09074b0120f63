"""spibatch.worker_reach: Parsl's "Executor tasks failed due to: Error 1:" turned into a line a user can act on."""

from pathlib import Path

from spibatch.worker_reach import explain, unreachable

PARSL = ("Executor tasks failed due to: Error 1:\n\tJob is marked as MISSING since the workers failed to register "
         "to the executor. Check the stdout/stderr logs in the submit_scripts directory for more debug information")
# the end of a pool's manager.log when no address answered: the traceback shows probe.py's source line too
LOG_TAIL = """  File "/usr/lib/python3/site-packages/parsl/executors/high_throughput/probe.py", line 65, in probe_addresses
    raise ConnectionError(f"No viable ZMQ url from: {addys}")
ConnectionError: No viable ZMQ url from: tcp://10.0.0.5:54001, tcp://192.168.1.2:54001
"""


class BadStateException(Exception):
    """Named as Parsl's (worker_reach matches the name: Parsl is not imported for a failure line)."""


def _pool_log(run: Path, manager: str, text: str) -> None:
    log = run / "runinfo" / "workers" / "tasks" / "block-0" / manager / "manager.log"
    log.parent.mkdir(parents=True)
    log.write_text("x" * 20000 + "\n" + text)       # the failure is at the end of a long log


def test_the_addresses_the_pools_tried_and_the_key_to_set(tmp_path):
    _pool_log(tmp_path, "a1", LOG_TAIL)
    _pool_log(tmp_path, "b2", LOG_TAIL.replace("10.0.0.5", "10.0.0.6"))
    assert unreachable(tmp_path) == {"tcp://10.0.0.5:54001", "tcp://10.0.0.6:54001", "tcp://192.168.1.2:54001"}
    line = explain(BadStateException(PARSL), tmp_path, "kubernetes.interchange_address", "site.yaml")
    assert line.startswith("no worker pool could reach Parsl's interchange (they tried tcp://10.0.0.5:54001, "
                           "tcp://10.0.0.6:54001, tcp://192.168.1.2:54001): set kubernetes.interchange_address in "
                           "site.yaml"), line
    assert "{addys}" not in line and "\n" not in line
    # a site whose workers are offered every address of this machine (Slurm): no key to name
    assert "the workers' hosts must reach this machine at one of them" in explain(BadStateException(PARSL), tmp_path)


def test_without_pool_logs_parsl_s_whole_message_on_one_line(tmp_path):
    _pool_log(tmp_path, "a1", "a pool that registered and ended normally\n")
    line = explain(BadStateException(PARSL), tmp_path, "kubernetes.interchange_address")
    assert line == ("Parsl stopped using its workers: Executor tasks failed due to: Job is marked as MISSING since "
                    "the workers failed to register to the executor. Check the stdout/stderr logs in the "
                    "submit_scripts directory for more debug information")


def test_other_failures_are_left_as_they_are(tmp_path):
    _pool_log(tmp_path, "a1", LOG_TAIL)
    assert explain(ValueError(PARSL), tmp_path, "kubernetes.interchange_address") is None
