"""GPU twins of :mod:`spibatch.kernels.phasing_cpu`: the same calls on CuPy arrays, launched from
``cuda/phasing.cu`` through :class:`~spibatch.kernels.cuda_launch.Launcher` (CuPy or PyCUDA)."""

from __future__ import annotations

import numpy as np

from spibatch.kernels.cuda_launch import Launcher, blocks_for, check

ALGORITHMS = {"ER": 0, "HIO": 1, "RAAR": 2}


class PhasingKernels:
    """Kernels on one device; ``xp`` is cupy (numpy only for argument tests with a recording runtime)."""

    def __init__(self, runtime="cupy", xp=None):
        if xp is None:
            import cupy as xp
        self.xp = xp
        self.launch = Launcher("phasing.cu", runtime)

    def modulus_project(self, spectrum, amplitude, scale: float, n: int, half: bool) -> tuple[float, float]:
        """As phasing_cpu.modulus_project: in place, returns (error sum, norm sum)."""
        check("spectrum", spectrum, np.complex64)
        check("amplitude", amplitude, np.float32, spectrum.shape)
        sums = self.xp.zeros(2, np.float64)
        size = spectrum.size
        self.launch("modulus_project", (blocks_for(size),),
                    (spectrum, amplitude, np.float32(scale), np.int64(size), np.int64(spectrum.shape[-1]),
                     np.int64(n), np.int32(bool(half)), sums))
        err, norm = (float(v) for v in sums.tolist())
        return err, norm

    def update(self, algorithm: str, x, y, support, positivity: bool, beta: float = 0.0) -> None:
        """x <- ER / HIO / RAAR update from y = P_M x (real float32 iterates)."""
        if algorithm not in ALGORITHMS:
            raise ValueError(f"no GPU update for {algorithm!r}: one of {', '.join(ALGORITHMS)}")
        check("x", x, np.float32)
        check("y", y, np.float32, x.shape)
        check("support", support, np.bool_, x.shape)
        self.launch("update_real", (blocks_for(x.size),),
                    (x, y, support, np.int32(bool(positivity)), np.int32(ALGORITHMS[algorithm]), np.float32(beta),
                     np.int64(x.size)))

    def project_support(self, x, support, positivity: bool, out) -> None:
        check("x", x, np.float32)
        check("support", support, np.bool_, x.shape)
        check("out", out, np.float32, x.shape)
        self.launch("project_support", (blocks_for(x.size),),
                    (x, support, np.int32(bool(positivity)), out, np.int64(x.size)))

    def multiply_separable(self, spectrum, out, g0, g1, g2) -> None:
        check("spectrum", spectrum, np.complex64)
        check("out", out, np.complex64, spectrum.shape)
        for name, g, length in (("g0", g0, spectrum.shape[0]), ("g1", g1, spectrum.shape[1]),
                                ("g2", g2, spectrum.shape[2])):
            check(name, g, np.float32, (length,))
        n0, n1, n2 = spectrum.shape
        self.launch("multiply_separable", (blocks_for(spectrum.size),),
                    (spectrum, out, g0, g1, g2, np.int64(n0), np.int64(n1), np.int64(n2)))

    def threshold_support(self, volume, level: float, support) -> int:
        check("volume", volume, np.float32)
        check("support", support, np.bool_, volume.shape)
        count = self.xp.zeros(1, np.uint64)
        self.launch("threshold_support", (blocks_for(volume.size),),
                    (volume, np.float32(level), support, np.int64(volume.size), count))
        return int(count.tolist()[0])
