"""Many independent starts, the best kept, aligned, averaged, and the PRTF.

``run_one(seed, measurement, options)`` is one independent task (a Parsl app or
an MPI rank calls it); ``merge(results, measurement, keep)`` reduces them.
Densities travel in FFT order (origin at index 0) until :func:`merge`, which
returns them centred (origin at N // 2, like the intensity).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from spibatch.phasing import DEFAULT_RECIPE, DEFAULT_SUPPORT_THRESHOLD
from spibatch.phasing.alignment import align, roll_to_centre
from spibatch.phasing.measurement import Measurement, autocorrelation_support

INV_E = math.exp(-1.0)


@dataclass
class Options:
    """How one start runs (the config's ``phasing`` section, minus the inputs)."""

    recipe: str = DEFAULT_RECIPE
    positivity: bool = True
    initial_support_threshold: float = DEFAULT_SUPPORT_THRESHOLD
    threads: int = 1
    fft_backend: str = "auto"
    device: str = "cpu"             # gpu: the start runs on this process's GPU (spibatch.phasing.gpu)
    gpu_runtime: str = "cupy"


@dataclass
class StartResult:
    """One start: density and support (N, N, N) in FFT order, float32 / bool; errors (iterations,)
    the relative Fourier error per modulus projection; algorithms: the name per iteration."""

    seed: int
    density: np.ndarray
    support: np.ndarray
    errors: np.ndarray
    algorithms: list[str]
    final_error: float
    seconds: float
    support_sizes: list[tuple[int, int]] = field(default_factory=list)
    fft_backend: str = ""


def run_one(seed: int, measurement: Measurement, options: Options) -> StartResult:
    """One reconstruction from random phases drawn with ``seed``; independent of every other start."""
    if options.device == "gpu":                 # a Parsl worker's or MPI rank's own GPU (kernels.xp.use_device)
        from spibatch.phasing.gpu import run_batch

        return run_batch([seed], measurement, options, runtime=options.gpu_runtime)[0]
    from spibatch.phasing.operators import parse_recipe
    from spibatch.phasing.reconstruction import Reconstruction

    start = time.perf_counter()
    recipe = parse_recipe(options.recipe)
    support = autocorrelation_support(measurement, options.initial_support_threshold)
    rec = Reconstruction(measurement, support, positivity=options.positivity, seed=seed, threads=options.threads,
                         fft_backend=options.fft_backend)
    recipe(rec)
    density = rec.density()
    final = _error_of(density, rec)
    return StartResult(seed=seed, density=density, support=rec.support.copy(),
                       errors=np.array([h["error"] for h in rec.history]),
                       algorithms=[h["algorithm"] for h in rec.history], final_error=final,
                       seconds=time.perf_counter() - start, support_sizes=list(rec.support_size_history),
                       fft_backend=rec.fft.backend)


def _error_of(density: np.ndarray, rec) -> float:
    """Relative Fourier error of a final density (the measure the starts are ranked by)."""
    rec.fft.x[...] = density
    rec.changed()
    return rec.fourier_error()


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


def merge(results: list[StartResult], measurement: Measurement, keep: int) -> Merged:
    """Keep the ``keep`` starts of lowest final error, align them to the best, average, PRTF."""
    if not results:
        raise ValueError("no reconstructions to merge")
    ranked = sorted(results, key=lambda r: (r.final_error, r.seed))[:max(1, keep)]
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
    crossing = first_crossing(prtf, INV_E)
    resolution = (n * voxel / crossing) if (crossing and voxel) else None
    return Merged(density=density.astype(np.float32 if measurement.real else np.complex64),
                  support=support.astype(np.float32), prtf=prtf, shell_frequency_per_m=frequency,
                  resolution_m=resolution, resolution_shell=crossing, kept_seeds=[r.seed for r in ranked],
                  final_errors=[r.final_error for r in ranked], alignment_cc=ccs, inverted=inverted)


def shell_radius(n: int) -> np.ndarray:
    """(N, N, N) int: the rounded |k| in voxels of every FFT-ordered voxel."""
    k = np.fft.fftfreq(n) * n
    return np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)).astype(int)


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


def max_measured_shell(measurement: Measurement, fraction: float = 0.5) -> int:
    """The largest shell radius (voxels) in which at least ``fraction`` of the voxels are measured:
    the data's maximum resolution (the detector edge, not its corners)."""
    n = measurement.n
    radius = shell_radius(n)
    measured = measurement.measured_full()
    total = np.bincount(radius.ravel(), minlength=n)
    hit = np.bincount(radius.ravel(), measured.ravel(), minlength=n)
    ok = np.flatnonzero((total > 0) & (hit >= fraction * np.maximum(total, 1)))
    return int(ok.max()) if ok.size else 0
