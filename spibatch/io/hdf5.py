"""HDF5 reading helpers shared by the format modules: every failure becomes an InputError."""

from __future__ import annotations

import contextlib
import math
import os
from collections import Counter
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from spibatch.errors import InputError
from spibatch.io.files import require_file

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
    require_file(path, fix=fix)
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
    """``(object, how, file)`` for every object of ``f`` whose data live in another file: external storage
    (raw bytes of any file), a virtual dataset's sources (``"."``, the file itself, left out) and external
    links (not followed).  Nothing is read; soft links are not followed (their targets are reached by name)."""
    found, seen = [], set()

    def dataset(name, obj):
        plist = obj.id.get_create_plist()
        for i in range(plist.get_external_count()):
            found.append((name, "external storage", plist.get_external(i)[0].decode(errors="replace")))
        if plist.get_layout() == h5py.h5d.VIRTUAL:
            for i in range(plist.get_virtual_count()):
                source = plist.get_virtual_filename(i)
                if source != ".":
                    found.append((name, "a virtual dataset", source))

    def walk(group, prefix):
        for key in group:
            name = f"{prefix}{key}"
            link = group.get(key, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                found.append((name, "an external link", link.filename))
            elif isinstance(link, h5py.HardLink):
                obj = group.get(key)
                if obj is None or obj.id in seen or len(seen) > MAX_OBJECTS:
                    continue
                seen.add(obj.id)
                if isinstance(obj, h5py.Dataset):
                    dataset(name, obj)
                elif isinstance(obj, h5py.Group):
                    walk(obj, name + "/")

    walk(f, "")
    return found


MAX_OBJECTS = 100_000   # objects of one file looked at by other_files (a file of ours holds a few dozen)


def check_other_files(f: h5py.File, path: str | os.PathLike, depth: int = 0) -> None:
    """InputError when an object of ``f`` keeps its data in a file that is not a regular file (a FIFO or a
    device would hang or never end the read), also behind an external link to a regular HDF5 file (checked
    the same way, three links deep at most).  Data in other regular files (a virtual CXI file over a run's
    files) are read as HDF5 reads them; a virtual dataset's source that is missing is refused too (HDF5 reads
    its frames as fill values: empty frames ingested as patterns), another missing file fails at the read."""
    base = Path(path).resolve().parent
    for name, how, other in other_files(f):
        if "%" in other:          # a virtual source's printf pattern: HDF5 expands it at the read
            continue
        candidates = [Path(other)] if os.path.isabs(other) else [base / other, Path.cwd() / other]
        if how == "a virtual dataset" and not any(os.path.lexists(c) for c in candidates + _vds_fallbacks(other, base)):
            raise InputError(f"its data are {how} over {other}, which is missing (its frames would read as fill "
                             "values)", path=path, field=name, fix="put the source files beside it, or give a file "
                             "that holds the frames (h5repack)")
        for candidate in candidates:
            if not os.path.lexists(candidate):
                continue
            if not candidate.is_file():
                raise InputError(f"its data are {how} in {candidate}, which is not a regular file", path=path,
                                 field=name, fix="copy the data into a regular file (h5repack) and give that")
            if how == "an external link":
                if depth >= 3:
                    raise InputError(f"{how} to {candidate} leads through more than 3 files", path=path,
                                     field=name, fix="copy the data into the file (h5repack)")
                if is_hdf5(candidate):
                    try:
                        with h5py.File(candidate, "r") as linked:
                            check_other_files(linked, candidate, depth + 1)
                    except InputError as inner:   # named from the file the user gave
                        raise InputError(f"{how} to {candidate}, whose {inner.field}: {inner.problem}", path=path,
                                         field=name, fix=inner.fix) from None
            break


def _vds_fallbacks(source: str, base: Path) -> list[Path]:
    """Where else HDF5 looks for a virtual dataset's source file: the ``HDF5_VDS_PREFIX`` folders, and for an
    absolute path its name beside the virtual file and in the working folder (a copied run's files)."""
    names = [source] + ([os.path.basename(source)] if os.path.isabs(source) else [])
    folders = [Path(p) for p in os.environ.get("HDF5_VDS_PREFIX", "").split(os.pathsep) if p] + [base, Path.cwd()]
    return [folder / name for folder in folders for name in names if not os.path.isabs(name)]


def require_dataset(f: h5py.File, name: str, path: str | os.PathLike, fix: str) -> h5py.Dataset:
    """The dataset ``name`` of ``f``; InputError when it is missing, is a group, or its links loop."""
    try:
        obj = f.get(name)
    except (RuntimeError, KeyError, OSError) as exc:   # "Special link traversal failed (too many links)"
        raise InputError(f"cannot follow the path ({short_reason(exc)}): a soft link loop?", path=path, field=name,
                         fix=fix) from None
    if not isinstance(obj, h5py.Dataset):
        problem = "dataset missing" if obj is None else "expected a dataset, found a group"
        raise InputError(problem, path=path, field=name, fix=fix)
    return obj


def written_frames(ds: h5py.Dataset) -> int:
    """How many leading frames of a (frames, ...) dataset were written whole: every chunk of each present
    (HDF5 reads the others as fill values; a 3 kB file can declare 1e9 frames).  Contiguous: all or none
    (storage allocated or not); virtual and external layouts: all (left to their sources)."""
    n = ds.shape[0] if ds.ndim else 0
    if ds.size == 0 or ds.is_virtual or ds.external:
        return n
    if ds.chunks is None:
        return n if ds.id.get_storage_size() > 0 else 0
    per_slab = math.prod(-(-size // chunk) for size, chunk in zip(ds.shape[1:], ds.chunks[1:]))
    count = ds.id.get_num_chunks()
    if count >= -(-n // ds.chunks[0]) * per_slab:
        return n
    if count > MAX_CHUNKS_LISTED:     # too many to list quickly: as if written in order
        return min(count // per_slab * ds.chunks[0], n)
    slabs = Counter(ds.id.get_chunk_info(k).chunk_offset[0] // ds.chunks[0] for k in range(count))
    whole = 0
    while slabs.get(whole, 0) == per_slab:
        whole += 1
    return min(whole * ds.chunks[0], n)


MAX_CHUNKS_LISTED = 10 ** 6    # get_chunk_info ~2 us each


def check_written(ds: h5py.Dataset, path: str | os.PathLike, fix: str) -> None:
    """InputError when a (frames, ...) dataset declares frames never written whole (:func:`written_frames`)."""
    whole = written_frames(ds)
    if whole < ds.shape[0]:
        raise InputError(f"declares {ds.shape[0]:,} frames but only the first {whole:,} were written whole (the rest "
                         "would read as fill values)", path=path, field=ds.name.lstrip("/"), fix=fix)


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
