"""Gold-standard half sets: the frames split in two, each half reconstructed alone, the two compared.

Without a truth, the agreement of two independent reconstructions from disjoint halves of the data says
how far the data determine the result (the "gold standard" of cryo-EM, Henderson et al. 2012):

* the split is by frame parity, fixed and recorded: half 1 holds the run's frames 0, 2, 4, ..., half 2
  frames 1, 3, 5, ... (Dragonfly makes the same alternate selection of frames when asked for one half);
  each half is written as a photons file of its own (``emc/half_K/photons.h5``, :func:`write_halves`)
  and reconstructed by the same EMC (:func:`spibatch.emc.driver.run_emc`) into ``emc/half_K/``;
* the halves start independently: random start models of seeds ``seed + 1`` and ``seed + 2`` (the full
  run's is ``seed``).  A given ``start_model`` is shared by both halves, and then they are not independent;
* they come out in unrelated orientations, so half 2's model is turned onto half 1's
  (:func:`spibatch.align.align_intensity`, all of O(3): rotations and the inversion twin) over the shells
  the detector measures (:func:`spibatch.emc.compare.shell_range`), and their correlation in every shell
  of ``|q|`` (:func:`spibatch.validate.shell_correlation_curve`) is the half-set FSC;
* the resolution estimate is where it falls below 0.143 (half maps, as in cryo-EM: a full-data model
  against the truth would cross 0.5 there, Rosenthal & Henderson 2003); where it falls below 0.5 is
  reported too.  Shells outside the measured range are left out of the curve.

The full data set's reconstruction is made as always (``emc/output_NNN.h5`` is still the run's model);
the halves are extra work of about one more full run (each half has half the frames).  Where the halves
run side by side -- HTC tasks, MPI sub-communicators, two local processes -- is the caller's choice
(:mod:`spibatch.stages.emc`); nothing here knows a config model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np

from spibatch.emc.settings import EMCSettings
from spibatch.errors import InputError
from spibatch.layout import CHECKPOINT, HALF_DIRS, HALF_PHOTONS

log = logging.getLogger("spibatch")

MIN_HALF_FRAMES = 100   # fewer frames than this per half cannot fill a 3-D model: stopped before any work
THRESHOLDS = (0.143, 0.5)


def split(num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The run's frame indices of half 1 (even) and half 2 (odd), (ceil(D / 2),) and (floor(D / 2),) int64."""
    frames = np.arange(int(num_frames), dtype=np.int64)
    return frames[0::2], frames[1::2]


def half_settings(settings: EMCSettings, index: int) -> EMCSettings:
    """Half ``index`` (0 or 1)'s settings: the run's, with the random start of seed ``seed + 1 + index``."""
    return dataclasses.replace(settings, seed=settings.seed + 1 + index)


def check_halves(num_frames: int, frames_per_shard: int, ranks: int = 1, path=None) -> None:
    """InputError (one line) unless each half has at least :data:`MIN_HALF_FRAMES` frames and, across ``ranks``
    MPI ranks (split in two sub-communicators: ranks 0, 2, ... for half 1), a shard for every rank of its half."""
    first, second = (len(h) for h in split(num_frames))
    if second < MIN_HALF_FRAMES:
        raise InputError(f"{num_frames} frames make half sets of {first} and {second} frames, too few to reconstruct "
                         f"(at least {MIN_HALF_FRAMES} each)", path=path, field="emc.halves",
                         fix=f"give at least {2 * MIN_HALF_FRAMES} frames, or set emc.halves: false")
    per_half = -(-ranks // 2)
    shards = -(-second // frames_per_shard)
    if ranks > 1 and shards < per_half:
        raise InputError(f"half 2 has {second} frames: {shards} shard(s) of emc.frames_per_shard {frames_per_shard}"
                         f" for its {per_half} MPI rank(s)", path=path, field="emc.frames_per_shard",
                         fix=f"set emc.frames_per_shard to at most {second // per_half} or use fewer ranks")


def half_photons(out_dir: str | os.PathLike) -> list[Path]:
    """``[out_dir/half_1/photons.h5, out_dir/half_2/photons.h5]``."""
    return [Path(out_dir) / name / HALF_PHOTONS for name in HALF_DIRS]


def write_halves(photons: str | os.PathLike, out_dir: str | os.PathLike, chunk_frames: int = 4096) -> list[Path]:
    """Write the even and the odd frames of ``photons`` as the two halves' photons files (atomic; kept when they
    exist already with the expected frame counts, as after an interrupted run); their paths."""
    from spibatch.io.dragonfly import PhotonsWriter, iter_photons, photons_info

    paths = half_photons(out_dir)
    num_frames, num_pix = photons_info(photons)
    wanted = [len(h) for h in split(num_frames)]
    if all(p.exists() and photons_info(p) == (n, num_pix) for p, n in zip(paths, wanted)):
        return paths
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
    with PhotonsWriter(paths[0], num_pix) as even, PhotonsWriter(paths[1], num_pix) as odd:
        start = 0
        for block in iter_photons(photons, chunk_frames):
            rows = np.arange(block.num_frames)
            parity = (start + rows) % 2
            even.append(block.take(rows[parity == 0]))
            odd.append(block.take(rows[parity == 1]))
            start += block.num_frames
    return paths


def run_half(settings: EMCSettings, index: int, detector, out_dir, executor, on_iteration=()) -> dict[str, Path]:
    """EMC on half ``index``'s photons (written by :func:`write_halves`) into ``out_dir/half_K/`` through
    ``executor``, continuing from its checkpoint when there is one; :func:`run_emc`'s outputs."""
    from spibatch.emc.driver import run_emc

    folder = Path(out_dir) / HALF_DIRS[index]
    return run_emc(half_settings(settings, index), folder / HALF_PHOTONS, detector, folder, executor=executor,
                   resume=(folder / CHECKPOINT).exists(), on_iteration=on_iteration)


def run_half_here(settings: EMCSettings, index: int, detector, out_dir, threads: int, device=None) -> dict[str, Path]:
    """:func:`run_half` in this process with ``threads`` Numba threads (a local process pool's task)."""
    import numba

    from spibatch.emc.executors import InProcess
    from spibatch.kernels.device import CPU

    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    return run_half(settings, index, detector, out_dir, InProcess(device or CPU))


def shell_fsc(model: np.ndarray, reference: np.ndarray, rotation: np.ndarray, r_min: float, r_max: float,
              voxel_size: float | None = None):
    """The per-shell correlation of ``model`` turned by ``rotation`` with ``reference`` (both (M, M, M), centred,
    on one grid), shells outside ``[r_min, r_max]`` left out (NaN): a :class:`spibatch.validate.FSCResult`.
    ``voxel_size``: the real-space voxel ``1 / (M dq)`` in m, or None (resolutions then in voxels)."""
    from spibatch.align import rotate_intensity
    from spibatch.validate import FSCResult, shell_correlation_curve

    rotated = rotate_intensity(model, rotation)
    result = shell_correlation_curve(np.where(reference != 0, rotated, 0.0), reference, voxel_size)
    fsc = np.where((result.radius >= r_min) & (result.radius <= r_max), result.fsc, np.nan)
    return FSCResult(result.radius, result.frequency, fsc, result.num_voxels, result.size, result.voxel_size)


def resolutions(result) -> dict:
    """``resolution_0.143_m`` / ``resolution_0.5_m`` (m; None without a voxel size or without a crossing) and
    ``fsc_0.143_radius`` / ``fsc_0.5_radius`` (Fourier voxels; None: never below in the measured shells)."""
    out = {}
    for t in THRESHOLDS:
        radius = result.crossing_radius(t)
        out[f"fsc_{t}_radius"] = radius
        out[f"resolution_{t}_m"] = result.resolution(t) if (radius and result.voxel_size) else None
    return out


def volume_and_voxel(path) -> tuple[np.ndarray, float | None]:
    """An EMC output's intensity (M, M, M) float64 and its real-space voxel ``1 / (M dq)`` in m (None unknown)."""
    from spibatch.io.results import read_result, read_volume

    volume = np.asarray(read_volume(path), np.float64)
    volume = volume[0] if volume.ndim == 4 and volume.shape[0] == 1 else volume
    dq = read_result(path, attrs_only=True)[1].get("voxel_size_per_m")
    return volume, (1.0 / (volume.shape[-1] * float(dq)) if dq else None)


def compare_halves(first, second, detector, out_json=None, extra: dict | None = None) -> dict:
    """Half 2's intensity (``second``) turned onto half 1's (``first``) and their per-shell correlation: the
    half-set FSC.  Returns (and writes to ``out_json``) ``{"cc", "inverted", "rotation", "r_min", "r_max",
    "radius", "fsc", "frequency", "resolution_0.143_m", "resolution_0.5_m", "fsc_0.143_radius",
    "fsc_0.5_radius", "voxel_size_m", ...extra}``."""
    from spibatch.align import align_intensity
    from spibatch.detector import Detector
    from spibatch.emc.compare import shell_range
    from spibatch.io.atomic import write_text

    a, voxel = volume_and_voxel(first)
    b, _ = volume_and_voxel(second)
    r_min, r_max = shell_range(Detector.read(detector))
    r_max = min(r_max, (a.shape[-1] - 1) // 2 - 1)
    alignment = align_intensity(b, a, r_min, r_max)
    result = shell_fsc(b, a, alignment.rotation, r_min, r_max, voxel)
    summary = {"split": "parity: half 1 the even frames (0, 2, ...), half 2 the odd ones",
               "half_1": os.fspath(first), "half_2": os.fspath(second),
               "cc": float(alignment.cc), "inverted": alignment.inverted, "rotation": alignment.rotation.tolist(),
               "r_min": r_min, "r_max": r_max, "voxel_size_m": voxel, **resolutions(result),
               "radius": result.radius.tolist(), "frequency": result.frequency.tolist(),
               "fsc": [None if not np.isfinite(v) else float(v) for v in result.fsc], **(extra or {})}
    if out_json is not None:
        write_text(Path(out_json), json.dumps(summary, indent=1) + "\n")
    return summary


def describe(summary: dict) -> str:
    """One line: the half-set FSC's crossings (A when the voxel is known, else shells)."""
    def where(t: float) -> str:
        metres, radius = summary.get(f"resolution_{t}_m"), summary.get(f"fsc_{t}_radius")
        if radius is None:
            return f"never below {t} (beyond shell {summary.get('r_max'):g})"
        return f"{t} at {metres * 1e10:.1f} A" if metres else f"{t} at shell {radius:.1f}"

    return f"half-set FSC (half 2 aligned onto half 1, cc {summary['cc']:.3f}): {where(0.143)}, {where(0.5)}"
