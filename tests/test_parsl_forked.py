"""spibatch.parsl_lean.forked: the worker pool's forkserver and resource tracker are forks of the pool, made once
it has imported Parsl (no second import of Parsl, no fresh interpreter), and multiprocessing uses them as its own."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("parsl", reason="Parsl not installed (pip install '.[platform]')")

from spibatch import parsl_lean  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def run_script(path: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "spibatch.parsl_lean", str(path), *args], capture_output=True,
                          text=True, env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def test_the_pools_forkserver_and_resource_tracker_are_forks_of_the_pool_and_serve_its_children(tmp_path):
    """Started as Parsl's pool: the forkserver and the resource tracker are this process's children with its own
    command line (forked, not a new ``python -c``), the forkserver has the pool's module without having imported it
    (no ``-c`` preload: a fork), and a queue between the pool and a child started through it works both ways."""
    fake = tmp_path / parsl_lean.POOL_SCRIPT
    fake.write_text(textwrap.dedent(f"""
        import os, sys
        from multiprocessing import forkserver, resource_tracker
        from parsl.multiprocessing import SpawnContext

        def child(inbox, outbox):
            outbox.put((inbox.get(timeout=60) * 2, {parsl_lean.POOL_MODULE!r} in sys.modules, os.getppid()))

        def cmdline(pid):
            with open(f"/proc/{{pid}}/cmdline", "rb") as f:
                return f.read()

        if __name__ == '__main__':
            server, tracker = forkserver._forkserver._forkserver_pid, resource_tracker._resource_tracker._pid
            inbox, outbox = SpawnContext.Queue(), SpawnContext.Queue()
            p = SpawnContext.Process(target=child, args=(inbox, outbox))
            p.start()
            inbox.put(21)
            doubled, preloaded, parent = outbox.get(timeout=60)
            p.join(60)
            mine = cmdline(os.getpid())
            print(doubled, preloaded, parent == server, cmdline(server) == mine, cmdline(tracker) == mine,
                  p.exitcode, server, tracker)
        """))
    done = run_script(fake)
    words = done.stdout.split()
    assert words[:6] == ["42", "True", "True", "True", "True", "0"], (done.stdout, done.stderr)
    assert "started afresh" not in done.stderr
    server, tracker = int(words[6]), int(words[7])
    deadline = time.monotonic() + 10        # both end once the pool (the last holder of their pipes) has ended
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() and
                                              "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
                                              for pid in (server, tracker)):
        time.sleep(0.05)
    assert not Path(f"/proc/{server}").exists() or "Z" in Path(f"/proc/{server}/stat").read_text().split()[2]
    assert not Path(f"/proc/{tracker}").exists() or "Z" in Path(f"/proc/{tracker}/stat").read_text().split()[2]


def test_with_a_thread_running_nothing_is_forked_and_multiprocessing_starts_its_own(tmp_path):
    """A fork copies only the forking thread, with whatever locks the others hold: with a thread running,
    start_forkserver refuses (NotForked, nothing started), and the pool's start falls back to a forkserver
    multiprocessing starts itself, which still serves the pool's children."""
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent("""
        import threading
        from multiprocessing import forkserver, resource_tracker
        from spibatch.parsl_lean import forked
        stop = threading.Event()
        threading.Thread(target=stop.wait, daemon=True).start()
        try:
            forked.start_forkserver()
        except forked.NotForked as exc:
            print("refused", forkserver._forkserver._forkserver_pid, resource_tracker._resource_tracker._pid)
        stop.set()
        """))
    done = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, env=ENV, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["refused", "None", "None"]

    fake = tmp_path / parsl_lean.POOL_SCRIPT
    fake.write_text(textwrap.dedent("""
        import os
        from multiprocessing import forkserver
        from parsl.multiprocessing import SpawnContext

        def child():
            pass

        if __name__ == '__main__':
            p = SpawnContext.Process(target=child)
            p.start()
            p.join(60)
            with open(f"/proc/{forkserver._forkserver._forkserver_pid}/cmdline", "rb") as f:
                print(p.exitcode, b"forkserver import main" in f.read())
        """))
    threaded = tmp_path / "threaded"
    threaded.mkdir()
    (threaded / "sitecustomize.py").write_text(
        "import threading\nthreading.Thread(target=threading.Event().wait, args=(30,), daemon=True).start()\n")
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(threaded), ENV["PYTHONPATH"]])}
    done = subprocess.run([sys.executable, "-m", "spibatch.parsl_lean", str(fake)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "True"]
    assert "the forkserver is started afresh (2 threads run" in done.stderr


def test_a_worker_can_start_processes_of_its_own_with_the_forkserver_method(tmp_path):
    """The pool forks its forkserver while holding multiprocessing's forkserver lock: unless the fork frees it, every
    worker (a fork of the forkserver) inherits it taken, and a task that starts a process with the forkserver
    method waited on it for ever."""
    fake = tmp_path / parsl_lean.POOL_SCRIPT
    fake.write_text(textwrap.dedent("""
        import multiprocessing
        from parsl.multiprocessing import SpawnContext

        def grandchild(queue):
            queue.put("grandchild")

        def child(queue):
            process = multiprocessing.get_context("forkserver").Process(target=grandchild, args=(queue,))
            process.start()
            process.join(30)
            queue.put("child")

        if __name__ == '__main__':
            queue = SpawnContext.Queue()
            p = SpawnContext.Process(target=child, args=(queue,))
            p.start()
            try:
                print(queue.get(timeout=30), queue.get(timeout=30))
            finally:
                p.kill()
                p.join()
        """))
    done = run_script(fake)
    assert done.stdout.split() == ["grandchild", "child"]


def test_the_pools_registration_lists_a_few_packages_and_everyone_else_gets_the_whole_list(tmp_path):
    """Parsl's pool registers with every installed package's version (a METADATA read each: 0.13 CPU s here, a
    round trip each on a shared filesystem): its create_reg_message gets spibatch.parsl_lean.registration's few;
    any other caller (importlib's own entry_points, a task) the whole list."""
    fake = tmp_path / parsl_lean.POOL_SCRIPT
    fake.write_text(textwrap.dedent("""
        from importlib.metadata import distributions, entry_points

        def create_reg_message():
            return {d.metadata['Name']: d.version for d in distributions()}

        def somebody_else():
            return [d.metadata['Name'] for d in distributions()]

        if __name__ == '__main__':
            print(sorted(create_reg_message()))
            print(len(somebody_else()), len(entry_points(group="console_scripts")))
        """))
    reference = subprocess.run([sys.executable, "-c", "from importlib.metadata import distributions, entry_points; "
                                "print(len(list(distributions())), len(entry_points(group='console_scripts')))"],
                               capture_output=True, text=True, env=ENV, timeout=60)
    lines = run_script(fake).stdout.splitlines()
    reported = eval(lines[0])   # noqa: S307 - our own script's printed list
    assert "parsl" in reported and "numpy" in reported and len(reported) <= 10
    assert lines[1] == reference.stdout.strip() and int(lines[1].split()[0]) > len(reported)
