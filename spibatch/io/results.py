"""spibatch's own HDF5 result files, and reading a 3-D volume from any file we know.

Result file layout (one HDF5 file per stage output; every dataset optional)::

    intensity      (M, M, M) float32   3-D Fourier intensity, centre at M // 2, indexed [qx, qy, qz]
                                       (attribute intensity_unit: "electrons^2" for the simulated truth);
                                       one voxel is ``voxel_size_per_m`` in reciprocal space
    density        (L, L, L) float32   real-space electron density, electrons per voxel, [x, y, z];
                                       one voxel is ``density_voxel_size_m`` on a side
    quaternions    (N, 4) float64      orientations as unit quaternions (w, x, y, z)

    attributes on the root group:
    voxel_size_per_m       float   reciprocal-space voxel size, 1/m (|q| = 2 sin(theta) / wavelength)
    density_voxel_size_m   float   real-space voxel size, m
    provenance             str     JSON: the stage's config, software versions, input files and their
                                   checksums (whatever the pipeline records), keys sorted

Other datasets and attributes may be added by a stage; readers ignore what
they do not need.  Files are written atomically (temporary file + rename)
with no timestamps and in sorted order, so the same content gives
byte-identical files; float arrays of 3+ dimensions and at least
``GZIP_MIN_VOXELS`` values are stored with shuffle + gzip, their chunks compressed in parallel
(:mod:`spibatch.io.gzip_chunks`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from spibatch.errors import InputError
from spibatch.io.atomic import write_hdf5
from spibatch.io.files import require_file
from spibatch.io.gzip_chunks import create_gzip_dataset
from spibatch.io.hdf5 import is_hdf5, open_hdf5, read_dataset

GZIP_MIN_VOXELS = 128 ** 3  # float arrays with 3+ dimensions and this many values get gzip (8 MB of float32;
                            # below, deflate costs more than the disk it saves: 25 ms of CPU for 3 MB -> 1.1 MB, a
                            # tenth of an EMC iteration of the small set, every iteration)
GZIP_LEVEL = 4
VOLUME_NAMES = ("intensity", "intens", "density")  # read_volume's search order in HDF5 files
MRC_SUFFIXES = (".mrc", ".map", ".mrcs", ".rec")


def write_result(path: str | os.PathLike, datasets: dict[str, np.ndarray], attrs: dict,
                 provenance: dict | None = None, dataset_attrs: dict[str, dict] | None = None) -> None:
    """Write ``datasets`` and root ``attrs`` to ``path`` (atomic); ``provenance`` becomes a JSON attribute;
    ``dataset_attrs``: attributes of named datasets (e.g. ``{"frequency": {"units": "1/m"}}``).

    Names may contain ``/`` (groups are created).  ``attrs`` values are numbers,
    strings or arrays (None values are left out); a ``provenance`` key in ``attrs`` (as returned by
    :func:`read_result`) is taken as the provenance when ``provenance`` is None.
    """
    attrs = dict(attrs)
    if "provenance" in attrs:
        if provenance is not None:
            raise ValueError("provenance given twice (in attrs and as provenance=)")
        provenance = attrs.pop("provenance")

    def fill(f) -> None:
        for name, value in sorted(datasets.items()):  # sorted: dict order does not change the bytes
            value = np.asarray(value)
            if value.dtype.kind == "f" and value.ndim >= 3 and value.size >= GZIP_MIN_VOXELS:
                create_gzip_dataset(f, name, value, GZIP_LEVEL)
            else:
                f.create_dataset(name, data=value, track_times=False)
            f[name].attrs.update((dataset_attrs or {}).get(name, {}))
        for key, value in sorted(attrs.items()):
            if value is not None:  # None means "not known": the attribute is left out
                f.attrs[key] = value
        if provenance is not None:
            f.attrs["provenance"] = json.dumps(provenance, sort_keys=True, default=str)

    write_hdf5(path, fill)   # built in memory, written by Python: a full disk is one clean error (io.atomic)


def read_result(path: str | os.PathLike, *, attrs_only: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """``(datasets, attrs)`` of a result file: every dataset by its full name (no leading ``/``),
    the root attributes as Python scalars, strings or arrays, and ``attrs["provenance"]``
    parsed from JSON when present.  ``attrs_only`` skips reading the datasets."""
    fix = "give a result file written by spibatch"
    datasets: dict[str, np.ndarray] = {}
    with open_hdf5(path, fix) as f:
        def visit(name: str, obj) -> None:
            if isinstance(obj, h5py.Dataset):
                datasets[name] = read_dataset(obj, (), path)
        if not attrs_only:
            f.visititems(visit)
        attrs = {key: _plain(value) for key, value in f.attrs.items()}
    if "provenance" in attrs:
        try:
            attrs["provenance"] = json.loads(attrs["provenance"])
        except (TypeError, ValueError, RecursionError):
            raise InputError("not valid JSON", path=path, field="provenance", fix=fix) from None
    return datasets, attrs


def _plain(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_volume(path: str | os.PathLike, name: str | None = None) -> np.ndarray:
    """A 3-D volume from a file, as stored (dtype and axis order of the file).

    Understands: our result files (``intensity``, ``density``; ``name`` picks
    one), Dragonfly's ``output_NNN.h5`` (``intens`` (1, N, N, N), squeezed),
    ``intensities.h5`` (``intensity``), Dragonfly's raw ``.bin`` float64 cube
    (edge = cube root of size / 8) and MRC files (.mrc, .map: (Z, Y, X)).
    Without ``name`` an HDF5 file is searched for intensity, intens, density in that order.
    """
    path = Path(path)
    fix = "give an HDF5 result file, a Dragonfly output_NNN.h5 or .bin cube, or an MRC file"
    require_file(path, fix=fix)
    if is_hdf5(path):
        return _hdf5_volume(path, name)
    if path.suffix.lower() in MRC_SUFFIXES:
        from spibatch.io.mrc import read_mrc

        return read_mrc(path)[0]
    if path.suffix.lower() == ".bin":
        return _bin_volume(path)
    raise InputError(f"unknown volume format (suffix {path.suffix or 'none'!r}, not HDF5)", path=path, fix=fix)


def _hdf5_volume(path: Path, name: str | None) -> np.ndarray:
    with open_hdf5(path, VOLUME_FIX) as f:
        ds, shape = _volume_dataset(f, path, name)
        return read_dataset(ds, (), path).reshape(shape)


VOLUME_FIX = ("name the dataset that holds the volume: --dataset on the command line, phasing.dataset or "
              "validation.dataset in a pipeline file")


def _volume_dataset(f: h5py.File, path: Path, name: str | None,
                    fix: str = VOLUME_FIX) -> tuple[h5py.Dataset, tuple[int, ...]]:
    """The dataset holding the volume (``name``, else the first of :data:`VOLUME_NAMES`) and its 3-D shape;
    InputError with ``fix`` when there is none (a soft link loop too)."""
    from spibatch.io.hdf5 import require_dataset

    def present(n: str) -> bool:
        try:
            return isinstance(f.get(n), h5py.Dataset)
        except (RuntimeError, KeyError, OSError):   # a soft link loop: require_dataset names it
            return True

    names = [name] if name else [n for n in VOLUME_NAMES if present(n)][:1]
    if not names:
        found = []
        f.visititems(lambda n, obj: found.append(n) if isinstance(obj, h5py.Dataset) else None)
        raise InputError(f"no volume dataset ({', '.join(VOLUME_NAMES)}); found: {', '.join(found) or 'none'}",
                         path=path, field="dataset", fix=fix)
    ds = require_dataset(f, names[0], path, fix)
    shape = ds.shape[1:] if ds.ndim == 4 and ds.shape[0] == 1 else ds.shape
    if len(shape) != 3 or ds.dtype.kind not in "iuf":
        raise InputError(f"expected a 3-D volume (or (1, N, N, N)), found shape {ds.shape} dtype {ds.dtype}",
                         path=path, field=names[0], fix="give an N x N x N array of numbers in this dataset")
    return ds, tuple(int(x) for x in shape)


def _bin_volume(path: Path) -> np.ndarray:
    """Dragonfly's raw float64 cube (native little-endian, C order, as Dragonfly writes it)."""
    size = path.stat().st_size
    edge = round((size / 8) ** (1 / 3)) if size else 0
    if size == 0 or size != 8 * edge ** 3:
        raise InputError(f"{size} bytes is not a float64 cube (8 * edge^3 bytes)", path=path,
                         fix="give Dragonfly's raw intensity or density .bin file")
    volume = np.fromfile(path, "<f8").reshape(edge, edge, edge)
    if not _plausible(volume) and _plausible(volume.byteswap()):
        raise InputError("its values read as little-endian float64 are NaN or absurd, byte-swapped they are not: a "
                         "big-endian file", path=path, fix="write it little-endian (numpy: "
                         "volume.astype('<f8').tofile(path)), as Dragonfly does")
    return volume


def _plausible(volume: np.ndarray) -> bool:
    """All finite and within 1e-100 .. 1e100 in magnitude where not 0 (a byte-swapped float64 reads as NaN,
    infinities or values like 1e-300 and 1e+250)."""
    with np.errstate(all="ignore"):
        magnitude = np.abs(volume[volume != 0])
        return bool(np.isfinite(volume).all() and (magnitude.size == 0 or (magnitude.min() > 1e-100
                                                                             and magnitude.max() < 1e100)))




def read_volume_and_voxel(path: str | os.PathLike, dataset: str | None = None) -> tuple[np.ndarray, float | None]:
    """A 3-D volume and its real-space voxel in m (None when the file does not say): an MRC's voxel, or an
    HDF5 result's ``density_voxel_size_m`` when ``dataset`` is ``density``."""
    from spibatch.io.mrc import read_mrc

    path = Path(path)
    if path.suffix.lower() in MRC_SUFFIXES:
        volume, voxel_angstrom = read_mrc(path)
        return volume, (voxel_angstrom * 1e-10 if voxel_angstrom else None)
    volume = read_volume(path, dataset)
    voxel = None
    if dataset == "density" and path.suffix.lower() in (".h5", ".hdf5"):
        try:
            voxel = read_result(path, attrs_only=True)[1].get("density_voxel_size_m")
        except InputError:
            voxel = None
    return volume, voxel


def check_not_density(path: str | os.PathLike, dataset: str | None, field: str) -> None:
    """InputError when ``path`` is an HDF5 file whose volume, found without a ``dataset`` named, is a density
    (a truth.h5 or a phasing result given where an intensity goes was phased or started from without a word)."""
    if dataset is None and Path(path).is_file() and is_hdf5(path) and volume_kind(path) == "density":
        raise InputError("holds a density (dataset 'density'), not an intensity", path=path, field=field,
                         fix="give an intensity (an EMC output_NNN.h5, intensities.h5)" + (
                             "; name the dataset (phasing.dataset) only if that density is really meant"
                             if field.startswith(("phasing", "--intensity")) else ""))


def volume_kind(path: str | os.PathLike, dataset: str | None = None) -> str | None:
    """"intensity" or "density": what a volume file holds, from its format and dataset name; None when the
    file does not say (Dragonfly's raw ``.bin`` cubes: intensities.bin and densityMap.bin look alike)."""
    path = Path(path)
    if path.suffix.lower() in MRC_SUFFIXES:
        return "density"
    if not is_hdf5(path):
        return None
    name = dataset
    if name is None:
        with open_hdf5(path, "give an HDF5 volume file") as f:
            name = _volume_dataset(f, path, None)[0].name.lstrip("/") if any(n in f for n in VOLUME_NAMES) else None
    return {"intensity": "intensity", "intens": "intensity", "density": "density"}.get(name or "")



def positive_attribute(value, path: str | os.PathLike, name: str) -> float | None:
    """An attribute that must be one positive finite number (a voxel size), as a float; None when absent.
    InputError naming the file and the attribute for anything else (NaN, inf, 0, negative, text, arrays)."""
    if value is None:
        return None
    arr = np.asarray(value).reshape(-1)
    if arr.size != 1 or arr.dtype.kind not in "iuf" or not np.isfinite(arr[0]) or arr[0] <= 0:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise InputError(f"expected one positive number, found {shown}", path=path, field=name,
                         fix="correct or delete the attribute (or give the size in the pipeline file)")
    return float(arr[0])


def volume_shape(path: str | os.PathLike, name: str | None = None, *, field: str | None = None,
                 dataset_fix: str = VOLUME_FIX) -> tuple[int, ...]:
    """The shape ``read_volume(path, name)`` would return, from the file's header alone (nothing big is read):
    InputError for what :func:`read_volume` refuses (missing file, unknown format, no 3-D dataset)."""
    path = Path(path)
    fix = "give an HDF5 result file, a Dragonfly output_NNN.h5 or .bin cube, or an MRC file"
    require_file(path, field, fix)
    if is_hdf5(path):
        with open_hdf5(path, VOLUME_FIX) as f:
            return _volume_dataset(f, path, name, dataset_fix)[1]
    if path.suffix.lower() in MRC_SUFFIXES:
        import warnings

        import mrcfile

        from spibatch.io.mrc import check_extended_header, xyz_order

        check_extended_header(path, field, fix)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with mrcfile.open(path, permissive=False, header_only=True) as mrc:
                    header = mrc.header
                    counts = (int(header.nz), int(header.ny), int(header.nx))   # sections, rows, columns
                    return tuple(counts[axis] for axis in xyz_order(header, path))
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"not a valid MRC file ({' '.join(str(exc).split())[:120]})", path=path, field=field,
                             fix=fix) from None
    if path.suffix.lower() == ".bin":
        size = path.stat().st_size
        edge = round((size / 8) ** (1 / 3)) if size else 0
        if size == 0 or size != 8 * edge ** 3:
            raise InputError(f"{size} bytes is not a float64 cube (8 * edge^3 bytes)", path=path, field=field,
                             fix="give Dragonfly's raw intensity or density .bin file")
        return edge, edge, edge
    raise InputError(f"unknown volume format (suffix {path.suffix or 'none'!r}, not HDF5)", path=path, field=field,
                     fix=fix)


REFERENCE_FIX = "give the true density: a truth.h5 of `spibatch simulate`, an MRC file, or Dragonfly's .bin"


def check_finite(volume: np.ndarray, *, path=None, field: str | None = None, fix: str | None = None) -> None:
    """InputError (one line: how many voxels, the first) when ``volume`` holds NaN or infinite values."""
    bad = ~np.isfinite(volume)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"{int(bad.sum())} voxels are NaN or infinite (first at {first})", path=path, field=field,
                         fix=fix)


def check_reference(path: str | os.PathLike, voxel_size_m: float | None = None, *,
                    field: str = "validation.reference", voxel_field: str = "validation.reference_voxel_size_m",
                    grid: tuple[int, float | None] | None = None, max_voxels: int = 1024 ** 3,
                    dataset: str = "density", warn: bool = True) -> tuple[np.ndarray, float | None]:
    """A true density read once and checked, before anything is created: ``(volume (L, L, L) float64, its voxel
    in m or None)``, what :func:`spibatch.phasing.compare.load_truth` returns for a good file.

    Reads HDF5 (``dataset``, by default ``density``; voxel from ``density_voxel_size_m`` or ``voxel_size_m``), MRC (its voxel;
    0 means not known) or Dragonfly's raw ``.bin`` cube.  ``voxel_size_m`` (the caller's option) is the voxel
    of a file that does not record one (a warning when it differs from one the file records).  One InputError naming the file and ``field`` (or the dataset / attribute) for: a missing path or
    a directory, an unknown or corrupt format, no or a non-3-D or non-cubic volume, more than ``max_voxels``
    voxels (checked from the header, before reading), NaN or inf voxels, a volume zero everywhere, a voxel
    size that is not a positive finite length (given or stored), and -- with ``grid`` = (edge, voxel in m or
    None) of the reconstruction it will be compared with -- a truth that does not fit in that box.
    """
    path = Path(path)
    if voxel_size_m is not None and not (isinstance(voxel_size_m, (int, float)) and not isinstance(voxel_size_m, bool)
                                         and np.isfinite(voxel_size_m) and voxel_size_m > 0):
        raise InputError(f"expected a positive length in metres, found {voxel_size_m.item() if isinstance(voxel_size_m, np.generic) else voxel_size_m!r}", path=path,
                         field=voxel_field, fix="give the truth's voxel edge in metres (e.g. 1.756e-9)")
    shape = volume_shape(path, dataset if path.is_file() and is_hdf5(path) else None, field=field,
                         dataset_fix=REFERENCE_FIX + f" (its dataset: {dataset})")
    if len(shape) != 3 or len(set(shape)) != 1 or shape[0] < 2:
        raise InputError(f"expected a cubic 3-D density (L, L, L), found shape {shape}", path=path, field=field,
                         fix=REFERENCE_FIX)
    if int(np.prod(shape, dtype=np.float64)) > max_voxels:
        raise InputError(f"a {shape[0]}^3 density ({8 * float(np.prod(shape, dtype=np.float64)):.3g} bytes as float64) "
                         f"is larger than any truth this compares with (at most {max_voxels:,} voxels)", path=path,
                         field=field, fix=REFERENCE_FIX)
    stored = None
    if is_hdf5(path):
        with open_hdf5(path, REFERENCE_FIX) as f:
            ds, shape = _volume_dataset(f, path, dataset, REFERENCE_FIX + f" (its dataset: {dataset})")
            volume = read_dataset(ds, (), path).reshape(shape)
            for key in ("density_voxel_size_m", "voxel_size_m"):
                stored = positive_attribute(f.attrs.get(key), path, key)
                if stored is not None:
                    break
    elif path.suffix.lower() in MRC_SUFFIXES:
        from spibatch.io.mrc import read_mrc

        try:
            volume, voxel_angstrom = read_mrc(path)
        except InputError as exc:
            raise InputError(exc.problem, path=path, field=exc.field or field, fix=exc.fix) from None
        if voxel_angstrom:
            stored = positive_attribute(voxel_angstrom, path, "voxel_size") * 1e-10
    else:
        volume = _bin_volume(path)
    volume = np.asarray(volume, np.float64)
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise InputError(f"expected a cubic 3-D density (L, L, L), found shape {volume.shape}", path=path,
                         field=field, fix=REFERENCE_FIX)
    check_finite(volume, path=path, field=field, fix=REFERENCE_FIX)
    if not volume.any():
        raise InputError("the density is zero everywhere: nothing to compare with", path=path, field=field,
                         fix=REFERENCE_FIX)
    from spibatch.estimates import DENSITY_VOXEL_M

    low, high = DENSITY_VOXEL_M
    for value, named in ((voxel_size_m, voxel_field), (stored, field)):   # a given one even where the file's is used
        if value is not None and not low <= value <= high:   # 1e-30 and 1e30 gave tracebacks in the resampling
            raise InputError(f"a density voxel of {value:g} m is outside {low:g} .. {high:g} m", path=path,
                             field=named, fix="give the voxel edge in metres (e.g. 1.756e-9)")
    voxel = stored if stored is not None else voxel_size_m     # the option is for files that do not say
    if warn and stored is not None and voxel_size_m is not None and abs(voxel_size_m / stored - 1) > 1e-6:
        import logging

        logging.getLogger("spibatch").warning(
            "spibatch: warning: %s records its voxel (%.4g m): %s (%.4g m) is used only for files that do not",
            path, stored, voxel_field, voxel_size_m)
    if grid is not None:
        edge, grid_voxel = grid
        fits = volume.shape[0]   # as compare_with_truth: resampled when the voxels differ by more than 0.1%
        if voxel and grid_voxel and abs(voxel / grid_voxel - 1) > 1e-3:
            fits = int(np.ceil(volume.shape[0] * (voxel / grid_voxel) / 2)) * 2 + 1
        if fits > edge:
            raise InputError(f"the truth ({volume.shape[0]}^3{f' of {voxel:.3g} m' if voxel else ''}) spans {fits} "
                             f"voxels of the reconstruction, whose box is {edge}^3", path=path, field=field,
                             fix="phase a larger box (no phasing.crop_to), or check the voxel sizes")
    return volume, (float(voxel) if voxel else None)


__all__ = ["write_result", "read_result", "read_volume", "read_volume_and_voxel", "volume_kind", "volume_shape",
           "check_not_density", "positive_attribute", "check_reference", "GZIP_MIN_VOXELS"]
