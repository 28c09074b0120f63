"""Every file the monitor reads is opened here, and only through here: never outside the monitored root.

A run folder is written by others, and a symlink in it may point anywhere (``EMC.log -> /etc/passwd``).
:func:`open_inside` resolves the path, refuses it when it leaves the root
(:class:`~spibatch.monitor.paths.OutsideRoot`), opens the resolved path without following a
symlink put there since (``O_NOFOLLOW``), without blocking on a FIFO (``O_NONBLOCK``), only when it
is a regular file, and -- where ``/proc/self/fd`` exists -- checks once more that the file it holds
open lies under the root, so a folder swapped for a symlink between the check and the open is
refused too.  Readers on top: bytes, text, JSON, a text's tail, an HDF5 file, a file's ``stat``.

Errors, as the server answers them: :class:`NotFound` 404, :class:`OutsideRoot` 403,
:class:`NotReady` 503 (being written: retry), :class:`BadFile` 422 (complete but not showable).
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import BinaryIO

import numpy as np

from spibatch.monitor.lookup import Lookup
from spibatch.monitor.paths import NotFound, OutsideRoot, inside, within
from spibatch.monitor.values import integer, number

MAX_READ_BYTES = 64 << 20     # a JSON / YAML / JSON-lines file larger than this is not read whole (422)
MAX_CONFIG_BYTES = 256 << 10  # config.yaml (spibatch writes a few kB; YAML is parsed at ~1 s a MB in Python)
MAX_VOLUME_EDGE = 1024        # a volume's edge the monitor reads planes of (its chunks crossing a plane are read)
MAX_SERIES = 50_000_000       # values of a 1-D dataset read whole (one per frame: 10^7 frames is the scale docs)
TAIL_BYTES = 256 << 10        # the tail of a log shown on the page comes from this many last bytes
_PROC_FD = Path("/proc/self/fd")


class NotReady(Exception):
    """A file exists but cannot be read yet (being written, or truncated); retry later."""


class BadFile(Exception):
    """A file that reads but holds something the monitor cannot show (wrong types, shapes, too large)."""


def open_inside(root: Path, path: Path, lookup: Lookup | None = None) -> BinaryIO:
    """``path`` opened for reading (binary) when it is a regular file under ``root`` (resolved).

    OutsideRoot when it (or what was opened) leaves the root, NotFound when it is missing or not a
    regular file, BadFile when it cannot be read (permissions).  ``lookup``: resolve through it.
    """
    real = lookup.inside(path) if lookup is not None else inside(root, path)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        raise NotFound(f"{path.name} is not there") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:   # the resolved name is a symlink now: swapped since it was resolved
            raise OutsideRoot(f"{path.name} changed into a symlink while it was opened") from None
        if exc.errno in (errno.ENOTDIR, errno.ENAMETOOLONG):
            raise NotFound(f"{path.name} is not there") from None
        raise BadFile(f"{path.name} cannot be read ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(f"{path.name} is not a regular file")
        if lookup is not None:
            lookup.depends(os.fspath(real), st)
        if _PROC_FD.is_dir():
            held = Path(os.readlink(_PROC_FD / str(fd)))
            if not within(root, held):
                raise OutsideRoot(f"{path.name} is outside the monitored folder")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(root: Path, path: Path, limit: int = MAX_READ_BYTES, lookup: Lookup | None = None) -> bytes:
    """The whole file, when it is at most ``limit`` bytes (BadFile otherwise)."""
    with open_inside(root, path, lookup) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise BadFile(f"{path.name} is larger than {limit >> 20} MiB: not shown")
    return data


def read_text(root: Path, path: Path, limit: int = MAX_READ_BYTES, lookup: Lookup | None = None) -> str:
    return read_bytes(root, path, limit, lookup).decode("utf-8", errors="replace")


def read_json(root: Path, path: Path, lookup: Lookup | None = None):
    """The file's JSON value (NaN and infinities allowed in the file; callers clean them); NotReady when
    it is not complete JSON (being written, or cut short)."""
    try:
        return json.loads(read_text(root, path, lookup=lookup))
    except (ValueError, RecursionError):
        raise NotReady(f"{path.name}: not complete JSON yet") from None


def read_jsonl(root: Path, path: Path, lookup: Lookup | None = None) -> list[dict]:
    """The complete JSON lines of a file that are objects; a last line still being written is skipped."""
    rows = []
    for line in read_text(root, path, lookup=lookup).splitlines():
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def first_line_json(root: Path, path: Path, lookup: Lookup | None = None) -> dict | None:
    """The first JSON line of a file (only that line is read), or None when missing, refused or incomplete."""
    try:
        with open_inside(root, path, lookup) as fh:
            row = json.loads(fh.readline(1 << 20).decode("utf-8", errors="replace"))
    except (NotFound, OutsideRoot, BadFile, OSError, ValueError, RecursionError):
        return None
    return row if isinstance(row, dict) else None


def tail(root: Path, path: Path, lines: int) -> str:
    """The last ``lines`` lines of a text file (read from its last TAIL_BYTES)."""
    with open_inside(root, path) as fh:
        size = fh.seek(0, 2)
        fh.seek(max(0, size - TAIL_BYTES))
        text = fh.read(TAIL_BYTES).decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def stat_inside(root: Path, path: Path) -> os.stat_result | None:
    """``os.stat`` of a file under the root, None when it is missing or leads out."""
    try:
        return os.stat(inside(root, path))
    except (OSError, OutsideRoot):
        return None


def is_file_inside(root: Path, path: Path) -> bool:
    st = stat_inside(root, path)
    return st is not None and stat.S_ISREG(st.st_mode)


class open_h5:
    """``with open_h5(root, path) as f``: h5py.File read through :func:`open_inside`.

    A file that cannot be opened or read (truncated, being written by a program that does not write
    atomically) is NotReady; one whose contents are not what a reader expects (a scalar where a volume
    should be, a string attribute, ...) is BadFile.
    """

    def __init__(self, root: Path, path: Path):
        self.root, self.path = root, path

    def __enter__(self):
        import h5py

        from spibatch.io.hdf5 import other_files

        self.fh = open_inside(self.root, self.path)
        try:
            self.f = h5py.File(self.fh, "r")
        except Exception as exc:
            self.fh.close()
            raise NotReady(f"{self.path.name} cannot be read yet ({_first_line(exc)})") from None
        try:
            others = other_files(self.f)
            problem = None if not others else (   # spibatch writes none: bytes of any file (or a FIFO) outside
                f"{others[0][0]} keeps its data in another file ({others[0][1]}: {others[0][2]}); the monitor shows "
                "only data inside the run's files")   # the root would be served
        except Exception as exc:
            problem = f"cannot be shown ({_first_line(exc)})"
        if problem:
            self.__exit__(None, None, None)
            raise BadFile(f"{self.path.name}: {problem}")
        return self.f

    def __exit__(self, kind, exc, tb):
        try:
            self.f.close()
        finally:
            self.fh.close()
        if kind is None or issubclass(kind, (NotFound, NotReady, BadFile, OutsideRoot)):
            return False
        if issubclass(kind, (OSError, KeyError)):
            raise NotReady(f"{self.path.name} cannot be read yet ({_first_line(exc)})") from None
        if issubclass(kind, (ValueError, TypeError, IndexError, AttributeError, OverflowError, ZeroDivisionError)):
            raise BadFile(f"{self.path.name} cannot be shown ({kind.__name__}: {_first_line(exc)})") from None
        return False


def attr_number(f, name: str) -> float | None:
    try:
        value = f.attrs.get(name)
    except (OSError, KeyError, TypeError, ValueError):
        return None
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    return number(value)


def attr_int(f, name: str, default: int) -> int:
    value = integer(attr_number(f, name))
    return default if value is None else value


def volume(f, name: str, path: Path):
    """The dataset ``name`` when it is a cube (N, N, N), or Dragonfly's (1, N, N, N); BadFile otherwise."""
    import h5py

    ds = f[name]
    shape = getattr(ds, "shape", None) if isinstance(ds, h5py.Dataset) else None
    if shape is None or len(shape) not in (3, 4) or (len(shape) == 4 and shape[0] != 1) \
            or len(set(shape[-3:])) != 1 or shape[-1] == 0 or ds.dtype.kind not in "fiub":
        raise BadFile(f"{path.name}: {name} is not a 3-D volume of numbers ({shape})")
    if shape[-1] > MAX_VOLUME_EDGE:
        raise BadFile(f"{path.name}: {name} is {shape[-1]}^3; the monitor shows volumes up to {MAX_VOLUME_EDGE}^3")
    return ds


def dataset(f, names, path, required=True):
    for name in names:
        if name in f:
            size = getattr(f[name], "size", 0) or 0
            if size > MAX_SERIES:
                raise BadFile(f"{path.name}: {name} holds {size:,} values; the monitor reads up to {MAX_SERIES:,}")
            return np.asarray(f[name][()], dtype=float)
    if required:   # a readable file without it (Dragonfly's outputs have no best_probability): nothing to show
        raise NotFound(f"{path.name}: no dataset {names[0]}")
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()
    return text[0][:160] if text else exc.__class__.__name__
