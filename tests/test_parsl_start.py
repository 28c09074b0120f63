"""Parsl's start, the floor of every first task result: spibatch.parsl_lean (Parsl's processes start without
the optional packages they never use, and a task still gets the real package when it imports one), and the
first block submitted as soon as the executors are up (spibatch.parsl_shutdown.load)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("parsl", reason="Parsl not installed (pip install '.[platform]')")

from spibatch import parsl_lean  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def run(code: str, *, stand_ins: bool) -> str:
    """``code`` in a fresh Python; with the stand-ins first on its path (as Parsl's processes have them)."""
    env = dict(ENV)
    if stand_ins:
        env["PYTHONPATH"] = os.pathsep.join([parsl_lean.STAND_INS, env["PYTHONPATH"]])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def installed(name: str) -> bool:
    return run(f"import importlib.util; print(importlib.util.find_spec({name!r}) is not None)",
               stand_ins=False) == "True"


@pytest.mark.parametrize("name", parsl_lean.HIDE)
def test_a_stand_in_is_missing_while_parsl_imports_and_real_afterwards(name):
    if not installed(name):
        pytest.skip(f"{name} is not installed")
    out = run(f"import parsl, sys; print({name!r} in sys.modules); import {name}; print({name}.__file__)",
              stand_ins=True).splitlines()
    assert out[0] == "False"                                   # parsl came up without it
    assert parsl_lean.STAND_INS not in out[1] and "site-packages" in out[1]   # a task gets the real package


DEFERRED_THEN_REAL = """
import inspect, sys
import parsl.executors.high_throughput.interchange, parsl.addresses
inspect.stack()                                # as Parsl's DataFlowKernel does: every module's __file__ asked
print(*(type(sys.modules[n]).__name__ for n in ("requests", "typeguard")))
import requests.adapters                       # a submodule: the real package under it
from typeguard import typechecked, check_type, TypeCheckError
try:
    check_type("a", int)
    print("unchecked")
except TypeCheckError:
    print("checked" if typechecked.__module__.startswith("typeguard") else typechecked.__module__)
print(parsl.addresses.requests.get.__module__, type(sys.modules["requests"]).__name__, requests.__file__)
"""


@pytest.mark.parametrize("stand_ins", [True, False])
def test_requests_and_typeguard_wait_until_parsl_has_loaded_then_are_the_real_ones(stand_ins):
    """Parsl's processes (the stand-ins on their path) and the driver (import_parsl) import Parsl with requests
    and typeguard deferred; what is imported or looked up after Parsl has loaded is the real package: a task's
    typeguard checks (and its typechecked is typeguard's), Parsl's own requests.get is requests'."""
    code = DEFERRED_THEN_REAL if stand_ins else \
        "from spibatch import parsl_lean; parsl_lean.import_parsl()\n" + DEFERRED_THEN_REAL
    out = run(code, stand_ins=stand_ins).splitlines()
    assert out[0] == "Deferred Deferred", out
    assert out[1] == "checked", out
    get_module, kind, path = out[2].split()
    assert get_module == "requests.api" and kind == "module" and "site-packages" in path, out


def test_parsl_turns_the_left_out_features_off_and_still_works():
    out = run("import parsl.providers.kubernetes.kube as k, parsl.providers.aws.aws as a; "
              "from parsl.serialize import serialize, deserialize; "
              "print(k._kubernetes_enabled, a._boto_enabled, deserialize(serialize(41)) + 1)", stand_ins=True)
    assert out == "False False 42"


def test_the_driver_leaves_out_what_its_site_never_needs():
    if not installed("boto3") or not installed("kubernetes"):
        pytest.skip("boto3 or kubernetes is not installed")
    out = run("import sys; from spibatch import parsl_lean; parsl_lean.import_parsl(); "
              "print('boto3' in sys.modules, 'kubernetes' in sys.modules); import boto3; print(boto3.__name__)",
              stand_ins=False).splitlines()
    assert out == ["False False", "boto3"]


def test_a_kubernetes_site_in_a_driver_that_loaded_parsl_without_the_client_gets_it(tmp_path):
    """One process: Parsl loaded lean (as for a local site: its Kubernetes module found no client), then a
    Kubernetes site's provider built -- Parsl's module gets the real client (it raised OptionalModuleMissing)."""
    if not installed("kubernetes"):
        pytest.skip("kubernetes is not installed (pip install '.[k8s]')")
    out = run("import sys; from pathlib import Path; from spibatch import parsl_lean; parsl_lean.import_parsl(); "
              "import parsl.providers.kubernetes.kube as k; print(k._kubernetes_enabled); "
              "from spibatch.backends.kubernetes import _parsl_provider_class; cls = _parsl_provider_class(); "
              "print(k._kubernetes_enabled, k.client.__name__, k.config.__name__)", stand_ins=False).splitlines()
    assert out == ["False", "True kubernetes.client kubernetes.config"]


def test_the_launch_commands_start_parsl_scripts_through_parsl_lean(tmp_path):
    from spibatch.backends import load_site, provider_for

    site = tmp_path / "site.yaml"
    site.write_text("name: t\nprovider: local\nworkers: 2\n")
    executor = provider_for(load_site(site)).parsl_config(tmp_path).executors[0]
    assert executor.interchange_launch_cmd == [sys.executable, "-m", "spibatch.parsl_lean", "interchange.py"]
    assert executor.launch_cmd.startswith(f"{sys.executable} -m spibatch.parsl_lean process_worker_pool.py ")


def test_main_runs_the_script_with_the_stand_ins_on_the_path_of_its_children(tmp_path):
    script = tmp_path / "show.py"
    script.write_text("import os, sys\nprint(os.environ['PYTHONPATH'].split(os.pathsep)[0], sys.argv[1:])\n")
    done = subprocess.run([sys.executable, "-m", "spibatch.parsl_lean", str(script), "--x", "1"], capture_output=True,
                          text=True, env=ENV, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [parsl_lean.STAND_INS, "['--x',", "'1']"]


def test_the_first_block_starts_at_load_not_at_the_strategys_next_tick(tmp_path):
    """A strategy period of 60 s: Parsl alone submits the first block at its first tick after the interchange is
    up, a minute after the start; here the block is submitted when load() returns, the timer back at 60 s, and an
    app's result comes in seconds (2 workers, a sqlalchemy import in the task: the real package in a worker)."""
    import time

    from parsl import python_app

    from spibatch.backends import TASKS_LABEL, load_site, provider_for
    from spibatch.parsl_shutdown import load, shutdown

    site = tmp_path / "site.yaml"
    site.write_text("name: t\nprovider: local\nworkers: 2\nlocal: {strategy_period_s: 60}\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    began = time.monotonic()
    dfk = load(provider_for(load_site(site)).parsl_config(run_dir))
    try:
        executor = dfk.executors[TASKS_LABEL]
        assert executor.blocks_to_job_id and dfk.job_status_poller.interval == 60
        assert dfk.config.strategy_period == 60

        code = ("def where_is(name):\n    import importlib.util, sys\n"
                "    if importlib.util.find_spec(name) is None:\n        return 'not installed'\n"
                "    __import__(name)\n    return sys.modules[name].__file__\n")
        namespace = {"__name__": "__main__"}   # sent by value: the workers cannot import this test module
        exec(code, namespace)
        where_is = namespace["where_is"]
        path = python_app(where_is, executors=[TASKS_LABEL])("sqlalchemy").result(timeout=50)
        assert time.monotonic() - began < 50
        assert path == "not installed" or ("site-packages" in path and "stand_ins" not in path)
    finally:
        shutdown(dfk)


def test_a_block_that_cannot_be_submitted_does_not_hold_load_up(tmp_path):
    """The provider refuses the block (as a scheduler that refuses a batch script): load() returns at once, and
    Parsl's own error handling fails the executor as it did before."""
    import time

    from spibatch.backends import TASKS_LABEL, load_site, provider_for
    from spibatch.parsl_shutdown import FIRST_BLOCKS_S, load, shutdown

    site = tmp_path / "site.yaml"
    site.write_text("name: t\nprovider: local\nworkers: 1\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = provider_for(load_site(site)).parsl_config(run_dir)

    def refuse(*args, **kwargs):
        raise RuntimeError("sbatch: error: refused (test)")

    config.executors[0].provider.submit = refuse
    began = time.monotonic()
    dfk = load(config)
    try:
        assert time.monotonic() - began < FIRST_BLOCKS_S
        executor = dfk.executors[TASKS_LABEL]
        deadline = time.monotonic() + 30
        while not executor.bad_state_is_set and time.monotonic() < deadline:
            time.sleep(0.1)
        assert executor.bad_state_is_set
    finally:
        shutdown(dfk)


def test_the_pools_children_are_forks_of_a_server_that_has_parsl_already(tmp_path):
    """A script named like Parsl's pool runs with parsl.multiprocessing.SpawnContext replaced by a forkserver
    context whose server preloaded the pool's module: a child it starts finds that module (and Parsl) already
    imported, finds the stand-ins on its path, its parent is the server (not the pool), and it gets a
    function of the script (as Parsl's workers get ``worker``) by reference."""
    fake = tmp_path / parsl_lean.POOL_SCRIPT
    fake.write_text(
        "import os, sys\n"
        "from parsl.multiprocessing import SpawnContext\n\n"
        "def child(queue):\n"
        f"    queue.put(({parsl_lean.POOL_MODULE!r} in sys.modules, 'parsl' in sys.modules, os.getppid(),\n"
        f"               {parsl_lean.STAND_INS!r} in sys.path))\n\n"
        "if __name__ == '__main__':\n"
        "    queue = SpawnContext.Queue()\n"
        "    p = SpawnContext.Process(target=child, args=(queue,))\n"
        "    p.start()\n"
        "    preloaded, has_parsl, parent, stand_ins = queue.get(timeout=60)\n"
        "    p.join(60)\n"
        "    print(SpawnContext.get_start_method(), preloaded, has_parsl, parent != os.getpid(), stand_ins,\n"
        "          p.exitcode)\n")
    done = subprocess.run([sys.executable, "-m", "spibatch.parsl_lean", str(fake)], capture_output=True, text=True,
                          env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["forkserver", "True", "True", "True", "True", "0"]


def test_other_scripts_keep_parsls_spawn_context(tmp_path):
    script = tmp_path / "interchange.py"
    script.write_text("import sys\nprint('parsl.multiprocessing' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-m", "spibatch.parsl_lean", str(script)], capture_output=True, text=True,
                          env=ENV, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_the_slurm_sites_executors_offer_this_hosts_addresses_and_ask_no_web_service(tmp_path, monkeypatch):
    """Parsl, given no address, adds this host's public one from api.ipify.org (up to 30 s where outbound HTTPS
    is dropped): the Slurm site's two executors offer the interfaces', hostname's and route's addresses only,
    and their interchanges listen on every interface (address None), as Parsl's default."""
    import parsl.addresses

    from spibatch.backends import load_site, provider_for

    asked = []
    monkeypatch.setattr(parsl.addresses, "address_by_query", lambda *a, **k: asked.append(a) or "203.0.113.9")
    site = tmp_path / "slurm.yaml"
    site.write_text("name: s\nprovider: slurm\nworkers: 2\nemc_mode: hpc\nslurm: {partition: debug}\n")
    executors = provider_for(load_site(site)).executors(tmp_path / "run")
    assert [e.label for e in executors] == ["tasks", "mpi"]
    for executor in executors:
        assert executor.address is None and "127.0.0.1" in executor.all_addresses
        assert "203.0.113.9" not in executor.all_addresses
    assert asked == []
    assert executors[0].all_addresses == parsl.addresses.get_all_addresses() - {"203.0.113.9"}


def test_a_task_that_refers_to_a_deferred_package_is_serialized_as_the_real_one():
    """In the driver requests stays a stand-in until used; a task's function that refers to it (or the module
    itself) still goes through Parsl's serializer (dill) and is the real package where it is unpickled."""
    out = run("from spibatch import parsl_lean; parsl_lean.import_parsl()\n"
              "import sys, requests\n"
              "from parsl.serialize import serialize, deserialize\n"
              "print(type(sys.modules['requests']).__name__)\n"
              "task = lambda module=requests: module.__name__ + ' ' + type(module.get).__name__\n"
              "print(deserialize(serialize(task))(), deserialize(serialize(requests)).__name__)", stand_ins=False)
    assert out.splitlines() == ["Deferred", "requests function requests"]


def test_a_pool_ended_by_sigterm_leaves_no_forkserver_folder_behind(tmp_path):
    """The forkserver's socket was made in multiprocessing's own pymp-* folder, which only a normal exit removes;
    a pool is usually ended by SIGTERM (its block cancelled, Parsl's shutdown): every pool left one on its node
    (1036 in /tmp here after a day of runs).  Now it is made in the pool's own folder, which the next pool started
    on the node removes once its owner is dead."""
    fake = tmp_path / parsl_lean.POOL_SCRIPT
    fake.write_text(
        "import sys, time\n"
        "from parsl.multiprocessing import SpawnContext\n\n"
        "def child():\n"
        "    pass\n\n"
        "if __name__ == '__main__':\n"
        "    p = SpawnContext.Process(target=child)\n"
        "    p.start()\n"
        "    p.join(60)\n"
        "    open(sys.argv[1], 'w').close()\n"
        "    time.sleep(120)\n")
    import shutil
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="sb-", dir="/tmp"))   # short: a Unix socket's path is 107 bytes at most

    def pool(name: str):
        ready = tmp_path / name
        proc = subprocess.Popen([sys.executable, "-m", "spibatch.parsl_lean", str(fake), str(ready)],
                                env={**ENV, "TMPDIR": str(scratch)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        for _ in range(600):
            if ready.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert ready.exists(), proc.communicate(timeout=10)
        return proc

    first = pool("first")
    try:
        made = sorted(p.name for p in scratch.iterdir())
        assert len(made) == 1 and made[0].startswith("spibatch-pool-locks-"), made     # no pymp-* beside it
        assert any(p.name.startswith("listener-") for p in (scratch / made[0]).iterdir())   # the socket is in it
        first.terminate()
        assert first.wait(30) == -15                                    # ended by the signal, as Parsl's are
        second = pool("second")
        try:
            left = sorted(p.name for p in scratch.iterdir())
            assert len(left) == 1 and left != made, (made, left)        # the dead pool's folder went with its socket
        finally:
            second.kill()
    finally:
        first.kill()
        shutil.rmtree(scratch, ignore_errors=True)
