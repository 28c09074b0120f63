"""A folder where CXI files appear (what other facilities write), taken in name order.

A file is read once it has not changed for ``settle_s`` and opens as HDF5 (a writer that renames
a finished file into the folder is read at once).  Frames are at ``/entry_1/data_1/data`` (CXI),
``(frames, y, x)`` or ``(frames, modules, ss, fs)``.  Train and pulse IDs come from
``/entry_1/trainId`` and ``/entry_1/pulseId`` where the file has them (EXtra-data's CXI export
writes these); otherwise the file is one "train" numbered by its place in the name order (from 1)
and the pulse ID is the frame within the file.  The follower records the names of the files whose
trains it committed (:attr:`CxiFolderSource.finished`) and a restarted follower gives them back
(:meth:`CxiFolderSource.restore`), so the numbers go on where they were even when files were moved
away or arrived out of name order meanwhile.  A file that cannot be read is reported and skipped.
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


class CxiFolderSource:
    """Follow ``folder`` for CXI files matching ``pattern``; frames of ``frame_shape``, ``frames_per_block``
    at a time (whole trains)."""

    def __init__(self, folder: str | os.PathLike, frame_shape: tuple[int, ...], *, pattern: str = "*.cxi",
                 data_path: str = DATA, settle_s: float = 1.0, frames_per_block: int = 256):
        self.folder, self.pattern, self.data_path = Path(folder), pattern, data_path
        self.frame_shape, self.settle_s, self.frames_per_block = tuple(frame_shape), settle_s, frames_per_block
        self.name = f"CXI folder {self.folder}"
        self.ended: str | None = None
        self.done: list[str] = []          # file names taken, in order
        self.finished: list[str] = []      # files read to the end (their last item handed out), in order
        self.skip = -1
        self._seen: dict[str, tuple] = {}
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
            if self._current is None:
                path = self._next_file()
                if path is None:
                    return []
                self._current = self._file(path, len(self.done))   # its place in the name order, from 1
            items = next(self._current, None)
            if items is not None:
                return items
            self._current = None

    def _next_file(self) -> Path | None:
        taken = set(self.done)
        names = [name for name in sorted(p.name for p in self.folder.glob(self.pattern) if not p.name.startswith("."))
                 if name not in taken]
        now = time.monotonic()
        for name in names:   # every file settles from when it was first seen unchanged, all at once (not one per
            try:             # poll: a resumed follow walking many files already ingested would take settle_s each)
                stat = (self.folder / name).stat()
            except FileNotFoundError:
                continue
            stamp = (stat.st_size, stat.st_mtime_ns)
            if self._seen.get(name, (None,))[0] != stamp:
                self._seen[name] = (stamp, now)
        for name in names:
            if name not in self._seen:
                continue
            if self.done and name < self.done[-1]:
                self.done.append(name)
                self.finished.append(name)
                log.warning("follow: %s: %s appeared after %s, out of name order: skipped", self.name, name,
                            self.done[-2])
                continue
            if now - self._seen[name][1] < self.settle_s:
                return None
            self.done.append(name)
            return self.folder / name
        return None

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
            self._end(path)
            yield [Skipped("unreadable file", path.name, "file", f"cannot be opened ({error})")]
            return
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
