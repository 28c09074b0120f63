"""Coarse-to-fine orientation search (emc.refine) against the whole fine grid: same answer, less time?

    python benchmarks/emc_refine.py [--case arm4] [--seed 1] [--coarse 4] [--fine 8] [--after 10]
                                    [--iterations 20] [--frames-per-shard 250] [--top 4] [--radius 1]
                                    [--runs fine refine] [--threads 2] [--out DIR] [--dragonfly] [--dragonfly-fine]

One held-out case of benchmarks/emc_cases.py (simulated by our simulator, with the truth's intensity and
every frame's true rotation), reconstructed twice by ``spibatch emc`` with the same parameters
(need_scaling, automatic beta, beta x2 every 10 iterations, seed 1):

* ``fine``: every iteration on the whole ``--fine`` grid;
* ``refine``: ``--after`` iterations on the ``--coarse`` grid, then ``emc.refine: {num_div: FINE, after: N}``:
  each frame searches only the fine rotations within one coarse spacing of its 4 best coarse ones.

Measured per run: the mean seconds of an iteration on the fine grid (and of a coarse one), the whole run's
wall time, the model's CC with the truth and the median / 90th-percentile orientation error (emc_cases.measure),
the fine rotations a frame searched.  One line per run to stdout, all in ``DIR/results.json``.

``--dragonfly``: Dragonfly's own coarse-to-fine on the same case, same parameters, as its sources drive it.
Upstream Dragonfly (C, duaneloh/Dragonfly: iterate_from_config, parse_rel_quat) refines like this: a coarse run
with ``save_prob = 1`` writes each frame's sparse probabilities (the rotations whose log-likelihood is within
PDIFF_THRESH/beta = 14/beta of the frame's best) to ``probabilities/place`` of its output_NNN.h5; a second run with
``num_div = FINE COARSE`` reads them from ``probs_file`` (or, resumed with -r, from the last output), maps every
fine rotation to its nearest coarse one (voronoi_subset, ``quat_mapping``) and lets frame d visit a fine rotation
only when that coarse rotation is among its saved ones (``rel_quat[d]``, src/max_*.c).  So the recipe here is:

* ``df-coarse``: ``dragonfly.emc`` for ``--after`` iterations at ``--coarse`` with ``save_prob = 1``;
* ``df-refine``: a copy of it resumed (``-r``, so the iteration count and the beta schedule go on) for the rest,
  with ``num_div = FINE COARSE`` and ``probs_file`` naming the coarse run's last output;
* ``df-coarse-fine`` (``--dragonfly-fine`` or when df-refine fails): the same resume on the whole ``--fine`` grid.

The installed Python port (dragonfly-spi 0.1.0) parses ``num_div = FINE COARSE`` (params.refine = 1) but nothing in
it reads ``probs_file`` or fills ``quat_mapping`` / ``rel_quat`` / ``num_rel_quat`` (iterate.pyx only frees them),
so its refinement run dies in max_prob.c on those NULL arrays (arm4-s1: SIGSEGV at address 0 on the first
refinement iteration, right after "Doing refinement from num_div = 4 -> 8"); the row then carries the exit status.
Even where it runs, the 14/beta window is wide at these betas: arm4-s1's coarse run saved on average 2321 of the
3240 num_div 4 rotations per frame at iteration 10 (beta 0.041), so each frame would search ~70% of the fine grid.
df-coarse-fine costs ~94 s per num_div 8 iteration there (2 threads), against 6.2 s per num_div 4 one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from emc_cases import CASES, dragonfly_exe, make_case, measure, run_dragonfly, run_spibatch  # noqa: E402


def dragonfly_log(work: Path) -> list[tuple[int, float, int]]:
    """(iteration, seconds, num_rot) per line of a Dragonfly EMC.log."""
    rows = [line.split() for line in (work / "EMC.log").read_text().splitlines()]
    return [(int(r[0]), float(r[1]), int(r[5])) for r in rows if len(r) >= 7 and r[0].isdigit()]


def dragonfly_resume(coarse: Path, work: Path, num_div: str, iterations: int, threads: int, extra: str) -> dict:
    """A copy of the coarse Dragonfly run resumed (-r) for ``iterations`` more at ``num_div``: exit status,
    wall time, the last lines it printed."""
    if not (work / "EMC.log").exists() or not (work / "done").exists():
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(coarse, work)
        config = (work / "config.ini").read_text().splitlines()
        config = [x for x in config if not x.startswith(("num_div", "save_prob"))]
        (work / "config.ini").write_text("\n".join(config + [f"num_div = {num_div}", extra, ""]))
        start = time.perf_counter()
        with open(work / "stdout.txt", "w") as log:
            rc = subprocess.run([str(dragonfly_exe()), "-r", "-c", "config.ini", "-t", str(threads), str(iterations)],
                                cwd=work, stdout=log, stderr=subprocess.STDOUT).returncode
        (work / "done").write_text(json.dumps({"rc": rc, "wall_s": time.perf_counter() - start}))
    done = json.loads((work / "done").read_text())
    tail = (work / "stdout.txt").read_text().splitlines()[-3:]
    return {**done, "tail": tail}


def dragonfly_refine_rows(case: dict, args: argparse.Namespace, base: Path) -> list[dict]:
    """df-refine (and df-coarse-fine when asked for or when df-refine fails): the coarse run, then resumed."""
    coarse = run_dragonfly(case, base / "df-coarse", args.after, args.threads, args.coarse, "save_prob = 1\n")
    coarse_out = (base / "df-coarse" / "output" / f"output_{args.after:03d}.h5").resolve()
    rest = args.iterations - args.after
    runs = {"df-refine": (f"{args.fine} {args.coarse}", f"probs_file = {coarse_out}"),
            "df-coarse-fine": (str(args.fine), "")}
    rows: list[dict] = []
    for name, (num_div, extra) in runs.items():
        if name == "df-coarse-fine" and not args.dragonfly_fine and "error" not in rows[-1]:
            continue
        work = base / name
        res = dragonfly_resume(base / "df-coarse", work, num_div, rest, args.threads, extra)
        log = dragonfly_log(work)
        row = {"run": name, "tool": "dragonfly", "case": args.case, "seed": args.seed,
               "frames": case["info"]["frames"], "num_div": num_div, "iterations": args.iterations,
               "coarse_iteration_s": round(float(np.mean([t for i, t, _ in log if i <= args.after])), 2)}
        fine = [t for i, t, _ in log if i > args.after]
        output = work / "output" / f"output_{args.iterations:03d}.h5"
        if res["rc"] != 0 or not output.exists():
            row.update(error=f"dragonfly.emc -r exited {res['rc']} after {len(fine)} fine iterations",
                       tail=res["tail"], wall_s=round(coarse["wall_s"] + res["wall_s"], 1))
        else:
            row.update(fine_iteration_s=round(float(np.mean(fine[1:] or fine)), 2),
                       run_s=round(float(sum(t for _, t, _ in log)), 1),
                       wall_s=round(coarse["wall_s"] + res["wall_s"], 1), fine_rotations=log[-1][2],
                       **measure(output, case))
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def dragonfly_rows(case: dict, args: argparse.Namespace) -> list[dict]:
    base = args.out / f"{args.case}-{args.seed}"
    rows: list[dict] = []
    if args.dragonfly:
        rows += dragonfly_refine_rows(case, args, base)
    if args.dragonfly_whole:
        work = base / "df-fine"
        run = run_dragonfly(case, work, args.iterations, args.threads, args.fine)
        log = dragonfly_log(work)
        row = {"run": "df-fine", "tool": "dragonfly", "case": args.case, "seed": args.seed,
               "frames": case["info"]["frames"], "num_div": args.fine, "iterations": args.iterations,
               "fine_iteration_s": round(float(np.mean([t for _, t, _ in log[1:]])), 2),
               "run_s": round(float(sum(t for _, t, _ in log)), 1), "wall_s": round(run["wall_s"], 1),
               "fine_rotations": log[-1][2], **measure(run["output"], case)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


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
    ap.add_argument("--dragonfly", action="store_true", help="also Dragonfly's coarse-to-fine (num_div = FINE COARSE)")
    ap.add_argument("--dragonfly-fine", action="store_true", help="with --dragonfly: also the coarse run resumed on "
                    "the whole fine grid, even when the refinement run works")
    ap.add_argument("--dragonfly-whole", action="store_true", help="also Dragonfly on the whole fine grid from "
                    "the start (slow)")
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
        row = {"run": name, "tool": "spibatch", "case": args.case, "seed": args.seed, "frames": case["info"]["frames"],
               "num_div": num_div, **overrides, "iterations": args.iterations,
               "fine_iteration_s": round(float(np.mean([m["time_s"] for m in fine[1:] or fine])), 2),
               "coarse_iteration_s": round(float(np.mean([m["time_s"] for m in coarse])), 2) if coarse else None,
               "run_s": round(float(sum(m["time_s"] for m in metrics)), 1), "wall_s": round(run["wall_s"], 1),
               "mean_candidates": fine[-1].get("mean_candidates"), "fine_rotations": fine[-1]["num_rot"],
               **measure(run["output"], case)}
        print(json.dumps(row), flush=True)
        results.append(row)
    if args.dragonfly or args.dragonfly_whole:
        results += dragonfly_rows(case, args)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
