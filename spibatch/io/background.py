"""A detector's known background: mean photons per pixel per frame, as Dragonfly's ``background_file``.

The file is HDF5 with a dataset ``background`` (Dragonfly's name; any shape holding the detector's
``num_pix`` values, raveled in the detector file's pixel order) or a ``.npy`` array of the same.
:func:`background_from_photons` makes one from empty (non-hit) frames: the mean photons of every
pixel over those frames.  EMC then models a frame's expected photons as
``scale_d x corr_t x model(R q_t) + background_scale_d x background_t`` (see :mod:`spibatch.emc.types`).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from spibatch.errors import InputError
from spibatch.io.atomic import write_hdf5
from spibatch.io.files import require_file

log = logging.getLogger("spibatch")

DATASET = "background"     # Dragonfly's dataset name in its background_file
FIX = ("give the detector's mean photons per pixel per frame (>= 0, finite, one value per detector pixel) as an "
       "HDF5 dataset 'background' or a .npy array, e.g. from `spibatch background EMPTY_FRAMES -o bg.h5`")


def read_background(path: str | os.PathLike, num_pix: int | None, field: str = "emc.background_file",
                    shape: tuple | None = None) -> np.ndarray:
    """The background (num_pix,) float64 photons per pixel per frame from ``path``; InputError (naming the file,
    ``field`` and the fix) when missing, unreadable, of another size (``num_pix`` None: any), an image of another
    shape than the detector's ``shape`` (a flat array is taken in pixel order), negative or not finite."""
    path = Path(path)
    require_file(path, field, FIX)
    if path.suffix == ".npy":
        try:   # the header first: a 64-byte file can declare 1e12 values
            with open(path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                               np.lib.format.read_array_header_2_0)
                _check_size(read_header(fh)[0], num_pix, path, field, shape)
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise InputError(f"not a readable .npy array ({' '.join(str(exc).split())[:120] or 'empty'})",
                             path=path, field=field, fix=FIX) from None
    else:
        from spibatch.io.hdf5 import open_hdf5, read_dataset

        with open_hdf5(path, FIX) as f:
            if DATASET not in f or not hasattr(f[DATASET], "shape"):
                raise InputError(f"no dataset '{DATASET}'", path=path, field=field, fix=FIX)
            _check_size(f[DATASET].shape, num_pix, path, field, shape)
            values = read_dataset(f[DATASET], (), path)
    values = np.asarray(values)
    if values.dtype.kind not in "iuf":
        raise InputError(f"holds {values.dtype} values, not numbers", path=path, field=field, fix=FIX)
    values = values.astype(np.float64).ravel()
    bad = ~np.isfinite(values)
    if bad.any():
        raise InputError(f"{int(bad.sum())} values are NaN or infinite (first at pixel {int(np.argmax(bad))})",
                         path=path, field=field, fix=FIX)
    if values.min() < 0:
        raise InputError(f"{int((values < 0).sum())} values are negative (first at pixel "
                         f"{int(np.argmax(values < 0))})", path=path, field=field, fix=FIX)
    if values.max() > MAX_VALUE:
        first = int(np.argmax(values > MAX_VALUE))
        raise InputError(f"{int((values > MAX_VALUE).sum())} values are above {MAX_VALUE:.0e} photons per pixel a "
                         f"frame (first at pixel {first}: {values[first]:.3g}); the fits of the frames' scales would "
                         "overflow", path=path, field=field, fix=FIX)
    tiny = (values > 0) & (values < MIN_VALUE)
    if tiny.any():   # a modelled background's far tails (5e-324 everywhere made every frame's scale NaN)
        log.warning("spibatch: warning: %s: %s: %d values below %.0e photons per pixel a frame taken as 0", path,
                    field, int(tiny.sum()), MIN_VALUE)
        values[tiny] = 0.0
    return values


MIN_VALUE, MAX_VALUE = 1e-30, 1e6   # a mean over N frames is 0 or at least 1/N; no pixel counts 1e6 photons a frame
MAX_VALUES = 10 ** 8                # as a detector's pixels


def _check_size(shape: tuple, num_pix: int | None, path: Path, field: str, image: tuple | None = None) -> None:
    """The declared shape's size against the detector's pixels (or the bound on any detector), and an image's
    shape against the detector's (``image``; a (16, 64) array on a 32 x 32 detector was raveled silently), before
    reading."""
    size = math.prod(int(n) for n in shape)
    if num_pix is not None and size != num_pix:
        raise InputError(f"{size} values, but the detector has {num_pix} pixels", path=path, field=field, fix=FIX)
    dims = tuple(int(n) for n in shape)
    if image is not None and len(dims) > 1 and \
            tuple(d for d in dims if d != 1) != tuple(int(n) for n in image if int(n) != 1):
        raise InputError(f"a {' x '.join(map(str, dims))} array, but the detector's pixels form "
                         f"{' x '.join(map(str, image))}", path=path, field=field,
                         fix="give the background in the detector's shape, or flat in its pixel order")
    if size > MAX_VALUES:
        raise InputError(f"declares {size:,} values, more than any detector's {MAX_VALUES:,} pixels", path=path,
                         field=field, fix=FIX)


def write_background(path: str | os.PathLike, background: np.ndarray) -> None:
    """Write ``background`` (num_pix,) photons per pixel per frame as Dragonfly reads it (HDF5 ``background``,
    float64), atomically; a ``.npy`` path gets the array as a ``.npy`` file (which emc.background_file reads too)."""
    values = np.asarray(background, np.float64).ravel()
    if Path(path).suffix == ".npy":
        from spibatch.io.atomic import atomic_path

        with atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
            np.save(fh, values, allow_pickle=False)
        return
    write_hdf5(path, lambda f: f.create_dataset(DATASET, data=values, track_times=False))


def check_fits(path, num_pix: int) -> None:
    """One line when the sums over ``num_pix`` pixels (three float64 arrays) would take more than half of this
    machine's memory: a photons file whose num_pix is corrupt (2^31 - 1 asked for 48 GiB and died of it)."""
    from spibatch.estimates import human_bytes, machine_memory

    need, (memory, source) = 3 * 8 * num_pix, machine_memory()
    if need > memory // 2:
        raise InputError(f"{num_pix:,} pixels would need {human_bytes(need)} of memory to average, and this machine "
                         f"has {human_bytes(memory)} ({source})", path=path, field="num_pix",
                         fix="check the photons file's num_pix (no detector has that many pixels)")


def background_from_photons(path: str | os.PathLike, frames: np.ndarray | None = None,
                            chunk_frames: int = 4096) -> np.ndarray:
    """Mean photons per pixel per frame (num_pix,) float64 over the frames of a photons file (Dragonfly
    HDF5 or .emc; ``frames``: a boolean mask or indices of the empty frames to use, default all)."""
    from spibatch.io.dragonfly import iter_photons, photons_info

    num_frames, num_pix = photons_info(path)
    check_fits(path, num_pix)
    use = np.ones(num_frames, bool)
    if frames is not None:
        frames = np.asarray(frames)
        use = frames.astype(bool) if frames.dtype == bool else np.isin(np.arange(num_frames), frames)
    total = np.zeros(num_pix)
    start = 0
    for chunk in iter_photons(path, chunk_frames):
        sel = use[start:start + chunk.num_frames]
        n1 = np.diff(chunk.ones_indptr)
        nm = np.diff(chunk.multi_indptr)
        total += np.bincount(chunk.ones_index, weights=np.repeat(sel, n1).astype(np.float64), minlength=num_pix)
        total += np.bincount(chunk.multi_index, weights=np.repeat(sel, nm) * chunk.multi_count.astype(np.float64),
                             minlength=num_pix)
        start += chunk.num_frames
    if not use.any():
        raise InputError("no frames selected to average", path=path, field="frames",
                         fix="give at least one empty frame")
    return total / use.sum()
