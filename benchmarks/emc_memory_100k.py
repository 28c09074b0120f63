"""EMC peak memory on 100 000 frames of 128 x 128 pixels at ~1000 photons, num_div 6.

    python benchmarks/emc_memory_100k.py [--data DIR] [--iterations 1] [--frames-per-shard 4096]
    python benchmarks/emc_memory_100k.py --start-model RUN/emc/output_001.h5 --beta 1.0
    python benchmarks/emc_memory_100k.py --start-model RUN/emc/output_001.h5 --beta 1.0 --num-modes 2

Simulates the data set once (the geometry of benchmarks/simulate_100k.py; kept in
--data for later runs), then runs ``spibatch emc`` in a child process and reports
its peak resident memory (ru_maxrss of the child) against the reference the issue
names: the sparse data in memory (the CSR arrays of all frames) + the model
(M^3 float64) + the pruned probabilities (kept (rotation, P) pairs of every
frame, 4 + 8 bytes each, from metrics.jsonl's mean_kept_rotations).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/spibatch-emc-100k"))
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--iterations", type=int, default=1)
    ap.add_argument("--num-div", type=int, default=6)
    ap.add_argument("--frames-per-shard", type=int, default=4096)
    ap.add_argument("--start-model", type=Path, default=None,
                    help="start from this model (e.g. RUN/emc/output_001.h5 of a first run) instead of a random one")
    ap.add_argument("--num-modes", type=int, default=1,
                    help="rotating modes; with a one-mode --start-model, each mode starts from it, mode k scaled "
                    "by 1 + 0.05 k (the reference counts the model V times)")
    ap.add_argument("--beta", type=float, default=None,
                    help="a fixed beta instead of Dragonfly's auto rule (1.0 with a start model: probabilities "
                    "as sharp as in a late iteration, so the pruned-probability term is small)")
    args = ap.parse_args()

    from simulate_100k import pipeline

    from spibatch.detector import Detector
    from spibatch.io.dragonfly import photons_info
    from spibatch.layout import RunLayout
    data = args.data
    if not (data / "photons.emc").exists():
        from spibatch.stages.simulate import simulate_to
        start = time.time()
        simulate_to(pipeline(args.frames), data, show_progress=False)
        print(f"simulated {args.frames} frames in {time.time() - start:.0f} s into {data}", flush=True)
    frames, pixels = photons_info(data / "photons.emc")
    detector = Detector.read(data / "detector.h5")
    start_model = args.start_model
    if start_model is not None and args.num_modes > 1:      # a (V, M, M, M) start from a one-mode output
        import h5py
        import numpy as np

        from spibatch.io.results import read_volume
        one = np.asarray(read_volume(start_model), np.float64)
        start_model = data / f"start-{args.num_modes}-modes.h5"
        with h5py.File(start_model, "w") as f:
            f["intensities"] = np.stack([one * (1 + 0.05 * k) for k in range(args.num_modes)])
    config = data / "emc.yaml"
    config.write_text(json.dumps({"name": "emc-100k", "emc": {
        "photons": str(data / "photons.emc"), "detector": str(data / "detector.h5"), "num_div": args.num_div,
        "iterations": args.iterations, "need_scaling": True, "frames_per_shard": args.frames_per_shard,
        **({"start_model": str(start_model)} if start_model else {}),
        **({"num_modes": args.num_modes} if args.num_modes > 1 else {}),
        **({"beta": args.beta, "beta_schedule": None} if args.beta else {})}}))
    out = data / f"run-{time.strftime('%Y%m%dT%H%M%S')}"
    start = time.time()
    subprocess.run([sys.executable, "-m", "spibatch", "emc", str(config), "--out", str(out)], check=True,
                   env=dict(os.environ, NUMBA_NUM_THREADS=os.environ.get("NUMBA_NUM_THREADS", "2")))
    wall = time.time() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    metrics = [json.loads(x) for x in RunLayout(out).emc_metrics.read_text().splitlines() if x.strip()]
    from spibatch.io.dragonfly import iter_photons
    sparse = 0
    for block in iter_photons(data / "photons.emc", 8192):
        sparse += sum(a.nbytes for a in (block.ones_indptr, block.ones_index, block.multi_indptr,
                                         block.multi_index, block.multi_count))
    size = detector.model_size()
    model = size ** 3 * 8 * args.num_modes
    kept = max(m["mean_kept_rotations"] for m in metrics) * frames
    probs = kept * 12
    reference = sparse + model + probs
    print(f"EMC run in {out} (model: {RunLayout(out).emc_output(args.iterations)})", file=sys.stderr)
    print(json.dumps({"frames": frames, "start_model": str(args.start_model), "beta": args.beta or "auto", "num_modes": args.num_modes, "pixels": pixels, "num_div": args.num_div, "model_size": size,
                      "iterations": args.iterations, "wall_s": round(wall, 1),
                      "time_per_iteration_s": [round(m["time_s"], 1) for m in metrics],
                      "peak_rss_mb": round(peak / 2**20), "sparse_data_mb": round(sparse / 2**20),
                      "model_mb": round(model / 2**20), "pruned_probabilities_mb": round(probs / 2**20),
                      "mean_kept_rotations": [m["mean_kept_rotations"] for m in metrics],
                      "reference_mb": round(reference / 2**20), "ratio": round(peak / reference, 3)}, indent=2))


if __name__ == "__main__":
    main()
