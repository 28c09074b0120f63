"""CPU kernels of the merge's bookkeeping (Numba, parallel): where each block of rotations' kept entries are,
how many photons their frames hold (the dense-or-sparse choice of :mod:`spibatch.emc.merge`), and the dense
block of probabilities filled from them."""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(parallel=True, cache=True, nogil=True)
def merge_block_bounds(rot, block, num_blocks, frame, photons_per_frame):
    """Where each merge block's entries are, and how many photons their frames hold.

    rot (n,) int32, whose ``rot // block`` never decreases (entries in likelihood-block order); frame (n,)
    int32; photons_per_frame (D,) int64.  Returns ``(starts (num_blocks + 1,) int64, photons (num_blocks,)
    int64)``: block k's entries are ``starts[k] .. starts[k + 1]``, ``photons[k]`` the sum over them of their
    frame's photons (the dense-or-sparse choice).  A binary search per block (``rot >= k block`` is monotone)
    and one parallel pass: numpy's ``rot // block``, searchsorted and per-block gathers took 15 ms an early
    iteration of the small set."""
    n = rot.shape[0]
    starts = np.empty(num_blocks + 1, np.int64)
    for k in range(num_blocks + 1):
        lo, hi, edge = 0, n, k * block
        while lo < hi:
            mid = (lo + hi) // 2
            if rot[mid] >= edge:
                hi = mid
            else:
                lo = mid + 1
        starts[k] = lo
    photons = np.zeros(num_blocks, np.int64)
    for k in nb.prange(num_blocks):
        total = 0
        for j in range(starts[k], starts[k + 1]):
            total += photons_per_frame[frame[j]]
        photons[k] = total
    return starts, photons


@nb.njit(parallel=True, cache=True, nogil=True)
def fill_dense_block(frame, rot, prob, lo, hi, r0, out):
    """out (D, n) float32 <- 0, then out[frame[j], rot[j] - r0] = prob[j] for entries j in lo .. hi (no two the
    same (frame, rotation)).  In parallel: numpy's zeroing and fancy-index assignment took 15 ms a block set."""
    for d in nb.prange(out.shape[0]):
        row = out[d]
        for k in range(out.shape[1]):
            row[k] = 0.0
    chunks = 64
    size = (hi - lo + chunks - 1) // chunks
    for c in nb.prange(chunks):
        for j in range(lo + c * size, min(hi, lo + (c + 1) * size)):
            out[frame[j], rot[j] - r0] = np.float32(prob[j])
