"""What one run measured, read from its run folder (:class:`spibatch.layout.RunLayout`), and the statistics
over a point's repeats.

Per EMC iteration (``emc/metrics.jsonl``; HTC also ``emc/htc/timing.jsonl``) the wall time ``time_s`` (shard
steps + combine/reduce + finish; the file writes excluded, the same span in both modes) is split into phases:

=============  ====================================================  =======================================
phase          HPC (one MPI job)                                     HTC (one task per shard)
=============  ====================================================  =======================================
compute        rank 0's shard steps (``step_s``)                     the kernels' seconds summed over tasks /
                                                                     min(workers, tasks): the balanced share
reduce         Allreduce + Allgatherv (``combine_s``, including      adding the returned sums (``reduce_s``)
               waiting for the slowest rank) + ``finish_s``          + ``finish_s``
data_movement  0 (the Allreduce moves the data: counted in reduce)   model written (``broadcast_s``) + the
                                                                     longest model read (``load_model_s``)
dispatch       0                                                     submit -> last result minus compute
                                                                     and model read: queueing, the
                                                                     interchange both ways, imbalance
container      not measured here (null)                              not measured here (null)
=============  ====================================================  =======================================

Phasing: the warm starts' seconds (``phase/metrics.jsonl``; not the first on each worker, which also pays the
worker's warm-up) over their iterations, the first starts' seconds, and the phase stage's wall time.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from spibatch.layout import HTC_TIMING, RunLayout

KERNELS = ("expand_s", "likelihood_s", "normalize_s", "merge_s")
PHASES = ("compute", "reduce", "data_movement", "dispatch")


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def emc_run(run_dir: Path, mode: str, workers: int) -> dict:
    """One EMC run: its iterations' times, kernels and phases; the stage's and startup's seconds."""
    run = RunLayout(run_dir)
    rows = _jsonl(run.emc_metrics)
    if not rows:
        raise ValueError(f"no EMC iteration recorded in {run.emc_metrics}")
    htc = {r["iteration"]: r for r in _jsonl(run.htc / HTC_TIMING)}
    iterations = []
    for row in rows:
        timing = row["timing"]
        kernels = {k.removesuffix("_s"): float(timing.get(k, 0.0)) for k in KERNELS}
        entry = {"iteration": row["iteration"], "time_s": float(row["time_s"]), "kernels_s": kernels,
                 "mean_kept_rotations": row.get("mean_kept_rotations"), "num_rot": row.get("num_rot"),
                 "phases_s": phases(row, htc.get(row["iteration"]), mode, workers)}
        if row["iteration"] in htc:
            entry["htc"] = {k: v for k, v in htc[row["iteration"]].items() if k != "iteration"}
        iterations.append(entry)
    marker = _marker(run, "emc")
    times = [i["time_s"] for i in iterations]
    return {"iterations": iterations, "median_iteration_s": statistics.median(times),
            "stage_s": marker.get("seconds"), "iterations_s": sum(times)}


def phases(row: dict, htc: dict | None, mode: str, workers: int) -> dict:
    """The iteration's wall time in compute / reduce / data_movement / dispatch / container (see the table)."""
    timing = row["timing"]
    finish = float(timing.get("finish_s", 0.0))
    if htc is None or mode == "hpc":
        out = {"compute": float(timing.get("step_s", 0.0)), "reduce": float(timing.get("combine_s", 0.0)) + finish,
               "data_movement": 0.0, "dispatch": 0.0}
    else:
        kernels = sum(float(timing.get(k, 0.0)) for k in KERNELS)
        compute = kernels / max(1, min(workers, int(htc.get("tasks", 1))))
        load = float(htc.get("load_model_s", 0.0))
        out = {"compute": compute, "reduce": float(htc.get("reduce_s", 0.0)) + finish,
               "data_movement": float(htc.get("broadcast_s", 0.0)) + load,
               "dispatch": max(0.0, float(htc.get("wait_s", 0.0)) - compute - load)}
    out["container"] = None
    return out


def phasing_run(run_dir: Path, workers: int = 1) -> dict:
    """One phasing run: per start its seconds and iterations; the phase stage's seconds.  The first start on each
    worker (the first ``workers`` submitted) also pays the worker's warm-up (imports, compiled kernels, FFT plans);
    the iteration time is the other (warm) starts' seconds over their iterations."""
    run = RunLayout(run_dir)
    starts = [r for r in _jsonl(run.phasing_metrics) if "errors" in r]
    if not starts:
        raise ValueError(f"no phasing start recorded in {run.phasing_metrics}")
    starts.sort(key=lambda r: r.get("start", 0))
    cold, warm = starts[:workers], starts[workers:] or starts
    marker = _marker(run, "phase")
    import h5py

    with h5py.File(run.phasing, "r") as f:
        edge = int(f["density"].shape[0])
    return {"edge": edge, "starts": [{"seconds": r["seconds"], "iterations": len(r["errors"])} for r in starts],
            "median_start_s": statistics.median(r["seconds"] for r in warm),
            "first_start_s": statistics.median(r["seconds"] for r in cold),
            "median_iteration_s": statistics.median(r["seconds"] / max(1, len(r["errors"])) for r in warm),
            "stage_s": marker.get("seconds")}


def _marker(run: RunLayout, stage: str) -> dict:
    try:
        return json.loads(run.marker(stage).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}


def spread(values: list[float]) -> dict:
    """Median, min, max, relative half-range and the values (a point's repeats)."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "rel_spread": None, "values": []}
    med = statistics.median(values)
    return {"median": med, "min": min(values), "max": max(values),
            "rel_spread": (max(values) - min(values)) / (2 * med) if med else None, "values": values}


def summarize(kind: str, repeats: list[dict]) -> dict:
    """A point's statistics over its repeats: per-iteration time (each repeat's median), stage and run wall
    time, startup (run wall minus iterations), and the phases' medians."""
    out = {"iteration_s": spread([r["median_iteration_s"] for r in repeats]),
           "stage_s": spread([r.get("stage_s") for r in repeats]),
           "run_wall_s": spread([r["run_wall_s"] for r in repeats])}
    if kind == "emc":
        out["startup_s"] = spread([r["run_wall_s"] - r["iterations_s"] for r in repeats])
        out["phases_s"] = {}
        for phase in PHASES:
            per = [statistics.median(i["phases_s"][phase] for i in r["iterations"]) for r in repeats]
            out["phases_s"][phase] = statistics.median(per)
        out["phases_s"]["container"] = None
        out["kernels_s"] = {k: statistics.median(statistics.median(i["kernels_s"][k] for i in r["iterations"])
                                                 for r in repeats) for k in ("expand", "likelihood", "normalize",
                                                                             "merge")}
        kept = [i.get("mean_kept_rotations") for r in repeats for i in r["iterations"]]
        kept = [k for k in kept if k is not None]
        out["mean_kept_rotations"] = statistics.median(kept) if kept else None
    else:
        out["start_s"] = spread([r["median_start_s"] for r in repeats])
        out["first_start_s"] = spread([r.get("first_start_s") for r in repeats])
    return out
