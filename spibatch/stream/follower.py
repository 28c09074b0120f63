"""The follower: a live source's frames -> photons -> hits -> chunks in ``follow/``, until the source ends.

:class:`Follower` polls a source (:mod:`.euxfel`, :mod:`.bridge`, :mod:`.cxifolder`, or anything with
``read() -> list[Block | Skipped]``, ``ended`` and ``close()``), counts photons per module
(:class:`~spibatch.stream.kernel.Counter`), keeps the hits (:class:`~spibatch.stream.hits.HitFinder`)
and commits them in chunks (:class:`~spibatch.stream.store.Store`).  It ends when

* the source says so (``source.ended``: a run folder whose overview file marks it closed),
* no train (good or bad) arrived for ``idle_timeout_s`` (a Karabo bridge that stopped sending; a
  run folder nobody writes to any more),
* the stop file exists (``RunLayout(run).stop``, which ``spibatch stop RUN_DIR`` creates): what has
  arrived is still read -- the files already there, until the source falls silent; a source that
  ``streams`` (the Karabo bridge, which sends as long as the facility runs) is read for the drain
  time only,

and writes everything it processed first.  Started again on the same folder it resumes from
the index: trains up to the last committed one are skipped as already ingested (a restarted
bridge or a re-read run folder sends them again), so nothing is lost or doubled.

Trains are taken in increasing train-ID order: a train ID not above the last one taken is a
repeat (or went back) and is skipped and counted, as is every train a source reports bad.  A train ID
far above the last one (:data:`MAX_TRAIN_JUMP`) is taken as bogus and skipped -- unless
:data:`JUMP_ACCEPT` such trains come in a row, in order: then the last train taken was the bogus one.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spibatch import interrupts
from spibatch.detector import MASK_EXCLUDED, Detector
from spibatch.errors import InputError
from spibatch.photons import Photons
from spibatch.stream.blocks import Block, Skipped, train_ranges
from spibatch.stream.hits import HitFinder
from spibatch.stream.kernel import FLAG_TOO_LARGE, Counter
from spibatch.stream.store import ALREADY_INGESTED, FRAME_STATS, Store

log = logging.getLogger("spibatch")
MAX_TRAIN_JUMP = 10 ** 8   # train IDs (10 a second at EuXFEL): 115 days; a bigger step up is a bogus ID
MAX_TRAIN_ID = 2 ** 40     # 1.1e12 trains: 3 500 years at 10 a second; a bigger (or negative) ID is bogus, even the first
JUMP_ACCEPT = 20           # this many trains in a row, in order, all a jump above the last train taken: the last one was bogus


@dataclass(frozen=True)
class FollowSettings:
    """How to count, find hits and commit (plain values; a pipeline's ``source:`` section maps onto them).

    adu_per_photon : ADU per photon, one number or one per module (1 for photon-counted data)
    threshold : hit when lit pixels > threshold; None: automatic (:mod:`spibatch.stream.hits`)
    k_sigma, min_lit, window : the automatic threshold's constants
    chunk_frames : hits per chunk file (a commit happens when this many are waiting)
    flush_s : the longest a processed frame waits before it is committed (latency to EMC)
    idle_timeout_s : end when no new train arrived for this long
    poll_s : pause between polls of a source that had nothing new
    """

    adu_per_photon: float | tuple[float, ...] = 1.0
    threshold: float | None = None
    k_sigma: float = 5.0
    min_lit: int = 20
    window: int = 10_000
    chunk_frames: int = 1024
    flush_s: float = 2.0
    idle_timeout_s: float = 60.0
    poll_s: float = 0.05


class _Pending:
    """Processed frames not yet committed."""

    def __init__(self):
        self.photons: list[Photons] = []
        self.hit_trains: list[np.ndarray] = []
        self.hit_pulses: list[np.ndarray] = []
        self.stats: list[np.ndarray] = []
        self.hits = 0
        self.trains = 0
        self.since: float | None = None

    @property
    def frames(self) -> int:
        return sum(len(s) for s in self.stats)


class Follower:
    """Follow ``source`` into ``out_dir`` (``follow/`` of a run) for ``detector``; :meth:`run` until it ends.

    detector : the :class:`~spibatch.detector.Detector` the frames are on; its ``shape`` is the frame
        shape a block must have ((modules, ss, fs) or (ss, fs)); excluded pixels (mask 2) count 0
    stop_file : a path whose existence ends the follow (``RunLayout(run).stop``), or None
    """

    def __init__(self, source, detector: Detector, out_dir: str | os.PathLike, settings: FollowSettings = FollowSettings(),
                 *, stop_file: str | os.PathLike | None = None):
        if detector.shape is None:
            raise InputError("the detector has no frame shape", field="shape",
                             fix="give a detector from detector_from_geometry or Detector.flat (shape set)")
        self.source, self.detector, self.settings = source, detector, settings
        self.frame_shape = tuple(detector.shape)
        modules = self.frame_shape[0] if len(self.frame_shape) == 3 else 1
        self.counter = Counter(detector.num_pix, modules, settings.adu_per_photon, detector.mask == MASK_EXCLUDED)
        self.finder = HitFinder(settings.threshold, k_sigma=settings.k_sigma, min_lit=settings.min_lit,
                                window=settings.window)
        self.store = Store(out_dir, getattr(source, "name", type(source).__name__), self.finder.rule)
        self.stop_file = None if stop_file is None else Path(stop_file)
        self.pending = _Pending()
        self.started = False
        self._bad_changed = False
        self._old: list[int] = []          # already-ingested trains not yet reported
        self._files = 0                    # the source's finished files recorded in the index so far
        self._jumped: list[int] = []       # the trains just refused as a jump, in a row and in order
        self._old_source = ""
        self._whole = None                 # (last train, pending list lengths and counts) after the last whole item
        self._committing = False

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict:
        """Follow until the source ends, the stop file appears or nothing arrives for ``idle_timeout_s``;
        commit what is pending and write the end line.  Returns the summary (``status.json``'s numbers and
        ``end_reason``).  Raises InputError when the first frames do not fit the detector (nothing written)."""
        done = self.store.load()
        if done.ended is not None:
            log.info("follow: %s ended before (%s): nothing to do", self.store.folder, done.ended)
            return self.summary()
        self.resumed_through = self.last_train = done.last_train
        if done.commits:
            self.finder.remember(self.store.recent_lit(self.settings.window))
            log.info("follow: resuming after train %d (%d frames, %d hits committed)", done.last_train,
                     done.frames_seen, done.hits)
            if hasattr(self.source, "skip_through"):
                self.source.skip_through(done.last_train)
            if hasattr(self.source, "restore"):
                self.source.restore(done.files)
        if hasattr(self.source, "check_shape"):
            self.source.check_shape(self.frame_shape)
        last_new = time.monotonic()
        stopping = None     # when the stop file was seen: what has arrived is still read (files until none is left;
                            # a stream for drain_s more), then the follow ends
        drain_s = getattr(self.source, "settle_s", 0.0) + 1.0    # a file still settling, a train in flight
        self._mark_whole()
        try:
            while True:
                if stopping is None and self.stop_file is not None and self.stop_file.exists():
                    stopping = time.monotonic()
                    log.info("follow: stop requested (%s): reading what has arrived", self.stop_file)
                    if hasattr(self.source, "draining"):
                        self.source.draining()
                items = self.source.read()
                for item in items:
                    if isinstance(item, Skipped):
                        self._skipped(item)
                    else:
                        self._block(item)
                    self._mark_whole()
                # any train, good or bad, shows the source is alive; so does a wait for a sequence (not after a stop:
                # a DAQ still writing would keep the drain from ever ending)
                if items or (stopping is None and getattr(self.source, "waiting", False)):
                    last_new = time.monotonic()
                self._maybe_commit()
                if stopping is not None and getattr(self.source, "streams", False) \
                        and time.monotonic() - stopping > drain_s:
                    reason = f"stop file {self.stop_file}"     # a stream never falls silent: what was in flight
                    break                                      # at the stop has been read by now
                if not items:
                    if stopping is not None and (self.source.ended or time.monotonic() - max(last_new, stopping) > drain_s):
                        reason = f"stop file {self.stop_file}"
                        break
                    if self.source.ended:
                        reason = self.source.ended
                        break
                    if time.monotonic() - last_new > self.settings.idle_timeout_s:
                        reason = f"no new train for {self.settings.idle_timeout_s:g} s"   # (good or bad)
                        break
                    time.sleep(self.settings.poll_s)
            self._report_old()
            if not self.started and any(k != ALREADY_INGESTED for k in self.store.state.bad):
                self.store.start(self.detector)     # every train was bad: the end line and its counts say so
                self.started = True
            self._commit()
            self.store.end(reason)
            log.info("follow: ended (%s): %d frames, %d hits in %d chunks", reason, self.store.state.frames_seen,
                     self.store.state.hits, self.store.state.chunks)
        except KeyboardInterrupt:     # SIGTERM or Ctrl-C: what was received is kept (a stream cannot send it again)
            self._commit_whole()
            raise
        finally:
            self.source.close()
        return self.summary()

    def _mark_whole(self) -> None:
        p = self.pending
        self._whole = (self.last_train, len(p.stats), len(p.photons), p.hits, p.trains, dict(self.store.state.bad))

    def _commit_whole(self) -> None:
        """Commit the items processed whole before an interrupt (an item it cut short is dropped, and its trains
        with it: a resume reads them again where the source can), without the end line: a resume goes on."""
        if self._committing or self._whole is None:
            return          # (a commit cut short: the resumed follower's load decides what it made durable)
        if not self.started:
            if self.store.folder.exists():    # a resumed follow that took no new train yet
                self.store.write_status("interrupted", None, 0, 0)
            return
        self.last_train, stats, photons, hits, trains, bad = self._whole
        self.store.state.bad = bad            # a cut item's skipped trains are counted again on the resume
        p = self.pending
        del p.stats[stats:], p.photons[photons:], p.hit_trains[photons:], p.hit_pulses[photons:]
        p.hits, p.trains = hits, trains
        if p.stats:
            frames, hits = p.frames, p.hits
            self._commit(files=False)   # a file whose last items were not taken is read again on a resume
            log.info("follow: interrupted: the %d frames (%d hits) received since the last commit committed",
                     frames, hits)
        self.store.write_status("interrupted", None, 0, 0)   # not "following" (a resume says "following" again)

    def summary(self) -> dict:
        s = self.store.state
        return {"end_reason": s.ended, "frames_seen": s.frames_seen, "hits": s.hits, "trains": s.trains,
                "chunks": s.chunks, "last_train": s.last_train, "bad_trains": dict(s.bad), "threshold": s.threshold}

    # ------------------------------------------------------------------ one item

    def _count_bad(self, reason: str, trains: int) -> None:
        bad = self.store.state.bad
        bad[reason] = bad.get(reason, 0) + trains
        self._bad_changed = True

    def _skipped(self, item: Skipped) -> None:
        if item.trains and max(item.trains) <= self.resumed_through:
            log.debug("follow: %s (before the resume point: not counted again)", item.describe())
            return
        log.warning("follow: %s", item.describe())
        if not item.counted:
            return
        self._count_bad(item.reason, max(len(item.trains), 1))
        if item.trains and self.started:   # a train found bad is taken (once), like a good one
            plausible = [t for t in item.trains if not self._jumps(t)]
            self.last_train = max([self.last_train, *plausible])

    def _jumps(self, tid: int) -> bool:
        """A train ID more than MAX_TRAIN_JUMP above the last one taken, or outside 0..MAX_TRAIN_ID (which guards
        the first train too): a bogus one, which taken would make every real train after it look repeated (for
        good: the last train is committed)."""
        if tid < 0 or tid > MAX_TRAIN_ID:
            return True
        return self.last_train >= 0 and tid - self.last_train > MAX_TRAIN_JUMP

    def _block(self, block: Block) -> bool:
        """Process one block; True when it brought a new train (False: refused or already taken)."""
        if not block.num_frames:
            return False
        if block.data.dtype.kind not in "biuf":
            trains = tuple(int(t) for t in np.unique(block.train_ids))
            self._skipped(Skipped("not numbers", block.source, "data", f"frames of type {block.data.dtype}",
                                  trains, block.num_frames))
            return False
        shape = tuple(block.data.shape[1:])
        if shape != self.frame_shape:
            trains = tuple(int(t) for t in np.unique(block.train_ids))
            problem = f"frames of shape {shape}, the detector's are {self.frame_shape}"
            if not self.started:
                raise InputError(f"{problem} (train {trains[0] if trains else '?'}): the geometry does not match "
                                 "the data; nothing was written", path=block.source, field="shape",
                                 fix="give the geometry (or detector) of the detector these frames come from")
            self._skipped(Skipped("wrong shape", block.source, "data", problem, trains, block.num_frames))
            return False
        keep = self._new_trains(block)
        if not keep.any():
            return False
        if not self.started:
            self.store.start(self.detector)
            self.started = True
        self._process(block, keep)
        return True

    def _new_trains(self, block: Block) -> np.ndarray:
        """(n,) bool: the frames of trains above the last train taken (each train taken once, in order)."""
        tids = block.train_ids.astype(np.int64)
        keep = np.zeros(len(tids), bool)
        edges = np.flatnonzero(np.diff(tids)) + 1
        repeated, jumped = [], []
        for a, b in zip(np.concatenate([[0], edges]), np.concatenate([edges, [len(tids)]])):
            tid = int(tids[a])
            if self._jumps(tid) and not self._jumped_for_good(tid):
                jumped.append(tid)
            elif tid > self.last_train:
                self._report_old()
                self._jumped = []
                keep[a:b] = True
                self.last_train = tid
                self.pending.trains += 1
            elif tid <= self.resumed_through:
                self._old.append(tid)
                self._old_source = block.source
                self._count_bad(ALREADY_INGESTED, 1)
            else:
                repeated.append(tid)
        if repeated:
            self._skipped(Skipped("repeated or non-monotonic train ID", block.source, "train_id",
                                  f"not above the last train taken ({self.last_train})", tuple(repeated)))
        if jumped:
            self._skipped(Skipped("train ID jump", block.source, "train_id", f"more than {MAX_TRAIN_JUMP:,} above "
                                  f"the last train taken ({self.last_train}) or outside 0..2^40: not taken",
                                  tuple(jumped)))
        return keep

    def _jumped_for_good(self, tid: int) -> bool:
        """Whether ``tid`` (a jump) makes :data:`JUMP_ACCEPT` jumps in a row, each above the one before by at most
        MAX_TRAIN_JUMP: then the train taken last was the bogus one (a first train of ID 1, then the facility's
        real IDs), and the jumps are taken from here on (with one warning); else the jump is refused."""
        if not 0 <= tid <= MAX_TRAIN_ID:
            return False
        if self._jumped and not 0 < tid - self._jumped[-1] <= MAX_TRAIN_JUMP:
            self._jumped = []
        self._jumped.append(tid)
        if len(self._jumped) < JUMP_ACCEPT:
            return False
        log.warning("follow: %d trains in a row jumped from train %d to %d..%d: taking them from now on (the "
                    "train taken before them was bogus, or the train count was reset)", len(self._jumped),
                    self.last_train, self._jumped[0], tid)
        self._jumped = []
        return True

    def _report_old(self) -> None:
        """One log line for the run of already-ingested trains just passed."""
        if self._old:
            spans = ", ".join(f"{a}..{b}" for a, b in train_ranges(np.array(self._old)))
            log.info("follow: %s: trains %s already ingested (%d): skipped", self._old_source, spans, len(self._old))
            self._old = []

    def _process(self, block: Block, keep: np.ndarray) -> None:
        data = block.data if keep.all() else block.data[keep]
        tally = self.counter.tally(data)
        usable = (tally["flags"] & FLAG_TOO_LARGE) == 0
        hit = self.finder.hits(tally["lit"]) & usable
        if not usable.all():
            log.warning("follow: %s: %d frame(s) with counts above int32 not used (check adu_per_photon)",
                        block.source, int((~usable).sum()))
        rows = np.flatnonzero(hit)
        p = self.pending
        stats = np.zeros(len(data), FRAME_STATS)
        stats["train_id"], stats["pulse_id"] = block.train_ids[keep], block.pulse_ids[keep]
        stats["received"], stats["photons"], stats["lit"] = block.received, tally["photons"], tally["lit"]
        stats["hit"], stats["flags"] = hit, tally["flags"]
        stats["frame"] = -1
        stats["frame"][rows] = self.store.state.hits + p.hits + np.arange(len(rows))
        p.stats.append(stats)
        if len(rows):
            p.photons.append(self.counter.fill(data, rows, tally))
            p.hit_trains.append(stats["train_id"][rows])
            p.hit_pulses.append(stats["pulse_id"][rows])
            p.hits += len(rows)
        p.since = p.since or time.monotonic()

    # ------------------------------------------------------------------ commits

    def _maybe_commit(self) -> None:
        p = self.pending
        if p.hits >= self.settings.chunk_frames or (p.since is not None
                                                   and time.monotonic() - p.since >= self.settings.flush_s):
            self._commit()

    def _commit(self, files: bool = True) -> None:
        p = self.pending
        if not (p.stats or (self._bad_changed and self.started)):
            return
        hits = Photons.concatenate(p.photons) if p.photons else None
        ids = (np.concatenate(p.hit_trains), np.concatenate(p.hit_pulses)) if p.photons else (None, None)
        stats = np.concatenate(p.stats) if p.stats else np.zeros(0, FRAME_STATS)
        with interrupts.held():    # SIGTERM / SIGINT raised once the batch is durable and the state says so
            self._committing = True
            self.store.commit(hits, *ids, stats, p.trains, self.last_train, self.store.state.bad,
                              self.finder.threshold, self._finished_files() if files else [])
            self.pending = _Pending()
            self._bad_changed = False
            self._committing = False
            self._mark_whole()

    def _finished_files(self) -> list[str]:
        """The source's files read to the end since the last commit (every item of theirs has been processed when
        a commit runs, so this commit makes them durable): a folder source numbers files without train IDs by their
        place in the order taken, which a restart must know."""
        names = list(getattr(self.source, "finished", [])[self._files:])
        self._files += len(names)
        return names
