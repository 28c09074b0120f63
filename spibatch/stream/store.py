"""The follower's files in ``follow/``: chunks of hits, the index the EMC side polls, per-frame statistics.

A *commit* makes the frames processed since the last one durable, in this order:

1. ``chunks/chunk_NNNNNN.emc`` -- the hits' sparse photons (a Dragonfly photons file that
   :func:`spibatch.io.dragonfly.read_photons` reads) plus ``train_id`` and ``pulse_id`` (n,) uint64,
   written to a temporary file and renamed (atomic); none when the commit holds no hit;
2. ``frames.bin`` -- one :data:`FRAME_STATS` record per frame processed (hits or not), appended;
3. ``index.jsonl`` -- one JSON line (``commit``, ``chunk``, ``first_frame``, ``frames``: the hits of
   this chunk, numbered on without gaps; cumulative ``frames_seen``, ``hits``, ``trains``,
   ``last_train``, ``bad`` trains by reason, ``lit_histogram``, ``threshold``, ``time``), appended
   and fsync'ed: **this line is the commit**;
4. ``status.json`` -- the monitor's summary, rewritten atomically.

Steps 1-3 are fsync'ed before the next begins, so even a power cut leaves no index line without its
chunk and records.  A crash between 1 and 3 leaves a chunk without its line and records without their line: on
resume (:meth:`Store.load`) the index is read up to its last whole line, chunks it does not
name are deleted and ``frames.bin`` is cut back to the committed frames, so nothing is counted
twice and nothing committed is lost.  The follow ends with an ``{"end": reason}`` line.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spibatch import layout
from spibatch.errors import InputError
from spibatch.io.atomic import write_text
from spibatch.io.dragonfly import PhotonsWriter, write_detector
from spibatch.photons import Photons

log = logging.getLogger("spibatch")

FRAME_STATS = np.dtype([("train_id", "<u8"), ("pulse_id", "<u8"), ("received", "<f8"), ("photons", "<i8"),
                        ("frame", "<i8"), ("lit", "<i4"), ("hit", "u1"), ("flags", "u1")])
"""One frame's statistics in ``frames.bin`` (46 bytes, little-endian, no header: ``read_frame_stats``):
train and pulse ID, when it was received (s since the epoch), photons, its frame number in the
chunks when a hit (else -1), lit pixels, hit (0/1) and the kernel's flags (1: NaN/inf pixels
counted 0; 4: a count above int32, frame not used)."""

ALREADY_INGESTED = "already ingested"   # trains a restarted source sent again: counted, but not bad
LIT_EDGES = [0] + [2 ** k for k in range(23)]   # lit-pixel histogram bins [e_i, e_i+1), the last open


def lit_histogram(lit: np.ndarray) -> np.ndarray:
    """Counts of ``lit`` in the bins of :data:`LIT_EDGES` (the last bin open above)."""
    return np.bincount(np.searchsorted(LIT_EDGES, np.asarray(lit), side="right") - 1, minlength=len(LIT_EDGES))


def read_frame_stats(path: str | os.PathLike, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Records ``start:stop`` of a ``frames.bin`` (whole records only) as a structured array."""
    size = os.path.getsize(path) // FRAME_STATS.itemsize
    stop = size if stop is None else min(stop, size)
    count = max(stop - start, 0)
    return np.fromfile(path, dtype=FRAME_STATS, count=count, offset=start * FRAME_STATS.itemsize)


def read_index(path: str | os.PathLike) -> tuple[list[dict], int]:
    """The whole JSON lines of an ``index.jsonl`` and the byte length they fill (a torn last line is left)."""
    if not os.path.exists(path):
        return [], 0
    data = Path(path).read_bytes()
    lines, good = [], 0
    for raw in data.splitlines(keepends=True):
        if not raw.endswith(b"\n"):
            break
        try:
            lines.append(json.loads(raw))
        except (ValueError, RecursionError):
            break
        good += len(raw)
    return lines, good


def _fsync(path: Path) -> None:
    """Flush a written file to the disk (before the index line that names it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ChunkWriter(PhotonsWriter):
    """A photons file with each frame's ``train_id`` and ``pulse_id`` beside the photons (still atomic)."""

    def add_ids(self, train_ids: np.ndarray, pulse_ids: np.ndarray) -> None:
        for name, ids in (("train_id", train_ids), ("pulse_id", pulse_ids)):
            self._file.create_dataset(name, data=np.asarray(ids, np.uint64), track_times=False)


@dataclass
class Committed:
    """What the index says was made durable (all zero for a new follow)."""

    commits: int = 0
    chunks: int = 0
    frames_seen: int = 0
    hits: int = 0
    trains: int = 0
    last_train: int = -1
    bad: dict = field(default_factory=dict)
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(len(LIT_EDGES), np.int64))
    threshold: float | None = None
    ended: str | None = None
    files: list = field(default_factory=list)    # a folder source's files read and committed, in order


class Store:
    """The files of one follow in ``folder`` (layout in the module docstring)."""

    def __init__(self, folder: str | os.PathLike, source: str = "", rule: str = ""):
        self.folder = Path(folder)
        self.index = self.folder / layout.FOLLOW_INDEX
        self.frames = self.folder / layout.FOLLOW_FRAMES
        self.status = self.folder / layout.FOLLOW_STATUS
        self.chunks = self.folder / layout.CHUNKS_DIR
        self.source, self.rule = source, rule
        self.state = Committed()
        self.first_received: float | None = None
        self.last_received: float | None = None
        self.driver_gone = False      # the pipeline's driver that started this follower died (stages.follow)

    def load(self) -> Committed:
        """Read what an earlier follower committed (nothing is created); clean up after a crash."""
        lines, good = read_index(self.index)
        state = Committed()
        for line in lines:
            if "end" in line:
                state.ended = line["end"]
                continue
            state.commits = line["commit"]
            state.chunks += line["chunk"] is not None
            for key in ("frames_seen", "hits", "trains", "last_train", "bad"):
                setattr(state, key, line[key])
            state.histogram = np.asarray(line["lit_histogram"], np.int64)
            state.threshold = line["threshold"]
            state.files += line.get("files") or []
            self.first_received = self.first_received or line.get("first_received")
            self.last_received = line.get("last_received")
        if self.index.exists() and good < self.index.stat().st_size:
            log.warning("%s: a torn last line (a crash while committing) is dropped", self.index)
            os.truncate(self.index, good)
        named = {line["chunk"] for line in lines if line.get("chunk")}
        if self.chunks.is_dir():
            for path in self.chunks.iterdir():
                if path.name not in named:
                    log.warning("%s: not in the index (a crash while committing): removed", path)
                    path.unlink()
        if self.frames.exists():
            keep = state.frames_seen * FRAME_STATS.itemsize
            if self.frames.stat().st_size > keep:
                os.truncate(self.frames, keep)
        self.state = state
        return state

    def start(self, detector) -> None:
        """Create the folder and write ``detector.h5`` (once; a resumed follow keeps its own)."""
        path = self.folder / layout.DETECTOR
        if path.exists():
            from spibatch.detector import Detector

            before = Detector.read(path)
            if before.shape != detector.shape or not np.array_equal(before.mask, detector.mask) \
                    or not np.allclose(before.q_voxels, detector.q_voxels):
                raise InputError(f"this follow was started with another detector (shape {before.shape}), "
                                 f"now {detector.shape}", path=path, field="detector",
                                 fix="resume with the run's own geometry, or follow into a new run folder")
        self.chunks.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            write_detector(path, detector)

    def recent_lit(self, count: int) -> np.ndarray:
        """The lit pixels of the last ``count`` committed frames (the hit finder's window on resume)."""
        if not self.frames.exists():
            return np.zeros(0, np.int64)
        seen = self.state.frames_seen
        return read_frame_stats(self.frames, max(seen - count, 0), seen)["lit"].astype(np.int64)

    def commit(self, hits: Photons | None, hit_trains: np.ndarray, hit_pulses: np.ndarray, stats: np.ndarray,
               trains: int, last_train: int, bad: dict, threshold: float, files: list[str] = ()) -> dict:
        """Make one batch durable (steps 1-4 of the module docstring); the index line written."""
        state = self.state
        chunk = None
        if hits is not None and hits.num_frames:
            chunk = layout.chunk_name(state.chunks + 1)
            with ChunkWriter(self.chunks / chunk, hits.num_pix) as writer:
                writer.append(hits)
                writer.add_ids(hit_trains, hit_pulses)
            _fsync(self.chunks / chunk)
            _fsync(self.chunks)          # the rename too
        with open(self.frames, "ab") as f:
            f.write(np.ascontiguousarray(stats, FRAME_STATS).tobytes())
            f.flush()
            os.fsync(f.fileno())
        if len(stats):
            self.first_received = self.first_received or float(stats["received"][0])
            self.last_received = float(stats["received"][-1])
        n_hits = 0 if chunk is None else hits.num_frames
        line = {"commit": state.commits + 1, "chunk": chunk, "first_frame": state.hits, "frames": n_hits,
                "frames_seen": state.frames_seen + len(stats), "hits": state.hits + n_hits,
                "trains": state.trains + trains, "last_train": int(last_train), "bad": dict(bad),
                "lit_histogram": (state.histogram + lit_histogram(stats["lit"])).tolist(),
                "threshold": float(threshold), "first_received": self.first_received,
                "last_received": self.last_received, "time": time.time(), **({"files": list(files)} if files else {})}
        self._append(line)
        state.commits, state.chunks = line["commit"], state.chunks + (chunk is not None)
        state.frames_seen, state.hits, state.trains = line["frames_seen"], line["hits"], line["trains"]
        state.last_train, state.bad = line["last_train"], line["bad"]
        state.histogram, state.threshold = np.asarray(line["lit_histogram"], np.int64), line["threshold"]
        self.write_status("following", None, len(stats), n_hits)
        return line

    def end(self, reason: str) -> None:
        """The closing ``{"end": reason}`` line and the final status (only once the folder exists)."""
        if not self.folder.exists():
            return
        self._append({"end": reason, "time": time.time(), "frames_seen": self.state.frames_seen,
                      "hits": self.state.hits})
        self.state.ended = reason
        self.write_status("ended", reason, 0, 0)

    def _append(self, line: dict) -> None:
        with open(self.index, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_status(self, state: str, reason: str | None, batch_frames: int, batch_hits: int) -> None:
        s = self.state
        status = {"state": state, "end_reason": reason, "source": self.source, "frames_seen": s.frames_seen,
                  "hits": s.hits, "hit_rate": s.hits / s.frames_seen if s.frames_seen else 0.0,
                  "last_batch_hit_rate": batch_hits / batch_frames if batch_frames else None,
                  "trains": s.trains, "last_train": s.last_train, "chunks": s.chunks, "bad_trains": s.bad,
                  "bad_trains_total": int(sum(v for k, v in s.bad.items() if k != ALREADY_INGESTED)),
                  "threshold": s.threshold, "threshold_rule": self.rule,
                  "lit_histogram": {"edges": LIT_EDGES, "counts": s.histogram.tolist()},
                  "first_received": self.first_received, "last_received": self.last_received,
                  "driver_gone": self.driver_gone, "updated": time.time()}
        write_text(self.status, json.dumps(status, indent=1) + "\n")
