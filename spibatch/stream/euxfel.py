"""An EuXFEL run folder being written (``raw/`` or ``proc/`` sequence files), read with EXtra-data.

The DAQ writes one file per detector module (aggregator) and sequence, ``CORR-R0042-AGIPD07-S00003.h5``;
a sequence holds the same trains in every module's file.  :class:`RunFolderSource` takes the
sequences in order, each once it is complete:

* all its module files exist, and
* a later sequence has begun, or the run is closed, or its files have not changed for ``settle_s``
  (the DAQ writes a sequence file in place: one that still grows is not read).

A sequence whose module file never comes is read, its trains reported "module missing", once a later sequence
has settled, the run is closed, or the follow is ending (a stop, the idle time-out).  The last sequence taken
that changes afterwards (the DAQ wrote on after a pause longer than ``settle_s``) is read again for its new
trains.

Each module file is opened with ``extra_data.H5File`` and read per train through its ``KeyData``
(``select_trains(by_id[...])``), trains in order, the modules stacked into ``(frames, modules, ss,
fs)`` -- never an assembled image.  A train that some module lacks (a file missing or unreadable,
an empty count), whose modules disagree on its frames, or whose module data has the wrong shape is
reported (:class:`~spibatch.stream.blocks.Skipped`) and skipped.

When is a run over?  EXtra-data keeps no "run closed" flag; what it has is the *virtual overview*
file (``overview.h5``, ``extra_data.voview``), written once a run is complete (EuXFEL makes one for
finished runs; ``python -m extra_data.voview RUN_DIR`` makes one) and valid only while it lists
exactly the run's files: a valid overview file means closed (``ended``).  Otherwise the follower's
idle time-out ends the follow.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import numpy as np

from spibatch.errors import InputError
from spibatch.stream.blocks import Block, Skipped

log = logging.getLogger("spibatch")
GAP_WAIT = 6    # x settle_s: how long a sequence waits for a missing lower one before the follow goes on without it

# detector -> (file-name pattern of its module files with groups module and sequence, image key, first module)
DETECTORS = {
    "AGIPD1M": (r"-AGIPD(\d+)-S(\d+)\.h5$", "image.data", 0),
    "AGIPD500K": (r"-AGIPD(\d+)-S(\d+)\.h5$", "image.data", 0),
    "DSSC1M": (r"-DSSC(\d+)-S(\d+)\.h5$", "image.data", 0),
    "LPD1M": (r"-LPD(\d+)-S(\d+)\.h5$", "image.data", 0),
    "JUNGFRAU": (r"-JNGFR(\d+)-S(\d+)\.h5$", "data.adc", 1),
    "PNCCD": (r"-PNCCD(\d+)-S(\d+)\.h5$", "data.image", 0),
}


def load_extra_data() -> None:
    """Import EXtra-data with the modules it imports lazily (pandas, xarray) in the calling thread: a first
    import of xarray in two threads at once fails ("partially initialized module")."""
    import extra_data  # noqa: F401
    import pandas  # noqa: F401
    import xarray  # noqa: F401


class RunFolderSource:
    """Follow the run folder ``run_dir`` of ``detector`` (a key of :data:`DETECTORS`) with frames of
    ``frame_shape`` ((modules, ss, fs), as :attr:`Detector.shape`).

    key : the image dataset (default per detector); settle_s : see the module docstring
    frames_per_block : whole trains are gathered into a block until it holds at least this many frames
    """

    def __init__(self, run_dir: str | os.PathLike, frame_shape: tuple[int, ...], detector: str = "AGIPD1M", *,
                 key: str | None = None, settle_s: float = 5.0, frames_per_block: int = 64):
        load_extra_data()

        if detector not in DETECTORS:
            raise InputError(f"unknown detector {detector!r}", field="detector", fix=f"use one of {', '.join(DETECTORS)}")
        pattern, default_key, self.first_module = DETECTORS[detector]
        self.run_dir, self.pattern, self.key = Path(run_dir), re.compile(pattern), key or default_key
        self.frame_shape = tuple(frame_shape)
        self.modules = self.frame_shape[0] if len(self.frame_shape) == 3 else 1
        self.module_shape = self.frame_shape[-2:]
        self.settle_s, self.frames_per_block = float(settle_s), int(frames_per_block)
        self.name = f"{self.run_dir} ({detector})"
        self.done: set[int] = set()
        self.skip = -1
        self.ended: str | None = None
        self._current = None
        self._seen: dict[int, tuple] = {}       # sequence -> (files' sizes and times, when they last changed)
        self._first: dict[int, float] = {}      # sequence -> when it was first seen
        self.waiting = False     # files still settling, or a missing lower sequence waited for: the follower's idle
                                 # clock does not run meanwhile
        self.hurry = False       # a stop was asked (or the follow fell idle): what is on disk is read now -- no lower
                                 # sequence waited for, a settled sequence read even when a module's file is missing
        self._taken: tuple | None = None   # (sequence, its files' stamp) of the last sequence taken
        self._handed = -1        # the highest train handed out
        self._again: int | None = None      # the sequence being read again

    # ------------------------------------------------------------------ the source protocol

    def skip_through(self, train_id: int) -> None:
        """Trains up to ``train_id`` were ingested before: do not hand them out again."""
        self.skip = int(train_id)

    def read(self) -> list:
        """The next block of trains (with the skipped trains before it), or [] when nothing is ready."""
        while True:
            if self._current is None:
                seq = self._next_sequence()
                if seq is None:
                    return []
                self._current = self._sequence(*seq)
            items = next(self._current, None)
            if items is None:
                self._current = None
                continue
            return items

    def close(self) -> None:
        self._current = None

    def draining(self) -> None:
        """A stop was asked: read what is on disk without waiting for a missing sequence."""
        self.hurry = True

    def check_shape(self, frame_shape: tuple[int, ...]) -> None:
        """InputError (before anything is written) when the run's module files do not hold frames of
        ``frame_shape``: too many modules, or module data of another shape."""
        files = self._scan()
        if not files:
            return
        seq = min(files)
        numbers = sorted(files[seq])
        if numbers and max(numbers) - self.first_module >= self.modules:
            raise InputError(f"the run has module {max(numbers)}, the geometry {self.modules} modules",
                             path=files[seq][max(numbers)], field="geometry",
                             fix="give the geometry of the detector that recorded this run")
        source, keydata = self._open(files[seq][numbers[0]])
        if isinstance(keydata, Exception):
            return
        if keydata is not None and self.key == "image.data" and tuple(keydata.entry_shape) == (2,) + self.module_shape:
            raise InputError(f"raw data: each frame is (analog, gain) {tuple(keydata.entry_shape)}, not photons",
                             path=files[seq][numbers[0]], field=f"{source}.{self.key}",
                             fix="follow the calibrated run (proc/, CORR files) or the calibrated Karabo bridge")
        if keydata is not None and self._frames_per_entry(keydata.entry_shape) is None:
            raise InputError(f"module data of shape {keydata.entry_shape}, the geometry's modules are "
                             f"{self.module_shape}", path=files[seq][numbers[0]], field=f"{source}.{self.key}",
                             fix="give the geometry of the detector that recorded this run")

    # ------------------------------------------------------------------ sequences

    def _scan(self) -> dict[int, dict[int, Path]]:
        """sequence -> module -> its file.  A name that is not a file (a dangling link) is left out, so its module
        counts as missing; two files for one module and sequence (two runs' files, RAW and CORR files in one
        folder) are one InputError naming both."""
        files: dict[int, dict[int, Path]] = {}
        for path in sorted(self.run_dir.glob("*.h5")):
            match = self.pattern.search(path.name)
            if not match or not path.is_file():
                continue
            sequence, module = int(match.group(2)), int(match.group(1))
            other = files.setdefault(sequence, {}).setdefault(module, path)
            if other != path:
                raise InputError(f"two files for module {module}, sequence {sequence}: {other.name} and {path.name}",
                                 path=self.run_dir, field="source.target",
                                 fix="give a folder holding one run's files of one kind (raw or proc)")
        return files

    def _closed(self) -> bool:
        from extra_data import voview

        try:
            return voview.find_file_valid(os.fspath(self.run_dir)) is not None
        except (OSError, KeyError):
            return False

    def _next_sequence(self):
        """(sequence, its files) once the next one is ready (module docstring), else None.  Sequences go in
        order: one missing below a later one is waited for (per-sequence correction jobs may write them out of
        order) until the run is closed, a stop is asked, or the later one has settled for :data:`GAP_WAIT` x
        ``settle_s``; a sequence that appears after a later one is read once its files have settled.  ``waiting``
        while a sequence's files still change or a lower one is waited for: the follower's idle time-out does not
        count that time."""
        files = self._scan()
        self._check_taken(files)
        waiting = sorted(s for s in files if s not in self.done)
        if not waiting:
            if self._closed():
                self.ended = f"run closed (a valid overview file in {self.run_dir})"
            return None
        seq = waiting[0]
        try:
            stamp = _stamp(files[seq])
        except OSError:        # a file removed (or replaced) since the scan: look again at the next poll
            return None
        now = time.monotonic()
        for s_ in waiting:
            self._first.setdefault(s_, now)
        before = self._seen.get(seq)
        if before is None or before[0] != stamp:
            self._seen[seq] = (stamp, now)
        quiet = now - self._seen[seq][1]
        settled = quiet >= self.settle_s
        complete = len(files[seq]) >= self.modules
        later = len(waiting) > 1 or any(s > seq for s in self.done)
        # each module's file is finished once that module has begun a later sequence (modules write on their own),
        # unless this sequence appeared after a later one (written late: the later one says nothing about it)
        late = any(self._first.get(s_, now) < self._first[seq] for s_ in waiting[1:])
        finished = not late and all(any(n in files[s_] for s_ in waiting[1:]) for n in files[seq])
        closed = self._closed()
        self.waiting = not settled      # files still being written: the source is alive
        if not ((complete and (finished or settled)) or (later and settled) or closed or (self.hurry and settled)):
            return None
        expected = max(self.done) + 1 if self.done else seq
        if seq > expected and not (closed or self.hurry) and quiet < GAP_WAIT * max(self.settle_s, 1.0):
            self.waiting = True
            return None         # a lower sequence may still come
        if seq > expected:
            log.warning("follow: %s: sequence %d missing: going on with sequence %d", self.run_dir, expected, seq)
        if self.done and seq < max(self.done):
            log.warning("follow: %s: sequence %d came after sequence %d was read: its trains come too late (trains "
                        "are taken in order)", self.run_dir, seq, max(self.done))
        self.done.add(seq)
        self._taken = (seq, stamp)
        return seq, files[seq]

    def _check_taken(self, files: dict[int, dict[int, Path]]) -> None:
        """The last sequence taken, changed since (the DAQ went on writing it after a pause longer than
        ``settle_s``): it is read again, its trains not handed out yet only (one warning)."""
        if self._taken is None or self._taken[0] not in files:
            return
        seq, stamp = self._taken
        try:
            now = _stamp(files[seq])
        except OSError:
            return
        if now != stamp:     # (said by _sequence when it finds new trains: a file closed late changes too)
            from extra_data.file_access import file_access_registry

            for path in files[seq].values():    # EXtra-data hands out a file's old reader while one lives on
                file_access_registry.pop(os.path.abspath(path), None)
            self._again = seq
            self._taken = None
            self.done.discard(seq)
            self._seen.pop(seq, None)
            self.skip = max(self.skip, self._handed)

    def _open(self, path: Path, pulses: bool = False):
        """(source name, KeyData of the image key) of one module file, with the KeyData of its pulse IDs
        (``image.pulseId``, or None) when ``pulses``; the KeyData is None (no image data) or the
        exception when the file cannot be read."""
        import extra_data

        try:
            data = extra_data.H5File(os.fspath(path))
            sources = [s for s in sorted(data.instrument_sources) if self.key in data[s].keys()]
            if not sources:
                return (path.name, None, None) if pulses else (path.name, None)
            keydata = data[sources[0], self.key]
            if not pulses:
                return sources[0], keydata
            pulse_key = "image.pulseId" if "image.pulseId" in data[sources[0]].keys() else None
            return sources[0], keydata, pulse_key and data[sources[0], pulse_key]
        except Exception as error:   # h5py and extra-data raise many kinds on a bad file
            log.debug("cannot open %s: %s", path, error)
            return (path.name, error, None) if pulses else (path.name, error)

    def _frames_per_entry(self, entry_shape) -> int | None:
        entry_shape = tuple(entry_shape)
        if entry_shape == self.module_shape:
            return 1
        if len(entry_shape) == 3 and entry_shape[1:] == self.module_shape:
            return entry_shape[0]
        return None

    def _sequence(self, seq: int, files: dict[int, Path]):
        """Yield lists of items (Skipped, then a Block) for sequence ``seq``, a group of trains at a time."""
        modules, causes, notes = {}, {}, []
        for number, path in sorted(files.items()):
            index = number - self.first_module
            source, keydata, pulse_ids = self._open(path, pulses=True)
            if keydata is None or isinstance(keydata, Exception):
                causes[index] = f"{path.name} unreadable"
                what = "no image data" if keydata is None else f"cannot be read ({keydata})"
                notes.append(Skipped("unreadable file", source, "file", f"sequence {seq}: {what}", counted=False))
                continue
            per_entry = self._frames_per_entry(keydata.entry_shape)
            if per_entry is None or not 0 <= index < self.modules:
                problem = (f"module data of shape {tuple(keydata.entry_shape)}, expected {self.module_shape}"
                           if per_entry is None else f"module {number} beyond the geometry's {self.modules}")
                causes[index] = f"{source} {problem}"
                tids = tuple(int(t) for t in keydata.train_ids if t > self.skip)
                notes.append(Skipped("wrong shape", source, self.key, problem, tids, counted=False))
                continue
            claimed, held = _index_and_data(keydata)
            if claimed > held:
                problem = f"its index claims {claimed:,} entries, the data hold {held:,} (a damaged or cut file)"
                causes[index] = f"{path.name}: {problem}"
                notes.append(Skipped("damaged index", source, self.key, f"sequence {seq}: {problem}", counted=False))
                continue
            modules[index] = (source, keydata, per_entry, pulse_ids)
        counts = {i: dict(zip(np.asarray(kd.train_ids).tolist(), (kd.data_counts(labelled=False) * per).tolist()))
                  for i, (_, kd, per, _) in modules.items()}
        tids = sorted({t for c in counts.values() for t, n in c.items() if n > 0 and t > self.skip})
        if seq == self._again and tids:
            log.warning("follow: %s: sequence %d changed after it was read (written on after a pause longer than "
                        "settle_s, %g s): its %d new trains are read now", self.run_dir, seq, self.settle_s, len(tids))
        if notes:
            if not modules:   # no module to learn the trains from: each note counts (trains unknown)
                for note in notes:
                    note.counted = True
            yield notes
        group: list[int] = []
        frames = 0
        for tid in tids:
            group.append(tid)
            frames += max(c.get(tid, 0) for c in counts.values())
            if frames >= self.frames_per_block:
                self._handed = max(self._handed, group[-1])
                yield self._read_trains(group, modules, counts, causes)
                group, frames = [], 0
        if group:
            self._handed = max(self._handed, group[-1])
            yield self._read_trains(group, modules, counts, causes)

    def _read_trains(self, tids: list[int], modules: dict, counts: dict, causes: dict) -> list:
        """Skipped items for the bad trains of ``tids``, then one Block of the good ones.  ``causes``: why a
        module of this sequence has no data (file missing if none is known)."""
        from extra_data import by_id

        items, good = [], []
        for tid in tids:
            have = {i: counts[i].get(tid, 0) for i in range(self.modules) if i in counts}
            missing = [i for i in range(self.modules) if have.get(i, 0) == 0]
            if missing:
                why = "; ".join(causes.get(i, f"module {i}: " + ("no data for this train" if i in modules
                                                                   else "no file in this sequence"))
                                for i in missing[:3]) + (" ..." if len(missing) > 3 else "")
                items.append(Skipped("module missing", self.name, self.key, f"modules {missing} missing ({why})",
                                     (tid,)))
            elif len(set(have.values())) != 1:
                items.append(Skipped("modules disagree", self.name, self.key,
                                     f"frames per module differ: {sorted(set(have.values()))}", (tid,)))
            else:
                good.append(tid)
        if not good:
            return items
        per_train = [next(iter(counts.values()))[t] for t in good]
        n = sum(per_train)
        data = np.empty((n, self.modules) + self.module_shape, np.float32)
        pulses = train_ids = None
        for i, (source, keydata, per, pulse_ids) in modules.items():
            try:
                chosen = keydata.select_trains(by_id[good])
                data[:, i] = chosen.ndarray().reshape((n,) + self.module_shape)
                # each frame's train as the file gives it (a file may list its trains in any order)
                ids = np.repeat(np.asarray(chosen.train_id_coordinates(), np.int64), per)
                if train_ids is None:
                    train_ids = ids
                elif not np.array_equal(ids, train_ids):
                    items.append(Skipped("modules disagree", source, self.key, "its frames are in another train "
                                         "order than the other modules'", tuple(good)))
                    return items
                if pulses is None and pulse_ids is not None:
                    pulses = pulse_ids.select_trains(by_id[good]).ndarray().reshape(-1)
            except Exception as error:   # a truncated file fails only when its data are read
                items.append(Skipped("unreadable data", source, self.key, f"reading failed ({error})", tuple(good)))
                return items
        if pulses is None or len(pulses) != n:   # no pulse IDs (JUNGFRAU, pnCCD): the frame within the train
            pulses = np.concatenate([np.arange(np.count_nonzero(train_ids == t)) for t in dict.fromkeys(train_ids)])
        order = np.argsort(train_ids, kind="stable")      # trains in order, each train's frames as they were
        data = data.reshape((n,) + self.frame_shape)
        if not np.array_equal(order, np.arange(n)):
            data, train_ids, pulses = data[order], train_ids[order], np.asarray(pulses)[order]
        items.append(Block(data, train_ids, pulses, self.name))
        return items


def _stamp(files: dict[int, Path]) -> tuple:
    """(module, size, modification time) of each of a sequence's files, in module order: what changes as they are
    written."""
    return tuple(sorted((n, st.st_size, st.st_mtime_ns) for n, st in ((n, p.stat()) for n, p in files.items())))


def _index_and_data(keydata) -> tuple[int, int]:
    """(entries the file's index gives ``keydata``, entries its dataset holds): a damaged index claims more than
    the data hold, which reading would allocate for (a count of 10^9 frames: terabytes) before failing."""
    claimed = int(np.asarray(keydata.data_counts(labelled=False)).astype(np.uint64).sum(dtype=np.uint64))
    dataset = keydata.files[0].file[keydata.hdf5_data_path]
    return claimed, int(dataset.shape[0]) if dataset.shape else 0
