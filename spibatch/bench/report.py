"""The bench folder's reports from ``bench.json``: ``bench.md`` (the table), five PNGs and a self-contained
``report.html`` (the PNGs inlined as data: URLs; nothing is fetched from anywhere).

PNGs: ``bench_time.png`` (time per iteration vs workers), ``bench_efficiency.png`` (parallel efficiency:
strong ``T1 / (w Tw)``, weak ``T1 / Tw``), ``bench_ratio.png`` (HTC / HPC per iteration), ``bench_breakdown.png``
(per-phase stacks), ``bench_model.png`` (predicted vs measured, calibration and check points).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from spibatch.bench.collect import PHASES

PNGS = {"time": "bench_time.png", "efficiency": "bench_efficiency.png", "ratio": "bench_ratio.png",
        "breakdown": "bench_breakdown.png", "model": "bench_model.png"}
TABLE = "bench.md"
HTML = "report.html"


def _measured(document: dict) -> list[dict]:
    return [p for p in document["points"] if p["status"] == "measured"]


def _series(document: dict) -> dict[tuple, list[dict]]:
    """Points grouped by (site, mode, workload, scaling), sorted by workers."""
    out: dict[tuple, list[dict]] = {}
    for p in _measured(document):
        out.setdefault((p["site"], p["mode"], p["workload"], p["scaling"]), []).append(p)
    return {k: sorted(v, key=lambda p: p["workers"]) for k, v in out.items()}


def _median(p: dict) -> float:
    return p["summary"]["iteration_s"]["median"]


def efficiency(document: dict) -> dict[str, float]:
    """Parallel efficiency of every point against the smallest worker count of its series."""
    out = {}
    for (_, _, _, scaling), pts in _series(document).items():
        base = pts[0]
        for p in pts:
            ratio = _median(base) / _median(p)
            out[p["key"]] = ratio / (p["workers"] / base["workers"]) if scaling == "strong" else ratio
    return out


def htc_over_hpc(document: dict) -> dict[str, float]:
    """HTC / HPC per iteration for each HTC point whose HPC twin was measured."""
    by_key = {p["key"]: p for p in _measured(document)}
    out = {}
    for p in by_key.values():
        twin = by_key.get(p["key"].replace("/htc/", "/hpc/"))
        if p["mode"] == "htc" and twin is not None:
            out[p["key"]] = _median(p) / _median(twin)
    return out


def _fmt(x, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def table(document: dict) -> str:
    """The Markdown table: one row per point."""
    eff, ratio = efficiency(document), htc_over_hpc(document)
    model = {p["key"]: p for p in (document.get("model") or {}).get("points", [])}
    head = ["point", "frames", "s / iteration (median [min-max] of repeats)", "HTC/HPC", "efficiency"] + \
           [f"{ph} s" for ph in PHASES] + ["startup s", "load start -> end", "model s (error, role)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in document["points"]:
        if p["status"] != "measured":
            lines.append(f"| {p['key']} | failed: {p.get('error') or ''} |" + " |" * (len(head) - 2))
            continue
        s = p["summary"]
        it = s["iteration_s"]
        phases = s.get("phases_s") or {}
        m = model.get(p["key"])
        pred = f"{m['predicted_s']:.3g} ({100 * m['error']:+.0f}%, {m['role']})" if m else ""
        spread = f"[{it['min']:.3g}-{it['max']:.3g}]" if len(p["repeat_runs"]) > 1 else "(1 repeat: no spread)"
        lines.append("| " + " | ".join([
            p["key"], str(p.get("frames") or ""), f"{it['median']:.3g} {spread}",
            _fmt(ratio.get(p["key"])), _fmt(eff.get(p["key"]))] + [_fmt(phases.get(ph)) for ph in PHASES] + [
            _fmt((s.get("startup_s") or {}).get("median"), 1),
            f"{p['load_start'][0]} -> {p['load_end'][0]}", pred]) + " |")
    return "\n".join(lines) + "\n"


def markdown(document: dict) -> str:
    m = document["machine"]
    mem = f"{m['memory_bytes'] / 2 ** 30:.0f} GiB" if m.get("memory_bytes") else "?"
    lines = [f"# spibatch bench: {document['name']}", "",
             f"Machine: {m['host']}, {m['cpu_model']}, {m['logical_cores']} cores ({m['usable_cores']} usable), "
             f"{mem}{', GPU ' + '; '.join(m['gpu']) if m.get('gpu') else ''}. "
             f"Versions: {', '.join(f'{k} {v}' for k, v in document['versions'].items())}. "
             f"From {document['created']} to {document['updated']}.", "",
             "Time per iteration: `time_s` of `emc/metrics.jsonl` (phasing: a start's seconds / its iterations), "
             "median over the iterations of a run, then median [min-max] over the repeats.  Load: the 1-minute "
             "load average when the point started and ended.", ""] + _provenance_lines(document) + [table(document)]
    model = document.get("model")
    if model:
        from spibatch.bench.model import summary_line

        params = ", ".join(f"{k} = {v:.3g}" for k, v in model["parameters"].items())
        lines += ["", summary_line(model) + ".", "", f"Fitted: {params}."]
    return "\n".join(lines) + "\n"


def _provenance_lines(document: dict) -> list[str]:
    """What the versions line cannot say: points measured at other spibatch revisions than this report's (a
    resumed bench keeps its points across code changes), and the loaded-machine note."""
    from collections import Counter

    revisions = Counter(str(p.get("git_revision")) for p in document["points"])
    lines = []
    if len(revisions) > 1 or (revisions and next(iter(revisions)) != str(document["versions"].get("git_revision"))):
        lines += ["Points measured at spibatch revision(s) " + ", ".join(f"{r} ({n} point(s))" for r, n in
                                                                          revisions.items()) + ".", ""]
    if document.get("loaded_machine_note"):
        lines += [f"**Loaded machine**: {document['loaded_machine_note']}.", ""]
    return lines


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    from spibatch.io.atomic import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return path


def plots(out: Path, document: dict) -> list[Path]:
    """The five PNGs (those with something to show)."""
    plt = _plt()
    series, eff, ratio = _series(document), efficiency(document), htc_over_hpc(document)
    written = []
    for name, ylabel, values in (("time", "s per iteration", None), ("efficiency", "parallel efficiency", eff)):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for (site, mode, work, scaling), pts in series.items():
            x = [p["workers"] for p in pts]
            if values is None:
                y = [_median(p) for p in pts]
                err = [[y_ - p["summary"]["iteration_s"]["min"] for y_, p in zip(y, pts)],
                       [p["summary"]["iteration_s"]["max"] - y_ for y_, p in zip(y, pts)]]
                ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"{site} {mode} {work} ({scaling})")
            else:
                ax.plot(x, [values[p["key"]] for p in pts], "o-", label=f"{site} {mode} {work} ({scaling})")
        ax.set(xlabel="workers", ylabel=ylabel, xscale="log", title=f"{document['name']}: {ylabel}")
        ax.set_xticks(sorted({p["workers"] for p in _measured(document)}) or [1])
        ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=7)
        written.append(_save(fig, out / PNGS[name]))
        plt.close(fig)
    if ratio:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        by_site: dict[str, list] = {}
        for key, r in ratio.items():
            p = next(q for q in document["points"] if q["key"] == key)
            by_site.setdefault(f"{p['site']} {p['workload']}", []).append((p["workers"], r))
        for label, xy in by_site.items():
            xy.sort()
            ax.plot([a for a, _ in xy], [b for _, b in xy], "o-", label=label)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set(xlabel="workers", ylabel="HTC / HPC time per iteration", title="HTC over HPC")
        ax.set_xticks(sorted({a for xy in by_site.values() for a, _ in xy}))     # whole workers, not 1.2, 1.4
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        written.append(_save(fig, out / PNGS["ratio"]))
        plt.close(fig)
    emc = [p for p in _measured(document) if p["kind"] == "emc"]
    if emc:
        fig, ax = plt.subplots(figsize=(max(7, 0.7 * len(emc)), 4.8))
        bottom = [0.0] * len(emc)
        for phase in PHASES:
            h = [p["summary"]["phases_s"][phase] for p in emc]
            ax.bar(range(len(emc)), h, bottom=bottom, label=phase)
            bottom = [b + v for b, v in zip(bottom, h)]
        ax.set_xticks(range(len(emc)), [p["key"].replace("/", "\n", 3) for p in emc], fontsize=6)
        ax.set(ylabel="s per iteration (median)", title="where an iteration's time goes")
        ax.legend(fontsize=7)
        written.append(_save(fig, out / PNGS["breakdown"]))
        plt.close(fig)
    model = document.get("model")
    if model and model["points"]:
        fig, ax = plt.subplots(figsize=(5.5, 5))
        for role, marker in (("calibration", "s"), ("check", "o")):
            pts = [p for p in model["points"] if p["role"] == role]
            ax.scatter([p["measured_s"] for p in pts], [p["predicted_s"] for p in pts], marker=marker, label=role,
                       zorder=3)
        values = [v for p in model["points"] for v in (p["measured_s"], p["predicted_s"]) if v > 0]
        lo, hi = min(values) / 1.5, max(values) * 1.5
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, zorder=2)
        ax.fill_between([lo, hi], [lo * 0.75, hi * 0.75], [lo * 1.25, hi * 1.25], color="0.85", label="±25%", zorder=1)
        ax.set(xscale="log", yscale="log", xlabel="measured s per iteration",
               ylabel="predicted s per iteration", title="model vs measurement")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(plt.matplotlib.ticker.FormatStrFormatter("%.3g"))
            axis.set_minor_formatter(plt.matplotlib.ticker.NullFormatter())
        ax.legend(fontsize=7)
        written.append(_save(fig, out / PNGS["model"]))
        plt.close(fig)
    return written


def report_html(out: Path, document: dict, pngs: list[Path]) -> str:
    """One self-contained page: the Markdown's facts as HTML, the table, every PNG inlined."""
    md = markdown(document)
    rows = [line for line in md.splitlines() if line.startswith("|") and not line.startswith("|---")]
    cells = [[html.escape(c.strip()) for c in r.strip("|").split("|")] for r in rows]
    table_html = "<table>" + "".join(
        "<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{c}</{'th' if i == 0 else 'td'}>" for c in r) + "</tr>"
        for i, r in enumerate(cells)) + "</table>"
    text = [f"<p>{html.escape(line)}</p>" for line in md.splitlines() if line and not line.startswith(("|", "#"))]
    images = "".join(f'<h2>{html.escape(p.stem.replace("bench_", ""))}</h2><img alt="{html.escape(p.name)}" '
                     f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">' for p in pngs)
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>spibatch bench {html.escape(document['name'])}"
            f"</title><style>{style}</style></head><body><h1>spibatch bench: {html.escape(document['name'])}</h1>"
            + "".join(text) + table_html + images + "</body></html>\n")


def write_all(out: Path, document: dict) -> list[Path]:
    """bench.md, the PNGs and report.html into ``out``; the paths written."""
    from spibatch.io.atomic import write_text

    written = [write_text(out / TABLE, markdown(document))]
    pngs = plots(out, document)
    written += pngs
    written.append(write_text(out / HTML, report_html(out, document, pngs)))
    return written
