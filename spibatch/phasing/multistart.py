"""The reduction of many independent starts: the best kept, aligned, averaged, and the PRTF.

The starts (:func:`spibatch.phasing.starts.run_starts`) run anywhere; ``merge(results,
measurement, keep)`` reduces them.  Densities travel in FFT order (origin at index 0) until
:func:`merge`, which returns them centred (origin at N // 2, like the intensity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spibatch.phasing.algebra import RecipeError
from spibatch.phasing.alignment import align, roll_to_centre
from spibatch.phasing.measurement import Measurement, shell_radius
from spibatch.phasing.starts import StartResult

INV_E = math.exp(-1.0)


@dataclass
class Merged:
    """The average of the best starts, centred (origin at N // 2).

    density (N, N, N) float32; support (N, N, N) float32: the fraction of kept starts whose
    support holds the voxel; prtf (S,) per shell of radius s voxels (NaN where nothing is
    measured); shell_frequency_per_m (S,) (NaN without a voxel size); resolution_m (1/e crossing,
    None if the PRTF stays above it or no voxel size); kept_seeds, final_errors, alignment_cc.
    """

    density: np.ndarray
    support: np.ndarray
    prtf: np.ndarray
    shell_frequency_per_m: np.ndarray
    resolution_m: float | None
    resolution_shell: float | None
    kept_seeds: list[int]
    final_errors: list[float]
    alignment_cc: list[float]
    inverted: list[bool]


def merge(results: list[StartResult], measurement: Measurement, keep: int, rank_factor: float | None = None
          ) -> Merged:
    """Keep the ``keep`` best starts (:func:`select`: by free error and support size with recipe ``auto``, else
    by final error), align them to the best, average, PRTF.  Starts that stopped early (``failure``) are left
    out; RecipeError (one line) when every start did.  ``rank_factor``: :func:`select`'s (default RANK_FACTOR)."""
    if not results:
        raise ValueError("no reconstructions to merge")
    usable = [r for r in results if r.failure is None]
    if not usable:
        raise RecipeError(f"{results[0].failure} (and so did every other of the {len(results)} starts)"
                          if len(results) > 1 else results[0].failure)
    results = usable
    ranked = select(results, keep, rank_factor)
    reference = ranked[0].density.astype(np.float64 if measurement.real else np.complex128)
    n = measurement.n
    spectrum_sum = np.zeros((n, n, n), np.complex128)
    density_sum = np.zeros((n, n, n), reference.dtype)
    support_sum = np.zeros((n, n, n), np.float64)
    ccs, inverted = [], []
    for result in ranked:
        aligned, how = align(result.density.astype(reference.dtype), reference)
        support = result.support.astype(np.float64)
        if how.inverted:
            inv = (-np.arange(n)) % n
            support = support[np.ix_(inv, inv, inv)]
        support = np.roll(support, tuple(int(round(s)) for s in how.shift), axis=(0, 1, 2))
        density_sum += aligned
        support_sum += support
        spectrum_sum += np.fft.fftn(aligned)
        ccs.append(how.cc)
        inverted.append(how.inverted)
    count = len(ranked)
    prtf = prtf_shells(spectrum_sum / count, measurement)
    density = density_sum / count
    density, shift = roll_to_centre(density)
    support = np.roll(support_sum / count, tuple(shift), axis=(0, 1, 2))
    shells = np.arange(prtf.size, dtype=float)
    voxel = measurement.voxel_size_m
    frequency = shells / (n * voxel) if voxel else np.full(prtf.size, np.nan)
    # one start's PRTF is 1 wherever it has amplitude, by construction: no resolution to read from it
    crossing = first_crossing(prtf, INV_E) if count > 1 else None
    resolution = (n * voxel / crossing) if (crossing and voxel) else None
    return Merged(density=density.astype(np.float32 if measurement.real else np.complex64),
                  support=support.astype(np.float32), prtf=prtf, shell_frequency_per_m=frequency,
                  resolution_m=resolution, resolution_shell=crossing, kept_seeds=[r.seed for r in ranked],
                  final_errors=[r.final_error for r in ranked], alignment_cc=ccs, inverted=inverted)


FREE_ERROR_FACTOR = 2.0      # recipe auto: starts whose free error is within this factor of the best are kept
# recipe auto: and whose free error x support voxels is within this factor of the best start's.  BENCHMARKS.md
# ("Averaging only what ranks near the best"): on 4bed-128 a start that found the hollow capsid (reach 1.0) was
# averaged with filled-in ones ranked 1.56x and 2.1x worse, and the average reached 0.08.
RANK_FACTOR = 1.5


def select(results: list[StartResult], keep: int, rank_factor: float | None = None) -> list[StartResult]:
    """The starts to average, best first.  Without free errors: the ``keep`` of lowest final error.  With them
    (recipe auto): those whose free error is within FREE_ERROR_FACTOR of the lowest, ranked by free error x
    support voxels -- of two that predict the held-out voxels about as well, the more compact (a density
    filled in by the beam stop's unmeasured modes predicts the free set, all outside the beam stop, as well
    as the true one) --, those ranked within ``rank_factor`` (default RANK_FACTOR) of the best, at most ``keep``
    of them."""
    if not all(r.free_error is not None and np.isfinite(r.free_error) for r in results):
        return sorted(results, key=lambda r: (r.final_error, r.seed))[:max(1, keep)]
    results = choose(results)        # sharpened or plain starts: the kind that predicts the measured data best
    best = min(r.free_error for r in results)
    rank = {id(r): r.free_error * max(1, int(np.count_nonzero(r.support))) for r in results
            if r.free_error <= FREE_ERROR_FACTOR * best}
    near = sorted((r for r in results if id(r) in rank), key=lambda r: (rank[id(r)], r.seed))
    factor = RANK_FACTOR if rank_factor is None else rank_factor
    return [r for r in near if rank[id(r)] <= factor * rank[id(near[0])]][:max(1, keep)]


def choose(results: list[StartResult]) -> list[StartResult]:
    """Recipe auto's sharpened or plain starts (:mod:`spibatch.phasing.sharpen`): those of the kind of the start
    that :func:`select`'s ranking puts first when it ranks every start by its free error against the *measured*
    amplitudes (``measured_free_error``: both kinds held to the same data) -- within FREE_ERROR_FACTOR of the
    lowest, by that error x support voxels.  The compactness matters here as in :func:`select`: on 4BED at 128^3
    a sharpened start that filled the capsid predicted the free voxels better (0.068) than the plain one that
    found it hollow (0.076, reach 1.0), at twice its support.  All the starts when they are of one kind; the
    plain ones when any lacks the error (a start file written before it was kept: plain)."""
    if len({r.sharpen > 0 for r in results}) < 2:
        return results
    if any(r.measured_free_error is None for r in results):
        return [r for r in results if r.sharpen == 0]
    finite = [r for r in results if np.isfinite(r.measured_free_error)]
    if not finite:
        return results
    low = min(r.measured_free_error for r in finite)
    near = [r for r in finite if r.measured_free_error <= FREE_ERROR_FACTOR * low]
    best = min(near, key=lambda r: (r.measured_free_error * max(1, int(np.count_nonzero(r.support))), r.seed))
    return [r for r in results if (r.sharpen > 0) == (best.sharpen > 0)]


def prtf_shells(mean_spectrum: np.ndarray, measurement: Measurement) -> np.ndarray:
    """PRTF per shell: sum |<F_j>| / sum sqrt(I) over the measured voxels of each shell (NaN if none).

    mean_spectrum (N, N, N) complex, FFT order: the mean of the aligned starts' FFTs.
    """
    n = measurement.n
    amplitude = measurement.amplitude_full().astype(np.float64)
    measured = amplitude >= 0
    radius = shell_radius(n)
    shells = n // 2 + 1
    keep = measured & (radius < shells)
    num = np.bincount(radius[keep], np.abs(mean_spectrum[keep]), minlength=shells)[:shells]
    den = np.bincount(radius[keep], amplitude[keep], minlength=shells)[:shells]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def first_crossing(curve: np.ndarray, level: float) -> float | None:
    """The first shell (interpolated) past the curve's first defined value where it falls below ``level``."""
    defined = np.flatnonzero(np.isfinite(curve))
    if defined.size == 0:
        return None
    start = int(defined[0])
    for s in range(start + 1, curve.size):
        if not np.isfinite(curve[s]):
            continue
        if curve[s] < level:
            prev = s - 1
            while prev > start and not np.isfinite(curve[prev]):
                prev -= 1
            a, b = curve[prev], curve[s]
            if not np.isfinite(a) or a < level:
                return float(s)
            return float(prev + (a - level) / (a - b) * (s - prev))
    return None
