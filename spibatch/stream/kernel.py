"""Streaming ADU -> photons with hit finding: one pass over every frame, a second over the hits only.

The counting rule is today's CXI ingest's (:mod:`spibatch.kernels.photons_cpu`), per module (frames are read as
float64 when they are float64 or integers wider than 16 bits, else as float32, as exact either way):
a masked pixel counts 0; else ``rint(value / adu_per_photon[module])`` in float64 (halves to the
even neighbour); a count below 0 becomes 0 (calibrated data has negative noise, so the stream
clips: ``clip_negative`` is always on); a NaN or inf pixel counts 0 and flags its frame
(FLAG_NONFINITE; calibrated EuXFEL data marks some bad pixels so); a count above int32 flags
the frame as unusable (FLAG_TOO_LARGE).

Pass 1 (:func:`tally`) reads every frame once and gives per frame the lit pixels (>= 1 photon),
the single-photon and multi-photon pixel counts, the photons and the flags.  Most pixels of
a calibrated SPI frame are noise below half a photon: a block of pixels that lies strictly
inside ``(-0.49, 0.49) * adu_per_photon`` (a float32 compare, which vectorizes) is skipped
without the float64 division, and the result is exactly the division's (the margin keeps the
float32 compare on the safe side).  Pass 2 (:func:`fill`) writes the sparse arrays of the
frames the hit finder kept.  Frames run in parallel (Numba prange).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from spibatch.kernels.photons_cpu import _count

FLAG_NONFINITE, FLAG_TOO_LARGE = 1, 4
SAFE = 0.49      # |value| < SAFE * adu_per_photon rounds to 0 photons, with room for float32 rounding
LANE = 64        # pixels per fast-path test


@nb.njit(inline="always")
def _exact(row, p0, p1, bad, a, lo, hi, acc):
    """The exact count of pixels ``p0 .. p1`` of ``row`` into acc = [ones, multis, photons, flags]."""
    for p in range(p0, p1):
        v = row[p]
        if bad[p] or (v > lo and v < hi):
            continue
        if not np.isfinite(v):
            acc[3] |= FLAG_NONFINITE
            continue
        c, fl = _count(v, a, True)
        acc[3] |= fl
        if c == 1.0:
            acc[0] += 1
            acc[2] += 1
        elif c > 1.0:
            acc[1] += 1
            acc[2] += np.int64(c)


@nb.njit(parallel=True, cache=True)
def _tally(block, modules, bad, adu, lo, hi, lit, ones, multis, photons, flags):
    frames, num_pix = block.shape
    per_module = num_pix // modules
    lanes = per_module // LANE
    for f in nb.prange(frames):
        row = block[f]
        acc = np.zeros(4, np.int64)
        for m in range(modules):
            lo_m, hi_m, start = lo[m], hi[m], m * per_module
            for lane in range(lanes):
                a = start + lane * LANE
                seg = row[a:a + LANE]
                outside = 0
                for j in range(LANE):         # vectorizes: a float32 compare, no division, no branch
                    v = seg[j]
                    outside += (v <= lo_m) | (v >= hi_m) | (v != v)
                if outside:
                    _exact(row, a, a + LANE, bad, adu[m], lo_m, hi_m, acc)
            _exact(row, start + lanes * LANE, start + per_module, bad, adu[m], lo_m, hi_m, acc)
        lit[f] = acc[0] + acc[1]
        ones[f] = acc[0]
        multis[f] = acc[1]
        photons[f] = acc[2]
        flags[f] = acc[3]


@nb.njit(parallel=True, cache=True)
def _fill(block, modules, bad, adu, lo, hi, rows, ones_indptr, multi_indptr, ones_index, multi_index, multi_count):
    num_pix = block.shape[1]
    per_module = num_pix // modules
    lanes = per_module // LANE
    for k in nb.prange(rows.shape[0]):
        row = block[rows[k]]
        at = np.empty(2, np.int64)      # next free entry: ones, multi
        at[0] = ones_indptr[k]
        at[1] = multi_indptr[k]
        for m in range(modules):
            lo_m, hi_m, start = lo[m], hi[m], m * per_module
            for lane in range(lanes):
                a = start + lane * LANE
                seg = row[a:a + LANE]
                outside = 0
                for j in range(LANE):
                    v = seg[j]
                    outside += (v <= lo_m) | (v >= hi_m) | (v != v)
                if outside:
                    _put(row, a, a + LANE, bad, adu[m], lo_m, hi_m, at, ones_index, multi_index, multi_count)
            _put(row, start + lanes * LANE, start + per_module, bad, adu[m], lo_m, hi_m, at, ones_index,
                 multi_index, multi_count)


@nb.njit(inline="always")
def _put(row, p0, p1, bad, a, lo, hi, at, ones_index, multi_index, multi_count):
    for p in range(p0, p1):
        v = row[p]
        if bad[p] or (v > lo and v < hi) or not np.isfinite(v):
            continue
        c, _ = _count(v, a, True)
        if c == 1.0:
            ones_index[at[0]] = p
            at[0] += 1
        elif c > 1.0:
            multi_index[at[1]] = p
            multi_count[at[1]] = np.int32(c)
            at[1] += 1


class Counter:
    """ADU -> photons for frames of ``num_pix`` pixels in ``modules`` equal modules (pixels in C order,
    module slowest), with one ``adu_per_photon`` per module (or one for all) and a bad-pixel mask."""

    def __init__(self, num_pix: int, modules: int = 1, adu_per_photon=1.0, bad: np.ndarray | None = None):
        if num_pix % modules:
            raise ValueError(f"{num_pix} pixels do not split into {modules} equal modules")
        adu = np.broadcast_to(np.asarray(adu_per_photon, np.float64), (modules,)).copy()
        if not (np.isfinite(adu).all() and (adu > 0).all()):
            raise ValueError(f"adu_per_photon must be positive and finite, got {adu_per_photon}")
        self.num_pix, self.modules, self.adu = int(num_pix), int(modules), adu
        self.hi = (SAFE * adu).astype(np.float32)
        self.lo = -self.hi
        self.bad = np.zeros(num_pix, np.bool_) if bad is None else np.ascontiguousarray(bad, np.bool_).reshape(-1)
        if self.bad.shape != (num_pix,):
            raise ValueError(f"bad-pixel mask has {self.bad.size} entries, frames {num_pix} pixels")

    def _block(self, block: np.ndarray) -> np.ndarray:
        """The frames as a C-contiguous float32 or float64 (frames, num_pix) block: float64 data and integers wider
        than 16 bits are counted in float64, as batch ingest does (a float32 cast moved 2.5000001 ADU to 2.5,
        which rounds to 2 photons, not 3); the rest (EuXFEL's corrected float32, 16-bit raw) in float32."""
        block = block.reshape(len(block), self.num_pix)
        wide = block.dtype.itemsize > (4 if block.dtype.kind == "f" else 2) and block.dtype.kind in "fiu"   # >f8 too
        dtype = np.float64 if wide else np.float32
        if block.dtype != dtype or not block.flags.c_contiguous:
            block = np.ascontiguousarray(block, dtype)
        return block

    def tally(self, block: np.ndarray) -> dict[str, np.ndarray]:
        """Pass 1 over ``block`` (frames, ...) of ``num_pix`` pixels: per frame ``lit``, ``ones``, ``multis``,
        ``photons`` (int64) and ``flags`` (int32, FLAG_* bits)."""
        block = self._block(block)
        n = len(block)
        out = {name: np.empty(n, np.int64) for name in ("lit", "ones", "multis", "photons")}
        out["flags"] = np.empty(n, np.int32)
        _tally(block, self.modules, self.bad, self.adu, self.lo, self.hi, out["lit"], out["ones"], out["multis"],
               out["photons"], out["flags"])
        return out

    def fill(self, block: np.ndarray, rows: np.ndarray, tally: dict[str, np.ndarray]):
        """Pass 2: the sparse photons of frames ``rows`` of ``block`` as a :class:`~spibatch.photons.Photons`."""
        from spibatch.photons import Photons

        block = self._block(block)
        rows = np.ascontiguousarray(rows, np.int64)
        ones_indptr = np.zeros(len(rows) + 1, np.int64)
        multi_indptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(tally["ones"][rows], out=ones_indptr[1:])
        np.cumsum(tally["multis"][rows], out=multi_indptr[1:])
        ones_index = np.empty(ones_indptr[-1], np.int32)
        multi_index = np.empty(multi_indptr[-1], np.int32)
        multi_count = np.empty(multi_indptr[-1], np.int32)
        if len(rows):
            _fill(block, self.modules, self.bad, self.adu, self.lo, self.hi, rows, ones_indptr, multi_indptr,
                  ones_index, multi_index, multi_count)
        return Photons(self.num_pix, ones_indptr, ones_index, multi_indptr, multi_index, multi_count)
