"""The intensity a phasing run reads: from a file, cropped, checked, padded to a fast FFT size, as a
:class:`~spibatch.phasing.measurement.Measurement` (the same on every worker that runs a start)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from spibatch.errors import InputError
from spibatch.phasing.auto import check_data
from spibatch.phasing.measurement import (Measurement, check_intensity, fast_size, initial_support, pad_centre,
                                          prepare)
from spibatch.phasing.settings import PhasingSettings

log = logging.getLogger("spibatch")


def load_intensity(path: Path, *, dataset: str | None = None, crop_to: int | None = None,
                   voxel_size_per_m: float | None = None) -> tuple[np.ndarray, float | None]:
    """(intensity (N, N, N) float64 centred, Fourier voxel dq in 1/m or None) from any volume file.

    dataset : the HDF5 dataset (None: the first of intensity, intens, density); crop_to : keep the
    central crop_to^3; voxel_size_per_m : dq when the file does not carry it (ours do, as an attribute).
    """
    from spibatch.io.results import is_hdf5, read_result, read_volume

    volume = np.asarray(read_volume(path, dataset), np.float64)
    dq = voxel_size_per_m
    if dq is None and is_hdf5(path):
        try:
            dq = read_result(path, attrs_only=True)[1].get("voxel_size_per_m")
        except InputError:
            dq = None
    if crop_to is not None:
        volume = crop_centre(volume, crop_to, source=path)
    return volume, (float(dq) if dq else None)


def crop_centre(volume: np.ndarray, edge: int, *, source=None) -> np.ndarray:
    """The central edge^3 of a centred cube (q = 0 at N // 2 stays at edge // 2)."""
    n = volume.shape[0]
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise InputError(f"cannot crop a non-cubic volume of shape {volume.shape}", path=source,
                         field="phasing.crop_to", fix="give an (N, N, N) volume")
    if edge > n:
        raise InputError(f"crop_to {edge} is larger than the volume ({n})", path=source, field="phasing.crop_to",
                         fix=f"use at most {n}")
    if (n - edge) % 2:
        raise InputError(f"crop_to {edge} and the volume's edge {n} differ in parity: the centre voxel would move "
                         "by half a voxel", path=source, field="phasing.crop_to",
                         fix=f"use {edge - 1} or {edge + 1}" if edge > 8 else f"use {edge + 1}")
    return pad_centre(volume, edge)


def prepare_measurement(intensity: np.ndarray, dq: float | None, *, fast_fft_size: bool = True,
                        realness: bool = True, source: str | None = None) -> Measurement:
    """The Measurement every start phases: the intensity (N, N, N) centred, checked (one InputError naming
    ``source``), padded with unmeasured voxels to a fast FFT edge when ``fast_fft_size``, as amplitudes
    (Friedel-averaged with ``realness``); dq the Fourier voxel in 1/m, or None."""
    intensity = check_intensity(intensity, source=source)
    edge = fast_size(intensity.shape[0])
    if fast_fft_size and edge != intensity.shape[0]:
        log.info("padding the %d^3 intensity to %d^3 with unmeasured voxels (a fast FFT size)",
                 intensity.shape[0], edge)
        intensity = pad_centre(intensity, edge)
    return prepare(intensity, real=realness, voxel_size_per_m=dq, source=source)


def load_measurement(intensity_path: Path, settings: PhasingSettings, *,
                     loaded: tuple[np.ndarray, float | None] | None = None) -> Measurement:
    """:func:`load_intensity` (unless ``loaded`` holds what it returned for this file and settings), then
    :func:`prepare_measurement`, both as ``settings`` say."""
    intensity, dq = loaded or load_intensity(intensity_path, dataset=settings.dataset, crop_to=settings.crop_to,
                                             voxel_size_per_m=settings.voxel_size_per_m)
    return prepare_measurement(intensity, dq, fast_fft_size=settings.fast_fft_size, realness=settings.realness,
                               source=str(intensity_path))


def check_inputs(intensity_path: Path, settings: PhasingSettings) -> tuple[np.ndarray, float | None]:
    """Every check a phasing run makes of its intensity, before anything is created: read, cropped, checked,
    padded, measured at enough voxels for the first support (and, for recipe ``auto``, for its free set): one
    InputError naming the file otherwise.
    Returns what :func:`load_intensity` read (give it to ``run_phasing(..., loaded=)``)."""
    loaded = load_intensity(intensity_path, dataset=settings.dataset, crop_to=settings.crop_to,
                            voxel_size_per_m=settings.voxel_size_per_m)
    measurement = load_measurement(intensity_path, settings, loaded=loaded)
    support = initial_support(measurement, settings.initial_support_threshold, source=str(intensity_path))
    check_data(settings.recipe, measurement, support, source=str(intensity_path))     # auto: its free set
    return loaded
