"""spibatch.parsl_lean.pool_fork: the local site's worker pool is a fork of the driver made before Parsl starts (no
fresh interpreter importing Parsl again), keeps Parsl's provider's files and process group, stops its whole group
when the driver dies, and is not made where the block needs a shell or a fork would be unsafe."""

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
    if "omp" in sys.argv:                           # OpenMP's thread pool running in the driver before Parsl starts
        import numba
        kernels = {}
        exec(TASKS["parallel"], kernels)
        kernels["parallel"]()
        print("layer", numba.threading_layer(), flush=True)
    held = open(folder / "held.txt", "w")          # a file of the driver's: not the pool's
    from platform_helpers import app_by_value
    from spibatch.backends import TASKS_LABEL, load_site, provider_for
    from spibatch.parsl_shutdown import load, shutdown
    site = folder / "site.yaml"
    init = "local:\\n  worker_init: export SPIBATCH_TEST_INIT=1\\n" if "init" in sys.argv else ""
    site.write_text("name: t\\nprovider: local\\nworkers: 2\\n" + init)
    (folder / "run").mkdir()
    dfk = load(provider_for(load_site(site)).parsl_config(folder / "run"))
    provider = dfk.executors[TASKS_LABEL].provider
    group, jobname, sigint_ignored = app_by_value(TASKS["who"], "who")().result()
    block = next(iter(provider.resources))
    print("block", block, sorted(provider.forked), flush=True)
    print("task", group, bool(jobname), flush=True)
    print("sigint-ignored", sigint_ignored, flush=True)
    with open(f"/proc/{block}/stat") as f:
        print("parent", int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid(), flush=True)
    members = [p for p in os.listdir("/proc") if p.isdigit() and os.path.exists(f"/proc/{p}/stat")
               and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[2] == str(group)]
    print("members", len(members), flush=True)
    print("files", *[f for p in members for f in (os.readlink(f"/proc/{p}/fd/{n}") for n in os.listdir(f"/proc/{p}/fd"))
                     if f.endswith("held.txt")], flush=True)
    if "omp" in sys.argv:
        print("parallel", app_by_value(TASKS["parallel"], "parallel")().result(timeout=120), flush=True)
    if "stubborn" in sys.argv:                      # a task leaves a process that ignores SIGTERM
        print("stubborn", app_by_value(TASKS["stubborn"], "stubborn")().result(), flush=True)
    if "kill-pool" in sys.argv:                     # the pool alone dies: its leftovers must not outlive the block
        import signal
        pool = int(open(f"/proc/{block}/task/{block}/children").read().split()[0])
        os.kill(pool, signal.SIGKILL)
        print("killed-pool", pool, flush=True)
        time.sleep(120)
    if "kill-me" in sys.argv:
        time.sleep(120)
    shutdown(dfk)
    zombies = [p for p in os.listdir("/proc") if p.isdigit() and os.path.exists(f"/proc/{p}/stat")
               and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[:2] == ["Z", str(os.getpid())]]
    print("zombies", len(zombies), flush=True)      # the block's zygote reaped by the shutdown
    time.sleep(0.5)
    print("status", provider.status([block])[0].state.name, flush=True)
    print("script", Path(provider.resources[block]["script_path"]).is_file(), flush=True)
    """)

# the tasks the driver sends (by value: the workers cannot import this module)
TASKS = {
    "who": textwrap.dedent("""
        def who():
            import os
            ignored = int(open("/proc/self/status").read().split("SigIgn:")[1].split()[0], 16)
            return os.getpgid(0), os.environ.get("JOBNAME", ""), bool(ignored & 2)
        """),
    "parallel": textwrap.dedent("""
        def parallel():
            from numba import njit, prange
            @njit(parallel=True)
            def total(n):
                s = 0.0
                for i in prange(n):
                    s += i
                return s
            return total(1000)
        """),
    "stubborn": textwrap.dedent("""
        def stubborn():
            import subprocess, sys
            code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); "
                    "time.sleep(300)")
            proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
            proc.stdout.readline()
            return proc.pid
        """),
}
DRIVER = f"TASKS = {TASKS!r}\n" + DRIVER

def driver(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    done = subprocess.run([sys.executable, str(script), str(tmp_path), *args], capture_output=True, text=True,
                          env=ENV, timeout=180, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return done


def said(done: subprocess.CompletedProcess, word: str) -> list[str]:
    return next(line.split()[1:] for line in done.stdout.splitlines() if line.split()[:1] == [word])


def group_alive(group: int) -> list[int]:
    """The processes of process group ``group`` that have not ended (zombies left out)."""
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[2] == str(group) and fields[0] != "Z":
            alive.append(int(pid))
    return alive


def test_the_local_pool_is_a_fork_of_the_driver_in_a_group_of_its_own_that_shutdown_ends(tmp_path):
    done = driver(tmp_path)
    block, forked = said(done, "block")[0], said(done, "block")[1:]
    assert forked == [f"['{block}']"]
    assert said(done, "parent") == ["True"]
    assert said(done, "task") == [block, "True"]      # tasks run in the block's group, JOBNAME set as the script sets it
    assert int(said(done, "members")[0]) >= 4          # the block, the pool, its forkserver, workers
    assert said(done, "files") == []                   # no process of the block holds the driver's open file
    assert said(done, "sigint-ignored") == ["False"]   # tasks get SIGINT as a pool the shell started gives it
    assert said(done, "zombies") == ["0"]              # the shutdown reaped the block's zygote
    assert said(done, "status") == ["CANCELLED"]       # Parsl's shutdown cancelled the block: its group
    assert said(done, "script") == ["True"]            # the block's script is written, as Parsl's provider does
    assert group_alive(int(block)) == []
    logs = list((tmp_path / "run" / "runinfo").glob("*/tasks/interchange.log"))
    assert logs and "Registered manager" in logs[0].read_text()


@pytest.mark.parametrize("why", ["init", "thread"])
def test_a_block_that_needs_a_shell_or_a_driver_running_threads_is_started_by_parsls_provider(tmp_path, why):
    done = driver(tmp_path, why)
    assert said(done, "block")[1:] == ["[]"]
    assert said(done, "parent") == ["False"]           # bash's child, not the driver's
    assert said(done, "task")[1] == "True"


def started(tmp_path: Path, how: str, until: str) -> tuple[subprocess.Popen, int | None]:
    """The driver started with ``how``, read until its line ``until``; (the process, the block's group)."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), how], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=ENV, cwd=tmp_path)
    group = None
    for line in proc.stdout:
        if line.startswith("task"):
            group = int(line.split()[1])
        if line.startswith(until):
            break
    return proc, group


def running_member(group: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while group_alive(group) and time.monotonic() < deadline:
        time.sleep(0.1)
    return group_alive(group)


def test_a_killed_driver_takes_the_whole_forked_block_with_it(tmp_path):
    proc, group = started(tmp_path, "kill-me", "files")
    try:
        assert group is not None and len(group_alive(group)) >= 4   # the block, the pool, its forkserver, workers
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert running_member(group, 10) == []


def test_a_driver_running_openmp_threads_does_not_fork_its_pool(tmp_path):
    """numba's omp layer running in the driver before Parsl started: a forked pool's task using it hung for ever
    (GNU OpenMP does not survive a fork; the review).  Parsl's shell starts that block instead."""
    pytest.importorskip("numba", reason="numba not installed")
    done = driver(tmp_path, "omp")
    layer = said(done, "layer")[0]
    if layer not in ("omp", "tbb"):
        pytest.skip(f"numba's threading layer here is {layer}, which survives a fork")
    assert said(done, "block")[1:] == ["[]"]
    assert said(done, "parallel") == ["499500.0"]


def test_a_pool_that_dies_alone_leaves_no_process_of_its_block(tmp_path):
    """SIGKILL to the pool alone: its forkserver, resource tracker and manager lived on, untagged, after the driver
    and any resume (the review).  The zygote, their subreaper, stops the group once the pool ends."""
    proc, group = started(tmp_path, "kill-pool", "killed-pool")
    try:
        assert group is not None
        assert running_member(group, 15) == []
        ec = list((tmp_path / "run").rglob("*.sh.ec"))
        assert [p.read_text().strip() for p in ec] == ["137"]   # the pool's end, as the shell's $? says it
    finally:
        proc.kill()
        proc.wait(30)


def test_a_process_that_ignores_sigterm_is_killed_with_its_block(tmp_path):
    """A task's process that ignores SIGTERM outlived the forked block's one SIGTERM, untagged (the review): the
    zygote sends SIGKILL after its grace period."""
    done = driver(tmp_path, "stubborn")
    pid = int(said(done, "stubborn")[0])
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2] \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


PROVIDER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from spibatch.parsl_lean import import_parsl
    import_parsl()
    from spibatch.parsl_lean import pool_fork
    folder = Path(sys.argv[1])
    provider = pool_fork.ForkedLocalProvider(env={"PATH": os.environ["PATH"]})
    provider.script_dir = str(folder)
    executor = type("Executor", (), {"provider": provider})()
    print("prepared", pool_fork.prepare([executor]), flush=True)
    head = f"{sys.executable} -m spibatch.parsl_lean process_worker_pool.py"
    if "fail" in sys.argv:
        block = provider.submit(head + " --no-such-option", 1)
        print("forked", block in provider.forked, flush=True)
        deadline = time.monotonic() + 60
        while provider.status([block])[0].state.name == "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.05)
        status = provider.status([block])[0]
        print("status", status.state.name, status.exit_code, flush=True)
        print("script", provider.resources[block]["script_path"], flush=True)
        deadline = time.monotonic() + 10             # (the zygote ends once it has stopped its group)
        while Path(f"/proc/{block}").exists() and time.monotonic() < deadline:
            provider.status([block])
            time.sleep(0.05)
        print("reaped", not Path(f"/proc/{block}").exists(), flush=True)
    else:
        for words in (" -a 127.0.0.1 --port=54000", " -a $HOSTNAME", " -a x; rm -rf y"):
            print("words", repr(provider.pool_words(head + words, 1)), flush=True)
        print("words", repr(provider.pool_words(head + " -a x", 2)), flush=True)
        print("words", repr(provider.pool_words("python3 -m spibatch.parsl_lean process_worker_pool.py -a x", 1)))
        print("words", repr(provider.pool_words("apptainer exec img " + head, 1)), flush=True)
        pid = provider.zygote.pid
        pool_fork.release([executor])
        print("ended", not Path(f"/proc/{pid}").exists(), flush=True)
        print("words", repr(provider.pool_words(head + " -a x", 1)), flush=True)
    """)


def provider_run(tmp_path: Path, *args: str) -> list[list[str]]:
    script = tmp_path / "provider.py"
    script.write_text(PROVIDER)
    done = subprocess.run([sys.executable, str(script), str(tmp_path), *args], capture_output=True, text=True,
                          env=ENV, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert said(done, "prepared") == ["1"]
    return done


def test_a_forked_pool_that_fails_leaves_its_exit_code_and_words_where_parsls_provider_does(tmp_path):
    done = provider_run(tmp_path, "fail")
    assert said(done, "forked") == ["True"]
    assert said(done, "status") == ["FAILED", "2"]        # argparse's exit code, read from SCRIPT.ec
    script = said(done, "script")[0]
    assert "process_worker_pool.py: error:" in Path(script + ".err").read_text()   # the pool's stderr
    assert "--no-such-option" in Path(script).read_text()
    assert said(done, "reaped") == ["True"]               # the provider's status reaps its child


def test_what_a_fork_cannot_run_goes_to_parsls_provider_and_an_unused_zygote_ends(tmp_path):
    done = provider_run(tmp_path)
    words = [line.split(None, 1)[1] for line in done.stdout.splitlines() if line.startswith("words")]
    assert words == ["['process_worker_pool.py', '-a', '127.0.0.1', '--port=54000']",
                     "None",     # $HOSTNAME: the shell would expand it
                     "None",     # ; rm -rf y: a second command
                     "None",     # two pools a node: the launcher's loop
                     "None",     # another Python
                     "None",     # a container's prefix
                     "None"]     # the zygote is used up (released)
    assert said(done, "ended") == ["True"]
