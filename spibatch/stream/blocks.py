"""What a live source hands the follower: blocks of whole trains, or word of trains it had to skip."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Block:
    """Frames of one or more whole trains, in train order.

    data : (n, *frame_shape) float32 ADU (calibrated) or photon counts; pixels of a frame in C order
        over ``frame_shape``, modules slowest for a modular detector (modules, ss, fs)
    train_ids, pulse_ids : (n,) uint64, each frame's train and pulse (or memory cell, or frame in file)
    source : where the frames came from (a source name, a file), for the log
    received : when the source got them (seconds since the epoch)
    """

    data: np.ndarray
    train_ids: np.ndarray
    pulse_ids: np.ndarray
    source: str
    received: float = field(default_factory=time.time)

    def __post_init__(self):
        self.train_ids = np.asarray(self.train_ids, np.uint64).reshape(-1)
        self.pulse_ids = np.asarray(self.pulse_ids, np.uint64).reshape(-1)
        if not (len(self.data) == len(self.train_ids) == len(self.pulse_ids)):
            raise ValueError(f"{len(self.data)} frames but {len(self.train_ids)} train and {len(self.pulse_ids)} "
                             "pulse IDs")

    @property
    def num_frames(self) -> int:
        return len(self.train_ids)


@dataclass
class Skipped:
    """Trains a source could not use: ``reason`` (a short key the statistics count, e.g. "module missing"),
    the ``source`` and ``field`` at fault and what was wrong (``problem``).  ``trains``: their train IDs
    (empty when unknown, e.g. a file that cannot be opened); ``frames``: how many frames, where known;
    ``counted``: False for a note whose trains are counted by another item (a module file that cannot be
    read: its trains come again as "module missing", one count each)."""

    reason: str
    source: str
    field: str
    problem: str
    trains: tuple[int, ...] = ()
    frames: int = 0
    counted: bool = True

    def describe(self) -> str:
        """One line: source, train(s), field, problem."""
        if not self.trains:
            which = "train unknown"
        elif len(self.trains) == 1:
            which = f"train {self.trains[0]}"
        else:
            which = f"trains {min(self.trains)}..{max(self.trains)} ({len(self.trains)})"
        return f"{self.source}: {which}: {self.field}: {self.problem} ({self.reason}: skipped)" if self.counted \
            else f"{self.source}: {which}: {self.field}: {self.problem} ({self.reason})"


def train_ranges(train_ids: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive runs of ``train_ids`` (sorted) as (first, last) pairs."""
    ids = np.unique(np.asarray(train_ids, np.int64))
    if not len(ids):
        return []
    breaks = np.flatnonzero(np.diff(ids) != 1)
    starts = np.concatenate([[0], breaks + 1])
    stops = np.concatenate([breaks, [len(ids) - 1]])
    return [(int(ids[a]), int(ids[b])) for a, b in zip(starts, stops)]
