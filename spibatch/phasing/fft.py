"""Planned 3-D FFTs for phase retrieval, on buffers the engine owns.

Two backends with one interface:

- ``fftw``: pyFFTW (the ``[fftw]`` extra; FFTW itself is GPL, so it stays
  optional) with plans on aligned buffers, executed in place of allocation.
  ``planning="estimate"`` (the default) plans with FFTW_ESTIMATE from no wisdom:
  the plan depends only on the size, the threads and the library, so the same
  seed gives the same result bit for bit in every run on one machine.
  ``planning="measure"`` times candidate algorithms (FFTW_MEASURE) and keeps them
  as wisdom in ``$XDG_CACHE_HOME/spibatch/`` (planning 256^3 takes seconds once):
  faster (BENCHMARKS.md: 1.2x at 128^3), but which algorithm wins a timing race
  differs from run to run, and with it the float32 rounding -- the first run on a
  machine and the later ones (which read the wisdom) may return different
  densities from the same seed.
- ``scipy``: ``scipy.fft`` (pocketfft) with ``workers`` threads; it allocates its
  outputs, so it is slower on large volumes.

``auto`` takes fftw when pyFFTW imports and the planning is ``measure``, scipy otherwise: FFTW_ESTIMATE
plans of the odd edges EMC models have are erratic -- measured at 2 threads (BENCHMARKS.md, "Phasing
speed"), forward + inverse 75^3 397 ms against scipy's 8.4, 125^3 2.5 s against 33 ms, 91^3 34-87 ms against
11-14 --, and scipy.fft is reproducible bit for bit too.  Both transforms are unnormalised
(the forward is a plain sum, the inverse too): callers fold the 1/N^3 in
elsewhere (the modulus projection does it for free).  A real iterate uses a
real-to-complex FFT with a (N, N, N // 2 + 1) half spectrum.  Arrays carry a
leading batch axis, (B, N, N, N), as a :class:`~spibatch.phasing.reconstruction.Reconstruction`
holds them; on the CPU B is 1.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger("spibatch")

BACKENDS = ("auto", "fftw", "scipy")
PLANNING = ("estimate", "measure")


def _wisdom_path(threads: int) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "spibatch" / f"fftw-wisdom-{threads}threads.json"


def _read_wisdom(path: Path) -> tuple[bytes, ...]:
    """FFTW's wisdom kept by :func:`_wisdom_bytes` (JSON of base64 strings: nothing in it runs when read)."""
    return tuple(base64.b64decode(item, validate=True) for item in json.loads(path.read_text("ascii")))


def _wisdom_bytes(wisdom: tuple[bytes, ...]) -> bytes:
    return json.dumps([base64.b64encode(item).decode("ascii") for item in wisdom]).encode("ascii")


def have_fftw() -> bool:
    try:
        import pyfftw  # noqa: F401
    except ImportError:
        return False
    return True


def _address(array) -> int:
    return array.__array_interface__["data"][0]


class FFTEngine:
    """FFTs of B iterates (B, N, N, N) on the CPU, over the last three axes.

    Attributes: ``x`` (the iterates) and ``y`` (scratch), real float32 or complex64, (B, N, N, N);
    ``spectrum_shape`` (B, N, N, N // 2 + 1) or (B, N, N, N).  ``forward(src)`` returns the spectrum
    of ``x`` or ``y``; ``inverse(spectrum)`` returns the real-space array (it is ``y`` with fftw; the
    spectrum may be destroyed).  Returned arrays are only valid until the next call.  With B = 1
    (a start on the CPU) every transform is the plain 3-D one of the (N, N, N) array.
    """

    def __init__(self, n: int, *, batch: int = 1, real: bool = True, threads: int = 1, backend: str = "auto",
                 planning: str = "estimate"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown FFT backend {backend!r}: one of {', '.join(BACKENDS)}")
        if planning not in PLANNING:
            raise ValueError(f"unknown FFT planning {planning!r}: one of {', '.join(PLANNING)}")
        self.planning = planning
        if backend == "auto":
            backend = "fftw" if planning == "measure" and have_fftw() else "scipy"
        self.backend = backend
        self.n = int(n)
        self.batch = int(batch)
        self.real = bool(real)
        self.threads = max(1, int(threads))
        self.volume = (self.n,) * 3
        self.shape = (self.batch, *self.volume)
        self.spectrum_shape = (self.batch, self.n, self.n, self.n // 2 + 1) if real else self.shape
        self.real_dtype = np.dtype(np.float32 if real else np.complex64)
        if backend == "fftw":
            self._setup_fftw()
        else:
            self.x = np.zeros(self.shape, self.real_dtype)
            self.y = np.zeros(self.shape, self.real_dtype)
            self._spare = None      # spare_spectrum's, made at its first call

    # -- fftw -------------------------------------------------------------------
    def _setup_fftw(self) -> None:
        import pyfftw

        measure = self.planning == "measure"
        path = _wisdom_path(self.threads)
        if measure:
            try:
                pyfftw.import_wisdom(_read_wisdom(path))
            except (OSError, ValueError, TypeError, binascii.Error):   # none kept yet, or not ours: plan afresh
                pass
        else:               # FFTW_ESTIMATE would still take a timed plan from wisdom in memory
            pyfftw.forget_wisdom()
        self.x = pyfftw.zeros_aligned(self.shape, self.real_dtype)
        self.y = pyfftw.zeros_aligned(self.shape, self.real_dtype)
        self._spectrum = pyfftw.zeros_aligned(self.spectrum_shape, np.complex64)
        self._spectrum2 = pyfftw.zeros_aligned(self.spectrum_shape, np.complex64)
        flags = ("FFTW_MEASURE",) if measure else ("FFTW_ESTIMATE",)
        kw = dict(axes=(-3, -2, -1), threads=self.threads)

        def planned(a):        # one start: the 3-D array itself (the plan and its wisdom are the 3-D transform's)
            return a[0] if self.batch == 1 else a

        self._forward = {_address(src): pyfftw.FFTW(planned(src), planned(self._spectrum), flags=flags, **kw)
                         for src in (self.x, self.y)}
        inverse_flags = flags + ("FFTW_DESTROY_INPUT",)
        self._inverse = {_address(spec): pyfftw.FFTW(planned(spec), planned(self.y), direction="FFTW_BACKWARD",
                                                     flags=inverse_flags, **kw)
                         for spec in (self._spectrum, self._spectrum2)}
        if measure:
            try:
                from spibatch.io.atomic import write_bytes

                write_bytes(path, _wisdom_bytes(pyfftw.export_wisdom()))
            except OSError as exc:
                log.debug("could not keep FFTW wisdom in %s: %s", path, exc)
        # the planner overwrote the buffers while measuring
        for a in (self.x, self.y, self._spectrum, self._spectrum2):
            a[...] = 0

    def spare_spectrum(self) -> np.ndarray:
        """A second spectrum buffer (for a filtered copy); fftw: the engine's own."""
        if self.backend == "fftw":
            return self._spectrum2
        if self._spare is None:    # kept: a fresh 8 MB array each call cost its page faults
            self._spare = np.empty(self.spectrum_shape, np.complex64)
        return self._spare

    def forward(self, src: np.ndarray | None = None) -> np.ndarray:
        """The unnormalised FFT of ``src`` (``x`` by default; with fftw it must be ``x`` or ``y``)."""
        src = self.x if src is None else src
        if self.backend == "fftw":
            self._forward[_address(src)].execute()
            return self._spectrum
        import scipy.fft

        transform = scipy.fft.rfftn if self.real else scipy.fft.fftn
        if self.batch == 1:
            if self.real:        # P_S x (ER, shrink-wrap) is zero outside its support: skip those rows
                from spibatch.phasing.fft_pruned import rfftn_skipping_zeros

                spectrum = rfftn_skipping_zeros(src[0], self.threads)
                if spectrum is not None:
                    return spectrum[None]
            return transform(src[0], workers=self.threads)[None]
        return transform(src, axes=(-3, -2, -1), workers=self.threads)

    def inverse(self, spectrum: np.ndarray) -> np.ndarray:
        """The unnormalised inverse FFT of ``spectrum`` into ``y`` (returned); spectrum destroyed."""
        if self.backend == "fftw":
            plan = self._inverse.get(_address(spectrum))
            if plan is None:
                self._spectrum[...] = spectrum
                plan = self._inverse[_address(self._spectrum)]
            plan.execute()
            return self.y
        import scipy.fft

        one = self.batch == 1
        spectrum = spectrum[0] if one else spectrum
        kw = dict(norm="forward", workers=self.threads, overwrite_x=True, axes=(-3, -2, -1))
        if self.real:
            out = scipy.fft.irfftn(spectrum, s=self.volume, **kw)
        else:
            out = scipy.fft.ifftn(spectrum, **kw)
        self.y = out[None] if one else out
        return self.y
