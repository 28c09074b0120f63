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
        if "unable to lock file" in str(exc):     # a writer holds it open: the file is fine
            raise InputError("another process holds it open for writing (HDF5's file lock)", path=path,
                             fix="wait until it is written and closed (or, if it is only being read elsewhere, "
                             "set HDF5_USE_FILE_LOCKING=FALSE)") from None
        raise InputError(f"HDF5 file truncated or corrupt ({short_reason(exc)})", path=path, fix=fix) from None
    with f:
        check_other_files(f, path)
        yield f


def other_files(f: h5py.File) -> list[tuple[str, str, str]]:
    """``(object, how, file)`` for every object of ``f`` whose data live in another file: external storage
    (raw bytes of any file), a virtual dataset's sources (``"."``, the file itself, left out) and external
    links (not followed).  Nothing is read; soft links are not followed (their targets are reached by name).
    InputError (no path: the caller names the file) for an object name that is not UTF-8 text (h5py cannot
    look it up: a traceback at the first lookup) and for a file of more than MAX_OBJECTS objects (the objects
    past the limit went unchecked)."""
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
        for raw in group.id:        # bytes: a name that is not UTF-8 must not reach h5py's str lookups
            try:
                key = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"holds an object whose name is not UTF-8 text ({raw!r} in /{prefix})",
                                 fix="copy the datasets needed into a new file (h5copy)") from None
            name = f"{prefix}{key}"
            link = group.get(key, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                found.append((name, "an external link", link.filename))
            elif isinstance(link, h5py.HardLink):
                obj = group.get(key)
                if obj is None or obj.id in seen:
                    continue
                if len(seen) >= MAX_OBJECTS:
                    raise InputError(f"holds more than {MAX_OBJECTS:,} objects, too many to check where their "
                                     "data live", fix="copy the datasets needed into a new file (h5copy)")
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
    device would hang or never end the read) in any place HDF5 may look for it (:func:`where_hdf5_looks`),
    also behind an external link to a regular HDF5 file (checked the same way, three links deep at most).
    Data in other regular HDF5 files (a virtual CXI file over a run's files) are read as HDF5 reads them; raw
    external storage only from the file's own folder (any other file's bytes would be read as data); a virtual
    dataset's source or an external storage file that is missing everywhere is refused too (HDF5 reads a
    virtual dataset's frames as fill values: empty frames ingested as patterns); an external link's missing
    target is said when its object is asked for (:func:`require_dataset`)."""
    base = Path(path).resolve().parent
    try:
        others = other_files(f)
    except InputError as exc:
        raise InputError(exc.problem, path=path, fix=exc.fix) from None
    for name, how, other in others:
        if "%" in other:          # a virtual source's printf pattern: HDF5 expands it at the read
            continue
        candidates = where_hdf5_looks(how, other, base)
        present = [c for c in candidates if os.path.lexists(c)]
        if not present and how == "a virtual dataset":
            raise InputError(f"its data are {how} over {other}, which is missing (its frames would read as fill "
                             "values)", path=path, field=name, fix="put the source files beside it, or give a file "
                             "that holds the frames (h5repack)")
        if not present and how == "external storage":
            raise InputError(f"its data are {how} in {other}, which is missing (HDF5 cannot read it)", path=path,
                             field=name, fix="put the file it names beside it, or give a file that holds the data "
                             "(h5repack)")
        for candidate in present:
            if not candidate.is_file():
                where = f"it is {how} to" if how == "an external link" else f"its data are {how} in"
                raise InputError(f"{where} {candidate}, which is not a regular file", path=path,
                                 field=name, fix="copy the data into a regular file (h5repack) and give that")
            if how == "external storage" and not candidate.resolve().is_relative_to(base):
                raise InputError(f"its data are {how} in {candidate}, outside the file's own folder: any file's bytes "
                                 "read as data (a private file's contents in the results)", path=path, field=name,
                                 fix="copy the data into the file (h5repack), or put the raw file in its folder")
        if how == "an external link" and present and is_hdf5(present[0]):
            if depth >= 3:
                raise InputError(f"{how} to {present[0]} leads through more than 3 files", path=path,
                                 field=name, fix="copy the data into the file (h5repack)")
            try:
                with h5py.File(present[0], "r") as linked:
                    check_other_files(linked, present[0], depth + 1)
            except InputError as inner:   # named from the file the user gave
                raise InputError(f"{how} to {present[0]}, whose {inner.field or 'file'}: {inner.problem}",
                                 path=path, field=name, fix=inner.fix) from None
            except OSError as exc:
                raise InputError(f"{how} to {present[0]}, which cannot be opened ({short_reason(exc)})",
                                 path=path, field=name, fix="copy the data into the file (h5repack)") from None


def where_hdf5_looks(how: str, other: str, base: Path) -> list[Path]:
    """Every path HDF5 may open for an object's data in ``other`` (a file of ``base``'s folder), first first.

    External links and virtual sources: an absolute path, then (relative names, and an absolute one's file
    name) the ``HDF5_EXT_PREFIX`` / ``HDF5_VDS_PREFIX`` folders, the folder of the file, the working folder.
    External storage: an absolute path as it is; a relative one against the ``HDF5_EXTFILE_PREFIX`` folders
    (``${ORIGIN}``: the file's folder) and the working folder (HDF5's default) -- and the file's folder, which
    older HDF5 versions used."""
    if how == "external storage":
        if os.path.isabs(other):
            return [Path(other)]
        prefixes = [p.replace("${ORIGIN}", str(base)) for p in os.environ.get("HDF5_EXTFILE_PREFIX", "").split(
            os.pathsep) if p]
        return [Path(p) / other for p in prefixes] + [Path.cwd() / other, base / other]
    env = "HDF5_VDS_PREFIX" if how == "a virtual dataset" else "HDF5_EXT_PREFIX"
    names = [os.path.basename(other)] if os.path.isabs(other) else [other]
    folders = [Path(p) for p in os.environ.get(env, "").split(os.pathsep) if p] + [base, Path.cwd()]
    return ([Path(other)] if os.path.isabs(other) else []) + [folder / name for folder in folders for name in names]


def require_dataset(f: h5py.File, name: str, path: str | os.PathLike, fix: str) -> h5py.Dataset:
    """The dataset ``name`` of ``f``; InputError when it is missing, is a group, or its links loop."""
    try:
        obj = f.get(name)
    except (RuntimeError, KeyError, OSError) as exc:   # "Special link traversal failed (too many links)"
        raise InputError(f"cannot follow the path ({short_reason(exc)}): a soft link loop?", path=path, field=name,
                         fix=fix) from None
    if not isinstance(obj, h5py.Dataset):
        problem = ("expected a dataset, found a group" if obj is not None else
                   _broken_link(f, name, Path(path).resolve().parent) or "dataset missing")
        raise InputError(problem, path=path, field=name, fix=fix)
    return obj


def _broken_link(f: h5py.File, name: str, base: Path) -> str | None:
    """Why the external link ``name`` of ``f`` leads nowhere (its file missing, not HDF5, or without the
    object), None when ``name`` is no external link."""
    try:
        link = f.get(name, getlink=True)
    except (RuntimeError, KeyError, OSError, ValueError):
        return None
    if not isinstance(link, h5py.ExternalLink):
        return None
    target = f"an external link to {link.filename}:{link.path}"
    present = [c for c in where_hdf5_looks("an external link", link.filename, base) if os.path.lexists(c)]
    if not present:
        return f"{target}, whose file is missing"
    if not is_hdf5(present[0]):
        return f"{target}, whose file {present[0]} is not an HDF5 file"
    return f"{target}, which {present[0]} does not hold"


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
