"""HTC mode's reduction of partial sums: through Parsl's interchange (before) vs through files (after).

    python3 benchmarks/platform_reduce.py [--tasks 2,4,8,16] [--workers 2] [--edge 211] [--repeats 3]

One Parsl load of the local site (HTEX, encrypted, ``--workers`` workers: what ``spibatch run`` starts),
then for each number of tasks, alternating the two ways, ``--repeats`` times:

* ``interchange`` (spibatch before issue 14): each task makes its sums (numerator + denominator,
  2 x edge^3 float64: 150 MB at edge 211, the medium set's model) and returns them as a ShardSums through
  Parsl; the driver adds them in frame order (:func:`spibatch.emc.types.reduce`);
* ``files`` (now): each task writes them with :func:`spibatch.emc.htc_sums.write_part` and returns the
  small record; :func:`spibatch.emc.htc_sums.reduce_parts` adds them in ``--workers`` slab tasks and the
  driver reads the total.

The tasks' "shard step" is a fill of the two volumes (no EMC: only the reduction is measured) and a
``--compute`` second sleep, so that results arrive as they would.  "Reduction cost": from the end of the
last task's step (its own clock, before it returns or writes anything) to the total in the driver's
memory -- what the iteration waits for beyond the steps.  Also the driver's CPU seconds over the whole
round and its resident-set growth.  The two totals are compared bit for bit.  One JSON line per round,
then the medians; load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SITE = "name: bench-reduce\nprovider: local\nworkers: {workers}\nemc_mode: htc\nlocal: {{strategy_period_s: 0.5}}\n"


def make_sums(first_frame: int, edge: int, compute_s: float):
    """A task's sums: two filled volumes whose values depend on the shard (so the order of additions shows)."""
    import time

    import numpy as np

    from spibatch.emc.types import ShardSums

    time.sleep(compute_s)
    numerator = np.full((edge,) * 3, 1.0 / (first_frame + 3))
    numerator[::7] *= 1e8
    denominator = np.full((edge,) * 3, float(first_frame + 1))
    frames = {"counts": np.arange(first_frame, first_frame + 100, dtype=float)}
    return ShardSums(first_frame, numerator, denominator, frames, {"merge": 1.0}), time.time()


def through_interchange(first_frame: int, edge: int, compute_s: float):
    sums, done = make_sums(first_frame, edge, compute_s)
    return sums, done


def through_files(first_frame: int, edge: int, compute_s: float, folder: str):
    from spibatch.emc.htc_sums import write_part

    sums, done = make_sums(first_frame, edge, compute_s)
    return write_part(folder, 1, sums), done


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def one_round(way: str, apps: dict, tasks: int, args, folder: Path):
    import numpy as np

    from spibatch.emc.htc_sums import reduce_parts, remove_parts
    from spibatch.emc.types import reduce

    cpu0, rss0 = time.process_time(), rss_mb()
    if way == "interchange":
        futures = [apps["interchange"](k * 100, args.edge, args.compute) for k in range(tasks)]
        results = [f.result() for f in futures]
        total = reduce([r[0] for r in results])
        ready, cost = time.time(), {}
    else:
        futures = [apps["files"](k * 100, args.edge, args.compute, str(folder)) for k in range(tasks)]
        results = [f.result() for f in futures]
        parts = [r[0] for r in results]
        total, cost = reduce_parts(parts, apps["slab"], folder, 1, args.workers)
        ready = time.time()
        remove_parts(parts)
    row = {"way": way, "tasks": tasks, "reduction_s": round(ready - max(r[1] for r in results), 3),
           "driver_cpu_s": round(time.process_time() - cpu0, 3), "driver_rss_growth_mb": round(rss_mb() - rss0, 1),
           **{k: round(v, 3) if isinstance(v, float) else v for k, v in cost.items()}}
    checksum = (float(np.sum(total.numerator[::13, ::11, ::5])), float(total.denominator[0, 0, 0]))
    del total, results
    return row, checksum


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", default="2,4,8,16")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--edge", type=int, default=211, help="model edge M (211: the medium set)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compute", type=float, default=0.5, help="seconds each task sleeps as its 'step'")
    parser.add_argument("--out", type=Path, default=None, help="write the rows and medians here (JSON)")
    args = parser.parse_args()
    paths = [str(REPO), str(REPO / "benchmarks")]      # the workers import this file's task functions by name
    sys.path[:0] = paths
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH")
                                                        else []))
    import parsl
    from parsl import python_app

    from spibatch.backends import TASKS_LABEL, load_site, provider_for
    from spibatch.emc.htc_sums import reduce_slab

    load = [round(x, 2) for x in os.getloadavg()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="spibatch-reduce-", dir=os.environ.get("SPIBATCH_BENCH_DIR")) as scratch:
        scratch = Path(scratch)
        site_path = scratch / "site.yaml"
        site_path.write_text(SITE.format(workers=args.workers))
        site = load_site(site_path)
        dfk = parsl.load(provider_for(site).parsl_config(scratch / "run"))
        try:
            import platform_reduce as me      # not __main__: the workers import the functions by module name

            apps = {"interchange": python_app(me.through_interchange, executors=[TASKS_LABEL]),
                    "files": python_app(me.through_files, executors=[TASKS_LABEL])}
            slab_app = python_app(reduce_slab, executors=[TASKS_LABEL])
            apps["slab"] = lambda fn, *a: slab_app(*a)
            apps["files"](0, 3, 0.0, str(scratch)).result()          # workers started and warm
            for path in scratch.glob("sums_*"):
                path.unlink()
            for tasks in [int(t) for t in args.tasks.split(",")]:
                for repeat in range(args.repeats):
                    order = ("interchange", "files") if repeat % 2 == 0 else ("files", "interchange")
                    sums = {}
                    for way in order:
                        row, sums[way] = one_round(way, apps, tasks, args, scratch)
                        row["load1"] = round(os.getloadavg()[0], 2)
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                    assert sums["interchange"] == sums["files"], sums
        finally:
            dfk.cleanup()
            parsl.clear()
    medians = {}
    for tasks in sorted({r["tasks"] for r in rows}):
        for way in ("interchange", "files"):
            mine = [r for r in rows if r["tasks"] == tasks and r["way"] == way]
            medians[f"{way} {tasks}"] = {k: statistics.median(r[k] for r in mine)
                                         for k in ("reduction_s", "driver_cpu_s", "driver_rss_growth_mb")}
    summary = {"edge": args.edge, "workers": args.workers, "load_before": load,
               "load_after": [round(x, 2) for x in os.getloadavg()], "medians": medians}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, **summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
