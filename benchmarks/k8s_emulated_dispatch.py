"""Parsl dispatch through the Kubernetes site (emulated: kmock + local pod runner) beside the local site.

For each site: seconds from ``parsl.load`` to the first task's result (the provider's start:
for Kubernetes a pod is created through the API, started by the pod runner, and its worker
pool connects), then the time of N empty tasks submitted at once (per-task dispatch). Both
run 2 workers on this machine, so the difference is the provider's, not the hardware's.
Where this machine allows it (root, iproute2), the Kubernetes site runs a second time with
each pod on the emulated pod network (tests/k8s_emulator.PodNetwork: a network namespace of
its own, reaching the interchange over a bridge, as pods reach a driver over a cluster's
network; still this machine's kernel and 2 cores).

    python benchmarks/k8s_emulated_dispatch.py            # --tasks 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests")])


def measure(config, tasks: int) -> tuple[float, float]:
    import parsl
    from parsl import python_app

    from k8s_tasks import nothing

    app = python_app(nothing, executors=["tasks"])
    began = time.perf_counter()
    with parsl.load(config):
        app().result(timeout=300)
        first = time.perf_counter() - began
        began = time.perf_counter()
        for future in [app() for _ in range(tasks)]:
            future.result(timeout=300)
        many = time.perf_counter() - began
    parsl.clear()
    return first, many


def local(run_dir: Path, tasks: int):
    from spibatch.backends import load_site, provider_for

    return measure(provider_for(load_site(REPO / "site_configs" / "local.yaml")).parsl_config(run_dir), tasks)


def kubernetes(run_dir: Path, tasks: int, pod_network: bool = False):
    from contextlib import nullcontext

    import yaml

    from k8s_emulator import HOST_ADDRESS, Cluster, PodNetwork, PodRunner, host_env
    from spibatch.backends import load_site, provider_for

    site = {"name": "emulated", "provider": "kubernetes", "workers": 2,
            "container": {"runtime": "docker", "image": "spibatch:bench"},
            "kubernetes": {"namespace": "bench", "pvc": "shared", "mount_path": str(run_dir.parent),
                           "workers_per_pod": 2, "interchange_address": HOST_ADDRESS if pod_network else "127.0.0.1",
                           "strategy_period_s": 0.5, "worker_init": f"export PYTHONPATH={os.environ['PYTHONPATH']}"}}
    (run_dir.parent / "site.yaml").write_text(yaml.safe_dump(site))
    with Cluster({"bench": ["shared"]}) as cluster, (PodNetwork() if pod_network else nullcontext()) as network:
        kubeconfig = str(cluster.write_kubeconfig(run_dir.parent / "kubeconfig"))
        import kubernetes.config.kube_config as kube_config

        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = kubeconfig
        with PodRunner(cluster, "bench", host_env(), poll_s=0.1, network=network):
            return measure(provider_for(load_site(run_dir.parent / "site.yaml")).parsl_config(run_dir), tasks)


def kubernetes_pod_network(run_dir: Path, tasks: int):
    return kubernetes(run_dir, tasks, pod_network=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from k8s_emulator import PodNetwork

    sites = [("local", local), ("kubernetes (emulated)", kubernetes)]
    why = PodNetwork.available()
    if why is None:
        sites.append(("kubernetes (emulated, pod network)", kubernetes_pod_network))
    else:
        print(f"no pod network: {why}")
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in sites}
    for _ in range(args.repeats):
        for name, run in sites:
            with tempfile.TemporaryDirectory() as tmp:
                run_dir = Path(tmp) / "run"
                run_dir.mkdir()
                results[name].append(run(run_dir, args.tasks))
                print(name, [f"{x:.2f}" for x in results[name][-1]], flush=True)
    print(f"\n{args.tasks} empty tasks, 2 workers, medians of {args.repeats} (load {os.getloadavg()[0]:.1f})")
    print("| site | to first result | N tasks | per task |\n|---|---:|---:|---:|")
    medians = {}
    for name, runs in results.items():
        first = statistics.median(r[0] for r in runs)
        many = statistics.median(r[1] for r in runs)
        medians[name] = (first, many)
        print(f"| {name} | {first:.2f} s | {many:.2f} s | {1e3 * many / args.tasks:.2f} ms |")
    lf, lm = medians["local"]
    for name in list(medians)[1:]:
        kf, km = medians[name]
        print(f"| ratio {name} / local | {kf / lf:.2f}x | {km / lm:.2f}x | |")


if __name__ == "__main__":
    main()
