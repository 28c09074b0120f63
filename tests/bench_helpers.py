"""Helpers of the bench tests: bench and site files, a stand-in for `spibatch run` that writes a run folder's
timing files at once, and a synthetic bench document (rates + points) for the model and report tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = """name: t
matrix:
  sites: [{sites}]
  modes: [{modes}]
  workers: [{workers}]
  workloads: [{workload}]
  iterations: 2
  repeats: {repeats}
workloads:
  tiny: {{photons: {photons}, detector: {detector}, num_div: 1, frames_per_shard: 60, frames: 120}}
"""

LOCAL = """name: here
provider: local
workers: 2
local: {cores: 2, strategy_period_s: 0.5}
"""

# What a repeat runs instead of `spibatch run` in the fast tests: the files a real EMC run leaves (RunLayout),
# and one line per call in calls.txt beside the point folders (to count repeats).
FAKE_RUN = r"""
import json, sys
from pathlib import Path
run, mode = Path(sys.argv[1]), sys.argv[2]
(run / "emc" / "htc").mkdir(parents=True)
(run / "stages").mkdir()
lines, htc = [], []
for i in (1, 2):
    timing = {"step_s": 0.9, "expand_s": 0.2, "likelihood_s": 0.3, "normalize_s": 0.1, "merge_s": 0.3,
              "combine_s": 0.05, "finish_s": 0.05}
    lines.append(json.dumps({"iteration": i, "time_s": 1.0, "num_rot": 60, "mean_kept_rotations": 60.0,
                             "timing": timing}))
    htc.append(json.dumps({"iteration": i, "tasks": 2, "broadcast_s": 0.01, "wait_s": 0.9, "task_s": 0.5,
                           "load_model_s": 0.02, "reduce_s": 0.03, "step_s": 0.95}))
(run / "emc" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
if mode == "htc":
    (run / "emc" / "htc" / "timing.jsonl").write_text("\n".join(htc) + "\n")
(run / "stages" / "emc.json").write_text(json.dumps({"stage": "emc", "status": "done", "seconds": 3.0}))
with open(run.parent.parent / "calls.txt", "a") as fh:
    fh.write(str(run) + "\n")
"""


def write_bench(folder: Path, emc_small: dict, *, sites: str = "here.yaml", modes: str = "hpc, htc",
                workers: str = "1, 2", workload: str = "tiny", repeats: int = 2, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "here.yaml").write_text(LOCAL)
    path = folder / "bench.yaml"
    path.write_text(BENCH.format(sites=sites, modes=modes, workers=workers, workload=workload, repeats=repeats,
                                 photons=emc_small["photons"], detector=emc_small["detector"]) + extra)
    return path


def fake_command(pipeline, site, run_dir, stage):
    mode = "htc" if "emc_mode: htc" in Path(site).read_text() else "hpc"
    return [sys.executable, "-c", FAKE_RUN, str(run_dir), mode]


def calls(out: Path) -> list[str]:
    path = out / "points" / "calls.txt"
    return path.read_text().splitlines() if path.exists() else []


RATES = {"cores": 2, "load_start": [1.0, 1.0, 1.0], "load_end": [1.0, 1.0, 1.0],
         "emc": {"1": {"expand_per_rot_pixel": 1e-7, "likelihood_per_rot_entry": 2e-9, "likelihood_per_rot_frame": 3e-7,
                       "normalize_per_kept": 1e-7, "merge_per_rot_pixel": 2e-7, "merge_per_rot_entry": 8e-9},
                 "2": {"expand_per_rot_pixel": 0.6e-7, "likelihood_per_rot_entry": 1.2e-9,
                       "likelihood_per_rot_frame": 1.8e-7, "normalize_per_kept": 0.6e-7, "merge_per_rot_pixel": 1.2e-7,
                       "merge_per_rot_entry": 5e-9}},
         "phasing": {"1": {"per_n3logn3": 4e-10}, "2": {"per_n3logn3": 2.8e-10}},
         "memory": {"add_bytes_per_s": 6e9, "npy_write_bytes_per_s": 7e8, "npy_read_bytes_per_s": 7e8},
         "parsl": {"first_result_s": 10.0, "per_task_s": 0.005, "result_bytes_per_s": 2e8}, "container_start_s": None}

SIZES = {"frames": 500, "rotations": 420, "pixels_used": 2984, "pixels_merged": 3984, "entries_used": 150000,
         "entries_merged": 200000, "model_edge": 91, "shards": 4, "frames_per_shard": 125}


def synthetic_document(truth: dict, noise: dict | None = None, calibrate_workers=None) -> dict:
    """A bench document whose points' times are the model's own prediction with ``truth`` parameters (times
    1 + noise[key]): EMC on one site, both modes, 1, 2, 4 workers; phasing at 1, 2 workers."""
    from spibatch.bench import model

    noise = noise or {}
    points = []
    for workers in (1, 2, 4):
        for mode in ("hpc", "htc"):
            key = f"here/{mode}/w{workers}/tiny/strong"
            threads = max(1, 4 // workers)
            terms = model.emc_terms(SIZES, mode, workers, threads, RATES, load=1.0, kept_per_frame=420.0,
                                    beta=truth.get("beta", 1.0))
            t = model.combine(terms, {"k_compute": 1.0, "k_overhead": 1.0, **truth}) * (1 + noise.get(key, 0.0))
            points.append(_point(key, mode, workers, "emc", t, dict(SIZES), threads))
    for workers in (1, 2):
        key = f"here/tasks/w{workers}/starts/strong"
        it = truth.get("k_phasing", 1.0) * model.phasing_terms(48, max(1, 2 // workers), RATES, 1.0,
                                                              truth.get("beta_phasing", 1.0))
        p = _point(key, "tasks", workers, "phasing", it * (1 + noise.get(key, 0.0)),
                   {"edge": 48, "starts": 4, "iterations": 60}, max(1, 2 // workers))
        p["summary"].update(stage_s=_spread(-(-4 // workers) * 60 * it + 2.0), start_s=_spread(60 * it),
                            first_start_s=_spread(60 * it))
        points.append(p)
    return {"schema": "spibatch-bench/1", "name": "synthetic", "created": "2026-01-01T00:00:00Z",
            "updated": "2026-01-01T00:00:00Z", "loaded_machine_note": None,
            "machine": {"host": "h", "cpu_model": "cpu", "logical_cores": 2, "usable_cores": 2, "memory_bytes": 2 ** 34,
                        "os": "linux", "gpu": []},
            "versions": {"python": "3"}, "sites": [{"name": "here", "provider": "local", "capacity": 4}],
            "matrix": {}, "workloads": {}, "points": points, "rates": RATES, "model": None,
            "model_settings": {"calibrate_workers": calibrate_workers, "calibrate_sites": None}}


def _spread(v: float) -> dict:
    return {"median": v, "min": v, "max": v, "rel_spread": 0.0, "values": [v]}


def _point(key, mode, workers, kind, t, sizes, threads) -> dict:
    site, _, _, workload, scaling = key.split("/")
    phases = {"compute": 0.8 * t, "reduce": 0.1 * t, "data_movement": 0.05 * t, "dispatch": 0.05 * t, "container": None}
    summary = {"iteration_s": _spread(t), "stage_s": _spread(3 * t), "run_wall_s": _spread(3 * t + 10)}
    if kind == "emc":
        summary.update(startup_s=_spread(10.0), phases_s=phases, mean_kept_rotations=420.0,
                       kernels_s={"expand": 0.1, "likelihood": 0.1, "normalize": 0.1, "merge": 0.1})
    run = {"repeat": 1, "run_dir": "/x", "run_wall_s": 3 * t + 10, "load_start": [1.0, 1.0, 1.0],
           "load_end": [1.0, 1.0, 1.0], "median_iteration_s": t}
    return {"key": key, "fingerprint": "0" * 16, "site": site, "provider": "local", "mode": mode, "workers": workers,
            "workload": workload, "kind": kind, "scaling": scaling, "frames": 500 if kind == "emc" else None,
            "frames_per_shard": 125, "iterations": 3, "repeats": 1, "device": "cpu", "status": "measured",
            "error": None, "load_start": [1.0, 1.0, 1.0], "load_end": [1.0, 1.0, 1.0], "threads_per_worker": threads,
            "sizes": sizes, "repeat_runs": [run], "summary": summary}


def dumped(document: dict) -> dict:
    return json.loads(json.dumps(document))
