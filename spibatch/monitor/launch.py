"""``spibatch monitor``: check the folder and the address, print where the page is, serve until stopped."""

from __future__ import annotations

import sys
from pathlib import Path

from spibatch.errors import InputError


def run_monitor(path: Path | None, host: str, port: int, poll_ms: int = 2000) -> None:
    """Serve the monitor for the runs under ``path`` on ``host:port``; prints the address first (flushed)."""
    if path is None:
        raise InputError("no folder to monitor", field="PATH",
                         fix="give a run folder or a folder of runs, or set SPIBATCH_MONITOR_ROOT")
    if not path.is_dir():
        raise InputError("not a folder", path=path, field="PATH",
                         fix="give a run folder or a folder of runs (e.g. runs/)")
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise InputError(f"the monitor needs {exc.name}, which is not installed",
                         fix="pip install 'spibatch[monitor]'") from None
    from spibatch.monitor.paths import find_runs
    from spibatch.monitor.server import address, bind, serve

    try:
        sock = bind(host, port)
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror})", field="--port",
                         fix="choose another --port (0: any free one) or --host") from None
    runs = find_runs(path.resolve())
    where = address(sock)
    print(f"spibatch monitor: {len(runs)} run(s) under {path.resolve()}", flush=True)
    print(f"spibatch monitor: open {where} in a browser (Ctrl-C stops it)", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"spibatch monitor: listening on {host}: anyone who reaches this machine can read these runs",
              file=sys.stderr, flush=True)
    try:
        serve(path, sock, poll_ms=poll_ms)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
