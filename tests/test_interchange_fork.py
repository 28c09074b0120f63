"""spibatch.parsl_lean.interchange_fork: Parsl's interchange is a fork of the driver made before Parsl starts (no
second import of Parsl), keeps nothing of the driver's (files, buffered output, handlers), dies with the driver,
and is not made where a fork would be unsafe."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("parsl", reason="Parsl not installed (pip install '.[platform]')")

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}

DRIVER = textwrap.dedent("""
    import os, sys, threading, time
    from pathlib import Path
    folder = Path(sys.argv[1])
    if "thread" in sys.argv:
        threading.Thread(target=threading.Event().wait, args=(60,), daemon=True).start()
    held = open(folder / "held.txt", "w")          # a file of the driver's, its write still in the buffer
    held.write("written once\\n")
    sys.stdout.write("said once\\n")                # stdout is a pipe: block-buffered, not flushed yet
    from platform_helpers import local_parsl
    from parsl import python_app
    from spibatch.backends import TASKS_LABEL
    from spibatch.parsl_shutdown import shutdown
    dfk = local_parsl(folder)
    proc = dfk.executors[TASKS_LABEL].interchange_proc
    print("interchange", proc.pid, type(proc).__name__, flush=True)
    fds = sorted(os.readlink(f"/proc/{proc.pid}/fd/{n}") for n in os.listdir(f"/proc/{proc.pid}/fd"))
    print("files", *[f for f in fds if str(folder / "held.txt") in f], flush=True)
    with open(f"/proc/{proc.pid}/stat") as f:
        print("parent", int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid(), flush=True)
    print("answer", python_app(lambda: 6 * 7, executors=[TASKS_LABEL])().result(), flush=True)
    if "kill-me" in sys.argv:
        time.sleep(120)
    shutdown(dfk)
    print("ended", proc.poll() is not None, flush=True)
    held.close()
    """)


def driver(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    done = subprocess.run([sys.executable, str(script), str(tmp_path), *args], capture_output=True, text=True,
                          env=ENV, timeout=180, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return done


def said(done: subprocess.CompletedProcess, word: str) -> list[str]:
    return next(line.split()[1:] for line in done.stdout.splitlines() if line.split()[:1] == [word])


def test_the_interchange_is_a_fork_of_the_driver_that_keeps_none_of_its_files_and_runs_tasks(tmp_path):
    done = driver(tmp_path)
    assert said(done, "interchange")[1] == "ForkedProcess"
    assert said(done, "parent") == ["True"]
    assert said(done, "files") == []                 # the driver's open file is not held by the interchange
    assert said(done, "answer") == ["42"]
    assert said(done, "ended") == ["True"]           # Parsl's shutdown ends it (terminate + wait on the fork)
    assert done.stdout.count("said once") == 1       # the driver's buffered output is not printed twice
    assert (tmp_path / "held.txt").read_text() == "written once\n"
    logs = list((tmp_path / "run" / "runinfo").glob("*/tasks/interchange.log"))
    assert logs and "Registered manager" in logs[0].read_text()


def test_with_a_thread_running_parsl_starts_interchange_py_as_before(tmp_path):
    done = driver(tmp_path, "thread")
    assert said(done, "interchange")[1] == "Popen"
    assert said(done, "parent") == ["True"]
    assert said(done, "answer") == ["42"]


def test_the_forked_interchange_dies_with_a_killed_driver(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), "kill-me"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=ENV, cwd=tmp_path)
    try:
        pid = None
        for line in proc.stdout:
            if line.startswith("interchange"):
                pid = int(line.split()[1])
            if line.startswith("answer"):
                break
        assert pid is not None and Path(f"/proc/{pid}").exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2] \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    subprocess.run(["pkill", "-TERM", "-f", str(tmp_path / "run")], check=False)   # the worker pool it left


def test_a_zygote_that_is_never_started_ends_when_released():
    code = textwrap.dedent("""
        import os
        from types import SimpleNamespace
        from spibatch.parsl_lean import interchange_fork
        words = ["python3", "-m", "spibatch.parsl_lean", "interchange.py"]
        executors = [SimpleNamespace(interchange_launch_cmd=list(words)), SimpleNamespace(interchange_launch_cmd=["x"])]
        print(interchange_fork.prepare(executors, words), executors[1].interchange_launch_cmd == ["x"])
        zygote = executors[0].interchange_launch_cmd.zygote
        print(zygote.alive())
        interchange_fork.release(executors)
        import time
        for _ in range(200):
            if not zygote.alive():
                break
            time.sleep(0.01)
        print(zygote.alive())
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "True", "True", "False"]


def run_code(code: str, shell_prefix: str = "") -> subprocess.CompletedProcess:
    """``code`` in a fresh Python (single-threaded, as a driver is when Parsl starts), through bash when
    ``shell_prefix`` (e.g. ``exec 0<&-;``) is given."""
    if shell_prefix:
        args = ["bash", "-c", f'{shell_prefix} exec "$0" -c "$1"', sys.executable, code]
    else:
        args = [sys.executable, "-c", code]
    return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=180)


def test_the_interchanges_traceback_reaches_descriptor_2_whatever_the_drivers_sys_stderr_was():
    """The zygote writes through descriptors 1 and 2 as interchange.py does, not through the driver's sys.stderr
    object (here on a descriptor of its own, which the zygote points at /dev/null)."""
    done = run_code(textwrap.dedent("""
        import os, pickle, subprocess, sys
        from types import SimpleNamespace
        sys.stderr = os.fdopen(os.dup(2), "w")
        from spibatch.parsl_lean import interchange_fork
        import parsl
        words = [sys.executable, "-m", "spibatch.parsl_lean", "interchange.py"]
        executor = SimpleNamespace(interchange_launch_cmd=list(words))
        assert interchange_fork.prepare([executor], words) == 1
        from parsl.executors.high_throughput import executor as module
        proc = module.subprocess.Popen(executor.interchange_launch_cmd, stdin=subprocess.PIPE)
        proc.stdin.write(pickle.dumps({"no_such_setting": 1}))
        proc.stdin.close()
        print(type(proc).__name__, proc.wait(30))
        """))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ForkedProcess", "1"]
    assert "no_such_setting" in done.stderr


def test_a_driver_started_with_stdin_closed_still_hands_the_interchange_its_config():
    """os.pipe() gives descriptor 0 back to a driver started with stdin closed, which the zygote then pointed at
    /dev/null: the config was lost (the zygote ended, or Parsl waited 120 s for an interchange that never ran)."""
    done = run_code(textwrap.dedent("""
        import os, pickle, subprocess, sys
        from types import SimpleNamespace
        from spibatch.parsl_lean import interchange_fork
        import parsl
        words = [sys.executable, "-m", "spibatch.parsl_lean", "interchange.py"]
        executor = SimpleNamespace(interchange_launch_cmd=list(words))
        assert interchange_fork.prepare([executor], words) == 1
        import time
        time.sleep(0.5)   # the zygote has read its pipe by now
        from parsl.executors.high_throughput import executor as module
        proc = module.subprocess.Popen(executor.interchange_launch_cmd, stdin=subprocess.PIPE)
        proc.stdin.write(pickle.dumps({"no_such_setting": 1}))
        proc.stdin.close()
        print(type(proc).__name__, proc.wait(30))
        """), shell_prefix="exec 0<&-;")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ForkedProcess", "1"]      # the config reached the fork: Parsl's error on it
    assert "no_such_setting" in done.stderr


def test_a_load_that_fails_after_one_interchange_started_stops_it(tmp_path):
    """Parsl starts the executors one by one; when a later one fails, the interchange already forked has no owner
    token (spibatch.owners) to be found by: load() stops it."""
    done = run_code(textwrap.dedent(f"""
        import sys
        from pathlib import Path
        folder = Path({str(tmp_path)!r})
        (folder / "run").mkdir()
        (folder / "site.yaml").write_text("name: t\\nprovider: local\\nworkers: 1\\n")
        from spibatch.backends import load_site, provider_for
        from spibatch.parsl_shutdown import load
        config = provider_for(load_site(folder / "site.yaml")).parsl_config(folder / "run")
        from parsl.executors import HighThroughputExecutor
        broken = HighThroughputExecutor(label="second", encrypted=False,
                                        interchange_launch_cmd=list(config.executors[0].interchange_launch_cmd))
        broken.cert_dir = "/nonexistent"     # its start fails (after the first executor's interchange runs)
        config._executors = list(config.executors) + [broken]
        try:
            load(config)
        except Exception as exc:
            print("failed", type(exc).__name__)
        first = config.executors[0].interchange_proc
        print(type(first).__name__, first.poll() is not None)
        """))
    assert done.returncode == 0, done.stderr
    assert "failed" in done.stdout
    assert done.stdout.split()[-2:] == ["ForkedProcess", "True"]
