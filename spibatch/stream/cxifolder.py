"""A folder where CXI files appear (what other facilities write), taken in name order.

A file is read once it has not changed for ``settle_s`` and opens as HDF5 (a writer that renames
a finished file into the folder is read at once).  Frames are at ``/entry_1/data_1/data`` (CXI),
``(frames, y, x)`` or ``(frames, modules, ss, fs)``.  Train and pulse IDs come from
``/entry_1/trainId`` and ``/entry_1/pulseId`` where the file has them (EXtra-data's CXI export
writes these); otherwise the file is one "train" numbered by its place in the name order (from 1)
and the pulse ID is the frame within the file.  The follower records the names of the files whose
trains it committed (:attr:`CxiFolderSource.finished`) and a restarted follower gives them back
(:meth:`CxiFolderSource.restore`), so the numbers go on where they were even when files were moved
away or arrived out of name order meanwhile.  A file that arrives after a later-named one was taken is
taken too (numbered in the order taken).  A file that cannot be read is reported and skipped; one its
writer still holds (an HDF5 lock, "open for write", a truncated end, permission denied) is tried again
until it opens, for ``retry_s`` (:data:`RETRY_S`) at most, later files waiting behind it.  While a file is
still changing the source is ``waiting`` (the follow's idle time-out does not run out under a slow writer).  A file already taken that comes
again under another name (renamed: the same inode, size and time) is skipped with one line; one that
changes after it was read is said and counted once ("changed after reading": its new frames are not read).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from spibatch.stream.blocks import Block, Skipped

log = logging.getLogger("spibatch")

DATA = "/entry_1/data_1/data"
TRAIN_IDS, PULSE_IDS = "/entry_1/trainId", "/entry_1/pulseId"
MAX_BLOCK_BYTES = 2 << 30   # frames read at once (as float32): a file without train IDs is one train
RETRY_S = 30.0              # how long a file its writer still holds is tried again before it is skipped
NOT_READY = ("unable to lock file", "already open for write", "truncated file", "permission denied",
             "resource temporarily unavailable")   # h5py's open errors of a file still being written


class CxiFolderSource:
    """Follow ``folder`` for CXI files matching ``pattern``; frames of ``frame_shape``, ``frames_per_block``
    at a time (whole trains)."""

    def __init__(self, folder: str | os.PathLike, frame_shape: tuple[int, ...], *, pattern: str = "*.cxi",
                 data_path: str = DATA, settle_s: float = 1.0, frames_per_block: int = 256,
                 retry_s: float = RETRY_S):
        self.folder, self.pattern, self.data_path = Path(folder), pattern, data_path
        self.frame_shape, self.settle_s, self.frames_per_block = tuple(frame_shape), settle_s, frames_per_block
        self.retry_s = retry_s
        self.name = f"CXI folder {self.folder}"
        self.ended: str | None = None
        self.done: list[str] = []          # file names taken, in order
        self.finished: list[str] = []      # files read to the end (their last item handed out), in order
        self.skip = -1
        self.waiting = False               # a file is still changing (or held by its writer): more will come
        self._seen: dict[str, tuple] = {}
        self._taken: dict[str, tuple] = {}       # name -> (device, inode, size, mtime) when taken (until it changes)
        self._retry: dict[str, tuple] = {}       # name -> (first failed open, next try): its writer holds it
        self._changed: list = []                 # Skipped items waiting to be handed out
        self._current = None

    def skip_through(self, train_id: int) -> None:
        self.skip = int(train_id)

    def restore(self, names: list[str]) -> None:
        """A restarted follow: ``names`` (in the order taken) were read to the end and committed before."""
        self.done = list(names)

    def close(self) -> None:
        self._current = None

    def read(self) -> list:
        while True:
            if self._changed:
                return [self._changed.pop(0)]
            if self._current is None:
                path = self._next_file()
                if path is None:
                    return [self._changed.pop(0)] if self._changed else []
                self._current = self._file(path, len(self.done))   # its place in the name order, from 1
            items = next(self._current, None)
            if items is not None:
                return items
            self._current = None

    def _next_file(self) -> Path | None:
        taken = set(self.done)
        present = sorted(p.name for p in self.folder.glob(self.pattern) if not p.name.startswith("."))
        names = [name for name in present if name not in taken]
        self._check_taken([name for name in present if name in self._taken])
        now = time.monotonic()
        stats = {}
        for name in names:   # every file settles from when it was first seen unchanged, all at once (not one per
            try:             # poll: a resumed follow walking many files already ingested would take settle_s each)
                stat = stats[name] = (self.folder / name).stat()
                stamp = (stat.st_size, stat.st_mtime_ns)
            except FileNotFoundError:
                continue
            except OSError as error:     # a symbolic link loop, a name too long: read (and reported) as it is
                stamp = ("error", error.errno)
            if self._seen.get(name, (None,))[0] != stamp:
                self._seen[name] = (stamp, now)
        self.waiting = False
        for name in names:
            if name not in self._seen:
                continue
            if now - self._seen[name][1] < self.settle_s or now < self._retry.get(name, (0.0, 0.0))[1]:
                self.waiting = True      # still being written (or held by its writer): the next poll looks again
                return None
            stat = stats.get(name)
            key = None if stat is None else (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
            before = next((old for old, same in self._taken.items() if same == key), None) if key else None
            if before is not None:     # a file taken before, renamed: its frames are in
                self.done.append(name)
                self.finished.append(name)
                log.warning("follow: %s: %s is %s, taken before, under another name: skipped", self.name, name,
                            before)
                continue
            if self.done and name < self.done[-1]:
                log.info("follow: %s: %s appeared after %s, out of name order: taken now", self.name, name,
                         self.done[-1])
            self.done.append(name)
            if key is not None:
                self._taken[name] = key
            return self.folder / name
        return None

    def _check_taken(self, names: list[str]) -> None:
        """A file taken whose size or time changed since (a writer that went on appending after a pause longer
        than ``settle_s``): said and counted once -- its new frames are not read."""
        for name in names:
            try:
                stat = (self.folder / name).stat()
            except OSError:
                continue
            if (stat.st_size, stat.st_mtime_ns) != self._taken[name][2:]:
                del self._taken[name]
                self._changed.append(Skipped(
                    "changed after reading", name, "file", f"changed after it was read (settle_s {self.settle_s:g} s "
                    "passed with no change): frames written since are not read; write each file whole, or rename "
                    "it into the folder when it is finished, or raise source.settle_s", (), 0))

    def _not_ready(self, path: Path, error: OSError) -> bool:
        """Whether ``path`` failed to open because its writer still holds it: then it is put back, to be tried
        again after ``settle_s`` (True), until ``retry_s`` have passed since its first failure."""
        text = str(error).lower()
        if not (isinstance(error, PermissionError) or any(word in text for word in NOT_READY)):
            return False
        now = time.monotonic()
        first = self._retry.get(path.name, (now, now))[0]
        if now - first > self.retry_s or (now == first and self.retry_s <= 0):
            return False
        if now == first:
            log.info("follow: %s: %s cannot be opened yet (%s): tried again for up to %g s", self.name, path.name,
                     " ".join(str(error).split())[:120], self.retry_s)
        self._retry[path.name] = (first, now + max(self.settle_s, 0.5))
        self.done.remove(path.name)
        self._taken.pop(path.name, None)
        return True

    def _file(self, path: Path, ordinal: int):
        """The file's blocks; whatever is wrong with it (beyond what :meth:`_blocks` says itself) skips the rest of
        the file with one line, never the follow."""
        self._ended = False
        try:
            yield from self._blocks(path, ordinal)
        except Exception as exc:  # noqa: BLE001 - a file of the folder is anybody's: it costs its trains only
            text = " ".join(str(exc).split())[:160]
            self._end(path)
            yield [Skipped("unreadable file", path.name, "file", f"{exc.__class__.__name__}: {text}")]
        self._end(path)

    def _end(self, path: Path) -> None:
        """The file is read to its end (said before its last item is handed out: a follower that commits that
        item and is then killed while it waits for the next file must have recorded the file)."""
        if not self._ended:
            self._ended = True
            self.finished.append(path.name)

    def _blocks(self, path: Path, ordinal: int):
        import h5py

        if not path.is_file():          # a FIFO named *.cxi would hang the open
            self._end(path)
            yield [Skipped("unreadable file", path.name, "file", "not a regular file")]
            return
        try:
            f = h5py.File(path, "r")
        except OSError as error:
            if self._not_ready(path, error):
                self.waiting = True
                self._ended = True           # not read to its end: put back, not finished
                return
            self._end(path)
            yield [Skipped("unreadable file", path.name, "file", f"cannot be opened ({error})")]
            return
        self._retry.pop(path.name, None)
        with f:
            from spibatch.errors import InputError
            from spibatch.io.hdf5 import check_other_files, written_frames

            try:
                check_other_files(f, path)     # a FIFO behind external storage would hang the follower
            except InputError as error:
                self._end(path)
                yield [Skipped("unreadable file", path.name, error.field or "file", error.problem)]
                return
            if self.data_path not in f or f[self.data_path].ndim < 2:
                self._end(path)
                yield [Skipped("unreadable file", path.name, self.data_path, "no frame stack here")]
                return
            data = f[self.data_path]
            declared = n = data.shape[0]
            with_ids = TRAIN_IDS in f and f[TRAIN_IDS].shape == (n,)
            for ds in (data, f[TRAIN_IDS]) if with_ids else (data,):  # a writer stopped early, or a 3 kB file
                n = min(n, written_frames(ds))                         # declaring 1e9 frames: the whole ones
            if n < declared:
                if n == 0:
                    self._end(path)
                yield [Skipped("unreadable data", path.name, self.data_path, f"declares {declared:,} frames but only "
                               f"the first {n:,} were written whole: the rest skipped")]
            if n == 0:
                return
            if with_ids:
                train_ids = f[TRAIN_IDS][:n].astype(np.uint64)
                pulse_ids = f[PULSE_IDS][:n].astype(np.uint64) if PULSE_IDS in f else np.arange(n)
            else:
                train_ids, pulse_ids = np.full(n, ordinal, np.uint64), np.arange(n, dtype=np.uint64)
            frame_bytes = max(4, data.dtype.itemsize) * int(np.prod(data.shape[1:]))   # as the Counter reads them
            ranges = list(_train_blocks(train_ids, self.frames_per_block))
            for start, stop in ranges:
                if int(train_ids[stop - 1]) <= self.skip:
                    continue
                if stop == ranges[-1][1]:
                    self._end(path)
                if (stop - start) * frame_bytes > MAX_BLOCK_BYTES:   # one train is one block: never cut
                    trains = tuple(int(t) for t in np.unique(train_ids[start:stop]))
                    yield [Skipped("unreadable data", path.name, self.data_path,
                                   f"{stop - start:,} frames in one train ({(stop - start) * frame_bytes / 2**30:.1f} "
                                   f"GiB) exceed the {MAX_BLOCK_BYTES >> 30} GiB a block may hold (write "
                                   f"{TRAIN_IDS} so that it is read by train)", trains)]
                    continue
                try:
                    frames = data[start:stop]   # as stored: float64 and wide integers are counted in float64
                except OSError as error:     # a truncated file fails when the data are read
                    trains = tuple(int(t) for t in np.unique(train_ids[start:stop]))
                    self._end(path)
                    yield [Skipped("unreadable data", path.name, self.data_path, f"reading failed ({error})", trains)]
                    return
                yield [Block(frames, train_ids[start:stop], pulse_ids[start:stop], path.name)]


def _train_blocks(train_ids: np.ndarray, frames_per_block: int):
    """(start, stop) ranges of whole trains holding about ``frames_per_block`` frames each."""
    edges = np.concatenate([[0], np.flatnonzero(np.diff(train_ids)) + 1, [len(train_ids)]])
    start = 0
    for edge in edges[1:]:
        if edge - start >= frames_per_block or edge == len(train_ids):
            yield start, int(edge)
            start = int(edge)
