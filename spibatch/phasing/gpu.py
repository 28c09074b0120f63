"""Phase retrieval on a GPU: the same operators and recipes, several starts batched on one device.

:class:`BatchedReconstruction` holds B starts as (B, N, N, N) device arrays: the FFTs
run batched over the last three axes (``xp.fft``: cupy.fft / cuFFT, real-to-complex with
realness), the pointwise updates (ER, HIO, RAAR: ``update_real`` of ``cuda/phasing.cu``) run
once over the whole batch, and the modulus projection, its error sums and the shrink-wrap
threshold run per start on contiguous slices.  The shrink-wrap blur multiplies the spectrum
by a separable Gaussian (``multiply_separable``).  Each start draws its random phases from
its own seed exactly as :func:`~spibatch.phasing.multistart.run_one` does, so start ``seed``
gives the CPU's answer to float32 rounding (the iterations are chaotic: over hundreds of
iterations the two drift apart like two CPU FFT libraries do).

``runtime``: "cupy", "pycuda", or a runtime object (``kernels.cuda_twin.TwinRuntime`` runs
all of this on numpy, to test the orchestration without a GPU).
"""

from __future__ import annotations

import time

import numpy as np

from spibatch.kernels.phasing_gpu import PhasingKernels
from spibatch.kernels.xp import free_bytes, to_host
from spibatch.phasing.measurement import Measurement
from spibatch.phasing.reconstruction import Reconstruction

BYTES_PER_VOXEL = 32          # x, y, two half spectra, support, cuFFT work area: ~32 B per voxel and start
FILL_VOXELS = 2 ** 25         # a batch of this many voxels keeps an H100 busy (one 320^3 start does alone)


def _array_module(runtime, xp):
    if xp is None:
        xp = getattr(runtime, "xp", None)
    if xp is None:
        import cupy as xp

        from spibatch.kernels.xp import ensure_device

        ensure_device()          # this process's GPU (local rank / CUDA_VISIBLE_DEVICES), chosen once
    return xp


def starts_per_batch(n: int, num_starts: int, free: int) -> int:
    """Starts run together: enough voxels to fill the GPU, no more than half its free memory holds."""
    fill = max(1, FILL_VOXELS // n ** 3)
    fit = max(1, (free // 2) // (BYTES_PER_VOXEL * n ** 3))
    return int(max(1, min(num_starts, fill, fit)))


class DeviceKernels:
    """The calls operators make on ``rec.kernels`` (as :mod:`spibatch.kernels.phasing_cpu`), on device arrays."""

    def __init__(self, runtime, xp):
        self.xp = xp
        self.gpu = PhasingKernels(runtime, xp)

    def modulus_project(self, spectrum, amplitude, scale, n, half):
        return self.gpu.modulus_project(spectrum, amplitude, scale, n, half)

    def _update(self, algorithm, x, y, support, positivity, beta=0.0):
        if x.dtype == np.float32:                      # realness: the CUDA kernel
            self.gpu.update(algorithm, x, y, support, positivity, float(beta))
            return
        xp, beta = self.xp, np.float32(beta)           # complex iterates: array expressions
        test = 2 * y - x if algorithm == "RAAR" else y
        other = {"ER": 0, "HIO": x - beta * y, "RAAR": beta * x + (1 - 2 * beta) * y}[algorithm]
        x[...] = xp.where(self._kept(test, support, positivity), y, other)

    def update_er(self, x, y, support, positivity):
        self._update("ER", x, y, support, positivity)

    def update_hio(self, x, y, support, positivity, beta):
        self._update("HIO", x, y, support, positivity, beta)

    def update_raar(self, x, y, support, positivity, beta):
        self._update("RAAR", x, y, support, positivity, beta)

    def project_support(self, x, support, positivity, out):
        if x.dtype == np.float32:
            self.gpu.project_support(x, support, positivity, out)
        else:
            out[...] = self.xp.where(self._kept(x, support, positivity), x, 0)

    def _kept(self, value, support, positivity):
        return support & (value.real > 0) if positivity else support

    def dm_first(self, x, y, support, positivity, gamma_m, gamma_s, a, b):
        f = (1 + gamma_m) * y - gamma_m * x
        a[...] = self.xp.where(self._kept(f, support, positivity), f, 0)
        ps = self.xp.where(self._kept(x, support, positivity), x, 0)
        b[...] = (1 + gamma_s) * ps - gamma_s * x

    def dm_second(self, x, a, pb, beta):
        x += beta * (a - pb)

    def multiply_separable(self, spectrum, out, g0, g1, g2):
        """As the CPU kernel; a batch (B, N, N, K) is one (B N, N, K) call with g0 repeated B times."""
        xp = self.xp
        if spectrum.ndim == 4:
            g0 = np.tile(np.asarray(g0), spectrum.shape[0])
            spectrum = spectrum.reshape((-1,) + spectrum.shape[2:])
            out = out.reshape(spectrum.shape)
        self.gpu.multiply_separable(spectrum, out, *(xp.asarray(np.asarray(g, np.float32)) for g in (g0, g1, g2)))

    def max_real(self, volume) -> float:
        return float(volume.real.max())

    def histogram_real(self, volume, top, bins) -> np.ndarray:
        xp = self.xp
        values = volume.real[volume.real > 0]
        index = xp.minimum((values / (top / bins)).astype(np.int64), bins - 1)
        return to_host(xp.bincount(index, minlength=bins)).astype(np.int64)

    def threshold_support(self, volume, level, support) -> int:
        if volume.dtype != np.float32:
            volume = self.xp.ascontiguousarray(volume.real)
        return self.gpu.threshold_support(volume, float(level), support)


class DeviceFFT:
    """The :class:`~spibatch.phasing.fft.FFTEngine` interface over ``xp.fft`` for (..., N, N, N) arrays."""

    def __init__(self, shape: tuple, real: bool, xp):
        self.xp, self.real, self.shape = xp, real, tuple(shape)
        self.n = shape[-1]
        self.backend = "numpy-twin" if xp is np else xp.__name__ + ".fft"
        self.spectrum_shape = self.shape[:-1] + ((self.n // 2 + 1,) if real else (self.n,))
        self.real_dtype = np.dtype(np.float32 if real else np.complex64)
        self.x = xp.zeros(self.shape, self.real_dtype)
        self.y = xp.zeros(self.shape, self.real_dtype)

    def spare_spectrum(self):
        return self.xp.empty(self.spectrum_shape, np.complex64)

    def forward(self, src=None):
        src = self.x if src is None else src
        fft = self.xp.fft
        out = fft.rfftn(src, axes=(-3, -2, -1)) if self.real else fft.fftn(src, axes=(-3, -2, -1))
        return out.astype(np.complex64, copy=False)

    def inverse(self, spectrum):
        fft = self.xp.fft
        if self.real:
            out = fft.irfftn(spectrum, s=self.shape[-3:], axes=(-3, -2, -1), norm="forward")
        else:
            out = fft.ifftn(spectrum, axes=(-3, -2, -1), norm="forward")
        self.y = self.xp.ascontiguousarray(out.astype(self.real_dtype, copy=False))
        return self.y


class BatchedReconstruction(Reconstruction):
    """B independent starts (``seeds``) of one measurement on one device; the operators act on all at once.

    x, support: (B, N, N, N) device arrays; ``histories[b]`` and ``support_sizes[b]`` per start.
    """

    def __init__(self, measurement: Measurement, support: np.ndarray, seeds: list[int], *, positivity: bool = True,
                 runtime="cupy", xp=None):
        xp = _array_module(runtime, xp)
        n = measurement.n
        if support.shape != (n, n, n):
            raise ValueError(f"support shape {support.shape} != ({n}, {n}, {n})")
        self.xp = xp
        self.kernels = DeviceKernels(runtime, xp)
        self.measurement = measurement
        self.positivity = bool(positivity)
        self.seeds = [int(s) for s in seeds]
        b = len(self.seeds)
        self.fft = DeviceFFT((b, n, n, n), measurement.real, xp)
        self._amplitude = xp.asarray(np.ascontiguousarray(measurement.amplitude, np.float32))
        self.support = xp.asarray(np.ascontiguousarray(np.broadcast_to(support, (b, n, n, n)), bool))
        self.histories: list[list[dict]] = [[] for _ in range(b)]
        self.history = self.histories[0]
        self.iteration, self.algorithm = 0, ""
        self._spectrum = None
        self.y_is_projection = False
        self._scale = 1.0 / n ** 3
        self.seed = self.seeds[0]
        self.support_sizes = [[(0, int(support.sum()))] for _ in range(b)]
        self.support_size_history = self.support_sizes[0]
        for i, seed in enumerate(self.seeds):
            self._start(i, np.random.default_rng(seed), support)

    @property
    def amplitude(self):
        return self._amplitude

    def _start(self, i: int, rng: np.random.Generator, support: np.ndarray) -> None:
        """Start i as Reconstruction._random_start: the same random phases from the same seed."""
        amp = np.maximum(self.measurement.amplitude, 0.0)
        phases = rng.uniform(0, 2 * np.pi, amp.shape).astype(np.float32)
        spectrum = self.xp.asarray((amp * np.exp(1j * phases)).astype(np.complex64))
        fft = self.xp.fft
        n = self.n
        axes = (0, 1, 2)
        y = (fft.irfftn(spectrum, s=(n, n, n), axes=axes, norm="forward") if self.measurement.real
             else fft.ifftn(spectrum, axes=axes, norm="forward")).astype(self.fft.real_dtype, copy=False)
        keep = self.support[i] & (y.real > 0) if self.positivity else self.support[i]
        self.fft.x[i] = self.xp.where(keep, y * np.float32(self._scale), 0)

    def per_start(self, volume):
        for i in range(len(self.seeds)):
            yield volume[i], self.support[i]

    def record_support(self, start: int, kept: int) -> None:
        self.support_sizes[start].append((self.iteration, kept))

    def _project_each(self, spectrum, scale: float) -> list[tuple[float, float]]:
        return [self.kernels.modulus_project(spectrum[i], self._amplitude, scale, self.n, self.measurement.real)
                for i in range(len(self.seeds))]

    def modulus_projection(self, src=None, record: bool = True):
        spectrum = self.spectrum() if src is None else self.fft.forward(src)
        sums = self._project_each(spectrum, self._scale)
        self._spectrum = None
        self.y_is_projection = src is None
        if record:
            self.iteration += 1
            for history, (err, norm) in zip(self.histories, sums):
                history.append({"iteration": self.iteration, "algorithm": self.algorithm,
                                "error": float(np.sqrt(err / norm)) if norm > 0 else float("nan")})
        return self.fft.inverse(spectrum)

    def fourier_errors(self) -> list[float]:
        """The relative Fourier error of each start's current x."""
        spectrum = self.spectrum().copy()
        return [float(np.sqrt(e / s)) if s > 0 else float("nan") for e, s in self._project_each(spectrum, 1.0)]

    def fourier_error(self) -> float:
        return self.fourier_errors()[0]

    def density(self):
        """P_S x of every start (B, N, N, N), on the device, a copy."""
        x = self.fft.x
        keep = self.support & (x.real > 0) if self.positivity else self.support
        return self.xp.where(keep, x, 0).astype(x.dtype)


def run_batch(seeds: list[int], measurement: Measurement, options, *, runtime="cupy", xp=None) -> list:
    """:func:`~spibatch.phasing.multistart.run_one` for several seeds at once on one device: StartResults (numpy)."""
    from spibatch.phasing.measurement import autocorrelation_support
    from spibatch.phasing.multistart import StartResult
    from spibatch.phasing.operators import parse_recipe

    xp = _array_module(runtime, xp)
    start = time.perf_counter()
    recipe = parse_recipe(options.recipe)
    support = autocorrelation_support(measurement, options.initial_support_threshold)
    rec = BatchedReconstruction(measurement, support, seeds, positivity=options.positivity, runtime=runtime, xp=xp)
    recipe(rec)
    density = rec.density()
    rec.fft.x[...] = density
    rec.changed()
    finals = rec.fourier_errors()
    density, supports = to_host(density), to_host(rec.support)
    seconds = (time.perf_counter() - start) / len(seeds)     # the batch's time, shared
    return [StartResult(seed=seed, density=density[i], support=supports[i],
                        errors=np.array([h["error"] for h in rec.histories[i]]),
                        algorithms=[h["algorithm"] for h in rec.histories[i]], final_error=finals[i],
                        seconds=seconds, support_sizes=list(rec.support_sizes[i]), fft_backend=rec.fft.backend)
            for i, seed in enumerate(seeds)]


def batches(seeds: list[int], n: int, *, runtime="cupy", xp=None) -> list[list[int]]:
    """``seeds`` cut into batches that fill (and fit) the device."""
    size = starts_per_batch(n, len(seeds), free_bytes(_array_module(runtime, xp), fallback=2 ** 30))
    return [seeds[i:i + size] for i in range(0, len(seeds), size)]
