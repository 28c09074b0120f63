"""Run directories: naming, provenance, refusing to overwrite, failure records."""

from __future__ import annotations

import json
import logging

import pytest

from spibatch.errors import InputError
from spibatch.rundir import create_run_dir, run_in_dir, sha256_file


def test_new_run_dir_name_provenance_and_log(tmp_path):
    (tmp_path / "input.txt").write_text("abc")
    run = create_run_dir("exp", tmp_path / "runs", config_text="name: exp\n", command=["spibatch", "x"])
    again = create_run_dir("exp", tmp_path / "runs", command=["spibatch", "x"])  # same second: a new name
    assert run.path.parent == (tmp_path / "runs").resolve() and run.path.name.startswith("exp-")
    assert run.path.name.endswith("Z") and again.path != run.path
    run.add_inputs(tmp_path / "input.txt")
    logging.getLogger("spibatch").info("hello from the test")
    run_in_dir(run, lambda: {"thing": run.file("thing.txt")})
    again.finish()
    record = json.loads(run.file("provenance.json").read_text())
    assert record["status"] == "completed" and record["command"] == ["spibatch", "x"]
    assert record["inputs"] == {str((tmp_path / "input.txt").resolve()): sha256_file(tmp_path / "input.txt")}
    assert record["inputs"][str((tmp_path / "input.txt").resolve())] == \
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256("abc")
    assert record["versions"]["numpy"] and record["versions"]["spibatch"]
    assert record["finished"] >= record["started"]
    assert run.file("config.yaml").read_text() == "name: exp\n"
    assert "hello from the test" in run.file("log.txt").read_text()


def test_failure_is_recorded_and_raised(tmp_path):
    run = create_run_dir("exp", tmp_path, command=["spibatch"])

    def broken():
        raise ValueError("the model diverged\nsecond line")

    with pytest.raises(ValueError):
        run_in_dir(run, broken)
    record = json.loads(run.file("provenance.json").read_text())
    assert record["status"] == "failed" and record["error"] == "ValueError: the model diverged"


def test_out_with_earlier_run_is_refused(tmp_path):
    out = tmp_path / "here"
    first = create_run_dir("exp", tmp_path, out, command=["a"])
    first.finish()
    before = first.file("provenance.json").read_text()
    with pytest.raises(InputError, match="already holds a run"):
        create_run_dir("exp", tmp_path, out, command=["b"])
    assert first.file("provenance.json").read_text() == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        create_run_dir("exp", tmp_path, tmp_path / "file", command=["c"])
