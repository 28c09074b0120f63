"""Phasing speed on this machine: HIO and shrink-wrap per FFT engine, and where an HIO iteration's time goes.

    python benchmarks/phasing_speed.py [--size 128] [--threads 2] [--rounds 15]

Everything is timed interleaved (round k times every candidate once, in turn) so that the load of a
shared machine falls on all of them alike; medians over the rounds (ms), and the load average.

- ``hio``: one HIO iteration (beta 0.9) of a Reconstruction, per engine: scipy.fft (the base install),
  pyFFTW with FFTW_ESTIMATE plans (the default: reproducible) and with FFTW_MEASURE plans (wisdom).
- ``shrinkwrap``: one ShrinkWrap(sigma=2, threshold=0.1) after an HIO iteration (the cost of the update
  alone: the pair minus an iteration), and its ratio to an HIO iteration.
- ``er``: an error-reduction iteration after another (its iterate is zero outside the support, so the
  forward FFT skips the empty rows: ``phasing.fft_pruned``), and its ratio to an HIO iteration.
- ``auto-projection``: auto's alternative support update (the blur of P_M x from the iteration's own
  spectrum), as the cost over a plain iteration.
- ``profile`` (scipy.fft): forward rfftn (of the iterate, and of P_S of it), inverse irfftn, the modulus pass, the HIO update pass, and the
  threshold passes (max then threshold, against the fused threshold_relative).
Prints one JSON line.
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


def make_rec(n, threads, backend, planning="estimate"):
    from scipy.ndimage import gaussian_filter

    from spibatch.phasing.measurement import prepare
    from spibatch.phasing.reconstruction import Reconstruction

    rng = np.random.default_rng(1)
    g = np.indices((n,) * 3) - n // 2
    inside = (np.sqrt((g ** 2).sum(0)) < n / 8)
    rho = gaussian_filter(np.where(inside, rng.random((n,) * 3), 0.0), 1.0)
    intensity = np.abs(np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(rho)))) ** 2
    intensity[np.sqrt((g ** 2).sum(0)) <= max(2, n // 32)] = 0
    m = prepare(intensity)
    support = np.fft.ifftshift(np.sqrt((g ** 2).sum(0)) < n / 8 + 3)
    return Reconstruction(m, support, [1], threads=threads, fft_backend=backend, fft_planning=planning)


def main() -> None:
    from spibatch.phasing import auto
    from spibatch.phasing.operators import ER, HIO, ShrinkWrap
    from spibatch.phasing.support import gaussian_filter_1d, threshold_blurred

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    n, threads = args.size, args.threads
    engines = {"scipy": make_rec(n, threads, "scipy")}
    try:
        import pyfftw  # noqa: F401
        engines["fftw-estimate"] = make_rec(n, threads, "fftw", "estimate")
        engines["fftw-measure"] = make_rec(n, threads, "fftw", "measure")
    except ImportError:
        pass
    hio, sw, er = HIO(beta=0.9), ShrinkWrap(sigma=2, threshold=0.1), ER()
    blur = gaussian_filter_1d(n, 2.0, True)
    rec0 = engines["scipy"]
    from spibatch.kernels import phasing_cpu as k

    def parts():
        out = {}
        hio(rec0)                           # a dense iterate (the rounds end with ER: zero outside the support)
        t = time.perf_counter()
        spectrum = rec0.fft.forward(rec0.x)
        out["forward"] = time.perf_counter() - t
        k.project_support(rec0.x, rec0.support, True, rec0.fft.y)
        t = time.perf_counter()
        rec0.fft.forward(rec0.fft.y)
        out["forward_of_support_projection"] = time.perf_counter() - t
        t = time.perf_counter()
        rec0._project(spectrum, 1.0 / n ** 3)
        out["modulus"] = time.perf_counter() - t
        t = time.perf_counter()
        y = rec0.fft.inverse(spectrum)
        out["inverse"] = time.perf_counter() - t
        t = time.perf_counter()
        k.update_hio(rec0.x, y, rec0.support, True, np.float32(0.9))
        out["update"] = time.perf_counter() - t
        rec0.changed()
        volume, support = y[0], rec0.support[0].copy()
        t = time.perf_counter()
        k.threshold_support(volume, np.float32(0.1 * k.max_real(volume)), support)
        out["max_then_threshold"] = time.perf_counter() - t
        t = time.perf_counter()
        k.threshold_relative(volume, 0.1, support)
        out["threshold_relative"] = time.perf_counter() - t
        return out

    for rec in engines.values():            # warm-up: compile, plan
        hio(rec), sw(rec), hio(rec)
    parts()
    times: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, rec in engines.items():
            t = time.perf_counter()
            hio(rec)
            t1 = time.perf_counter()
            sw(rec)
            t2 = time.perf_counter()
            auto._iterate(rec, np.float32(0.9), blur)
            threshold_blurred(rec, rec.fft.y, [0.1])
            t3 = time.perf_counter()
            rec.support[...] = rec.support      # keep going from where it is
            er(rec)
            t4 = time.perf_counter()
            er(rec)
            times.setdefault(f"er {name}", []).append(time.perf_counter() - t4)
            times.setdefault(f"hio {name}", []).append(t1 - t)
            times.setdefault(f"shrinkwrap {name}", []).append(t2 - t1)
            times.setdefault(f"auto-projection-update {name}", []).append(t3 - t2 - (t1 - t))
        for key, value in parts().items():
            times.setdefault(f"profile {key}", []).append(value)
    medians = {key: round(statistics.median(v) * 1e3, 2) for key, v in times.items()}
    for name in engines:
        medians[f"shrinkwrap/hio {name}"] = round(medians[f"shrinkwrap {name}"] / medians[f"hio {name}"], 2)
        medians[f"er/hio {name}"] = round(medians[f"er {name}"] / medians[f"hio {name}"], 2)
        medians[f"auto-projection-update/hio {name}"] = round(
            medians[f"auto-projection-update {name}"] / medians[f"hio {name}"], 2)
    for key in sorted(medians):
        print(f"{key:45s} {medians[key]:8.2f}")
    print(json.dumps({"size": n, "threads": threads, "rounds": args.rounds, "load": os.getloadavg(),
                      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "ms": medians}))


if __name__ == "__main__":
    main()
