"""The monitor's JSON API through Starlette's TestClient: every endpoint, runs in progress, traversal attempts."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

pytest.importorskip("starlette", reason="the monitor needs starlette (pip install '.[monitor]' or '.[test]')")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx (in the [test] extra)")

from monitor_runs import EDGE, FRAMES, RunWriter, local_client  # noqa: E402
from spibatch.io.atomic import write_text  # noqa: E402


@pytest.fixture
def runs(tmp_path):
    """runs/ holding a finished run ``done`` and a run ``live`` two iterations into EMC; a secret outside."""
    root = tmp_path / "runs"
    RunWriter(root / "done").complete()
    live = RunWriter(root / "live", iterations=5)
    live.emc(1)
    live.emc(2)
    secret = tmp_path / "secret"
    RunWriter(secret).complete()
    return {"root": root, "live": live, "secret": secret}


@pytest.fixture
def client(runs):
    return local_client(runs["root"])


def test_runs_lists_every_run_with_its_state(client, runs):
    body = client.get("/api/runs").json()
    by_name = {r["run"]: r for r in body["runs"]}
    assert set(by_name) == {"done", "live"}
    assert body["root"] == str(runs["root"].resolve())
    assert by_name["done"]["status"] == "completed" and by_name["live"]["status"] == "running"
    assert by_name["done"]["has"] == {"emc": True, "phase": True, "phase_result": True, "fsc": True,
                                     "follow": False}
    assert by_name["live"]["has"] == {"emc": True, "phase": False, "phase_result": False, "fsc": False,
                                      "follow": False}
    assert (by_name["live"]["emc_iterations_done"], by_name["live"]["emc_iterations_planned"]) == (2, 5)


def test_root_that_is_itself_a_run_is_named_dot(runs):
    client = local_client(runs["root"] / "done")
    assert [r["run"] for r in client.get("/api/runs").json()["runs"]] == ["."]
    assert client.get("/api/emc", params={"run": "."}).json()["iteration"] == [1, 2, 3, 4]


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "static/plotly.min.js" in page.text and "static/app.js" in page.text
    js = client.get("/static/plotly.min.js")
    assert js.status_code == 200 and "plotly.js v" in js.text[:200]
    assert client.get("/static/app.js").status_code == 200


def test_emc_series_with_change_markers(client):
    series = client.get("/api/emc", params={"run": "done"}).json()
    assert series["iteration"] == [1, 2, 3, 4]
    assert series["log_likelihood"] == pytest.approx([-3000.0 / i for i in range(1, 5)])
    assert series["changes"] == [{"iteration": 3, "label": "β ×2"}]
    assert series["outputs"] == [1, 2, 3, 4] and series["planned"] == 4


def test_a_mean_beta_that_drifts_as_frames_join_is_no_change_marker(tmp_path, monkeypatch):
    """A live run's frames join with betas of their own: the mean moved by < 1 % an iteration and every
    iteration was marked "β ×1" (the labels piled up into unreadable text); a schedule's doubling still is."""
    import monitor_runs

    writer = RunWriter(tmp_path / "runs" / "live", iterations=4)
    for iteration in (1, 2, 3, 4):
        monkeypatch.setattr(monitor_runs, "BETA_DOUBLES_AT", 4)   # x 1.004 each iteration, then x 2 at 4
        writer.emc(iteration)
        writer.history[-1]["beta_mean"] *= 1.004 ** iteration
        monitor_runs.records.write_logs(writer.emc_dir, "spibatch EMC test\n\n" + "\t".join(
            monitor_runs.records.LOG_COLUMNS) + "\n", writer.history)
    series = local_client(tmp_path / "runs").get("/api/emc", params={"run": "live"}).json()
    assert [c["iteration"] for c in series["changes"]] == [4] and series["changes"][0]["label"] == "β ×2.01"


def test_emc_frames_histogram_counts_every_frame(client):
    frames = client.get("/api/emc/frames", params={"run": "done", "iteration": 2}).json()
    assert frames["iteration"] == 2 and frames["num_frames"] == FRAMES
    assert sum(frames["probability"]["counts"]) == FRAMES
    assert frames["probability"]["edges"][0] == 0 and frames["probability"]["edges"][-1] == 1


def test_emc_slices_are_central_log_planes_of_the_file(client, runs):
    body = client.get("/api/emc/slices", params={"run": "done", "iteration": 3}).json()
    assert body["iteration"] == 3 and body["iterations"] == [1, 2, 3, 4]
    assert [s["title"] for s in body["slices"]] == ["q_z = 0", "q_y = 0", "q_x = 0"]
    with h5py.File(runs["root"] / "done" / "emc" / "output_003.h5") as f:
        plane = f["intensity"][:, :, EDGE // 2]          # q_z = 0: indexed [q_x, q_y]
    z = body["slices"][0]["z"]                             # rows q_y, columns q_x
    assert len(z) == EDGE and len(z[0]) == EDGE
    assert z[EDGE // 2 + 1][EDGE // 2 + 2] == pytest.approx(np.log10(plane[EDGE // 2 + 2, EDGE // 2 + 1]), abs=1e-3)
    assert z[0][0] is None                                 # unmeasured corner (0): no colour, not log(0)
    assert body["slices"][0]["x_label"] == "q_x (1/nm)"
    assert body["slices"][0]["x"][EDGE // 2] == 0 and body["slices"][0]["x"][EDGE // 2 + 1] == pytest.approx(0.02)
    latest = client.get("/api/emc/slices", params={"run": "done"}).json()
    assert latest["iteration"] == 4


def test_bad_or_missing_iteration(client):
    assert client.get("/api/emc/slices", params={"run": "done", "iteration": "abc"}).status_code == 400
    missing = client.get("/api/emc/slices", params={"run": "done", "iteration": 99})
    assert missing.status_code == 404 and "iteration 99" in missing.json()["error"]


def test_phase_fsc_and_texts(client):
    phase = client.get("/api/phase", params={"run": "done"}).json()
    assert [s["seed"] for s in phase["starts"]] == [1, 2, 3] and phase["kept_seeds"] == [1, 2]
    assert phase["prtf"]["prtf"][0] is None and len(phase["prtf"]["frequency_per_m"]) == EDGE // 2 + 1
    slices = client.get("/api/phase/slices", params={"run": "done"}).json()
    assert slices["shown"] < EDGE and "support" in slices["slices"][0]   # cropped to the support + margin
    fsc = client.get("/api/fsc", params={"run": "done"}).json()
    assert fsc["frequency_unit"] == "1/m" and fsc["cc"] == 0.8
    assert fsc["frequency"][1] == pytest.approx(2.0e7)    # one shell = one Fourier voxel
    texts = client.get("/api/texts", params={"run": "done"}).json()
    assert "iterations: 4" in texts["config"] and "completed" in texts["provenance"]
    assert "run directory" in texts["log"] and "log-likelihood" in texts["emc_log"]


def test_fsc_file_without_frequency_still_gets_its_axis(client, runs):
    """fsc_vs_truth.json written before it carried "frequency": the axis comes from a crossing."""
    path = runs["root"] / "done" / "validate" / "fsc_vs_truth.json"
    data = json.loads(path.read_text())
    del data["frequency"]
    path.write_text(json.dumps(data))
    fsc = client.get("/api/fsc", params={"run": "done"}).json()
    assert fsc["frequency"][1] == pytest.approx(2.0e7)

def test_run_in_progress_has_no_phasing_yet(client):
    assert client.get("/api/phase", params={"run": "live"}).status_code == 404
    assert client.get("/api/phase/slices", params={"run": "live"}).status_code == 404
    assert client.get("/api/fsc", params={"run": "live"}).status_code == 404
    assert client.get("/api/emc", params={"run": "live"}).json()["iteration"] == [1, 2]


def test_phasing_starts_show_before_the_merge(client, runs):
    runs["live"].phasing(starts=2, merge=False)
    phase = client.get("/api/phase", params={"run": "live"}).json()
    assert len(phase["starts"]) == 2 and phase["kept_seeds"] is None and phase["prtf"] is None
    assert client.get("/api/phase/slices", params={"run": "live"}).status_code == 404


def test_files_being_written(client, runs):
    emc = runs["root"] / "live" / "emc"
    (emc / ".output_003.h5.abc123.part").write_bytes(b"\x89HDF half")          # an atomic write in progress
    with open(emc / "metrics.jsonl", "a") as fh:                                 # a line cut short
        fh.write('{"iteration": 3, "log_lik')
    series = client.get("/api/emc", params={"run": "live"}).json()
    assert series["iteration"] == [1, 2] and series["outputs"] == [1, 2]
    (emc / "output_003.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)      # a non-atomic writer, mid-file
    busy = client.get("/api/emc/slices", params={"run": "live", "iteration": 3})
    assert busy.status_code == 503 and busy.headers["retry-after"] == "2" and "output_003.h5" in busy.json()["error"]
    assert client.get("/api/emc/slices", params={"run": "live", "iteration": 2}).status_code == 200


def test_fingerprint_changes_with_a_new_iteration(client, runs):
    before = client.get("/api/fingerprint", params={"run": "live"}).json()["fingerprint"]
    assert client.get("/api/fingerprint", params={"run": "live"}).json()["fingerprint"] == before
    runs["live"].emc(3)
    after = client.get("/api/run", params={"run": "live"}).json()
    assert after["fingerprint"] != before and after["emc_iterations_done"] == 3


@pytest.mark.parametrize("run", ["../secret", "..", "live/../../secret", "/etc", "%2e%2e/secret", "live/..%2fsecret"])
def test_traversal_is_refused(client, runs, run):
    for endpoint in ("/api/emc", "/api/texts", "/api/run"):
        response = client.get(f"{endpoint}?run={run}")
        assert response.status_code == 403, (endpoint, run, response.status_code)
        assert set(response.json()) == {"error"}


def test_dotdot_and_absolute_paths_are_forbidden(client, runs):
    assert client.get("/api/emc", params={"run": "../secret"}).status_code == 403
    assert client.get("/api/emc?run=%2e%2e%2fsecret").status_code == 403
    assert client.get("/api/emc", params={"run": str(runs["secret"])}).status_code == 403


def test_symlinks_out_of_the_root_are_refused(client, runs):
    os.symlink(runs["secret"], runs["root"] / "link-out")
    assert client.get("/api/emc", params={"run": "link-out"}).status_code == 403
    assert "link-out" not in [r["run"] for r in client.get("/api/runs").json()["runs"]]
    # a run whose emc/ is a symlink out: the EMC files are not read
    (runs["root"] / "live" / "emc").rename(runs["root"] / "live" / "emc-moved")
    os.symlink(runs["secret"] / "emc", runs["root"] / "live" / "emc")
    assert client.get("/api/emc/slices", params={"run": "live"}).status_code in (403, 404)
    assert client.get("/api/run", params={"run": "live"}).json()["has"]["emc"] is False


def test_static_traversal_is_refused(client):
    for url in ("/static/../server.py", "/static/%2e%2e/server.py", "/static/..%2fserver.py", "/static//etc/passwd"):
        response = client.get(url)
        assert response.status_code == 404, url
        assert "create_app" not in response.text and "root:" not in response.text


def test_health_probe(client, runs):
    assert client.get("/healthz").json() == {"ok": True, "root": str(runs["root"].resolve())}


def test_unknown_run_and_route(client):
    assert client.get("/api/emc", params={"run": "nope"}).status_code == 404
    assert client.get("/api/nothing").status_code == 404


@pytest.mark.parametrize("method", ["post", "put", "delete", "patch"])
def test_only_get(client, method):
    assert getattr(client, method)("/api/runs").status_code == 405
    assert getattr(client, method)("/api/emc?run=done").status_code == 405


def test_dragonfly_style_folder_reads_the_log_table(tmp_path):
    writer = RunWriter(tmp_path / "df", emc_subdir="")
    writer.emc(1)
    writer.emc(2)
    (tmp_path / "df" / "metrics.jsonl").unlink()
    (tmp_path / "df" / "provenance.json").unlink()
    client = local_client(tmp_path)
    assert [r["run"] for r in client.get("/api/runs").json()["runs"]] == ["df"]
    series = client.get("/api/emc", params={"run": "df"}).json()
    assert series["iteration"] == [1, 2] and series["mutual_info"] == pytest.approx([1.5, 2.0])


def test_phase_only_run_has_no_emc_section(tmp_path):
    """`spibatch phase --truth` writes phase/ (metrics.jsonl, phasing.h5) and validate/, no emc/."""
    writer = RunWriter(tmp_path / "ph")
    writer.phasing()
    writer.fsc()
    client = local_client(tmp_path)
    summary = client.get("/api/run", params={"run": "ph"}).json()
    assert summary["has"] == {"emc": False, "phase": True, "phase_result": True, "fsc": True, "follow": False}
    assert client.get("/api/emc", params={"run": "ph"}).status_code == 404
    assert len(client.get("/api/phase", params={"run": "ph"}).json()["starts"]) == 3


def test_a_real_dragonfly_run_folder(shared_datasets):
    """Dragonfly's own EMC.log and output_030.h5 (intens (1, N, N, N), no best_probability), read-only."""
    client = local_client(shared_datasets / "dragonfly-small")
    runs = {r["run"]: r for r in client.get("/api/runs").json()["runs"]}
    assert runs["dragonfly-run"]["emc_iterations_done"] == 30 and runs["dragonfly-run"]["status"] == "unknown"
    series = client.get("/api/emc", params={"run": "dragonfly-run"}).json()
    assert series["iteration"] == list(range(1, 31)) and series["outputs"] == [30]
    assert [c["iteration"] for c in series["changes"]] == [11, 21]          # Dragonfly's beta schedule
    slices = client.get("/api/emc/slices", params={"run": "dragonfly-run"}).json()
    assert slices["iteration"] == 30 and slices["edge"] == 93 and len(slices["slices"][0]["z"]) == 93
    frames = client.get("/api/emc/frames", params={"run": "dragonfly-run"})
    assert frames.status_code == 404 and "best_probability" in frames.json()["error"]


def test_run_fingerprint_is_taken_before_the_summary(client, runs, monkeypatch):
    """A run that finishes while /api/run reads its summary must look changed at the next poll
    (else the page keeps showing 'running' with nothing left to change)."""
    from spibatch.monitor import rundata

    read_summary = rundata.RunData.summary

    def summary_while_the_run_finishes(self):
        out = read_summary(self)
        runs["live"].provenance("completed")
        return out

    monkeypatch.setattr(rundata.RunData, "summary", summary_while_the_run_finishes)
    seen = client.get("/api/run", params={"run": "live"}).json()["fingerprint"]
    monkeypatch.undo()
    assert client.get("/api/fingerprint", params={"run": "live"}).json()["fingerprint"] != seen


def test_follow_shows_the_live_source_its_previews_and_the_latency(tmp_path):
    """A run following a live source, written through the follower's real store: counts, hit rate per commit,
    lit-pixel histogram, the newest preview and the time from the newest frame to the newest density."""
    root = tmp_path / "runs"
    live = RunWriter(root / "live", iterations=5)
    client = local_client(root)
    assert client.get("/api/follow", params={"run": "live"}).status_code == 404
    assert client.get("/api/runs").json()["runs"][0]["has"]["follow"] is False

    live.follow(100, 10, received=1000.0)
    write_text(live.layout.config, "name: beamtime\nsource: {kind: cxi-folder, target: cxi}\nemc: {iterations: 5}\n")
    write_text(live.layout.site, "name: local\nprovider: local\n")
    live.stage_log("follow")
    live.stage_log("emc")      # EMC takes the chunks while the follow runs: both running, phase waiting
    stages = {s["stage"]: s["state"] for s in client.get("/api/run", params={"run": "live"}).json()["stages"]}
    assert stages == {"follow": "running", "emc": "running", "phase": "waiting", "validate": "waiting"}
    before = client.get("/api/fingerprint", params={"run": "live"}).json()["fingerprint"]
    live.follow(200, 50, received=1010.0)
    assert client.get("/api/fingerprint", params={"run": "live"}).json()["fingerprint"] != before
    live.emc(1)
    summary = client.get("/api/run", params={"run": "live"}).json()
    assert summary["has"]["follow"] is True and summary["emc_iterations_done"] == 1
    assert summary["emc_iterations_planned"] is None    # emc.iterations ends the annealing: "134 of 20" before
    f = client.get("/api/follow", params={"run": "live"}).json()
    assert (f["state"], f["frames_seen"], f["hits"], f["chunks"]) == ("following", 300, 60, 2)
    assert f["hit_rate"] == pytest.approx(0.2) and f["last_batch_hit_rate"] == pytest.approx(0.25)
    assert f["history"]["frames_seen"] == [100, 300] and f["history"]["hits"] == [10, 60]
    assert f["history"]["hit_rate"] == pytest.approx([0.1, 0.25])
    lit = f["lit_histogram"]
    assert sum(lit["counts"]) == 300 and len(lit["edges"]) == len(lit["counts"])
    assert lit["counts"][lit["edges"].index(256)] == 60 and lit["counts"][lit["edges"].index(2)] == 240
    assert f["first_received"] == pytest.approx(1000.0) and f["last_received"] == pytest.approx(1010.199)
    assert f["latest_preview"] is None and f["newest_density"] is None
    assert client.get("/api/follow/preview", params={"run": "live"}).status_code == 404

    live.preview(2, 60, newest_frame=1010.199, written=1030.0)
    live.preview(4, 60, newest_frame=1010.199, written=1050.0, final=True)
    f = client.get("/api/follow", params={"run": "live"}).json()
    assert [p["iteration"] for p in f["previews"]] == [2, 4]
    assert f["latest_preview"]["iteration"] == 4 and f["latest_preview"]["final"] is True
    assert f["newest_density"]["kind"] == "quick final"
    assert f["newest_density"]["latency_s"] == pytest.approx(1050.0 - 1010.199)
    shown = client.get("/api/follow/preview", params={"run": "live"}).json()
    assert shown["preview"]["iteration"] == 4 and len(shown["slices"]) == 3
    older = client.get("/api/follow/preview", params={"run": "live", "iteration": 2}).json()
    assert older["preview"]["iteration"] == 2 and older["slices"][0]["z"] != shown["slices"][0]["z"]
    assert client.get("/api/follow/preview", params={"run": "live", "iteration": 3}).status_code == 404

    live.follow(0, 0, end="stop file")
    ended = client.get("/api/follow", params={"run": "live"}).json()
    assert (ended["state"], ended["end_reason"], ended["frames_seen"]) == ("ended", "stop file", 300)


@pytest.mark.parametrize("chunks", [None, (8, 8, 8)])
def test_central_planes_through_a_file_object_are_the_volumes(tmp_path, chunks):
    """The planes the monitor reads (a file opened through a Python file object, as open_h5 opens it), from an
    unchunked dataset (read whole, then sliced) and a chunked one (read plane by plane), cropped or not, are
    the volume's own central planes."""
    from spibatch.monitor.volumes import _planes

    vol = np.random.default_rng(3).random((21, 21, 21)).astype(np.float32)
    path = tmp_path / "v.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("v", data=vol, chunks=chunks)
    with open(path, "rb") as fh, h5py.File(fh, "r") as f:
        assert f["v"].chunks == chunks
        for lo, hi in ((0, None), (4, 17)):
            planes, shape = _planes(f["v"], lo, hi)
            end = 21 if hi is None else hi
            assert shape == (21, 21, 21)
            assert np.array_equal(planes[0], vol[lo:end, lo:end, 10])
            assert np.array_equal(planes[1], vol[lo:end, 10, lo:end])
            assert np.array_equal(planes[2], vol[10, lo:end, lo:end])
