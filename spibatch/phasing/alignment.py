"""Aligning real-space reconstructions: translation, the centrosymmetric twin, a global phase.

Phase retrieval determines a density only up to a translation, an inversion
through the origin (the twin: rho(-r) has the same intensity) and, for a
complex density, a constant phase.  :func:`align` finds all three against a
reference by Fourier cross-correlation (the peak refined to sub-voxel by a
parabola through its neighbours on each axis, then, for real volumes, by Newton
steps on the band-limited correlation itself: the parabola alone was 0.06 voxel
off) and applies the translation by the Fourier shift theorem.  Volumes are (N, N, N), real float or complex,
in any consistent origin convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Alignment:
    """How a volume was moved onto a reference: shift (3,) voxels (applied), inverted, phase (rad), cc."""

    shift: np.ndarray
    inverted: bool
    phase: float
    cc: float


def _fft(volume: np.ndarray) -> np.ndarray:
    import scipy.fft

    return scipy.fft.fftn(volume, workers=-1)


def _ifft(spectrum: np.ndarray) -> np.ndarray:
    import scipy.fft

    return scipy.fft.ifftn(spectrum, workers=-1)


def _peak(cc: np.ndarray) -> tuple[np.ndarray, float]:
    """Sub-voxel position (signed, wrapped to [-N/2, N/2)) and height of the maximum of a real periodic volume."""
    n = np.array(cc.shape)
    idx = np.array(np.unravel_index(int(np.argmax(cc)), cc.shape))
    top = float(cc[tuple(idx)])
    pos = idx.astype(float)
    for axis in range(3):
        lo, hi = idx.copy(), idx.copy()
        lo[axis] = (idx[axis] - 1) % n[axis]
        hi[axis] = (idx[axis] + 1) % n[axis]
        a, b = float(cc[tuple(lo)]), float(cc[tuple(hi)])
        denom = a - 2 * top + b
        if denom < 0:
            pos[axis] += 0.5 * (a - b) / denom
    pos = (pos + n / 2) % n - n / 2
    return pos, top


def _refine_peak(cross_spectrum: np.ndarray, pos: np.ndarray, steps: int = 8) -> np.ndarray:
    """The maximum of the real, band-limited correlation ``c(x) = Re sum_k C(k) exp(2 pi i k.x / N)`` near ``pos``
    (voxels), by Newton steps from the parabola's estimate.  Value, gradient and Hessian at x are sums of C
    against separable weights (the ramp times 1, w or w^2 on each axis): three small matrix products a step.
    Nyquist planes (even N) are left out: their phase under a sub-voxel shift is not defined.  Returns ``pos``
    unchanged when the Hessian is not negative definite or a step would leave +-0.5 voxel."""
    n = cross_spectrum.shape
    omega, keep = [], []
    for m in n:
        k = np.fft.fftfreq(m) * m
        omega.append(2 * np.pi * k / m)
        keep.append(np.where((m % 2 == 0) & (k == -(m // 2)), 0.0, 1.0))
    flat = cross_spectrum.reshape(n[0], -1)
    start = np.asarray(pos, float)
    x = start.copy()
    for _ in range(steps):
        weights = [np.stack([ramp, ramp * w, ramp * w * w]) for ramp, w in
                   ((np.exp(1j * w * xi) * kp, w) for w, xi, kp in zip(omega, x, keep))]
        t = (weights[0] @ flat).reshape(3, n[1], n[2])                  # sum over kx
        u = np.einsum("pyz,qy->pqz", t, weights[1])                     # over ky
        sums = np.einsum("pqz,sz->pqs", u, weights[2])                  # over kz: S[p, q, s]
        order = [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
        grad = np.array([-sums[o].imag for o in order])                 # d/dx of Re(e^{iwx}) = Re(i w e^{iwx})
        hess = np.empty((3, 3))
        for a in range(3):
            for b in range(3):
                index = [0, 0, 0]
                index[a] += 1
                index[b] += 1
                hess[a, b] = -sums[tuple(index)].real
        if np.any(np.linalg.eigvalsh(hess) >= 0):
            return start
        step = -np.linalg.solve(hess, grad)
        x = x + step
        if np.abs(x - start).max() > 0.5:
            return start
        if np.abs(step).max() < 1e-5:
            break
    return x


def shift_spectrum(spectrum: np.ndarray, shift) -> np.ndarray:
    """The spectrum of the volume moved by ``shift`` (3,) voxels: v'(r) = v(r - shift)."""
    out = spectrum
    for axis, s in enumerate(np.asarray(shift, float)):
        n = spectrum.shape[axis]
        ramp = np.exp(-2j * np.pi * np.fft.fftfreq(n) * s)
        shape = [1, 1, 1]
        shape[axis] = n
        out = out * ramp.reshape(shape)
    return out


def align(volume: np.ndarray, reference: np.ndarray, *, allow_twin: bool = True) -> tuple[np.ndarray, Alignment]:
    """``volume`` moved (and inverted, and rephased) onto ``reference``: (aligned volume, Alignment).

    Both (N, N, N). The twin rho(-r) is tried when ``allow_twin``; the one with the higher
    cross-correlation peak wins.  The returned volume has the input's dtype.
    """
    if volume.shape != reference.shape:
        raise ValueError(f"shapes differ: {volume.shape} vs {reference.shape}")
    real = not np.iscomplexobj(volume) and not np.iscomplexobj(reference)
    v = _fft(volume)
    r = _fft(reference)
    candidates = [(False, v)]
    if allow_twin:
        # rho(-r) has spectrum V(-k); for a real rho that is conj(V(k))
        if real:
            twin = np.conj(v)
        else:
            inv = [(-np.arange(n)) % n for n in volume.shape]
            twin = _fft(volume[np.ix_(*inv)])
        candidates.append((True, twin))
    best = None
    for inverted, spec in candidates:
        cross = _ifft(np.conj(r) * spec)
        magnitude = np.abs(cross) if not real else cross.real
        pos, top = _peak(magnitude)
        if best is None or top > best[3]:
            best = (inverted, spec, pos, top, cross)
    inverted, spec, pos, top, cross = best
    if real:
        n = np.array(volume.shape)
        pos = (_refine_peak(np.conj(r) * spec, pos) + n / 2) % n - n / 2   # wrapped as the parabola's was
    moved = shift_spectrum(spec, -pos)
    aligned = _ifft(moved)
    if real:
        aligned = aligned.real
        phase = 0.0
    else:
        phase = float(np.angle(np.vdot(reference, aligned)))
        aligned = aligned * np.exp(-1j * phase)
    norm = np.sqrt(np.vdot(volume, volume).real * np.vdot(reference, reference).real)
    cc = float(np.vdot(reference, aligned).real / norm) if norm > 0 else 0.0
    return aligned.astype(volume.dtype), Alignment(shift=-pos, inverted=inverted, phase=phase, cc=cc)


def roll_to_centre(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The volume rolled (whole voxels, periodically) so its centre of mass of |v| sits at N // 2.

    Works on a periodic box: the centre is found from the first Fourier component's phase on
    each axis, so an object that wraps around the edge is handled.  Returns (volume, shift).
    """
    mag = np.abs(volume)
    shift = np.zeros(3, int)
    for axis in range(3):
        n = volume.shape[axis]
        profile = mag.sum(axis=tuple(a for a in range(3) if a != axis))
        angle = np.angle(np.sum(profile * np.exp(2j * np.pi * np.arange(n) / n)))
        centre = (angle / (2 * np.pi) * n) % n
        shift[axis] = int(round(n // 2 - centre))
    return np.roll(volume, tuple(shift), axis=(0, 1, 2)), shift
