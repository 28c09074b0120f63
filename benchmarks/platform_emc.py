"""EMC on the medium shared data set through the real Slurm cluster: HPC mode vs HTC mode, 2 workers.

    python3 benchmarks/platform_emc.py [--iterations 3] [--frames-per-shard 1000] [--out DIR] [--data DIR]
                                       [--modes hpc,htc] [--merge per_rotation|pooled]
                                       [--provider slurm|local] [--container IMAGE_DIR [--repeats N]]

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

``--provider local``: the same on the local site (mpirun for HPC mode, LocalProvider workers for HTC).
``--provider slurm-two-nodes``: on the two-node cluster of .ci/slurm-two-nodes.sh (one rank or worker per node;
each node a network namespace of its own on a bridge, so the MPI ranks talk over TCP and the worker pools reach
the interchange over that network, as between machines; the filesystem is shared).
``--container IMAGE_DIR``: each mode twice, interleaved ``--repeats`` times: on the host and inside a real
Charliecloud container (``ch-run --set-env IMAGE_DIR``; containers/charliecloud.sh builds one) -- the
workers, or every MPI rank, run in it; the driver stays on the host -- and the ratio of the medians of
the time per iteration, container / bare metal, per mode.
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
SITE = """name: bench-{provider}
provider: {provider}
workers: 2
emc_mode: {mode}
{section}
{container}"""
SECTIONS = {"slurm": 'slurm: {partition: debug, walltime: "01:00:00", cores_per_node: 2, max_idletime_s: 2, '
                     'strategy_period_s: 0.5}',
            "local": "local: {cores: 2, strategy_period_s: 0.5}",
            # .ci/slurm-two-nodes.sh: two slurmd, each in a network namespace, one CPU each; one block of both
            "slurm-two-nodes": 'slurm: {partition: two, nodes: 2, cores_per_node: 1, walltime: "01:00:00", '
                               'max_idletime_s: 2, strategy_period_s: 0.5}'}
PROVIDER = {"slurm-two-nodes": "slurm"}
PROVIDER_ENV = {"slurm-two-nodes": {"SLURM_CONF": "/etc/slurm-two-nodes/slurm.conf"}}
# each MPI rank is in a user namespace of its own, where Open MPI's cross-memory attach is refused
CONTAINER_ENV = {"OMPI_MCA_btl_vader_single_copy_mechanism": "none"}
CONTAINER = "container: {{runtime: charliecloud, image: {image}, binds: [{data}], options: [--set-env]}}\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--frames-per-shard", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("bench-platform-emc"))
    parser.add_argument("--modes", default="hpc,htc", help="hpc, htc, or both (comma-separated)")
    parser.add_argument("--merge", default="per_rotation", choices=["per_rotation", "pooled"],
                        help="emc.merge (per_rotation: HTC mode runs two rounds of tasks per iteration)")
    parser.add_argument("--data", type=Path, default=MEDIUM, help="the data set's folder (photons.emc, det_sim.h5)")
    parser.add_argument("--provider", default="slurm", choices=sorted(SECTIONS))
    parser.add_argument("--container", type=Path, help="a Charliecloud image directory: each mode bare and in it")
    parser.add_argument("--repeats", type=int, default=1, help="with --container: rounds of (bare, container)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    args.out.mkdir(parents=True, exist_ok=True)
    pipeline = args.out / "pipeline.yaml"
    pipeline.write_text(PIPELINE.format(photons=args.data / "photons.emc", detector=args.data / "det_sim.h5",
                                        iterations=args.iterations, fps=args.frames_per_shard,
                                        merge=args.merge))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               USER=os.environ.get("USER", "root"), **PROVIDER_ENV.get(args.provider, {}))   # ch-run needs $USER
    places = [""] if args.container is None else ["bare", "container"] * args.repeats
    if args.container is not None:   # ch-run binds only onto paths the image has: the data's, made once
        (args.container / str(args.data.resolve()).lstrip("/")).mkdir(parents=True, exist_ok=True)
    result = {}
    for mode in args.modes.split(","):
        for k, place in enumerate(places):
            name = f"{mode}-{place}-{k // 2}" if place else mode
            container = CONTAINER.format(image=args.container, data=args.data.resolve()) if place == "container" else ""
            site = SITE.format(provider=PROVIDER.get(args.provider, args.provider), mode=mode, container=container, section=SECTIONS[args.provider])
            result[name] = measure(args, mode, name, site, pipeline, {**env, **(CONTAINER_ENV if container else {})})
    if "hpc" in result and "htc" in result:
        result["htc_over_hpc"] = round(result["htc"]["median_iteration_s"] / result["hpc"]["median_iteration_s"], 3)
    if args.container is not None:
        for mode in args.modes.split(","):
            per = {place: statistics.median(x for name, r in result.items() if name.startswith(f"{mode}-{place}-")
                                            for x in r["iteration_s"][1:] or r["iteration_s"])
                   for place in ("bare", "container")}
            result[f"{mode}_container_over_bare"] = {**per, "ratio": round(per["container"] / per["bare"], 3)}
    print(json.dumps(result, indent=2))
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")


def measure(args, mode: str, name: str, site_text: str, pipeline: Path, env: dict) -> dict:
    """One ``spibatch run --until emc`` of ``mode`` on the site ``site_text``; its record (printed too)."""
    from spibatch.layout import HTC_TIMING, RunLayout

    site = args.out / f"site-{name}.yaml"
    site.write_text(site_text)
    run = args.out / name
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "spibatch", "run", str(pipeline), "--site", str(site),
                           "--out", str(run), "--until", "emc"], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{name}: {done.stderr[-3000:]}")
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
    print(json.dumps({name: entry}), flush=True)
    return entry


if __name__ == "__main__":
    main()
