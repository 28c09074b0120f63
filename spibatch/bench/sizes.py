"""The sizes the performance model counts work in: of a data set on disk, or of a facility-scale case on paper.

``frames`` D, ``rotations`` R = 10 (5 n^3 + n), ``pixels_used`` (mask 0: orientation and merge),
``pixels_merged`` (mask 0 and 1: merged), ``entries_used`` / ``entries_merged`` (non-zero photon counts of all
frames on those pixels: the sparse photons the likelihood and the merge read), ``model_edge`` M,
``shards`` S = ceil(D / frames_per_shard).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def rotations(num_div: int) -> int:
    """Rotations of the refined 600-cell: 10 (5 n^3 + n)."""
    return 10 * (5 * num_div ** 3 + num_div)


def of_files(photons: Path, detector: Path, frames: int, num_div: int, frames_per_shard: int,
             model_size: int | None = None) -> dict:
    """The sizes of EMC on the first ``frames`` frames of ``photons`` with ``detector`` (reads the frames)."""
    from spibatch.detector import MASK_EXCLUDED, MASK_USED, Detector
    from spibatch.io.dragonfly import read_photons

    det = Detector.read(detector)
    data = read_photons(photons, 0, frames)
    used = det.mask == MASK_USED
    merged = det.mask != MASK_EXCLUDED
    index = np.concatenate([data.ones_index, data.multi_index])
    return {"frames": int(frames), "rotations": rotations(num_div), "pixels_used": int(used.sum()),
            "pixels_merged": int(merged.sum()), "entries_used": int(used[index].sum()),
            "entries_merged": int(merged[index].sum()), "model_edge": int(model_size or det.model_size()),
            "shards": math.ceil(frames / frames_per_shard), "frames_per_shard": int(frames_per_shard)}


def on_paper(frames: int, num_div: int, detector_edge: int, photons_per_frame: float, model_edge: int,
             frames_per_shard: int, used_fraction: float = 0.76, merged_fraction: float = 0.98,
             distinct_fraction: float = 0.7) -> dict:
    """The sizes of a facility-scale case: a square detector of ``detector_edge`` pixels (the used and merged
    fractions of the shared sets: beam stop and corners), ``photons_per_frame`` photons of which
    ``distinct_fraction`` land on distinct pixels (entries: 0.69 in the medium shared set, 0.41 in the small one,
    whose frames hold more photons on fewer pixels)."""
    pixels = detector_edge ** 2
    entries = photons_per_frame * distinct_fraction
    return {"frames": int(frames), "rotations": rotations(num_div), "pixels_used": int(pixels * used_fraction),
            "pixels_merged": int(pixels * merged_fraction), "entries_used": int(frames * entries * used_fraction),
            "entries_merged": int(frames * entries * merged_fraction), "model_edge": int(model_edge),
            "shards": math.ceil(frames / frames_per_shard), "frames_per_shard": int(frames_per_shard)}
