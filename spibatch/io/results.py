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
``GZIP_MIN_VOXELS`` values are stored with gzip.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from spibatch.errors import InputError
from spibatch.io.atomic import write_hdf5
from spibatch.io.hdf5 import is_hdf5, open_hdf5, read_dataset

GZIP_MIN_VOXELS = 64 ** 3   # float arrays with 3+ dimensions and this many values get gzip (level 4)
VOLUME_NAMES = ("intensity", "intens", "density")  # read_volume's search order in HDF5 files
MRC_SUFFIXES = (".mrc", ".map", ".mrcs", ".rec")


def write_result(path: str | os.PathLike, datasets: dict[str, np.ndarray], attrs: dict,
                 provenance: dict | None = None) -> None:
    """Write ``datasets`` and root ``attrs`` to ``path`` (atomic); ``provenance`` becomes a JSON attribute.

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
            big_float = value.dtype.kind == "f" and value.ndim >= 3 and value.size >= GZIP_MIN_VOXELS
            options = {"compression": "gzip", "compression_opts": 4, "shuffle": True} if big_float else {}
            f.create_dataset(name, data=value, track_times=False, **options)
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
        except (TypeError, ValueError):
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
    if not path.is_file():
        raise InputError("file not found", path=path, fix=fix)
    if is_hdf5(path):
        return _hdf5_volume(path, name)
    if path.suffix.lower() in MRC_SUFFIXES:
        from spibatch.io.mrc import read_mrc

        return read_mrc(path)[0]
    if path.suffix.lower() == ".bin":
        return _bin_volume(path)
    raise InputError(f"unknown volume format (suffix {path.suffix or 'none'!r}, not HDF5)", path=path, fix=fix)


def _hdf5_volume(path: Path, name: str | None) -> np.ndarray:
    fix = "name the dataset that holds the volume (read_volume(path, name=...))"
    with open_hdf5(path, fix) as f:
        names = [name] if name else [n for n in VOLUME_NAMES if isinstance(f.get(n), h5py.Dataset)][:1]
        if not names:
            found = []
            f.visititems(lambda n, obj: found.append(n) if isinstance(obj, h5py.Dataset) else None)
            raise InputError(f"no volume dataset ({', '.join(VOLUME_NAMES)}); found: {', '.join(found) or 'none'}",
                             path=path, fix=fix)
        ds = f.get(names[0])
        if not isinstance(ds, h5py.Dataset):
            raise InputError("dataset missing", path=path, field=names[0], fix=fix)
        shape = ds.shape[1:] if ds.ndim == 4 and ds.shape[0] == 1 else ds.shape
        if len(shape) != 3 or ds.dtype.kind not in "iuf":
            raise InputError(f"expected a 3-D volume (or (1, N, N, N)), found shape {ds.shape} dtype {ds.dtype}",
                             path=path, field=names[0], fix=fix)
        return read_dataset(ds, (), path).reshape(shape)


def _bin_volume(path: Path) -> np.ndarray:
    """Dragonfly's raw float64 cube (native little-endian, C order, as Dragonfly writes it)."""
    size = path.stat().st_size
    edge = round((size / 8) ** (1 / 3)) if size else 0
    if size == 0 or size != 8 * edge ** 3:
        raise InputError(f"{size} bytes is not a float64 cube (8 * edge^3 bytes)", path=path,
                         fix="give Dragonfly's raw intensity or density .bin file")
    return np.fromfile(path, "<f8").reshape(edge, edge, edge)


__all__ = ["write_result", "read_result", "read_volume", "GZIP_MIN_VOXELS"]


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
