"""/api/run tells where a run is: its stages (done, running, waiting) and phasing's progress before phasing.h5."""

from __future__ import annotations

import pytest

pytest.importorskip("starlette", reason="the monitor needs starlette (pip install '.[monitor]' or '.[test]')")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx (in the [test] extra)")

from monitor_runs import RunWriter, local_client  # noqa: E402


def states(client, run: str = "pipe") -> dict[str, str]:
    return {s["stage"]: s["state"] for s in client.get("/api/run", params={"run": run}).json()["stages"]}


def test_a_pipeline_run_stage_by_stage(tmp_path):
    run = RunWriter(tmp_path / "pipe", iterations=3, starts=4, pipeline=True)
    client = local_client(tmp_path)
    assert states(client) == {"simulate": "running", "emc": "waiting", "phase": "waiting", "validate": "waiting"}
    run.stage_done("simulate", seconds=4.5)
    run.stage_log("emc")
    run.emc(1)
    summary = client.get("/api/run", params={"run": "pipe"}).json()
    assert [(s["stage"], s["state"]) for s in summary["stages"]] == [
        ("simulate", "done"), ("emc", "running"), ("phase", "waiting"), ("validate", "waiting")]
    simulate = summary["stages"][0]
    assert simulate["seconds"] == 4.5 and simulate["finished"] == "2026-01-01T00:02:00Z" and simulate["last_log"] > 0
    assert summary["phasing"] == {"state": "waiting", "starts_done": 0, "starts_planned": 4, "merged": False}

    # phasing on workers: start files appear one by one, long before phase/metrics.jsonl and phasing.h5
    for i in (2, 3):
        run.emc(i)
    run.stage_done("emc")
    run.stage_log("phase")
    before = client.get("/api/fingerprint", params={"run": "pipe"}).json()["fingerprint"]
    run.start_done(0)
    run.start_done(2)
    summary = client.get("/api/run", params={"run": "pipe"}).json()
    assert summary["fingerprint"] != before                       # a new start refreshes the page
    assert states(client)["phase"] == "running"
    assert summary["phasing"] == {"state": "running", "starts_done": 2, "starts_planned": 4, "merged": False}
    assert summary["has"]["phase"] is False                       # nothing to plot yet, but the count shows
    run.start_done(1)
    run.start_done(3)
    run.phasing()
    run.stage_done("phase")
    summary = client.get("/api/run", params={"run": "pipe"}).json()
    assert summary["phasing"] == {"state": "done", "starts_done": 4, "starts_planned": 4, "merged": True}
    assert states(client)["validate"] == "running"
    run.fsc()
    run.stage_done("validate")
    run.provenance("completed")
    assert set(states(client).values()) == {"done"}


def test_phasing_in_one_process_counts_its_metrics_lines(tmp_path):
    """`spibatch phase` (no workers) writes no start files: its metrics.jsonl grows one line per start."""
    run = RunWriter(tmp_path / "ph", starts=5, command=["spibatch", "phase", "pipeline.yaml", "--truth", "t.h5"])
    run.stage_log("phase")
    run.phasing(starts=3, merge=False)
    summary = local_client(tmp_path).get("/api/run", params={"run": "ph"}).json()
    assert [(s["stage"], s["state"]) for s in summary["stages"]] == [("phase", "running"), ("validate", "waiting")]
    assert summary["phasing"] == {"state": "running", "starts_done": 3, "starts_planned": 5, "merged": False}


def test_an_ended_run_says_which_stage_stopped(tmp_path):
    run = RunWriter(tmp_path / "pipe", pipeline=True)
    run.stage_done("simulate")
    run.stage_done("emc")
    run.stage_log("phase")
    run.start_done(0)
    run.provenance("failed")
    client = local_client(tmp_path)
    assert states(client) == {"simulate": "done", "emc": "done", "phase": "failed", "validate": "not run"}
    run.provenance("interrupted")
    assert states(client)["phase"] == "interrupted"
    run.provenance("completed")                                    # `spibatch run --until emc`, say
    assert states(client)["phase"] == "stopped"


def test_one_stage_runs_and_bare_folders(tmp_path):
    emc = RunWriter(tmp_path / "emc", command=["/usr/bin/spibatch", "emc", "pipeline.yaml"])
    emc.stage_log("emc")
    emc.emc(1)
    bare = RunWriter(tmp_path / "bare")                             # no stages/ folder: nothing to list
    bare.emc(1)
    client = local_client(tmp_path)
    assert states(client, "emc") == {"emc": "running"}
    summary = client.get("/api/run", params={"run": "bare"}).json()
    assert summary["stages"] == [] and summary["phasing"] is None
