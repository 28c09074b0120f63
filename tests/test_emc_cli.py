"""`spibatch emc` as a user runs it: a run directory, resume after SIGKILL, bad input in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from spibatch.io.results import write_result


def spibatch_emc(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spibatch", "emc", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env=env)


def checkpoint_iteration(run: Path) -> int:
    try:
        with h5py.File(run / "emc" / "checkpoint.h5", "r") as f:
            return int(f.attrs["iteration"])
    except (OSError, KeyError):
        return 0


def test_run_dir_provenance_and_resume_after_sigkill_is_bit_identical(emc_config, emc_small, tmp_path):
    config = emc_config(tmp_path, iterations=3)
    whole = spibatch_emc(str(config), "--out", str(tmp_path / "whole"), cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    assert str(tmp_path / "whole" / "emc" / "output_003.h5") in whole.stdout
    record = json.loads((tmp_path / "whole" / "provenance.json").read_text())
    assert record["status"] == "completed" and record["mpi_ranks"] == 1
    assert str(emc_small["photons"]) in record["inputs"] and str(emc_small["detector"]) in record["inputs"]
    assert "INFO 3\t" in (tmp_path / "whole" / "log.txt").read_text()   # the EMC.log lines are logged too

    # the same run, killed (SIGKILL: no clean-up at all) once its 2nd iteration is checkpointed
    run = tmp_path / "killed"
    env = dict(os.environ, SPIBATCH_EMC_HOLD_AFTER="2")
    proc = subprocess.Popen([sys.executable, "-m", "spibatch", "emc", str(config), "--out", str(run)],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while checkpoint_iteration(run) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its checkpoint 2"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert checkpoint_iteration(run) == 2 and not (run / "emc" / "output_003.h5").exists()
    assert json.loads((run / "provenance.json").read_text())["status"] == "running"   # it never knew

    resumed = spibatch_emc(str(config), "--resume", str(run), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after iteration 2" in resumed.stderr
    with h5py.File(run / "emc" / "output_003.h5") as a, h5py.File(tmp_path / "whole" / "emc" / "output_003.h5") as b:
        assert np.array_equal(a["intensity"][()], b["intensity"][()])
        assert np.array_equal(a["orientations"][()], b["orientations"][()])
        assert np.array_equal(a["scale"][()], b["scale"][()])
    with h5py.File(run / "emc" / "checkpoint.h5") as a, h5py.File(tmp_path / "whole" / "emc" / "checkpoint.h5") as b:
        assert np.array_equal(a["model"][()], b["model"][()])
    lines = (run / "emc" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [1, 2, 3]
    record = json.loads((run / "provenance.json").read_text())
    assert record["status"] == "completed" and len(record["resumed"]) == 1
    assert not list(run.rglob(".*")) and not (run / "lock").exists()


def write_volume(path: Path, value: float, size: int = 91) -> Path:
    volume = np.random.default_rng(0).random((size, size, size))
    volume[3, 4, 5] = value
    write_result(path, {"intensity": volume}, {})
    return path


def mismatched_detector(folder: Path, emc_small) -> Path:
    from spibatch.io.dragonfly import write_detector
    from spibatch.detector import Detector
    det = Detector.read(emc_small["detector"])
    det.q_voxels, det.corr, det.mask = det.q_voxels[:-64], det.corr[:-64], det.mask[:-64]
    write_detector(folder / "other_detector.h5", det)
    return folder / "other_detector.h5"


def empty_photons(folder: Path) -> Path:
    from spibatch.io.dragonfly import write_photons
    from spibatch.photons import Photons

    write_photons(folder / "empty.h5", Photons.empty(4096))
    return folder / "empty.h5"


BAD_INPUTS = {
    "detector mismatch": (lambda d, s: {"detector": mismatched_detector(d, s)},
                          ["num_pix = 4096", "other_detector.h5", "4032 pixels"]),
    "empty photons": (lambda d, s: {"photons": empty_photons(d)}, ["empty.h5", "0 frames"]),
    "NaN start model": (lambda d, s: {"start_model": write_volume(d / "start.h5", np.nan)},
                        ["start.h5", "emc.start_model", "NaN", "(3, 4, 5)"]),
    "num_div 0": (lambda d, s: {"num_div": 0}, ["pipeline.yaml", "emc.num_div", "greater than or equal to 1"]),
    "model too small": (lambda d, s: {"model_size": 51}, ["emc.model_size", "at least 91"]),
    "more ranks than shards": (None, None),   # needs mpirun: tests/test_emc_mpi.py
    "modes that do not fit memory": (lambda d, s: {"num_modes": 200, "model_size": 301},
                                     ["emc.num_modes", "num_modes 200 + nonrot_modes 0 volumes of 301^3"]),
    "more modes than frames": (lambda d, s: {"num_modes": 241}, ["emc.num_modes", "241 rotating + 0 non-rotating "
                               "modes for 240 frames", "empty volume"]),
    "start model of other modes": (lambda d, s: {"num_modes": 3, "start_model": write_modes(d / "two.h5", 2)},
                                   ["two.h5", "emc.start_model", "(2, 9, 9, 9)", "(3, 91, 91, 91)"]),
}


def write_modes(path: Path, volumes: int, size: int = 9) -> Path:
    """An output-like file holding ``intensities`` (volumes, size, size, size) float32."""
    write_result(path, {"intensities": np.ones((volumes,) + (size,) * 3, np.float32)}, {})
    return path


def test_emc_with_modes_from_a_modes_start_model(emc_config, tmp_path):
    """The stage's own checks (memory estimate, start model) take the modes; the outputs hold every volume."""
    start = write_modes(tmp_path / "start.h5", 3, 91)
    config = emc_config(tmp_path, iterations=1, num_modes=2, nonrot_modes=1, start_model=start)
    done = spibatch_emc(str(config), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with h5py.File(tmp_path / "run" / "emc" / "output_001.h5") as f:
        assert f["intensities"].shape == (3, 91, 91, 91) and f["mode_probabilities"].shape == (240, 3)
        assert np.isfinite(f["intensities"][()]).all() and f["intensities"][()].max() > 0
    assert "system_volume = 3 X 91 X 91 X 91" in (tmp_path / "run" / "emc" / "EMC.log").read_text()
    # the closing line gives the stage's own time (it summed the iterations': "in 0 s" for a 2-second run)
    seconds = json.loads((tmp_path / "run" / "stages" / "emc.json").read_text())["seconds"]
    shown = f"{seconds:.1f}" if seconds < 10 else f"{seconds:.0f}"
    assert f"EMC: 1 iterations on 1 rank(s) in {shown} s" in done.stdout, done.stdout


@pytest.mark.parametrize("case", [k for k, v in BAD_INPUTS.items() if v[0] is not None])
def test_bad_input_one_line_exit_2_no_run_dir(case, emc_config, emc_small, tmp_path):
    make, words = BAD_INPUTS[case]
    config = emc_config(tmp_path, **make(tmp_path, emc_small))
    done = spibatch_emc(str(config), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spibatch: error: "), done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert not (tmp_path / "runs").exists()


def test_missing_inputs_say_simulate_first(tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text("name: t\nsimulation: {pdb: 1EI7.pdb}\nemc: {num_div: 2}\n")
    done = spibatch_emc(str(config), cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "emc.photons" in done.stderr and "spibatch run" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_resume_needs_a_run_dir_and_unchanged_inputs(emc_config, small_dataset, tmp_path):
    from spibatch.io.dragonfly import read_photons, write_photons

    photons = tmp_path / "photons.h5"
    write_photons(photons, read_photons(small_dataset / "photons.emc", 0, 240))
    config = emc_config(tmp_path, iterations=1, photons=photons)
    done = spibatch_emc(str(config), "--resume", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert done.returncode == 2 and "nowhere: --resume: not found" in done.stderr, done.stderr
    first = spibatch_emc(str(config), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    provenance = (tmp_path / "run" / "provenance.json").read_text()

    write_photons(photons, read_photons(small_dataset / "photons.emc", 240, 480))   # other frames, same shape
    config = emc_config(tmp_path, iterations=2, photons=photons)
    done = spibatch_emc(str(config), "--resume", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "photons.h5" in done.stderr and "changed since the run started" in done.stderr
    assert not (tmp_path / "run" / "emc" / "output_002.h5").exists()
    assert (tmp_path / "run" / "provenance.json").read_text() == provenance


def test_resume_without_the_checkpoint_or_of_a_phase_run_is_refused(emc_config, tmp_path):
    """`emc --resume RUN` whose checkpoint was removed after two iterations would start again from iteration 1
    over the outputs; a phase run holds no EMC run: one line each, nothing written."""
    config = emc_config(tmp_path, iterations=2)
    first = spibatch_emc(str(config), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (tmp_path / "run" / "emc" / "checkpoint.h5").unlink()
    before = (tmp_path / "run" / "emc" / "output_001.h5").read_bytes()
    done = spibatch_emc(str(config), "--resume", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 2 and "2 EMC output file(s) here but no checkpoint.h5" in done.stderr, done.stderr
    assert (tmp_path / "run" / "emc" / "output_001.h5").read_bytes() == before

    phased = tmp_path / "phased"
    (phased / "stages").mkdir(parents=True)
    (phased / "provenance.json").write_text(json.dumps({"status": "completed", "command": ["spibatch", "phase"]}))
    (phased / "stages" / "phase.json").write_text("{}")
    done = spibatch_emc(str(config), "--resume", str(phased), cwd=tmp_path)
    assert done.returncode == 2 and "holds no EMC run to continue" in done.stderr, done.stderr
    assert not (phased / "emc").exists()


def test_iterations_whose_outputs_cannot_fit_stop_before_the_first(emc_config, tmp_path):
    """iterations: 1e9 wrote an output_NNN.h5 a iteration (70 MB/s) until the disk was full: at the stage's start,
    where the run folder is known (--out may be on another disk than runs_dir), the iterations still to run must
    fit there; one line, exit 2, nothing written into emc/."""
    config = emc_config(tmp_path, num_div=1, iterations=100_000_000, beta_schedule="{factor: 1.0, period: 10}")
    done = spibatch_emc(str(config), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    line = [x for x in done.stderr.splitlines() if x.startswith("spibatch: error:")]
    assert len(line) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "emc.iterations: 100,000,000 more iterations' output_NNN.h5" in line[0] and "on disk" in line[0], line
    assert f"{tmp_path / 'run' / 'emc'} has" in line[0] and not list((tmp_path / "run" / "emc").glob("output_*"))
