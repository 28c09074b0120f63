"""What gathering several photons files and a blacklist costs the emc stage (:mod:`spibatch.io.frame_selection`).

    python benchmarks/frame_selection.py [--copies 10] [--files 4] [--left-out 0.2] [--repeats 3]

The shared medium set's frames (4000 of 22 500 pixels) repeated ``copies`` times and cut into
``files`` photons files, a blacklist leaving out a random ``left_out`` share; medians over ``repeats`` of: one
pass reading every frame (the check every EMC run makes before it starts, ``check_frames``) and the gathering into
one file (``write``), with the files' sizes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPIBATCH_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


def main() -> None:
    from spibatch.io.dragonfly import read_photons, write_photons
    from spibatch.io.frame_selection import FrameSelection
    from spibatch.photons import Photons

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--left-out", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    whole = Photons.concatenate([read_photons(SHARED / "dragonfly-medium" / "photons.emc")] * args.copies)
    with tempfile.TemporaryDirectory(prefix="frame-selection-") as tmp:
        tmp = Path(tmp)
        edges = np.linspace(0, whole.num_frames, args.files + 1).astype(int)
        files = []
        for k in range(args.files):
            files.append(tmp / f"run_{k}.h5")
            write_photons(files[-1], whole.select(edges[k], edges[k + 1]))
        left_out = np.random.default_rng(1).random(whole.num_frames) < args.left_out
        (tmp / "bl.txt").write_text("\n".join(str(int(x)) for x in left_out) + "\n")
        emc = SimpleNamespace(photons=files, photons_list=None, blacklist_file=tmp / "bl.txt", selection=None)
        checks, writes = [], []
        for _ in range(args.repeats):
            began = time.perf_counter()
            selection = FrameSelection.of(emc)
            selection.check_frames()
            checks.append(time.perf_counter() - began)
            (tmp / "gathered.h5").unlink(missing_ok=True)
            began = time.perf_counter()
            selection.write(tmp / "gathered.h5")
            writes.append(time.perf_counter() - began)
        size_in = sum(p.stat().st_size for p in files) / 1e6
        size_out = (tmp / "gathered.h5").stat().st_size / 1e6
        print(f"{whole.num_frames:,} frames in {args.files} files ({size_in:.0f} MB), {int(left_out.sum()):,} left out: "
              f"read-through check {statistics.median(checks):.2f} s, gathering {statistics.median(writes):.2f} s "
              f"(median of {args.repeats}; {size_out:.0f} MB written)")


if __name__ == "__main__":
    main()
