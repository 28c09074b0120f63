"""HDF5 reading helpers shared by the format modules: every failure becomes an InputError."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from spibatch.errors import InputError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_hdf5(path: str | os.PathLike) -> bool:
    """True when ``path`` carries the HDF5 signature (at byte 0 or at a user-block offset 512, 1024, ...)."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        offset = 0
        while offset + 8 <= size:
            fh.seek(offset)
            if fh.read(8) == HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else 2 * offset
    return False


@contextlib.contextmanager
def open_hdf5(path: str | os.PathLike, fix: str) -> Iterator[h5py.File]:
    """Open ``path`` read-only; a missing, truncated or corrupt file raises InputError with ``fix``."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path=path, fix=fix)
    if not is_hdf5(path):
        raise InputError("not an HDF5 file (no HDF5 signature)", path=path, fix=fix)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"HDF5 file truncated or corrupt ({short_reason(exc)})", path=path, fix=fix) from None
    with f:
        check_other_files(f, path)
        yield f


def other_files(f: h5py.File) -> list[tuple[str, str, str]]:
    """``(dataset, how, file)`` for every dataset of ``f`` whose data live in another file: external storage
    (raw bytes of any file) or a virtual dataset's sources (``"."``, the file itself, left out).  Nothing is read."""
    found = []

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset):
            return
        plist = obj.id.get_create_plist()
        for i in range(plist.get_external_count()):
            found.append((name, "external storage", plist.get_external(i)[0].decode(errors="replace")))
        if plist.get_layout() == h5py.h5d.VIRTUAL:
            for i in range(plist.get_virtual_count()):
                source = plist.get_virtual_filename(i)
                if source != ".":
                    found.append((name, "a virtual dataset", source))

    f.visititems(visit)
    return found


def check_other_files(f: h5py.File, path: str | os.PathLike) -> None:
    """InputError when a dataset of ``f`` keeps its data in a file that is not a regular file (a FIFO or a device
    would hang or never end the read).  Data in other regular files (a virtual CXI file over a run's files)
    are read as HDF5 reads them; a file that is missing fails at the read, as a corrupt one does."""
    base = Path(path).resolve().parent
    for name, how, other in other_files(f):
        if "%" in other:          # a virtual source's printf pattern: HDF5 expands it at the read
            continue
        for candidate in ([Path(other)] if os.path.isabs(other) else [base / other, Path.cwd() / other]):
            if os.path.lexists(candidate):
                if not candidate.is_file():
                    raise InputError(f"its data are {how} in {candidate}, which is not a regular file", path=path,
                                     field=name, fix="copy the data into a regular file (h5repack) and give that")
                break


def require_dataset(f: h5py.File, name: str, path: str | os.PathLike, fix: str) -> h5py.Dataset:
    """The dataset ``name`` of ``f``; InputError when it is missing or is a group."""
    obj = f.get(name)
    if not isinstance(obj, h5py.Dataset):
        problem = "dataset missing" if obj is None else "expected a dataset, found a group"
        raise InputError(problem, path=path, field=name, fix=fix)
    return obj


def read_dataset(ds: h5py.Dataset, selection, path: str | os.PathLike) -> np.ndarray:
    """``ds[selection]``; an HDF5 read failure (corrupt chunk, truncated file) becomes InputError."""
    try:
        return ds[selection]
    except OSError as exc:
        raise InputError(f"cannot read: file truncated or corrupt ({short_reason(exc)})", path=path,
                         field=ds.name.lstrip("/"), fix="recreate or copy the file again") from None


def short_reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 120 else text[:117] + "..."
