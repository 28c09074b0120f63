"""Atomic file writes: a temporary file in the same directory, then a rename.

A crash (or an exception) while writing never leaves a truncated file under
the final name, and never removes an earlier file of that name.

A full disk (or a quota, or the shell's file-size limit, ``ulimit -f``) is one clean
:class:`DiskFull` error naming the file (an :class:`~spibatch.errors.InputError`: one line,
exit 2); the temporary file is removed, earlier results stay as they were.  HDF5 files are
built in memory (:func:`write_hdf5`) and written by Python, so that the HDF5 library never sees
a failing write (on a full disk it printed pages of error stacks, and crashed at times).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from spibatch.errors import InputError

# errno -> what the one line says
FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
        errno.EFBIG: "file too large (the file-size limit, `ulimit -f`, or the file system's)"}
# how a fix says to go on; a run folder's owner (spibatch.rundir) puts the command that does it in its place
AGAIN = "resume or run again"


def say_how_to_go_on(exc: BaseException, command: str) -> None:
    """Put ``command`` (the one that goes on after a full disk or a refused write) in the place of :data:`AGAIN` in
    ``exc``'s line, when it is an InputError that says it (also one relayed from a stage, in its problem)."""
    if isinstance(exc, InputError) and AGAIN in str(exc):
        exc.problem, exc.fix = (None if text is None else text.replace(AGAIN, f"go on with: {command}")
                                for text in (exc.problem, exc.fix))


class DiskFull(InputError):
    """A write failed for lack of room: the disk is full, a quota is reached, or the file-size limit."""


def disk_full(exc: BaseException, path: str | os.PathLike, need: int | None = None) -> DiskFull | None:
    """The :class:`DiskFull` error for ``exc`` while writing ``path`` (``need``: the bytes that did not fit, when
    known), or None when ``exc`` is something else.

    Knows OSError's errno and h5py's messages (which carry ``errno = 28`` in their text)."""
    if isinstance(exc, DiskFull):
        return exc
    if not isinstance(exc, OSError):
        return None
    code = exc.errno if exc.errno in FULL else next((c for c in FULL if f"errno = {c}," in str(exc)), None)
    if code is None:
        return None
    free = f"needs about {need / 1e6:.1f} MB more" if need else ""
    if code == errno.EFBIG:
        return DiskFull(f"{FULL[code]} while writing it" + (f" ({free})" if free else ""), path=path,
                        fix=f"raise the file-size limit (ulimit -f), then {AGAIN}; earlier results are intact")
    with contextlib.suppress(OSError):
        free += (", " if free else "") + f"{shutil.disk_usage(Path(path).parent).free / 1e6:.1f} MB free there"
    return DiskFull(f"{FULL[code]} while writing it" + (f" ({free})" if free else ""), path=path,
                    fix=f"free some space (or choose another --out), then {AGAIN}; earlier results are intact")


UNWRITABLE = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted (an immutable folder?)",
              errno.EROFS: "read-only file system"}


def unwritable(exc: BaseException, path: str | os.PathLike) -> InputError | None:
    """One line for a write refused by permissions or a read-only file system (``exc`` an OSError with such an
    errno), else None."""
    if not isinstance(exc, OSError) or exc.errno not in UNWRITABLE:
        return None
    return InputError(f"cannot write it ({UNWRITABLE[exc.errno]})", path=path,
                      fix=f"make its folder writable, then {AGAIN} (earlier results are intact)")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` on success.

    The caller writes the whole file to the yielded path (h5py, mrcfile,
    numpy, ...).  On an exception the temporary file is removed and ``final``
    is left as it was; a full disk is raised as :class:`DiskFull` (one line), a folder standing at ``final``
    as InputError before anything is written.
    """
    final = Path(final)
    if final.is_dir():   # os.replace would fail with IsADirectoryError after the whole file was written
        raise InputError("is a folder, where spibatch writes a file of that name", path=final,
                         fix="move the folder away (or rename it)")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    except OSError as exc:
        raise disk_full(exc, final) or unwritable(exc, final) or exc from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        full = disk_full(exc, final) or unwritable(exc, final)
        if full is not None and full is not exc:
            raise full from None
        raise


def remove_partial_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary ``.NAME.*.part`` files (:func:`atomic_path`'s) that writers killed mid-write left
    anywhere under ``folder``; call it holding the folder's lock (nothing else writes there).  Returns them."""
    removed = []
    for part in Path(folder).rglob(".*.part"):
        if part.is_file():
            part.unlink(missing_ok=True)
            removed.append(part)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(final: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``final`` atomically and return its path."""
    return write_bytes(final, text.encode("utf-8"))


def write_bytes(final: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``final`` atomically (flushed to the disk before the rename) and return its path."""
    with atomic_path(final) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()   # a full disk shows here (or in write), inside the with: the temporary file goes
    return Path(final)


_images = itertools.count()


def write_hdf5(final: str | os.PathLike, fill: Callable) -> Path:
    """Write an HDF5 file atomically: ``fill(f)`` fills an empty ``h5py.File`` built in memory, whose bytes
    (the same as a file written on disk) are then written by :func:`write_bytes`.  Returns the path."""
    import h5py

    name = f"spibatch-image-{os.getpid()}-{next(_images)}"   # the in-memory file's name: unique while open
    with h5py.File(name, "w", driver="core", backing_store=False) as f:
        fill(f)
        f.flush()
        image = f.id.get_file_image()
    return write_bytes(final, image)
