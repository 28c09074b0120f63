"""Sharpened starts of ``recipe: auto``: phase the data with their radial fall-off partly undone, then blur back.

A soft object (a sum of smooth blobs) puts nearly all its power at low q: its mean intensity falls like
``exp(-4 pi^2 s^2 q^2)`` (q in cycles per voxel, ``s`` the blobs' width in voxels, the *Wilson sigma*).  A
projection algorithm weighs every voxel by its amplitude, fixes the low-q phases and leaves those of the outer
shells wandering, even from a perfect start on noise-free data (BENCHMARKS.md, "Sharpened starts").  Every
amplitude times ``W(q) = exp(2 pi^2 sigma_b^2 |q|^2)`` is the transform of the same object deconvolved by a
Gaussian of ``sigma_b`` voxels: sharper, as compact, with the same phases.  The start phases that, and its
density is blurred back by the same Gaussian (which keeps it positive) before it is merged.

Which starts: the odd seeds (each sharing its support schedule with the even seed before it,
:func:`spibatch.phasing.auto.schedule`), with ``sigma_b = sharpen x`` the Wilson sigma fitted to the measured
shells from q_max / 3 to q_max; the even seeds phase the data as measured, and so does every start of a run of
fewer than MIN_STARTS.  Objects with sharp edges (a thin shell, boxes) ring when sharpened and are phased better
as measured, soft ones the other way round; the merge keeps the kind whose best start predicts
the held-out (free) voxels of the *measured* amplitudes best, a comparison both kinds can be held to
(:func:`spibatch.phasing.multistart.choose`).  In a hand-written recipe that holds ``Auto`` with
other steps, a sharpened start runs all of them on the sharpened data (the first ``Auto``'s ``sharpen`` counts).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from spibatch.phasing.measurement import (Measurement, free_error, max_measured_shell, shell_radius,
                                         spectrum_weights)

MAX_GAIN = 1e8        # W is capped here (float32 error sums of amplitudes up to ~1e5 stay finite)
MIN_STARTS = 4        # fewer starts run plain only: each kind's merge needs two starts (a PRTF, an average)
MIN_SHELLS = 5        # shells the Wilson fit needs (fewer follow the object's shape, not its fall-off)
MIN_SIGMA = 0.05      # voxels: below this a start is not worth sharpening (W < 1.01 everywhere)


def is_sharpened(seed: int) -> bool:
    """Whether start ``seed`` phases the sharpened data (the odd seeds)."""
    return seed % 2 == 1


def wilson_sigma(measurement: Measurement) -> float:
    """The width (voxels) of the Gaussian whose intensity envelope fits the measured shells' mean intensity
    from q_max / 3 to q_max (a least-squares line through log <I> against q^2); 0 when the data do not fall
    off, or fewer than MIN_SHELLS shells of that range hold counts (data to shell 4 or less)."""
    n = measurement.n
    amplitude = measurement.amplitude_full().astype(np.float64)
    measured = amplitude >= 0
    radius = shell_radius(n)
    top = max_measured_shell(measurement)
    total = np.bincount(radius[measured], amplitude[measured] ** 2, minlength=n)
    count = np.bincount(radius[measured], minlength=n)
    shells = np.arange(total.size)
    use = (shells >= max(1, top // 3)) & (shells <= top) & (count > 0) & (total > 0)
    if np.count_nonzero(use) < MIN_SHELLS:
        return 0.0
    slope = np.polyfit((shells[use] / n) ** 2, np.log(total[use] / count[use]), 1)[0]
    return float(math.sqrt(-slope / (4 * math.pi ** 2))) if slope < 0 else 0.0


def gain(measurement: Measurement, sigma: float) -> np.ndarray:
    """W(q) = exp(2 pi^2 sigma^2 |q|^2), capped at MAX_GAIN, in the amplitude's layout (float64)."""
    n = measurement.n
    k = np.fft.fftfreq(n)
    kz = np.fft.rfftfreq(n) if measurement.real else k
    q2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + kz[None, None, :] ** 2
    return np.exp(np.minimum(2 * math.pi ** 2 * sigma ** 2 * q2, math.log(MAX_GAIN)))


def sharpened(measurement: Measurement, w: np.ndarray) -> Measurement:
    """The measurement with every measured amplitude times ``w`` (unmeasured ones stay -1)."""
    amplitude = np.where(measurement.amplitude >= 0, measurement.amplitude * w, -1.0).astype(np.float32)
    return dataclasses.replace(measurement, amplitude=amplitude)


def blur_back(density: np.ndarray, w: np.ndarray, real: bool) -> np.ndarray:
    """``density`` (N, N, N), FFT order, deconvolved back: its transform divided by ``w``; same dtype."""
    import scipy.fft

    n = density.shape[0]
    if real:
        out = scipy.fft.irfftn(scipy.fft.rfftn(density) / w, s=(n, n, n))
    else:
        out = scipy.fft.ifftn(scipy.fft.fftn(density) / w)
    return out.astype(density.dtype)


def measured_free_error(density: np.ndarray, measurement: Measurement, free: np.ndarray) -> float:
    """The free error of ``density`` (N, N, N, FFT order) against the measured amplitudes on the ``free``
    voxels (the amplitude's layout), as :meth:`~spibatch.phasing.reconstruction.Reconstruction.free_errors`
    computes it (:func:`~spibatch.phasing.measurement.free_error`)."""
    import scipy.fft

    spectrum = np.abs(scipy.fft.rfftn(density.real) if measurement.real else scipy.fft.fftn(density))
    amplitude = measurement.amplitude.astype(np.float64)
    weight = spectrum_weights(measurement.n, amplitude.shape[-1], measurement.real)
    return free_error(np, spectrum, amplitude, free & (amplitude >= 0), weight)
