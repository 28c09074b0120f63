"""Helpers of the stream tests: an in-memory source, a FrameSet's blocks and hits, the hits in a follow's chunks."""

from __future__ import annotations

import numpy as np

from spibatch.stream.blocks import Block
from spibatch.stream.replay import FrameSet
from spibatch.stream.shards import ChunkShards


class ListSource:
    """Hands out prepared items one per read, then says it ended."""

    name = "memory"

    def __init__(self, items):
        self.items, self.ended = list(items), None

    def read(self):
        if not self.items:
            self.ended = "all read"
            return []
        return [self.items.pop(0)]

    def close(self):
        pass


def blocks_of(frames: FrameSet, trains=None) -> list[Block]:
    out = []
    for k in trains if trains is not None else range(frames.num_trains):
        tid, data, pulses = frames.train(k)
        out.append(Block(data, np.full(len(data), tid), pulses, "memory"))
    return out


def hit_ids(frames: FrameSet, trains=None) -> set[tuple[int, int]]:
    p = frames.pulses_per_train
    wanted = set(trains if trains is not None else range(frames.num_trains))
    return {(frames.first_train + i // p, i % p) for i in np.flatnonzero(frames.is_hit) if i // p in wanted}


def chunk_ids(folder) -> list[tuple[int, int]]:
    import h5py

    ids = []
    for spec in ChunkShards(folder).poll():
        with h5py.File(spec.photons) as f:
            ids += list(zip(f["train_id"][spec.start:spec.stop].tolist(), f["pulse_id"][spec.start:spec.stop].tolist()))
    return ids
