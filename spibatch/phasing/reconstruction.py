"""The state of one phase-retrieval run: the iterate, its support and its history.

Operators (:mod:`.operators`) act on a :class:`Reconstruction`; the only
expensive primitive is :meth:`Reconstruction.modulus_projection`, one forward
FFT (skipped when a shrink-wrap has just computed it), the in-place modulus
replacement and one inverse FFT.
"""

from __future__ import annotations

import numpy as np

from spibatch.kernels import phasing_cpu as k
from spibatch.phasing.fft import FFTEngine
from spibatch.phasing.measurement import Measurement


class Reconstruction:
    """One run.

    x : (N, N, N) float32 (real) or complex64 iterate, FFT order (the origin at index 0)
    support : (N, N, N) bool, FFT order
    history : one dict per modulus projection: iteration, algorithm, error (relative Fourier
        error sqrt(sum (|F| - A)^2 / sum A^2) over the measured voxels, before the projection)
    kernels, xp : what the operators call (``kernels.phasing_cpu`` and numpy here; a device
        twin in :mod:`spibatch.phasing.gpu`)
    """

    kernels = k
    xp = np

    def __init__(self, measurement: Measurement, support: np.ndarray, *, positivity: bool = True,
                 seed: int = 0, threads: int = 1, fft_backend: str = "auto", initial: np.ndarray | None = None):
        n = measurement.n
        if support.shape != (n, n, n):
            raise ValueError(f"support shape {support.shape} != ({n}, {n}, {n})")
        self.measurement = measurement
        self.positivity = bool(positivity)
        self.fft = FFTEngine(n, real=measurement.real, threads=threads, backend=fft_backend)
        self.support = np.ascontiguousarray(support, dtype=bool)
        self.history: list[dict] = []
        self.iteration = 0
        self.algorithm = ""
        self._spectrum = None     # the FFT of x, while x has not changed since
        self.y_is_projection = False   # whether fft.y holds P_M x of the last iteration
        self._scale = 1.0 / n ** 3
        self.seed = int(seed)
        if initial is None:
            self._random_start(np.random.default_rng(seed))
        else:
            self.fft.x[...] = initial
        self.support_size_history: list[tuple[int, int]] = [(0, int(self.support.sum()))]

    @property
    def amplitude(self) -> np.ndarray:
        """The measured amplitudes, where the kernels read them."""
        return self.measurement.amplitude

    def per_start(self, volume):
        """``(volume, support)`` of each start this reconstruction holds (one here; a batch on a GPU)."""
        yield volume, self.support

    def record_support(self, start: int, kept: int) -> None:
        """Note the support size of start ``start`` after a shrink-wrap."""
        self.support_size_history.append((self.iteration, kept))

    @property
    def x(self) -> np.ndarray:
        return self.fft.x

    @property
    def n(self) -> int:
        return self.measurement.n

    def _random_start(self, rng: np.random.Generator) -> None:
        """Measured amplitudes with uniformly random phases, back in real space, projected on the support
        (and on positivity)."""
        amp = np.maximum(self.measurement.amplitude, 0.0)
        phases = rng.uniform(0, 2 * np.pi, amp.shape).astype(np.float32)
        spectrum = (amp * np.exp(1j * phases)).astype(np.complex64)
        y = self.fft.inverse(spectrum)
        keep = self.support & (y.real > 0) if self.positivity else self.support
        self.fft.x[...] = np.where(keep, y * self._scale, 0)
        self._spectrum = None

    def changed(self) -> None:
        """Call after writing to ``x``: the cached spectrum is stale."""
        self._spectrum = None

    def spectrum(self) -> np.ndarray:
        """The unnormalised FFT of x (cached until x changes)."""
        if self._spectrum is None:
            self._spectrum = self.fft.forward(self.fft.x)
        return self._spectrum

    def modulus_projection(self, src: np.ndarray | None = None, record: bool = True) -> np.ndarray:
        """P_M applied to x (or to ``y`` of the engine when ``src`` is it): returns the projected
        real-space array (the engine's ``y``; valid until the next FFT)."""
        if src is None:
            spectrum = self.spectrum()
        else:
            spectrum = self.fft.forward(src)
        err, norm = self.kernels.modulus_project(spectrum, self.amplitude, self._scale, self.n,
                                                 self.measurement.real)
        self._spectrum = None                 # projected (and the inverse destroys it)
        self.y_is_projection = src is None      # y will hold P_M x until the next FFT into it
        if record:
            self.iteration += 1
            self.history.append({"iteration": self.iteration, "algorithm": self.algorithm,
                                 "error": float(np.sqrt(err / norm)) if norm > 0 else float("nan")})
        return self.fft.inverse(spectrum)

    def fourier_error(self) -> float:
        """The relative Fourier error of the current x (no projection kept)."""
        spectrum = self.spectrum().copy()
        err, norm = k.modulus_project(spectrum, self.measurement.amplitude, 1.0, self.n, self.measurement.real)
        return float(np.sqrt(err / norm)) if norm > 0 else float("nan")

    def density(self) -> np.ndarray:
        """The current estimate P_S x (inside the support, positive with positivity), FFT order, a copy."""
        x = self.fft.x
        keep = self.support & (x.real > 0) if self.positivity else self.support
        return np.where(keep, x, 0).astype(x.dtype)
