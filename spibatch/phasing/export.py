"""Phasing results for other programs: a CXI file (as PyNX writes them) and the density in a truth's frame.

:func:`write_cxi`: ``phasing.cxi`` beside ``phasing.h5``, laid out by the CXI 1.5 convention that PyNX's
``save_obj_cxi`` follows, so a CXI / NeXus viewer (silx view, PyNX's own, cxiview) opens it::

    /cxi_version = 150                      (file attrs: creator, default = "entry_1")
    /entry_1                                NXentry; program_name, start_time, default = "data_1"
    /entry_1/image_1/data                   (N, N, N) float32 density, centred, stored (z, y, x): x fastest
    /entry_1/image_1/mask                   (N, N, N) float32 support (fraction of kept starts), (z, y, x), not
                                            CXI bad-pixel flags (its "description" says so); "support" links it
    /entry_1/image_1/data_type              "electron density";  data_space "real"
    /entry_1/image_1/image_size             (3,) box edges in m (when the voxel size is known)
    /entry_1/image_1/process_1              NXprocess: program, version, configuration (JSON), note
    /entry_1/image_1/prtf, prtf_frequency   (S,) PRTF per shell and its spatial frequency (1/m)
    /entry_1/data_1                         soft link to image_1 (the default plot)

:func:`write_density_in_truth_frame`: the density resampled onto the truth's voxel, rotated (when EMC left
it in another orientation), moved by the sub-voxel translation and inversion twin that best fit the
truth, on the truth's grid, as an MRC with the truth's voxel size: opened beside the truth's MRC in
ChimeraX, the two overlay.  The validate stage calls it (it knows the truth and the rotation).

The arrays are spibatch's [x, y, z] volumes transposed to C order with x the last (fastest) axis, as
``density.mrc`` stores them and as CXI / PyNX / silx viewers read them (stored as-is, a viewer shows the
mirror image); ``data`` says so in its ``axes_order`` attribute (not NXdata's ``axes``, which names axis
datasets that silx then looks for).  Read one back as [x, y, z] with ``a.transpose(2, 1, 0)``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from spibatch import __version__
from spibatch.phasing.alignment import Alignment, align
from spibatch.phasing.compare import resample
from spibatch.phasing.measurement import pad_centre

CXI_VERSION = 150


def _zyx(volume: np.ndarray) -> np.ndarray:
    """A volume indexed [x, y, z] as the C-order (z, y, x) array CXI viewers read (x the last, fastest axis)."""
    return np.ascontiguousarray(volume.transpose(2, 1, 0))


def write_cxi(path: str | os.PathLike, density: np.ndarray, support: np.ndarray, voxel_size_m: float | None, *,
              prtf: np.ndarray | None = None, prtf_frequency_per_m: np.ndarray | None = None,
              configuration: dict | None = None, note: str = "") -> Path:
    """Write the (N, N, N) density [x, y, z] (and its support, PRTF, settings) as a CXI file at ``path`` (atomic),
    the volumes stored (z, y, x), x fastest, as viewers read them."""
    import h5py

    from spibatch.io.atomic import atomic_path

    path = Path(path)
    density = np.asarray(density)
    if density.ndim != 3 or np.asarray(support).shape != density.shape:
        raise ValueError(f"density {density.shape} and support {np.asarray(support).shape} must be one 3-D shape")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("cxi_version", data=CXI_VERSION)
        f.attrs.update({"creator": "spibatch", "default": "entry_1", "HDF5_Version": h5py.version.hdf5_version,
                        "h5py_version": h5py.version.version})
        entry = f.create_group("entry_1")
        entry.attrs.update({"NX_class": "NXentry", "default": "data_1"})
        entry.create_dataset("program_name", data=f"spibatch {__version__}")
        entry.create_dataset("start_time", data=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        image = entry.create_group("image_1")
        image.attrs.update({"NX_class": "NXdata", "signal": "data", "interpretation": "image"})
        kw = dict(chunks=True, shuffle=True, compression="gzip")
        image.create_dataset("data", data=_zyx(density.astype(np.complex64 if np.iscomplexobj(density) else np.float32)),
                             **kw)
        image["data"].attrs.update({"axes_order": "z, y, x", "note": "(z, y, x): x fastest"})
        image.create_dataset("mask", data=_zyx(np.asarray(support, np.float32)), **kw)
        image["mask"].attrs.update({"axes_order": "z, y, x", "description": "the support (fraction of kept starts "
                                    "holding each voxel, 0..1), not CXI bad-pixel flags"})
        image["support"] = h5py.SoftLink("/entry_1/image_1/mask")
        image.create_dataset("data_type", data="electron density")
        image.create_dataset("data_space", data="real")
        if voxel_size_m:
            image.create_dataset("image_size", data=np.array(density.shape, float) * float(voxel_size_m))
            image["image_size"].attrs["units"] = "m"
        if prtf is not None:
            image.create_dataset("prtf", data=np.asarray(prtf, np.float64))
            if prtf_frequency_per_m is not None:
                image.create_dataset("prtf_frequency", data=np.asarray(prtf_frequency_per_m, np.float64))
                image["prtf_frequency"].attrs["units"] = "1/m"
        process = image.create_group("process_1")
        process.attrs["NX_class"] = "NXprocess"
        process.create_dataset("program", data="spibatch")
        process.create_dataset("version", data=__version__)
        process.create_dataset("configuration", data=json.dumps(configuration or {}, default=str))
        if note:
            process.create_dataset("note", data=note)
        entry["data_1"] = h5py.SoftLink("/entry_1/image_1")
    return path


def density_in_truth_frame(density: np.ndarray, voxel_size_m: float | None, truth: np.ndarray,
                           truth_voxel_size_m: float | None, *, rotation: np.ndarray | None = None
                           ) -> tuple[np.ndarray, Alignment]:
    """The density (N, N, N) centred, [x, y, z], on the truth's grid (L, L, L) and in its frame: rotated by
    ``rotation`` (3 x 3, about the centre voxel, applied as :func:`spibatch.align.rotate_intensity` does, for
    an EMC run's arbitrary orientation), resampled onto the truth's voxel (cubic spline), moved by the
    translation and inversion twin that best fit the truth (sub-voxel), cropped or padded to L.
    Returns (volume float32 (L, L, L), how it was moved)."""
    density = np.asarray(density, np.float64)
    truth = np.asarray(truth, np.float64)
    if rotation is not None:
        from spibatch.align import rotate_intensity

        density = rotate_intensity(density, np.asarray(rotation, float), order=3)
    if voxel_size_m and truth_voxel_size_m and abs(voxel_size_m / truth_voxel_size_m - 1) > 1e-3:
        density = resample(density, voxel_size_m / truth_voxel_size_m)
    edge = max(density.shape[0], truth.shape[0])
    edge += (edge - truth.shape[0]) % 2              # same parity as the truth: its centre stays a voxel
    density = pad_centre(density, edge)
    moved, how = align(density, pad_centre(truth, edge))
    return pad_centre(moved, truth.shape[0]).astype(np.float32), how


def write_density_in_truth_frame(path: str | os.PathLike, density: np.ndarray, voxel_size_m: float | None,
                                 truth: np.ndarray, truth_voxel_size_m: float | None, *,
                                 rotation: np.ndarray | None = None, origin_angstrom=None) -> dict:
    """:func:`density_in_truth_frame` written as an MRC at ``path`` with the truth's voxel size (1 A when
    unknown) and origin (``origin_angstrom``: the truth's, so that ChimeraX overlays both, and the structure the
    truth was made from); returns {path, voxel_size_m, edge, shift_voxels, inverted, cc}."""
    from spibatch.io.mrc import write_mrc

    volume, how = density_in_truth_frame(density, voxel_size_m, truth, truth_voxel_size_m, rotation=rotation)
    voxel = truth_voxel_size_m or voxel_size_m
    write_mrc(path, volume, voxel * 1e10 if voxel else 1.0, origin_angstrom=origin_angstrom)
    return {"path": str(path), "voxel_size_m": voxel, "edge": int(volume.shape[0]),
            "shift_voxels": [round(float(s), 3) for s in how.shift], "inverted": bool(how.inverted),
            "cc": round(float(how.cc), 4)}
