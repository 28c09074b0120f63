"""`spibatch monitor` from the command line: environment variables, the printed address, its error lines."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from monitor_runs import RunWriter

pytest.importorskip("uvicorn", reason="the monitor needs uvicorn (pip install '.[monitor]' or '.[test]')")


def start(args, env=None):
    proc = subprocess.Popen([sys.executable, "-m", "spibatch", "monitor", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    deadline, lines = time.monotonic() + 60, []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "open http://" in line:
            return proc, line.split("open ", 1)[1].split()[0], lines
    proc.kill()
    raise AssertionError(f"no address printed: {lines} {proc.stderr.read()}")


def test_configured_by_environment_variables(tmp_path):
    RunWriter(tmp_path / "runs" / "one").complete()
    proc, address, lines = start([], {"SPIBATCH_MONITOR_ROOT": str(tmp_path / "runs"), "SPIBATCH_MONITOR_PORT": "0"})
    try:
        assert address.startswith("http://127.0.0.1:")           # the safe default host
        assert "1 run(s) under" in lines[0]
        with urllib.request.urlopen(address + "api/runs", timeout=30) as response:
            assert [r["run"] for r in json.load(response)["runs"]] == ["one"]
        with urllib.request.urlopen(address, timeout=30) as response:
            assert "<title>spibatch monitor</title>" in response.read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


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
