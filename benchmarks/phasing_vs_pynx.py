"""Phasing speed, side by side on the same cores: spibatch vs PyNX (CPU) vs cuphaser (NumPy).

    bash benchmarks/phasing_refs_env.sh          # once: PyNX (Debian backports) + cuphaser (venv)
    python benchmarks/phasing_vs_pynx.py [--sizes 128 256] [--threads 2] [--repeats 5]

For each size N, in one run and on the same ``--threads`` threads: ms per iteration of HIO,
ER, RAAR (beta 0.9) and of one shrink-wrap update (sigma 2 voxels, threshold), the median over
``--repeats`` timed blocks after a warm-up, for spibatch (fftw and scipy FFT backends) and for
the two reference tools (benchmarks/phasing_refs.py, in their own interpreters).  Prints a
table, the memory-bandwidth floor of one HIO iteration (the bytes an ideal implementation
moves: two real-to-complex FFTs of 2 passes each over the real and half-complex arrays, plus
the modulus and update passes, at the STREAM-like bandwidth measured here), and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYNX_PYTHON = os.environ.get("PYNX_PYTHON", "/usr/bin/python3")
CUPHASER_PYTHON = os.environ.get("CUPHASER_PYTHON", "/opt/cuphaser-venv/bin/python")


def case(n: int, seed: int = 1):
    """A compact positive object ~N/4 across, its noisy intensity with a beam-stop hole, a loose support."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    g = np.indices((n, n, n), dtype=np.float32) - n // 2
    axes = rng.uniform(0.85, 1.15, 3) * n / 8
    inside = ((g[0] / axes[0]) ** 2 + (g[1] / axes[1]) ** 2 + (g[2] / axes[2]) ** 2) < 1
    rho = gaussian_filter(np.where(inside, rng.random((n, n, n)), 0.0), 1.0)
    intensity = np.abs(np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(rho)))) ** 2
    intensity = rng.poisson(intensity * (1e9 / intensity.sum())).astype(np.float64)
    r = np.sqrt((g ** 2).sum(0))
    intensity[r < max(2, n / 32)] = 0
    support = np.fft.ifftshift(r < axes.max() + 3)
    return intensity, support


def time_spibatch(n: int, threads: int, repeats: int, backend: str) -> dict:
    import numpy as np

    from spibatch.phasing.measurement import prepare
    from spibatch.phasing.operators import ER, HIO, RAAR, ShrinkWrap
    from spibatch.phasing.reconstruction import Reconstruction

    intensity, support = case(n)
    m = prepare(intensity)
    start = time.perf_counter()
    rec = Reconstruction(m, support, [1], threads=threads, fft_backend=backend)
    setup = time.perf_counter() - start
    iters = 10 if n <= 128 else 4
    out = {"tool": "spibatch", "backend": rec.fft.backend, "size": n, "threads": threads,
           "setup_s": round(setup, 2)}
    ops = {"hio_ms": HIO(beta=0.9), "er_ms": ER(), "raar_ms": RAAR(beta=0.9)}
    for key, op in ops.items():
        (op ** 2)(rec)                                            # warm-up (and Numba compile)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            (op ** iters)(rec)
            times.append((time.perf_counter() - t) / iters * 1e3)
        out[key] = round(statistics.median(times), 2)
    shrink = ShrinkWrap(sigma=2, threshold=0.1)
    times = []
    for _ in range(repeats + 1):
        HIO()(rec)                                                # as in a recipe: after an iteration
        t = time.perf_counter()
        shrink(rec)
        times.append((time.perf_counter() - t) * 1e3)
    out["shrinkwrap_ms"] = round(statistics.median(times[1:]), 2)
    out["support_voxels"] = int(rec.support.sum())
    out["check_error"] = round(rec.histories[0][-1]["error"], 4)
    del np
    return out


def bandwidth_gbs(threads: int) -> float:
    """A copy of 512 MB with ``threads`` threads (Numba), in GB/s counted as read + write."""
    import numba
    import numpy as np

    numba.set_num_threads(threads)

    @numba.njit(parallel=True)
    def copy(a, b):
        for i in numba.prange(a.size):
            b[i] = a[i]

    a = np.ones(64 * 2 ** 20)
    b = np.empty_like(a)
    copy(a, b)
    best = min(_timed(copy, a, b) for _ in range(5))
    return 2 * a.nbytes / best / 1e9


def _timed(f, *args) -> float:
    t = time.perf_counter()
    f(*args)
    return time.perf_counter() - t


def floor_ms(n: int, gbs: float) -> float:
    """Bytes of one HIO iteration at float32: FFT r2c + c2r, each at least read + write of both
    arrays (4 N^3 + 8 N^2 (N/2+1) bytes), the modulus pass (read/write spectrum + read amplitude),
    the update pass (read x, y, support; write x)."""
    real = 4 * n ** 3
    half = 8 * n * n * (n // 2 + 1)
    amp = 4 * n * n * (n // 2 + 1)
    total = 2 * (real + half) + (2 * half + amp) + (3 * real + n ** 3)
    return total / (gbs * 1e9) * 1e3


def reference(tool: str, n: int, threads: int, repeats: int) -> dict:
    python = PYNX_PYTHON if tool == "pynx" else CUPHASER_PYTHON
    env = dict(os.environ, PYNX_PU="cpu", OMP_NUM_THREADS=str(threads))
    cmd = [python, str(HERE / "phasing_refs.py"), "--tool", tool, "--size", str(n), "--repeats", str(repeats),
           "--threads", str(threads)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    except FileNotFoundError:
        return {"tool": tool, "size": n, "error": f"no interpreter {python} (run benchmarks/phasing_refs_env.sh)"}
    if done.returncode != 0:
        return {"tool": tool, "size": n, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-references", action="store_true")
    args = ap.parse_args()
    os.environ["NUMBA_NUM_THREADS"] = str(args.threads)
    import spibatch.kernels  # noqa: F401  (its OMP_WAIT_POLICY default must precede Numba's first parallel call)
    gbs = bandwidth_gbs(args.threads)
    rows = []
    for n in args.sizes:
        for backend in ("fftw", "scipy"):
            rows.append(time_spibatch(n, args.threads, args.repeats, backend))
        if not args.skip_references:
            for tool in ("pynx", "cuphaser"):
                rows.append(reference(tool, n, args.threads, max(1, args.repeats if n <= 128 else 2)))
    print(f"\nmemory bandwidth (copy, {args.threads} threads): {gbs:.1f} GB/s")
    print(f"{'N':>4} {'tool':<18} {'HIO':>9} {'ER':>9} {'RAAR':>9} {'shrink':>9}  ms/iteration")
    for n in args.sizes:
        for r in (r for r in rows if r["size"] == n):
            name = r["tool"] + (f" ({r['backend']})" if "backend" in r else "")
            if "error" in r:
                print(f"{n:>4} {name:<18} failed: {r['error']}")
                continue
            cells = [r.get(k) for k in ("hio_ms", "er_ms", "raar_ms", "shrinkwrap_ms")]
            print(f"{n:>4} {name:<18} " + " ".join(f"{c:>9.1f}" if c is not None else f"{'-':>9}" for c in cells))
        print(f"{n:>4} {'floor (bandwidth)':<18} {floor_ms(n, gbs):>9.1f}")
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "host": os.uname().nodename, "cpus": os.cpu_count(),
                      "bandwidth_gbs": round(gbs, 2), "rows": rows,
                      "floor_ms": {n: round(floor_ms(n, gbs), 2) for n in args.sizes}}))


if __name__ == "__main__":
    main()
