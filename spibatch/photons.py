"""Sparse photon counts: Dragonfly's ones/multi layout held as CSR arrays.

A frame's pixels with exactly one photon are listed in ``ones_index``; pixels
with two or more are listed in ``multi_index`` with their counts in
``multi_count``.  Frame ``k`` owns ``ones_index[ones_indptr[k]:ones_indptr[k+1]]``
(and likewise for multi).  Nothing here ever holds a dense frames x pixels
array larger than the block a caller passes in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(eq=False)
class Photons:
    """Sparse photon counts of ``num_frames`` frames on a ``num_pix``-pixel detector.

    Attributes
    ----------
    num_pix : int, pixels per frame (must equal the detector's)
    ones_indptr : (num_frames + 1,) int64, CSR row pointer into ``ones_index``
    ones_index : (n_ones,) int32, pixel index of each single-photon pixel
    multi_indptr : (num_frames + 1,) int64, CSR row pointer into ``multi_index``
    multi_index : (n_multi,) int32, pixel index of each multi-photon pixel
    multi_count : (n_multi,) int32, its photon count (>= 2)
    """

    num_pix: int
    ones_indptr: np.ndarray
    ones_index: np.ndarray
    multi_indptr: np.ndarray
    multi_index: np.ndarray
    multi_count: np.ndarray

    @property
    def num_frames(self) -> int:
        return len(self.ones_indptr) - 1

    @classmethod
    def empty(cls, num_pix: int) -> "Photons":
        z64, z32 = np.zeros(1, np.int64), np.zeros(0, np.int32)
        return cls(int(num_pix), z64, z32, z64.copy(), z32.copy(), z32.copy())

    @classmethod
    def from_dense(cls, counts: np.ndarray) -> "Photons":
        """Build from a dense block ``counts`` (frames, num_pix) of non-negative integers."""
        counts = np.asarray(counts)
        if counts.ndim != 2:
            raise ValueError(f"counts must be 2-D (frames, pixels), got shape {counts.shape}")
        f1, p1 = np.nonzero(counts == 1)
        fm, pm = np.nonzero(counts > 1)
        nf = counts.shape[0]
        ones_indptr = np.zeros(nf + 1, np.int64)
        np.cumsum(np.bincount(f1, minlength=nf), out=ones_indptr[1:])
        multi_indptr = np.zeros(nf + 1, np.int64)
        np.cumsum(np.bincount(fm, minlength=nf), out=multi_indptr[1:])
        return cls(counts.shape[1], ones_indptr, p1.astype(np.int32), multi_indptr,
                   pm.astype(np.int32), counts[fm, pm].astype(np.int32))

    def to_dense(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Dense counts (stop - start, num_pix) int32 of frames ``start:stop`` (for tests and small blocks)."""
        stop = self.num_frames if stop is None else stop
        out = np.zeros((stop - start, self.num_pix), np.int32)
        for k in range(start, stop):
            o = self.ones_index[self.ones_indptr[k]:self.ones_indptr[k + 1]]
            m = slice(self.multi_indptr[k], self.multi_indptr[k + 1])
            out[k - start, o] = 1
            out[k - start, self.multi_index[m]] = self.multi_count[m]
        return out

    def frame_counts(self) -> np.ndarray:
        """Total photons per frame, (num_frames,) int64."""
        ones = np.diff(self.ones_indptr)
        csum = np.concatenate([[0], np.cumsum(self.multi_count, dtype=np.int64)])
        return ones + csum[self.multi_indptr[1:]] - csum[self.multi_indptr[:-1]]

    def select(self, start: int, stop: int) -> "Photons":
        """Frames ``start:stop`` as a new Photons (arrays are copies)."""
        o0, o1 = self.ones_indptr[start], self.ones_indptr[stop]
        m0, m1 = self.multi_indptr[start], self.multi_indptr[stop]
        return Photons(self.num_pix,
                       self.ones_indptr[start:stop + 1] - o0, self.ones_index[o0:o1].copy(),
                       self.multi_indptr[start:stop + 1] - m0, self.multi_index[m0:m1].copy(),
                       self.multi_count[m0:m1].copy())

    def take(self, frames) -> "Photons":
        """Frames ``frames`` (indices, in the order given) as a new Photons."""
        frames = np.asarray(frames, np.int64)

        def rows(indptr: np.ndarray, *flat: np.ndarray) -> tuple:
            lengths = indptr[frames + 1] - indptr[frames]
            out_ptr = np.zeros(len(frames) + 1, np.int64)
            np.cumsum(lengths, out=out_ptr[1:])
            where = np.repeat(indptr[frames] - out_ptr[:-1], lengths) + np.arange(out_ptr[-1])
            return (out_ptr,) + tuple(a[where] for a in flat)

        ones_ptr, ones = rows(self.ones_indptr, self.ones_index)
        multi_ptr, multi, count = rows(self.multi_indptr, self.multi_index, self.multi_count)
        return Photons(self.num_pix, ones_ptr, ones, multi_ptr, multi, count)

    @staticmethod
    def concatenate(parts: "list[Photons]") -> "Photons":
        """Frames of ``parts`` one after another; all must share ``num_pix``."""
        if not parts:
            raise ValueError("nothing to concatenate")
        num_pix = parts[0].num_pix
        if any(p.num_pix != num_pix for p in parts):
            raise ValueError("cannot concatenate photons of different num_pix")

        def indptr(name: str) -> np.ndarray:
            out, offset = [np.zeros(1, np.int64)], 0
            for p in parts:
                ptr = getattr(p, name)
                out.append(ptr[1:] + offset)
                offset += int(ptr[-1])
            return np.concatenate(out)

        return Photons(num_pix, indptr("ones_indptr"),
                       np.concatenate([p.ones_index for p in parts]).astype(np.int32),
                       indptr("multi_indptr"),
                       np.concatenate([p.multi_index for p in parts]).astype(np.int32),
                       np.concatenate([p.multi_count for p in parts]).astype(np.int32))
