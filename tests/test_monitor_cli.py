"""`spibatch monitor` from the command line: environment variables, the printed address, its error lines."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from monitor_runs import RunWriter, start_monitor, stop_monitor

pytest.importorskip("uvicorn", reason="the monitor needs uvicorn (pip install '.[monitor]' or '.[test]')")


def test_configured_by_environment_variables(tmp_path):
    RunWriter(tmp_path / "runs" / "one").complete()
    proc, address, lines = start_monitor([], {"SPIBATCH_MONITOR_ROOT": str(tmp_path / "runs"), "SPIBATCH_MONITOR_PORT": "0"})
    try:
        assert address.startswith("http://127.0.0.1:")           # the safe default host
        assert "1 run(s) under" in lines[0]
        with urllib.request.urlopen(address + "api/runs", timeout=30) as response:
            assert [r["run"] for r in json.load(response)["runs"]] == ["one"]
        with urllib.request.urlopen(address, timeout=30) as response:
            assert "<title>spibatch monitor</title>" in response.read().decode()
    finally:
        stop_monitor(proc)


def test_missing_folder_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "spibatch", "monitor", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "nope: PATH: not a folder; give a run folder or a folder of runs" in done.stderr


def test_port_in_use_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "spibatch", "monitor", str(tmp_path), "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert f"--port: cannot listen on 127.0.0.1:{port}" in done.stderr and "choose another --port" in done.stderr



@pytest.mark.parametrize("host", ["not_a_host", "192.0.2.77"])   # no such name / an address not on this machine
def test_a_host_that_is_not_here_blames_the_host_not_the_port(tmp_path, host):
    done = subprocess.run([sys.executable, "-m", "spibatch", "monitor", str(tmp_path), "--host", host, "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"--host: cannot listen on {host}:0" in done.stderr and "an address of this machine" in done.stderr


REPO = Path(__file__).resolve().parents[1]


def _without_starlette(tmp_path) -> dict:
    """An environment in which `import starlette` fails as it does where the [monitor] extra is missing."""
    blocker = tmp_path / "blocker" / "starlette"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'starlette'\", name='starlette')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "blocker"), str(REPO)])}


@pytest.mark.parametrize("where", ["checkout", "elsewhere"])
def test_install_hint_names_the_checkouts_extra(tmp_path, where):
    """From a checkout, `pip install 'spibatch[monitor]'` fails (spibatch is on no package index): the hint
    is the checkout's own extra, which the README names too."""
    cwd = REPO if where == "checkout" else tmp_path
    done = subprocess.run([sys.executable, "-m", "spibatch", "monitor", str(tmp_path)], capture_output=True,
                          text=True, timeout=60, env=_without_starlette(tmp_path), cwd=cwd)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    expected = "pip install '.[monitor]'" if where == "checkout" else f"pip install '{REPO}[monitor]'"
    assert "the monitor needs starlette, which is not installed" in done.stderr and expected in done.stderr


def test_install_hint_of_an_installed_wheel(monkeypatch, tmp_path):
    """Installed (site-packages, no pyproject.toml beside it): pip takes the installed spibatch and fetches
    only the extra's packages, so the hint is `spibatch[monitor]`; nothing installed: the packages."""
    import importlib.metadata
    import tomllib

    from spibatch.monitor import launch

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {r.split(">")[0] for r in extras["monitor"]} == {"starlette", "uvicorn"}
    monkeypatch.setattr(launch, "__file__", str(tmp_path / "site-packages" / "spibatch" / "monitor" / "launch.py"))
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: object())
    assert launch.install_hint() == "pip install 'spibatch[monitor]'"

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    assert launch.install_hint() == "pip install starlette uvicorn"


@pytest.mark.parametrize("host", ["0.0.0.0", "0", "0x0", "::ffff:0.0.0.0"])
def test_every_interface_needs_the_allowed_host_names(tmp_path, host):
    """Every spelling of every interface (`--host 0` listened on 0.0.0.0 unguarded) needs --allowed-host."""
    try:
        done = subprocess.run([sys.executable, "-m", "spibatch", "monitor", str(tmp_path), "--host", host,
                               "--port", "0"], capture_output=True, text=True, timeout=60,
                              env={k: v for k, v in os.environ.items() if k != "SPIBATCH_MONITOR_ALLOWED_HOSTS"})
    except subprocess.TimeoutExpired:
        pytest.fail(f"the monitor started on {host} without --allowed-host")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "--allowed-host: --host 0.0.0.0 takes connections from other machines" in done.stderr
    assert "--allowed-host '*' to answer to any" in done.stderr


def test_odd_spellings_of_an_address_are_taken_as_the_address_bound():
    from spibatch.monitor.guards import allowed_hosts, canonical_host

    assert [canonical_host(h) for h in ("127.1", "[::1]", "::", "node7", "localhost")] == \
        ["127.0.0.1", "::1", "::", "node7", "localhost"]
    assert "127.0.0.1" in allowed_hosts(canonical_host("127.1"))    # the printed URL's Host is answered


def get(address: str, host: str) -> int:
    request = urllib.request.Request(address + "api/runs", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_allowed_hosts_from_the_environment_and_any(tmp_path):
    RunWriter(tmp_path / "runs" / "one").complete()
    proc, address, _ = start_monitor([str(tmp_path / "runs"), "--port", "0"],
                                     {"SPIBATCH_MONITOR_ALLOWED_HOSTS": "spi.example.org, *.cluster.example"})
    try:
        assert [get(address, h) for h in ("spi.example.org", "m.cluster.example:80", "localhost", "evil.example")] \
            == [200, 200, 200, 400]
    finally:
        stop_monitor(proc)
    assert "answers to Host spi.example.org, *.cluster.example, 127.0.0.1, localhost, [::1]" in proc.stderr.read()
    proc, address, _ = start_monitor([str(tmp_path / "runs"), "--port", "0", "--allowed-host", "Node7:8765"])
    try:    # with a port, as a browser's address bar shows it: the port was kept and the name never matched
        assert [get(address, h) for h in ("node7:8765", "node7", "node8:8765")] == [200, 200, 400]
    finally:
        stop_monitor(proc)
    proc, address, _ = start_monitor([str(tmp_path / "runs"), "--port", "0", "--allowed-host", "*"])
    try:
        assert get(address, "evil.example") == 200
    finally:
        stop_monitor(proc)
    assert "every Host header is accepted" in proc.stderr.read()


@pytest.mark.parametrize("name", ["http://node7", "node7/monitor", "my host", "ev*l.org", "node7:http"])
def test_an_allowed_host_that_is_no_host_name_is_one_line(tmp_path, name):
    done = subprocess.run([sys.executable, "-m", "spibatch", "monitor", str(tmp_path), "--port", "0",
                           "--allowed-host", name], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"--allowed-host: {name!r} is not a host name" in done.stderr and "no scheme, port or path" in done.stderr
