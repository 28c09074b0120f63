"""The model carried to facility scale on paper: the numbers of ``docs/scale.md``.

    python -m spibatch.bench.scale BENCH_JSON [--markdown]

CPU nodes: this machine's single-thread kernel rates (``bench.json`` ``rates``), brought to an unloaded core
(times the share of a core the microbenchmarks had: cores / load), times the calibrated ``k_compute``, on nodes
of ``NODE_CORES`` cores at ``NODE_EFFICIENCY`` parallel efficiency (an assumption: this machine has 2 cores).
GPUs: no device number exists yet (BENCHMARKS.md "GPU: owed"): the roofline floor of the GPU kernels as
``benchmarks/gpu_bench.py`` writes it -- flops = 4 R D M + 220 R P per shard step, bytes = 16 R D -- on an H200
(67 TFLOP/s FP32, ~4 TB/s copy bandwidth), times ``GPU_FLOOR_FACTOR`` (issue 5's goal: within 3x the floor).
Networks and filesystems: the assumptions in ``ASSUMED`` (vendor figures, not measured here).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from spibatch.bench import model, sizes

NODE_CORES = 64              # a CPU node of an HPC cluster (2 x 32-core sockets)
NODE_EFFICIENCY = 0.7        # parallel efficiency of the Numba kernels on a whole node (assumed; 2 cores here)
GPU_PEAK_FLOPS = 67e12       # H200 / H100 SXM FP32, vendor sheet (as gpu_bench.PEAK_FP32)
GPU_BANDWIDTH = 4.0e12       # bytes / s, HBM3e copy bandwidth (4.8 TB/s peak; a copy reaches ~85%)
GPU_FLOOR_FACTOR = 3.0       # issue 5's goal: the EMC step within 3x the roofline floor
GPU_CHUNK_BYTES = 60e9       # half of an H200's 141 GB for a chunk's dense likelihood + probabilities (8 B / entry);
                             # each chunk slices and merges every rotation again (spibatch/emc/gpu_step.py)
ASSUMED = {"link_bytes_per_s": 25e9,          # 200 Gb/s InfiniBand per node (Allreduce, ring)
           "fs_client_bytes_per_s": 3e9,      # one client of a parallel filesystem (Lustre/GPFS), read or write
           "fs_aggregate_bytes_per_s": 100e9,  # the filesystem as a whole
           "interchange_bytes_per_s": 0.5e9,  # Parsl's interchange, one driver, pickle + ZeroMQ (quiet machine)
           "task_latency_s": 0.003,           # Parsl per-task dispatch (2.4-3.2 ms measured here, quiet)
           "first_result_s": 4.0,             # Parsl's start to the first result (0.8-2.6 s measured here; a cluster adds its job start)
           "cpu_node_hour": 2.0, "gpu_hour": 4.0}   # USD, cloud-like list prices (assumed)


def unloaded_rates(rates: dict) -> dict:
    """The rates of one unloaded core: the measured ones times the share of a core they ran with."""
    during = [v[0] for v in (rates.get("load_start"), rates.get("load_end")) if v and v[0] is not None]
    share = model.share(sum(during) / len(during) if during else None, rates.get("cores", 1))
    out = json.loads(json.dumps(rates))
    for emc in out["emc"].values():
        for k, v in emc.items():
            if isinstance(v, float):
                emc[k] = v * share
    for ph in out["phasing"].values():
        ph["per_n3logn3"] *= share
    out["load_start"] = out["load_end"] = None
    return out


KEPT_BYTES_PER_NODE = 64e9   # a CPU node's memory for one shard step's kept (frame, rotation) entries (of ~256 GB)
KEPT_ENTRY_BYTES = 16        # frame, rotation, value (as BENCHMARKS.md "EMC peak memory": 16 B an entry)


def case(frames: float, num_div: int, edge: int, model_edge: int, photons: float, workers: int,
         kind: str = "gpu") -> dict:
    """The sizes of one facility case: one shard per worker (the fewest expands and merges), on CPU nodes at most
    the frames whose kept entries fit KEPT_BYTES_PER_NODE with every rotation kept (iteration 1); a GPU's step
    cuts frames and rotations into chunks that fit its memory itself."""
    per_shard = math.ceil(frames / workers)
    if kind == "cpu":
        per_shard = min(per_shard, int(KEPT_BYTES_PER_NODE / (sizes.rotations(num_div) * KEPT_ENTRY_BYTES)))
    return sizes.on_paper(int(frames), num_div, edge, photons, model_edge, per_shard)


def k_effective(document: dict) -> float:
    """The calibrated compute factor at the thread count the rates were measured with (k_compute x t^(1 - beta)):
    how much slower the product's shard steps run than the kernels' microbenchmarks predict, per thread."""
    params = (document.get("model") or {}).get("parameters", {})
    cores = document["rates"].get("cores", 1)
    return params.get("k_compute", 1.0) * cores ** (1.0 - params.get("beta", 1.0))


def cpu_iteration(sz: dict, nodes: int, rates: dict, k_compute: float, mode: str, kept: float | None) -> dict:
    """Seconds of one EMC iteration on ``nodes`` CPU nodes (one worker of NODE_CORES threads each)."""
    kernels = model.shard_kernels(sz, rates, kept)
    rounds = math.ceil(sz["shards"] / nodes)
    compute = rounds * k_compute * sum(kernels.values()) / (NODE_CORES * NODE_EFFICIENCY)
    return {"compute": compute, **_movement(sz, nodes, mode)}


def gpu_iteration(sz: dict, gpus: int, mode: str) -> dict:
    """Seconds of one EMC iteration on ``gpus`` GPUs (one shard each, in chunks that fit): GPU_FLOOR_FACTOR x the
    roofline floor."""
    d = sz["frames"] / sz["shards"]
    entries = sz["entries_used"] / sz["frames"]
    chunks = math.ceil(d * sz["rotations"] * 8 / GPU_CHUNK_BYTES)   # gpu_step.plan: dense likelihood + P per chunk
    flops = 4.0 * sz["rotations"] * d * entries + chunks * 220.0 * sz["rotations"] * sz["pixels_merged"]
    floor = max(flops / GPU_PEAK_FLOPS, 16.0 * sz["rotations"] * d / GPU_BANDWIDTH)
    return {"compute": GPU_FLOOR_FACTOR * floor, **_movement(sz, gpus, mode)}


def _movement(sz: dict, workers: int, mode: str) -> dict:
    """Reduce, data movement and dispatch of one iteration for ``workers`` workers (ASSUMED bandwidths)."""
    sums = 16.0 * sz["model_edge"] ** 3                       # numerator + denominator, float64
    if mode == "hpc":
        return {"reduce": 2 * (workers - 1) / workers * sums / ASSUMED["link_bytes_per_s"], "data_movement": 0.0,
                "dispatch": 0.0}
    model_bytes, tasks = sums / 2, sz["shards"]
    return {"reduce": tasks * sums / ASSUMED["interchange_bytes_per_s"],   # every task's sums through the driver
            "data_movement": model_bytes / ASSUMED["fs_client_bytes_per_s"]
            + tasks * model_bytes / ASSUMED["fs_aggregate_bytes_per_s"],
            "dispatch": ASSUMED["task_latency_s"] * tasks}


def tree_reduce(sz: dict, workers: int) -> float:
    """HTC with each task's sums written to the shared filesystem and added in a binary tree of tasks: log2(tasks)
    levels, each a read of two sums and a write of one by a client, plus a task latency; all of it through the
    filesystem's aggregate bandwidth once."""
    sums, tasks = 16.0 * sz["model_edge"] ** 3, sz["shards"]
    levels = math.ceil(math.log2(max(tasks, 2)))
    return levels * (3 * sums / ASSUMED["fs_client_bytes_per_s"] + ASSUMED["task_latency_s"]) \
        + 2 * tasks * sums / ASSUMED["fs_aggregate_bytes_per_s"]


def table(document: dict) -> list[dict]:
    """The docs/scale.md rows: 10^7 frames, num_div 15 and 20, 128^2-512^2 pixels, model 400^3, 1000 photons."""
    rates = unloaded_rates(document["rates"])
    k = k_effective(document)
    rows = []
    for num_div in (15, 20):
        for edge in (128, 256, 512):
            for kind, counts in (("cpu", (16, 64, 256)), ("gpu", (8, 16, 64))):
                for n in counts:
                    sz = case(1e7, num_div, edge, 400, 1000.0, n, kind)
                    for mode in ("hpc", "htc"):
                        parts = cpu_iteration(sz, n, rates, k, mode, 400.0) if kind == "cpu" \
                            else gpu_iteration(sz, n, mode)
                        total = sum(parts.values())
                        price = ASSUMED["cpu_node_hour"] if kind == "cpu" else ASSUMED["gpu_hour"]
                        tree = total - parts["reduce"] + tree_reduce(sz, n) if mode == "htc" else None
                        rows.append({"num_div": num_div, "rotations": sz["rotations"], "pixels": edge,
                                     "shards": sz["shards"],
                                     "kind": kind, "count": n, "mode": mode, "iteration_s": total,
                                     "usd_per_iteration": total / 3600 * n * price, "iteration_tree_s": tree,
                                     **parts})
    return rows


def realtime(document: dict) -> list[dict]:
    """Near-real-time previews (issue 13): 10^4 and 10^5 hits, num_div 6 and 10, 128^2 pixels, model 181^3, 20
    iterations after Parsl's first result, on 1-4 GPUs or 4-16 CPU nodes; HTC with the sums through the
    interchange and through a filesystem tree."""
    rates, k = unloaded_rates(document["rates"]), k_effective(document)
    rows = []
    for frames in (1e4, 1e5):
        for num_div in (6, 10):
            for kind, counts in (("gpu", (1, 4)), ("cpu", (4, 16))):
                for n in counts:
                    sz = case(frames, num_div, 128, 181, 1000.0, n, kind)
                    for mode in ("hpc", "htc"):
                        parts = cpu_iteration(sz, n, rates, k, mode, None) if kind == "cpu" \
                            else gpu_iteration(sz, n, mode)
                        total = sum(parts.values())
                        tree = total - parts["reduce"] + tree_reduce(sz, n) if mode == "htc" else total
                        rows.append({"frames": int(frames), "num_div": num_div, "rotations": sz["rotations"],
                                     "kind": kind, "count": n, "mode": mode, "iteration_s": total,
                                     "iteration_tree_s": tree,
                                     "preview_s": ASSUMED["first_result_s"] + 20 * min(total, tree)})
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| num_div (R) | pixels | hardware | shards | mode | s / iteration | compute | reduce | data | dispatch | "
            "HTC, tree reduce | USD / iter |")
    lines = [head, "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        hw = f"{r['count']} {'nodes' if r['kind'] == 'cpu' else 'GPUs'}"
        tree = f"{r['iteration_tree_s']:.1f}" if r["iteration_tree_s"] is not None else ""
        lines.append(f"| {r['num_div']} ({r['rotations']:,}) | {r['pixels']}^2 | {hw} | {r['shards']} | {r['mode']} | "
                     f"{r['iteration_s']:.1f} | {r['compute']:.1f} | {r['reduce']:.1f} | {r['data_movement']:.1f} | "
                     f"{r['dispatch']:.2f} | {tree} | {r['usd_per_iteration']:.2f} |")
    return "\n".join(lines) + "\n"


def realtime_markdown(rows: list[dict]) -> str:
    lines = ["| hits | num_div (R) | hardware | mode | s / iteration | HTC, tree reduce | first result + 20 it. |",
             "|---:|---|---|---|---:|---:|---:|"]
    for r in rows:
        hw = f"{r['count']} {'nodes' if r['kind'] == 'cpu' else 'GPUs'}"
        lines.append(f"| {r['frames']:,} | {r['num_div']} ({r['rotations']:,}) | {hw} | {r['mode']} | "
                     f"{r['iteration_s']:.2f} | {r['iteration_tree_s']:.2f} | {r['preview_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spibatch.bench.scale", description=__doc__)
    parser.add_argument("bench_json", type=Path)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    document = json.loads(args.bench_json.read_text())
    rows, live = table(document), realtime(document)
    if args.markdown:
        print(f"k_effective = {k_effective(document):.3g}\n\n{markdown(rows)}\n{realtime_markdown(live)}")
    else:
        print(json.dumps({"k_effective": k_effective(document), "facility": rows, "realtime": live}, indent=1))


if __name__ == "__main__":
    main()
