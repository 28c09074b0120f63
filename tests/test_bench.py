"""spibatch bench: the bench file's refusals (one line, before anything runs), the dry run (creates nothing),
the runner (resume keeps measured points, redoes a half-done one; bench.json validates against the shipped
schema), the model (fits synthetic data, reports its check errors) and the self-contained report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench_helpers import calls, dumped, fake_command, synthetic_document, write_bench
from spibatch.bench import bench_command, bench_schema, model, report, runner
from spibatch.errors import InputError


def _error(path: Path, *sites) -> str:
    with pytest.raises(InputError) as caught:
        bench_command(path, list(sites), out=path.parent / "out", dry_run=True)
    text = str(caught.value)
    assert "\n" not in text and not (path.parent / "out").exists()
    return text


def test_unknown_key_and_bad_value_name_the_line(tmp_path, emc_small):
    path = write_bench(tmp_path, emc_small, extra="colour: red\n")
    assert "line 11: colour: unknown key" in _error(path)
    path = write_bench(tmp_path, emc_small, workers="0, 2")
    assert "line 5: matrix.workers" in _error(path)


def test_absurd_repeats_iterations_and_timeout_name_the_line(tmp_path, emc_small):
    """repeats 1e9 or iterations 1e6 passed the dry run (each run was within its limit): bounded."""
    path = write_bench(tmp_path, emc_small, repeats=1_000_000_000)
    assert "matrix.repeats: expected: Input should be less than or equal to 100" in _error(path)
    text = path.read_text().replace("  repeats: 1000000000", "  repeats: 1")
    path.write_text(text.replace("  iterations: 2", "  iterations: 1000000"))
    assert "matrix.iterations: expected: Input should be less than or equal to 10000" in _error(path)
    path.write_text(text.replace("  iterations: 2", "  timeout_s: 1e300"))
    assert "matrix.timeout_s: expected: Input should be less than or equal to 604800" in _error(path)


def test_unknown_workload_names_its_line(tmp_path, emc_small):
    path = write_bench(tmp_path, emc_small, workload="tiny, huge")
    assert "line 6: matrix.workloads.1: unknown workload 'huge'" in _error(path)


def test_unknown_data_set(tmp_path, emc_small):
    path = write_bench(tmp_path, emc_small)
    path.write_text(path.read_text().replace("photons: ", "dataset: no-such-set, photons_: "))
    assert "unknown key" in _error(path)
    path.write_text(path.read_text().replace(", photons_: ", ", ignore: ").split("  tiny:")[0]
                    + "  tiny: {dataset: no-such-set}\n")
    assert "unknown data set 'no-such-set'" in _error(path)


def test_a_workload_with_the_other_kinds_settings_is_refused(tmp_path, emc_small, small_dataset):
    """num_div on a phasing workload (or starts on an EMC one) was accepted and did nothing."""
    path = write_bench(tmp_path, emc_small, workload="starts")
    path.write_text(path.read_text() + f"  starts: {{kind: phasing, intensity: {small_dataset / 'intensities.bin'}, "
                    "voxel_size_per_m: 2.0e+7, num_div: 99}\n")
    assert "num_div is an EMC setting, which a phasing workload does not use" in _error(path)
    path = write_bench(tmp_path, emc_small)
    path.write_text(path.read_text().replace("frames: 120}", "frames: 120, starts: 8}"))
    assert "starts is a phasing setting, which an EMC workload does not use" in _error(path)


def test_more_workers_than_the_site_has(tmp_path, emc_small):
    path = write_bench(tmp_path, emc_small, workers="1, 4")
    assert "asks for 4 workers, but site 'here' offers 2" in _error(path)


def test_a_site_without_hpc_mode(tmp_path, emc_small):
    path = write_bench(tmp_path, emc_small, sites="k8s.yaml")
    (tmp_path / "k8s.yaml").write_text("name: kube\nprovider: kubernetes\nworkers: 2\ncontainer: {runtime: docker, "
                                       "image: spibatch:1}\n")
    assert "site 'kube' (provider kubernetes) cannot run EMC in HPC mode" in _error(path)


def test_hpc_points_on_a_site_that_runs_emc_as_one_process_are_refused(tmp_path, emc_small):
    """local.mpi off (written unquoted: YAML's false): every HPC point of 1 and 2 workers ran the same
    one-process command -- no scaling series; refused before anything runs.  HTC points there are fine."""
    path = write_bench(tmp_path, emc_small)
    (tmp_path / "here.yaml").write_text("name: here\nprovider: local\nworkers: 2\nlocal: {cores: 2, mpi: off}\n")
    text = _error(path)
    assert "site 'here' runs HPC-mode EMC as one process (local.mpi is off)" in text and "matrix.modes" in text
    path = write_bench(tmp_path / "htc", emc_small, modes="htc")
    (tmp_path / "htc" / "here.yaml").write_text("name: here\nprovider: local\nworkers: 2\nlocal: {cores: 2, mpi: off}\n")
    bench_command(path, [], out=tmp_path / "htc" / "out", dry_run=True)
    assert not (tmp_path / "htc" / "out").exists()


def test_a_gpu_matrix_on_a_batch_site_that_asks_for_no_gpus_is_refused(tmp_path, emc_small):
    path = write_bench(tmp_path, emc_small, sites="sl.yaml", modes="htc")
    path.write_text(path.read_text().replace("  repeats:", "  device: gpu\n  repeats:"))
    (tmp_path / "sl.yaml").write_text("name: sl\nprovider: slurm\nworkers: 2\nslurm: {partition: debug, "
                                      "cores_per_node: 4}\n")
    text = _error(path)
    assert "sl.yaml" in text and "slurm.gpus_per_node" in text and "asks for no GPUs" in text


def test_data_set_not_on_the_workers_filesystem(tmp_path, emc_small):
    path = write_bench(tmp_path, emc_small, sites="k8s.yaml", modes="htc")
    (tmp_path / "k8s.yaml").write_text("name: kube\nprovider: kubernetes\nworkers: 2\ncontainer: {runtime: docker, "
                                       "image: spibatch:1}\nkubernetes: {mount_path: /shared}\n")
    assert "outside the shared filesystem the pods of site 'kube' mount at /shared" in _error(path)
    path = write_bench(tmp_path, emc_small)
    path.write_text(path.read_text().replace(str(emc_small["photons"]), str(tmp_path / "gone.h5")))
    assert "gone.h5" in _error(path)


def test_an_unknown_key_of_a_workload_lists_the_workload_keys(tmp_path, emc_small):
    path = write_bench(tmp_path, emc_small)
    path.write_text(path.read_text().replace("frames: 120", "framez: 120"))
    text = _error(path)
    assert "workloads.tiny.framez: unknown key (expected one of: kind, dataset," in text and "frames," in text, text


def test_the_bench_folder_is_not_a_file_nor_a_run(tmp_path, emc_small):
    """--out naming a file, or a spibatch run's folder (whose report.html the bench's would replace): one line,
    dry run or not, and the folder left as it was."""
    path = write_bench(tmp_path, emc_small)
    (tmp_path / "afile").write_text("x")
    run = tmp_path / "a-run"
    run.mkdir()
    (run / "provenance.json").write_text("{}")
    (run / "report.html").write_text("the run's")
    for out, words in ((tmp_path / "afile", "exists and is not a directory"), (run, "holds a spibatch run")):
        for dry in (True, False):
            with pytest.raises(InputError, match=words):
                bench_command(path, [], out=out, dry_run=dry)
    assert sorted(p.name for p in run.iterdir()) == ["provenance.json", "report.html"]
    assert (run / "report.html").read_text() == "the run's"


def test_repeated_matrix_values_another_benchs_folder_and_a_run_folder_above(tmp_path, emc_small):
    """A mode listed twice (the same point measured twice, the second replacing the first), a folder holding
    another bench (its measured points were dropped from bench.json), a folder inside a run (its points' runs
    were each refused after the folder was made): one line, before anything."""
    path = write_bench(tmp_path, emc_small, modes="htc, htc")
    assert "matrix.modes" in _error(path) and "htc listed twice" in _error(path)
    path = write_bench(tmp_path, emc_small, workers="2, 1, 2")        # merged silently before: now as the others
    assert "matrix.workers" in _error(path) and "2 listed twice" in _error(path)
    path = write_bench(tmp_path, emc_small)
    other = tmp_path / "other"
    other.mkdir()
    (other / "bench.json").write_text(json.dumps({"name": "someone-else", "points": []}))
    with pytest.raises(InputError, match="holds the bench 'someone-else'"):
        bench_command(path, [], out=other, dry_run=True)
    run = tmp_path / "a-run"
    run.mkdir()
    (run / "provenance.json").write_text("{}")
    with pytest.raises(InputError, match="lies inside the earlier run folder"):
        bench_command(path, [], out=run / "bench", dry_run=False)
    assert sorted(p.name for p in run.iterdir()) == ["provenance.json"]


def test_weak_scaling_on_fewer_frames_than_workers_is_one_line(tmp_path, emc_small):
    """A one-frame data set, weak scaling on 1 and 2 workers: a ZeroDivisionError traceback before."""
    from spibatch.io.dragonfly import read_photons, write_photons

    write_photons(tmp_path / "one.h5", read_photons(emc_small["photons"], 0, 1))
    path = write_bench(tmp_path, {**emc_small, "photons": tmp_path / "one.h5"})
    path.write_text(path.read_text().replace("frames_per_shard: 60, frames: 120", "")
                    .replace("  iterations: 2", "  scaling: [weak]\n  iterations: 2"))
    text = _error(path)
    assert "matrix.workers" in text and "1 frame(s) cannot give each of 2 workers a frame" in text, text


def test_a_bench_whose_points_failed_exits_1(tmp_path, emc_small, monkeypatch):
    """Every point failing printed "0 point(s) measured, 4 failed" and exited 0: a script took it for results."""
    import sys

    from spibatch.bench.__main__ import main

    path = write_bench(tmp_path, emc_small, repeats=1)
    monkeypatch.setattr(runner, "run_command", lambda *a: [sys.executable, "-c", "import sys; sys.exit(3)"])
    assert main([str(path), "--out", str(tmp_path / "out"), "--no-rates"]) == 1
    document = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert {p["status"] for p in document["points"]} == {"failed"}


def test_spibatch_bench_exits_130_when_interrupted_and_1_when_a_point_failed(tmp_path, emc_small, monkeypatch):
    """`spibatch bench` (the typer command) as `python -m spibatch.bench`: an interrupted matrix is not a result
    (it exited 0), a failed point neither."""
    import sys

    from typer.testing import CliRunner

    from spibatch.cli import app

    import logging

    path = write_bench(tmp_path, emc_small, repeats=1)
    real = runner.measure_point
    for name in ("", "spibatch"):     # the command sets up logging for a process: put it back for the next tests
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "handlers", list(logger.handlers))
        monkeypatch.setattr(logger, "propagate", logger.propagate)
        monkeypatch.setattr(logger, "level", logger.level)

    def interrupt(point, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "measure_point", interrupt)
    done = CliRunner().invoke(app, ["bench", str(path), "--out", str(tmp_path / "out"), "--no-rates"])
    assert done.exit_code == 130, done.output
    monkeypatch.setattr(runner, "measure_point", real)
    monkeypatch.setattr(runner, "run_command", lambda *a: [sys.executable, "-c", "import sys; sys.exit(3)"])
    done = CliRunner().invoke(app, ["bench", str(path), "--out", str(tmp_path / "out"), "--no-rates"])
    assert done.exit_code == 1, done.output


def test_a_point_whose_run_still_runs_is_not_removed_under_it(tmp_path, emc_small, monkeypatch):
    """A bench killed with -9 leaves its point's `spibatch run` going; the next bench took the stale lock over
    and removed that point's folder under the live run: now one line naming it, and the folder kept."""
    import os
    import socket

    from spibatch import layout
    from spibatch.bench import matrix
    from spibatch.bench.settings import load_bench

    path = write_bench(tmp_path, emc_small, repeats=1)
    bench = load_bench(path)
    points = matrix.build(bench, matrix.site_infos(bench.matrix.sites))
    monkeypatch.setattr(runner, "run_command", fake_command)
    bench_command(path, [], out=tmp_path / "out", dry_run=False, rates=False)
    document = json.loads((tmp_path / "out" / "bench.json").read_text())
    first = next(p for p in document["points"] if p["key"] == points[0].key)
    first["status"], first["error"] = "failed", "killed"            # to be measured again
    (tmp_path / "out" / "bench.json").write_text(json.dumps(document))
    rep = tmp_path / "out" / "points" / points[0].folder / "rep-1"
    rep.mkdir(parents=True, exist_ok=True)
    (rep / layout.LOCK).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                               "started": "now", "command": ["spibatch", "run"]}))
    with pytest.raises(InputError, match="a run of this point from an earlier bench still runs"):
        bench_command(path, [], out=tmp_path / "out", dry_run=False, rates=False)
    assert (rep / layout.LOCK).exists() and not (tmp_path / "out" / layout.LOCK).exists()


def test_a_second_bench_into_the_same_folder_is_refused(tmp_path, emc_small):
    """Two benches into one folder removed each other's points (no lock): the second is one line, naming the
    first; the folder's lock is the bench's while it runs and gone after."""
    import os
    import socket

    from spibatch import layout

    path = write_bench(tmp_path, emc_small)
    out = tmp_path / "out"
    out.mkdir()
    (out / layout.LOCK).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                                "started": "now", "command": ["spibatch", "bench"]}))
    with pytest.raises(InputError, match="another process writes into"):
        bench_command(path, [], out=out, dry_run=False, rates=False)
    assert sorted(p.name for p in out.iterdir()) == [layout.LOCK]


def test_dry_run_prints_every_point_and_creates_nothing(tmp_path, emc_small):
    path = write_bench(tmp_path, emc_small)
    before = sorted(p.name for p in tmp_path.iterdir())
    out, text = bench_command(path, [], out=tmp_path / "out", dry_run=True)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == before
    for key in ("here/hpc/w1/tiny/strong", "here/htc/w1/tiny/strong", "here/hpc/w2/tiny/strong",
                "here/htc/w2/tiny/strong"):
        assert key in text
    assert text.count("==> workers.sh <==") == 4 and text.count("==> emc-hpc.sh <==") == 2
    assert "mpirun -n 2" in text or "spibatch.stages emc" in text
    assert "dry run: nothing created or submitted" in text


def test_runner_resumes_and_bench_json_follows_the_schema(tmp_path, emc_small, monkeypatch):
    jsonschema = pytest.importorskip("jsonschema")
    path = write_bench(tmp_path, emc_small)
    out = tmp_path / "out"
    monkeypatch.setattr(runner, "run_command", fake_command)

    class Stop(Exception):
        pass

    def stop_after_two(record):
        if len(calls(out)) >= 4:
            raise Stop

    from spibatch.bench import matrix
    from spibatch.bench.settings import load_bench

    bench = load_bench(path)
    infos = matrix.site_infos(bench.matrix.sites)
    points = matrix.build(bench, infos)
    with pytest.raises(Stop):
        runner.run_matrix(bench, infos, points, out, on_point=stop_after_two)
    assert len(calls(out)) == 4                          # two points x two repeats
    half = out / "points" / points[2].folder / "rep-1"   # a third point, half done when interrupted
    half.mkdir(parents=True)
    (half / "leftover").write_text("x")
    _, text = bench_command(path, [], out=out, dry_run=False, rates=False)
    assert len(calls(out)) == 8                          # only the two points not measured, both repeats
    assert not (half / "leftover").exists()
    assert "4 point(s) measured" in text
    document = json.loads((out / "bench.json").read_text())
    jsonschema.validate(document, bench_schema())
    htc = next(p for p in document["points"] if p["key"] == "here/htc/w2/tiny/strong")
    assert htc["summary"]["iteration_s"]["median"] == 1.0 and htc["summary"]["phases_s"]["data_movement"] > 0
    assert htc["sizes"]["frames"] == 120 and htc["sizes"]["shards"] == 2 and htc["threads_per_worker"] == 1
    _, again = bench_command(path, [], out=out, dry_run=False, rates=False)
    assert len(calls(out)) == 8 and "4 point(s) measured" in again


def test_model_fits_synthetic_data_and_reports_check_errors():
    rates = synthetic_document({})["rates"]
    truth = {"k_compute": 1.3, "k_overhead": 2.0, "beta": model.micro_beta(rates), "k_phasing": 1.5,
             "beta_phasing": model.micro_beta(rates, "phasing")}
    assert 0.5 < truth["beta"] < 1 and truth["beta"] != truth["beta_phasing"]   # the microbenchmarks' scaling
    result = model.evaluate(synthetic_document(truth))
    for key in truth:
        assert result["parameters"][key] == pytest.approx(truth[key], rel=1e-3, abs=1e-6)
    assert result["calibrate_workers"] == [1]
    roles = {p["key"]: p["role"] for p in result["points"]}
    assert roles["here/hpc/w1/tiny/strong"] == "calibration" and roles["here/htc/w4/tiny/strong"] == "check"
    assert result["check_max_abs_error"] < 1e-6 and result["check_within_goal"]
    off = model.evaluate(synthetic_document(truth, noise={"here/htc/w4/tiny/strong": 0.5}, calibrate_workers=[1, 2]))
    bad = next(p for p in off["points"] if p["key"] == "here/htc/w4/tiny/strong")
    assert bad["error"] == pytest.approx(1 / 1.5 - 1, rel=1e-3) and bad["role"] == "check"
    assert not off["check_within_goal"] and "NOT within the 25% goal" in model.summary_line(off)
    assert not result["underdetermined"]                  # two EMC calibration points (hpc and htc at 1 worker)
    one = synthetic_document(truth)
    alone = model.evaluate({**one, "points": [p for p in one["points"] if p["key"] == "here/hpc/w1/tiny/strong"]})
    assert alone["underdetermined"] and alone["check_within_goal"] is None      # was False: judged with no check
    assert "one EMC point for two parameters" in model.summary_line(alone)


def test_thread_scaling_is_not_measured_on_a_loaded_machine():
    rates = synthetic_document({})["rates"]
    assert model.micro_beta(rates) < 1
    loaded = {**rates, "load_start": [9.0, 9.0, 9.0]}
    assert model.micro_beta(loaded) == 1.0 and model.micro_beta(loaded, "phasing") == 1.0


def test_report_is_self_contained(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    document = synthetic_document({"k_compute": 1.0, "k_overhead": 1.0, "beta": 1.0, "k_phasing": 1.0,
                                   "beta_phasing": 1.0})
    document["model"] = model.evaluate(document)
    jsonschema.validate(dumped(document), bench_schema())
    written = report.write_all(tmp_path, document)
    assert {p.name for p in written} >= {"bench.md", "report.html", *report.PNGS.values()}
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5
    assert "http://" not in page and "https://" not in page and "<script" not in page
    table = (tmp_path / "bench.md").read_text()
    assert "| here/htc/w2/tiny/strong | 500 |" in table and "check)" in table


def test_schema_is_shipped_and_printed(capsys):
    from spibatch.bench import print_schema

    print_schema()
    assert json.loads(capsys.readouterr().out)["$id"] == "spibatch-bench/1"
    assert bench_schema()["properties"]["schema"]["const"] == runner.SCHEMA_ID



def test_workers_max_and_weak_scaling(tmp_path, emc_small):
    from spibatch.bench import matrix
    from spibatch.bench.settings import load_bench

    path = write_bench(tmp_path, emc_small, workers="1", modes="htc")
    path.write_text(path.read_text().replace("workers: [1]", "workers: max\n  scaling: [strong, weak]"))
    bench = load_bench(path)
    points = matrix.build(bench, matrix.site_infos(bench.matrix.sites))
    cells = {(p.scaling, p.workers): (p.frames, p.frames_per_shard) for p in points}
    assert cells == {("strong", 1): (120, 60), ("strong", 2): (120, 60),       # the site offers 2 cores
                     ("weak", 1): (120, 60), ("weak", 2): (240, 60)}          # 120 frames per worker
    path.write_text(path.read_text().replace("frames: 120}", "frames: 200}"))
    assert "needs 400 frames; the data set holds 240" in _error(path)


def test_scale_projection_runs_on_a_document():
    from spibatch.bench import scale

    document = synthetic_document({"k_compute": 1.0, "k_overhead": 1.0, "beta": 1.0, "k_phasing": 1.0,
                                   "beta_phasing": 1.0})
    document["model"] = model.evaluate(document)
    rows = {(r["num_div"], r["pixels"], r["kind"], r["count"], r["mode"]): r for r in scale.table(document)}
    hpc16, hpc256 = rows[(15, 128, "cpu", 16, "hpc")], rows[(15, 128, "cpu", 256, "hpc")]
    assert hpc256["compute"] < hpc16["compute"] / 8                      # the frames spread over 16x the nodes
    assert rows[(15, 128, "cpu", 16, "hpc")]["shards"] > 16                 # the kept entries cap a CPU shard
    htc8, htc64 = rows[(15, 128, "gpu", 8, "htc")], rows[(15, 128, "gpu", 64, "htc")]
    assert htc64["reduce"] == pytest.approx(8 * htc8["reduce"])          # sums through one interchange: x tasks
    assert htc64["iteration_tree_s"] < htc64["iteration_s"] / 4          # a filesystem tree keeps it flat
    assert "| 15 (168,900) | 128^2 | 16 nodes | 423 | hpc |" in scale.markdown(scale.table(document))
    assert scale.realtime(document)[0]["preview_s"] > scale.ASSUMED["first_result_s"]


def test_a_workload_its_stage_would_refuse_is_refused_first(tmp_path, emc_small, small_dataset):
    path = write_bench(tmp_path, emc_small, workload="starts")
    path.write_text(path.read_text() + f"  starts: {{kind: phasing, intensity: {small_dataset / 'intensities.bin'}, "
                    "voxel_size_per_m: 2.0e+7, crop_to: 48, starts: 2}\n")
    assert "workload 'starts'" in (text := _error(path)) and "crop_to 48 and the volume's edge 91 differ" in text


@pytest.mark.parametrize("simulate, expect", [
    ("{frames: 10000000000, pixels: 64}", ["workloads.sim.simulate.frames"]),
    ("{frames: 1000, pixels: 60000}", ["workloads.sim.simulate.pixels", "of memory"]),
])
def test_a_simulated_workload_too_big_for_the_site_is_refused_first(tmp_path, emc_small, simulate, expect):
    """A simulated workload is sized before any point starts, the dry run included (an absurd size passed the
    dry run and failed its first point with a traceback)."""
    path = write_bench(tmp_path, emc_small, workload="sim")
    path.write_text(path.read_text() + f"  sim: {{simulate: {simulate}, num_div: 2}}\n")
    with pytest.raises(InputError) as caught:
        bench_command(path, [], out=tmp_path / "out", dry_run=True)
    text = str(caught.value)
    assert "workload 'sim'" in text and all(e in text for e in expect), text
    assert not (tmp_path / "out").exists()


def test_a_simulated_workload_of_a_sane_size_passes_the_dry_run(tmp_path, emc_small):
    path = write_bench(tmp_path, emc_small, workload="sim")
    path.write_text(path.read_text() + "  sim: {simulate: {frames: 200, pixels: 32}, num_div: 2}\n")
    out, text = bench_command(path, [], out=tmp_path / "out", dry_run=True)
    assert "here/hpc/w2/sim/strong" in text and not out.exists()


def test_the_console_shows_bench_lines_and_parsls_warnings_not_its_info(capsys):
    """`spibatch bench`'s console: its own lines, and Parsl's warnings; Parsl's INFO (1 400 lines of its config
    and shutdown, from the kernel-rate probe) stays in Parsl's own log."""
    import logging
    import sys

    from spibatch.bench.__main__ import _not_parsl_info

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_not_parsl_info)
    for name, level, text in (("spibatch.bench", logging.INFO, "bench: point 1/8"),
                              ("parsl.dataflow.dflow", logging.INFO, "Starting DataFlowKernel with config"),
                              ("parsl.executors", logging.WARNING, "a block failed")):
        handler.handle(logging.LogRecord(name, level, __file__, 1, text, None, None))
    err = capsys.readouterr().err
    assert "bench: point 1/8" in err and "a block failed" in err and "DataFlowKernel" not in err


def test_the_phasing_model_takes_the_rate_timed_at_the_workloads_edge_and_thread_count():
    """An FFT's rate depends on the edge's factors and on whether a second thread pays at that size: where the
    microbenchmarks timed the workload's edge on t threads, the model uses that rate, not a median over other
    edges scaled by t^beta; elsewhere it falls back to the one-thread rate (at the edge when timed) / t^beta."""
    rates = {"cores": 2, "phasing": {
        "1": {"per_n3logn3": 4e-10, "edges": {"32": {"per_n3logn3": 4e-10}, "91": {"per_n3logn3": 9e-10}}},
        "2": {"per_n3logn3": 2e-10, "edges": {"32": {"per_n3logn3": 2e-10}, "91": {"per_n3logn3": 7e-10}}}}}
    assert model.phasing_rate_at(rates, 91, 2) == 7e-10            # timed there, on 2 threads
    assert model.phasing_rate_at(rates, 91, 1) == 9e-10
    assert model.phasing_rate_at(rates, 91, 4, beta=0.5) == 9e-10 / 2   # 4 threads not timed: one thread's / 4^0.5
    assert model.phasing_rate_at(rates, 64, 2, beta=1.0) == 4e-10 / 2   # edge not timed: the median rate
    n3 = 91 ** 3 * np.log2(91 ** 3)
    assert model.phasing_terms(91, 2, rates, None) == pytest.approx(7e-10 * n3)


def test_the_bench_folder_is_new_empty_or_a_bench_and_holds_no_links(tmp_path):
    """A resumed bench removes half-done points (``points/<point>``): through a link that removed another
    folder's files; a folder of other files (a report.html of one's own) would be written over."""
    from spibatch.bench import check_out
    from spibatch.errors import InputError

    check_out(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_out(tmp_path / "empty")
    other = tmp_path / "other"
    other.mkdir()
    (other / "report.html").write_text("mine")
    with pytest.raises(InputError, match="holds no bench.json"):
        check_out(other)
    victim = tmp_path / "victim"
    (victim / "local_htc_w1").mkdir(parents=True)
    (victim / "local_htc_w1" / "keep.txt").write_text("precious")
    for link_at in ("points", "points/local_htc_w1"):
        bench = tmp_path / f"bench-{link_at.count('/')}"
        (bench / "points").mkdir(parents=True)
        (bench / "bench.json").write_text("{}")
        if link_at == "points":
            (bench / "points").rmdir()
        (bench / link_at).symlink_to(victim if link_at == "points" else victim / "local_htc_w1")
        with pytest.raises(InputError, match="is a symbolic link"):
            check_out(bench)
    assert (victim / "local_htc_w1" / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("edit, expect", [
    (lambda text: text.replace('"median": 1.0', '"median": "abc"', 1), "is not of type"),
    (lambda text: text.replace('"median": 1.0', '"median": NaN', 1), "NaN is not a number JSON allows"),
    (lambda text: text[: len(text) // 2], "not a bench's document"),
    (lambda text: text.replace('"status": "measured"', '"status": "done"', 1), "is not one of"),
])
def test_an_edited_bench_json_is_refused_not_resumed_over(tmp_path, emc_small, monkeypatch, edit, expect):
    """A resumed bench reads the earlier bench.json: an edited or damaged one is one line naming it (it was a
    traceback, or -- not JSON -- silently replaced by a fresh document), and the file is left as it was."""
    path = write_bench(tmp_path, emc_small, workers="1", modes="hpc")
    out = tmp_path / "out"
    monkeypatch.setattr(runner, "run_command", fake_command)
    bench_command(path, [], out=out, dry_run=False, rates=False)
    damaged = edit((out / "bench.json").read_text())
    (out / "bench.json").write_text(damaged)
    with pytest.raises(InputError, match=expect) as caught:
        bench_command(path, [], out=out, dry_run=False, rates=False)
    assert str(caught.value).count("\n") == 0 and "bench.json" in str(caught.value)
    assert (out / "bench.json").read_text() == damaged


def test_rates_taken_from_a_file_are_checked(tmp_path):
    """--rates FILE: a bench.json or the kernels' own {"rates": ...} file; the rates are checked against the
    schema (text in a kernel rate was a traceback in the model)."""
    good = dumped(synthetic_document({}))     # a copy: the helpers' rates are shared
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(dumped(good)))
    assert runner.read_document(path, "--rates", rates_only=True)["rates"] == dumped(good)["rates"]
    alone = tmp_path / "rates.json"           # what `python -m spibatch.bench.kernels OUT.json` writes
    alone.write_text(json.dumps({"rates": dumped(good)["rates"]}))
    assert runner.read_document(alone, "--rates", rates_only=True)["rates"] == dumped(good)["rates"]
    good["rates"]["emc"]["1"]["merge_per_rot_pixel"] = "fast"
    path.write_text(json.dumps(dumped(good)))
    with pytest.raises(InputError, match=r"rates\.emc\.1\.merge_per_rot_pixel: 'fast' is not of type 'number'"):
        runner.read_document(path, "--rates", rates_only=True)
    with pytest.raises(InputError, match="file not found"):
        runner.read_document(tmp_path / "gone.json", "--rates", rates_only=True)
    os.mkfifo(tmp_path / "pipe.json")        # (it was "file not found")
    with pytest.raises(InputError, match=r"pipe\.json: --rates: not a regular file \(a pipe"):
        runner.read_document(tmp_path / "pipe.json", "--rates", rates_only=True)


def test_rates_and_no_rates_together_are_one_line(tmp_path):
    """--rates FILE with --no-rates was accepted silently (FILE ignored)."""
    from spibatch.bench.__main__ import main

    assert main(["b.yaml", "--rates", str(tmp_path / "r.json"), "--no-rates", "--dry-run"]) == 2
    done = subprocess.run([sys.executable, "-m", "spibatch", "bench", "b.yaml", "--rates", "r.json", "--no-rates"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["spibatch: error: r.json: --rates: given with --no-rates, which "
                                                "measures and uses no rates; give one of --rates FILE and --no-rates"]
    assert sorted(tmp_path.iterdir()) == []


def test_a_bench_json_of_an_earlier_version_is_resumed(tmp_path):
    """Earlier versions wrote the model's verdict as the text 'True' / 'False' (a NumPy bool through str): the
    model is computed again on a resume, so that part of the file is not held against it."""
    document = dumped(synthetic_document({"k_compute": 1.0, "k_overhead": 1.0, "beta": 1.0, "k_phasing": 1.0,
                                          "beta_phasing": 1.0}))
    document["model"] = {"check_within_goal": "False"}
    (tmp_path / "bench.json").write_text(json.dumps(document))
    assert runner.load_document(tmp_path)["model"] == {"check_within_goal": "False"}


def test_bench_settings_no_point_can_honour_are_refused_first(tmp_path, emc_small, monkeypatch):
    """calibrate_workers naming a count the matrix does not run, a --rates file that is not a bench's (checked
    before the matrix, the dry run too), a GPU matrix on a local site without one: one line, nothing created."""
    path = write_bench(tmp_path, emc_small, workers="1")
    path.write_text(path.read_text() + "model: {calibrate_workers: [64]}\n")
    with pytest.raises(InputError, match="model.calibrate_workers: model.calibrate_workers names 64 workers"):
        bench_command(path, [], out=tmp_path / "out", dry_run=True)
    path = write_bench(tmp_path, emc_small, workers="1")
    (tmp_path / "rates.json").write_text("garbage")
    for rates, expect in ((tmp_path / "rates.json", "not a bench's rates file"), (tmp_path, "is a directory"),
                          (tmp_path / "gone.json", "file not found")):
        for dry_run in (True, False):
            with pytest.raises(InputError, match=expect):
                bench_command(path, [], out=tmp_path / "out", dry_run=dry_run, rates=rates)
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("SPIBATCH_GPU_TWIN", "0")
    path.write_text(path.read_text().replace("  repeats:", "  device: gpu\n  repeats:"))
    try:
        import cupy
        cupy.cuda.runtime.getDeviceCount()
        pytest.skip("this machine has a GPU: a GPU matrix on it is sound")
    except Exception:   # noqa: BLE001 - no CuPy, or no device: what the check must say
        pass
    with pytest.raises(InputError, match="matrix.device: matrix.device gpu on a local site: set to gpu, but"):
        bench_command(path, [], out=tmp_path / "out", dry_run=True)


def test_a_workload_name_that_would_put_a_space_in_the_point_folders_is_refused(tmp_path, emc_small):
    """Workload names are part of every point's folder, where `spibatch run` works (which refuses spaces)."""
    path = write_bench(tmp_path, emc_small, workload="'starts (49)'")
    path.write_text(path.read_text().replace("  tiny:", "  'starts (49)':"))
    with pytest.raises(InputError, match="workload name 'starts \\(49\\)'"):
        bench_command(path, [], out=tmp_path / "out", dry_run=True)


def test_a_checkout_installed_into_a_venv_finds_the_shared_data_sets_above_its_bench_file(tmp_path, monkeypatch):
    """`pip install .` into a virtual environment, then the README's `spibatch bench benchmarks/bench/small.yaml`:
    the shared sets were looked for beside the installed package (in the venv's lib/), never beside the checkout."""
    from spibatch.bench import settings

    monkeypatch.delenv("SPIBATCH_SHARED_DATASETS", raising=False)
    monkeypatch.setattr(settings, "__file__", str(tmp_path / "venv/lib/python3.11/site-packages/spibatch/bench/x.py"))
    (tmp_path / "shared/datasets/dragonfly-small").mkdir(parents=True)
    (tmp_path / "shared/datasets/dragonfly-small/photons.emc").write_bytes(b"")
    bench = tmp_path / "checkout/benchmarks/bench"
    bench.mkdir(parents=True)
    assert settings.resolve_dataset("dragonfly-small", bench) == tmp_path / "shared/datasets/dragonfly-small"
    with pytest.raises(InputError, match="unknown data set 'dragonfly-tiny'.*shared sets \\(dragonfly-small\\)"):
        settings.resolve_dataset("dragonfly-tiny", bench)


def test_a_workload_changed_under_its_name_gets_data_of_its_own(tmp_path):
    """data/<workload>-<frames>/ was keyed by the name and the frame count only: a simulation of 200 photons a
    frame was measured again after the bench file said 2000, without a word."""
    from spibatch.bench.settings import Workload
    from spibatch.bench.workloads import data_digest

    low, high = (Workload(simulate={"frames": 40, "pixels": 32, "photons": p}) for p in (200.0, 2000.0))
    photons, detector = tmp_path / "p.emc", tmp_path / "d.h5"
    assert data_digest(low, photons, detector) != data_digest(high, photons, detector)
    assert data_digest(low, photons, detector) == data_digest(Workload(simulate={"frames": 40, "pixels": 32,
                                                                                  "photons": 200.0}), photons, detector)
    data = Workload(photons=photons, detector=detector)
    assert data_digest(data, photons, detector) != data_digest(data, tmp_path / "q.emc", detector)


@pytest.mark.parametrize("edit", ["median", "mode", "iteration"])
def test_an_edited_point_is_named_never_resumed_over(tmp_path, edit):
    """Three edits that passed the schema: a summary median (resumed over, then a matplotlib traceback), a
    mode (efficiencies of 3.28), one raw iteration time (kept beside a summary it no longer gives)."""
    document = dumped(synthetic_document({"k_compute": 1.0, "k_overhead": 1.0, "beta": 1.0}))
    point = document["points"][0]
    phases = {"compute": 0.1, "reduce": 0.0, "data_movement": 0.0, "dispatch": 0.0, "container": None}
    point["repeat_runs"][0]["iterations"] = [{"iteration": 1, "time_s": point["summary"]["iteration_s"]["median"],
                                              "kernels_s": {}, "phases_s": phases}]
    (tmp_path / "bench.json").write_text(json.dumps(document))
    assert runner.load_document(tmp_path)["points"][0]["key"] == point["key"]      # unedited: read
    if edit == "median":
        point["summary"]["iteration_s"]["median"] = 99.0
    elif edit == "mode":
        point["mode"] = "htc" if point["mode"] == "hpc" else "hpc"
    else:
        point["repeat_runs"][0]["iterations"][0]["time_s"] = 0.001
    (tmp_path / "bench.json").write_text(json.dumps(document))
    with pytest.raises(InputError, match=f"point {point['key']}: its record does not follow from its own runs"):
        runner.load_document(tmp_path)


def test_a_resume_says_what_it_drops_and_measures_again_and_a_loaded_machine_is_noted(caplog):
    import logging

    from spibatch.bench.matrix import Point

    document = dumped(synthetic_document({"k_compute": 1.0, "k_overhead": 1.0, "beta": 1.0}))
    keys = [p["key"] for p in document["points"]]
    site, mode, _, workload, scaling = keys[1].split("/")
    wanted = [Point(site, "local", mode, 1, workload, "emc", scaling, 500, 125, 3, 1, "cpu")]
    assert wanted[0].key == keys[1]
    with caplog.at_level(logging.WARNING, logger="spibatch"):
        runner.say_what_changed(document, wanted, kept={})
    said = caplog.text
    assert f"{len(keys) - 1} measured point(s) no longer in the matrix, dropped" in said and keys[0] in said
    assert f"1 measured point(s) whose settings changed are measured again: {keys[1]}" in said
    assert runner.loaded_note(document) is None                          # load 1 on 2 cores
    document["points"][2]["load_end"] = [3.5, 2.0, 1.0]
    note = runner.loaded_note(document)
    assert note.startswith(f"1 of {len(keys)} point(s) measured at a 1-minute load above the 2 usable core(s) (up "
                           f"to 3.5: {keys[2]})")
    from spibatch.bench import report

    document["loaded_machine_note"] = note
    document["points"][0]["git_revision"], document["versions"]["git_revision"] = "aaaa111", "bbbb222"
    text = report.markdown(document)
    assert "Points measured at spibatch revision(s) aaaa111 (1 point(s)), None" in text and "**Loaded machine**" in text
    assert "(1 repeat: no spread)" in text


def test_a_dry_run_reads_an_earlier_bench_json_as_the_run_does(tmp_path, emc_small):
    """--dry-run on a folder whose bench.json was damaged said 'nothing created or submitted', rc 0; the run then
    refused it."""
    path = write_bench(tmp_path, emc_small, workers="1")
    out = tmp_path / "out"
    out.mkdir()
    (out / "bench.json").write_text('{"name": "tiny", "points": [')
    with pytest.raises(InputError, match="not a bench's document"):
        bench_command(path, [], out=out, dry_run=True)


def test_rates_of_another_cpu_are_said(tmp_path, caplog):
    """A --rates file measured on another machine was taken without a word."""
    import logging

    from spibatch.bench import taken_rates

    document = dumped(synthetic_document({"k_compute": 1.0, "k_overhead": 1.0, "beta": 1.0}))
    (tmp_path / "bench.json").write_text(json.dumps(document))      # cpu_model "cpu"
    with caplog.at_level(logging.WARNING, logger="spibatch"):
        assert taken_rates(tmp_path / "bench.json") == document["rates"]
    assert "were measured on 'cpu', this machine is" in caplog.text
