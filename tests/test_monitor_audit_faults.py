"""The monitor and `spibatch report` on what an audit found (2026-12-06): names and commands that are not UTF-8, a
metrics file over the read limit, a report written into a run another process owns, a run removed while it is
served, and the run list's summaries kept between requests (6-9 s at 2000 runs before)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from monitor_runs import RunWriter, local_client


def _age(folder, seconds: float = 60.0) -> None:
    """Every file and folder under ``folder`` last changed ``seconds`` ago (summaries of fresh files are not kept)."""
    past = time.time() - seconds
    for base, dirs, files in os.walk(folder):
        for name in dirs + files:
            os.utime(os.path.join(base, name), (past, past), follow_symlinks=False)
    os.utime(folder, (past, past))


def test_names_and_commands_that_are_not_utf8_are_listed(tmp_path):
    """A run folder named with a byte that is not UTF-8, and a provenance whose command holds one (json.dumps
    writes it as a lone surrogate): the run list answered 500 and hid every run."""
    root = tmp_path / "runs"
    RunWriter(root / "healthy", iterations=2).complete()
    RunWriter(root / "victim", iterations=2).complete()
    os.rename(root / "victim", os.fsencode(root) + b"/victim-\xff")
    RunWriter(root / "other", iterations=2).complete()
    record = json.loads((root / "other" / "provenance.json").read_text())
    record["command"] = ["spibatch", "demo", "--out", "runs/\udcff"]
    (root / "other" / "provenance.json").write_text(json.dumps(record))
    answer = local_client(root).get("/api/runs")
    assert answer.status_code == 200
    runs = {r["run"]: r for r in answer.json()["runs"]}
    assert set(runs) == {"healthy", "victim-\ufffd", "other"}
    assert runs["other"]["command"] == "spibatch demo --out runs/\ufffd"
    done = subprocess.run([sys.executable, "-m", "spibatch", "report", os.fsencode(root) + b"/victim-\xff"],
                          capture_output=True)
    assert done.returncode == 0, done.stderr


def test_a_metrics_file_over_the_limit_keeps_its_run_listed(tmp_path):
    """Over 64 MiB the run vanished from the list without a word, and `spibatch report` ended in a traceback."""
    root = tmp_path / "runs"
    RunWriter(root / "ok", iterations=2).complete()
    writer = RunWriter(root / "victim", iterations=3)
    writer.emc(1)
    writer.emc(2)
    metrics = root / "victim" / "emc" / "metrics.jsonl"
    line = metrics.read_text().splitlines()[-1] + "\n"
    with open(metrics, "a") as f:
        f.write(line * ((65 << 20) // len(line)))
    runs = {r["run"]: r for r in local_client(root).get("/api/runs").json()["runs"]}
    assert "larger than 64 MiB" in runs["victim"]["error"] and runs["victim"]["emc_iterations_done"] == 2
    done = subprocess.run([sys.executable, "-m", "spibatch", "report", str(root / "victim")], capture_output=True,
                          text=True)
    assert done.returncode == 0 and (root / "victim" / "report.html").exists(), done.stderr


def test_report_refuses_a_run_another_process_owns(tmp_path):
    """`spibatch report` wrote report.html into a run whose lock a live process held (the one-writer rule); a killed
    owner's stale lock does not stop it, and a report leaves no lock behind."""
    run = tmp_path / "run"
    RunWriter(run, iterations=2).complete()
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": owner.pid, "host": socket.gethostname(), "started": "2026-12-06T13:00:00Z",
                "command": ["spibatch", "resume", str(run)], "token": "t"}
        (run / "lock").write_text(json.dumps(lock))
        done = subprocess.run([sys.executable, "-m", "spibatch", "report", str(run)], capture_output=True, text=True)
        assert done.returncode == 2 and f"another process writes into this run folder (pid {owner.pid}" in done.stderr
        assert not (run / "report.html").exists()
    finally:
        owner.kill()
        owner.wait()
    done = subprocess.run([sys.executable, "-m", "spibatch", "report", str(run)], capture_output=True, text=True)
    assert done.returncode == 0 and (run / "report.html").exists(), done.stderr      # the stale lock: written
    (run / "lock").unlink()
    done = subprocess.run([sys.executable, "-m", "spibatch", "report", str(run)], capture_output=True, text=True)
    assert done.returncode == 0 and not (run / "lock").exists()


def test_a_run_removed_while_it_is_read_is_404_not_500(tmp_path, monkeypatch):
    from spibatch.monitor.rundata import RunData

    root = tmp_path / "runs"
    RunWriter(root / "r", iterations=2).complete()

    def gone(self):
        raise FileNotFoundError(2, "No such file or directory", str(root / "r" / "emc"))

    monkeypatch.setattr(RunData, "emc_series", gone)
    answer = local_client(root).get("/api/emc", params={"run": "r"})
    assert answer.status_code == 404 and "emc is no longer there" in answer.json()["error"]


def test_kept_summaries_follow_every_change(tmp_path):
    """A run's summary is reused while nothing it was read from changed: an appended iteration, a finished status
    (provenance replaced), a new run and a removed one all show at the next request."""
    import shutil

    root = tmp_path / "runs"
    writer = RunWriter(root / "a", iterations=4)
    writer.emc(1)
    RunWriter(root / "b", iterations=2).complete()
    _age(root)
    client = local_client(root)
    first = {r["run"]: r for r in client.get("/api/runs").json()["runs"]}
    assert first["a"]["emc_iterations_done"] == 1
    assert {r["run"]: r for r in client.get("/api/runs").json()["runs"]} == first     # kept: the same answer
    writer.emc(2)                                          # appended in place, and output_002.h5 added
    writer.provenance("failed")
    RunWriter(root / "c", iterations=2).complete()
    shutil.rmtree(root / "b")
    now = {r["run"]: r for r in client.get("/api/runs").json()["runs"]}
    assert set(now) == {"a", "c"} and now["a"]["emc_iterations_done"] == 2 and now["a"]["status"] == "failed"
