"""EMC on the medium shared data set through the real Slurm cluster: HPC mode vs HTC mode, 2 workers.

    python3 benchmarks/platform_emc.py [--iterations 3] [--frames-per-shard 1000] [--out DIR] [--data DIR]
                                       [--modes hpc,htc] [--merge per_rotation|pooled]

Runs ``spibatch run PIPELINE --site SITE --until emc`` twice on the single-node cluster
(.ci/slurm-up.sh; 2 CPUs): emc_mode hpc (``spibatch emc`` as one MPI job of 2 ranks x 1
thread, Parsl's MPIExecutor + srun) and emc_mode htc (one Parsl task per shard per iteration
on 2 HTEX workers x 1 thread).  Same data, same shards (4000 frames in shards of 1000), same
settings (num_div 5: 6300 rotations; Dragonfly's medium config).  Reports per mode the time
per iteration from ``emc/metrics.jsonl`` (``time_s``: step + combine/reduce + finish; the
writes are excluded in both modes), the EMC stage's wall time (with the batch jobs' start),
and for HTC where the time beyond the tasks' own work goes (``emc/htc/timing.jsonl``):
model broadcast (write of the .npy), load of the model in the task, wait (submit -> last
result, includes dispatch and the return of the sums through Parsl), reduce.  ``--data`` names
another Dragonfly data set (photons.emc, det_sim.h5), e.g. dragonfly-small with
``--frames-per-shard 250`` for a quick check of this script.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEDIUM = REPO.parent / "shared" / "datasets" / "dragonfly-medium"
PIPELINE = """name: bench-medium
emc: {{photons: {photons}, detector: {detector}, num_div: 5, iterations: {iterations}, frames_per_shard: {fps},
       beta_schedule: {{factor: 2.0, period: 10}}, need_scaling: true, merge: {merge}}}
"""
SITE = """name: bench-slurm
provider: slurm
workers: 2
emc_mode: {mode}
slurm: {{partition: debug, walltime: "01:00:00", cores_per_node: 2, max_idletime_s: 2, strategy_period_s: 0.5}}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--frames-per-shard", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("bench-platform-emc"))
    parser.add_argument("--modes", default="hpc,htc", help="hpc, htc, or both (comma-separated)")
    parser.add_argument("--merge", default="per_rotation", choices=["per_rotation", "pooled"],
                        help="emc.merge (per_rotation: HTC mode runs two rounds of tasks per iteration)")
    parser.add_argument("--data", type=Path, default=MEDIUM, help="the data set's folder (photons.emc, det_sim.h5)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from spibatch.layout import HTC_TIMING, RunLayout

    args.out.mkdir(parents=True, exist_ok=True)
    pipeline = args.out / "pipeline.yaml"
    pipeline.write_text(PIPELINE.format(photons=args.data / "photons.emc", detector=args.data / "det_sim.h5",
                                        iterations=args.iterations, fps=args.frames_per_shard,
                                        merge=args.merge))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    result = {}
    for mode in args.modes.split(","):
        site = args.out / f"site-{mode}.yaml"
        site.write_text(SITE.format(mode=mode))
        run = args.out / mode
        began = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "spibatch", "run", str(pipeline), "--site", str(site),
                               "--out", str(run), "--until", "emc"], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            sys.exit(f"{mode}: {done.stderr[-3000:]}")
        wall = time.perf_counter() - began
        layout = RunLayout(run)
        rows = [json.loads(line) for line in layout.emc_metrics.read_text().splitlines()]
        marker = json.loads(layout.marker("emc").read_text())
        entry = {"iteration_s": [round(r["time_s"], 2) for r in rows],
                 "median_iteration_s": round(statistics.median(r["time_s"] for r in rows), 2),
                 "emc_stage_s": marker["seconds"], "run_wall_s": round(wall, 1),
                 "kernel_s_per_iteration": [round(sum(v for k, v in r["timing"].items()
                                                      if k in ("expand_s", "likelihood_s", "normalize_s",
                                                               "merge_s")), 2) for r in rows]}
        if mode == "htc":
            entry["htc"] = [json.loads(line) for line in (layout.htc / HTC_TIMING).read_text().splitlines()]
        result[mode] = entry
        print(json.dumps({mode: entry}), flush=True)
    if "hpc" in result and "htc" in result:
        result["htc_over_hpc"] = round(result["htc"]["median_iteration_s"] / result["hpc"]["median_iteration_s"], 3)
    print(json.dumps(result, indent=2))
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
