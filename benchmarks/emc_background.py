"""Background-aware EMC: the model's bias without and with the known background, and the time per iteration.

    python benchmarks/emc_background.py [--pixels 24] [--frames 400] [--iterations 12]

The case of tests/test_emc_background.py (a 4-domain particle, ~1500 photons per frame at rotations of num_div 2,
plus ~600 Poisson background photons from a radial profile times a per-frame level in 0.5-1.5), EMC from the
truth (beta 1, scales fitted) three ways: frames without background (EMC's own bias, the reference), frames with
background and EMC blind to it, and EMC given the background file.  Prints the bias per shell minus the
reference's, the correlation of the fitted levels with the true ones, and the median seconds per iteration.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=12)
    args = parser.parse_args()
    import test_emc_background as case_of   # the test's case and measures: one definition
    from spibatch.emc.step import shard_step, warm_up
    from spibatch.emc.types import PixelSet, Shard, StepState, finish

    warm_up()
    warm_up(background=True)
    case = case_of.with_background.__wrapped__()

    def run(photons, background):
        pixels = PixelSet.from_detector(case["detector"], background=background)
        shard = Shard.from_photons(photons, pixels)
        nf = photons.num_frames
        model, scales = case["truth"].copy(), np.ones(nf)
        levels = None if background is None else np.ones(nf)
        seconds = []
        for it in range(1, args.iterations + 1):
            t0 = time.perf_counter()
            total = shard_step(model, case["rotations"], pixels, shard, StepState(it, np.ones(nf), scales, levels))
            model, scales, _ = finish(total, model, True, False, pixels.background_sum)
            seconds.append(time.perf_counter() - t0)
            if background is not None:
                levels = total.frames["background_scale"]
        return case_of.shell_bias(model, case["truth"]), levels, float(np.median(seconds))

    reference, _, t_clean = run(case["clean"], None)
    blind, _, t_blind = run(case["photons"], None)
    aware, levels, t_aware = run(case["photons"], case["background"])
    shells = " ".join(f"{a}-{b}" for a, b in zip(case_of.SHELLS[:-1], case_of.SHELLS[1:]))
    print(f"shells (voxels): {shells}")
    print("reference (no background in the data):", np.round(reference, 3), f"{t_clean:.3f} s/iteration")
    print("blind (background ignored), minus ref:", np.round(blind - reference, 3), f"{t_blind:.3f} s/iteration")
    print("aware (background_file), minus ref:   ", np.round(aware - reference, 3), f"{t_aware:.3f} s/iteration")
    print(f"fitted levels vs true: CC {np.corrcoef(levels, case['levels'])[0, 1]:.3f}; "
          f"time aware / blind: {t_aware / t_blind:.2f}x")


if __name__ == "__main__":
    main()
