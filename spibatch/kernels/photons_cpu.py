"""Dense detector frames in ADU -> sparse photon counts, in two fused passes (Numba, parallel over frames).

What :func:`spibatch.io.cxi.cxi_to_photons` runs on each block of frames.  Per pixel:
masked pixels count 0; otherwise ``rint(value / adu_per_photon)`` in float64 (halves to the
even neighbour, as ``numpy.rint``); a count below 0 becomes 0 when ``clip_negative``.  Pass 1
counts ones and multi-photon pixels per frame and flags bad frames (NaN or inf, a negative count
without ``clip_negative``, a count above int32); pass 2 writes the sparse arrays.  The numbers
are those of the dense numpy reference (``numpy.rint`` of the float64 quotient, then
``Photons.from_dense``), which the tests check.

Numba compiles on first use and caches to disk (``cache=True``).
"""

from __future__ import annotations

import numba as nb
import numpy as np

INT32_MAX = np.iinfo(np.int32).max
BAD_NONFINITE, BAD_NEGATIVE, BAD_TOO_LARGE = 1, 2, 4


@nb.njit(inline="always")
def _count(value, adu_per_photon, clip_negative):
    """(count, flag) of one unmasked pixel; flag 0 when the count is usable."""
    if not np.isfinite(value):
        return 0.0, BAD_NONFINITE
    c = np.rint(np.float64(value) / adu_per_photon)
    if c < 0:
        return 0.0, 0 if clip_negative else BAD_NEGATIVE
    if c > INT32_MAX:
        return 0.0, BAD_TOO_LARGE
    return c, 0


@nb.njit(parallel=True, cache=True)
def _tally(block, bad, adu_per_photon, clip_negative, ones, multis, flags):
    """Pass 1: ones[f], multis[f] per frame and the OR of its pixels' flags in flags[f]."""
    for f in nb.prange(block.shape[0]):
        n1 = 0
        nm = 0
        flag = 0
        for p in range(block.shape[1]):
            if bad[p]:
                continue
            c, fl = _count(block[f, p], adu_per_photon, clip_negative)
            flag |= fl
            if c == 1.0:
                n1 += 1
            elif c > 1.0:
                nm += 1
        ones[f] = n1
        multis[f] = nm
        flags[f] = flag


@nb.njit(parallel=True, cache=True)
def _fill(block, bad, adu_per_photon, clip_negative, ones_indptr, multi_indptr, ones_index, multi_index,
          multi_count):
    """Pass 2: the sparse arrays at the offsets pass 1 gave."""
    for f in nb.prange(block.shape[0]):
        k1 = ones_indptr[f]
        km = multi_indptr[f]
        for p in range(block.shape[1]):
            if bad[p]:
                continue
            c, _ = _count(block[f, p], adu_per_photon, clip_negative)
            if c == 1.0:
                ones_index[k1] = p
                k1 += 1
            elif c > 1.0:
                multi_index[km] = p
                multi_count[km] = np.int32(c)
                km += 1


def sparse_counts(block: np.ndarray, bad: np.ndarray | None, adu_per_photon: float, clip_negative: bool):
    """Photon counts of a (frames, num_pix) ADU block as Photons-ready arrays, or the per-frame flags.

    Returns ``(arrays, flags)``: ``arrays`` = (ones_indptr int64, ones_index int32, multi_indptr int64,
    multi_index int32, multi_count int32), or None when some frame is flagged (``flags`` (frames,)
    int32: BAD_* bits), for the caller to report that frame.
    """
    frames, num_pix = block.shape
    if block.dtype.kind == "b" or block.dtype.itemsize > 8 or block.dtype == np.float16:
        block = block.astype(np.float64)                 # what Numba has no arithmetic for
    elif not block.dtype.isnative:
        block = block.astype(block.dtype.newbyteorder("="))
    block = np.ascontiguousarray(block)                  # integers and float32/64 are read as they are
    bad = np.zeros(num_pix, np.bool_) if bad is None else np.ascontiguousarray(bad, dtype=np.bool_)
    ones, multis, flags = np.empty(frames, np.int64), np.empty(frames, np.int64), np.empty(frames, np.int32)
    _tally(block, bad, float(adu_per_photon), bool(clip_negative), ones, multis, flags)
    if flags.any():
        return None, flags
    ones_indptr, multi_indptr = np.zeros(frames + 1, np.int64), np.zeros(frames + 1, np.int64)
    np.cumsum(ones, out=ones_indptr[1:])
    np.cumsum(multis, out=multi_indptr[1:])
    ones_index = np.empty(ones_indptr[-1], np.int32)
    multi_index = np.empty(multi_indptr[-1], np.int32)
    multi_count = np.empty(multi_indptr[-1], np.int32)
    _fill(block, bad, float(adu_per_photon), bool(clip_negative), ones_indptr, multi_indptr, ones_index,
          multi_index, multi_count)
    return (ones_indptr, ones_index, multi_indptr, multi_index, multi_count), flags
