"""Forward + inverse 3-D FFT of one N^3 float32 volume: scipy.fft against pyFFTW's estimated and timed plans.

    python3 benchmarks/fft_backends.py 49 64 75 81 91 96 99 105 125 128 135 225 [--measure] [--threads 2]

Each backend of :class:`spibatch.phasing.fft.FFTEngine` is timed in turn within every repeat (so that the
load of a shared machine falls on all alike); medians in ms, one line per edge.  ``--measure`` adds FFTW_MEASURE
plans (planning takes seconds per size and writes wisdom under $XDG_CACHE_HOME/spibatch/).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spibatch.phasing.fft import FFTEngine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("edges", type=int, nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--measure", action="store_true")
    args = parser.parse_args()
    for n in args.edges:
        engines = {"scipy": FFTEngine(n, threads=args.threads, backend="scipy"),
                   "fftw-estimate": FFTEngine(n, threads=args.threads, backend="fftw", planning="estimate")}
        if args.measure:
            engines["fftw-measure"] = FFTEngine(n, threads=args.threads, backend="fftw", planning="measure")
        for engine in engines.values():
            engine.x[...] = np.random.default_rng(1).random(engine.shape, dtype=np.float32)
        times = {name: [] for name in engines}
        for _ in range(args.repeats):
            for name, engine in engines.items():
                began = time.perf_counter()
                spectrum = engine.forward()
                engine.inverse(spectrum)
                times[name].append(time.perf_counter() - began)
        print(n, {name: round(statistics.median(t) * 1e3, 1) for name, t in times.items()}, flush=True)


if __name__ == "__main__":
    main()
