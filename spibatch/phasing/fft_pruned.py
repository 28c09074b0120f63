"""scipy.fft's real-to-complex 3-D FFT of a volume that is zero outside some rows, skipping the zeros.

After an error-reduction step, and in a shrink-wrap (the FFT of P_S x), the iterate is zero outside its
support: most rows (i, j, :) are all zero.  pocketfft's ``rfftn`` runs the real-to-complex transform along
the last axis, then the complex transform along axis 0, then along axis 1; a transform of zeros is zeros.
:func:`rfftn_skipping_zeros` runs the same one-dimensional transforms, in the same order, only where the
input can be non-zero: the last axis on the occupied rows, axis 0 on the occupied columns j, axis 1
everywhere.  Each transform computes what it computes inside ``rfftn``, so the spectrum is the same, bit for
bit (``tests/test_phasing_fft_pruned.py``).  Worth it when the occupied columns span at most
:data:`MAX_SPAN` of the box (BENCHMARKS.md, "Shrink-wrap at most one iteration").
"""

from __future__ import annotations

import numpy as np

from spibatch.kernels.phasing_cpu import occupied_rows

MAX_SPAN = 0.6     # the occupied columns' share of axis 1 above which the plain rfftn is as fast


def occupied_slices(occupied: np.ndarray) -> list[slice]:
    """Slices covering every True of a 1-D mask: all but its longest circular run of False, as one slice or as
    two when it wraps past the end (an FFT-order support around index 0).  [] when nothing is True."""
    n = occupied.size
    if not occupied.any():
        return []
    if occupied.all():
        return [slice(0, n)]
    start = int(np.argmax(occupied))                  # rotate so that index 0 is occupied: no gap wraps
    a, b = max(_false_runs(np.roll(occupied, -start)), key=lambda run: run[1] - run[0])
    first, last = (start + b) % n, (start + a) % n     # the occupied part is [first, last) circularly
    if first < last:
        return [slice(first, last)]
    return [slice(first, n), slice(0, last)] if last > 0 else [slice(first, n)]


def _false_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """The runs [a, b) of False in a 1-D mask."""
    padded = np.r_[True, mask, True]
    change = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b)) for a, b in zip(change[0::2], change[1::2])]


def rfftn_skipping_zeros(volume: np.ndarray, workers: int) -> np.ndarray | None:
    """``scipy.fft.rfftn(volume, workers=workers)`` of a real (N0, N1, N2) volume, transforming only where it
    can be non-zero; None when its occupied columns span more than :data:`MAX_SPAN` of axis 1 (then the plain
    ``rfftn`` is as fast)."""
    import scipy.fft

    if not volume.flags.c_contiguous:
        return None
    n1 = volume.shape[1]
    step = max(1, int((1 - MAX_SPAN) * n1) - 1)
    if all(volume[0, j].any() for j in range(0, n1, step)):
        return None      # columns at most (1 - MAX_SPAN) N1 apart are occupied: the span is wider (an HIO iterate)
    rows = occupied_rows(volume)
    along_j = occupied_slices(rows.any(axis=0))
    if sum(s.stop - s.start for s in along_j) > MAX_SPAN * volume.shape[1]:
        return None
    along_i = occupied_slices(rows.any(axis=1))
    complex_type = np.result_type(volume.dtype, np.complex64)
    spectrum = np.zeros(volume.shape[:2] + (volume.shape[2] // 2 + 1,), complex_type)
    for si in along_i:
        for sj in along_j:
            spectrum[si, sj] = scipy.fft.rfft(volume[si, sj], axis=2, workers=workers)
    for sj in along_j:
        _in_place(scipy.fft.fft(spectrum[:, sj], axis=0, workers=workers, overwrite_x=True), spectrum, (slice(None), sj))
    return _in_place(scipy.fft.fft(spectrum, axis=1, workers=workers, overwrite_x=True), spectrum, ())


def _in_place(result: np.ndarray, spectrum: np.ndarray, where) -> np.ndarray:
    """``spectrum`` with ``result`` in ``spectrum[where]`` (already there when scipy worked in place)."""
    if not np.shares_memory(result, spectrum):
        spectrum[where] = result
    return spectrum
