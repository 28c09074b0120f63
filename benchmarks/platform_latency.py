"""Parsl on the local and the Slurm site: time to the first task result, where it goes, and dispatch overhead.

    python3 benchmarks/platform_latency.py [--repeats 3] [--tasks 1000] [--sites local,slurm,slurm-salloc] [--repo DIR]
                                           [--strategy-period S]

For each site, a fresh Python process (as `spibatch run` would be) loads the site's Parsl config and submits
one empty python app: "first result" is the time from the process's start to that result (imports,
interchange, worker start: on Slurm, sbatch, the job's start and srun; ``slurm-salloc``: the same site with ``slurm.start: salloc``).  Then ``--tasks`` empty apps are
submitted at once: "per task" is their wall time divided by their number (2 workers).  The Slurm site is the
CI's single-node cluster (.ci/slurm-up.sh).  ``--strategy-period``: the sites' ``strategy_period_s`` (default:
each site's own default); ``--repo``: the spibatch tree to measure (default: this one; another checkout
measures "before" in the same session).

The first result's path is split into phases from the process's own clock and the time stamps of Parsl's logs
in the run's ``runinfo/`` (one clock: one machine):

  imports        process start -> ``parsl.load`` called (Python, spibatch, parsl, the site's config)
  interchange    DataFlowKernel start -> the interchange answers (its process's start, mostly its imports;
                 CurveZMQ keys included)
  strategy wait  interchange up -> the first block is submitted (the strategy timer's next tick)
  block launch   the provider's submit (LocalProvider: bash; Slurm: sbatch)
  pool start     block submitted -> the worker pool's first log line (its imports; Slurm: the job's start, srun)
  pool setup     -> "will spawn N workers" (its multiprocessing manager: a spawned process, its imports)
  workers start  -> the first worker's first log line (spawned processes, their imports); the registration
                 (interchange log) happens meanwhile
  task           -> the result back in the driver (dispatch, run, return)

"cpu_s_to_first": the CPU seconds the driver and the run's Parsl processes (interchange, pools, their workers
and multiprocessing manager; on Slurm those on this node) had used when the first result came, and how many
processes.  Prints one JSON line per run and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SITES = {
    "local": "name: bench-local\nprovider: local\nworkers: 2\nlocal: {{{period}}}\n",
    "slurm": "name: bench-slurm\nprovider: slurm\nworkers: 2\nemc_mode: htc\n"
             "slurm: {{partition: debug, walltime: '00:10:00', cores_per_node: 2{comma}{period}}}\n",
    "slurm-salloc": "name: bench-slurm-salloc\nprovider: slurm\nworkers: 2\nemc_mode: htc\n"
                    "slurm: {{partition: debug, walltime: '00:10:00', cores_per_node: 2, start: salloc{comma}{period}}}\n",
}

CHILD = r"""
import json, sys, time
began = float(sys.argv[3])
from pathlib import Path
from spibatch.backends import TASKS_LABEL, load_site, provider_for

def empty():
    return None

site = load_site(sys.argv[1])
run_dir = Path(sys.argv[2])
config = provider_for(site).parsl_config(run_dir)   # imports parsl (as spibatch run does)
import parsl
from parsl import python_app
load_at = time.time()
try:
    from spibatch.parsl_shutdown import load
except ImportError:
    load = parsl.load
dfk = load(config)
loaded_at = time.time()
app = python_app(empty, executors=[TASKS_LABEL])
app().result()
first_at = time.time()
import psutil   # Parsl's dependency
def cpu_s():    # CPU seconds of this process and of every Parsl process of this run (interchange, pools, workers)
    found = {psutil.Process()}
    for proc in psutil.process_iter(["cmdline"]):
        if str(run_dir) in " ".join(proc.info["cmdline"] or []):
            found.add(proc)
    for proc in list(found):
        try:
            found.update(proc.children(recursive=True))
        except psutil.Error:
            pass
    total = 0.0
    for proc in found:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total, len(found)
cpu, processes = cpu_s()
n = int(sys.argv[4])
start = time.perf_counter()
futures = [app() for _ in range(n)]
[f.result() for f in futures]
batch = time.perf_counter() - start
dfk.cleanup()
print(json.dumps({"first_result_s": first_at - began, "tasks": n, "batch_s": batch, "per_task_ms": 1000 * batch / n,
                  "cpu_s_to_first": cpu, "processes": processes,
                  "began": began, "load_at": load_at, "loaded_at": loaded_at, "first_at": first_at}))
"""

STAMP = re.compile(r"^(\d{10}\.\d+) ")          # Parsl's logs: epoch seconds first


def _first(path: Path, pattern: str) -> float | None:
    """The time stamp of the first line of the log ``path`` that matches ``pattern`` (None: none does)."""
    if not path.is_file():
        return None
    wanted = re.compile(pattern)
    for line in path.read_text(errors="replace").splitlines():
        match = STAMP.match(line)
        if match and wanted.search(line):
            return float(match.group(1))
    return None


def phases(run_dir: Path, row: dict) -> dict:
    """Seconds per phase of the first result (see the module docstring); a phase whose log line is missing is
    left out."""
    runinfo = run_dir / "runinfo"
    driver = runinfo / "000" / "parsl.log"
    interchange = runinfo / "000" / "tasks" / "interchange.log"
    pools = sorted((runinfo / "workers" / "tasks").glob("block-0/*/manager.log"))
    manager = pools[0] if pools else Path("-")
    workers = sorted(manager.parent.glob("worker_*.log")) if pools else []
    marks = [("imports", row["load_at"]),
             ("interchange", _first(driver, r"Interchange process started")),
             ("strategy wait", _first(driver, r"Scaling out by")),
             ("block launch", _first(driver, r"Launched block")),
             ("pool start", _first(manager, r"")),
             ("pool setup", _first(manager, r"will spawn")),
             ("workers start", min((t for t in (_first(w, r"started") for w in workers) if t),
                                   default=None)),
             ("task", row["first_at"])]
    out, last = {}, row["began"]
    for name, at in marks:
        if at is None:
            continue
        out[name] = round(at - last, 3)
        last = at
    registered = _first(interchange, r"Registered manager")
    spawn = _first(manager, r"will spawn")
    if registered is not None and spawn is not None:
        out["(registration, after pool setup)"] = round(registered - spawn, 3)
    return out


def idle_node(seconds: float = 120.0) -> None:
    """Wait until no job of an earlier run of this benchmark is left in Slurm's queue (a cancelled job holds the
    node's CPUs while it completes: the next block would wait for them, which is not what is measured)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        listed = subprocess.run(["squeue", "-h", "-o", "%o"], capture_output=True, text=True).stdout
        if str(Path(tempfile.gettempdir()) / "spibatch-bench-") not in listed:
            return
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--sites", default="local,slurm")
    parser.add_argument("--repo", type=Path, default=REPO, help="the spibatch tree to measure")
    parser.add_argument("--strategy-period", type=float, default=None, help="strategy_period_s of the sites")
    args = parser.parse_args()
    summary = {}
    period = "" if args.strategy_period is None else f"strategy_period_s: {args.strategy_period}"
    with tempfile.TemporaryDirectory(prefix="spibatch-bench-") as scratch:
        for name in args.sites.split(","):
            site = Path(scratch) / f"{name}.yaml"
            site.write_text(SITES[name].format(period=period, comma=", " if period else ""))
            rows = []
            for k in range(args.repeats):
                run_dir = Path(scratch) / f"{name}-{k}"
                run_dir.mkdir()
                if name.startswith("slurm"):
                    idle_node()
                load = os.getloadavg()[0]
                began = time.time()
                done = subprocess.run([sys.executable, "-c", CHILD, str(site), str(run_dir), repr(began),
                                       str(args.tasks)], capture_output=True, text=True, timeout=900, cwd=scratch,   # not ''
                                      # on sys.path: --repo's tree, not the current folder's
                                      env={**os.environ, "PYTHONPATH": str(args.repo.resolve())})
                if done.returncode != 0:
                    sys.exit(f"{name}: {done.stderr[-2000:]}")
                row = json.loads(done.stdout.strip().splitlines()[-1])
                row["phases_s"] = phases(run_dir, row)
                row["load_before"] = load
                for key in ("began", "load_at", "loaded_at", "first_at"):
                    row.pop(key)
                print(json.dumps({"site": name, **row}), flush=True)
                rows.append(row)
            summary[name] = {key: statistics.median(r[key] for r in rows) for key in ("first_result_s", "per_task_ms",
                                                                           "cpu_s_to_first")}
            names = [p for p in rows[0]["phases_s"] if all(p in r["phases_s"] for r in rows)]
            summary[name]["phases_s (medians)"] = {p: statistics.median(r["phases_s"][p] for r in rows) for p in names}
    print(json.dumps({"medians": summary, "load_after": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
