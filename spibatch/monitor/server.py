"""The monitor's read-only web server: Starlette app factory, JSON endpoints, the page and Plotly.js.

Endpoints (GET only; ``run`` is a run's path relative to the monitored root, ``.`` for the root)::

    /                         the page (static/index.html)
    /static/...               app.js, style.css, plotly.min.js (vendored, no CDN)
    /api/runs                 every run under the root: summaries, newest first
    /api/run?run=R            one run's summary and its fingerprint
    /api/fingerprint?run=R    a short string that changes when the run's files change (the page polls it)
    /api/emc?run=R            EMC metrics per iteration, beta / rotation-count changes
    /api/emc/frames?run=R&iteration=N   histograms over frames (most likely rotation's probability, scale)
    /api/emc/slices?run=R&iteration=N   three central log10 slices of the intensity (N: latest when absent)
    /api/phase?run=R          phasing errors per start, kept starts, PRTF
    /api/phase/slices?run=R   central slices of the averaged density and its support
    /api/fsc?run=R            FSC against the truth
    /api/follow?run=R         a following run's live source: frames, hits, hit rate (per commit), lit-pixel
                              histogram, bad trains, previews, latency from the newest frame to the newest density
    /api/follow/preview?run=R&iteration=N   central slices of a preview density and its record (N: newest)
    /api/texts?run=R          config.yaml, provenance.json, the tails of log.txt and EMC.log
    /healthz                  {"ok": true, "root": ...} when the root is readable (a Kubernetes probe)

Answers: 200 JSON; 400 a bad parameter (an iteration that is not 0-999999999 in ASCII digits, a run
name over 1024 characters or with control characters) or a Host this monitor does not answer to
(:mod:`spibatch.monitor.guards`); 403 a path outside the root (``..``, absolute, a folder or file
symlinked out); 404 no such run / not written yet; 422 a file that reads but holds what cannot be
shown; 503 a file still being written (Retry-After: 2); 405 for any method but GET/HEAD; 500 (one
JSON line, logged once) for anything unexpected.  Every error body is ``{"error": "..."}``.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from spibatch.monitor.limits import BACKLOG

STATIC = Path(__file__).resolve().parent / "static"
ENV_ROOT, ENV_HOST, ENV_PORT = "SPIBATCH_MONITOR_ROOT", "SPIBATCH_MONITOR_HOST", "SPIBATCH_MONITOR_PORT"
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8765
ITERATION_RE = re.compile(r"[0-9]{1,9}")


class BadParameter(ValueError):
    """A query parameter the endpoint cannot take: 400."""


def iteration_param(raw: str | None) -> int | None:
    """``iteration=N`` (ASCII digits, at most 9 of them) as an int; None for absent, empty or ``latest``."""
    if raw in (None, "", "latest"):
        return None
    if not ITERATION_RE.fullmatch(raw):
        raise BadParameter(f"iteration must be a whole number (0-999999999) or 'latest', not {raw[:40]!r}")
    return int(raw)


def create_app(root: str | os.PathLike, *, poll_ms: int = 2000, allowed_hosts=None):
    """The Starlette application serving the runs under ``root`` (a run folder or a folder of runs).

    allowed_hosts: the Host names it answers to (default: the loopback names; ``["*"]``: any).
    """
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    from spibatch.monitor.files import BadFile, NotReady
    from spibatch.monitor.lookup import find_runs, unchanged
    from spibatch.monitor.guards import HEADERS, LOOPBACK_NAMES, CatchAll, HostCheck, log
    from spibatch.monitor.paths import BadName, NotFound, OutsideRoot, resolve_run
    from spibatch.monitor.rundata import RunData

    root = Path(os.path.realpath(root))
    headers = HEADERS
    statuses = ((BadParameter, 400), (BadName, 400), (OutsideRoot, 403), (NotFound, 404), (BadFile, 422),
                (NotReady, 503))

    def answer(status: int, message: str, **extra) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers | extra)

    def endpoint(read, *, with_iteration: bool = False):
        def handle(request: Request):
            params = request.query_params
            try:
                data = RunData(root, resolve_run(root, params.get("run")))
                if with_iteration:
                    return JSONResponse(read(data, iteration_param(params.get("iteration"))), headers=headers)
                return JSONResponse(read(data), headers=headers)
            except tuple(kind for kind, _ in statuses) as exc:
                status = next(code for kind, code in statuses if isinstance(exc, kind))
                return answer(status, str(exc), **({"Retry-After": "2"} if status == 503 else {}))
            except (FileNotFoundError, NotADirectoryError) as exc:   # the run (or a file) removed while read
                return answer(404, f"{Path(exc.filename or '').name or 'a file'} is no longer there")
        return handle

    # A run's summary, kept between requests with what it was read from (Lookup.deps: every folder listed,
    # every file found or opened) and reused while a stat of each says they are unchanged: a folder of 2000
    # runs is then ~25 stats a run instead of ~10 files read and parsed (8 s -> well under 1 s).
    summaries: dict[Path, tuple[dict, dict]] = {}
    skipped: set[Path] = set()

    def runs(request: Request):
        found, kept = [], {}
        for folder in dict.fromkeys(find_runs(root)):
            known = summaries.get(folder)
            if known is not None and unchanged(known[0]):
                kept[folder] = known
                found.append(known[1])
                continue
            try:
                data = RunData(root, folder)
                summary = data.summary()
            except (NotFound, NotReady, OutsideRoot, FileNotFoundError):   # gone or being written: next poll
                continue
            except Exception as exc:   # one unreadable run does not hide the others (said once per run)
                if folder not in skipped:
                    skipped.add(folder)
                    log.error("spibatch monitor: run %s skipped (%s: %s)", folder, type(exc).__name__, exc)
                continue
            found.append(summary)
            if data.lookup.cacheable:
                kept[folder] = (data.lookup.deps, summary)
        summaries.clear()              # runs gone are forgotten (concurrent requests: the last one's set stays)
        summaries.update(kept)
        found.sort(key=lambda r: (r.get("started") or "", r.get("last_update") or 0), reverse=True)
        return JSONResponse({"root": str(root), "runs": found, "poll_ms": poll_ms}, headers=headers)

    def index(request: Request):
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers=headers)

    def healthz(request: Request):
        ok = os.access(root, os.R_OK | os.X_OK) and root.is_dir()
        return JSONResponse({"ok": ok, "root": str(root)}, status_code=200 if ok else 503, headers=headers)

    async def http_error(request: Request, exc: HTTPException):
        return answer(exc.status_code, exc.detail if isinstance(exc.detail, str) else "error",
                      **(exc.headers or {}))

    get = ["GET"]
    routes = [
        Route("/", index, methods=get),
        Route("/api/runs", runs, methods=get),
        Route("/healthz", healthz, methods=get),
        # the fingerprint first: a file changed while the summary is read makes the next poll refresh again
        Route("/api/run", endpoint(lambda d: {"fingerprint": d.fingerprint()} | d.summary()), methods=get),
        Route("/api/fingerprint", endpoint(lambda d: {"fingerprint": d.fingerprint()}), methods=get),
        Route("/api/emc", endpoint(lambda d: d.emc_series()), methods=get),
        Route("/api/emc/frames", endpoint(lambda d, i: d.emc_frames(i), with_iteration=True), methods=get),
        Route("/api/emc/slices", endpoint(lambda d, i: d.emc_slices(i), with_iteration=True), methods=get),
        Route("/api/phase", endpoint(lambda d: d.phase_series()), methods=get),
        Route("/api/phase/slices", endpoint(lambda d: d.phase_slices()), methods=get),
        Route("/api/fsc", endpoint(lambda d: d.fsc()), methods=get),
        Route("/api/follow", endpoint(lambda d: d.follow()), methods=get),
        Route("/api/follow/preview", endpoint(lambda d, i: d.preview_slices(i), with_iteration=True), methods=get),
        Route("/api/texts", endpoint(lambda d: d.texts()), methods=get),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [Middleware(HostCheck, allowed_hosts=list(allowed_hosts or LOOPBACK_NAMES)), Middleware(CatchAll)]
    return Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: http_error})


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one), IPv4 or IPv6 by the host's form."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(root: Path, sock: socket.socket, *, poll_ms: int = 2000, allowed_hosts=None) -> None:
    """Serve the monitor on an already bound socket until interrupted (Ctrl-C / SIGTERM), within the
    limits of :mod:`spibatch.monitor.limits` (time to send a request, connections, header size)."""
    import uvicorn

    from spibatch.monitor.limits import uvicorn_settings

    config = uvicorn.Config(create_app(root, poll_ms=poll_ms, allowed_hosts=allowed_hosts), log_level="warning",
                            access_log=False, lifespan="off", **uvicorn_settings())
    uvicorn.Server(config).run(sockets=[sock])
