"""What an EMC run checks before any work starts: one line (InputError naming the key) on bad input.

:func:`check_inputs` reads only headers (the detector, the photons file's frame count, the start model,
the background): a command calls it before creating a run folder.  :func:`check_shards` checks shards
that join a running loop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spibatch.detector import MASK_EXCLUDED, Detector
from spibatch.emc.settings import EMCSettings
from spibatch.emc.types import ShardSpec
from spibatch.errors import InputError

BYTES_PER_VOXEL = 80     # per model volume: model, previous model, float64 sums, float32 accumulators, temporaries


@dataclass
class Inputs:
    """What :func:`check_inputs` found: the detector, the frame count, the model grid, the start model and the
    background (num_pix,) photons per pixel per frame (None without one)."""

    detector: Detector
    num_frames: int
    size: int
    start_model: np.ndarray | None
    background: np.ndarray | None = None


def check_inputs(settings: EMCSettings, photons, detector, ranks: int = 1, *, values: bool = True,
                 frames: int | None = None) -> Inputs:
    """Read the detector, the photons file's header and the start model; InputError on anything wrong.

    Light (no frames are read): a command calls it before creating a run folder.
    ``ranks``: MPI ranks to share the shards (each needs at least one); ``values``: :func:`check_values` too (the
    stage checks them after its memory and time estimate); ``frames``: the frames EMC will read when they are not
    ``photons``' (the kept frames of several files, :mod:`spibatch.io.frame_selection`; ``photons`` is the first).
    """
    from spibatch.io.dragonfly import check_match, photons_info

    if values:
        check_values(settings)

    for name, path in (("photons", photons), ("detector", detector)):
        if path is None:
            raise InputError("no file given", field=f"emc.{name}",
                             fix=f"set emc.{name} in the pipeline file (relative to it)")
    geometry = Detector.read(detector)
    num_frames, num_pix = photons_info(photons)
    num_frames = num_frames if frames is None else frames
    check_match(geometry, num_pix, detector, photons)
    check_corr(geometry, settings.detector_corr, detector)
    if num_frames == 0:
        raise InputError("holds 0 frames", path=photons, field="place_ones",
                         fix="give a photons file with at least one frame")
    shards = -(-num_frames // settings.frames_per_shard)
    if shards < ranks:
        raise InputError(f"{num_frames} frames in shards of {settings.frames_per_shard} make {shards} shard(s) for "
                         f"{ranks} MPI ranks", field="emc.frames_per_shard",
                         fix=f"set emc.frames_per_shard to at most {num_frames // ranks}, or use fewer ranks")
    size = check_model_size(settings.model_size, geometry.model_size())
    if settings.num_volumes > 1:     # one volume: the stage's estimate (spibatch.estimates) judges the grid
        check_modes(settings, size)
    shape = (settings.num_volumes,) * (settings.num_volumes > 1) + (size,) * 3
    start = None if settings.start_model is None else read_start_model(settings.start_model, shape)
    background = None
    if settings.background_file is not None:
        from spibatch.io.background import read_background

        background = read_background(settings.background_file, geometry.num_pix, shape=geometry.shape)
    return Inputs(geometry, num_frames, size, start, background)


MAX_BACKGROUND_SHARE = 2.0   # the background may predict at most this many times the frames' mean photons


def check_background_level(background_sum: float, mean_counts: float, path=None,
                           field: str = "emc.background_file") -> None:
    """The background's photons a frame (``background_sum``, on the pixels in use) against the frames' mean
    (``mean_counts``): a background that predicts more than :data:`MAX_BACKGROUND_SHARE` x what the frames hold in
    all is in other units, or a sum over frames where a mean is meant -- EMC would find no signal (information
    rate ~0) and say nothing."""
    if mean_counts > 0 and background_sum > MAX_BACKGROUND_SHARE * mean_counts:
        raise InputError(f"the background predicts {background_sum:,.4g} photons a frame, but the frames hold "
                         f"{mean_counts:,.4g} on average, signal included", path=path, field=field,
                         fix="give the mean photons per pixel a frame of empty frames (`spibatch background` "
                         "writes it), not a sum over frames or another unit")


def check_corr(detector: Detector, use: bool, path=None) -> None:
    """With ``emc.detector_corr`` the detector's ``corr`` scales the model's view of each pixel: a pixel in use
    whose corr is 0 (or below 1e-6 of the median) predicts no photon where frames have some -- EMC diverged and
    blamed the photons --, and a corr of 0 everywhere was taken for no correction at all, silently."""
    if not use:
        return
    corr = np.asarray(detector.corr, np.float64)[detector.mask != MASK_EXCLUDED]
    off = "; or set emc.detector_corr: false to leave the correction out"
    if not corr.any():
        raise InputError("corr is 0 for every pixel in use", path=path, field="corr",
                         fix="corr is each pixel's solid angle x polarization: regenerate the file" + off)
    median = float(np.median(corr[corr > 0]))
    low = corr < 1e-6 * median
    if low.any():
        raise InputError(f"{int(low.sum())} pixels in use have a correction of {float(corr[low].min()):g}, below 1e-6 "
                         f"of the median {median:g}: they would predict no photon", path=path, field="corr",
                         fix="mask them (2) or regenerate the file" + off)


def check_model_size(model_size: int | None, smallest: int, path=None) -> int:
    """The model grid's edge: ``model_size`` or the detector's ``smallest``; InputError when smaller than that,
    or even (EMC centres the grid at (M - 1) / 2, phasing and the FFT at M // 2: an even grid phased off centre)."""
    size = model_size or smallest
    if size < smallest:
        raise InputError(f"{size} voxels is smaller than the detector needs ({smallest} = 2 ceil(max |q|) + 1)",
                         path=path, field="emc.model_size", fix=f"set it to at least {smallest}, or leave it out")
    if size % 2 == 0:
        raise InputError(f"{size} is even: the model grid is odd, its centre voxel at q = 0", path=path,
                         field="emc.model_size", fix=f"use {size + 1}")
    return size


MAX_BETA = 1e100   # far sharper than any EMC needs; near 1e300 beta x log-likelihood overflows (an all-zero model)


def check_values(settings: EMCSettings) -> None:
    """Settings that no data can make sound: the beta the schedule reaches (an overflow made every probability,
    hence the model, zero), a refinement searching around more rotations than the coarse grid has."""
    import math

    from spibatch.emc.rotations import num_rotations

    first = 1.0 if settings.beta == "auto" else float(settings.beta)   # auto is at most 1 per frame
    steps, last = 0, settings.iterations
    if settings.beta_schedule is not None:
        last = settings.iterations if settings.anneal_until is None else min(settings.iterations,
                                                                              settings.anneal_until)
        steps = (last - 1) // settings.beta_schedule.period
    start = math.log10(first) + math.log10(settings.beta_factor)
    ramp = steps * math.log10(settings.beta_schedule.factor) if steps else 0.0
    limit = math.log10(MAX_BETA)
    for log_beta in (start + max(ramp, 0.0), start + min(ramp, 0.0)):
        if -limit <= log_beta <= limit:
            continue
        high = log_beta > limit
        if not -limit <= start <= limit:    # the first iteration's beta already
            field = "emc.beta" if abs(math.log10(first)) >= abs(math.log10(settings.beta_factor)) else "emc.beta_factor"
        else:
            field = "emc.beta_schedule.factor"
        what = "overflow" if high else "are all equal (beta x log-likelihood underflows)"
        raise InputError(f"beta reaches 1e{log_beta:.0f} by iteration {last} (beta x beta_factor x "
                         f"schedule factor^{steps}): outside 1e-100..1e100 the probabilities {what}", field=field,
                         fix="anneal less (beta_schedule.factor 2 every 10 iterations is Dragonfly's), or run fewer "
                         "iterations")
    refine = settings.refine
    if refine is not None and refine.top > num_rotations(settings.num_div):
        raise InputError(f"{refine.top:,} most probable rotations, but the coarse grid (num_div {settings.num_div}) "
                         f"has {num_rotations(settings.num_div):,}", field="emc.refine.top",
                         fix="search around a few (the default is 4)")


def available_memory() -> int:
    """Bytes this machine can still give (MemAvailable, or the physical memory where /proc is missing)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_modes(settings: EMCSettings, size: int, memory: int | None = None) -> None:
    """InputError when the modes' volumes (``BYTES_PER_VOXEL`` x M^3 each; twice with ``halves``, whose two half
    sets run side by side, each with every volume) do not fit in ``memory`` (default: what the machine has
    available)."""
    memory = available_memory() if memory is None else memory
    copies = 2 if getattr(settings, "halves", False) else 1
    need = copies * settings.num_volumes * size ** 3 * BYTES_PER_VOXEL
    if need > 0.8 * memory:
        sides = " x 2 half sets run side by side (emc.halves)" if copies == 2 else ""
        raise InputError(f"num_modes {settings.num_modes} + nonrot_modes {settings.nonrot_modes} volumes of {size}^3"
                         f"{sides} need ~{need / 2 ** 30:.1f} GiB ({BYTES_PER_VOXEL} B a voxel each), but "
                         f"{memory / 2 ** 30:.1f} GiB are available",
                         field="emc.nonrot_modes" if settings.nonrot_modes > settings.num_modes else "emc.num_modes",
                         fix=f"use at most {max(1, int(0.8 * memory // (copies * size ** 3 * BYTES_PER_VOXEL)))} "
                         f"volumes, a smaller emc.model_size{', emc.halves: false' if copies == 2 else ''}, or a "
                         "machine with more memory")


def read_start_model(path: Path, shape: int | tuple) -> np.ndarray:
    """The start model of ``shape`` ((M, M, M), or (V, M, M, M) with modes: an output's ``intensities``)
    float64 from ``path``; InputError unless finite and >= 0."""
    from spibatch.io.results import check_finite, read_volume

    shape = (shape,) * 3 if isinstance(shape, int) else tuple(shape)
    fix = (f"give a finite, non-negative {'(V, M, M, M)' if len(shape) == 4 else '(M, M, M)'} intensity in photons "
           "per voxel (e.g. an output_NNN.h5 of a run with the same modes)")
    start = np.asarray(_read_volumes(path, shape, fix) if len(shape) == 4 else read_volume(path), np.float64)
    if start.shape != shape:
        raise InputError(f"shape {start.shape}, but the model is {shape}", path=path,
                         field="emc.start_model", fix=fix)
    check_finite(start, path=path, field="emc.start_model", fix=fix)
    if start.min() < 0:
        raise InputError(f"{int((start < 0).sum())} voxels are negative", path=path, field="emc.start_model", fix=fix)
    if not start.any():
        raise InputError("every voxel is 0: EMC cannot orient frames against an empty model", path=path,
                         field="emc.start_model", fix=fix + "; or leave it out for a seeded random model")
    if start.max() > MAX_START_VALUE:
        raise InputError(f"values up to {start.max():.3g} photons per voxel: above {MAX_START_VALUE:.0e} the "
                         "likelihood overflows (the model would come out all zero)", path=path,
                         field="emc.start_model", fix=fix)
    return start


MAX_START_VALUE = 1e15    # photons per voxel a frame; real models hold up to ~1e6


def _read_volumes(path: Path, shape: tuple, fix_shape: str) -> np.ndarray:
    """The (V, M, M, M) volumes of a modes run: our output's ``intensities`` or Dragonfly's ``intens``; their
    declared shape must be ``shape`` (checked before reading)."""
    from spibatch.io.hdf5 import open_hdf5, read_dataset

    fix = "give an output_NNN.h5 of a run with the same modes (its intensities), or Dragonfly's (its intens)"
    with open_hdf5(path, fix) as f:
        for name in ("intensities", "intens"):
            if name in f and f[name].ndim == 4:
                if f[name].shape != shape:
                    raise InputError(f"shape {f[name].shape}, but the model is {shape}", path=path,
                                     field="emc.start_model", fix=fix_shape)
                return read_dataset(f[name], (), path)
    raise InputError("no (V, M, M, M) dataset 'intensities' or 'intens'", path=path, field="emc.start_model",
                     fix=fix)


def check_shards(specs: list[ShardSpec], num_frames: int, detector: Detector, detector_path) -> list[ShardSpec]:
    """New shards in frame order, checked: frames ``num_frames ..`` without gaps, inside their photons files,
    which match the detector; InputError otherwise."""
    from spibatch.io.dragonfly import check_match, photons_info

    specs = sorted(specs, key=lambda s: s.first_frame)
    info = {path: photons_info(path) for path in {s.photons for s in specs}}
    expected = num_frames
    for spec in specs:
        total, num_pix = info[spec.photons]
        check_match(detector, num_pix, detector_path, spec.photons)
        if not 0 <= spec.start < spec.stop <= total:
            raise InputError(f"a new shard asks for frames {spec.start}:{spec.stop} of {total}", path=spec.photons,
                             field="place_ones", fix="give shards inside the photons file")
        if spec.first_frame != expected:
            raise InputError(f"a new shard starts at frame {spec.first_frame} of the run, not {expected}",
                             path=spec.photons, fix="number new frames on from the run's last frame, without gaps")
        expected += spec.num_frames
    return specs


