"""Phase retrieval on a GPU: what is device-specific -- kernels, FFTs and how many starts share the device.

A :class:`~spibatch.phasing.reconstruction.Reconstruction` on a GPU ``Device`` holds B starts as
(B, N, N, N) device arrays and takes its kernels and FFTs from here: the FFTs run batched over the
last three axes (``xp.fft``: cupy.fft / cuFFT, real-to-complex with realness), the pointwise
updates (ER, HIO, RAAR: ``update_real`` of ``cuda/phasing.cu``) run once over the whole batch, and
the modulus projection, its error sums and the shrink-wrap threshold run per start on contiguous
slices.  The shrink-wrap blur multiplies the spectrum by a separable Gaussian
(``multiply_separable``).  Each start draws its random phases from its own seed as on the CPU, so
start ``seed`` gives the CPU's answer to float32 rounding (the iterations are chaotic: over
hundreds of iterations the two drift apart like two CPU FFT libraries do).

``Device("gpu", "twin")`` runs all of this on numpy (the kernels' numpy twins), to test the
orchestration without a GPU.
"""

from __future__ import annotations

import numpy as np

from spibatch.kernels.device import Device
from spibatch.kernels.phasing_gpu import PhasingKernels
from spibatch.kernels.xp import free_bytes, to_host

BYTES_PER_VOXEL = 32          # x, y, two half spectra, support, cuFFT work area: ~32 B per voxel and start
FILL_VOXELS = 2 ** 25         # a batch of this many voxels keeps an H100 busy (one 320^3 start does alone)


def starts_per_batch(n: int, num_starts: int, free: int) -> int:
    """Starts run together: enough voxels to fill the GPU, no more than half its free memory holds."""
    fill = max(1, FILL_VOXELS // n ** 3)
    fit = max(1, (free // 2) // (BYTES_PER_VOXEL * n ** 3))
    return int(max(1, min(num_starts, fill, fit)))


def batches(seeds: list[int], n: int, device: Device) -> list[list[int]]:
    """``seeds`` cut into batches that fill (and fit) the device's free memory (an n^3 box each)."""
    device.activate()
    size = starts_per_batch(n, len(seeds), free_bytes(device.xp, fallback=2 ** 30))
    return [seeds[i:i + size] for i in range(0, len(seeds), size)]


class DeviceKernels:
    """The calls operators make on ``rec.kernels`` (as :mod:`spibatch.kernels.phasing_cpu`), on device arrays."""

    def __init__(self, device: Device):
        self.xp = device.xp
        self.gpu = PhasingKernels(device.launch_runtime, self.xp)

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
        return float(self.xp.nanmax(volume.real))   # NaN left out, as the CPU kernel's np.fmax

    def histogram_real(self, volume, top, bins) -> np.ndarray:
        xp = self.xp
        values = volume.real[volume.real > 0]
        index = xp.minimum((values / (top / bins)).astype(np.int64), bins - 1)
        return to_host(xp.bincount(index, minlength=bins)).astype(np.int64)

    def threshold_relative(self, volume, fraction, support) -> tuple[int, float]:
        """support <- real(volume) > fraction * its maximum; (voxels kept, maximum)."""
        top = self.max_real(volume)
        return self.threshold_support(volume, np.float32(float(fraction) * top), support), top

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
