"""CXI pattern stacks -> Dragonfly sparse photons file, streamed in blocks of frames.

A CXI file holds its frames at ``/entry_1/data_1/data`` as ``(frame, y, x)``
or, for a modular detector, ``(frame, module, ss, fs)``; pixels are numbered
in C order over the frame's shape.  Values are detector units (ADU); dividing
by ``adu_per_photon`` and rounding to the nearest integer (``numpy.rint``:
halves go to the even neighbour) gives photon counts.  A mask follows the CXI
convention: nonzero = bad pixel, which then counts no photons.
"""

from __future__ import annotations

import os
import re

import h5py
import numpy as np

from spibatch.errors import InputError
from spibatch.io.dragonfly import PhotonsWriter
from spibatch.io.hdf5 import check_written, open_hdf5, read_dataset, require_dataset
from spibatch.kernels.photons_cpu import INT32_MAX, sparse_counts
from spibatch.photons import Photons

DATA_PATH = "/entry_1/data_1/data"
MASK_PATHS = ("/entry_1/data_1/mask", "/entry_1/instrument_1/detector_1/mask")
# CXI pixel-mask bits that mean a pixel is bad (invalid, saturated, hot, dead, shadowed, in a peak mask, to be
# ignored, bad, missing: what Cheetah and Hummingbird exclude); the others record what was done (2048 artifact
# corrected, 16384 background corrected, ...) and leave the pixel good
BAD_BITS = 1 | 2 | 4 | 8 | 16 | 32 | 64 | 128 | 512


def cxi_to_photons(cxi_path: str | os.PathLike, out_path: str | os.PathLike, *, chunk_frames: int = 256,
                   adu_per_photon: float = 1.0, clip_negative: bool = False, data_path: str = DATA_PATH,
                   mask_path: str | None = None) -> tuple[int, int]:
    """Convert the CXI stack at ``data_path`` to a Dragonfly photons file at ``out_path``.

    Reads ``chunk_frames`` frames at a time (never the whole stack) and writes
    them with :class:`PhotonsWriter` (atomic: on any error ``out_path`` is left
    as it was).  The mask is taken from ``mask_path``, else from the first of
    ``/entry_1/data_1/mask`` and ``/entry_1/instrument_1/detector_1/mask``
    that exists; it has the shape of one frame and applies to every frame.

    Parameters
    ----------
    adu_per_photon : detector units per photon (> 0)
    clip_negative : set counts that round below zero to 0 instead of raising InputError

    Returns
    -------
    (num_frames, num_pix) of the file written.
    """
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    _check_adu(adu_per_photon)
    with open_hdf5(cxi_path, _stack_fix(data_path)) as f:
        data = _stack(f, cxi_path, data_path)
        check_written(data, cxi_path, UNWRITTEN_FIX)   # before reading: frames never written read as fill values
        num_frames, frame_shape = data.shape[0], data.shape[1:]
        num_pix = int(np.prod(frame_shape))
        bad = _read_mask(f, cxi_path, mask_path, frame_shape, data_path)
        lit = 0   # pixels holding a photon, over all frames
        with PhotonsWriter(out_path, num_pix) as writer:
            for start in range(0, num_frames, chunk_frames):
                block = read_dataset(data, slice(start, min(start + chunk_frames, num_frames)), cxi_path)
                block = block.reshape(len(block), num_pix)
                arrays, _ = sparse_counts(block, bad, adu_per_photon, clip_negative)
                if arrays is None:   # a bad frame: the dense reference finds it and says what is wrong
                    _to_counts(block, start, bad, adu_per_photon, clip_negative, cxi_path, data_path)
                    raise AssertionError("the fused kernel flagged a frame that the dense reference accepts")
                photons = Photons(num_pix, *arrays)
                lit += len(photons.ones_index) + len(photons.multi_index)
                writer.append(photons)
    if not lit:   # check_frames says so before a run folder; here for callers that convert without it
        raise no_photons(num_frames, adu_per_photon, cxi_path)
    return num_frames, num_pix


UNWRITTEN_FIX = ("a writer stopped early or the size was declared ahead: resize the dataset to the frames "
                 "written (h5py: dataset.resize) or write the rest")


def _stack_fix(data_path: str) -> str:
    return f"give a CXI file with frames (frame, y, x) or (frame, module, ss, fs) at {data_path} " \
           "(or name their dataset with data_path)"


def _stack(f: h5py.File, path: str | os.PathLike, data_path: str) -> h5py.Dataset:
    """The frame stack at ``data_path``; InputError unless it is a 3-D or 4-D numeric dataset."""
    data = require_dataset(f, data_path, path, _stack_fix(data_path))
    if data.ndim not in (3, 4) or data.dtype.kind not in "biuf":
        raise InputError(f"expected a 3-D or 4-D numeric stack, found shape {data.shape} dtype {data.dtype}",
                         path=path, field=data_path, fix=_stack_fix(data_path))
    if 0 in data.shape[1:]:
        raise InputError(f"frames of shape {data.shape[1:]} hold no pixels", path=path, field=data_path,
                         fix=_stack_fix(data_path))
    return data


def detector_group(data_path: str) -> str:
    """The CXI detector group whose geometry and mask go with the frames at ``data_path``: its own
    (``/entry_1/instrument_1/detector_2/data`` -> ``.../detector_2``), else detector_1 (``/entry_1/data_1/data``
    links to it)."""
    match = re.fullmatch(r"(/entry_\d+/instrument_\d+/detector_\d+)/data", data_path or "")
    return match.group(1) if match else "/entry_1/instrument_1/detector_1"


def _read_mask(f: h5py.File, path: str | os.PathLike, mask_path: str | None,
               frame_shape: tuple[int, ...], data_path: str = DATA_PATH) -> np.ndarray | None:
    """(num_pix,) bool, True for bad pixels; None when the file has no mask.  Without ``mask_path`` the mask
    beside the data, then its detector group's (detector_1's only for detector_1's frames)."""
    group = detector_group(data_path)
    candidates = MASK_PATHS if group.endswith("/detector_1") and data_path in (DATA_PATH, group + "/data") else \
        tuple(dict.fromkeys([data_path.rsplit("/", 1)[0] + "/mask", group + "/mask"]))
    for name in (mask_path,) if mask_path else candidates:
        if name not in f and not mask_path:
            continue
        fix = f"give one mask of shape {frame_shape} (nonzero = bad pixel), or name it (ingest.mask_path, --mask-path)"
        ds = require_dataset(f, name, path, fix)
        if ds.shape not in (frame_shape, (1,) + frame_shape) or ds.dtype.kind not in "biuf":
            raise InputError(f"expected a mask of shape {frame_shape}, found shape {ds.shape} dtype {ds.dtype}",
                             path=path, field=name, fix=fix)
        values = read_dataset(ds, (), path)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise InputError(f"{int((~np.isfinite(values)).sum())} values are NaN or inf", path=path, field=name,
                             fix=fix)
        if values.dtype.kind in "iu" and (values.astype(np.int64) & ~BAD_BITS).any():
            bad = ((values.astype(np.int64) & BAD_BITS) != 0).reshape(-1)   # a CXI bit field: some bits say only
        else:                                                               # what was done (2048 corrected, ...)
            bad = (values != 0).reshape(-1)
        if bad.all():
            raise InputError(f"marks every one of the {bad.size} pixels bad: nothing to ingest", path=path,
                             field=name, fix=fix)
        if bad.mean() > 0.5:       # CrystFEL's mask_good = 1 and Condor mark the good pixels
            raise InputError(f"marks {bad.mean():.0%} of the pixels bad: is 1 the good pixels' mark here (CrystFEL's "
                             "mask_good)?", path=path, field=name, fix="in a CXI mask nonzero means bad: invert it "
                             "(1 - mask), or name a mask of that convention (ingest.mask_path, --mask-path)")
        return bad
    return None


def _to_counts(block: np.ndarray, first: int, bad: np.ndarray | None, adu_per_photon: float,
               clip_negative: bool, path: str | os.PathLike, field: str) -> np.ndarray:
    """Dense (frames, num_pix) ADU -> int32 photon counts; ``first`` is the block's first frame number.

    The dense reference of :func:`spibatch.kernels.photons_cpu.sparse_counts`: it names the first bad
    frame and what is wrong with it (InputError), and the tests compare the kernel with it."""
    counts = np.rint(block.astype(np.float64) / adu_per_photon)
    if bad is not None:
        counts[:, bad] = 0
    nonfinite = ~np.isfinite(counts)
    if nonfinite.any():
        row = int(np.argmax(nonfinite.any(axis=1)))
        raise InputError(f"frame {first + row}: {int(nonfinite[row].sum())} pixels are NaN or inf",
                         path=path, field=field, fix="mask those pixels (a CXI mask, or ingest.mask_path / --mask-path)")
    negative = counts < 0
    if negative.any():
        if not clip_negative:
            row = int(np.argmax(negative.any(axis=1)))
            raise InputError(f"frame {first + row}: {int(negative[row].sum())} pixels round to negative photon "
                             f"counts (lowest {counts[row].min():g} at adu_per_photon={adu_per_photon:g})",
                             path=path, field=field,
                             fix="mask those pixels (a CXI mask, or ingest.mask_path / --mask-path) or count them as "
                                 "0 (ingest.clip_negative: true in a pipeline, --clip-negative)")
        counts[negative] = 0
    if counts.size and counts.max() > INT32_MAX:
        row, pixel = np.unravel_index(int(np.argmax(counts > INT32_MAX)), counts.shape)
        raise InputError(f"frame {first + int(row)}, pixel {int(pixel)}: {counts[row, pixel]:.6g} photons is above "
                         f"{INT32_MAX} (a 32-bit count)", path=path, field=field,
                         fix="check adu_per_photon (ingest.adu_per_photon, --adu-per-photon)")
    return counts.astype(np.int32)


GEOMETRY_PATHS = {"distance": "/entry_1/instrument_1/detector_1/distance",          # m
                  "x_pixel_size": "/entry_1/instrument_1/detector_1/x_pixel_size",  # m
                  "y_pixel_size": "/entry_1/instrument_1/detector_1/y_pixel_size",  # m
                  "energy": "/entry_1/instrument_1/source_1/energy"}                # J per photon
JOULE_PER_EV = 1.602176634e-19
PLANCK_EV_M = 1.239841984e-6   # h c in eV m


def read_flat_geometry(cxi_path: str | os.PathLike, *, data_path: str = DATA_PATH,
                       mask_path: str | None = None) -> dict | None:
    """A flat square detector's geometry from a CXI file, as plain values, or None when it holds none.

    Needs 3-D frames (frame, y, x) with y = x pixels and the distance, pixel sizes (m, equal) and
    photon energy (J) at :data:`GEOMETRY_PATHS`.  Returns ``{"pixels": n, "pixel_size_m", "distance_m",
    "wavelength_m", "bad": (n*n,) bool or None}`` (``bad``: the CXI mask, pixels in the frame's C order);
    None for modular (4-D) data or when a geometry dataset is missing.  ``Detector.from_cxi`` builds the
    detector from it.
    """
    fix = "give the CXI geometry (distance, x/y_pixel_size in m, source energy in J) or a Dragonfly detector file"
    group = detector_group(data_path)
    paths = {key: name.replace("/entry_1/instrument_1/detector_1", group) for key, name in GEOMETRY_PATHS.items()}
    with open_hdf5(cxi_path, fix) as f:
        data = _stack(f, cxi_path, data_path)
        if data.ndim != 3 or any(name not in f for name in paths.values()):
            return None
        values = {key: _one_value(f, name, cxi_path, fix) for key, name in paths.items()}
        bad = _read_mask(f, cxi_path, mask_path, data.shape[1:], data_path)
        layout = {key: read_dataset(f[f"{group}/{key}"], (), cxi_path) for key in ("corner_position", "basis_vectors")
                  if f"{group}/{key}" in f}
    n_y, n_x = data.shape[1:]
    if n_y != n_x or not np.isclose(values["x_pixel_size"], values["y_pixel_size"], rtol=1e-6):
        raise InputError(f"frames {n_y} x {n_x} with pixels {values['y_pixel_size']:g} x {values['x_pixel_size']:g} m "
                         "are not a square detector of square pixels", path=cxi_path, field=data_path,
                         fix="give a Dragonfly detector file for this geometry")
    _check_centred_layout(layout, n_x, values["x_pixel_size"], values["distance"], cxi_path, group)
    return {"pixels": int(n_x), "pixel_size_m": values["x_pixel_size"], "distance_m": values["distance"],
            "wavelength_m": PLANCK_EV_M / (values["energy"] / JOULE_PER_EV), "bad": bad}


class UnsupportedLayout(InputError):
    """A CXI detector geometry spibatch does not build (an off-centre beam, a mirrored or turned detector)."""


def _check_centred_layout(layout: dict, n: int, pixel_m: float, distance_m: float, path, group: str) -> None:
    """InputError when the file's ``corner_position`` / ``basis_vectors`` place the pixels elsewhere than the
    detector spibatch builds: the beam on the frame's centre, the CXI default axes (slow along -y, fast along -x)
    or those turned by 180 degrees about the beam (EMC cannot tell them apart).  An off-centre beam, a mirrored
    or a turned detector were ignored: wrong q, a mirror-image model, polarisation on the wrong axis."""
    if not layout:
        return
    default = np.array([[0.0, -pixel_m, 0.0], [-pixel_m, 0.0, 0.0]])
    corner = layout.get("corner_position")
    centre = np.array([0.0, 0.0, distance_m])
    steps = np.array([[0.5, 0.5], [n - 0.5, n - 0.5], [0.5, n - 0.5]])      # three corner pixels' centres

    def corners(start, axes):
        return start + steps @ axes

    for name, shapes in (("basis_vectors", ((2, 3),)), ("corner_position", ((3,), (1, 3)))):
        value = layout.get(name)
        if value is None:
            continue
        try:
            finite = bool(np.isfinite(np.asarray(value, np.float64)).all())
        except (TypeError, ValueError):
            finite = False
        if np.shape(value) not in shapes or not finite:
            what = "values that are not finite numbers" if np.shape(value) in shapes else \
                f"shape {np.shape(value)}, not {' or '.join(map(str, shapes))}"
            raise UnsupportedLayout(f"{name} holds {what}", path=path, field=f"{group}/{name}",
                                    fix="correct the dataset, or give the detector as a Dragonfly file (emc.detector)")
    basis = np.asarray(layout.get("basis_vectors", default), np.float64)
    if basis.shape == (2, 3) and (corner is None or np.shape(corner) in ((3,), (1, 3))):
        for axes in (default, -default):                # the default, or turned by 180 degrees about the beam
            ours = centre - n / 2 * axes.sum(axis=0)
            given = ours if corner is None else np.asarray(corner, np.float64).reshape(3)
            if np.abs(corners(given, basis) - corners(ours, axes)).max() <= 1e-3 * pixel_m:
                return
    raise UnsupportedLayout("its detector geometry (corner_position, basis_vectors) puts the pixels elsewhere than "
                            "the centred flat detector spibatch builds (the beam on the frame's centre, CXI's default "
                            "axes): an off-centre beam, a mirrored or a turned detector", path=path,
                            field=f"{group}/{'basis_vectors' if 'basis_vectors' in layout else 'corner_position'}",
                            fix="give the detector as a Dragonfly file (emc.detector) built from this geometry")


def bad_pixels(cxi_path: str | os.PathLike, *, data_path: str = DATA_PATH, mask_path: str | None = None):
    """(num_pix,) bool of the pixels the file's mask marks bad (frame C order), or None without a mask."""
    with open_hdf5(cxi_path, _stack_fix(data_path)) as f:
        data = _stack(f, cxi_path, data_path)
        return _read_mask(f, cxi_path, mask_path, data.shape[1:], data_path)


def stack_shape(cxi_path: str | os.PathLike, *, data_path: str = DATA_PATH,
                mask_path: str | None = None) -> tuple[int, ...]:
    """The shape of the frame stack (frames first), its mask checked; headers only, never the frames."""
    return stack_info(cxi_path, data_path=data_path, mask_path=mask_path)[0]


def stack_info(cxi_path: str | os.PathLike, *, data_path: str = DATA_PATH,
               mask_path: str | None = None) -> tuple[tuple[int, ...], int]:
    """(shape of the frame stack (frames first), bytes per value), its mask checked; headers only."""
    with open_hdf5(cxi_path, _stack_fix(data_path)) as f:
        data = _stack(f, cxi_path, data_path)
        _read_mask(f, cxi_path, mask_path, data.shape[1:], data_path)
        return tuple(int(x) for x in data.shape), int(data.dtype.itemsize)


def check_frames(cxi_path: str | os.PathLike, *, data_path: str = DATA_PATH, mask_path: str | None = None,
                 adu_per_photon: float = 1.0, clip_negative: bool = False, chunk_frames: int = 256) -> tuple[int, ...]:
    """Read every frame once, ``chunk_frames`` at a time, and check it as :func:`cxi_to_photons` would convert
    it (no NaN or inf, no negative count without ``clip_negative``, no count above int32, the file readable to
    its end, at least one pixel holding a photon); the stack's shape, or InputError naming the file, the dataset
    and the first bad frame (or the gain, when no pixel rounds to a photon).

    Vectorised: the smallest and largest unmasked value of each block (a bad block is then converted by the
    dense reference, which names the frame), about half the time of the conversion itself.
    """
    _check_adu(adu_per_photon, cxi_path)
    with open_hdf5(cxi_path, _stack_fix(data_path)) as f:
        data = _stack(f, cxi_path, data_path)
        check_written(data, cxi_path, UNWRITTEN_FIX)   # before reading: frames never written read as fill values
        num_frames, frame_shape = data.shape[0], data.shape[1:]
        num_pix = int(np.prod(frame_shape))
        bad = _read_mask(f, cxi_path, mask_path, frame_shape, data_path)
        good = None if bad is None else ~bad
        highest = 0.0
        for start in range(0, num_frames, chunk_frames):
            block = read_dataset(data, slice(start, min(start + chunk_frames, num_frames)), cxi_path)
            block = block.reshape(len(block), num_pix)
            high = _block_highest(block, good, adu_per_photon, clip_negative)
            if high is None:
                _to_counts(block, start, bad, adu_per_photon, clip_negative, cxi_path, data_path)
            highest = max(highest, high or 0.0)
        if highest < 1:
            raise no_photons(num_frames, adu_per_photon, cxi_path)
        if data.dtype.kind in "iu" and highest * adu_per_photon >= np.iinfo(data.dtype).max - adu_per_photon / 2:
            import logging     # a raw detector's saturated pixels: each a huge count EMC takes for photons

            logging.getLogger("spibatch").warning(
                "spibatch: warning: %s: %s: unmasked pixels reach %s's largest value (%d), %d photons each at %g ADU "
                "per photon: saturated? mask them (a mask dataset, --mask-path) or check the calibration", cxi_path,
                data_path.lstrip("/"), data.dtype, np.iinfo(data.dtype).max, int(highest), adu_per_photon)
        return tuple(int(x) for x in data.shape)


def no_photons(num_frames: int, adu_per_photon: float, cxi_path) -> InputError:
    """The line for a stack in which no pixel rounds to a photon (a gain in the wrong unit: 1e6 ADU per photon)."""
    return InputError(f"not one photon in {num_frames} frames at {adu_per_photon:g} ADU per photon", path=cxi_path,
                      field="--adu-per-photon (ingest.adu_per_photon)",
                      fix="give the detector's ADU per photon (e.g. ~25 for AGIPD at 9 keV), or check the frames")


def _block_ok(block: np.ndarray, good: np.ndarray | None, adu_per_photon: float, clip_negative: bool) -> bool:
    """Whether every unmasked value of a (frames, num_pix) block converts to a count in [0, INT32_MAX] (below
    0 allowed with ``clip_negative``): min and max suffice (x -> rint(x / adu) is monotone)."""
    return _block_highest(block, good, adu_per_photon, clip_negative) is not None


def _block_highest(block: np.ndarray, good: np.ndarray | None, adu_per_photon: float,
                   clip_negative: bool) -> float | None:
    """The largest count of an unmasked pixel of the block when every one converts (:func:`_block_ok`), else
    None."""
    if good is not None and not good.any():
        return 0.0
    if block.dtype.kind == "b":
        block = block.view(np.uint8)
    if good is None:
        lo, hi = block.min(), block.max()
    else:
        lo = block.min(where=good[None, :], initial=np.inf if block.dtype.kind == "f" else np.iinfo(block.dtype).max)
        hi = block.max(where=good[None, :], initial=-np.inf if block.dtype.kind == "f" else np.iinfo(block.dtype).min)
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None
    low, high = np.rint(np.float64(lo) / adu_per_photon), np.rint(np.float64(hi) / adu_per_photon)
    return float(high) if (clip_negative or low >= 0) and high <= INT32_MAX else None


def _one_value(f: h5py.File, name: str, path: str | os.PathLike, fix: str) -> float:
    """A positive number stored at ``name`` (a scalar, or equal values per frame)."""
    ds = require_dataset(f, name, path, fix)
    values = np.asarray(read_dataset(ds, (), path), dtype=np.float64).ravel() if ds.dtype.kind in "iuf" else None
    if values is None or values.size == 0 or not np.all(np.isfinite(values)) or values.min() <= 0 \
            or values.max() - values.min() > 1e-6 * values.max():
        found = f"shape {ds.shape} dtype {ds.dtype}" if values is None or values.size == 0 else \
            f"{values[0]:g}" if values.size == 1 else f"{values.size} values from {values.min():g} to {values.max():g}"
        raise InputError(f"expected one positive finite number (or equal ones per frame), found {found}", path=path,
                         field=name, fix=fix)
    return float(values.mean())


__all__ = ["cxi_to_photons", "read_flat_geometry", "bad_pixels", "stack_shape", "stack_info", "check_frames"]


def _check_adu(adu_per_photon: float, path=None) -> None:
    """InputError unless the detector units per photon are a positive finite number."""
    if not (np.isfinite(adu_per_photon) and adu_per_photon > 0):
        raise InputError(f"must be a positive number, got {adu_per_photon}", path=path, field="adu_per_photon",
                         fix="give the detector's signal per photon in ADU (1 for photon-counted data)")
