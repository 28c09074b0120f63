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


def test_large_inputs_are_recorded_by_size_and_ends(tmp_path, monkeypatch):
    """Above FULL_HASH_LIMIT an input is not read whole: its size and the SHA-256 of its two ends are
    recorded; resume catches a change of size, start or end (not one in the middle, as documented)."""
    import hashlib

    from spibatch import rundir

    monkeypatch.setattr(rundir, "FULL_HASH_LIMIT", 1000)
    monkeypatch.setattr(rundir, "ENDS_BYTES", 100)
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(bytes(range(200)) * 5)                         # 1000 bytes: hashed whole
    data = bytearray(bytes(range(256)) * 10)                          # 2560 bytes
    big.write_bytes(data)
    run = create_run_dir("exp", tmp_path / "runs", command=["spibatch"])
    run.add_inputs(small, big)
    run.finish()
    inputs = json.loads(run.file("provenance.json").read_text())["inputs"]
    assert inputs[str(small.resolve())] == sha256_file(small)
    ends = hashlib.sha256(bytes(data[:100]) + bytes(data[-100:])).hexdigest()
    assert inputs[str(big.resolve())] == f"size-and-ends:2560:{ends}"

    data[1200] ^= 0xFF                                                # the middle: not seen
    big.write_bytes(data)
    rundir.reopen_run_dir(run.path, command=["spibatch"], unchanged=(small, big)).finish()
    data[-1] ^= 0xFF                                                  # the end: refused
    big.write_bytes(data)
    with pytest.raises(InputError, match="changed since the run started"):
        rundir.reopen_run_dir(run.path, command=["spibatch"], unchanged=(small, big))
    data[-1] ^= 0xFF
    big.write_bytes(data + b"x")                                      # the size: refused
    with pytest.raises(InputError, match="changed since the run started"):
        rundir.reopen_run_dir(run.path, command=["spibatch"], unchanged=(big,))
