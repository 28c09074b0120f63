"""The shrink-wrap support update (Marchesini 2003), shared by the ``ShrinkWrap`` operator and ``auto``.

:func:`shrink_wrap` blurs P_S of the current estimate by a Gaussian in Fourier space (a separable
multiply) and keeps, per start, what exceeds a threshold times the blurred maximum, or a fraction
of the box found by a histogram (no sort).
"""

from __future__ import annotations

import math

import numpy as np

from spibatch.phasing.algebra import RecipeError


MIN_SUPPORT_VOXELS = 8      # fewer: the support collapsed


def shrink_wrap(rec, sigma: float, thresholds: list[float], keep: float = 0.0, *, name: str = "ShrinkWrap",
                min_voxels: int = 1) -> list[int]:
    """Blur P_S of the current estimate by a Gaussian of ``sigma`` voxels, keep what exceeds ``thresholds[b]``
    times the blurred maximum of start b (or the ``keep`` fraction of the box); returns each start's support
    size.  RecipeError when a support would be empty or the whole box; a start whose support holds fewer than
    ``min_voxels`` voxels has collapsed: it is marked failed (``rec.failures``: not merged) and runs on."""
    label = name.split("(")[0]
    n = rec.n
    g = np.exp(-2 * (math.pi * sigma * np.fft.fftfreq(n)) ** 2)
    gz = np.exp(-2 * (math.pi * sigma * (np.fft.rfftfreq(n) if rec.measurement.real else np.fft.fftfreq(n))) ** 2)
    # blur the current estimate: P_S of the last modulus projection (P_S x if there was none);
    # the raw HIO/RAAR iterate outside the support is feedback, not density
    source = rec.fft.y if rec.y_is_projection else rec.x
    rec.kernels.project_support(source, rec.support, rec.positivity, rec.fft.y)
    rec.y_is_projection = False
    spectrum = rec.fft.forward(rec.fft.y)
    rec.changed()
    # blurred in place: the spectrum of P_S x is not needed again (a spare buffer cost its page faults)
    rec.kernels.multiply_separable(spectrum, spectrum, (g / n ** 3).astype(np.float32), g.astype(np.float32),
                                   gz.astype(np.float32))
    blurred = rec.fft.inverse(spectrum)
    sizes = []
    for start, (volume, support) in enumerate(rec.per_start(blurred)):   # one, or each start of a GPU batch
        if keep > 0:
            top = rec.kernels.max_real(volume)
            if not top > 0:
                raise RecipeError(f"{label}: the blurred density has no positive value; the support would be empty")
            kept = rec.kernels.threshold_support(volume, np.float32(_level_keeping(rec.kernels, volume, top, keep)),
                                                 support)
        else:       # the maximum found in the threshold's own pass (the same support as max, then threshold)
            kept, top = rec.kernels.threshold_relative(volume, float(thresholds[start]), support)
            if not top > 0:
                raise RecipeError(f"{label}: the blurred density has no positive value; the support would be empty")
        if kept == 0:
            raise RecipeError(f"{label}: threshold {thresholds[start]} emptied the support; lower it")
        if kept < min_voxels:
            rec.failures.setdefault(start, f"{name}: the support collapsed to {kept} voxel(s) (fewer than "
                                    f"{min_voxels}): it holds no object; lower the threshold (or raise keep)")
        if kept == volume.size:
            raise RecipeError(f"{name} kept all {kept} voxels of the box: the support constrains nothing; raise "
                              "the threshold (or lower keep)")
        rec.record_support(start, int(kept))
        sizes.append(int(kept))
    return sizes


def _level_keeping(kernels, blurred: np.ndarray, top: float, fraction: float, bins: int = 4096) -> float:
    """The value above which ``fraction`` of all voxels lie, to 1/bins of the maximum (a histogram, no sort)."""
    counts = kernels.histogram_real(blurred, float(top), bins)
    above = np.cumsum(counts[::-1])[::-1]           # voxels at or above each bin's lower edge
    want = fraction * blurred.size
    index = int(np.searchsorted(-above, -want, side="right")) - 1
    index = max(index, 0)
    return top * index / bins


def gaussian_filter_1d(n: int, sigma: float, real: bool, scale: float = 1.0):
    """The separable Gaussian blur of ``sigma`` voxels in Fourier space, (g0 * scale, g1, g2) float32."""
    g = np.exp(-2 * (math.pi * sigma * np.fft.fftfreq(n)) ** 2)
    gz = np.exp(-2 * (math.pi * sigma * (np.fft.rfftfreq(n) if real else np.fft.fftfreq(n))) ** 2)
    return (g * scale).astype(np.float32), g.astype(np.float32), gz.astype(np.float32)


def threshold_blurred(rec, blurred, thresholds: list[float], *, name: str = "auto") -> list[int]:
    """Each start's support <- its blurred volume above ``thresholds[b]`` of its maximum, the maximum found in
    the same pass (:func:`spibatch.kernels.phasing_cpu.threshold_relative`); returns the support sizes."""
    sizes = []
    for start, (volume, support) in enumerate(rec.per_start(blurred)):
        kept, top = rec.kernels.threshold_relative(volume, float(thresholds[start]), support)
        if not top > 0:
            raise RecipeError(f"{name}: the blurred density has no positive value; the support would be empty")
        if kept == 0:
            raise RecipeError(f"{name}: threshold {thresholds[start]} emptied the support")
        rec.record_support(start, int(kept))
        sizes.append(int(kept))
    return sizes
