"""The state of B phase-retrieval starts of one measurement: the iterates, their supports and histories.

Operators (:mod:`.operators`) act on a :class:`Reconstruction`; the only expensive primitive is
:meth:`Reconstruction.modulus_projection`, one forward FFT (skipped when a shrink-wrap has just
computed it), the in-place modulus replacement and one inverse FFT.  Every array carries a batch
axis first, (B, N, N, N): on the CPU B = 1 (one start after another, each using every core), on a
GPU B starts share the device.  The :class:`~spibatch.kernels.device.Device` chooses the array
module, the kernels (:mod:`spibatch.kernels.phasing_cpu`, or the CUDA kernels through
:mod:`spibatch.phasing.gpu`) and the FFTs (:class:`~spibatch.phasing.fft.FFTEngine` or the device's).
"""

from __future__ import annotations

import numpy as np

from spibatch.kernels import phasing_cpu
from spibatch.kernels.device import CPU, Device
from spibatch.phasing.fft import FFTEngine
from spibatch.phasing.gpu import DeviceFFT, DeviceKernels
from spibatch.phasing.measurement import Measurement, free_error, spectrum_weights


class Reconstruction:
    """B starts of one measurement, from random phases drawn with ``seeds`` (one seed per start).

    x : (B, N, N, N) float32 (real) or complex64 iterates, FFT order (the origin at index 0)
    support : (B, N, N, N) bool, FFT order; every start begins with ``support`` (N, N, N)
    histories[b] : one dict per modulus projection of start b: iteration, algorithm, error (relative
        Fourier error sqrt(sum (|F| - A)^2 / sum A^2) over the measured voxels, before the projection)
    support_sizes[b] : (iteration, voxels) after each shrink-wrap of start b, (0, first support's) first
    kernels, xp, fft : what the operators call, chosen by ``device``
    initial : (N, N, N) or (B, N, N, N) iterates to start from instead of random phases
    threads, fft_backend, fft_planning : the CPU FFT's (a GPU uses its own)
    """

    def __init__(self, measurement: Measurement, support: np.ndarray, seeds=(0,), *, positivity: bool = True,
                 device: Device = CPU, threads: int = 1, fft_backend: str = "auto",
                 fft_planning: str = "estimate", initial: np.ndarray | None = None):
        n = measurement.n
        if support.shape != (n, n, n):
            raise ValueError(f"support shape {support.shape} != ({n}, {n}, {n})")
        self.seeds = [int(s) for s in seeds]
        b = len(self.seeds)
        if b < 1:
            raise ValueError("a reconstruction needs at least one seed")
        self.device = device
        if device.is_gpu:
            device.activate()
            self.xp = device.xp
            self.kernels = DeviceKernels(device)
            self.fft = DeviceFFT((b, n, n, n), measurement.real, self.xp)
        else:
            self.xp, self.kernels = np, phasing_cpu
            self.fft = FFTEngine(n, batch=b, real=measurement.real, threads=threads, backend=fft_backend,
                                   planning=fft_planning)
        xp = self.xp
        self.measurement = measurement
        self.positivity = bool(positivity)
        self.amplitude = xp.asarray(np.ascontiguousarray(measurement.amplitude, np.float32))
        self.support = xp.asarray(np.repeat(np.asarray(support, bool)[None], b, axis=0))
        self.histories: list[list[dict]] = [[] for _ in range(b)]
        self.support_sizes: list[list[tuple[int, int]]] = [[(0, int(support.sum()))] for _ in range(b)]
        self.iteration = 0
        self.algorithm = ""
        self._spectrum = None            # the FFT of x, while x has not changed since
        self.y_is_projection = False     # whether fft.y holds P_M x of the last iteration
        self._scale = 1.0 / n ** 3
        self.failures: dict[int, str] = {}   # start index -> why it stopped (recipe auto's guards)
        self.free = None                 # held-out voxels (the amplitude's shape), see hold_out
        self.paired_seeds = False        # recipe auto: plain and sharpened starts share schedules (auto.schedule)
        self._free_amplitude = None
        if initial is None:
            self._random_start()
        else:
            self.fft.x[...] = xp.asarray(initial)

    @property
    def x(self):
        return self.fft.x

    @property
    def n(self) -> int:
        return self.measurement.n

    @property
    def batch(self) -> int:
        return len(self.seeds)

    def per_start(self, volume):
        """``(volume[b], support[b])`` of each start b: the (N, N, N) slices the per-start kernels take."""
        for b in range(self.batch):
            yield volume[b], self.support[b]

    def record_support(self, start: int, kept: int) -> None:
        """Note the support size of start ``start`` after a shrink-wrap."""
        self.support_sizes[start].append((self.iteration, kept))

    def _random_start(self) -> None:
        """Measured amplitudes with uniformly random phases (start b's from ``seeds[b]``), back in real space,
        projected on the support (and on positivity)."""
        amp = np.maximum(self.measurement.amplitude, 0.0)
        spectra = np.empty((self.batch, *amp.shape), np.complex64)
        for b, seed in enumerate(self.seeds):
            phases = np.random.default_rng(seed).uniform(0, 2 * np.pi, amp.shape).astype(np.float32)
            spectra[b] = (amp * np.exp(1j * phases)).astype(np.complex64)
        y = self.fft.inverse(self.xp.asarray(spectra))
        keep = self.support & (y.real > 0) if self.positivity else self.support
        self.fft.x[...] = self.xp.where(keep, y * np.float32(self._scale), 0)
        self._spectrum = None

    def changed(self) -> None:
        """Call after writing to ``x``: the cached spectrum is stale."""
        self._spectrum = None

    def spectrum(self):
        """The unnormalised FFT of x (cached until x changes), (B, N, N, K)."""
        if self._spectrum is None:
            self._spectrum = self.fft.forward(self.fft.x)
        return self._spectrum

    def _project(self, spectrum, scale: float) -> list[tuple[float, float]]:
        """The modulus projection of each start's spectrum in place; (error sum, norm sum) per start."""
        return [self.kernels.modulus_project(spectrum[b], self.amplitude, scale, self.n, self.measurement.real)
                for b in range(self.batch)]

    def modulus_projection(self, src=None, record: bool = True, filtered=None):
        """P_M applied to x (or to ``y`` of the engine when ``src`` is it): returns the projected
        real-space arrays (the engine's ``y``; valid until the next FFT).

        filtered : (g0, g1, g2) float32, a separable filter: the projected spectrum times it is also kept,
            in the engine's spare spectrum, as ``self.filtered_spectrum`` (a blur of P_M x at the cost of one
            pass, for :func:`~spibatch.phasing.support.shrink_wrap_projection`)."""
        spectrum = self.spectrum() if src is None else self.fft.forward(src)
        sums = self._project(spectrum, self._scale)
        if filtered is not None:
            self.filtered_spectrum = self.fft.spare_spectrum()
            self.kernels.multiply_separable(spectrum, self.filtered_spectrum, *filtered)
        self._spectrum = None                  # projected (and the inverse destroys it)
        self.y_is_projection = src is None      # y will hold P_M x until the next FFT into it
        if record:
            self.iteration += 1
            for history, (err, norm) in zip(self.histories, sums):
                history.append({"iteration": self.iteration, "algorithm": self.algorithm, "error": _ratio(err, norm)})
        return self.fft.inverse(spectrum)

    def fourier_errors(self) -> list[float]:
        """The relative Fourier error of each start's current x (no projection kept)."""
        spectrum = self.spectrum().copy()
        return [_ratio(err, norm) for err, norm in self._project(spectrum, 1.0)]

    def hold_out(self, free: np.ndarray) -> None:
        """Leave the ``free`` voxels (bool, the amplitude's shape) out of the modulus constraint; their measured
        amplitudes are kept for :meth:`free_errors`.  Held out once: a second call (``Auto() ** 2``) keeps the first."""
        if self.free is not None:
            return
        xp = self.xp
        free = xp.asarray(np.asarray(free, bool))
        self.free = free & (self.amplitude >= 0)
        self._free_amplitude = xp.where(self.free, self.amplitude, 0).astype(np.float32)
        self.amplitude = xp.where(self.free, np.float32(-1), self.amplitude).astype(np.float32)
        self._free_weight = xp.asarray(spectrum_weights(self.n, self.amplitude.shape[-1], self.measurement.real))

    def free_errors(self, volumes=None) -> list[float]:
        """Each start's relative Fourier error on the held-out voxels: sqrt(sum (|F| - A)^2 / sum A^2), F the
        spectrum of ``volumes`` (B, N, N, N) (the current x when None); NaN without a free set."""
        if self.free is None:
            return [float("nan")] * self.batch
        xp = self.xp
        if volumes is None:
            spectrum = self.spectrum()
        else:
            self.fft.y[...] = volumes
            spectrum = self.fft.forward(self.fft.y)
            self.y_is_projection = False
        out = [free_error(xp, xp.abs(spectrum[b]), self._free_amplitude, self.free, self._free_weight)
               for b in range(self.batch)]
        if volumes is not None:
            self._spectrum = None        # fftw: the forward above wrote into the cached spectrum's buffer
        return out

    def density(self):
        """The current estimates P_S x (inside the support, positive with positivity), FFT order, a copy
        (B, N, N, N) on the device."""
        x = self.fft.x
        keep = self.support & (x.real > 0) if self.positivity else self.support
        return self.xp.where(keep, x, 0).astype(x.dtype)


def _ratio(err: float, norm: float) -> float:
    return float(np.sqrt(err / norm)) if norm > 0 else float("nan")
