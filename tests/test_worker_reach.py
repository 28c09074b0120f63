"""spibatch.worker_reach: Parsl's "Executor tasks failed due to: Error 1:" turned into a line a user can act on."""

import os
import time
from pathlib import Path
from types import SimpleNamespace

from spibatch.worker_reach import explain, snapshot, unreachable

REASON = ("Error 1:\n\tJob is marked as MISSING since the workers failed to register to the executor. Check the "
          "stdout/stderr logs in the submit_scripts directory for more debug information")
# the end of a pool's manager.log when no address answered: the traceback shows probe.py's source line too
LOG_TAIL = """  File "/usr/lib/python3/site-packages/parsl/executors/high_throughput/probe.py", line 65, in probe_addresses
    raise ConnectionError(f"No viable ZMQ url from: {addys}")
ConnectionError: No viable ZMQ url from: tcp://10.0.0.5:54001, tcp://192.168.1.2:54001
"""


class BadStateException(Exception):
    """Shaped as Parsl's (worker_reach matches the name: Parsl is not imported for a failure line)."""

    def __init__(self, label, reason):
        self.executor, self.reason = SimpleNamespace(label=label), reason
        super().__init__(f"Executor {label} failed due to: {reason}")


def _pool_log(run: Path, manager: str, text: str, executor: str = "tasks", age_s: float = 0.0) -> Path:
    log = run / "runinfo" / "workers" / executor / "block-0" / manager / "manager.log"
    log.parent.mkdir(parents=True)
    log.write_text("x" * 20000 + "\n" + text)       # the failure is at the end of a long log
    if age_s:
        os.utime(log, (time.time() - age_s, time.time() - age_s))
    return log


def test_the_addresses_the_pools_tried_and_the_key_to_set(tmp_path):
    _pool_log(tmp_path, "a1", LOG_TAIL)
    _pool_log(tmp_path, "b2", LOG_TAIL.replace("10.0.0.5", "10.0.0.6"))
    assert unreachable(tmp_path, "tasks") == ["tcp://10.0.0.5:54001", "tcp://10.0.0.6:54001", "tcp://192.168.1.2:54001"]
    line = explain(BadStateException("tasks", REASON), tmp_path, "kubernetes.interchange_address", "site.yaml")
    assert line.startswith("worker pools could not reach Parsl's interchange (they tried tcp://10.0.0.5:54001, "
                           "tcp://10.0.0.6:54001, tcp://192.168.1.2:54001): set kubernetes.interchange_address in "
                           "site.yaml"), line
    assert "{addys}" not in line and "\n" not in line
    # a site whose workers are offered every address of this machine (Slurm): no key to name
    assert "the workers' hosts must reach this machine at one of them" in explain(BadStateException("tasks", REASON),
                                                                                  tmp_path)


def test_only_this_attempt_s_logs_of_the_executor_that_failed(tmp_path):
    _pool_log(tmp_path, "old", LOG_TAIL, age_s=5)          # an earlier attempt's, seconds before this stage began
    before = snapshot(tmp_path)
    _pool_log(tmp_path, "mpi1", LOG_TAIL, executor="mpi")               # another executor's pools
    _pool_log(tmp_path, "new", "a pool that registered and ended normally\n")
    line = explain(BadStateException("tasks", REASON), tmp_path, "kubernetes.interchange_address", before=before)
    assert line == ("Parsl stopped using its workers (tasks): Job is marked as MISSING since the workers failed to "
                    "register to the executor. Check the stdout/stderr logs in the submit_scripts directory for more "
                    "debug information")
    assert "could not reach" in explain(BadStateException("mpi", REASON), tmp_path, before=before)


def test_several_block_failures_on_one_bounded_line(tmp_path):
    reason = "".join(f"Error {i}:\n\tEXIT CODE: 1\n\tSTDOUT: {'o' * 300}\n" for i in range(1, 4))
    line = explain(BadStateException("tasks", reason), tmp_path)
    assert "Error 2:" not in line and line.startswith("Parsl stopped using its workers (tasks): EXIT CODE: 1")
    assert len(line) < 600 and line.endswith(" ...") and "\n" not in line


def test_a_stage_failure_line_names_the_site_file_or_not_on_resume(tmp_path):
    """pipeline.failures_as_one_line: the pools' addresses from this stage's logs only, and on a resume (the site
    the run's own copy) "the site file" instead of that copy."""
    import pytest

    from spibatch.backends import load_site
    from spibatch.errors import StageFailed
    from spibatch.layout import RunLayout
    from spibatch.pipeline import failures_as_one_line

    run = RunLayout(tmp_path / "run")
    _pool_log(run.path, "old", LOG_TAIL.replace("10.0.0.5", "10.9.9.9"), age_s=5)      # the attempt before
    mine = tmp_path / "k8s.yaml"
    mine.write_text("name: k\nprovider: kubernetes\nkubernetes: {namespace: n, pvc: p, mount_path: /tmp}\n")
    copy = run.path / "site.yaml"
    copy.write_text(mine.read_text())
    for source, named in ((mine, f"in {mine}"), (copy, "in the site file")):
        site = load_site(source)
        with pytest.raises(StageFailed) as failed:
            with failures_as_one_line(run, "simulate", site):
                _pool_log(run.path, f"new-{source.stem}", LOG_TAIL)                 # this attempt's pool
                raise BadStateException("tasks", REASON)
        line = str(failed.value)
        assert f"set kubernetes.interchange_address {named} to" in line, line
        assert "10.0.0.5" in line and "10.9.9.9" not in line, line


def test_a_log_that_is_not_a_plain_file_is_not_read(tmp_path):
    log = _pool_log(tmp_path, "a1", "")
    log.unlink()
    log.symlink_to("/dev/zero")                                         # would be read for ever
    fifo = _pool_log(tmp_path, "b2", "")
    fifo.unlink()
    os.mkfifo(fifo)                                                     # would block for ever
    assert unreachable(tmp_path) == []
    assert explain(BadStateException("tasks", "OSError 13: denied"), tmp_path).endswith(": OSError 13: denied")


def test_other_failures_are_left_as_they_are(tmp_path):
    _pool_log(tmp_path, "a1", LOG_TAIL)
    assert explain(ValueError(REASON), tmp_path, "kubernetes.interchange_address") is None


class TooManyJobFailuresError(Exception):
    """Shaped as Parsl's: what a task sent to an executor already marked bad gets (its text is the block failures)."""


REFUSED = ("Error 1:\n\tFailed to start block 0: Cannot launch job parsl.tasks.block-0.1796612477.63: Could not "
           "read job ID from submit command standard output; recode=1, stdout=, stderr=sbatch: error: Batch job "
           "submission failed: Invalid feature specification\n")


def test_a_block_the_scheduler_refused_is_its_words_and_the_section_to_correct(tmp_path):
    line = explain(TooManyJobFailuresError(REFUSED), tmp_path, "", "/sites/cluster.yaml", section="slurm")
    assert line == ("the scheduler refused to start a worker block: sbatch: error: Batch job submission failed: "
                    "Invalid feature specification (what it judged: the slurm section of /sites/cluster.yaml)")
    two = REFUSED + REFUSED.replace("Error 1", "Error 2").replace("block 0", "block 1")
    assert explain(BadStateException("mpi", two), tmp_path, section="slurm") == line.replace("/sites/cluster.yaml",
                                                                                              "the site file")


def test_a_submission_the_scheduler_accepted_or_that_said_nothing_is_not_called_refused(tmp_path):
    """sbatch --parsable exits 0 with the id alone (Parsl cannot read it); the local provider fails without
    stderr: neither is a refusal to report in the scheduler's words."""
    accepted = REFUSED.replace("recode=1, stdout=, stderr=sbatch: error: Batch job submission failed: Invalid "
                               "feature specification", "recode=0, stdout=336, stderr=")
    silent = "Error 1:\n\tFailed to start block 0: Cannot launch job x: Channel failed; recode=None, stdout=None, " \
             "stderr=None\n"
    for reason in (accepted, silent):
        line = explain(TooManyJobFailuresError(reason), tmp_path, section="slurm")
        assert line.startswith("Parsl stopped using its workers") and "refused" not in line, line
        assert explain(TooManyJobFailuresError(reason), tmp_path, section="slurm", start_only=True) is None


def test_a_kubernetes_api_refusal_is_its_message_not_its_headers(tmp_path):
    body = ('{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods \\"parsl-tasks-'
            'block-0\\" is forbidden: exceeded quota: compute-quota, requested: limits.cpu=2, used: limits.cpu=8, '
            'limited: limits.cpu=8","reason":"Forbidden","code":403}')
    reason = ("Error 1:\n\tFailed to start block 0: (403)\nReason: Forbidden\nHTTP response headers: HTTPHeaderDict("
              + "{'Audit-Id': '5b0c3f1e', " * 20 + "})\nHTTP response body: " + body + "\n")
    line = explain(BadStateException("tasks", reason), tmp_path, "", "k8s.yaml", section="kubernetes")
    assert line.startswith("the scheduler refused to start a worker block: the Kubernetes API server said: pods "
                           '"parsl-tasks-block-0" is forbidden: exceeded quota: compute-quota, requested: '
                           "limits.cpu=2, used: limits.cpu=8, limited: limits.cpu=8 (what it judged: the kubernetes "
                           "section of k8s.yaml)"), line


def test_only_a_start_that_never_happened_is_told_when_asked_for(tmp_path):
    """The MPI job's block dying mid-run (its memory limit) is the job's failure, told with its output file: with
    start_only, explain says nothing of it; a refused block it still tells."""
    died = "Error 1:\n\tEXIT CODE: 137\n\tSTDERR: slurmstepd: error: Detected 1 oom_kill event\n"
    assert explain(BadStateException("mpi", died), tmp_path, section="slurm", start_only=True) is None
    assert explain(BadStateException("mpi", REFUSED), tmp_path, section="slurm", start_only=True).startswith(
        "the scheduler refused to start a worker block: sbatch: error:")
