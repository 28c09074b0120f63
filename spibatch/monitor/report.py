"""report.html: the monitor's page for one run as a single self-contained file, plus PNGs of its plots.

The page is the live monitor's own (static/index.html + app.js + style.css),
with Plotly.js, the CSS and every API answer the page would ask for inlined,
so it opens from disk with no server and no network.  The intensity slices
are kept for at most REPORT_SLICE_ITERATIONS iterations (evenly spaced, the
last one always), so the file stays a few MB.  Next to it: ``report_emc.png``,
``report_phasing.png``, ``report_fsc.png`` (whichever parts the run has).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

from spibatch.layout import RunLayout

REPORT_SLICE_ITERATIONS = 12


def _spaced(values: list[int], count: int) -> list[int]:
    """At most ``count`` of ``values``, evenly spaced, first and last included."""
    if len(values) <= count:
        return list(values)
    picks = {round(i * (len(values) - 1) / (count - 1)) for i in range(count)}
    return [values[i] for i in sorted(picks)]


def collect(run_dir: str | os.PathLike) -> dict:
    """Every API answer the page needs for this run, keyed as app.js keys them (``path?param=value&...``)."""
    from spibatch.monitor.files import BadFile, NotReady
    from spibatch.monitor.paths import NotFound, OutsideRoot
    from spibatch.monitor.rundata import RunData

    root = Path(os.path.realpath(run_dir))
    data = RunData(root, root)
    responses: dict[str, object] = {}

    def put(key: str, read) -> object:
        try:
            responses[key] = read()
        except (NotFound, NotReady, BadFile, OutsideRoot, OSError, ValueError, KeyError):
            responses[key] = None
        return responses[key]

    summary = data.summary()
    responses["runs?"] = {"root": str(root), "runs": [summary], "poll_ms": 0}
    responses["run?run=."] = summary | {"fingerprint": data.fingerprint()}
    if summary["has"]["emc"]:
        series = put("emc?run=.", data.emc_series)
        if series is not None:
            series["outputs"] = _spaced(series.get("outputs", []), REPORT_SLICE_ITERATIONS)
            for i in series["outputs"]:
                put(f"emc/frames?iteration={i}&run=.", lambda i=i: data.emc_frames(i))
                put(f"emc/slices?iteration={i}&run=.", lambda i=i: data.emc_slices(i))
    if summary["has"]["phase"]:
        put("phase?run=.", data.phase_series)
        put("phase/slices?run=.", data.phase_slices)
    if summary["has"]["fsc"]:
        put("fsc?run=.", data.fsc)
    if summary["has"]["follow"]:
        put("follow?run=.", data.follow)
        put("follow/preview?run=.", data.preview_slices)
    put("texts?run=.", data.texts)
    return responses


def render_html(responses: dict, title: str) -> str:
    """The self-contained HTML: the monitor page with CSS, Plotly.js, app.js and the data inlined."""
    from spibatch.monitor.server import STATIC
    from spibatch.monitor.values import clean, utf8

    def inline_js(name: str) -> str:
        return "<script>\n" + (STATIC / name).read_text(encoding="utf-8").replace("</script", "<\\/script") + \
            "\n</script>"

    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    payload = json.dumps(clean({"generated": generated, "responses": responses}), separators=(",", ":"),
                         allow_nan=False)
    # no "<" at all: "</" would close the script element early, and "<!--<script" (a run's command line, log or
    # file name may hold it) switched the parser to a state where the element swallowed app.js (a blank page)
    payload = payload.replace("<", "\\u003c")
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    pieces = {
        '<link rel="stylesheet" href="static/style.css">':
            "<style>\n" + (STATIC / "style.css").read_text(encoding="utf-8") + "\n</style>",
        '<script src="static/plotly.min.js"></script>': inline_js("plotly.min.js"),
        '<script src="static/app.js"></script>': inline_js("app.js"),
        "<!--SPIBATCH-REPORT-DATA-->": f"<script>window.SPIBATCH_REPORT = {payload};</script>",
        "<title>spibatch monitor</title>": f"<title>spibatch report: {_escape(utf8(title))}</title>",
        '<span class="brand">spibatch monitor</span>': '<span class="brand">spibatch report</span>',
    }
    for old, new in pieces.items():
        if old not in html:
            raise RuntimeError(f"static/index.html lost its {old!r}: the report cannot be assembled")
        html = html.replace(old, new)
    return html


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` and the PNGs of its plots (atomically); returns the HTML's path.

    Works on finished, failed and running runs alike (it shows what is on disk now).
    """
    from spibatch.io.atomic import write_text
    from spibatch.monitor.report_png import write_pngs

    run_dir = Path(run_dir)
    responses = collect(run_dir)
    write_pngs(responses, run_dir)   # first: a report.html on disk is a whole report (an interrupted one has none)
    return write_text(RunLayout(run_dir).report, render_html(responses, run_dir.resolve().name))
