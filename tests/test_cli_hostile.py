"""Hostile inputs a review found giving tracebacks, wrong results or misleading lines (2026-12-07): each is now one
line, exit 2, and nothing written.  Every command runs as a user runs it (``python -m spibatch``)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from fault_helpers import error_lines


def spibatch(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spibatch", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def refused(done: subprocess.CompletedProcess, *words: str) -> str:
    """The command ended with exit 2 and one error line holding ``words``, and no traceback; returns the line."""
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def volume(tmp_path) -> Path:
    from spibatch.io.results import write_result

    path = tmp_path / "vol.h5"
    write_result(path, {"intensity": np.random.default_rng(1).random((21, 21, 21)).astype(np.float32)}, {})
    return path


def test_a_symbolic_link_loop_is_one_line_wherever_a_path_goes(tmp_path, volume):
    """Path.resolve() raises RuntimeError on a loop (Python 3.11-3.12): it was a traceback of 57-84 lines."""
    os.symlink(tmp_path / "loop2", tmp_path / "loop1")
    os.symlink(tmp_path / "loop1", tmp_path / "loop2")
    for args in (("validate", "loop1", volume, "--out", "x"), ("validate", volume, volume, "--out", "loop1"),
                 ("validate", volume, volume, "--runs-dir", "loop1"), ("background", volume, "-o", "loop1")):
        refused(spibatch(*args, cwd=tmp_path), "loop", "symbolic link loop")   # loop1 or loop2
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("used", [0, 1])
def test_classify_refuses_a_detector_that_leaves_its_shells_empty(small_dataset, tmp_path, used):
    """corr 0 on every pixel was a traceback (``min`` of nothing); on all but one pixel, exit 0 and classes.json
    holding NaN (not JSON) and distances all 0."""
    from spibatch.detector import Detector
    from spibatch.io.dragonfly import write_detector

    detector = Detector.read(small_dataset / "det_sim.h5")
    corr = np.zeros_like(detector.corr)
    corr[np.flatnonzero(detector.mask == 0)[:used]] = 1e-6
    write_detector(tmp_path / "det.h5", dataclasses.replace(detector, corr=corr))
    done = spibatch("classify", small_dataset / "photons.emc", "--detector", "det.h5", "-o", "out", cwd=tmp_path)
    line = refused(done, "det.h5", "corr")
    assert ("no pixel is used" in line) if used == 0 else ("23 of the 24 shells" in line), line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["init", "background", "validate", "classify"])
def test_an_output_name_with_a_line_break_is_refused_before_anything_is_written(small_dataset, tmp_path, volume,
                                                                                   command):
    """Accepted before (exit 0, its `next:` line split in two), then refused by the next command as an input."""
    name = "new\nline"
    args = {"init": (name,), "background": (small_dataset / "photons.emc", "-o", name),
            "validate": (volume, volume, "--out", name),
            "classify": (small_dataset / "photons.emc", "--detector", small_dataset / "det_sim.h5", "-o", name)}
    refused(spibatch(command, *args[command], cwd=tmp_path), "line break", ascii(name)[1:-1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol.h5"]


def test_init_refuses_a_folder_where_the_structure_file_goes(tmp_path):
    """A folder named 1EI7.pdb was 'kept', and the pipeline then failed on it: 'is a directory'."""
    (tmp_path / "proj" / "1EI7.pdb").mkdir(parents=True)
    refused(spibatch("init", "proj", cwd=tmp_path), "1EI7.pdb", "not a file")
    assert not (tmp_path / "proj" / "pipeline.yaml").exists()


def test_an_edited_lock_is_not_taken_for_a_live_owner(tmp_path, volume):
    """``{"pid": "x"}`` read as a live owner: 'wait for it to finish', forever."""
    done = spibatch("validate", volume, volume, "--out", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    for record in ({"pid": "x"}, {"pid": True, "host": "h"}, {"pid": 12, "host": ""}, {"host": "h"}):
        (tmp_path / "run" / "lock").write_text(json.dumps(record))
        line = refused(spibatch("report", "run", cwd=tmp_path), "lock cannot be read")
        assert "wait for it" not in line, line
    (tmp_path / "run" / "lock").write_text(json.dumps({"pid": 12, "host": "elsewhere", "token": "t"}))
    refused(spibatch("report", "run", cwd=tmp_path), "another process writes", "pid 12 on elsewhere")


def test_background_refuses_a_num_pix_no_machine_can_hold(tmp_path):
    """num_pix 2^31 - 1 in a photons file: np.zeros of it, a MemoryError traceback (or 48 GiB asked for)."""
    from spibatch.io.dragonfly import write_photons
    from spibatch.photons import Photons

    write_photons(tmp_path / "p.h5", Photons.from_dense(np.ones((3, 8), np.int32)))
    with h5py.File(tmp_path / "p.h5", "r+") as f:
        del f["num_pix"]
        f["num_pix"] = np.int64(2 ** 31 - 1)
    refused(spibatch("background", "p.h5", "-o", "bg.h5", cwd=tmp_path), "p.h5", "num_pix", "2,147,483,647 pixels")
    assert not (tmp_path / "bg.h5").exists()


def test_the_small_lines_read_right(tmp_path):
    """A folder that is not there is 'not found' (it said 'no provenance.json here'); an edited record's type has
    its article ('an int'); a folder named like an option gets a `next:` line that runs."""
    refused(spibatch("stop", "nowhere", cwd=tmp_path), "nowhere", "not found")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "provenance.json").write_text('{"status": 3}')
    refused(spibatch("stop", "run", cwd=tmp_path), "status holds an int, not a str")
    done = spibatch("init", "--", "-weird", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "next: spibatch run ./-weird/pipeline.yaml", done


@pytest.mark.parametrize("port", [0, 70000])
def test_a_bridge_port_outside_1_to_65535_is_refused(small_dataset, tmp_path, port):
    """ZeroMQ bound 70000 as 4464 (its low 16 bits) and 0 as a random port nobody was told: both 'played', exit 0.
    The pipeline file's source.target is held to the same rule (tests/test_follow_pipeline.py runs it live)."""
    from spibatch.stream.sources import endpoint_problem

    done = spibatch("replay", small_dataset / "photons.emc", "--detector", small_dataset / "det_sim.h5",
                    "--num-hits", 3, "--rate", 1000, "--as", "karabo-bridge", "--target", f"tcp://127.0.0.1:{port}",
                    cwd=tmp_path)
    refused(done, "--target", f"port {port} is not one from 1 to 65535")
    assert endpoint_problem(f"tcp://host:{port}") is not None and endpoint_problem("tcp://host:65535") is None
    assert endpoint_problem("inproc://x") is not None and endpoint_problem("inproc://x", ("inproc",)) is None


def test_replay_makes_its_folder_and_detector_before_it_simulates(tmp_path, monkeypatch):
    """The README's recipe (replay &, then the run that follows it) was refused: 'source.target: no such folder'
    -- replay made the folder, and wrote the detector, only after simulating every frame."""
    from spibatch import sim
    from spibatch.stream.replay import simulated

    seen = {}

    def simulate(*args, **kwargs):
        seen["detector"] = (tmp_path / "out" / "detector.h5").is_file()
        raise KeyboardInterrupt

    monkeypatch.setattr(sim, "simulate", simulate)
    with pytest.raises(KeyboardInterrupt):
        simulated(tmp_path / "out", num_hits=2)
    assert seen == {"detector": True}
    from spibatch import cli_platform
    from spibatch.stream import replay as replay_module

    def frames_from(*args, **kwargs):
        seen["target"] = (tmp_path / "cxi").is_dir()
        raise KeyboardInterrupt

    monkeypatch.setattr(replay_module, "frames_from", frames_from)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        cli_platform.replay("simulated", rate=100.0, as_="cxi-folder", target="cxi", out=Path("sim"),
                            detector=None, hit_fraction=0.2, num_hits=2)
    assert seen == {"detector": True, "target": True}


def test_replay_refuses_options_its_source_does_not_use(small_dataset, tmp_path):
    """`replay simulated --detector X` and a photons file's `--out D` were ignored without a word."""
    done = spibatch("replay", "simulated", "--detector", small_dataset / "det_sim.h5", "--rate", 100, "--as",
                    "cxi-folder", "--target", "cxi", cwd=tmp_path)
    refused(done, "--detector", "a simulated source writes its own detector file")
    done = spibatch("replay", small_dataset / "photons.emc", "--detector", small_dataset / "det_sim.h5", "--out",
                    "sim", "--rate", 100, "--as", "cxi-folder", "--target", "cxi", cwd=tmp_path)
    refused(done, "--out", "only a simulated source writes files")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_background_refuses_an_output_that_names_a_folder(tmp_path):
    """`background -o dir/new/` wrote a file named `new` (the slash was gone by the time the option was read)."""
    from spibatch.io.dragonfly import write_photons
    from spibatch.photons import Photons

    write_photons(tmp_path / "p.h5", Photons.from_dense(np.ones((3, 8), np.int32)))
    (tmp_path / "dir").mkdir()
    refused(spibatch("background", "p.h5", "-o", "dir/new/", cwd=tmp_path), "dir/new/", "ends in a slash",
            "dir/new/background.h5")
    assert list((tmp_path / "dir").iterdir()) == []
    done = spibatch("background", "p.h5", "-o", "dir/bg.h5", cwd=tmp_path)
    assert done.returncode == 0 and (tmp_path / "dir" / "bg.h5").is_file(), done.stderr
