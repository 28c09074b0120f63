"""The monitor in a real headless Chromium (Selenium + Debian's chromium / chromium-driver, which .ci/run installs).

A writer fills a run folder iteration by iteration with the real EMC writers (and, in another test, a real
`spibatch emc` run does) while `spibatch monitor` serves
it; the test waits for the page's plots to show each new iteration, then the phasing and the FSC, and saves
screenshots (under the test's tmp dir, and under $SPIBATCH_TEST_ARTIFACTS when set).  It also opens the run's
report.html from disk, with no server, and checks that its plots are drawn.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from monitor_runs import RunWriter, stop_monitor

from spibatch.monitor.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.slow
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("headless Chromium and ChromeDriver not found (apt-get install chromium chromium-driver; "
                ".ci/run installs them)", allow_module_level=True)
pytest.importorskip("selenium", reason="selenium is in the [test] extra")
pytest.importorskip("uvicorn", reason="uvicorn is in the [monitor] and [test] extras")


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                "--window-size=1500,1800"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def monitor(tmp_path):
    """`spibatch monitor runs/ --port 0` in a subprocess; yields (runs folder, the address it printed)."""
    root = tmp_path / "runs"
    root.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "spibatch", "monitor", str(root), "--port", "0",
                             "--poll-ms", "300"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        address = None
        deadline = time.monotonic() + 60
        while address is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if "open http://" in line:
                address = line.split("open ", 1)[1].split()[0]
        assert address and address.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.poll() else address
        yield root, address
    finally:
        stop_monitor(proc)


def wait_for(driver, script: str, expected, timeout: float = 45.0):
    """Poll ``return <script>`` in the page until it equals ``expected``; fail with the last value."""
    value = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script("try { return " + script + "; } catch (e) { return null; }")
        if value == expected:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{script} stayed {value!r}, expected {expected!r}")


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 10_000
    artifacts = os.environ.get("SPIBATCH_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artifacts) / name)
    return path


PLOT_POINTS = "document.getElementById('{id}').data[0].x.length"
SLICE_TITLE = "document.getElementById('plot-slice-0').layout.title.text"


def test_live_page_follows_a_run_iteration_by_iteration(browser, monitor, tmp_path):
    root, address = monitor
    browser.get(address)                     # before any run exists: the page says so, then finds the new run
    wait_for(browser, "document.getElementById('run-header').textContent.includes('No runs under')", True)
    run = RunWriter(root / "demo-live", iterations=5, starts=3)
    run.emc(1)
    wait_for(browser, PLOT_POINTS.format(id="plot-loglik"), 1)
    assert browser.find_element("css selector", "#runs a.current .name").text.startswith("demo-live")
    wait_for(browser, "document.getElementById('phase').hidden", True)
    for i in (2, 3):
        run.emc(i)
        for plot in ("plot-loglik", "plot-info", "plot-rms", "plot-anneal"):
            wait_for(browser, PLOT_POINTS.format(id=plot), i)
        wait_for(browser, "window.spibatchMonitor.rendered.sliceIteration", i)
    assert "(it. 3)" in browser.execute_script(f"return {SLICE_TITLE}")
    # the beta change at iteration 3 is marked on the metric plots
    assert browser.execute_script("return document.getElementById('plot-loglik').layout.annotations[0].text") == "β ×2"
    assert "iteration 3 of 5" in browser.find_element("id", "emc-progress").text
    # the three slices are drawn the same size (the third one's colour bar takes no room from its picture)
    sizes = browser.execute_script("return [0, 1, 2].map((i) => { const l = document.getElementById("
                                   "`plot-slice-${i}`)._fullLayout; return [l.xaxis._length, l.yaxis._length]; })")
    assert max(w for w, _ in sizes) - min(w for w, _ in sizes) <= 1 and sizes[0][0] > 100, sizes
    screenshot(browser, tmp_path, "monitor-emc-iteration-3.png")

    # the slider goes back to an earlier iteration, and stays there while new iterations arrive; it is moved
    # while a poll is in flight (the page's requests slowed down to make sure), and the move is not lost
    browser.execute_script("const f = window.fetch; window.slowFetch = true; window.fetch = (...a) => new Promise("
                           "(r) => setTimeout(r, window.slowFetch ? 1500 : 0)).then(() => f(...a));")
    wait_for(browser, "window.spibatchMonitor.busy", True)
    browser.execute_script("const s = document.getElementById('iteration'); s.value = 0;"
                           "s.dispatchEvent(new Event('input')); window.slowFetch = false;")
    wait_for(browser, "window.spibatchMonitor.rendered.sliceIteration", 1)
    run.emc(4)
    wait_for(browser, PLOT_POINTS.format(id="plot-loglik"), 4)
    assert browser.execute_script("return window.spibatchMonitor.rendered.sliceIteration") == 1

    # phasing: starts appear one by one, then the merge brings the PRTF and the density
    run.emc(5)
    run.phasing(starts=2, merge=False)
    wait_for(browser, "document.getElementById('plot-errors').data.length", 2)
    run.phasing()
    run.fsc()
    run.provenance("completed")
    wait_for(browser, "document.getElementById('plot-errors').data.length", 3)
    wait_for(browser, PLOT_POINTS.format(id="plot-prtf"), 11)
    wait_for(browser, "document.getElementById('plot-density-0').data.length", 2)    # density + support contour
    wait_for(browser, PLOT_POINTS.format(id="plot-fsc"), 11)
    wait_for(browser, "document.querySelector('#run-header .badge').textContent", "completed")
    assert "FSC = 0.5 at\n11.90 nm" in browser.find_element("id", "fsc-text").text   # 1 / (2e7 /m * 4.2 shells)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
    screenshot(browser, tmp_path, "monitor-finished.png")


def test_report_html_draws_from_disk_without_a_server(browser, tmp_path):
    """... also when a run's text holds `<!--<script` (a log line, a file name): inlined as it was, it made the
    data's script element swallow app.js, and the page stayed blank."""
    run = RunWriter(tmp_path / "run", iterations=4).complete()
    log = run.folder / "log.txt"
    log.write_text((log.read_text() if log.exists() else "") + "spibatch emc 'e<!--<script>.yaml'\n")
    report = write_report(run.folder)
    assert "<!--<script" not in report.read_text()
    browser.get(report.as_uri())
    wait_for(browser, PLOT_POINTS.format(id="plot-loglik"), 4)
    wait_for(browser, "window.spibatchMonitor.rendered.sliceIteration", 4)
    wait_for(browser, "document.getElementById('plot-errors').data.length", 3)
    wait_for(browser, PLOT_POINTS.format(id="plot-fsc"), 11)
    assert "static report" in browser.find_element("id", "live").text
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
    screenshot(browser, tmp_path, "report.png")


def test_live_page_follows_a_real_emc_run(browser, monitor, emc_config, tmp_path):
    """A real `spibatch emc` (240 frames of the small set, 6 iterations) writes into the watched folder:
    the page shows its iterations while it runs (at least one count between the first and the last: the run
    waits 2 s after iteration 3, whose six iterations alone can end between two polls of the page),
    then all 6, the slices of the last one and the completed badge."""
    root, address = monitor
    config = emc_config(tmp_path / "config", iterations=6)
    browser.get(address)
    wait_for(browser, "document.getElementById('run-header').textContent.includes('No runs under')", True)
    proc = subprocess.Popen([sys.executable, "-m", "spibatch", "emc", str(config), "--out", str(root / "emc-live")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, SPIBATCH_EMC_HOLD_AFTER="3:2"))
    seen = set()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            count = browser.execute_script("try { return " + PLOT_POINTS.format(id="plot-loglik") + "; }"
                                           " catch (e) { return null; }")
            if count:
                seen.add(count)
            if count == 6:
                break
            time.sleep(0.1)
        assert proc.wait(timeout=240) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 6 in seen and any(0 < c < 6 for c in seen), f"iteration counts the page showed: {sorted(seen)}"
    wait_for(browser, "window.spibatchMonitor.rendered.sliceIteration", 6)
    wait_for(browser, "document.querySelector('#run-header .badge').textContent", "completed", timeout=90)
    assert "iteration 6 of 6" in browser.find_element("id", "emc-progress").text
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
    screenshot(browser, tmp_path, "monitor-real-emc.png")


STAGE = "document.querySelector('#stages [data-stage={stage}]').{what}"


def test_live_page_shows_a_pipelines_stages_and_its_phasing_as_it_runs(browser, monitor, tmp_path):
    """A `spibatch run` folder filled stage by stage: the header lists the stages (done / running / waiting)
    and the phasing card counts the workers' finished starts before phasing.h5 exists."""
    root, address = monitor
    run = RunWriter(root / "pipeline-live", iterations=3, starts=3, pipeline=True)
    run.stage_done("simulate", seconds=4.5)
    run.stage_log("emc")
    run.emc(1)
    browser.get(address)
    wait_for(browser, STAGE.format(stage="emc", what="dataset.state"), "running")
    assert [browser.execute_script(f"return {STAGE.format(stage=s, what='dataset.state')}")
            for s in ("simulate", "phase", "validate")] == ["done", "waiting", "waiting"]
    assert "iteration 1 of 3" in browser.execute_script(f"return {STAGE.format(stage='emc', what='textContent')}")
    assert "4.5 s" in browser.execute_script(f"return {STAGE.format(stage='simulate', what='textContent')}")
    wait_for(browser, "document.getElementById('phase').hidden", True)
    screenshot(browser, tmp_path, "monitor-pipeline-emc.png")

    run.emc(2)
    run.emc(3)
    run.stage_done("emc")
    run.stage_log("phase")
    run.start_done(0)
    wait_for(browser, STAGE.format(stage="phase", what="dataset.state"), "running")
    wait_for(browser, "document.getElementById('phase').hidden", False)
    wait_for(browser, "document.getElementById('phase-progress').textContent", "— 1 of 3 starts done")
    assert "1 of 3 starts" in browser.execute_script(f"return {STAGE.format(stage='phase', what='textContent')}")
    run.start_done(1)
    wait_for(browser, "document.getElementById('phase-progress').textContent", "— 2 of 3 starts done")
    screenshot(browser, tmp_path, "monitor-pipeline-phasing.png")

    run.start_done(2)
    run.phasing()
    run.stage_done("phase")
    run.fsc()
    run.stage_done("validate")
    run.provenance("completed")
    wait_for(browser, "document.getElementById('plot-errors').data.length", 3)
    wait_for(browser, "document.querySelector('#run-header .badge').textContent", "completed")
    wait_for(browser, "[...document.querySelectorAll('#stages li')].map((li) => li.dataset.state).join()",
             "done,done,done,done")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
    screenshot(browser, tmp_path, "monitor-pipeline-done.png")


def test_live_page_shows_a_following_runs_source_and_previews(browser, monitor, tmp_path):
    """A run that follows a live source (the follower's real store): the Live source card fills commit by
    commit -- counts, hit rate, lit-pixel histogram --, then the newest preview density and the latency."""
    root, address = monitor
    run = RunWriter(root / "beamtime", iterations=5)
    run.follow(100, 10, received=1000.0)
    browser.get(address)
    wait_for(browser, "window.spibatchMonitor.rendered.follow", 100)
    assert not browser.find_element("id", "live-source").get_attribute("hidden")
    wait_for(browser, PLOT_POINTS.format(id="plot-hitrate"), 1)
    run.follow(200, 50, received=1010.0)
    wait_for(browser, "window.spibatchMonitor.rendered.follow", 300)
    wait_for(browser, PLOT_POINTS.format(id="plot-hitrate"), 2)
    assert browser.execute_script("return document.getElementById('plot-lit').data[0].y.reduce((a, b) => a + b)") == 300
    facts = browser.find_element("id", "follow-facts").text
    assert "frames so far\n300" in facts and "hits so far\n60" in facts and "20.0%" in facts
    run.emc(1)
    run.emc(2)
    run.preview(2, 60, newest_frame=1010.199, written=1030.0)
    wait_for(browser, "window.spibatchMonitor.rendered.preview", 2)
    wait_for(browser, "document.getElementById('plot-preview-0').data.length", 1)
    facts = browser.find_element("id", "follow-facts").text
    assert "iteration 2, 60 frames" in facts and "newest frame → newest density\n19.8 s (preview, iteration 2)" in facts
    assert "iteration 2 (60 frames" in browser.find_element("id", "preview-note").text
    for iteration in range(3, 8):     # a live run's EMC goes on past emc.iterations (5): "iteration 7 of 5" before
        run.emc(iteration)
    wait_for(browser, "window.spibatchMonitor.rendered.emcIterations", 7)
    said = browser.find_element("id", "emc-progress").text
    assert said.startswith("— iteration 7 (past emc.iterations = 5") and " of 5" not in said, said
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
    screenshot(browser, tmp_path, "monitor-live-source.png")
