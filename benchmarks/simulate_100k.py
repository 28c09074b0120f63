"""Simulator benchmark: 100 000 patterns of 1EI7 on a 128 x 128 detector, ~1000 photons each.

    python benchmarks/simulate_100k.py [--patterns 100000] [--compare 10000] [--breakdown 4096] [--out DIR]

Geometry: 128 x 128 pixels of 200 um (AGIPD's pitch) at 0.13 m, 6 keV (2.07 A), beam stop
radius 4 pixels: 21 A resolution at the detector edge, 15 A in the corner, model grid 181^3.
Particle: 1EI7's biological assembly (TMV coat-protein disk, 34 subunits, ~200 A across),
sampled with linear oversampling ~6.9.  Mean 1000 photons per frame, no fluence jitter.

Each case runs ``spibatch.sim.simulate`` end to end in a fresh child process that samples its
own resident memory every 0.1 s; phases are timed from the simulator's log lines.  Two sizes
(``--compare`` and ``--patterns``) show whether peak memory grows with the number of frames.
The breakdown runs the pattern stages one after another, single-threaded, on
``--breakdown`` frames of the same intensity.  Prints a summary and writes ``benchmark.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GEOMETRY = dict(detector_pixels=128, pixel_size_m=200e-6, detector_distance_m=0.13, photon_energy_ev=6000,
                beamstop_radius_pixels=4, polarization="x")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def pipeline(num: int):
    from spibatch.config import Geometry, Pipeline, Simulation

    return Pipeline(name="bench-sim", geometry=Geometry(**GEOMETRY),
                    simulation=Simulation(pdb=REPO / "spibatch" / "data" / "1EI7.pdb", num_patterns=num,
                                          mean_photons_per_frame=1000, chunk_frames=1024, seed=1))


def child_simulate(num: int, out: Path) -> dict:
    """One end-to-end simulate() with RSS sampling; returns timings, memory and file sizes."""
    from spibatch.stages.simulate import simulate_to

    samples, marks, stop = [], [], threading.Event()

    def sampler():
        while not stop.is_set():
            samples.append((time.monotonic(), rss_bytes()))
            time.sleep(0.1)

    class Marker(logging.Handler):
        def emit(self, record):
            marks.append((time.monotonic(), record.getMessage()))

    log = logging.getLogger("spibatch")
    log.setLevel(logging.INFO)
    log.addHandler(Marker())
    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    t0 = time.monotonic()
    paths = simulate_to(pipeline(num), out, show_progress=False)
    t1 = time.monotonic()
    stop.set()
    thread.join()
    t_scale = next(t for t, m in marks if m.startswith("photon scale"))
    t_patterns = next(t for t, m in marks if "photons per frame on average" in m)

    def peak(a, b):
        inside = [r for t, r in samples if a <= t <= b]
        return max(inside) if inside else None

    return {
        "patterns": num, "wall_s": t1 - t0,
        "structure_intensity_scale_s": t_scale - t0, "pattern_loop_s": t_patterns - t_scale,
        "truth_write_s": t1 - t_patterns,
        "s_per_1000_frames": (t_patterns - t_scale) / num * 1000,
        "peak_rss_mb": max(r for _, r in samples) / 1e6,
        "peak_rss_pattern_loop_mb": peak(t_scale, t_patterns) / 1e6,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
        "files_mb": {k: os.path.getsize(p) / 1e6 for k, p in paths.items()},
        "log": [m for _, m in marks],
    }


def child_breakdown(num: int, truth: Path) -> dict:
    """Pattern stages one after another on ``num`` frames, single thread: seconds per 1000 frames."""
    import numpy as np

    from spibatch.config import Geometry
    from spibatch.io.dragonfly import PhotonsWriter
    from spibatch.io.results import read_result
    from spibatch.sim import patterns as P

    detector = (Geometry(**GEOMETRY)).detector()
    datasets, attrs = read_result(truth)
    volume = datasets["intensity"].astype(np.float64)
    rng = np.random.default_rng(1)
    quaternions = P.random_quaternions(num, rng)
    times = dict.fromkeys(("setup (corner table)", "rotations + slicing", "Poisson sampling",
                           "sparse conversion", "write"), 0.0)
    t = time.perf_counter()
    slicer = P.Slicer(volume * attrs["photon_scale"], detector, detector.corr)
    times["setup (corner table)"] = time.perf_counter() - t
    block = max(1, P.SLICE_PIXELS // len(slicer.pixels))
    chunk = 1024
    with tempfile.TemporaryDirectory() as tmp, PhotonsWriter(Path(tmp) / "p.emc", detector.num_pix) as writer:
        for start in range(0, num, chunk):
            stop = min(start + chunk, num)
            flats, counts = [], []
            for a in range(start, stop, block):
                b = min(a + block, stop)
                t = time.perf_counter()
                rates = slicer(P.rotation_matrices(quaternions[a:b]))
                t1 = time.perf_counter()
                flat, count = P.sample_counts(rates, rng)
                t2 = time.perf_counter()
                times["rotations + slicing"] += t1 - t
                times["Poisson sampling"] += t2 - t1
                flats.append(flat + (a - start) * len(slicer.pixels))
                counts.append(count)
            t = time.perf_counter()
            photons = P.sparse_photons(np.concatenate(flats), np.concatenate(counts), stop - start,
                                       slicer.pixels, detector.num_pix)
            t1 = time.perf_counter()
            writer.append(photons)
            times["sparse conversion"] += t1 - t
            times["write"] += time.perf_counter() - t1
    pixels = num * len(slicer.pixels)
    naive = naive_stages(volume * attrs["photon_scale"], detector, quaternions[:min(num, 512)], rng)
    return {"frames": num, "used_pixels": int(len(slicer.pixels)), "slice_block_frames": block,
            "naive_s_per_1000_frames": naive,
            "s_per_1000_frames": {k: v / num * 1000 for k, v in times.items() if k != "setup (corner table)"},
            "ns_per_pixel": {k: v / pixels * 1e9 for k, v in times.items() if k != "setup (corner table)"},
            "setup_s": times["setup (corner table)"]}


def naive_stages(volume, detector, quaternions, rng) -> dict:
    """The straightforward version, for comparison: map_coordinates (float64), Poisson per pixel, from_dense."""
    import numpy as np
    from scipy.ndimage import map_coordinates

    from spibatch.photons import Photons
    from spibatch.sim.patterns import rotation_matrices

    used = np.flatnonzero(detector.mask != 2)
    q = detector.q_voxels[used].T
    c = (volume.shape[0] - 1) // 2
    times = {"map_coordinates slicing": 0.0, "rng.poisson per pixel": 0.0, "Photons.from_dense": 0.0}
    for start in range(0, len(quaternions), 4):
        mats = rotation_matrices(quaternions[start:start + 4])
        t = time.perf_counter()
        rates = np.stack([map_coordinates(volume, m @ q + c, order=1, prefilter=False) for m in mats])
        rates *= detector.corr[used]
        t1 = time.perf_counter()
        counts = np.zeros((len(mats), detector.num_pix), np.int64)
        counts[:, used] = rng.poisson(rates)
        t2 = time.perf_counter()
        Photons.from_dense(counts)
        times["map_coordinates slicing"] += t1 - t
        times["rng.poisson per pixel"] += t2 - t1
        times["Photons.from_dense"] += time.perf_counter() - t2
    return {k: v / len(quaternions) * 1000 for k, v in times.items()}


def run_child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"child {args} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")), "?")
    import numpy
    import scipy

    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": numpy.__version__, "scipy": scipy.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average_start": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patterns", type=int, default=100_000)
    parser.add_argument("--compare", type=int, default=10_000, help="a smaller run, to compare peak memory")
    parser.add_argument("--breakdown", type=int, default=4096, help="frames for the per-stage breakdown")
    parser.add_argument("--out", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, num, path = args.child[0], int(args.child[1]), Path(args.child[2])
        result = child_simulate(num, path) if kind == "simulate" else child_breakdown(num, path)
        print(json.dumps(result))
        return

    out = args.out or Path(tempfile.mkdtemp(prefix="spibatch-bench-sim-"))
    report = {"machine": machine(), "geometry": GEOMETRY, "runs": []}
    for num in (args.compare, args.patterns):
        run = run_child("simulate", str(num), str(out / f"n{num}"))
        report["runs"].append(run)
        print(f"{num:>7} patterns: wall {run['wall_s']:.1f} s (structure + intensity + scale "
              f"{run['structure_intensity_scale_s']:.1f} s, pattern loop {run['pattern_loop_s']:.1f} s = "
              f"{run['s_per_1000_frames']:.2f} s per 1000 frames, truth {run['truth_write_s']:.1f} s); peak RSS "
              f"{run['peak_rss_mb']:.0f} MB overall, {run['peak_rss_pattern_loop_mb']:.0f} MB in the pattern loop "
              f"(ru_maxrss {run['ru_maxrss_mb']:.0f} MB); files (MB): "
              + ", ".join(f"{k} {v:.1f}" for k, v in run["files_mb"].items()), flush=True)
    for line in report["runs"][-1]["log"]:
        print("  log:", line)
    breakdown = run_child("breakdown", str(args.breakdown), str(out / f"n{args.compare}" / "truth.h5"))
    report["breakdown"] = breakdown
    print(f"breakdown over {breakdown['frames']} frames ({breakdown['used_pixels']} pixels each, "
          f"{breakdown['slice_block_frames']} frames per slice block, one thread):")
    for stage, seconds in breakdown["s_per_1000_frames"].items():
        print(f"  {stage:<22} {seconds:6.3f} s per 1000 frames  {breakdown['ns_per_pixel'][stage]:6.1f} ns/pixel")
    print("  the straightforward version (for comparison, s per 1000 frames): " + ", ".join(
        f"{k} {v:.2f}" for k, v in breakdown["naive_s_per_1000_frames"].items()))
    report["machine"]["load_average_end"] = os.getloadavg()
    print("machine:", json.dumps(report["machine"]))
    (out / "benchmark.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'benchmark.json'}")


if __name__ == "__main__":
    main()
