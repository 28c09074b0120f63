"""Near real time, end to end: a simulated beamtime replayed into a CXI folder while `spibatch run` follows it on
the local site (spibatch.stream.rehearsal drives it, as benchmarks/streaming.py does), then a batch EMC on the
very hits the follower kept.

Small on purpose (a 32 x 32 detector, 160 hits among 640 frames, 1380 rotations, 2 phasing starts on a short
recipe), so that the whole chain -- follower, EMC taking chunks as they come, previews on a spare worker, the
quick final density, the full phasing, the validation -- runs in about a minute on 2 cores.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from platform_helpers import env
from spibatch.emc.compare import compare_with_truth
from spibatch.io.results import read_volume
from spibatch.layout import RunLayout
from spibatch.stream import rehearsal
from spibatch.stream.replay import simulated

pytestmark = pytest.mark.slow

HITS, HIT_FRACTION, PIXELS = 160, 0.25, 32
FRAMES = int(HITS / HIT_FRACTION)
RATE_HZ = 40.0                      # 640 frames in 16 s: EMC starts on the first chunks, the rest join as they come
CHUNK, START_HITS = 40, 60
RECIPE = "(HIO() ** 10 * ShrinkWrap()) ** 2 * ER() ** 10"
PHASING = {"num_starts": 2, "keep_best": 2, "recipe": RECIPE}
# The follow's final EMC model against a batch EMC on the same hits with the same settings and as many iterations
# (three runs on 2 cores shared with other work, load 5-9):
# - correlated voxel by voxel, no alignment (both start from the same seeded model, so they come out in the same
#   orientation): 0.999998 (3 and 4 iterations: EMC started as the replay ended), 0.999991 (17 iterations, the
#   chunks joining from iteration 1 to 16); 0.9969-0.9977 with the EMC of issue 16 (detector corr in the views)
#   when the machine was quiet enough for 39 iterations (the two histories differ: frames join at different
#   iterations and beta rises with the iteration count, so late, sharp iterations keep the difference) --
#   hence 0.99, while the models' CCs with the truth stay within the tolerance below (0.9417 / 0.9398 there);
# - each one's CC with the truth after its own alignment: 0.6061 / 0.6009 (3 iterations), 0.7274 / 0.7241 (4),
#   0.9656 / 0.9651 (17): the alignment search turns the tiny difference of an unconverged model into up to
#   0.005, the goal; twice that is the tolerance here, so a search landing a step away does not fail.
# Since 2026-12-05 the follow's annealing holds after emc.iterations (EMC_ITERATIONS) and the batch run compared
# with runs that many iterations (the follow itself runs until its stopping rule: 70 in one run here, with its
# chunks joined into shards an iteration takes ~0.2 s); before, the batch ran as many as the follow and annealed on
# to beta x 2^6 -- CC with the truth 0.9379 against the follow's 0.9595.
DIRECT_CC = 0.99
CC_TOLERANCE = 0.01
EMC_ITERATIONS = 20


@pytest.fixture(scope="module")
def followed(tmp_path_factory):
    """One rehearsed beamtime for the tests of this module: the run folder, its summary, the simulated files."""
    work = tmp_path_factory.mktemp("follow")
    frames, paths = simulated(work / "sim", num_hits=HITS, hit_fraction=HIT_FRACTION, pixels=PIXELS)
    target = work / "cxi"
    target.mkdir()
    config = work / "live.yaml"
    config.write_text(rehearsal.source_section("cxi-folder", str(target), paths["detector"], paths["truth"],
                                               chunk_frames=CHUNK, start_hits=START_HITS, preview_every=2,
                                               after_end=3, num_div=3, flush_s=0.5, idle_timeout_s=60,
                                               iterations=EMC_ITERATIONS, phasing=PHASING, preview_recipe=RECIPE))
    done = rehearsal.follow_replay(frames, "cxi-folder", str(target), config, work / "live", rate_hz=RATE_HZ,
                                   env=env(), log_dir=work, timeout_s=600)
    return {"work": work, "run": done.run, "summary": rehearsal.summarize(done), "paths": paths, "frames": frames}


def test_the_follow_counts_every_frame_and_finds_every_hit(followed):
    run, summary = followed["run"], followed["summary"]
    assert summary["frames_seen"] == FRAMES and summary["hits"] == HITS
    status = json.loads(run.follow_status.read_text())
    assert status["state"] == "ended" and status["end_reason"].startswith("stop file")
    assert status["hit_rate"] == pytest.approx(HIT_FRACTION)
    assert sum(status["lit_histogram"]["counts"]) == FRAMES
    ids = set()
    for chunk in sorted((run.follow / "chunks").glob("chunk_*.emc")):
        with h5py.File(chunk) as f:
            ids |= set(zip(f["train_id"][:].tolist(), f["pulse_id"][:].tolist()))
    frames = followed["frames"]
    p = frames.pulses_per_train
    assert ids == {(frames.first_train + i // p, i % p) for i in np.flatnonzero(frames.is_hit)}
    closing = (followed["work"] / "run.stdout").read_text()     # the driver's closing lines say it too
    assert f"Followed CXI folder {followed['work'] / 'cxi'}: {FRAMES:,} frames, {HITS:,} hits in" in closing, closing[-2000:]


def test_the_closing_lines_say_what_the_follow_skipped(tmp_path):
    """An unreadable CXI file in a followed folder was said only in stages/follow.log: the run ended with its
    frames and hits counted, and no word of the file."""
    from spibatch.stages.summary import result_lines

    run = RunLayout(tmp_path / "run")
    run.follow.mkdir(parents=True)
    assert result_lines(run.path) == []                  # a run that followed nothing has no follow line
    run.follow_status.write_text(json.dumps({"source": "cxi-folder /data/cxi", "frames_seen": 1200, "hits": 300,
                                             "chunks": 4, "end_reason": "stop file",
                                             "bad_trains": {"unreadable file": 2, "already ingested": 5}}))
    assert result_lines(run.path) == ["Followed cxi-folder /data/cxi: 1,200 frames, 300 hits in 4 chunk(s) (stop "
                                      "file); 2 train(s) arrived and were skipped (unreadable file: 2; see "
                                      "stages/follow.log)"]


def test_previews_with_their_time_stamps_then_the_final_density_and_validation(followed):
    run, summary = followed["run"], followed["summary"]
    records = rehearsal.previews(run)
    assert records[-1]["final"] and not any(r["final"] for r in records[:-1])
    assert summary["previews"] >= 1, "no preview while EMC ran"
    status = json.loads(run.follow_status.read_text())
    for r in records:
        folder = run.preview(r["iteration"])
        assert (folder / "phasing.h5").is_file() and (folder / "density.mrc").is_file()
        assert 0 < r["frames"] <= HITS and r["written"] >= r["started"]
        assert status["first_received"] <= r["newest_frame_received"] <= status["last_received"]
        assert r["latency_s"] == pytest.approx(r["written"] - r["newest_frame_received"])
    assert records[-1]["frames"] == HITS and records[-1]["iteration"] == summary["emc_iterations"]
    assert run.phasing.is_file() and run.fsc_vs_truth.is_file() and run.emc_vs_truth.is_file()
    markers = {p.stem: json.loads(p.read_text())["status"] for p in (run.path / "stages").glob("*.json")}
    assert markers == {"follow": "done", "emc": "done", "phase": "done", "validate": "done"}
    assert json.loads(run.provenance.read_text())["status"] == "completed"
    print("\nrehearsal:", json.dumps(summary))


def test_the_monitor_shows_the_follow_from_the_run_folder(followed):
    """The monitor's /api/follow on the real run folder: the follower's counts, the previews, the latency."""
    pytest.importorskip("starlette")
    pytest.importorskip("httpx")
    from monitor_runs import local_client

    run = followed["run"]
    client = local_client(run.path)
    summary = client.get("/api/run", params={"run": "."}).json()
    assert summary["has"]["follow"] is True
    assert {s["stage"]: s["state"] for s in summary["stages"]} == {s: "done" for s in ("follow", "emc", "phase",
                                                                                        "validate")}
    f = client.get("/api/follow", params={"run": "."}).json()
    assert (f["frames_seen"], f["hits"], f["state"]) == (FRAMES, HITS, "ended")
    assert sum(f["lit_histogram"]["counts"]) == FRAMES and f["history"]["frames_seen"][-1] == FRAMES
    records = rehearsal.previews(run)
    assert [p["iteration"] for p in f["previews"]] == [r["iteration"] for r in records]
    assert f["latest_preview"]["final"] is True and f["latest_preview"]["frames"] == HITS
    assert f["newest_density"]["kind"] == "final"      # the full phasing came after the quick final density
    assert f["newest_density"]["latency_s"] == pytest.approx(run.phasing.stat().st_mtime - f["last_received"])
    shown = client.get("/api/follow/preview", params={"run": "."}).json()
    assert shown["preview"]["iteration"] == records[-1]["iteration"] and len(shown["slices"]) == 3


def test_the_final_intensity_matches_a_batch_run_on_the_same_hits(followed):
    """A batch `spibatch emc` on the follower's hits (one photons file, the same EMC settings and emc.iterations,
    the iteration the follow's annealing holds from): the two models agree voxel by voxel (DIRECT_CC), and their
    CCs with the truth within CC_TOLERANCE."""
    work, run, summary = followed["work"], followed["run"], followed["summary"]
    photons = rehearsal.hits_photons(run, work / "hits.emc")
    config = work / "batch.yaml"
    config.write_text(rehearsal.batch_config(photons, run.detector("follow"), iterations=EMC_ITERATIONS,
                                             num_div=3, frames_per_shard=CHUNK))
    rehearsal.spibatch("emc", config, "--out", work / "batch", cwd=work, env=env())
    truth, detector = followed["paths"]["truth"], run.detector("follow")
    live = json.loads(run.emc_vs_truth.read_text())        # the validate stage: the follow's last EMC output
    assert live["intensity"] == str(run.emc_output(summary["emc_iterations"]))
    batch_cc = compare_with_truth(rehearsal.last_output(work / "batch"), truth, detector)["cc"]
    live_model, batch_model = (np.asarray(read_volume(p), np.float64) for p in
                               (run.emc_output(summary["emc_iterations"]), rehearsal.last_output(work / "batch")))
    measured = (live_model > 0) | (batch_model > 0)
    direct = float(np.corrcoef(live_model[measured], batch_model[measured])[0, 1])
    print(f"\nEMC CC with the truth: follow {live['cc']:.4f}, batch {batch_cc:.4f}; follow with batch {direct:.6f}; "
          f"{summary['emc_iterations']} iterations followed, {EMC_ITERATIONS} batch")
    assert abs(live["cc"] - batch_cc) <= CC_TOLERANCE
    assert direct >= DIRECT_CC


def test_resume_after_the_driver_was_killed_continues_the_follow(tmp_path):
    """`spibatch run` following a CXI folder is killed (SIGKILL, as an OOM killer or a lost node would) after
    EMC's first iteration, with half the beamtime ingested.  `spibatch resume` stops what the killed driver
    left running (its follower among them), the follower goes on from its index (the files already ingested
    are walked again, their trains skipped), EMC from its checkpoint with the chunks it had taken, the rest of
    the beamtime arrives, and the run completes with every hit exactly once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from spibatch.stream.replay import replay

    frames, paths = simulated(tmp_path / "sim", num_hits=HITS, hit_fraction=HIT_FRACTION, pixels=PIXELS)
    target = tmp_path / "cxi"
    target.mkdir()
    config = tmp_path / "live.yaml"
    config.write_text(rehearsal.source_section("cxi-folder", str(target), paths["detector"], paths["truth"],
                                               chunk_frames=CHUNK, start_hits=START_HITS, preview_every=2,
                                               after_end=3, num_div=3, flush_s=0.5, idle_timeout_s=120,
                                               phasing=PHASING, preview_recipe=RECIPE))
    run_dir = tmp_path / "live"
    run = RunLayout(run_dir)
    half = frames.num_trains // 2
    follow_log = run.stage_log("follow")
    with open(tmp_path / "run.stderr", "w") as err:
        driver = subprocess.Popen([sys.executable, "-m", "spibatch", "run", str(config), "--out", str(run_dir)],
                                  cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 300
        while not run.stage_stream("follow", "stderr").exists() and driver.poll() is None:
            time.sleep(0.2)
        replay(frames, 200.0, "cxi-folder", target, stop_train=half)
        while not run.emc_output(1).exists() and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert driver.poll() is None and run.emc_output(1).exists(), (tmp_path / "run.stderr").read_text()[-3000:]
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        if driver.poll() is None:
            driver.kill()
    gone = time.monotonic() + 20         # the orphaned follower notices, says so, and follows on
    while f"the driver (process {driver.pid}) is gone" not in follow_log.read_text() and time.monotonic() < gone:
        time.sleep(0.2)
    assert f"the driver (process {driver.pid}) is gone; following on" in follow_log.read_text()
    before = json.loads(run.follow_status.read_text())
    assert 0 < before["hits"] < HITS and before["frames_seen"] <= half * frames.pulses_per_train
    logged = follow_log.read_text().count("resuming after train")
    run.stop.write_text("stop requested then\n")   # asked of the killed run: it ended the resumed follow at once
    with open(tmp_path / "resume.stderr", "w") as err:
        resumed = subprocess.Popen([sys.executable, "-m", "spibatch", "resume", str(run_dir)], cwd=tmp_path,
                                   env=env(), stdout=subprocess.DEVNULL, stderr=err)
    try:
        while follow_log.read_text().count("resuming after train") == logged and resumed.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.2)     # the killed driver's follower is stopped, the new one has read the index
        replay(frames, 200.0, "cxi-folder", target, start_train=half)      # the rest of the beamtime
        rehearsal.spibatch("stop", run_dir, cwd=tmp_path, env=env())
        code = resumed.wait(timeout=600)
    finally:
        if resumed.poll() is None:
            resumed.kill()
    log = (tmp_path / "resume.stderr").read_text()
    print("\nresume:", log[-3000:])
    assert code == 0, log[-3000:]
    assert "an earlier `spibatch stop` (stop requested then) was for the run before this resume: cleared" in \
        log + (run_dir / "log.txt").read_text()
    status = json.loads(run.follow_status.read_text())
    assert (status["frames_seen"], status["hits"]) == (FRAMES, HITS)
    ids = []
    for chunk in sorted((run.follow / "chunks").glob("chunk_*.emc")):
        with h5py.File(chunk) as f:
            ids += list(zip(f["train_id"][:].tolist(), f["pulse_id"][:].tolist()))
    p = frames.pulses_per_train
    assert sorted(ids) == sorted((frames.first_train + i // p, i % p) for i in np.flatnonzero(frames.is_hit))
    assert json.loads(run.provenance.read_text())["status"] == "completed"
    assert run.fsc_vs_truth.is_file()
    assert "resuming after iteration" in run.stage_log("emc").read_text()
    metrics = [json.loads(line) for line in run.emc_metrics.read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == list(range(1, len(metrics) + 1)) and metrics[-1]["num_frames"] == HITS


def test_a_source_that_never_sends_a_train_ends_the_run_in_one_line(tmp_path):
    """A followed folder that stays empty: the follower ends at its idle timeout without a train (so without a
    follow/ folder or end line); the EMC stage waiting for its first hits said nothing and waited for good."""
    import shutil
    import subprocess
    import sys

    from spibatch.detector import Detector
    from spibatch.io.dragonfly import write_detector

    write_detector(tmp_path / "det.h5", Detector.flat(16, 1e-3, 0.1, 1e-9))
    (tmp_path / "frames").mkdir()
    (tmp_path / "p.yaml").write_text("name: t\nsource: {kind: cxi-folder, target: frames, detector: det.h5, "
                                     "idle_timeout_s: 2}\nemc: {num_div: 1, iterations: 1}\n")
    done = subprocess.run([sys.executable, "-m", "spibatch", "run", "p.yaml", "--out", "run"], cwd=tmp_path,
                          env=env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("spibatch: error:")]
    assert len(errors) == 1 and "the source ended before a single hit was committed" in errors[0]
    assert "Traceback" not in done.stderr
    shutil.rmtree(tmp_path / "run")


def test_an_earlier_followers_record_does_not_end_a_resumed_wait(tmp_path, monkeypatch):
    """A follower stopped before its first train leaves its job record (status failed) and no follow/ folder; a
    follower started again removes it, so the resumed EMC waits for the new one's hits instead of ending at once."""
    import subprocess

    from spibatch.pipeline import Follower
    from spibatch.stages.live import first_photons

    run = RunLayout(tmp_path / "run")
    run.stage_result("follow").parent.mkdir(parents=True)
    run.stage_result("follow").write_text('{"status": "failed"}')
    with pytest.raises(Exception, match="before a single hit was committed"):
        first_photons(run, 10, timeout_s=5)

    class Started:
        pid = 12345

    monkeypatch.setattr(subprocess, "Popen", lambda *args, **kwargs: Started())
    Follower(run, wanted=True).__enter__()
    assert not run.stage_result("follow").exists()
    with pytest.raises(Exception, match="no hit committed within 1 s"):    # waits for the new follower's hits
        first_photons(run, 10, timeout_s=1)


def test_stop_reaches_a_live_run_before_its_first_train(tmp_path):
    """A live run makes follow/ with its first train: `spibatch stop` before that was refused ("this run does
    not follow a live source"); the run's own config.yaml says it does.  An EMC run is still refused."""
    import subprocess
    import sys

    from spibatch import layout

    for name, config in (("live", "name: t\nsource: {kind: cxi-folder, target: frames}\n"),
                         ("batch", "name: t\nemc: {num_div: 1}\n")):
        run = RunLayout(tmp_path / name)
        run.path.mkdir()
        (run.path / layout.PROVENANCE).write_text('{"status": "running"}')
        run.config.write_text(config)
        done = subprocess.run([sys.executable, "-m", "spibatch", "stop", str(run.path)], capture_output=True,
                              text=True, env=env(), timeout=120)
        assert (done.returncode, run.stop.exists()) == ((0, True) if name == "live" else (2, False)), done.stderr
    first = (tmp_path / "live" / "stop").read_text()        # a second stop said nothing and rewrote the time
    done = subprocess.run([sys.executable, "-m", "spibatch", "stop", str(tmp_path / "live")], capture_output=True,
                          text=True, env=env(), timeout=120)
    assert done.returncode == 0 and "was asked to stop already (stop requested" in done.stderr, done.stderr
    assert (tmp_path / "live" / "stop").read_text() == first


@pytest.mark.parametrize("status", ["failed", "interrupted"])
def test_stop_refuses_a_live_run_that_is_not_running(tmp_path, status):
    """A stop file written into a failed or interrupted run was left there, and ended its resumed follow at once
    with 0 frames read ("the source ended before a single hit was committed")."""
    import subprocess
    import sys

    from spibatch import layout

    run = RunLayout(tmp_path / "run")
    run.path.mkdir()
    (run.path / layout.PROVENANCE).write_text(json.dumps({"status": status}))
    run.config.write_text("name: t\nsource: {kind: cxi-folder, target: frames}\n")
    done = subprocess.run([sys.executable, "-m", "spibatch", "stop", str(run.path)], capture_output=True,
                          text=True, env=env(), timeout=120)
    assert done.returncode == 2 and not run.stop.exists(), done.stderr
    assert "it is not running" in done.stderr and f"spibatch resume {run.path}" in done.stderr, done.stderr
