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
repeat (or went back) and is skipped and counted, as is every train a source reports bad; bogus IDs (far above,
or a taken one that was bogus) are :mod:`spibatch.stream.train_order`'s.

A source's first items whose frames have another shape than the detector's are skipped and counted (a stray file
of a dark run); :data:`MISMATCH_REFUSE` in a row before any good one stop the follow with one line (the geometry
is wrong).  Activity, for the idle time-out, is a train that is new (or already ingested, on a resume) or that a
source reports bad; repeats of trains taken and messages that name no train are not.  Each skip reason is
said :data:`SAY_EACH` times, then only counted.
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
from spibatch.stream.train_order import JUMP_ACCEPT, MAX_TRAIN_JUMP, TrainGuard  # noqa: F401 (JUMP_ACCEPT: tests)

log = logging.getLogger("spibatch")
MISMATCH_REFUSE = 3        # items in a row of another frame shape before the first good one: the geometry is wrong
SAY_EACH = 5               # warnings per skip reason; then counted only (the end line has the counts)


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
        self.guard = TrainGuard()          # bogus train IDs (jumps, a taken one that was bogus)
        self._prev_train = -1              # the train taken before the last one
        self._mismatched = 0               # items of another frame shape in a row, before the first good one
        self._mismatch = None              # (problem, source) of the last of them
        self._said: dict[str, int] = {}    # warnings said per skip reason
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
        self.resumed_through = self.last_train = self._prev_train = done.last_train
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
                            # a stream for drain_s more), then the follow ends.  The idle time-out does the same
        stop_reason = ""    # for a source that can drain (a run folder's last sequence, short of a module file)
        drain_s = getattr(self.source, "settle_s", 0.0) + 1.0    # a file still settling, a train in flight
        self._mark_whole()
        try:
            while True:
                if stopping is None and self.stop_file is not None and self.stop_file.exists():
                    stopping, stop_reason = time.monotonic(), f"stop file {self.stop_file}"
                    log.info("follow: stop requested (%s): reading what has arrived", self.stop_file)
                    if hasattr(self.source, "draining"):
                        self.source.draining()
                items = self.source.read()
                fresh = False
                for item in items:
                    if isinstance(item, Skipped):
                        self._skipped(item)
                        fresh = fresh or bool(item.trains)     # the source's word on trains (bad ones count)
                    else:
                        fresh = self._block(item) or fresh
                    self._mark_whole()
                # a train, new or bad, shows the source is alive (repeats of trains taken and messages without a
                # train do not); so does a wait for a file or sequence (not after a stop: a DAQ still writing would
                # keep the drain from ever ending)
                if fresh or (stopping is None and getattr(self.source, "waiting", False)):
                    last_new = time.monotonic()
                self._maybe_commit()
                if stopping is not None and getattr(self.source, "streams", False) \
                        and time.monotonic() - stopping > drain_s:
                    reason = stop_reason                       # a stream never falls silent: what was in flight
                    break                                      # at the stop has been read by now
                if not fresh:       # (items that bring no train -- garbage, repeats -- do not hold the follow open)
                    if stopping is not None and (self.source.ended or time.monotonic() - max(last_new, stopping) > drain_s):
                        reason = stop_reason
                        break
                    if self.source.ended:
                        reason = self.source.ended
                        break
                    if time.monotonic() - last_new > self.settings.idle_timeout_s:
                        reason = f"no new train for {self.settings.idle_timeout_s:g} s"   # (good or bad)
                        if stopping is None and hasattr(self.source, "draining"):
                            stopping, stop_reason = time.monotonic(), reason
                            log.info("follow: %s: reading what is on disk once more (a sequence short of a module "
                                     "file included)", reason)
                            self.source.draining()
                            continue
                        break
                    if not items:
                        time.sleep(self.settings.poll_s)
            self._report_old()
            if not self.started and self._mismatch is not None:   # nothing but frames of another shape came
                raise self._geometry_error("; no item of the detector's shape came")
            if not self.started and any(k != ALREADY_INGESTED for k in self.store.state.bad):
                self.store.start(self.detector)     # every train was bad: the end line and its counts say so
                self.started = True
            self._commit()
            self.store.end(reason)
            bad = {k: v for k, v in self.store.state.bad.items() if k != ALREADY_INGESTED}
            log.info("follow: ended (%s): %d frames, %d hits in %d chunks%s", reason, self.store.state.frames_seen,
                     self.store.state.hits, self.store.state.chunks,
                     "; trains skipped: " + ", ".join(f"{n} {k}" for k, n in bad.items()) if bad else "")
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
        said = self._said[item.reason] = self._said.get(item.reason, 0) + 1
        if said <= SAY_EACH:
            log.warning("follow: %s%s", item.describe(), "" if said < SAY_EACH else
                        f" -- further '{item.reason}' items are counted, not said (the end line has the counts)")
        else:
            log.debug("follow: %s", item.describe())
        if not item.counted:
            return
        self._count_bad(item.reason, max(len(item.trains), 1))
        if item.trains and self.started:   # a train found bad is taken (once), like a good one
            plausible = [t for t in item.trains if not self.guard.jumps(t, self.last_train)]
            self.last_train = max([self.last_train, *plausible])

    def _block(self, block: Block) -> bool:
        """Process one block; True when it brought a train that shows the source alive: new, found bad, or already
        ingested on a resume (False: nothing but repeats of trains taken, or bogus IDs)."""
        if not block.num_frames:
            return False
        if block.data.dtype.kind not in "biuf":
            trains = tuple(int(t) for t in np.unique(block.train_ids))
            self._skipped(Skipped("not numbers", block.source, "data", f"frames of type {block.data.dtype}",
                                  trains, block.num_frames))
            return True
        shape = tuple(block.data.shape[1:])
        if shape != self.frame_shape:
            trains = tuple(int(t) for t in np.unique(block.train_ids))
            problem = f"frames of shape {shape}, the detector's are {self.frame_shape}"
            if not self.started:
                self._mismatched += 1
                self._mismatch = (f"{problem} (train {trains[0] if trains else '?'})", block.source)
                if self._mismatched >= MISMATCH_REFUSE:
                    raise self._geometry_error(f"; {self._mismatched} items in a row")
            self._skipped(Skipped("wrong shape", block.source, "data", problem, trains, block.num_frames))
            return True
        self._mismatched = 0
        keep, fresh = self._new_trains(block)
        if not keep.any():
            return fresh
        if not self.started:
            self.store.start(self.detector)
            self.started = True
        self._process(block, keep)
        return True

    def _new_trains(self, block: Block) -> tuple[np.ndarray, bool]:
        """((n,) bool: the frames of trains above the last train taken (each train taken once, in order), whether any
        train was taken or found already ingested)."""
        tids = block.train_ids.astype(np.int64)
        keep = np.zeros(len(tids), bool)
        edges = np.flatnonzero(np.diff(tids)) + 1
        repeated, jumped = [], []
        for a, b in zip(np.concatenate([[0], edges]), np.concatenate([edges, [len(tids)]])):
            tid = int(tids[a])
            if self.guard.jumps(tid, self.last_train) and not self.guard.jumped_for_good(tid, self.last_train):
                jumped.append(tid)
            elif tid > self.last_train or (self._prev_train < tid and tid > self.resumed_through
                                           and self.guard.went_back_for_good(tid, self.last_train, self._prev_train)):
                self._report_old()
                self.guard.reset()
                keep[a:b] = True
                if tid > self.last_train:
                    self._prev_train = self.last_train
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
        return keep, len(repeated) + len(jumped) < len(edges) + 1

    def _geometry_error(self, which: str) -> InputError:
        problem, source = self._mismatch
        return InputError(f"{problem}{which}: the geometry does not match the data; nothing was written", path=source,
                          field="shape", fix="give the geometry (or detector) of the detector these frames come from")

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
