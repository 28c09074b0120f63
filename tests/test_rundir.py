"""Run folders: naming, provenance, refusing to overwrite, failure records, the one-writer lock, resume checks."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from spibatch.errors import InputError
from spibatch.rundir import open_run, read_lock, sha256_file


def test_new_run_dir_name_provenance_and_log(tmp_path):
    (tmp_path / "input.txt").write_text("abc")
    with open_run(name="exp", runs_dir=tmp_path / "runs", config_text="name: exp\n", command=["spibatch", "x"],
                  inputs=(tmp_path / "input.txt",), report=False) as run:
        with open_run(name="exp", runs_dir=tmp_path / "runs", command=["spibatch", "x"], report=False) as again:
            assert again.path != run.path                          # same second: a new name
        assert read_lock(run.path)["pid"] == os.getpid()           # held while the body runs
        logging.getLogger("spibatch").info("hello from the test")
        run.outputs["thing"] = run.file("thing.txt")
    assert run.path.parent == (tmp_path / "runs").resolve() and run.path.name.startswith("exp-")
    assert run.path.name.endswith("Z") and read_lock(run.path) is None   # released
    record = json.loads(run.layout.provenance.read_text())
    assert record["status"] == "completed" and record["command"] == ["spibatch", "x"]
    assert record["outputs"] == {"thing": str(run.file("thing.txt"))}
    assert record["inputs"] == {str((tmp_path / "input.txt").resolve()): sha256_file(tmp_path / "input.txt")}
    assert record["inputs"][str((tmp_path / "input.txt").resolve())] == \
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256("abc")
    assert record["versions"]["numpy"] and record["versions"]["spibatch"]
    assert record["finished"] >= record["started"]
    assert run.layout.config.read_text() == "name: exp\n"
    assert "hello from the test" in run.layout.log.read_text()


def test_failure_and_interruption_are_recorded_and_raised(tmp_path):
    with pytest.raises(ValueError):
        with open_run(runs_dir=tmp_path, command=["spibatch"], report=False) as run:
            raise ValueError("the model diverged\nsecond line")
    record = json.loads(run.layout.provenance.read_text())
    assert record["status"] == "failed" and record["error"] == "ValueError: the model diverged"
    assert read_lock(run.path) is None
    with pytest.raises(KeyboardInterrupt):
        with open_run(runs_dir=tmp_path, command=["spibatch"], report=False, resume_hint="do this") as run:
            raise KeyboardInterrupt
    assert json.loads(run.layout.provenance.read_text())["status"] == "interrupted"


def test_out_with_earlier_run_is_refused(tmp_path):
    out = tmp_path / "here"
    with open_run(runs_dir=tmp_path, out=out, command=["a"], report=False):
        pass
    before = (out / "provenance.json").read_text()
    with pytest.raises(InputError, match="already holds a run"):
        with open_run(runs_dir=tmp_path, out=out, command=["b"], report=False):
            pass
    assert (out / "provenance.json").read_text() == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        with open_run(runs_dir=tmp_path, out=tmp_path / "file", command=["c"], report=False):
            pass


def test_out_that_holds_other_files_is_refused_and_left_alone(tmp_path):
    """--out into a folder that is not a run but holds files (a user's own) would overwrite config.yaml,
    report.html, emc/...: refused, nothing touched; an empty folder, or one a killed start left (its lock and
    config), is used."""
    out = tmp_path / "mine"
    (out / "emc").mkdir(parents=True)
    (out / "config.yaml").write_text("mine")
    (out / "report.html").write_text("mine")
    with pytest.raises(InputError, match=r"not empty \(config.yaml, emc, report.html\)"):
        with open_run(runs_dir=tmp_path, out=out, command=["a"], report=False):
            pass
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "emc", "report.html"]
    assert (out / "config.yaml").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    with open_run(runs_dir=tmp_path, out=empty, command=["b"], report=False):
        pass
    assert (empty / "provenance.json").is_file()


def test_a_second_writer_is_refused_and_a_stale_lock_reported(tmp_path, caplog):
    """One owner at a time: a second writer gets one line naming the owner and writes nothing; a lock whose
    process is gone is refused as stale for a new writer and taken over, with a warning, by a resume."""
    out = tmp_path / "run"
    with open_run(runs_dir=tmp_path, out=out, command=["first"], report=False) as run:
        before = run.layout.provenance.read_text()
        with pytest.raises(InputError, match=f"another process writes into this run folder \\(pid {os.getpid()}"):
            with open_run(resume=out, command=["second"], report=False):
                pass
        assert run.layout.provenance.read_text() == before
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    (out / "lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(),
                                          "started": "then", "command": ["killed"]}))
    from spibatch.rundir import take_lock

    with pytest.raises(InputError, match="stale lock"):
        take_lock(out, ["third"])
    assert read_lock(out)["command"] == ["killed"]
    with caplog.at_level(logging.WARNING, logger="spibatch"):
        with open_run(resume=out, command=["fourth"], report=False):
            assert read_lock(out)["pid"] == os.getpid()
    assert f"taking over the lock of pid {int(dead.stdout)}" in caplog.text and read_lock(out) is None


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(done.stdout)


def test_a_resume_refuses_a_run_folder_holding_links_and_the_log_never_follows_one(tmp_path):
    """A link put into a run folder (log.txt -> a file elsewhere) would take the resume's writes out of it:
    refused in one line, the file it points at untouched; log.txt is opened without following a link."""
    from spibatch.rundir import log_to

    with open_run(runs_dir=tmp_path, out=tmp_path / "run", command=["a"], report=False) as run:
        pass
    victim = tmp_path / "victim.txt"
    victim.write_text("precious line\n")
    (run.path / "log.txt").unlink()
    os.symlink(victim, run.path / "log.txt")
    with pytest.raises(InputError, match="log.txt is a symbolic link"):
        with open_run(resume=run.path, command=["b"], report=False):
            pass
    assert victim.read_text() == "precious line\n" and read_lock(run.path) is None
    with pytest.raises(OSError):
        log_to(run.path / "log.txt")
    assert victim.read_text() == "precious line\n"


@pytest.mark.parametrize("where", ["lock", "provenance.json", "stages/emc.json", "emc/checkpoint.h5"])
def test_a_resume_refuses_a_pipe_or_a_deep_link_in_the_run_folder(tmp_path, where):
    """A FIFO named lock, provenance.json or a stage's record blocked a resume (and `spibatch stop`) for good; a
    link below the top of the folder took a resume's writes elsewhere: one line, before anything is read."""
    from spibatch.run_checks import read_provenance

    with open_run(runs_dir=tmp_path, out=tmp_path / "run", command=["a"], report=False) as run:
        pass
    target = run.path / where
    target.parent.mkdir(exist_ok=True)
    target.unlink(missing_ok=True)
    os.mkfifo(target)
    with pytest.raises(InputError, match=f"{where} is not a regular file .a FIFO"):
        with open_run(resume=run.path, command=["b"], report=False):
            pass
    target.unlink()
    os.symlink(tmp_path / "elsewhere", target)
    with pytest.raises(InputError, match=f"{where} is a symbolic link"):
        read_provenance(run.path, "RUN_DIR")


@pytest.mark.parametrize("edit, words", [
    (lambda r: [], "provenance.json holds a list, not a run's record"),
    (lambda r: r | {"inputs": []}, "inputs holds a list, not a dict"),
    (lambda r: r | {"inputs": {"/x": 5}}, "inputs or resumed hold values of the wrong kind"),
    (lambda r: r | {"resumed": 5}, "resumed holds an int, not a list")])
def test_an_edited_provenance_record_is_one_line(tmp_path, edit, words):
    """provenance.json of the wrong shape (valid JSON) gave AttributeError / TypeError tracebacks on a resume."""
    with open_run(runs_dir=tmp_path, out=tmp_path / "run", command=["a"], report=False) as run:
        pass
    record = json.loads(run.layout.provenance.read_text())
    run.layout.provenance.write_text(json.dumps(edit(record)))
    before = run.layout.provenance.read_bytes()
    with pytest.raises(InputError, match=words):
        with open_run(resume=run.path, command=["b"], report=False):
            pass
    assert run.layout.provenance.read_bytes() == before and read_lock(run.path) is None


def test_the_config_a_run_started_with_is_recorded_and_checked(tmp_path):
    """`spibatch resume` ran the remaining stages with a config.yaml edited after the run started."""
    from spibatch.run_checks import check_config_unchanged, read_provenance

    with open_run(runs_dir=tmp_path, out=tmp_path / "run", config_text="name: a\n", command=["a"],
                  report=False) as run:
        pass
    record = read_provenance(run.path)
    check_config_unchanged(record, run.layout.config)                    # as written: accepted
    run.layout.config.write_text("name: b\n")
    with pytest.raises(InputError, match="config.yaml: RUN_DIR: changed since the run started"):
        check_config_unchanged(record, run.layout.config)
    check_config_unchanged({k: v for k, v in record.items() if k != "config_sha256"}, run.layout.config)  # older runs


def test_a_lock_whose_token_names_another_process_stops_nothing(tmp_path):
    """Taking over a killed owner's lock stops what that owner left running, found by the lock's token; a token
    that is not the form the owner's pid makes (a lock changed by hand to another run's token) stops nothing."""
    with open_run(runs_dir=tmp_path, out=tmp_path / "run", command=["a"], report=False) as run:
        pass
    other = f"{os.getpid()}-0123456789abcdef"   # a live run's token (this process's pid), not the dead owner's
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                 env=dict(os.environ, SPIBATCH_RUN_OWNER=other))
    try:
        (run.path / "lock").write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(),
                                                   "started": "then", "command": ["killed"], "token": other}))
        with pytest.raises(InputError, match="is not one its owner .* made: not stopping anything"):
            with open_run(resume=run.path, command=["b"], report=False):
                pass
        assert bystander.poll() is None                     # still running
        assert read_lock(run.path)["token"] == other        # the lock as it was
    finally:
        bystander.kill()
        bystander.wait()


def test_a_refused_resume_touches_nothing(tmp_path):
    data = tmp_path / "data.bin"
    data.write_bytes(b"original")
    with open_run(runs_dir=tmp_path, out=tmp_path / "run", command=["a"], inputs=(data,), report=False) as run:
        pass
    files = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    data.write_bytes(b"other data, same purpose")
    with pytest.raises(InputError, match="changed since the run started"):
        with open_run(resume=run.path, command=["b"], inputs=(data,), report=False):
            pass

    def refuse():
        raise InputError("settings differ")

    data.write_bytes(b"original")
    with pytest.raises(InputError, match="settings differ"):
        with open_run(resume=run.path, command=["c"], inputs=(data,), check=refuse, report=False):
            pass
    assert {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()} == files


def test_large_inputs_are_recorded_by_size_and_ends(tmp_path, monkeypatch):
    """Above FULL_HASH_LIMIT an input is not read whole: its size and the SHA-256 of its two ends are
    recorded; resume catches a change of size, start or end (not one in the middle, as documented)."""
    import hashlib

    from spibatch.io import fingerprint

    monkeypatch.setattr(fingerprint, "FULL_HASH_LIMIT", 1000)
    monkeypatch.setattr(fingerprint, "ENDS_BYTES", 100)
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(bytes(range(200)) * 5)                         # 1000 bytes: hashed whole
    data = bytearray(bytes(range(256)) * 10)                          # 2560 bytes
    big.write_bytes(data)
    with open_run(runs_dir=tmp_path / "runs", command=["spibatch"], inputs=(small, big), report=False) as run:
        pass
    inputs = json.loads(run.layout.provenance.read_text())["inputs"]
    assert inputs[str(small.resolve())] == sha256_file(small)
    ends = hashlib.sha256(bytes(data[:100]) + bytes(data[-100:])).hexdigest()
    assert inputs[str(big.resolve())] == f"size-and-ends:2560:{ends}"

    data[1200] ^= 0xFF                                                # the middle: not seen
    big.write_bytes(data)
    with open_run(resume=run.path, command=["spibatch"], inputs=(small, big), report=False):
        pass
    data[-1] ^= 0xFF                                                  # the end: refused
    big.write_bytes(data)
    with pytest.raises(InputError, match="changed since the run started"):
        with open_run(resume=run.path, command=["spibatch"], inputs=(small, big), report=False):
            pass
    data[-1] ^= 0xFF
    big.write_bytes(data + b"x")                                      # the size: refused
    with pytest.raises(InputError, match="changed since the run started"):
        with open_run(resume=run.path, command=["spibatch"], inputs=(big,), report=False):
            pass


def test_a_signal_a_library_wrapped_in_its_own_error_still_marks_the_run_interrupted(tmp_path):
    """A signal landing inside a compiled call (a Numba kernel) can surface as "SystemError: ... returned a result
    with an exception set" caused by our KeyboardInterrupt: the run is marked interrupted, not failed, and the
    KeyboardInterrupt (with its resume hint) is what leaves, so the command exits 128 + the signal."""
    import json

    import pytest

    from spibatch.rundir import open_run

    with pytest.raises(KeyboardInterrupt) as caught:
        with open_run(out=tmp_path / "run", command=["spibatch", "emc"], resume_hint="spibatch emc c.yaml --resume r",
                      report=False):
            try:
                raise KeyboardInterrupt("SIGTERM")
            except KeyboardInterrupt as stop:
                raise SystemError("CPUDispatcher(<function kernel>) returned a result with an exception set") from stop
    assert caught.value.args == ("SIGTERM",) and caught.value.resume_hint == "spibatch emc c.yaml --resume r"
    record = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert record["status"] == "interrupted" and record["error"] == "interrupted (SIGTERM)"

    with pytest.raises(SystemError):     # the same error without a signal behind it is a failure
        with open_run(out=tmp_path / "other", command=["spibatch", "emc"], report=False):
            raise SystemError("returned a result with an exception set")
    assert json.loads((tmp_path / "other" / "provenance.json").read_text())["status"] == "failed"


def test_a_resume_removes_what_killed_writers_left_half_written(tmp_path):
    """SIGKILL during an atomic write leaves its temporary ``.NAME.*.part`` (found by the fault loop: one of
    provenance.json): a resume, once its checks pass and it holds the lock, deletes them wherever they are in the
    folder -- but not another process's lock record being linked right now (``.lock.*.new``), and nothing when it
    is refused."""
    with open_run(runs_dir=tmp_path, out=tmp_path / "run", command=["a"], report=False) as run:
        pass
    left = [run.path / ".provenance.json.hmxq.part", run.path / "emc" / ".output_003.h5.ab12.part",
            run.path / "stages" / ".emc.json.zz9.part"]
    for part in left:
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(b"half")
    linking = run.path / ".lock.4242.token.new"
    linking.write_text("{}")

    def refuse():
        raise InputError("settings differ")

    with pytest.raises(InputError):
        with open_run(resume=run.path, command=["b"], check=refuse, report=False):
            pass
    assert all(p.exists() for p in left)                      # a refused resume touches nothing
    with open_run(resume=run.path, command=["c"], report=False):
        assert not any(p.exists() for p in left) and linking.exists()
    assert "which a killed run was writing" in (run.path / "log.txt").read_text()


def test_an_unreadable_stage_marker_is_said_and_the_stage_counts_as_not_finished(tmp_path, caplog):
    from spibatch import stages
    from spibatch.layout import RunLayout

    run = RunLayout(tmp_path)
    run.marker("emc").parent.mkdir(parents=True)
    run.marker("emc").write_text("{bad")
    run.marker("phase").write_text('{"status": "done"}')
    logger = logging.getLogger("spibatch")
    with caplog.at_level(logging.WARNING, logger="spibatch"):
        logger.propagate, before = True, logger.propagate
        try:
            assert stages.finished(run, "emc") is None and stages.finished(run, "phase") == {"status": "done"}
        finally:
            logger.propagate = before
    assert any("marker" in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records)


def test_out_into_a_run_being_written_names_its_writer(tmp_path):
    """A second `spibatch emc --out` into a folder whose run still runs: the line names the writer, as the README's
    one-writer rule says (it said only "already holds a run")."""
    import json
    import os
    import socket

    from spibatch.rundir import check_new_run_path

    (tmp_path / "provenance.json").write_text("{}")
    (tmp_path / "lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                               "started": "2026-12-06T14:00:00Z", "command": ["spibatch"]}))
    with pytest.raises(InputError, match=f"already holds a run \\(pid {os.getpid()} on "):
        check_new_run_path(tmp_path)


def test_a_lock_that_is_not_a_record_and_a_config_path_holding_braces(tmp_path):
    """The review: a lock holding the JSON 123 made `--out` into the run a traceback; a config path holding "{run}"
    had it replaced in the resume line by the run folder."""
    from spibatch.rundir import RUN_MADE, check_new_run_path
    from spibatch.stages.standalone import _resume_hint

    (tmp_path / "provenance.json").write_text("{}")
    (tmp_path / "lock").write_text("123")
    with pytest.raises(InputError, match="already holds a run;"):
        check_new_run_path(tmp_path)
    hint = _resume_hint(["emc"], "/data/x{run}y/c.yaml", None, None)
    assert hint.replace(RUN_MADE, "/runs/r1") == "spibatch emc '/data/x{run}y/c.yaml' --resume /runs/r1"   # quoted: braces


def test_another_writers_lock_on_its_way_in_is_not_content(tmp_path):
    """Two `spibatch emc --out SAME` at once: the loser saw the winner's lock record before it was linked under
    its name and said "is not empty" (CI, once) instead of naming the owner; the lock decides now."""
    from spibatch.rundir import check_new_run_path

    (tmp_path / ".lock.4242.0123abcd.new").write_text("{}")
    assert check_new_run_path(tmp_path) == tmp_path


def test_resume_hints_are_shell_quoted(tmp_path):
    """A run folder or config with a space (or a quote) in its path: the printed resume line is one a shell runs as
    is -- `shlex.split` gives the path back whole (it printed `spibatch resume /x/my run`: two arguments)."""
    import shlex
    from pathlib import Path

    import pytest

    from spibatch.rundir import open_run
    from spibatch.stages.standalone import _resume_hint

    folder = tmp_path / "beam time's runs"
    with pytest.raises(KeyboardInterrupt) as caught:
        with open_run(runs_dir=folder, command=["spibatch", "emc"], report=False,
                      resume_hint=_resume_hint(["emc"], tmp_path / "my config.yaml", None, None)):
            raise KeyboardInterrupt("SIGTERM")
    words = shlex.split(caught.value.resume_hint)
    made = Path(words[-1])
    assert words[:2] == ["spibatch", "emc"] and words[2] == str(tmp_path / "my config.yaml"), words
    assert words[3] == "--resume" and made.parent == folder and made.is_dir(), words


def _sleeper(env_token: str | None, *words: str) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("SPIBATCH_RUN_OWNER", None)
    if env_token:
        env["SPIBATCH_RUN_OWNER"] = env_token
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *words], env=env)


def test_a_resume_killed_after_its_takeover_leaves_the_first_owners_processes_to_the_next(tmp_path):
    """The review: a resume killed right after it took a killed owner's lock over wrote a lock naming itself only,
    and the next resume left the first owner's MPI job writing beside its own.  The lock now remembers the killed
    owners whose processes may still run, and the next resume stops them."""
    with open_run(runs_dir=tmp_path, out=tmp_path / "run", command=["a"], report=False) as run:
        pass
    first, second = _dead_pid(), _dead_pid()
    first_token, second_token = f"{first}-0123456789abcdef", f"{second}-fedcba9876543210"
    left = _sleeper(first_token)
    try:
        host = socket.gethostname()
        (run.path / "lock").write_text(json.dumps({
            "pid": second, "host": host, "started": "then", "command": ["resume"], "token": second_token,
            "earlier": [{"pid": first, "host": host, "token": first_token}]}))
        with open_run(resume=run.path, command=["b"], report=False):
            assert left.wait(30) is not None                  # stopped before the body ran
    finally:
        left.kill()
        left.wait()


def test_a_lock_naming_a_live_runs_token_as_a_killed_owner_stops_nothing(tmp_path, caplog):
    """A review: a lock file edited to list another live run's token among its 'earlier' killed owners made a resume
    SIGTERM that run's processes.  A killed owner's pid is gone; one that runs is not stopped by."""
    with open_run(runs_dir=tmp_path, out=tmp_path / "run", command=["a"], report=False) as run:
        pass
    driver = _sleeper(None)                                   # the other run's driver, alive
    victim_token = f"{driver.pid}-0123456789abcdef"
    victim = _sleeper(victim_token)                           # a process of that run (an MPI rank)
    try:
        dead = _dead_pid()
        host = socket.gethostname()
        (run.path / "lock").write_text(json.dumps({
            "pid": dead, "host": host, "started": "then", "command": ["resume"], "token": f"{dead}-fedcba9876543210",
            "earlier": [{"pid": driver.pid, "host": host, "token": victim_token}]}))
        with caplog.at_level(logging.WARNING, logger="spibatch"):
            with open_run(resume=run.path, command=["b"], report=False):
                time.sleep(0.5)
                assert victim.poll() is None and driver.poll() is None
        assert f"not stopping by the token of pid {driver.pid}" in caplog.text
    finally:
        for each in (victim, driver):
            each.kill()
            each.wait()


def test_a_lock_taken_over_names_the_killed_owners_it_replaced(tmp_path):
    from spibatch.lock import take_lock

    with open_run(runs_dir=tmp_path, out=tmp_path / "run", command=["a"], report=False) as run:
        pass
    dead = _dead_pid()
    (run.path / "lock").write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "started": "then",
                                               "command": ["killed"], "token": f"{dead}-0123456789abcdef"}))
    record = take_lock(run.path, ["resume"], take_over_stale=True)
    assert read_lock(run.path)["earlier"] == [{"pid": dead, "host": socket.gethostname(),
                                              "token": f"{dead}-0123456789abcdef"}]
    assert record["took_over"]["pid"] == dead


def test_a_resume_stops_what_an_earlier_owner_left_naming_the_run_even_without_its_lock(tmp_path):
    """The review: with the killed owner's stale lock deleted by hand (as its error line once suggested), a resume
    stopped nothing and two EMC jobs wrote into one run.  Processes that a run owner started (a token in their
    environment) and that name the run folder are stopped; one the user started (no token) is left alone."""
    with open_run(runs_dir=tmp_path, out=tmp_path / "run", command=["a"], report=False) as run:
        pass
    orphan = _sleeper("12345-0123456789abcdef", "--logdir=" + str(run.path / "runinfo" / "000"))
    users = _sleeper(None, str(run.path / "log.txt"))
    other_run = _sleeper("12345-0123456789abcdef", str(run.path) + "2/x")
    try:
        time.sleep(0.3)
        with open_run(resume=run.path, command=["b"], report=False):
            assert orphan.wait(30) is not None
            assert users.poll() is None and other_run.poll() is None
    finally:
        for proc in (orphan, users, other_run):
            proc.kill()
            proc.wait()


def test_an_unreadable_or_foreign_lock_says_to_delete_it(tmp_path):
    """The review: a lock holding [1, 2] was a traceback in every command; an empty one said 'pid None on None'."""
    from spibatch.lock import take_lock

    for text in ("[1, 2]", "", "5"):
        (tmp_path / "lock").write_text(text)
        with pytest.raises(InputError, match=r"its lock cannot be read \(a lock file that cannot be read: not "
                           r"spibatch's record\); make sure no spibatch command writes into the run, then delete"):
            take_lock(tmp_path, ["x"], take_over_stale=True)


def test_the_owner_token_reaches_containers_and_is_taken_back(monkeypatch):
    """Apptainer with --cleanenv and docker pass no host variable: the token reaches an Apptainer container through
    APPTAINERENV_/SINGULARITYENV_ and a docker one by `-e SPIBATCH_RUN_OWNER` (a containerised stage run by the
    owner is then known as the owner's, and its processes are found by spibatch.owners)."""
    from spibatch import owners
    from spibatch.backends import Container
    from spibatch.backends.containers import prefix

    monkeypatch.setenv("APPTAINERENV_SPIBATCH_RUN_OWNER", "before")
    monkeypatch.delenv("SINGULARITYENV_SPIBATCH_RUN_OWNER", raising=False)
    with owners.Tagging("123-0123456789abcdef"):
        assert os.environ["APPTAINERENV_SPIBATCH_RUN_OWNER"] == "123-0123456789abcdef"
        assert os.environ["SINGULARITYENV_SPIBATCH_RUN_OWNER"] == "123-0123456789abcdef"
    assert os.environ["APPTAINERENV_SPIBATCH_RUN_OWNER"] == "before"
    assert "SINGULARITYENV_SPIBATCH_RUN_OWNER" not in os.environ
    words = prefix(Container(runtime="docker", image="i"), ["/r"])
    assert words[words.index("-e") + 1] == "SPIBATCH_RUN_OWNER"
