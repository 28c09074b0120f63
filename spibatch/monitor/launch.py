"""``spibatch monitor``: check the folder, the address and the Host names, print where the page is, serve until stopped."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from spibatch.errors import InputError

ENV_ALLOWED_HOSTS = "SPIBATCH_MONITOR_ALLOWED_HOSTS"


def install_hint() -> str:
    """The pip command that installs the monitor's extra (starlette + uvicorn) for this spibatch.

    Run from a source checkout (the package sits beside the pyproject.toml that names it), the
    checkout's own extra: ``pip install '.[monitor]'`` (with the checkout's path when it is not the
    current folder); spibatch is not on a package index, so ``spibatch[monitor]`` would not resolve
    there.  Installed (a wheel, in site-packages), ``pip install 'spibatch[monitor]'``: pip takes the
    installed spibatch as it is and fetches only the extra's packages.  Neither: the two packages.
    """
    import importlib.metadata

    checkout = Path(__file__).resolve().parents[2]
    pyproject = checkout / "pyproject.toml"
    try:
        own = pyproject.is_file() and 'name = "spibatch"' in pyproject.read_text(encoding="utf-8")
    except OSError:
        own = False
    if own:
        where = "." if checkout == Path.cwd().resolve() else str(checkout)
        return f"pip install '{where}[monitor]'"
    try:
        importlib.metadata.distribution("spibatch")
    except importlib.metadata.PackageNotFoundError:
        return "pip install starlette uvicorn"
    return "pip install 'spibatch[monitor]'"


def hosts_from(cli: list[str] | None) -> list[str]:
    """``--allowed-host`` names, else those of SPIBATCH_MONITOR_ALLOWED_HOSTS (comma-separated)."""
    names = list(cli or []) or os.environ.get(ENV_ALLOWED_HOSTS, "").split(",")
    return [n.strip() for n in names if n.strip()]


def run_monitor(path: Path | None, host: str, port: int, poll_ms: int = 2000,
                allowed: list[str] | None = None) -> None:
    """Serve the monitor for the runs under ``path`` on ``host:port``; prints the address first (flushed).

    allowed: Host names to answer to besides the bound address's (``--allowed-host``; see
    :mod:`spibatch.monitor.guards`); bound to every interface (0.0.0.0, ::) they are required.
    """
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
        raise InputError(f"the monitor needs {exc.name}, which is not installed", fix=install_hint()) from None
    from spibatch.monitor.guards import allowed_hosts, allowed_name, canonical_host, is_wildcard
    from spibatch.monitor.lookup import find_runs
    from spibatch.monitor.server import address, bind, serve

    host = canonical_host(host)
    try:
        extra = [allowed_name(n) for n in hosts_from(allowed)]
    except ValueError as exc:
        raise InputError(str(exc), field="--allowed-host", fix="give the name people open, alone (myhost.example.org, "
                         "10.0.0.5, [::1], *.example.org): no scheme, port or path") from None
    if is_wildcard(host) and not extra:
        raise InputError(f"--host {host} takes connections from other machines, whose browsers name this one by "
                         f"a name the monitor must know (it refuses other Host headers: DNS rebinding)",
                         field="--allowed-host", fix="give the name or address people will open (repeatable, "
                         f"or {ENV_ALLOWED_HOSTS}=a,b), or --allowed-host '*' to answer to any")
    if "*" in extra and len(extra) > 1:
        extra = ["*"]
    try:
        hosts = allowed_hosts(host, extra)
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        TrustedHostMiddleware(None, allowed_hosts=hosts)
    except AssertionError as exc:
        raise InputError(str(exc), field="--allowed-host", fix="give host names, or '*.example.org'") from None
    try:
        sock = bind(host, port)
    except OSError as exc:
        import errno
        import socket

        if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:   # the host, not the port
            raise InputError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): no such address here",
                             field="--host", fix="give an address of this machine (127.0.0.1, 0.0.0.0 or a host "
                             "name that resolves to one)") from None
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror})", field="--port",
                         fix="choose another --port (0: any free one) or --host") from None
    runs = find_runs(path.resolve())
    where = address(sock)
    print(f"spibatch monitor: {len(runs)} run(s) under {path.resolve()}", flush=True)
    print(f"spibatch monitor: open {where} in a browser (Ctrl-C stops it)", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"spibatch monitor: listening on {host}: anyone who reaches this machine can read these runs",
              file=sys.stderr, flush=True)
    if "*" in extra:
        print("spibatch monitor: --allowed-host '*': every Host header is accepted (no DNS rebinding protection)",
              file=sys.stderr, flush=True)
    else:
        print(f"spibatch monitor: answers to Host {', '.join(hosts)}", file=sys.stderr, flush=True)
    try:
        serve(path, sock, poll_ms=poll_ms, allowed_hosts=hosts)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
