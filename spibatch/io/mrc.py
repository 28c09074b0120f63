"""MRC volumes (CCP-EM MRC2014), for densities that ChimeraX, PyMOL or Coot can open.

Volumes are indexed ``[x, y, z]`` everywhere in spibatch; these functions
transpose to and from MRC's (section, row, column) = (z, y, x) storage order,
so a volume read back equals the one written.  The voxel size is in Angstrom,
as MRC files store it.  ``mrcfile`` is imported inside
the functions so that importing spibatch.io stays light.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from spibatch.errors import InputError
from spibatch.io.atomic import atomic_path
from spibatch.io.files import require_file


def write_mrc(path: str | os.PathLike, volume: np.ndarray, voxel_size_angstrom: float | None,
              origin_angstrom: tuple[float, float, float] | None = None) -> None:
    """Write ``volume`` [x, y, z], stored as float32, with an isotropic voxel size in Angstrom (atomic; None: not
    known, a cell of 0, which readers -- ours too -- take as no voxel); ``origin_angstrom``: where voxel (0, 0, 0)
    lies (the header's origin, as ChimeraX places the map)."""
    import mrcfile

    volume = np.asarray(volume, np.float32)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3-D [x, y, z], got shape {volume.shape}")
    if voxel_size_angstrom is not None and not (np.isfinite(voxel_size_angstrom) and voxel_size_angstrom > 0):
        raise ValueError(f"voxel_size_angstrom must be positive, got {voxel_size_angstrom}")
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(volume.transpose(2, 1, 0)))
            mrc.voxel_size = float(voxel_size_angstrom or 0.0)
            mrc.header.label[0] = b"spibatch".ljust(80)   # not mrcfile's "Created by ... <time>": the same inputs
            mrc.header.nlabl = 1                            # give the same bytes
            if origin_angstrom is not None:
                mrc.header.origin = tuple(float(v) for v in origin_angstrom)


def check_extended_header(path: Path, field: str | None = None, fix: str = "") -> None:
    """InputError when the header's extended-header length (NSYMBT, bytes 92-95) is negative or runs past the
    end of the file: mrcfile would allocate it (2 GB for a 38 kB file) before finding the file too short."""
    with open(path, "rb") as fh:
        head = fh.read(1024)
    if len(head) < 1024:
        return                      # too short for a header: mrcfile says so
    order = ">" if head[212] == 0x11 else "<"    # the machine stamp: big-endian 0x11, else little-endian
    nsymbt = int(np.frombuffer(head[92:96], f"{order}i4")[0])
    size = path.stat().st_size
    if nsymbt < 0 or 1024 + nsymbt > size:
        raise InputError(f"not a valid MRC file (its extended header of {nsymbt} bytes does not fit the file's "
                         f"{size} bytes)", path=path, field=field, fix=fix)


def xyz_order(header, path) -> tuple[int, int, int]:
    """The transpose that takes an MRC's data array (sections, rows, columns) to (x, y, z): from the header's
    mapc / mapr / maps (the axis of the columns, rows and sections: 1, 2, 3 = x, y, z; MRC2014 allows any
    order, and a map of order 3, 2, 1 read as 1, 2, 3 was compared transposed without a word; all 0, as some
    older writers leave them: 1, 2, 3); InputError when they are not an order of 1, 2, 3."""
    data_axes = [int(header.maps), int(header.mapr), int(header.mapc)]   # what each data axis is
    if data_axes == [0, 0, 0]:   # left unset by some older writers: the usual order
        data_axes = [3, 2, 1]
    if sorted(data_axes) != [1, 2, 3]:
        raise InputError(f"axis order mapc, mapr, maps = {data_axes[2]}, {data_axes[1]}, {data_axes[0]} is not an "
                         "order of 1, 2, 3", path=path, field="mapc/mapr/maps",
                         fix="correct the header (1, 2, 3 for columns x, rows y, sections z)")
    return tuple(data_axes.index(axis) for axis in (1, 2, 3))


def read_mrc(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Read an MRC file: ``(volume [x, y, z] float32, voxel_size_angstrom)``.

    Raises InputError when the file is missing, is not a valid MRC file, does
    not hold one 3-D volume or has different voxel sizes along its axes.
    """
    import mrcfile

    path = Path(path)
    fix = "give an MRC2014 file holding one 3-D volume (e.g. written by `spibatch phase`)"
    require_file(path, fix=fix)
    check_extended_header(path, fix=fix)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mrcfile warns before it raises; the InputError says it once
            with mrcfile.open(path, permissive=False) as mrc:
                if mrc.data is not None and mrc.data.dtype.kind not in "iuf":   # mode 3/4: complex
                    raise InputError(f"holds {mrc.data.dtype} values (MRC mode {int(mrc.header.mode)}): the "
                                     "imaginary part would be dropped", path=path, field="mode",
                                     fix="give a real-valued volume (MRC mode 0, 1, 2, 6 or 12)")
                order = xyz_order(mrc.header, path)
                volume = np.array(mrc.data, dtype=np.float32)
                volume = volume.transpose(order) if volume.ndim == 3 else volume
                size = mrc.voxel_size
                voxel = (float(size.x), float(size.y), float(size.z))
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"not a valid MRC file ({' '.join(str(exc).split())[:120]})", path=path,
                         fix=fix) from None
    if volume.ndim != 3:
        raise InputError(f"expected a 3-D volume, found shape {volume.shape}", path=path, field="data", fix=fix)
    if not all(np.isfinite(voxel)) or min(voxel) < 0:
        raise InputError(f"voxel size {voxel} Angstrom is not a length (NaN, infinite or negative)", path=path,
                         field="voxel_size", fix="correct the header's cell (or set it to 0: not known)")
    if not np.allclose(voxel, voxel[0], rtol=1e-5):
        raise InputError(f"voxel size differs between axes {voxel} Angstrom", path=path, field="voxel_size",
                         fix="resample the volume to cubic voxels")
    return volume, voxel[0]


__all__ = ["write_mrc", "read_mrc", "check_extended_header", "xyz_order"]
