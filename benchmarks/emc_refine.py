"""Coarse-to-fine orientation search (emc.refine) against the whole fine grid: same answer, less time?

    python benchmarks/emc_refine.py [--case arm4] [--seed 1] [--coarse 4] [--fine 8] [--after 10]
                                    [--iterations 20] [--frames-per-shard 250] [--top 4] [--radius 1]
                                    [--runs fine refine] [--threads 2] [--out DIR]

One held-out case of benchmarks/emc_cases.py (simulated by our simulator, with the truth's intensity and
every frame's true rotation), reconstructed twice by ``spibatch emc`` with the same parameters
(need_scaling, automatic beta, beta x2 every 10 iterations, seed 1):

* ``fine``: every iteration on the whole ``--fine`` grid;
* ``refine``: ``--after`` iterations on the ``--coarse`` grid, then ``emc.refine: {num_div: FINE, after: N}``:
  each frame searches only the fine rotations within one coarse spacing of its 4 best coarse ones.

Measured per run: the mean seconds of an iteration on the fine grid (and of a coarse one), the whole run's
wall time, the model's CC with the truth and the median / 90th-percentile orientation error (emc_cases.measure),
the fine rotations a frame searched.  One line per run to stdout, both in ``DIR/results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emc_cases import CASES, make_case, measure, run_spibatch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="arm4", choices=list(CASES))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--coarse", type=int, default=4)
    ap.add_argument("--fine", type=int, default=8)
    ap.add_argument("--after", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--frames-per-shard", type=int, default=250, help="both runs (a shard searches the union "
                    "of its frames' candidates: smaller shards, smaller unions)")
    ap.add_argument("--top", type=int, default=4, help="emc.refine.top")
    ap.add_argument("--radius", type=float, default=1.0, help="emc.refine.radius (coarse grid spacings)")
    ap.add_argument("--runs", nargs="+", default=["fine", "refine"], choices=["fine", "refine"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/emc-refine"))
    args = ap.parse_args()
    case = make_case(args.case, args.seed, args.out / "data" / f"{args.case}-{args.seed}")
    shards = {"frames_per_shard": args.frames_per_shard}
    runs = {"fine": (args.fine, shards),
            "refine": (args.coarse, {**shards, "refine": {"num_div": args.fine, "after": args.after, "top": args.top,
                                                          "radius": args.radius}})}
    results = []
    for name, (num_div, overrides) in runs.items():
        if name not in args.runs:
            continue
        work = args.out / f"{args.case}-{args.seed}" / name
        run = run_spibatch(case, work, args.iterations, args.threads, num_div, overrides)
        metrics = [json.loads(x) for x in (work / "run" / "emc" / "metrics.jsonl").read_text().splitlines() if x]
        fine = [m for m in metrics if m["num_rot"] == metrics[-1]["num_rot"]]
        coarse = [m for m in metrics if m["num_rot"] != metrics[-1]["num_rot"]]
        row = {"run": name, "case": args.case, "seed": args.seed, "frames": case["info"]["frames"],
               "num_div": num_div, **overrides, "iterations": args.iterations,
               "fine_iteration_s": round(float(np.mean([m["time_s"] for m in fine[1:] or fine])), 2),
               "coarse_iteration_s": round(float(np.mean([m["time_s"] for m in coarse])), 2) if coarse else None,
               "run_s": round(float(sum(m["time_s"] for m in metrics)), 1), "wall_s": round(run["wall_s"], 1),
               "mean_candidates": fine[-1].get("mean_candidates"), "fine_rotations": fine[-1]["num_rot"],
               **measure(run["output"], case)}
        print(json.dumps(row), flush=True)
        results.append(row)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
