"""EMC side by side: Dragonfly (dragonfly-spi, GPL, a reference only) and spibatch, same data, same cores.

    python benchmarks/emc_vs_dragonfly.py [--datasets small medium] [--threads 2] [--out DIR]

For each shared data set (../shared/datasets/dragonfly-<name>/) it runs
Dragonfly's ``dragonfly.emc -c config.ini -t THREADS N`` with the data set's own
[emc] parameters, then ``spibatch emc`` with the same parameters (num_div,
need_scaling, beta schedule, Dragonfly's automatic beta) on the same cores, one
after the other, N = 30 (small) or 20 (medium) iterations.  It prints per tool
the total EMC time, the median time per iteration over the first 10 and the
last 10, the ratios spibatch / Dragonfly, spibatch's breakdown (expand,
likelihood, normalize, merge), and both models' correlation with the true
intensity after the best orientation alignment (spibatch.align, the same
measure for both).  Dragonfly is found through $SPIBATCH_DRAGONFLY or
/opt/dragonfly-venv/bin (benchmarks/dragonfly_env.sh builds it).
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPIBATCH_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
ITERATIONS = {"small": 30, "medium": 20}
SHELLS = {"small": (6, 31), "medium": (10, 74)}   # the shells the datasets README measures in


def dragonfly_exe() -> Path:
    env = os.environ.get("SPIBATCH_DRAGONFLY")
    path = Path(env) if env else Path("/opt/dragonfly-venv/bin")
    exe = path / "dragonfly.emc" if path.is_dir() else path
    if not exe.is_file():
        sys.exit(f"Dragonfly not found at {exe}: run `bash benchmarks/dragonfly_env.sh` or set SPIBATCH_DRAGONFLY")
    return exe


def emc_params(dataset: Path) -> dict:
    ini = configparser.ConfigParser(inline_comment_prefixes=("#", ";"))
    ini.read(dataset / "config.ini")
    emc = ini["emc"]
    factor, period = (emc.get("beta_schedule", "1.0 1000").split() + ["1000"])[:2]
    return {"num_div": int(emc["num_div"]), "need_scaling": emc.get("need_scaling", "0").strip() == "1",
            "beta_factor": float(emc.get("beta_factor", "1.0")), "schedule": (float(factor), int(period))}


def run_dragonfly(dataset: Path, work: Path, iterations: int, threads: int) -> dict:
    p = emc_params(dataset)
    work.mkdir(parents=True)
    (work / "output").mkdir()
    (work / "config.ini").write_text(
        "[emc]\n"
        f"in_photons_file = {dataset / 'photons.emc'}\n"
        f"in_detector_file = {dataset / 'det_sim.h5'}\n"
        f"num_div = {p['num_div']}\n"
        "output_folder = output/\nlog_file = EMC.log\n"
        f"need_scaling = {int(p['need_scaling'])}\n"
        f"beta_factor = {p['beta_factor']}\n"
        f"beta_schedule = {p['schedule'][0]} {p['schedule'][1]}\n"
        "fixed_seed = 1\n")
    start = time.perf_counter()
    subprocess.run([str(dragonfly_exe()), "-c", "config.ini", "-t", str(threads), str(iterations)], cwd=work,
                   check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    rows = [line.split() for line in (work / "EMC.log").read_text().splitlines()]
    times = [float(r[1]) for r in rows if len(r) >= 7 and r[0].isdigit()]
    model = work / "output" / f"output_{iterations:03d}.h5"
    return {"times": times, "wall_s": wall, "model": model}


def run_spibatch(dataset: Path, work: Path, iterations: int, threads: int) -> dict:
    from spibatch.layout import RunLayout

    p = emc_params(dataset)
    work.mkdir(parents=True)
    config = work / "pipeline.yaml"
    config.write_text(json.dumps({
        "name": "bench", "emc": {
            "photons": str(dataset / "photons.emc"), "detector": str(dataset / "det_sim.h5"),
            "num_div": p["num_div"], "iterations": iterations, "need_scaling": p["need_scaling"],
            "beta": "auto", "beta_factor": p["beta_factor"],
            "beta_schedule": {"factor": p["schedule"][0], "period": p["schedule"][1]}, "seed": 1}}))
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    out = work / "run"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "spibatch", "-q", "emc", str(config), "--out", str(out)], env=env,
                   check=True)
    wall = time.perf_counter() - start
    run = RunLayout(out)
    lines = [json.loads(x) for x in run.emc_metrics.read_text().splitlines() if x.strip()]
    phases = {}
    for line in lines:
        for k, v in (line.get("timing") or {}).items():
            if k != "step_s":
                phases[k.removesuffix("_s")] = phases.get(k.removesuffix("_s"), 0.0) + v
    return {"times": [x["time_s"] for x in lines], "wall_s": wall, "phases": phases,
            "model": run.emc_output(iterations)}


def summary(times: list[float]) -> dict:
    return {"total": sum(times), "first10": statistics.median(times[:10]), "last10": statistics.median(times[-10:])}


def correlation(model_path: Path, dataset: Path, shells: tuple[int, int]) -> float:
    from spibatch.align import align_intensity
    from spibatch.io.results import read_volume

    truth = dataset / ("intensities.bin" if (dataset / "intensities.bin").exists() else "intensities.h5")
    return align_intensity(read_volume(model_path).astype(np.float64),
                           read_volume(truth).astype(np.float64), *shells).cc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["small", "medium"], choices=sorted(ITERATIONS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=None, help="override 30 (small) / 20 (medium)")
    ap.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="emc-bench-"))
    # Warm Numba's on-disk cache so that compilation is not timed (it is a one-off per install).
    from spibatch.emc.step import warm_up
    warm_up()
    results = {}
    for name in args.datasets:
        dataset = SHARED / f"dragonfly-{name}"
        n = args.iterations or ITERATIONS[name]
        print(f"== {name}: {n} iterations, {args.threads} threads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
              flush=True)
        df = run_dragonfly(dataset, root / name / "dragonfly", n, args.threads)
        sb = run_spibatch(dataset, root / name / "spibatch", n, args.threads)
        row = {"dragonfly": summary(df["times"]), "spibatch": summary(sb["times"]), "phases": sb["phases"],
               "cc": {"dragonfly": correlation(df["model"], dataset, SHELLS[name]),
                      "spibatch": correlation(sb["model"], dataset, SHELLS[name])}}
        row["dragonfly"]["wall"], row["spibatch"]["wall"] = df["wall_s"], sb["wall_s"]   # the whole process
        row["ratio"] = {k: row["spibatch"][k] / row["dragonfly"][k] for k in row["spibatch"]}
        results[name] = row
        for tool in ("dragonfly", "spibatch"):
            s = row[tool]
            print(f"{tool:>10}: total {s['total']:8.1f} s   median first 10 {s['first10']:6.2f} s   "
                  f"last 10 {s['last10']:6.2f} s   whole process {s['wall']:8.1f} s   CC {row['cc'][tool]:.4f}")
        r = row["ratio"]
        print(f"{'ratio':>10}: total {r['total']:.2f}   first 10 {r['first10']:.2f}   last 10 {r['last10']:.2f}   "
              f"whole process {r['wall']:.2f}")
        print(f"{'breakdown':>10}: " + ", ".join(f"{k} {v:.1f} s" for k, v in row["phases"].items()), flush=True)
    (root / "results.json").write_text(json.dumps(results, indent=2))
    print(f"runs and results.json in {root}")
    if args.out is None:
        shutil.rmtree(root / "small" / "dragonfly" / "output", ignore_errors=True)


if __name__ == "__main__":
    main()
