"""Parsl on the local and the Slurm site: time to the first task result, and dispatch overhead.

    python3 benchmarks/platform_latency.py [--repeats 3] [--tasks 1000] [--sites local,slurm]

For each site, a fresh Python process (as `spibatch run` would be) loads the site's Parsl
config and submits one empty python app: "first result" is the time from the process's
start to that result (imports, interchange, worker start: on Slurm, sbatch, the job's
start and srun).  Then ``--tasks`` empty apps are submitted at once: "per task" is their
wall time divided by their number (2 workers).  The Slurm site is the CI's single-node
cluster (.ci/slurm-up.sh), strategy_period 0.5 s.  Prints one JSON line per run and the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SITES = {
    "local": "name: bench-local\nprovider: local\nworkers: 2\nlocal: {strategy_period_s: 0.5}\n",
    "slurm": "name: bench-slurm\nprovider: slurm\nworkers: 2\nemc_mode: htc\n"
             "slurm: {partition: debug, walltime: '00:10:00', cores_per_node: 2, strategy_period_s: 0.5}\n",
}

CHILD = r"""
import json, sys, time
began = float(sys.argv[3])
import parsl
from parsl import python_app
from pathlib import Path
from spibatch.backends import TASKS_LABEL, load_site, provider_for

def empty():
    return None

site = load_site(sys.argv[1])
run_dir = Path(sys.argv[2])
dfk = parsl.load(provider_for(site).parsl_config(run_dir))
app = python_app(empty, executors=[TASKS_LABEL])
app().result()
first = time.time() - began
n = int(sys.argv[4])
start = time.perf_counter()
futures = [app() for _ in range(n)]
[f.result() for f in futures]
batch = time.perf_counter() - start
dfk.cleanup()
print(json.dumps({"first_result_s": first, "tasks": n, "batch_s": batch, "per_task_ms": 1000 * batch / n}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--sites", default="local,slurm")
    args = parser.parse_args()
    summary = {}
    with tempfile.TemporaryDirectory(prefix="spibatch-bench-") as scratch:
        for name in args.sites.split(","):
            site = Path(scratch) / f"{name}.yaml"
            site.write_text(SITES[name])
            rows = []
            for k in range(args.repeats):
                run_dir = Path(scratch) / f"{name}-{k}"
                run_dir.mkdir()
                began = time.time()
                done = subprocess.run([sys.executable, "-c", CHILD, str(site), str(run_dir), repr(began),
                                       str(args.tasks)], capture_output=True, text=True, timeout=900,
                                      env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
                if done.returncode != 0:
                    sys.exit(f"{name}: {done.stderr[-2000:]}")
                row = json.loads(done.stdout.strip().splitlines()[-1])
                print(json.dumps({"site": name, **row}), flush=True)
                rows.append(row)
            summary[name] = {key: statistics.median(r[key] for r in rows) for key in ("first_result_s", "per_task_ms")}
    print(json.dumps({"medians": summary}, indent=2))


if __name__ == "__main__":
    main()
