"""CXI ingest throughput: ``cxi_to_photons`` beside a bare h5py read of the same blocks (the I/O floor)
and beside the dense numpy conversion it replaced.

Builds a CXI stack from a Dragonfly photons file (default: the shared medium set, 4000 frames of
150 x 150 pixels) as float32 ADU (gain 25, uniform read noise up to 0.4 photon), then times, in
alternation and ``--repeats`` times each: reading the stack block by block with h5py, the full
conversion to a sparse photons file, and the dense reference (float64 counts per block, then
``Photons.from_dense``).  The file is in the page cache after it is written, so "read" is the
cost of h5py's copy, not of a disk.  Prints medians, frames/s, MB/s and the ratios.

    python benchmarks/cxi_ingest.py [--photons P] [--repeats 5] [--chunk-frames 256] [--scratch DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from spibatch.io.cxi import DATA_PATH, cxi_to_photons
from spibatch.io.dragonfly import read_photons

ADU = 25.0
HERE = Path(__file__).resolve().parent
MEDIUM = HERE.parents[1] / "shared" / "datasets" / "dragonfly-medium" / "photons.emc"


def build_cxi(photons: Path, path: Path) -> tuple[int, int]:
    dense = read_photons(photons).to_dense()
    side = int(round(np.sqrt(dense.shape[1])))
    rng = np.random.default_rng(0)
    stack = (dense * ADU + rng.uniform(-0.4 * ADU, 0.4 * ADU, dense.shape)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset(DATA_PATH, data=stack.reshape(-1, side, side), chunks=(16, side, side))
    return stack.shape


def dense_reference(path: Path, out: Path, chunk: int) -> None:
    """The conversion as it was before the fused kernel: dense float64 counts per block, then from_dense."""
    from spibatch.io.cxi import _to_counts
    from spibatch.io.dragonfly import PhotonsWriter
    from spibatch.photons import Photons

    with h5py.File(path, "r") as f, PhotonsWriter(out, int(np.prod(f[DATA_PATH].shape[1:]))) as writer:
        data = f[DATA_PATH]
        for start in range(0, data.shape[0], chunk):
            block = data[start:start + chunk].reshape(-1, writer.num_pix)
            writer.append(Photons.from_dense(_to_counts(block, start, None, ADU, False, path, DATA_PATH)))


def read_blocks(path: Path, chunk: int) -> None:
    with h5py.File(path, "r") as f:
        data = f[DATA_PATH]
        for start in range(0, data.shape[0], chunk):
            data[start:start + chunk]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photons", type=Path, default=MEDIUM)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk-frames", type=int, default=256)
    parser.add_argument("--scratch", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        cxi = Path(scratch) / "frames.cxi"
        frames, pixels = build_cxi(args.photons, cxi)
        size_mb = cxi.stat().st_size / 1e6
        times = {"h5py read": [], "cxi_to_photons": [], "dense (before)": []}
        for _ in range(args.repeats):
            began = time.perf_counter()
            read_blocks(cxi, args.chunk_frames)
            times["h5py read"].append(time.perf_counter() - began)
            began = time.perf_counter()
            cxi_to_photons(cxi, Path(scratch) / "photons.h5", chunk_frames=args.chunk_frames, adu_per_photon=ADU)
            times["cxi_to_photons"].append(time.perf_counter() - began)
            began = time.perf_counter()
            dense_reference(cxi, Path(scratch) / "dense.h5", args.chunk_frames)
            times["dense (before)"].append(time.perf_counter() - began)
        assert (Path(scratch) / "dense.h5").read_bytes() == (Path(scratch) / "photons.h5").read_bytes()
        print(f"{frames} frames x {pixels} pixels, float32, {size_mb:.0f} MB; blocks of {args.chunk_frames} frames; "
              f"{args.repeats} repeats, alternating")
        for name, values in times.items():
            med = statistics.median(values)
            print(f"{name:15s} median {med:6.2f} s  ({frames / med:8.0f} frames/s, {size_mb / med:6.0f} MB/s)  "
                  f"all: {', '.join(f'{v:.2f}' for v in values)}")
        med = {name: statistics.median(values) for name, values in times.items()}
        print(f"conversion / bare read: {med['cxi_to_photons'] / med['h5py read']:.2f}x; "
              f"dense (before) / fused kernel: {med['dense (before)'] / med['cxi_to_photons']:.2f}x; "
              "the two photons files are byte-identical")


if __name__ == "__main__":
    main()
