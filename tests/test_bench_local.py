"""spibatch bench for real: a 2-point matrix (HPC and HTC, 1 worker) on the local site, each point a real
`spibatch run ... --until emc` through Parsl, read back from the run folders."""

from __future__ import annotations

import json

import pytest

from bench_helpers import write_bench
from spibatch.bench import bench_command, bench_schema

pytest.importorskip("parsl", reason="Parsl not installed (pip install '.[platform]')")
pytestmark = pytest.mark.slow


def test_a_real_two_point_matrix_on_the_local_site(tmp_path, emc_small, monkeypatch):
    jsonschema = pytest.importorskip("jsonschema")
    monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT", "1")
    monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    path = write_bench(tmp_path, emc_small, workers="1", repeats=1)
    out, text = bench_command(path, [], out=tmp_path / "out", dry_run=False, rates=False)
    assert "2 point(s) measured" in text, text
    document = json.loads((out / "bench.json").read_text())
    jsonschema.validate(document, bench_schema())
    by_mode = {p["mode"]: p for p in document["points"]}
    for mode in ("hpc", "htc"):
        run = by_mode[mode]["repeat_runs"][0]
        assert [i["iteration"] for i in run["iterations"]] == [1, 2]
        assert 0 < run["median_iteration_s"] < run["run_wall_s"]
        assert by_mode[mode]["load_start"][0] is not None and by_mode[mode]["load_end"][0] is not None
    assert "htc" in by_mode["htc"]["repeat_runs"][0]["iterations"][0]          # emc/htc/timing.jsonl was read
    htc = by_mode["htc"]
    assert 0 < htc["summary"]["phases_s"]["dispatch"] < htc["repeat_runs"][0]["median_iteration_s"]   # measured
    assert (out / "report.html").is_file() and (out / "bench.md").is_file()
