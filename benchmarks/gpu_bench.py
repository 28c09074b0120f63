"""GPU speed bars of issue 5, in one short run on a lent device (H100 / H200); writes JSON and prints tables.

    python3 benchmarks/gpu_bench.py --data DIR --out gpu_bench.json [--runtimes cupy,pycuda] [--quick]

DIR holds dragonfly-medium/{photons.emc,det_sim.h5} (the shared medium set).  Parts:

* device: its name and the device-to-device copy bandwidth measured here (bytes read + written);
* EMC, one iteration (one shard of all frames): the medium set, and a large simulated case (50 100
  rotations, num_div 10; a 224 x 224 detector, ~50 000 pixels; 100 000 frames of ~500 photons at
  random pixels: the time does not depend on where the photons fall, the GPU step is dense in
  frames x rotations).  Median of the timed repeats, the step's breakdown, and the roofline floor
  max(flops / peak FP32, bytes / bandwidth) with flops = 2 R D M (likelihood) + 2 R D M (weighted
  photons) + 2 x 110 R P (slicing, expand and merge), bytes = 16 R D (the dense float32
  likelihood and probabilities written and read twice); R rotations, D frames, M photon entries
  per frame, P pixels.  The CPU path (Numba, all cores) runs in the same call on the medium set
  and on 2 000 frames of the large case, beside the GPU on the same 2 000 frames (same work).
* phasing: one HIO iteration (FFT, modulus, inverse FFT, update) at 256^3 and 512^3, median of
  20, against the bandwidth floor 39 N^3 bytes / bandwidth (x, spectrum, amplitude, y, support
  each read or written once) and the issue's 0.73 ms (256^3, H100).
* each part on each runtime (CuPy RawModule, PyCUDA SourceModule): their times side by side and
  the largest difference between their answers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PEAK_FP32 = {"H100 80GB HBM3": 67e12, "H100 PCIe": 51e12, "H100 NVL": 60e12, "H200": 67e12}   # vendor sheets


def device_info(cp) -> dict:
    if cp is np:                           # --runtimes twin: a smoke test of this script on the CPU
        a = np.ones(2 ** 26, np.float32)
        t = time.perf_counter()
        a.copy()
        return {"name": "numpy twin (CPU)", "copy_bandwidth_bytes_per_s": 2 * a.nbytes / (time.perf_counter() - t),
                "peak_fp32_flops": None}
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    a = cp.empty(2 ** 31 // 4, np.float32)
    b = cp.empty_like(a)
    times = []
    for _ in range(6):
        cp.cuda.Device().synchronize()
        t = time.perf_counter()
        b[...] = a
        cp.cuda.Device().synchronize()
        times.append(time.perf_counter() - t)
    del a, b
    bandwidth = 2 * 2 ** 31 / statistics.median(times[1:])
    peak = next((v for k, v in PEAK_FP32.items() if k in name), None)
    return {"name": name, "multiprocessors": props["multiProcessorCount"], "memory_bytes": props["totalGlobalMem"],
            "copy_bandwidth_bytes_per_s": bandwidth, "peak_fp32_flops": peak}


def timed(fn, repeats: int, warm: bool = True):
    if warm:
        fn()                               # warm-up: compilation, plans, caches
    out, times = None, []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times), times


def emc_floor(nrot, nframes, entries_per_frame, npix, info) -> dict:
    flops = 4.0 * nrot * nframes * entries_per_frame + 2 * 110.0 * nrot * npix
    bytes_ = 16.0 * nrot * nframes
    compute = flops / info["peak_fp32_flops"] if info["peak_fp32_flops"] else None
    memory = bytes_ / info["copy_bandwidth_bytes_per_s"]
    return {"flops": flops, "bytes": bytes_, "compute_s": compute, "memory_s": memory,
            "floor_s": max(memory, compute or 0.0)}


def sync() -> None:
    if "cupy" in sys.modules:
        sys.modules["cupy"].cuda.Device().synchronize()


def compare(a, b) -> float:
    return float(max(np.abs(a.numerator - b.numerator).max() / np.abs(a.numerator).max(),
                     np.abs(a.denominator - b.denominator).max() / np.abs(a.denominator).max()))


def emc_case(name, model, rotations, pixels, shard, state, runtimes, info, repeats, cpu_shard=None) -> dict:
    from spibatch.emc.gpu_step import gpu_shard_step
    from spibatch.emc.step import shard_step, warm_up
    from spibatch.kernels.device import Device

    result = {"case": name, "rotations": len(rotations), "frames": shard.num_frames, "pixels": len(pixels.q),
              "entries_per_frame": shard.num_entries / shard.num_frames}
    result["floor"] = emc_floor(len(rotations), shard.num_frames, result["entries_per_frame"], len(pixels.q), info)
    sums = {}
    for runtime in runtimes:
        out, median, times = timed(lambda rt=runtime: gpu_shard_step(model, rotations, pixels, shard, state,
                                                                     device=Device("gpu", rt)), repeats)
        sums[runtime] = out
        result[runtime] = {"median_s": median, "times_s": times, "breakdown_s": out.timings,
                           "over_floor": median / result["floor"]["floor_s"]}
        print(f"EMC {name} {runtime}: {median:.3f} s per iteration ({median / result['floor']['floor_s']:.1f}x the "
              f"floor {result['floor']['floor_s']:.3f} s); {out.timings}", flush=True)
    if {"cupy", "pycuda"} <= set(sums):
        result["cupy_vs_pycuda_max_rel_diff"] = compare(sums["cupy"], sums["pycuda"])
    small = cpu_shard or shard
    warm_up()                              # Numba compiled on a tiny problem; the run itself is timed once
    cpu, cpu_median, cpu_times = timed(lambda: shard_step(model, rotations, pixels, small, state), 1, warm=False)
    gpu_same = {}
    for runtime in runtimes:
        g, m, _ = timed(lambda rt=runtime: gpu_shard_step(model, rotations, pixels, small, state,
                                                          device=Device("gpu", rt)), 2) \
            if cpu_shard is not None else (sums[runtime], result[runtime]["median_s"], None)
        gpu_same[runtime] = {"median_s": m, "cpu_over_gpu": cpu_median / m, "max_rel_diff_vs_cpu": compare(cpu, g)}
    result["cpu_same_work"] = {"frames": small.num_frames, "median_s": cpu_median, "breakdown_s": cpu.timings,
                               "threads": _threads(), "gpu": gpu_same}
    print(f"EMC {name} CPU ({_threads()} threads, {small.num_frames} frames): {cpu_median:.2f} s; "
          + ", ".join(f"{k}: {v['cpu_over_gpu']:.1f}x faster, max rel diff {v['max_rel_diff_vs_cpu']:.1e}"
                      for k, v in gpu_same.items()), flush=True)
    return result


def _threads() -> int:
    import numba

    return numba.get_num_threads()


def medium(data: Path, runtimes, info, repeats) -> dict:
    from spibatch.detector import Detector
    from spibatch.emc.settings import auto_beta
    from spibatch.emc.step import random_model
    from spibatch.emc.types import PixelSet, Rotations, Shard, StepState
    from spibatch.io.dragonfly import read_photons

    detector = Detector.read(data / "dragonfly-medium" / "det_sim.h5")
    pixels = PixelSet.from_detector(detector)
    shard = Shard.from_photons(read_photons(data / "dragonfly-medium" / "photons.emc"), pixels)
    rotations = Rotations.refined_600_cell(5)
    model = random_model(detector.model_size(), pixels, rotations, float(shard.counts.mean()), 1)
    state = StepState(1, auto_beta(shard.counts), np.ones(shard.num_frames))
    return emc_case("medium", model, rotations, pixels, shard, state, runtimes, info, repeats)


def large(runtimes, info, repeats, frames: int, photons: int, num_div: int = 10, side: int = 224) -> dict:
    from spibatch.config import Geometry
    from spibatch.emc.step import random_model
    from spibatch.emc.types import PixelSet, Rotations, Shard, StepState

    detector = Geometry(detector_pixels=side, pixel_size_m=0.512e-3, detector_distance_m=0.3,
                        wavelength_m=6.2e-10, beamstop_radius_pixels=10).detector()
    pixels = PixelSet.from_detector(detector)
    rng = np.random.default_rng(1)
    per_frame = rng.poisson(photons, frames)
    ptr = np.concatenate([[0], np.cumsum(per_frame)]).astype(np.int64)
    pixel = rng.integers(0, pixels.num_used, ptr[-1]).astype(np.int32)      # used pixels; duplicates are rare
    shard = Shard(0, ptr, pixel, np.ones(ptr[-1], np.float32), ptr[1:].copy(), per_frame.astype(np.float64),
                  np.zeros(frames))
    few = min(2000, frames)
    sub = Shard(0, ptr[:few + 1].copy(), pixel[:ptr[few]], np.ones(ptr[few], np.float32), ptr[1:few + 1].copy(),
                per_frame[:few].astype(np.float64), np.zeros(few))
    rotations = Rotations.refined_600_cell(num_div)
    model = random_model(detector.model_size(), pixels, rotations, float(photons), 1)
    state = StepState(1, np.full(frames, 0.01), np.ones(frames))
    return emc_case("large", model, rotations, pixels, shard, state, runtimes, info, repeats, cpu_shard=sub)


def phasing(n: int, runtimes, info, iterations: int = 20) -> dict:
    cp = np if runtimes == ["twin"] else __import__("cupy")

    from spibatch.kernels.device import Device
    from spibatch.phasing.measurement import Measurement
    from spibatch.phasing.operators import HIO
    from spibatch.phasing.reconstruction import Reconstruction

    g = cp.arange(n, dtype=cp.float32) - n // 2
    r2 = g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2
    rho = cp.fft.ifftshift(cp.where(r2 < (n / 8) ** 2, 1.0 + 0.5 * cp.cos(g[:, None, None] / 3), 0.0)
                           .astype(cp.float32))
    amplitude = cp.abs(cp.fft.rfftn(rho)).astype(cp.float32)
    amplitude = amplitude if cp is np else amplitude.get()
    del g, r2, rho
    measurement = Measurement(amplitude=amplitude, n=n, real=True)
    support = np.zeros((n,) * 3, bool)
    k = np.fft.fftfreq(n) * n
    support[(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2) < (n / 6) ** 2] = True
    floor = 39.0 * n ** 3 / info["copy_bandwidth_bytes_per_s"]
    result = {"n": n, "floor_s": floor}
    outputs = {}
    for runtime in runtimes:
        rec = Reconstruction(measurement, support, [1], device=Device("gpu", runtime))
        hio = HIO(beta=0.9)
        for _ in range(3):
            hio(rec)
        times = []
        for _ in range(iterations):
            sync()
            t = time.perf_counter()
            hio(rec)
            sync()
            times.append(time.perf_counter() - t)
        outputs[runtime] = rec.x if cp is np else rec.x.get()
        median = statistics.median(times)
        result[runtime] = {"median_s": median, "over_floor": median / floor}
        print(f"phasing {n}^3 {runtime}: {median * 1e3:.2f} ms per HIO iteration ({median / floor:.1f}x the floor "
              f"{floor * 1e3:.2f} ms)", flush=True)
        del rec
        if cp is not np:
            cp.get_default_memory_pool().free_all_blocks()
    if {"cupy", "pycuda"} <= set(outputs):
        a, b = outputs["cupy"], outputs["pycuda"]
        result["cupy_vs_pycuda_max_rel_diff"] = float(np.abs(a - b).max() / np.abs(a).max())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runtimes", default="cupy,pycuda")
    parser.add_argument("--parts", default="medium,large,phasing")
    parser.add_argument("--quick", action="store_true", help="a smaller large case (10 000 frames), fewer repeats")
    parser.add_argument("--sizes", default="256,512", help="phasing edges")
    parser.add_argument("--large", default="100000,10,224", help="large EMC case: frames,num_div,detector side")
    args = parser.parse_args()
    runtimes = [r for r in args.runtimes.split(",") if r]
    cp = np if runtimes == ["twin"] else __import__("cupy")
    report = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "runtimes": runtimes,
              "cpu_cores": len(os.sched_getaffinity(0)), "device": device_info(cp)}
    print(json.dumps(report["device"]), flush=True)
    parts = args.parts.split(",")
    repeats = 2 if args.quick else 3
    if "medium" in parts:
        report["emc_medium"] = medium(args.data, runtimes, report["device"], repeats)
    if "large" in parts:
        frames, num_div, side = (int(v) for v in args.large.split(","))
        report["emc_large"] = large(runtimes, report["device"], 1 if args.quick else 2,
                                    min(frames, 10_000) if args.quick else frames, 500, num_div, side)
    if "phasing" in parts:
        report["phasing"] = [phasing(int(n), runtimes, report["device"]) for n in args.sizes.split(",")]
    args.out.write_text(json.dumps(report, indent=1, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
