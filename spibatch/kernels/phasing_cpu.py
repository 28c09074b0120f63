"""CPU kernels of phase retrieval (Numba, parallel over the first axis).

Each kernel is one pass over the arrays, done in place, so that one iteration
of HIO costs two FFTs plus two sweeps of memory.

Conventions: spectra are in FFT order (q = 0 at index 0).  A real iterate has a
half spectrum (N, N, N // 2 + 1) complex64 from a real-to-complex FFT; a
complex iterate a full one (N, N, N).  ``amplitude`` has the spectrum's shape,
float32, the measured ``sqrt(I)``, and a negative value where the voxel is not
measured (beam-stop hole, beyond the detector edge): those voxels are left free.
Real-space arrays are (N, N, N) float32 (or complex64); ``support`` is bool.
The real-space updates and the separable filter also take a batch (B, N, N, N) /
(B, N, N, K) of C-contiguous arrays (a :class:`~spibatch.phasing.reconstruction.Reconstruction`'s),
run as one (B N, N, N) volume; the sums and thresholds run on one start's (N, N, N).
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(inline="always")
def _half_weight(k, n, half):
    """How many voxels of the full spectrum voxel k of the last axis stands for (1 or 2)."""
    if not half or k == 0 or 2 * k == n:
        return 1.0
    return 2.0


@nb.njit(cache=True)
def _modulus_plane(plane, amplitude, scale, n, half):
    """modulus_project on one (N, K) plane; returns its (error, norm) sums.

    Each row in two loops: the projection, with no dependence between voxels (so that it vectorises: 2.7x
    faster at 128^3 than one loop that also carried the sums), keeping each voxel's squared terms in float64;
    then the sums, in the same order as one loop would add them (the same bits)."""
    e = 0.0
    s = 0.0
    size = plane.shape[1]
    term_e = np.empty(size)
    term_s = np.empty(size)
    scale32 = np.float32(scale)
    for j in range(plane.shape[0]):
        row = plane[j]
        amp = amplitude[j]
        for k in range(size):
            a = amp[k]
            f = row[k]
            re = f.real
            im = f.imag
            m = np.sqrt(re * re + im * im)
            measured = a >= np.float32(0.0)
            d = m - a
            term_e[k] = np.float64(d) * np.float64(d) if measured else 0.0
            term_s[k] = np.float64(a) * np.float64(a) if measured else 0.0
            if measured:
                if m > np.float32(0.0):
                    g = np.float32((a / m) * scale)
                    row[k] = np.complex64(complex(re * g, im * g))
                else:
                    row[k] = np.complex64(a * scale)
            else:
                row[k] = np.complex64(complex(re * scale32, im * scale32))
        for k in range(size):
            w = _half_weight(k, n, half)
            e += w * term_e[k]
            s += w * term_s[k]
    return e, s


@nb.njit(parallel=True, cache=True)
def modulus_project(spectrum, amplitude, scale, n, half):
    """Replace the modulus of every measured voxel by ``amplitude``; all voxels times ``scale``.

    spectrum (N, N, K) complex64, in place; amplitude (N, N, K) float32 (< 0: free);
    scale folds in the inverse FFT's 1/N^3; n = N (the full last-axis length);
    half: the spectrum is a real FFT's half (voxels 1..K-2 of the last axis count twice).
    Returns (sum over measured of (|F| - A)^2, sum over measured of A^2), both full-spectrum
    sums in the units of |F|^2 before scaling.
    """
    n0 = spectrum.shape[0]
    err = np.zeros(n0)
    norm = np.zeros(n0)
    for i in nb.prange(n0):
        err[i], norm[i] = _modulus_plane(spectrum[i], amplitude[i], scale, n, half)
    return err.sum(), norm.sum()


@nb.njit(inline="always")
def _keep(value, inside, positivity):
    return inside and (not positivity or value.real > 0.0)


@nb.njit(parallel=True, cache=True)
def _update_er(x, y, support, positivity):
    """Error reduction: x <- P_S y (y inside the support, and positive with positivity; else 0)."""
    for i in nb.prange(x.shape[0]):
        for j in range(x.shape[1]):
            for k in range(x.shape[2]):
                v = y[i, j, k]
                x[i, j, k] = v if _keep(v, support[i, j, k], positivity) else 0.0


@nb.njit(parallel=True, cache=True)
def _project_support(x, support, positivity, out):
    """out <- P_S x: x inside the support (and positive with positivity), 0 elsewhere."""
    for i in nb.prange(x.shape[0]):
        for j in range(x.shape[1]):
            for k in range(x.shape[2]):
                v = x[i, j, k]
                out[i, j, k] = v if _keep(v, support[i, j, k], positivity) else 0.0


@nb.njit(parallel=True, cache=True)
def _update_hio(x, y, support, positivity, beta):
    """Hybrid input-output (Fienup): x <- y where kept, x - beta * y elsewhere; y = P_M x."""
    for i in nb.prange(x.shape[0]):
        for j in range(x.shape[1]):
            for k in range(x.shape[2]):
                v = y[i, j, k]
                if _keep(v, support[i, j, k], positivity):
                    x[i, j, k] = v
                else:
                    x[i, j, k] = x[i, j, k] - beta * v


@nb.njit(parallel=True, cache=True)
def _update_raar(x, y, support, positivity, beta):
    """RAAR (Luke 2005): x <- beta/2 (R_S R_M + I) x + (1 - beta) P_M x, written pointwise.

    With y = P_M x and z = 2y - x: where z is kept by the support (and positivity)
    the update is y, elsewhere beta * x + (1 - 2 beta) * y.
    """
    for i in nb.prange(x.shape[0]):
        for j in range(x.shape[1]):
            for k in range(x.shape[2]):
                v = y[i, j, k]
                u = x[i, j, k]
                if _keep(2 * v - u, support[i, j, k], positivity):
                    x[i, j, k] = v
                else:
                    x[i, j, k] = beta * u + (1.0 - 2.0 * beta) * v


@nb.njit(parallel=True, cache=True)
def _dm_first(x, y, support, positivity, gamma_m, gamma_s, a, b):
    """Difference map, first half: a <- P_S((1 + gamma_m) y - gamma_m x) and
    b <- (1 + gamma_s) P_S x - gamma_s x (to be modulus-projected next); y = P_M x."""
    for i in nb.prange(x.shape[0]):
        for j in range(x.shape[1]):
            for k in range(x.shape[2]):
                u = x[i, j, k]
                inside = support[i, j, k]
                f = (1.0 + gamma_m) * y[i, j, k] - gamma_m * u
                a[i, j, k] = f if _keep(f, inside, positivity) else 0.0
                ps = u if _keep(u, inside, positivity) else 0.0
                b[i, j, k] = (1.0 + gamma_s) * ps - gamma_s * u


@nb.njit(parallel=True, cache=True)
def _dm_second(x, a, pb, beta):
    """Difference map, second half: x <- x + beta * (a - P_M b), with pb = P_M b."""
    for i in nb.prange(x.shape[0]):
        for j in range(x.shape[1]):
            for k in range(x.shape[2]):
                x[i, j, k] = x[i, j, k] + beta * (a[i, j, k] - pb[i, j, k])


@nb.njit(parallel=True, cache=True)
def _multiply_separable(spectrum, out, g0, g1, g2):
    """out <- spectrum * g0[i] * g1[j] * g2[k] (a separable filter, e.g. a Gaussian blur)."""
    for i in nb.prange(spectrum.shape[0]):
        for j in range(spectrum.shape[1]):
            gij = g0[i] * g1[j]
            for k in range(spectrum.shape[2]):
                out[i, j, k] = spectrum[i, j, k] * np.float32(gij * g2[k])


def max_real(volume):
    """The largest real part of a volume (float; NaN values are left out, as by ``np.fmax``)."""
    return float(np.fmax.reduce(_plane_max(volume)))


@nb.njit(parallel=True, cache=True)
def histogram_real(volume, top, bins):
    """Counts of the real part of the volume in ``bins`` equal bins of [0, top] (int64 (bins,));
    values above ``top`` go to the last bin, values <= 0 are not counted."""
    parts = np.zeros((volume.shape[0], bins), np.int64)
    step = top / bins
    for i in nb.prange(volume.shape[0]):
        for j in range(volume.shape[1]):
            for k in range(volume.shape[2]):
                v = volume[i, j, k].real
                if v > 0.0:
                    b = int(v / step)
                    parts[i, min(b, bins - 1)] += 1
    return parts.sum(axis=0)


@nb.njit(parallel=True, cache=True)
def threshold_support(volume, level, support):
    """support <- real(volume) > level; returns the number of voxels kept."""
    count = np.zeros(volume.shape[0], np.int64)
    for i in nb.prange(volume.shape[0]):
        c = 0
        for j in range(volume.shape[1]):
            for k in range(volume.shape[2]):
                keep = volume[i, j, k].real > level
                support[i, j, k] = keep
                c += keep
        count[i] = c
    return count.sum()


def _plane_max(volume):
    """The largest real part of each plane volume[i] (NaN left out): numpy's SIMD reduction on one thread
    reads memory 4x faster than a two-thread Numba loop whose compare-and-keep does not vectorise."""
    return np.fmax.reduce(volume.real, axis=(1, 2))


@nb.njit(parallel=True, cache=True)
def _threshold_planes(volume, level, support, plane_max):
    count = np.zeros(volume.shape[0], np.int64)
    for i in nb.prange(volume.shape[0]):
        if plane_max[i] <= level:            # nothing in this plane can pass: no need to read it again
            support[i] = False
            continue
        c = 0
        for j in range(volume.shape[1]):
            for k in range(volume.shape[2]):
                keep = volume[i, j, k].real > level
                support[i, j, k] = keep
                c += keep
        count[i] = c
    return count.sum()


def threshold_relative(volume, fraction, support):
    """support <- real(volume) > fraction * max(real(volume)); returns (voxels kept, the maximum).

    One pass finds the maximum of every plane; the threshold pass then reads only the planes whose
    maximum exceeds the level (the object's), and clears the others without reading them.  Exactly
    ``threshold_support(volume, fraction * max_real(volume), support)``.
    """
    plane_max = _plane_max(volume)
    top = float(np.fmax.reduce(plane_max))
    level = np.float32(float(fraction) * top)        # as ShrinkWrap always computed it: float64, then float32
    return int(_threshold_planes(volume, level, support, plane_max)), top


@nb.njit(parallel=True, cache=True)
def _occupied_rows(bits):
    rows = np.zeros(bits.shape[:2], np.bool_)
    for i in nb.prange(bits.shape[0]):
        for j in range(bits.shape[1]):
            if bits[i, j, 0] != 0:           # most occupied rows show it at once
                rows[i, j] = True
                continue
            acc = bits.dtype.type(0)
            for k in range(bits.shape[2]):   # an or-reduction (vectorised), no early exit
                acc |= bits[i, j, k]
            rows[i, j] = acc != 0
    return rows


def occupied_rows(volume: np.ndarray) -> np.ndarray:
    """(N0, N1) bool: whether row (i, j, :) of a C-contiguous volume holds any value but +0.0 (-0.0 and NaN
    count), read as raw bits, 8 bytes at a time where the rows allow."""
    row_bytes = volume.shape[2] * volume.itemsize
    word = np.uint64 if row_bytes % 8 == 0 else {4: np.uint32, 2: np.uint16}.get(volume.itemsize, np.uint8)
    return _occupied_rows(volume.view(np.uint8).reshape(volume.shape[:2] + (row_bytes,)).view(word))


# ------------------------------------------------------------------ batch-shaped entry points

def _flat(array):
    """A (B, N, N, K) C-contiguous array as the (B N, N, K) view the kernels loop over; (N, N, K) as it is."""
    if array.ndim == 3:
        return array
    if not array.flags.c_contiguous:
        raise ValueError("phasing kernels need C-contiguous arrays")
    return array.reshape((-1,) + array.shape[-2:])


def update_er(x, y, support, positivity):
    """Error reduction: x <- P_S y (y inside the support, and positive with positivity; else 0)."""
    _update_er(_flat(x), _flat(y), _flat(support), positivity)


def update_hio(x, y, support, positivity, beta):
    """Hybrid input-output (Fienup): x <- y where kept, x - beta * y elsewhere; y = P_M x."""
    _update_hio(_flat(x), _flat(y), _flat(support), positivity, beta)


def update_raar(x, y, support, positivity, beta):
    """RAAR (Luke 2005): x <- y where 2y - x is kept, beta * x + (1 - 2 beta) * y elsewhere; y = P_M x."""
    _update_raar(_flat(x), _flat(y), _flat(support), positivity, beta)


def project_support(x, support, positivity, out):
    """out <- P_S x: x inside the support (and positive with positivity), 0 elsewhere."""
    _project_support(_flat(x), _flat(support), positivity, _flat(out))


def dm_first(x, y, support, positivity, gamma_m, gamma_s, a, b):
    """Difference map, first half (see ``_dm_first``); b may be y (each element is read before it is written)."""
    _dm_first(_flat(x), _flat(y), _flat(support), positivity, gamma_m, gamma_s, _flat(a), _flat(b))


def dm_second(x, a, pb, beta):
    """Difference map, second half: x <- x + beta * (a - P_M b), with pb = P_M b."""
    _dm_second(_flat(x), _flat(a), _flat(pb), beta)


def multiply_separable(spectrum, out, g0, g1, g2):
    """out <- spectrum * g0[i] * g1[j] * g2[k] per start (a separable filter, e.g. a Gaussian blur)."""
    if spectrum.ndim == 4:
        g0 = np.tile(g0, spectrum.shape[0])
    _multiply_separable(_flat(spectrum), _flat(out), g0, g1, g2)
