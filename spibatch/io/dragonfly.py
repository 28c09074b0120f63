"""Dragonfly's sparse photons file and detector file: read, validate, write.

Photons file (HDF5, written by Dragonfly's ``make_data``; often named ``*.emc``)::

    num_pix      (1,) int32                 pixels per frame
    place_ones   (num_frames,) vlen int32   per frame: pixels holding exactly one photon
    place_multi  (num_frames,) vlen int32   per frame: pixels holding two or more photons
    count_multi  (num_frames,) vlen int32   their photon counts (>= 2), row k as long as place_multi[k]

Older binary ``.emc`` (read only; little-endian int32 throughout)::

    header, 1024 bytes: num_data, num_pix, type (0 = sparse; dense types 1 and 2 are refused), zeros
    ones (num_data,), multi (num_data,)      photons-per-frame row lengths
    place_ones (sum ones,), place_multi (sum multi,), count_multi (sum multi,)

Detector file (HDF5, written by Dragonfly's ``make_detector``)::

    qx, qy, qz   (num_pix,) float64   scattering vector of each pixel in voxels of the model grid
    corr         (num_pix,) float64   solid angle x polarization
    mask         (num_pix,) uint8     0 used, 1 merged only, 2 excluded
    detd         () float64           sample-detector distance in pixel sizes
    ewald_rad    () float64           Ewald sphere radius in voxels
    attributes voxel_size_per_m (1/m) and shape (ints): ours only, optional

Every problem found on reading raises :class:`spibatch.errors.InputError`
naming the file, the dataset and the fix.  Writers are atomic and
deterministic (no timestamps: the same content gives the same bytes).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import resource
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from spibatch.errors import InputError
from spibatch.io.atomic import atomic_path, disk_full, write_hdf5
from spibatch.io.emcbin import FIX_PHOTONS, BinaryPhotons, checked_photons
from spibatch.io.files import require_file
from spibatch.io.hdf5 import is_hdf5, open_hdf5, read_dataset, require_dataset
from spibatch.photons import Photons

PHOTON_ROWS = ("place_ones", "place_multi", "count_multi")
DETECTOR_ARRAYS = ("qx", "qy", "qz", "corr", "mask")
MAX_CORR = 1e6    # solid angle x polarization, Dragonfly's scale: ~1e-3-1; 1e308 made every probability 0
ROWS_CHUNK = 1024  # frames per HDF5 chunk of the vlen datasets we write

FIX_DETECTOR = "give a detector file written by Dragonfly (make_detector) or spibatch"


# ------------------------------------------------------------------ detector

MAX_PIXELS = 100_000_000   # a detector file's pixels (AGIPD 1M: 10^6; the largest planned: ~10^7)


def _refuse_text_detector(path) -> None:
    """InputError when ``path`` is Dragonfly 1's text detector (``.dat``: a line ``num_pix [detd ewald_rad]``, then
    ``qx qy qz corr mask`` per pixel): "not an HDF5 file ... give a detector written by Dragonfly" misled."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return                       # open_hdf5 names it
    if head.startswith(b"\x89HDF") or not head:
        return
    lines = head.split(b"\n")
    try:
        first = [float(v) for v in lines[0].split()]
        second = [float(v) for v in lines[1].split()] if len(lines) > 1 else []
    except ValueError:
        return
    if first and float(first[0]).is_integer() and len(second) == 5:
        raise InputError(f"a text detector (Dragonfly 1's format: {int(first[0]):,} pixels of qx qy qz corr mask); "
                         "spibatch reads Dragonfly 2's HDF5 detector", path=path, field="emc.detector",
                         fix="write it as HDF5 (datasets qx, qy, qz, corr, mask, detd, ewald_rad: Dragonfly's "
                         "make_detector.py writes one when its output name ends in .h5)")


def read_detector_arrays(path: str | os.PathLike) -> dict:
    """A Dragonfly detector file (layout in the module docstring), checked, as the keyword arguments of
    :class:`spibatch.detector.Detector` (use ``Detector.read(path)``)."""
    fix = FIX_DETECTOR
    _refuse_text_detector(path)
    with open_hdf5(path, fix) as f:
        datasets = {}
        for name in DETECTOR_ARRAYS:
            ds = require_dataset(f, name, path, fix)
            kind, kinds = ("integer", "iu") if name == "mask" else ("float", "f")
            if ds.ndim != 1 or ds.dtype.kind not in kinds:
                raise InputError(f"expected a 1-D {kind} array, found shape {ds.shape} dtype {ds.dtype}",
                                 path=path, field=name, fix=fix)
            datasets[name] = ds
        num_pix = datasets["qx"].shape[0]     # sizes from the declared shapes, before anything is read
        if num_pix == 0:                      # (else "qy: has 1024 entries but qx has 0": qy blamed)
            raise InputError("holds no pixel (shape (0,))", path=path, field="qx",
                             fix="qx, qy, qz, corr and mask need one entry per detector pixel")
        if num_pix > MAX_PIXELS:
            raise InputError(f"declares {num_pix:,} pixels; detectors of up to {MAX_PIXELS:,} are read", path=path,
                             field="qx", fix="check the file: one entry per detector pixel")
        for name in DETECTOR_ARRAYS[1:]:
            if datasets[name].shape[0] != num_pix:
                raise InputError(f"has {datasets[name].shape[0]} entries but qx has {num_pix}", path=path,
                                 field=name, fix="qx, qy, qz, corr and mask need one entry per pixel")
        arrays = {name: read_dataset(ds, (), path) for name, ds in datasets.items()}
        for name in ("qx", "qy", "qz", "corr"):
            bad = ~np.isfinite(arrays[name])
            if bad.any():
                raise InputError(f"{int(bad.sum())} values are NaN or inf (first at pixel {int(np.argmax(bad))})",
                                 path=path, field=name, fix="regenerate the detector file")
        mask = arrays["mask"].astype(np.int64)
        bad = (mask < 0) | (mask > 2)
        if bad.any():
            raise InputError(f"values must be 0, 1 or 2; found {int(mask[np.argmax(bad)])} at pixel "
                             f"{int(np.argmax(bad))}", path=path, field="mask",
                             fix="use 0 (used), 1 (merged only) or 2 (excluded)")
        if not (mask == 0).any():   # 1 is merged only: no pixel would orient a frame (NaN rms change, info 0)
            raise InputError(f"none of the {num_pix} pixels is used (0) for orientation: nothing to orient frames "
                             "with", path=path, field="mask", fix="mark the pixels to use 0 (1: merged only, 2: "
                             "excluded)")
        kept = mask != 2
        odd = kept & ((arrays["corr"] < 0) | (arrays["corr"] > MAX_CORR))
        if odd.any():
            first = int(np.flatnonzero(odd)[0])
            raise InputError(f"{int(odd.sum())} pixels in use have a correction outside 0-{MAX_CORR:g} "
                             f"(first: pixel {first}, {float(arrays['corr'][first]):g})", path=path, field="corr",
                             fix="corr is the solid angle x polarization of each pixel (> 0); regenerate the file")
        reach = float(np.sqrt(arrays["qx"][kept] ** 2 + arrays["qy"][kept] ** 2 + arrays["qz"][kept] ** 2).max())
        if reach < 1.0:
            raise InputError(f"every pixel in use lies within one voxel of q = 0 (largest |q| {reach:g} voxels): "
                             "the model would be 1 voxel across", path=path, field="qx",
                             fix="qx, qy, qz are in voxels of the model grid (Dragonfly's units); regenerate the file")
        scalars = {}
        for name in ("detd", "ewald_rad"):
            ds = require_dataset(f, name, path, fix)
            if ds.size != 1 or ds.dtype.kind not in "fiu":
                raise InputError(f"expected one number, found shape {ds.shape} dtype {ds.dtype}",
                                 path=path, field=name, fix=fix)
            value = float(np.asarray(read_dataset(ds, (), path)).reshape(-1)[0])
            if not np.isfinite(value) or value <= 0:
                raise InputError(f"expected a positive number, found {value}", path=path, field=name, fix=fix)
            scalars[name] = value
        voxel = f.attrs.get("voxel_size_per_m")
        shape = f.attrs.get("shape")
    if voxel is not None:
        value = np.asarray(voxel).reshape(-1)
        if value.size != 1 or value.dtype.kind not in "iuf" or not np.isfinite(value[0]) or value[0] <= 0:
            raise InputError(f"expected one positive number (1/m), found {voxel!r}", path=path,
                             field="voxel_size_per_m", fix="fix or delete the attribute (it is optional)")
    if shape is not None:
        values = np.atleast_1d(shape)
        if values.dtype.kind not in "iuf" or values.ndim != 1 or not np.all(np.isfinite(values)) \
                or (values <= 0).any() or (values != np.round(values)).any():
            raise InputError(f"attribute shape {shape!r} is not a list of positive whole numbers", path=path,
                             field="shape", fix="fix or delete the attribute")
        shape = tuple(int(x) for x in values)
        if math.prod(shape) != num_pix:
            raise InputError(f"attribute shape {shape} does not hold {num_pix} pixels", path=path,
                             field="shape", fix="fix or delete the attribute")
    q = np.stack([arrays["qx"], arrays["qy"], arrays["qz"]], axis=1).astype(np.float64)
    return dict(q_voxels=q, corr=arrays["corr"].astype(np.float64), mask=mask.astype(np.uint8),
                detd_pixels=scalars["detd"], ewald_radius_voxels=scalars["ewald_rad"],
                voxel_size_per_m=None if voxel is None else float(voxel), shape=shape)


def write_detector(path: str | os.PathLike, detector) -> None:
    """Write ``detector`` atomically in Dragonfly's layout (readable by Dragonfly); same detector, same bytes."""
    q = np.asarray(detector.q_voxels, np.float64)
    num_pix = q.shape[0]
    if q.shape != (num_pix, 3) or np.shape(detector.corr) != (num_pix,) or np.shape(detector.mask) != (num_pix,):
        raise ValueError(f"q_voxels must be (N, 3) and corr, mask (N,); got {q.shape}, "
                         f"{np.shape(detector.corr)}, {np.shape(detector.mask)}")

    def fill(f) -> None:
        for axis, name in enumerate(("qx", "qy", "qz")):
            f.create_dataset(name, data=np.ascontiguousarray(q[:, axis]), track_times=False)
        f.create_dataset("corr", data=np.asarray(detector.corr, np.float64), track_times=False)
        f.create_dataset("mask", data=np.asarray(detector.mask, np.uint8), track_times=False)
        f.create_dataset("detd", data=np.float64(detector.detd_pixels), track_times=False)
        f.create_dataset("ewald_rad", data=np.float64(detector.ewald_radius_voxels), track_times=False)
        if detector.voxel_size_per_m is not None:
            f.attrs["voxel_size_per_m"] = np.float64(detector.voxel_size_per_m)
        if detector.shape is not None:
            f.attrs["shape"] = np.asarray(detector.shape, np.int64)

    write_hdf5(path, fill)   # in memory, then written by Python (a full disk: one line)


def check_match(detector, num_pix: int, detector_path: str | os.PathLike,
                photons_path: str | os.PathLike) -> None:
    """InputError when the detector's pixel count differs from the photons file's ``num_pix``."""
    if detector.num_pix != int(num_pix):
        raise InputError(f"the photons have num_pix = {int(num_pix)} but the detector {os.fspath(detector_path)} "
                         f"has {detector.num_pix} pixels", path=photons_path, field="num_pix",
                         fix="use the detector file that these photons were recorded or simulated with")


# ------------------------------------------------------------------ photons: reading

def photons_info(path: str | os.PathLike) -> tuple[int, int]:
    """``(num_frames, num_pix)`` of a photons file (HDF5 or binary), reading only its header."""
    with _photon_source(path) as source:
        return source.num_frames, source.num_pix


def check_photons(path: str | os.PathLike, chunk_frames: int = 4096, used=None, tally=None) -> tuple[int, int]:
    """Read every frame of a photons file once, in blocks of ``chunk_frames``, with every check the readers
    make (pixel indices in [0, num_pix), counts >= 2, each count_multi row as long as its place_multi row,
    the file readable to its last byte); ``(num_frames, num_pix)``, or InputError naming the file, the
    dataset and the first bad frame.  ``used``: (num_pix,) bool, the pixels EMC reads (mask 0): photons on the
    others alone are refused too.  A fraction of one EMC iteration's time (the medium set: ~0.1 s).  ``tally``:
    a list that gets the photons on ``used`` and the frames read (:func:`photons_seen`)."""
    with _photon_source(path) as source:
        blocks = (source.block(start, min(start + chunk_frames, source.num_frames))
                  for start in range(0, source.num_frames, chunk_frames))
        seen, seen_used = photons_seen(blocks, used if used is not None and len(used) == source.num_pix else None,
                                       tally)
        if source.num_frames and not seen:   # EMC on it ran to an all-zero model, exit 0
            raise InputError(f"every one of its {source.num_frames:,} frames is empty (0 photons): nothing to "
                             "reconstruct", path=path, field="place_ones", fix=FIX_PHOTONS)
        if used is not None and len(used) == source.num_pix and source.num_frames and not seen_used:
            raise InputError(f"none of its {source.num_frames:,} frames has a photon on a pixel EMC uses (mask 0 "
                             "in the detector): nothing to reconstruct", path=path, field="place_ones",
                             fix="check the detector's mask (2 excludes a pixel, 1 keeps it out of the likelihood)")
        return source.num_frames, source.num_pix


def photons_seen(blocks, used=None, tally=None) -> tuple[bool, bool]:
    """Whether any frame of ``blocks`` (Photons, all read) holds a photon, and one on a pixel of ``used`` (num_pix,)
    bool (False without ``used``).  ``tally`` (a list, with ``used``): ``[photons on used pixels, frames]`` of
    them all is appended to it."""
    seen = seen_used = False
    photons = frames = 0
    for block in blocks:
        seen = seen or block.ones_index.size > 0 or block.multi_index.size > 0
        if used is not None and not seen_used:
            seen_used = bool(used[block.ones_index].any() or used[block.multi_index].any())
        if tally is not None and used is not None:
            photons += int(used[block.ones_index].sum()) + int(block.multi_count[used[block.multi_index]].sum())
            frames += block.num_frames
    if tally is not None and used is not None:
        tally.append((photons, frames))
    return seen, seen_used


def read_photons(path: str | os.PathLike, start: int = 0, stop: int | None = None) -> Photons:
    """Frames ``start:stop`` of a photons file (HDF5 or binary ``.emc``), validated."""
    with _photon_source(path) as source:
        stop = source.num_frames if stop is None else stop
        if not 0 <= start <= stop <= source.num_frames:
            raise ValueError(f"frames {start}:{stop} outside 0:{source.num_frames}")
        return source.block(start, stop)


def iter_photons(path: str | os.PathLike, chunk_frames: int = 1024) -> Iterator[Photons]:
    """Yield the file's frames ``chunk_frames`` at a time (the last block may be shorter), validated."""
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    with _photon_source(path) as source:
        for start in range(0, source.num_frames, chunk_frames):
            yield source.block(start, min(start + chunk_frames, source.num_frames))


@contextlib.contextmanager
def _photon_source(path: str | os.PathLike):
    path = Path(path)
    require_file(path, fix=FIX_PHOTONS)
    if is_hdf5(path):
        with open_hdf5(path, FIX_PHOTONS) as f:
            yield _Hdf5Photons(f, path)
    else:
        yield BinaryPhotons(path)


class _Hdf5Photons:
    """Frames of Dragonfly's HDF5 photons file, read one block of rows at a time."""

    def __init__(self, f: h5py.File, path: Path):
        self.path = path
        ds = require_dataset(f, "num_pix", path, FIX_PHOTONS)
        if ds.size != 1 or ds.dtype.kind not in "iu":
            raise InputError(f"expected one integer, found shape {ds.shape} dtype {ds.dtype}", path=path,
                             field="num_pix", fix=FIX_PHOTONS)
        self.num_pix = int(np.asarray(read_dataset(ds, (), path)).reshape(-1)[0])
        if self.num_pix < 1:
            raise InputError(f"expected a positive pixel count, found {self.num_pix}", path=path,
                             field="num_pix", fix=FIX_PHOTONS)
        self.rows = {}
        for name in PHOTON_ROWS:
            ds = require_dataset(f, name, path, FIX_PHOTONS)
            base = h5py.check_vlen_dtype(ds.dtype)   # a numpy dtype, or str / bytes for variable-length strings
            if ds.ndim != 1 or not isinstance(base, np.dtype) or base.kind not in "iu":
                found = f"variable-length {getattr(base, '__name__', base)}" if base is not None else f"{ds.dtype}"
                raise InputError(f"expected a 1-D dataset of variable-length int32 rows, found shape {ds.shape} "
                                 f"of {found}", path=path, field=name, fix=FIX_PHOTONS)
            self.rows[name] = ds
        lengths = {name: ds.shape[0] for name, ds in self.rows.items()}
        if len(set(lengths.values())) != 1:
            odd = [n for n in PHOTON_ROWS[1:] if lengths[n] != lengths["place_ones"]]
            raise InputError(f"row counts differ: {lengths}", path=path,
                             field=odd[0] if len(odd) == 1 else "place_ones",
                             fix="place_ones, place_multi and count_multi need one row per frame")
        self.num_frames = lengths["place_ones"]
        for name, ds in self.rows.items():   # each row written is at least a heap reference in the dataset
            stored = ds.id.get_storage_size()
            if stored < self.num_frames:
                raise InputError(f"declares {self.num_frames:,} frames but its rows hold {stored:,} bytes: rows "
                                 "never written", path=path, field=name, fix=FIX_PHOTONS)

    def block(self, start: int, stop: int) -> Photons:
        flat, indptr = {}, {}
        for name, ds in self.rows.items():
            rows = read_dataset(ds, slice(start, stop), self.path)
            lengths = np.fromiter((len(r) for r in rows), np.int64, count=len(rows))
            indptr[name] = np.concatenate([[0], np.cumsum(lengths)])
            flat[name] = np.concatenate(list(rows)) if lengths.sum() else np.zeros(0, np.int32)
        place, count = np.diff(indptr["place_multi"]), np.diff(indptr["count_multi"])
        if not np.array_equal(place, count):
            k = int(np.argmax(place != count))
            raise InputError(f"frame {start + k}: place_multi has {place[k]} entries but count_multi has {count[k]}",
                             path=self.path, field="count_multi",
                             fix="each count_multi row must be as long as its place_multi row")
        return checked_photons(self.path, self.num_pix, start, indptr["place_ones"], flat["place_ones"],
                      indptr["place_multi"], flat["place_multi"], flat["count_multi"])


# ------------------------------------------------------------------ photons: writing

class PhotonsWriter:
    """Write Dragonfly's HDF5 photons file block by block; use as a context manager.

    Frames go to a temporary file beside ``path`` that is renamed onto ``path``
    on a clean exit and deleted on an exception, so ``path`` is never left
    truncated and an older file of that name survives a failed write.  The
    same appended blocks give a byte-identical file.
    """

    def __init__(self, path: str | os.PathLike, num_pix: int):
        self.path = Path(path)
        self.num_pix = int(num_pix)
        if self.num_pix < 1:
            raise ValueError(f"num_pix must be >= 1, got {num_pix}")
        self.num_frames = 0
        self._file: h5py.File | None = None
        self._atomic = None

    def __enter__(self) -> "PhotonsWriter":
        self._atomic = atomic_path(self.path)
        tmp = self._tmp = self._atomic.__enter__()
        try:
            self._file = h5py.File(tmp, "w")
            self._file.create_dataset("num_pix", data=np.array([self.num_pix], np.int32), track_times=False)
            for name in PHOTON_ROWS:
                self._file.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(ROWS_CHUNK,),
                                          dtype=h5py.vlen_dtype(np.int32), track_times=False)
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def append(self, photons: Photons) -> None:
        """Append the frames of ``photons`` (same ``num_pix``; counts >= 2, indices in range)."""
        if self._file is None:
            raise RuntimeError("use PhotonsWriter in a with block: `with PhotonsWriter(path, num_pix) as w:`")
        if photons.num_pix != self.num_pix:
            raise ValueError(f"photons have num_pix {photons.num_pix}, the file has {self.num_pix}")
        for index in (photons.ones_index, photons.multi_index):
            if len(index) and (index.min() < 0 or index.max() >= self.num_pix):
                raise ValueError(f"pixel index outside [0, {self.num_pix})")
        if len(photons.multi_count) and photons.multi_count.min() < 2:
            raise ValueError("multi_count holds counts below 2")
        n = photons.num_frames
        if n == 0:
            return
        self._check_room(4 * (len(photons.ones_index) + 2 * len(photons.multi_index)) + 3 * 48 * n)
        rows = {"place_ones": (photons.ones_index, photons.ones_indptr),
                "place_multi": (photons.multi_index, photons.multi_indptr),
                "count_multi": (photons.multi_count, photons.multi_indptr)}
        for name, (flat, indptr) in rows.items():
            flat = np.ascontiguousarray(flat, np.int32)
            out = np.empty(n, dtype=h5py.vlen_dtype(np.int32))
            for k in range(n):
                out[k] = flat[indptr[k]:indptr[k + 1]]
            ds = self._file[name]
            ds.resize((self.num_frames + n,))
            # write_direct, not ds[a:b] = out: h5py turns equal-length rows into a 2-D array and fails
            ds.write_direct(out, dest_sel=np.s_[self.num_frames:self.num_frames + n])
        self._file.flush()   # to the disk now: the next block's room is then measured against what is there
        self.num_frames += n

    def add(self, name: str, data: np.ndarray, **attrs) -> None:
        """A dataset ``name`` beside the frames (e.g. where each frame came from), with file attributes ``attrs``."""
        if self._file is None:
            raise RuntimeError("use PhotonsWriter in a with block: `with PhotonsWriter(path, num_pix) as w:`")
        data = np.asarray(data)
        self._check_room(data.nbytes)
        self._file.create_dataset(name, data=data, track_times=False)
        for key, value in attrs.items():
            self._file.attrs[key] = value

    def _check_room(self, size: int) -> None:
        """DiskFull (one line, nothing written) unless ``size`` more bytes (rows of 4-byte values plus ~48 bytes of
        HDF5 bookkeeping per row; with a margin) fit on the disk and under the file-size limit.  HDF5 crashes
        (SIGSEGV, not an error) when a write of variable-length rows fails, so it must never meet a full disk;
        each block is flushed after it is written, so that the free space measured here is the real one."""
        need = int(1.25 * size) + 3 * 16 * ROWS_CHUNK + (256 << 10)   # + a new chunk of row references each, + metadata
        stat = os.statvfs(self._tmp.parent)
        if stat.f_bavail * stat.f_frsize < need:
            raise disk_full(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), self.path, need)
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and self._tmp.stat().st_size + need > limit:
            raise disk_full(OSError(errno.EFBIG, os.strerror(errno.EFBIG)), self.path, need)

    def __exit__(self, exc_type, exc, tb) -> bool:
        f, self._file = self._file, None
        close_error = None
        if f is not None:
            try:
                f.close()
            except BaseException as error:  # a failed flush must not leave a renamed, broken file
                close_error = error
        atomic, self._atomic = self._atomic, None
        if exc_type is None and close_error is not None:
            atomic.__exit__(type(close_error), close_error, close_error.__traceback__)
            raise close_error
        return bool(atomic.__exit__(exc_type, exc, tb))


def write_photons(path: str | os.PathLike, photons: Photons) -> None:
    """Write ``photons`` to a Dragonfly HDF5 photons file at ``path`` (atomic, deterministic)."""
    with PhotonsWriter(path, photons.num_pix) as writer:
        writer.append(photons)
