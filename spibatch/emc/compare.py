"""An EMC result against a known truth: best-orientation alignment and shell correlation.

The shell range follows the detector: from just outside the beam stop (the
largest ``|q|`` of an excluded pixel, plus one voxel) to the detector edge
(the largest ``|q|`` of a pixel used for orientation: mask 1 marks the corners
beyond the inscribed circle), in voxels of the model grid.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from spibatch.detector import MASK_EXCLUDED, MASK_USED, Detector


def shell_range(detector: Detector) -> tuple[float, float]:
    """``(r_min, r_max)`` in voxels: one voxel outside the beam stop, and the detector edge."""
    radius = np.linalg.norm(detector.q_voxels, axis=1)
    stop = radius[detector.mask == MASK_EXCLUDED]
    r_min = math.ceil(stop.max()) + 1.0 if stop.size else math.ceil(radius.min()) + 1.0
    used = radius[detector.mask == MASK_USED]
    r_max = float(math.floor(used.max() if used.size else radius.max()))
    return r_min, r_max


def compare_with_truth(intensity_path: str | os.PathLike, truth_path: str | os.PathLike,
                       detector_path: str | os.PathLike, out_json: str | os.PathLike | None = None,
                       extra: dict | None = None) -> dict:
    """Align the intensity in ``intensity_path`` onto the truth's ``intensity`` and return (and write) the result.

    Returns ``{"cc", "r_min", "r_max", "inverted", "rotation", ...extra}``; ``cc`` is
    :func:`spibatch.align.align_intensity`'s shell correlation at the best orientation.
    """
    from spibatch.align import align_intensity
    from spibatch.io.atomic import write_text
    from spibatch.detector import Detector
    from spibatch.io.results import read_volume

    model = np.asarray(read_volume(intensity_path), np.float64)
    truth = np.asarray(read_volume(truth_path, "intensity"), np.float64)
    r_min, r_max = shell_range(Detector.read(detector_path))
    alignment = align_intensity(model, truth, r_min, r_max)
    result = {"cc": float(alignment.cc), "r_min": r_min, "r_max": r_max, "inverted": alignment.inverted,
              "rotation": alignment.rotation.tolist(), "intensity": os.fspath(intensity_path),
              "truth": os.fspath(truth_path), **(extra or {})}
    if out_json is not None:
        write_text(Path(out_json), json.dumps(result, indent=2) + "\n")
    return result
