"""The pipeline through Parsl on the local site: end to end, resume, EMC in HTC mode.

HTC-mode EMC (one Parsl task per shard per iteration, sums reduced in the driver) uses
the same shards, the same kernel and the same frame-ordered reduction as the serial
driver, so with one thread per task the model is bit for bit the serial one.
"""

from __future__ import annotations

import json
import sys

import pytest

from platform_helpers import assert_the_serial_model, LOCAL_HTC, markers, spibatch, write_pipeline, write_site

pytest.importorskip("parsl", reason="Parsl not installed (pip install '.[platform]')")

def test_local_site_end_to_end_then_resume_skips_finished_stages(emc_small, tmp_path):
    pipeline = write_pipeline(tmp_path, emc_small)
    run = tmp_path / "run"
    done = spibatch("run", pipeline, "--out", run, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    stages = markers(run)
    assert sorted(stages) == ["emc", "phase", "validate"]
    assert all(s["status"] == "done" for s in stages.values())
    assert stages["emc"]["emc_mode"] == "hpc"
    assert (run / "emc" / "output_003.h5").is_file() and (run / "phase" / "phasing.h5").is_file()
    assert len(list((run / "phase" / "starts").glob("start_*.npz"))) == 2
    assert (run / "runinfo").is_dir() and not (tmp_path / "runinfo").exists()   # Parsl's files stay in the run
    assert json.loads((run / "provenance.json").read_text())["status"] == "completed"
    assert str(run / "phase" / "phasing.h5") in done.stdout

    assert (run / "report.html").is_file() and not (run / "lock").exists()

    # resume after "losing" the last stage and the report: emc and phase are not run again
    before = {name: (run / "stages" / f"{name}.json").read_text() for name in ("emc", "phase")}
    emc_mtime = (run / "emc" / "checkpoint.h5").stat().st_mtime_ns
    (run / "stages" / "validate.json").unlink()
    (run / "report.html").unlink()
    again = spibatch("resume", run, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stages to run: validate (finished: emc, phase)" in again.stderr
    assert {name: (run / "stages" / f"{name}.json").read_text() for name in before} == before
    assert (run / "emc" / "checkpoint.h5").stat().st_mtime_ns == emc_mtime
    assert sorted(markers(run)) == ["emc", "phase", "validate"] and (run / "report.html").is_file()
    record = json.loads((run / "provenance.json").read_text())
    assert record["status"] == "completed" and len(record["resumed"]) == 1

    # and with everything finished, nothing runs
    third = spibatch("resume", run, cwd=tmp_path)
    assert third.returncode == 0 and "every stage has finished already" in third.stderr

    # a run folder handed over with its site.yaml edited: a resume would run the edit's shell lines (a review)
    (run / "stages" / "validate.json").unlink()
    site_copy = run / "site.yaml"
    text = site_copy.read_text()
    assert "  worker_init: ''\n" in text, text
    site_copy.write_text(text.replace("  worker_init: ''\n", f"  worker_init: 'touch {tmp_path}/ran'\n"))
    refused = spibatch("resume", run, cwd=tmp_path)
    assert refused.returncode == 2 and not (tmp_path / "ran").exists(), refused.stderr[-2000:]
    assert "site.yaml: RUN_DIR: changed since the run started" in refused.stderr.strip().splitlines()[-1]


def test_htc_emc_through_parsl_equals_the_serial_driver(emc_small, emc_config, tmp_path):
    pipeline = write_pipeline(tmp_path, emc_small, starts=1)
    site = write_site(tmp_path, "local-htc", LOCAL_HTC)
    run = tmp_path / "htc"
    done = spibatch("run", pipeline, "--site", site, "--out", run, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert markers(run)["emc"]["emc_mode"] == "htc"
    timing = [json.loads(line) for line in (run / "emc" / "htc" / "timing.jsonl").read_text().splitlines()]
    assert [t["tasks"] for t in timing] == [4, 4, 4]            # 240 frames, shards of 60
    assert not list((run / "emc" / "htc").glob("model_*.npy"))   # each broadcast model removed after use

    assert_the_serial_model(run / "emc", emc_config, tmp_path)


def test_dry_run_of_the_local_site_creates_nothing(emc_small, tmp_path):
    pipeline = write_pipeline(tmp_path, emc_small)
    done = spibatch("run", pipeline, "--dry-run", "--out", tmp_path / "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "==> workers.sh <==" in done.stdout and "process_worker_pool.py" in done.stdout
    assert f"export PATH={sys.executable.rsplit('/', 1)[0]}:$PATH" in done.stdout   # the interchange's bin/
    assert "nothing submitted" in done.stdout
    assert not (tmp_path / "run").exists() and not (tmp_path / "runinfo").exists()


@pytest.mark.parametrize("mode", ["hpc", "htc"])
def test_a_stage_that_fails_on_the_workers_ends_in_one_line_and_a_failed_run(emc_small, tmp_path, mode):
    """A worker environment that breaks EMC (an unknown Numba threading layer, set by the site's worker_init):
    `spibatch run` ends with one line -- the stage, the cause, where the details are, how to continue -- and exit
    status 1, not a traceback; the run is marked failed; a resume of it says the same line, and a resume with the
    fixed site file (--site) finishes the run."""
    pipeline = write_pipeline(tmp_path, emc_small, starts=1)
    site = write_site(tmp_path, f"broken-{mode}", f"""name: broken-{mode}
provider: local
workers: 2
emc_mode: {mode}
local: {{cores: 2, strategy_period_s: 0.5, worker_init: "export NUMBA_THREADING_LAYER=nonexistent"}}
""")
    run = tmp_path / "run"
    done = spibatch("run", pipeline, "--site", site, "--out", run, cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    details = run / "stages" / ("jobs/emc.stderr" if mode == "hpc" else "emc.traceback")
    assert last.startswith(f"spibatch: error: the emc {'job' if mode == 'hpc' else 'stage'} failed: ValueError: "
                           "The threading layer requested 'nonexistent' is unknown to Numba;"), last
    assert f"; {details};" in last.replace("its output: ", "").replace("its traceback: ", ""), last
    assert last.endswith(f"continue with: spibatch resume {run} (--site FILE: with a fixed site)"), last
    assert "threading layer requested 'nonexistent'" in details.read_text()
    record = json.loads((run / "provenance.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("StageFailed: the emc"), record
    assert not (run / "stages" / "emc.json").exists() and not (run / "lock").exists()

    again = spibatch("resume", run, cwd=tmp_path)
    assert again.returncode == 1 and "Traceback" not in again.stderr, again.stderr[-3000:]
    assert again.stderr.strip().splitlines()[-1] == last

    before = (run / "site.yaml").read_text()
    gone = spibatch("resume", run, "--site", tmp_path / "gone.yaml", cwd=tmp_path)
    assert gone.returncode == 2 and "gone.yaml" in gone.stderr.strip().splitlines()[-1], gone.stderr[-2000:]
    assert (run / "site.yaml").read_text() == before

    # the cause was the site: resumed on the fixed one, the run ends, and its copy of the site is the new one
    fixed = write_site(tmp_path, f"fixed-{mode}", site.read_text().replace(
        ', worker_init: "export NUMBA_THREADING_LAYER=nonexistent"', ""))
    done = spibatch("resume", run, "--site", fixed, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "nonexistent" not in (run / "site.yaml").read_text() and f"fixed-{mode}" in done.stderr
    record = json.loads((run / "provenance.json").read_text())
    assert record["status"] == "completed" and markers(run)["emc"]["emc_mode"] == mode
    again = spibatch("resume", run, cwd=tmp_path)          # the new copy is the one the record names now
    assert again.returncode == 0 and "every stage has finished already" in again.stderr, again.stderr[-2000:]
