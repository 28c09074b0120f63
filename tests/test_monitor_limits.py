"""The real `spibatch monitor` (uvicorn, in a subprocess, on 127.0.0.1) against slow, idle and oversized clients.

Raw sockets: a client that sends one header byte a second, and one that connects and sends nothing, are
disconnected within REQUEST_TIMEOUT_S (+ slack), while a normal client is answered all along; an idle
kept-alive connection is closed after KEEP_ALIVE_S; oversized headers, a long run name and a foreign Host
are refused with 4xx by the real server too.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
import urllib.request
from urllib.parse import urlparse

import pytest
from monitor_runs import RunWriter, start_monitor, stop_monitor

pytest.importorskip("uvicorn", reason="the monitor needs uvicorn (pip install '.[monitor]' or '.[test]')")

from spibatch.monitor.limits import KEEP_ALIVE_S, REQUEST_TIMEOUT_S  # noqa: E402

SLACK_S = 3.0          # scheduling on a loaded 2-core machine
GIVE_UP_S = 30.0       # the test's own bound: what "held for ever" means here


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits") / "runs"
    RunWriter(root / "done").complete()
    proc, address, _ = start_monitor([str(root), "--port", "0"])
    url = urlparse(address)
    try:
        yield url.hostname, url.port, address
    finally:
        stop_monitor(proc)


def closed_after(sock: socket.socket, began: float, drip: bytes = b"") -> tuple[float, bytes]:
    """Send ``drip`` one byte a second (nothing when empty) until the server closes the connection;
    (seconds from ``began`` to the close, what the server sent).  GIVE_UP_S + 1 when it never does."""
    received, i = b"", 0
    while time.monotonic() - began < GIVE_UP_S:
        if i < len(drip):
            try:
                sock.send(drip[i:i + 1])
            except OSError:
                return time.monotonic() - began, received
            i += 1
        readable, _, _ = select.select([sock], [], [], 1.0)
        if readable:
            try:
                chunk = sock.recv(4096)
            except OSError:
                return time.monotonic() - began, received
            if not chunk:
                return time.monotonic() - began, received
            received += chunk
    return GIVE_UP_S + 1, received


def test_slow_and_idle_clients_are_cut_off_while_others_are_served(server):
    host, port, address = server
    results: dict[str, tuple[float, bytes]] = {}
    request = f"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Slow: {'a' * 60}\r\n\r\n".encode()

    def client(name: str, drip: bytes) -> None:
        with socket.create_connection((host, port), timeout=GIVE_UP_S + 5) as sock:
            results[name] = closed_after(sock, time.monotonic(), drip)

    threads = [threading.Thread(target=client, args=("slow", request)), threading.Thread(target=client, args=("idle", b""))]
    for t in threads:
        t.start()
    answered = []
    while any(t.is_alive() for t in threads):
        began = time.monotonic()
        with urllib.request.urlopen(address + "api/runs", timeout=10) as response:
            assert response.status == 200 and json.load(response)["runs"][0]["run"] == "done"
        answered.append(time.monotonic() - began)
        time.sleep(0.5)
    for t in threads:
        t.join()
    for name in ("slow", "idle"):
        seconds, sent = results[name]
        assert REQUEST_TIMEOUT_S - 1 <= seconds <= REQUEST_TIMEOUT_S + SLACK_S, (name, seconds)
        assert sent.startswith(b"HTTP/1.1 408 "), (name, sent[:80])
    # served meanwhile: a request held up behind the slow clients would wait for their time-out (10 s)
    assert len(answered) >= 10 and max(answered) < REQUEST_TIMEOUT_S / 2, answered


def test_an_idle_kept_alive_connection_is_closed(server):
    host, port, _ = server
    with socket.create_connection((host, port), timeout=GIVE_UP_S) as sock:
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
        began = time.monotonic()
        seconds, sent = closed_after(sock, began)
    assert sent.startswith(b"HTTP/1.1 200 ") and b'"ok":true' in sent
    assert KEEP_ALIVE_S - 1 <= seconds <= KEEP_ALIVE_S + SLACK_S, seconds


def exchange(host: str, port: int, data: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=20) as sock:
        sock.sendall(data)
        return closed_after(sock, time.monotonic())[1]


def test_oversized_headers_long_names_and_foreign_hosts_are_4xx(server):
    host, port, address = server
    big = exchange(host, port, f"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {'b' * 20000}\r\n\r\n".encode())
    assert big.startswith(b"HTTP/1.1 431 "), big[:80]
    long_name = exchange(host, port, f"GET /api/emc?run={'a' * 8192} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                     f"Connection: close\r\n\r\n".encode())
    assert long_name.startswith(b"HTTP/1.1 400 ") and b"1024 characters" in long_name, long_name[:200]
    for foreign in (b"evil.example.com", b""):
        refused = exchange(host, port, b"GET /api/runs HTTP/1.1\r\nHost: " + foreign + b"\r\nConnection: close\r\n\r\n")
        assert refused.startswith(b"HTTP/1.1 400 ") and b"--allowed-host" in refused, refused[:200]
    with urllib.request.urlopen(address + "api/runs", timeout=10) as response:     # and it goes on serving
        assert response.status == 200
