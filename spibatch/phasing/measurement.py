"""The measured Fourier amplitudes a reconstruction is held to.

An intensity volume (N, N, N), centred (q = 0 at index N // 2, as our EMC,
Dragonfly and numpy's fftshift put it), becomes amplitudes ``sqrt(I)`` in FFT
order with the unmeasured voxels marked free: the beam-stop hole and the
corners beyond the detector edge, which EMC leaves at 0 (Dragonfly does the
same), or an explicit ``measured`` mask.  A real density has a centrosymmetric
intensity, so for a real iterate I(q) and I(-q) are averaged first (and a voxel
measured on one side only is filled from the other).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from spibatch.errors import InputError

log = logging.getLogger("spibatch")


@dataclass
class Measurement:
    """Amplitudes in FFT order.

    amplitude : (N, N, N // 2 + 1) float32 for a real iterate, (N, N, N) for a complex one;
        sqrt of the intensity, -1 where not measured
    n : edge N of the cube
    real : whether the iterate is real (half spectrum)
    voxel_size_m : real-space voxel edge in metres (1 / (N * dq)), or None when unknown
    """

    amplitude: np.ndarray
    n: int
    real: bool
    voxel_size_m: float | None = None

    @property
    def measured_fraction(self) -> float:
        return float(np.count_nonzero(self.amplitude >= 0) / self.amplitude.size)

    def measured_full(self) -> np.ndarray:
        """(N, N, N) bool in FFT order: which voxels carry a measured amplitude."""
        return full_spectrum(self.amplitude >= 0, self.n) if self.real else self.amplitude >= 0

    def amplitude_full(self) -> np.ndarray:
        """(N, N, N) float32 in FFT order (-1 where not measured)."""
        return full_spectrum(self.amplitude, self.n) if self.real else self.amplitude


def full_spectrum(half: np.ndarray, n: int) -> np.ndarray:
    """The full (N, N, N) array from its half (N, N, N // 2 + 1): a real FFT's spectrum (Hermitian,
    F(-k) = conj F(k)) or a centrosymmetric real quantity (amplitudes, masks)."""
    out = np.empty((n, n, n), half.dtype)
    k = half.shape[2]
    out[:, :, :k] = half
    rest = np.arange(k, n)
    mirrored = half[:, :, (n - rest) % n]                     # value at -q for the missing kz
    out[:, :, k:] = np.roll(mirrored[::-1, ::-1], 1, axis=(0, 1))
    if np.iscomplexobj(out):
        out[:, :, k:] = np.conj(out[:, :, k:])
    return out


def inverted_index(n: int) -> np.ndarray:
    """Index of -k for every k on one FFT-ordered axis of length n."""
    return (-np.arange(n)) % n


def fast_size(n: int, primes: tuple[int, ...] = (2, 3, 5, 7, 11, 13)) -> int:
    """The smallest m >= n of n's parity whose prime factors are all in ``primes`` (FFTW has codelets for them).

    EMC model edges are 2 ceil(q_max) + 1, often prime (211): an FFT of a prime length is several
    times slower than of a 7-smooth one (225 = 3^2 5^2).  An edge below 1 is returned as it is (an empty volume,
    which the input checks refuse: the search never ended on 0).
    """
    if n < 1:
        return n
    m = n
    while True:
        r = m
        for p in primes:
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 2


def pad_centre(volume: np.ndarray, edge: int) -> np.ndarray:
    """``volume`` (L, L, L) centred (index L // 2) in an edge^3 box of zeros (centre edge // 2), or its
    central edge^3 when smaller.  Zeros added to an intensity are unmeasured voxels."""
    n = volume.shape[0]
    out = np.zeros((edge,) * 3, volume.dtype)
    if n <= edge:
        lo = edge // 2 - n // 2
        out[lo:lo + n, lo:lo + n, lo:lo + n] = volume
        return out
    lo = n // 2 - edge // 2
    return np.ascontiguousarray(volume[lo:lo + edge, lo:lo + edge, lo:lo + edge])


MAX_INTENSITY = 1e30     # sqrt: 1e15 per amplitude, and sums of N^3 of them stay far inside float32
MIN_INTENSITY = 1e-20    # the largest voxel at least this: amplitudes >= 1e-10, their squares far above float32's
#                          smallest normal number (1.2e-38; below, the errors and supports come out 0 or NaN)


def check_intensity(intensity, *, source: str | None = None, field: str = "intensity",
                    centring: bool = True) -> np.ndarray:
    """The intensity as a float64 cube, or one clear InputError (shape, NaN, negative, empty, not centred at
    N // 2: ``centring``, 0.1 s at 128^3, skipped where the caller checked it already)."""
    from spibatch.io.results import check_finite

    arr = np.asarray(intensity)
    if arr.ndim != 3 or len(set(arr.shape)) != 1:
        raise InputError(f"phase retrieval needs a cubic 3-D intensity, found shape {arr.shape}",
                         path=source, field=field, fix="give an (N, N, N) volume (crop or pad it to a cube)")
    if arr.shape[0] < 8:
        raise InputError(f"the intensity is {arr.shape[0]}^3; at least 8^3 is needed", path=source, field=field)
    if arr.dtype.kind not in "iuf":
        raise InputError(f"expected real numbers, found dtype {arr.dtype}", path=source, field=field,
                         fix="give the merged intensity (not amplitudes or complex values)")
    arr = arr.astype(np.float64, copy=False)
    check_finite(arr, path=source, field=field, fix="mark unmeasured voxels with 0, not NaN")
    if (arr < 0).any():
        idx = tuple(int(i) for i in np.argwhere(arr < 0)[0])
        raise InputError(f"{int((arr < 0).sum())} voxels are negative (first at {idx}, {arr[idx]:.3g})",
                         path=source, field=field,
                         fix="an intensity cannot be negative: clip background-subtracted data at 0")
    if not (arr > 0).any():
        raise InputError("the intensity is zero everywhere", path=source, field=field)
    if arr.max() > MAX_INTENSITY:   # amplitudes and their FFT sums are float32
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(arr)), arr.shape))
        raise InputError(f"the largest voxel is {arr[idx]:.3g} (at {idx}): above {MAX_INTENSITY:.0e}, past what the "
                         "float32 amplitudes and their transforms hold", path=source, field=field,
                         fix="divide the intensity by a constant (phasing uses only its ratios)")
    if arr.max() < MIN_INTENSITY:
        raise InputError(f"the largest voxel is {arr.max():.3g}: below {MIN_INTENSITY:.0e} the float32 amplitudes "
                         "and their squares underflow", path=source, field=field,
                         fix="multiply the intensity by a constant (phasing uses only its ratios)")
    if centring:
        _check_centred(arr, source, field)
    return arr


def capped_amplitude(intensity: np.ndarray) -> np.ndarray:
    """(N, N, N) float32 sqrt of the intensity, capped at the 99.9th percentile of its lit voxels: a few hot voxels
    (zingers) must not decide where the centre is."""
    amplitude = np.sqrt(np.clip(np.asarray(intensity, np.float64), 0.0, None)).astype(np.float32)
    lit = amplitude[amplitude > 0]
    return np.minimum(amplitude, np.percentile(lit, 99.9)) if lit.size else amplitude


def symmetry_centre(amplitude: np.ndarray, reach: int = 2, scores: list | None = None) -> tuple[float, ...]:
    """The index (half-integers allowed) about which each axis of a centrosymmetric intensity (N, N, N), given
    as its :func:`capped_amplitude`, is symmetric, searched within ``reach`` half-voxels of N // 2: per axis, the
    centre whose point reflection correlates best with the amplitudes over the voxels measured (> 0) on both sides
    -- so a volume measured on one side only, or an even edge whose first plane has no mirror, does not pull it.
    The other two axes are reflected about N // 2 on every second plane (even planes map onto even planes), which
    quarters the work: ~0.1 s at 128^3.  ``scores``: each axis's best correlation is appended to it."""
    n = amplitude.shape[0]
    c = n // 2
    found = []
    for axis in range(3):
        other = [slice(c % 2, None, 2)] * 3
        other[axis] = slice(None)
        a = np.moveaxis(amplitude[tuple(other)], axis, 0)              # (n, k, k): the axis searched first
        k = a.shape[1]
        # the other axes reflected about c: sub-index j -> (2c - j) (in the strided grid: j' -> 2c'-j')
        twice_other = (2 * c - c % 2) // 2
        b = np.roll(np.flip(a, (1, 2)), (twice_other - (k - 1), twice_other - (k - 1)), axis=(1, 2))
        ok_other = (np.arange(k)[:, None] <= twice_other) & (np.arange(k)[None, :] <= twice_other) & \
                   (np.arange(k)[:, None] >= twice_other - k + 1) & (np.arange(k)[None, :] >= twice_other - k + 1)
        best, best_score = 0, -np.inf
        for d in range(-reach, reach + 1):
            twice = 2 * c + d                                          # this axis reflected about c + d / 2
            r = np.roll(np.flip(b, 0), twice - (n - 1), axis=0)
            i = np.arange(n)
            ok = ((i <= twice) & (i >= twice - n + 1))[:, None, None] & ok_other[None] & (a > 0) & (r > 0)
            x, y = a[ok].astype(np.float64), r[ok].astype(np.float64)
            if x.size < 8:
                continue
            x, y = x - x.mean(), y - y.mean()
            norm = np.sqrt((x * x).sum() * (y * y).sum())
            score = float((x * y).sum() / norm) if norm > 0 else -np.inf
            if score > best_score:
                best, best_score = d, score
        found.append(c + best / 2)
        if scores is not None:
            scores.append(best_score)
    return tuple(found)


def profile_centre(amplitude: np.ndarray) -> tuple[float, ...]:
    """The same question answered from the projected amplitudes (:func:`capped_amplitude`): per axis the peak of
    the profile's self-convolution (for a profile symmetric about c it is at 2c, by Cauchy-Schwarz).  Robust to
    noise and sparse counts (zeros count as values), not to a volume measured on one side only:
    :func:`_check_centred` asks both."""
    amplitude = amplitude.astype(np.float64)        # (the profiles summed in float64)
    return tuple(float(np.argmax(np.convolve(p, p))) / 2
                 for p in (amplitude.sum(axis=tuple(a for a in range(3) if a != axis)) for axis in range(3)))


def _check_centred(arr: np.ndarray, source, field: str) -> None:
    """InputError when the intensity's centre of symmetry is a voxel or more from N // 2 (phasing puts q = 0
    there: an intensity centred elsewhere phases to a silently worse density); a warning when an even edge is
    centred at (N - 1) / 2 on every axis.  An axis counts as off only when both :func:`symmetry_centre` (masked
    reflections: one-sided data) and :func:`profile_centre` (projections: sparse, noisy counts) find it off, by
    the smaller of their two offsets."""
    from spibatch.validate import radial_index

    n = arr.shape[0]
    # an intensity in FFT order (q = 0 at index 0) is symmetric too, about N / 2 read periodically: its bright low q
    # lie in the corners (beyond the inscribed sphere), a centred one's in the middle (within N / 4)
    radius = radial_index(n)
    amplitude, scores = capped_amplitude(arr), []   # (a few hot voxels -- zingers -- capped: they decide nothing)
    lit = amplitude.astype(np.float64) ** 2
    middle, corners = lit[(radius < n / 4) & (arr > 0)], lit[(radius > n / 2) & (arr > 0)]
    if middle.size and corners.size and corners.mean() > 10 * middle.mean():
        raise InputError("the intensity is brightest in its corners: q = 0 at index 0 (FFT order), not at N // 2",
                         path=source, field=field, fix="fftshift it (numpy.fft.fftshift) so that q = 0 sits at N // 2")
    projected = profile_centre(amplitude)
    reach = max(2, 2 * int(np.ceil(max(abs(c - n // 2) for c in projected))) + 2)   # as far as the projections say
    masked = symmetry_centre(amplitude, reach, scores)
    found = tuple(a if abs(a - n // 2) <= abs(b - n // 2) else b for a, b in zip(masked, projected))
    found = tuple(c if (a - n // 2) * (b - n // 2) > 0 else float(n // 2) for c, a, b in zip(found, masked, projected))
    off = max(abs(c - n // 2) for c in found)
    if off < 1 and not (n % 2 == 0 and all(c == n // 2 - 0.5 for c in found)):
        return             # (half a voxel off on some axes only: noise; on all three of an even edge: (N - 1) / 2)
    where = "(" + ", ".join(f"{c:g}" for c in found) + ")"
    problem = (f"the intensity is symmetric about index {where}, not about N // 2 = {n // 2} where phasing puts "
               "q = 0")
    fix = "shift it so that q = 0 sits at index N // 2 on every axis (numpy's fftshift convention)"
    clear = min(score for score, c in zip(scores, found) if abs(c - n // 2) >= 0.5) >= 0.5
    if off >= 1 and clear:       # (sparse or noisy counts correlate weakly with their reflection: said, not refused)
        raise InputError(problem, path=source, field=field, fix=fix)
    log.warning("spibatch: warning: %s: %s: %s%s; %s", source or field, field, problem,
                "" if clear else " (by weakly correlated, noisy data: check it)", fix)


def prepare(intensity, *, real: bool = True, measured=None, voxel_size_per_m: float | None = None,
            source: str | None = None) -> Measurement:
    """Amplitudes from a centred intensity (N, N, N) (any units; only ratios matter).

    measured : optional (N, N, N) bool, centred like the intensity; default ``intensity > 0``.
    voxel_size_per_m : the Fourier voxel dq in 1/m, giving the real-space voxel 1 / (N dq).
    """
    arr = check_intensity(intensity, source=source, centring=False)   # (prepare_measurement checked it)
    n = arr.shape[0]
    if measured is None:
        mask = arr > 0
    else:
        mask = np.asarray(measured, bool)
        if mask.shape != arr.shape:
            raise InputError(f"the measured mask has shape {mask.shape}, the intensity {arr.shape}",
                             path=source, field="measured", fix="give a mask of the intensity's shape")
    arr = np.fft.ifftshift(arr)
    mask = np.fft.ifftshift(mask)
    if real:
        inv = inverted_index(n)
        arr_m = arr[np.ix_(inv, inv, inv)]
        mask_m = mask[np.ix_(inv, inv, inv)]
        both = mask & mask_m
        total = np.where(mask, arr, 0.0) + np.where(mask_m, arr_m, 0.0)
        arr = np.where(both, total / 2, total)
        mask = mask | mask_m
    amplitude = np.where(mask, np.sqrt(arr), -1.0).astype(np.float32)
    if real:
        amplitude = np.ascontiguousarray(amplitude[:, :, :n // 2 + 1])
    voxel = None if not voxel_size_per_m else 1.0 / (n * float(voxel_size_per_m))
    return Measurement(amplitude=amplitude, n=n, real=real, voxel_size_m=voxel)


def autocorrelation_support(measurement: Measurement, threshold: float = 0.1, sigma: float = 1.0, *,
                            source: str | None = None) -> np.ndarray:
    """Initial support (N, N, N) bool, FFT order: where the smoothed autocorrelation exceeds
    ``threshold`` times its maximum.  The autocorrelation is the inverse FFT of the measured
    intensity (unmeasured voxels count 0); it spans twice the object, a safe first support."""
    import scipy.fft

    n = measurement.n
    intensity = np.where(measurement.amplitude >= 0, measurement.amplitude.astype(np.float64) ** 2, 0.0)
    k = np.fft.fftfreq(n)
    if measurement.real:
        kz = np.fft.rfftfreq(n)
    else:
        kz = k
    g = (np.exp(-2 * (np.pi * sigma * k) ** 2)[:, None, None] * np.exp(-2 * (np.pi * sigma * k) ** 2)[None, :, None]
         * np.exp(-2 * (np.pi * sigma * kz) ** 2)[None, None, :])
    if measurement.real:
        auto = scipy.fft.irfftn(intensity * g, s=(n, n, n))
    else:
        auto = np.abs(scipy.fft.ifftn(intensity * g))
    support = auto > threshold * auto.max()
    if np.count_nonzero(support) < MIN_FIRST_SUPPORT:
        raise InputError(f"the autocorrelation support at threshold {threshold} holds "
                         f"{np.count_nonzero(support)} voxel(s): no object fits", path=source,
                         field="phasing.initial_support_threshold", fix="lower it (0.01 .. 0.2)")
    return support


MIN_FIRST_SUPPORT = 8   # voxels (a shrink-wrap's support below this has collapsed: spibatch.phasing.support)


def independent_amplitudes(measurement: Measurement) -> int:
    """How many measured amplitudes are independent: every measured voxel of the full spectrum, or (for a
    real density, whose intensity is centrosymmetric) one of each Friedel pair (q, -q)."""
    measured = int(np.count_nonzero(measurement.measured_full()))
    return (measured + 1) // 2 if measurement.real else measured


def initial_support(measurement: Measurement, threshold: float, *, source: str | None = None) -> np.ndarray:
    """The first support of every start (:func:`autocorrelation_support`), checked against the data.

    Phase retrieval solves for the density inside the support: one unknown per voxel for a real
    density, two (real and imaginary part) for a complex one.  It is determined only when there are
    more independent measured amplitudes than unknowns (an oversampling ratio above 1 in Miao's
    sense, counting each Friedel pair once); with fewer, many densities fit the data equally and
    the starts return noise.  So an intensity that measures too few voxels for its own first support
    is refused here, before any start runs, with one InputError.
    """
    support = autocorrelation_support(measurement, threshold, source=source)
    unknowns = int(np.count_nonzero(support)) * (1 if measurement.real else 2)
    known = independent_amplitudes(measurement)
    if known <= unknowns:
        raise InputError(f"only {known} independent measured amplitudes for the {unknowns} unknowns of the first "
                         f"support ({'real' if measurement.real else 'complex'} density): phase retrieval needs more "
                         "measurements than unknowns", path=source, field="phasing.intensity",
                         fix="give an intensity measured over more of reciprocal space (a larger detector, more "
                         "frames), or raise phasing.initial_support_threshold for a smaller first support")
    return support


def shell_radius(n: int) -> np.ndarray:
    """(N, N, N) int: the rounded |k| in voxels of every FFT-ordered voxel."""
    k = np.fft.fftfreq(n) * n
    return np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)).astype(int)


def max_measured_shell(measurement: Measurement, fraction: float = 0.5) -> int:
    """The largest shell radius (voxels), at most N // 2, in which at least ``fraction`` of the voxels are
    measured: the data's maximum resolution (the detector edge, not its corners; a box measured to its corners,
    a truth's intensity, has whole shells to N // 2 only: it read "data reach shell 38" of a 45^3 box)."""
    n = measurement.n
    radius = shell_radius(n)
    measured = measurement.measured_full()
    total = np.bincount(radius.ravel(), minlength=n)
    hit = np.bincount(radius.ravel(), measured.ravel(), minlength=n)
    ok = np.flatnonzero((total > 0) & (hit >= fraction * np.maximum(total, 1)))
    return min(int(ok.max()), n // 2) if ok.size else 0


def spectrum_weights(n: int, k: int, real: bool) -> np.ndarray:
    """(K,) float32 along the amplitude's last axis: how many voxels of the full spectrum each stands for -- 2
    for voxels 1 .. K-2 (K-1 too for an odd N) of a half spectrum, whose mirror is not stored, else 1."""
    weight = np.ones(k, np.float32)
    if real:
        weight[1:k - (1 if n % 2 == 0 else 0)] = 2
    return weight


def free_error(xp, magnitude, amplitude, free, weight) -> float:
    """sqrt(sum_free w (|F| - A)^2 / sum_free w A^2) -- the relative error of the spectrum magnitudes
    ``magnitude`` against the amplitudes ``amplitude`` on the ``free`` voxels (arrays of the amplitude's shape,
    ``weight`` :func:`spectrum_weights`; numpy or the device's ``xp``); NaN when they hold no amplitude."""
    diff = xp.where(free, magnitude - amplitude, 0)
    err = float(xp.sum(diff * weight * diff))
    norm = float(xp.sum(xp.where(free, amplitude, 0) ** 2 * weight))
    return float(np.sqrt(err / norm)) if norm > 0 else float("nan")
