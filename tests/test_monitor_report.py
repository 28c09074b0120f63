"""report.html: one self-contained file with the plot data, PNGs beside it, and every CLI run writes one."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from monitor_runs import RunWriter

from spibatch.monitor.report import REPORT_SLICE_ITERATIONS, collect, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def embedded(html: str) -> dict:
    """The JSON the report carries (window.SPIBATCH_REPORT = {...};)."""
    match = re.search(r"window\.SPIBATCH_REPORT = (\{.*?\});</script>", html, re.S)
    assert match, "no embedded data"
    return json.loads(match.group(1).replace("<\\/", "</"))


def test_report_is_self_contained_and_holds_the_plot_data(tmp_path):
    run = RunWriter(tmp_path / "run", iterations=4).complete()
    path = write_report(run.folder)
    assert path == run.folder / "report.html"
    html = path.read_text(encoding="utf-8")
    # nothing is fetched: no external scripts, styles, images or frames; Plotly and the page code are inline
    assert not re.search(r"""<(script|link|img|iframe)[^>]+(src|href)\s*=\s*["']?(https?:)?//""", html, re.I)
    assert not re.search(r"""<script[^>]+src=""", html, re.I) and not re.search(r"<link[^>]+stylesheet", html, re.I)
    assert "plotly.js v4" in html and "window.spibatchMonitor" in html
    data = embedded(html)["responses"]
    assert data["emc?run=."]["log_likelihood"] == pytest.approx([-3000.0 / i for i in range(1, 5)])
    assert data["emc/slices?iteration=4&run=."]["slices"][0]["title"] == "q_z = 0"
    assert [s["seed"] for s in data["phase?run=."]["starts"]] == [1, 2, 3]
    assert data["fsc?run=."]["cc"] == 0.8
    assert data["run?run=."]["status"] == "completed"
    for name in ("report_emc.png", "report_phasing.png", "report_fsc.png"):
        assert (run.folder / name).read_bytes()[:8] == PNG_MAGIC, name


def test_report_of_a_run_in_progress_shows_what_exists(tmp_path):
    run = RunWriter(tmp_path / "run", iterations=6)
    run.emc(1)
    run.emc(2)
    write_report(run.folder)
    data = embedded((run.folder / "report.html").read_text(encoding="utf-8"))["responses"]
    assert data["run?run=."]["status"] == "running" and data["emc?run=."]["iteration"] == [1, 2]
    assert "phase?run=." not in data and "fsc?run=." not in data
    assert (run.folder / "report_emc.png").exists()
    assert not (run.folder / "report_phasing.png").exists() and not (run.folder / "report_fsc.png").exists()


def test_report_keeps_a_bounded_number_of_slice_iterations(tmp_path):
    run = RunWriter(tmp_path / "run", iterations=30)
    for i in range(1, 31):
        run.emc(i)
    data = collect(run.folder)
    kept = data["emc?run=."]["outputs"]
    assert len(kept) == REPORT_SLICE_ITERATIONS and kept[0] == 1 and kept[-1] == 30
    assert sorted(k for k in data if k.startswith("emc/slices")) == sorted(
        f"emc/slices?iteration={i}&run=." for i in kept)


def test_report_command_and_its_error_line(tmp_path):
    run = RunWriter(tmp_path / "run").complete()
    ok = subprocess.run([sys.executable, "-m", "spibatch", "report", str(run.folder)], capture_output=True, text=True)
    assert ok.returncode == 0 and "report.html" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "spibatch", "report", str(tmp_path / "nope")], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "nope: RUN_DIR: not a folder" in bad.stderr


@pytest.mark.slow
def test_every_emc_run_writes_its_report(tmp_path, emc_config):
    """A real (tiny) `spibatch emc` run ends with report.html and report_emc.png in its run folder."""
    config = emc_config(tmp_path / "cfg", iterations=2)
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "spibatch", "emc", str(config), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    data = embedded((out / "report.html").read_text(encoding="utf-8"))["responses"]
    assert data["emc?run=."]["iteration"] == [1, 2] and data["run?run=."]["status"] == "completed"
    assert (out / "report_emc.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_every_phase_run_writes_its_report(tmp_path):
    """A real (tiny) `spibatch phase` run ends with report.html (phasing, no EMC) and report_phasing.png."""
    source = RunWriter(tmp_path / "src")
    source.emc(1)
    config = tmp_path / "phase.yaml"
    config.write_text("name: ph\nphasing:\n  intensity: src/emc/output_001.h5\n  recipe: ER() ** 5\n"
                      "  num_starts: 2\n  keep_best: 2\n")
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "spibatch", "phase", str(config), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    data = embedded((out / "report.html").read_text(encoding="utf-8"))["responses"]
    assert data["run?run=."]["has"]["emc"] is False and len(data["phase?run=."]["starts"]) == 2
    assert data["phase/slices?run=."]["slices"][0]["title"] == "z = centre"
    assert (out / "report_phasing.png").read_bytes()[:8] == PNG_MAGIC


def test_a_log_axis_within_one_decade_keeps_its_numbers(tmp_path):
    """The report's PNGs drop minor log ticks (clutter, and artists to make and draw) -- except on a log axis that
    spans less than a decade, which has no major tick: beta doubling once (0.04 -> 0.08) had no numbers at all."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    from spibatch.monitor.report_png import _save

    fig, (narrow, wide) = plt.subplots(1, 2)
    narrow.plot([1, 2, 3], [0.04, 0.04, 0.08])
    narrow.set_yscale("log")
    wide.plot([1, 2, 3], [1e-3, 1e-2, 1.0])
    wide.set_yscale("log")
    _save(fig, tmp_path / "f.png")
    plt.close(fig)
    assert not isinstance(narrow.yaxis.get_minor_locator(), NullLocator) and narrow.yaxis.get_minorticklocs().size
    assert isinstance(wide.yaxis.get_minor_locator(), NullLocator) and not wide.yaxis.get_minorticklocs().size
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
