"""The entries an E step keeps, block of rotations after block, written in place into arrays that grow."""

from __future__ import annotations

import os

import numpy as np

ENTRY_BYTES = 16   # a kept entry: frame and rotation int32, value float64


def _ram_bytes() -> int:
    """This machine's memory (an upper bound for one allocation that is not refused outright)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 8 << 30


class KeptEntries:
    """The kept (frame int32, rotation int32, value float64) entries of a shard's blocks, written in place into
    arrays that grow by copying when a block does not fit (joining per-block arrays at the end copied all:
    52 MB an early iteration of the small set).  The first block sizes them for all blocks: pages beyond what
    is written are never touched, so an estimate too large costs no memory (up to a quarter of the machine's)."""

    def __init__(self, num_blocks: int):
        self.num_blocks, self.block_ptr = num_blocks, [0]     # block b's entries: block_ptr[b] .. block_ptr[b + 1]
        self.arrays = (np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0))

    def reserve(self, count: int) -> int:
        """Room for ``count`` more entries (the next block's); returns where they start."""
        start = self.block_ptr[-1]
        need = start + count
        if need > len(self.arrays[0]):
            left = self.num_blocks - len(self.block_ptr) + 1           # blocks still to come, this one included
            estimate = min(need + count * (left - 1) + count // 4, _ram_bytes() // 4 // ENTRY_BYTES)
            size = max(need, estimate, int(1.5 * len(self.arrays[0])))
            grown = tuple(np.empty(size, a.dtype) for a in self.arrays)
            for new, old in zip(grown, self.arrays):
                new[:start] = old[:start]
            self.arrays = grown
        self.block_ptr.append(need)
        return start

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(frame (n,) int32, rotation (n,) int32, value (n,) float64, block_ptr (blocks + 1,) int64)``."""
        n = self.block_ptr[-1]
        return (*(a[:n] for a in self.arrays), np.asarray(self.block_ptr, np.int64))
