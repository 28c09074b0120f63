"""``python -m spibatch.stages STAGE RUN`` run by hand: a stage the run does not have is one line and nothing
written; a SIGTERM is recorded in ``stages/jobs/STAGE.json`` and said in one line, as a Ctrl-C is."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bad_inputs import builders

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def phase_run(tmp_path_factory) -> Path:
    """A finished ``spibatch phase`` run folder (one start, 33^3)."""
    folder = tmp_path_factory.mktemp("stage-process")
    builders.write_volume(folder / "intensity.h5", "intensity", builders.good_intensity(), voxel_size_per_m=1.6e7)
    (folder / "p.yaml").write_text("name: t\nphasing: {intensity: intensity.h5, num_starts: 1, keep_best: 1}\n")
    done = subprocess.run([sys.executable, "-m", "spibatch", "phase", "p.yaml", "--out", "run"], cwd=folder, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return folder / "run"


def stage(run: Path, name: str, **options):
    return subprocess.Popen([sys.executable, "-m", "spibatch.stages", name, str(run)], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **options)


def test_a_stage_the_run_does_not_have_is_one_line_and_writes_nothing(phase_run):
    before = sorted(p.relative_to(phase_run) for p in phase_run.rglob("*"))
    proc = stage(phase_run, "follow")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"spibatch: error: {phase_run}: RUN_DIR: this run has no follow "
                                                   "stage (its config.yaml has no section for it); run one of: ")
    assert "phase" in lines[0].rsplit(":", 1)[1].split(", ")
    assert sorted(p.relative_to(phase_run) for p in phase_run.rglob("*")) == before


def test_a_sigterm_is_recorded_and_said_in_one_line(phase_run, tmp_path):
    run = tmp_path / "run"
    subprocess.run(["cp", "-a", str(phase_run), str(run)], check=True)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("num_starts: 1", "num_starts: 200"))
    for marker in (run / "stages").glob("phase.json"):
        marker.unlink()
    proc = stage(run, "phase")
    log = run / "stages" / "phase.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (log.exists() and "200 starts" in log.read_text()):
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "spibatch: phase: interrupted (SIGTERM)"
    record = json.loads((run / "stages" / "jobs" / "phase.json").read_text())
    assert (record["status"], record["exit_code"], record["error"]) == ("failed", 143, "interrupted (SIGTERM)")


def test_a_stage_run_by_hand_takes_the_runs_lock(phase_run, tmp_path):
    """By hand, on a run another process owns (here a live stand-in owner), one line and nothing written; on a run
    nobody owns it holds the lock while it runs and lets it go; the run's owner (its token) needs no lock."""
    from spibatch import owners
    from spibatch.lock import read_lock, take_lock

    run = tmp_path / "run"
    subprocess.run(["cp", "-a", str(phase_run), str(run)], check=True)
    for marker in (run / "stages").glob("phase.json"):
        marker.unlink()
    record = take_lock(run, ["a", "live", "owner"])     # this test process: alive
    try:
        before = sorted(p.relative_to(run) for p in run.rglob("*"))
        proc = stage(run, "phase")
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err
        assert err.strip().splitlines() == [f"spibatch: error: {run}: RUN_DIR: another process writes into this run "
                                            f"folder (pid {os.getpid()} on {record['host']} since {record['started']}); "
                                            "wait for it to finish, or stop it first"]
        assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
        owned = subprocess.run([sys.executable, "-m", "spibatch.stages", "phase", str(run)], capture_output=True,
                               text=True, timeout=300, env={**ENV, owners.OWNER_ENV: record["token"]})
        assert owned.returncode == 0, owned.stderr
    finally:
        (run / "lock").unlink()
    (run / "stages" / "phase.json").unlink()
    proc = stage(run, "phase")
    deadline = time.monotonic() + 60
    seen = None
    while proc.poll() is None and time.monotonic() < deadline:
        seen = seen or read_lock(run)
        time.sleep(0.02)
    assert proc.wait(120) == 0
    assert seen is not None and seen["command"][1:3] == ["-m", "spibatch.stages"]
    assert read_lock(run) is None


PIPELINE = """name: t
geometry: {{detector_pixels: 32, pixel_size_m: 1.0e-3, detector_distance_m: 0.15, photon_energy_ev: 6000}}
simulation: {{pdb: {pdb}, num_patterns: 200, mean_photons_per_frame: 500, seed: 1}}
emc: {{num_div: 2, iterations: 3, seed: 1}}
phasing: {{recipe: "(HIO(beta=0.9) ** 20 * ShrinkWrap(sigma=2, threshold=0.1)) ** 2 * ER() ** 20", num_starts: 1,
           keep_best: 1, seed: 1}}
"""


def test_a_resume_runs_a_finished_stage_again_when_its_output_was_deleted_or_damaged(tmp_path):
    """The review: with phase/phasing.h5 deleted after the run, `spibatch resume` said every stage had finished and
    marked the run completed without it (truncated: an error naming the wrong fix).  The stage runs again."""
    (tmp_path / "p.yaml").write_text(PIPELINE.format(pdb=REPO / "spibatch" / "data" / "1EI7.pdb"))
    done = subprocess.run([sys.executable, "-m", "spibatch", "run", "p.yaml", "--out", "run"], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    phasing = tmp_path / "run" / "phase" / "phasing.h5"
    for damage in ("delete", "truncate"):
        if damage == "delete":
            phasing.unlink()
        else:
            with open(phasing, "r+b") as fh:
                fh.truncate(200)
        again = subprocess.run([sys.executable, "-m", "spibatch", "resume", "run"], cwd=tmp_path, env=ENV,
                               capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr
        assert "stage phase: its output" in again.stderr and ("is missing" if damage == "delete" else
                                                                "cannot be read") in again.stderr
        import h5py

        with h5py.File(phasing, "r") as f:
            assert f["density"].ndim == 3
    intensity = tmp_path / "run" / "emc" / "output_003.h5"     # EMC's last output: its checkpoint is past it
    intensity.unlink()
    refused = subprocess.run([sys.executable, "-m", "spibatch", "resume", "run"], cwd=tmp_path, env=ENV,
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"spibatch: error: {intensity}: emc: is missing, and EMC's checkpoint is past the iteration that wrote it: it "
        f"cannot be written again; delete {intensity.parent / 'checkpoint.h5'} to run EMC again from its first "
        "iteration, then resume")
    (intensity.parent / "checkpoint.h5").unlink()
    again = subprocess.run([sys.executable, "-m", "spibatch", "resume", "run"], cwd=tmp_path, env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert intensity.exists()
    alone = subprocess.run([sys.executable, "-m", "spibatch", "emc", "p.yaml", "--resume", "run"], cwd=tmp_path,
                           env=ENV, capture_output=True, text=True, timeout=600)
    assert alone.returncode == 2      # (it marked the pipeline run completed with phase and validate never run)
    assert alone.stderr.strip().splitlines() == ["spibatch: error: run: --resume: a pipeline run's folder (`spibatch "
                                                 "run`): continuing one of its stages alone would mark the whole run "
                                                 "completed; continue it with: spibatch resume run"]
    subprocess.run(["cp", "-a", str(tmp_path / "run"), str(tmp_path / "copy")], check=True)   # markers name run/...
    (tmp_path / "copy" / "phase" / "phasing.h5").unlink()
    copied = subprocess.run([sys.executable, "-m", "spibatch", "resume", "copy"], cwd=tmp_path, env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert copied.returncode == 0, copied.stderr
    assert f"{tmp_path / 'copy' / 'phase' / 'phasing.h5'} is missing" in copied.stderr
    assert (tmp_path / "copy" / "phase" / "phasing.h5").exists()
