"""Compare a reconstruction with a truth: Fourier shell correlation and shell correlation.

Two measures, for two kinds of comparison:

* :func:`fsc` — the Fourier shell correlation of two 3-D volumes (densities,
  or any volumes) on the same cubic grid, per one-voxel shell of the
  Fourier transform, with the resolution where it drops below 0.5 / 0.143.
* :func:`shell_correlation` — the Pearson correlation of two 3-D
  *intensities* (already in reciprocal space, centre at ``M // 2``, as the phasing's)
  over the voxels between two radii, after removing each one's radial
  average: the measure the reference data sets quote.  Orientation search
  for it lives in :mod:`spibatch.align`.

Radii are in voxels of the grid; spatial frequencies in 1/m when a voxel
size in metres is given, else in 1/voxel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from spibatch.errors import InputError

THRESHOLDS = (0.5, 0.143)  # the classic criterion; the 'gold standard' one (Rosenthal & Henderson 2003)


@dataclass(frozen=True)
class FSCResult:
    """Fourier shell correlation of two ``(N, N, N)`` volumes, shells 0 .. N // 2.

    Attributes
    ----------
    radius : (S,) float64, shell radius in Fourier voxels (shell k holds the
        frequencies with ``round(|k|) == k``)
    frequency : (S,) float64, spatial frequency ``radius / (N * voxel_size)``
        in 1/m, or ``radius / N`` in 1/voxel when ``voxel_size`` is None
    fsc : (S,) float64, correlation per shell in [-1, 1] (NaN where a shell
        has no power in either volume)
    num_voxels : (S,) int64, Fourier voxels in each shell (full space)
    size : int, the edge N of the volumes
    voxel_size : float or None, real-space voxel size in m
    """

    radius: np.ndarray
    frequency: np.ndarray
    fsc: np.ndarray
    num_voxels: np.ndarray
    size: int
    voxel_size: float | None = None

    @property
    def unit(self) -> str:
        """Length unit of :meth:`resolution`: ``"m"`` or ``"voxel"``."""
        return "m" if self.voxel_size is not None else "voxel"

    def crossing_radius(self, threshold: float) -> float | None:
        """Fourier radius (voxels) where the curve first drops below ``threshold``.

        Searched from shell 1 on (the DC shell says nothing about resolution),
        skipping empty (NaN) shells; linear interpolation between the last
        shell at or above the threshold and the first below it.  None when it
        never drops below within shells 1 .. N // 2 (the resolution is then at
        least the last shell's, N / (N // 2) voxels: Nyquist's 2 for even N).
        """
        shells = [i for i in range(len(self.fsc)) if np.isfinite(self.fsc[i])]
        for prev, i in zip([None] + shells, shells):
            if i == 0 or self.fsc[i] >= threshold:
                continue
            if prev is None:
                return float(self.radius[i])
            f0, f1 = self.fsc[prev], self.fsc[i]
            t = (f0 - threshold) / (f0 - f1)
            return float(self.radius[prev] + t * (self.radius[i] - self.radius[prev]))
        return None

    def frequency_at(self, threshold: float) -> float | None:
        """Spatial frequency (1/m, or 1/voxel without voxel size) of the crossing; None if none."""
        r = self.crossing_radius(threshold)
        if r is None:
            return None
        scale = self.size * (self.voxel_size if self.voxel_size is not None else 1.0)
        return r / scale

    def resolution(self, threshold: float = 0.143) -> float | None:
        """Resolution (m, or voxels without voxel size) = 1 / :meth:`frequency_at`.

        None when the curve never drops below ``threshold`` (the resolution is
        then at least the last shell's: 2 voxels, Nyquist, for even N; N / (N // 2) for odd N).
        """
        f = self.frequency_at(threshold)
        if f is None:
            return None
        return float("inf") if f == 0 else 1.0 / f


def _check_volume(name: str, v) -> np.ndarray:
    """``v`` as an array, or InputError naming ``name`` (the volume's file, or 'a' / 'b')."""
    v = np.asarray(v)
    if v.ndim != 3:
        raise InputError(f"expected a 3-D volume, found shape {v.shape}", path=name, field="shape",
                         fix="pass a (N, N, N) array (squeeze leading axes, e.g. Dragonfly's intens[0])")
    if not np.all(np.isfinite(v)):
        raise InputError(f"{int(np.size(v) - np.isfinite(v).sum())} non-finite values", path=name, field="values",
                         fix="replace NaN/inf (unmeasured voxels) with 0 or mask them before comparing")
    return v


def _frequency_radius(n: int, half: bool) -> np.ndarray:
    """|k| in Fourier voxels on the (n, n, n) grid, or its rfftn half (n, n, n // 2 + 1)."""
    k = np.fft.fftfreq(n) * n
    k_last = np.fft.rfftfreq(n) * n if half else k
    return np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k_last[None, None, :] ** 2)


def fsc(a, b, voxel_size: float | None = None, names: tuple[str, str] = ("a", "b")) -> FSCResult:
    """Fourier shell correlation of two volumes ``a``, ``b`` of the same cubic shape.

    Parameters
    ----------
    a, b : (N, N, N) real or complex arrays (densities, or any volumes on one grid)
    voxel_size : real-space voxel edge in m, or None to report frequencies in 1/voxel
    names : what error lines call ``a`` and ``b`` (their files, e.g. ``(str(first), str(second))``)

    Returns
    -------
    FSCResult with shells 0 .. N // 2 (one Fourier voxel wide, by ``round(|k|)``, |k| the
    distance from the centre of the fftshifted transform; corners beyond N // 2 are left out).
    ``FSC = sum Re(A conj B) / sqrt(sum |A|^2 sum |B|^2)`` over each shell.
    Real inputs use ``rfftn`` and weight the non-redundant half-space twice.
    """
    a, b = _check_volume(names[0], a), _check_volume(names[1], b)
    if a.shape != b.shape:
        raise InputError(f"shape {a.shape}, but {names[1]} is {b.shape}", path=names[0], field="shape",
                         fix=f"resample or crop {names[0]} and {names[1]} to one grid before the FSC")
    n = a.shape[0]
    if a.shape != (n, n, n):
        raise InputError(f"expected a cubic volume, found shape {a.shape}", path=names[0], field="shape",
                         fix="pad or crop to (N, N, N)")
    if voxel_size is not None and not (np.isfinite(voxel_size) and voxel_size > 0):
        raise InputError(f"voxel_size must be a positive length in m, got {voxel_size!r}",
                         field="voxel_size", fix="pass the real-space voxel edge in metres, or None")

    real = not (np.iscomplexobj(a) or np.iscomplexobj(b))
    if real:
        fa, fb = np.fft.rfftn(a), np.fft.rfftn(b)
        # Half-space: columns with 0 < k_last < n/2 stand for themselves and their Friedel mate.
        weight = np.full(n // 2 + 1, 2.0)
        weight[0] = 1.0
        if n % 2 == 0:
            weight[-1] = 1.0
        weight = np.broadcast_to(weight, fa.shape)
    else:
        fa, fb = np.fft.fftn(a), np.fft.fftn(b)
        weight = np.ones(fa.shape)
    shell = np.rint(_frequency_radius(n, half=real)).astype(np.int64).ravel()
    nshell = n // 2 + 1
    keep = shell < nshell
    shell, w = shell[keep], weight.ravel()[keep]
    fa, fb = fa.ravel()[keep], fb.ravel()[keep]

    cross = np.bincount(shell, weights=w * (fa * fb.conj()).real, minlength=nshell)
    pa = np.bincount(shell, weights=w * (fa.real ** 2 + fa.imag ** 2), minlength=nshell)
    pb = np.bincount(shell, weights=w * (fb.real ** 2 + fb.imag ** 2), minlength=nshell)
    count = np.rint(np.bincount(shell, weights=w, minlength=nshell)).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.clip(cross / np.sqrt(pa * pb), -1.0, 1.0)
    radius = np.arange(nshell, dtype=np.float64)
    frequency = radius / (n * (voxel_size if voxel_size is not None else 1.0))
    return FSCResult(radius, frequency, value, count, n, voxel_size)


def _display(result: FSCResult) -> tuple[float, str]:
    """(metres per display unit, unit name): Angstrom when the voxel size is known, else voxels."""
    return (1e-10, "A") if result.unit == "m" else (1.0, "voxel")


def format_table(result: FSCResult) -> str:
    """Plain-text table: shell, frequency, resolution, voxels, FSC; then the 0.5 / 0.143 resolutions.

    Lengths are shown in Angstrom when the voxel size is known, in voxels otherwise.
    """
    scale, unit = _display(result)
    lines = [f"{'shell':>5}  {'freq (1/' + unit + ')':>14}  {'resolution (' + unit + ')':>16}"
             f"  {'voxels':>8}  {'FSC':>7}"]
    for r, f, c, v in zip(result.radius, result.frequency, result.fsc, result.num_voxels):
        res = f"{1.0 / f / scale:16.4g}" if f > 0 else f"{'inf':>16}"
        lines.append(f"{int(r):5d}  {f * scale:14.4g}  {res}  {int(v):8d}  {c:7.4f}")
    finite = result.radius[np.isfinite(result.fsc) & (result.radius > 0)]
    last = float(finite.max()) if finite.size else float(result.size // 2)
    edge = result.size * (result.voxel_size or 1.0) / last / scale     # the finest shell compared
    if 2 * last == result.size:      # even N: shell N / 2 is the Nyquist frequency, 2 voxels
        limit = "the Nyquist limit"
    elif last >= result.size // 2:   # odd N: shell (N - 1) / 2 stops short of Nyquist (23^3: 2.09 voxels, not 2)
        limit = f"shell {int(last)}'s, the last full shell"
    else:
        limit = f"shell {int(last)}'s, the last compared"
    for t in THRESHOLDS:
        res = result.resolution(t)
        text = f"never below {t} (at least {edge:.4g} {unit}, {limit})" if res is None else f"{res / scale:.4g} {unit}"
        lines.append(f"resolution at FSC = {t}: {text}")
    return "\n".join(lines)


def plot_fsc(result: FSCResult, path: str | os.PathLike, title: str | None = None) -> None:
    """Write the FSC curve with the 0.5 and 0.143 lines and resolutions to a PNG at ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spibatch.io.atomic import atomic_path

    scale, unit = _display(result)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(result.frequency * scale, result.fsc, "o-", ms=3, color="C0", label="FSC")
    for t, color in zip(THRESHOLDS, ("C1", "C2")):
        ax.axhline(t, color=color, lw=1, ls="--")
        f, res = result.frequency_at(t), result.resolution(t)
        label = f"{t}: never below" if res is None else f"{t}: {res / scale:.3g} {unit}"
        if f is not None:
            ax.axvline(f * scale, color=color, lw=0.8, ls=":")
        ax.plot([], [], color=color, ls="--", label=label)
    ax.set_xlabel(f"spatial frequency (1/{unit})")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.2, 1.05)
    ax.set_xlim(0, float(result.frequency[-1] * scale))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# ---- shell correlation of intensities -------------------------------------------------------

def crop_to_common(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop the larger of two cubic volumes about its centre ``M // 2`` to the smaller's shape.

    E.g. Dragonfly's 93^3 model (centre 46) against a 91^3 truth (centre 45):
    the model loses one plane on each side, and both centres land on index 45.
    """
    def crop(v: np.ndarray, m: int) -> np.ndarray:
        o = v.shape[0] // 2 - m // 2
        return v[o:o + m, o:o + m, o:o + m]

    m = min(x.shape[0], y.shape[0])
    return crop(x, m), crop(y, m)


def radial_index(size: int) -> np.ndarray:
    """(size, size, size) float64 distance of each voxel from the centre ``size // 2``."""
    c = np.arange(size, dtype=np.float64) - size // 2
    return np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)


def radial_profile(volume: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """(K,) float64 mean of ``volume`` over each one-voxel shell ``round(r)`` (valid voxels only; 0 if none)."""
    shell = np.rint(radial_index(volume.shape[0])).astype(np.int64).ravel()
    w = np.ones(shell.size) if valid is None else valid.astype(np.float64).ravel()
    vals = np.where(w > 0, volume.ravel(), 0.0)
    total = np.bincount(shell, weights=vals * w)
    count = np.bincount(shell, weights=w)
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def remove_radial_average(volume: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """``volume`` minus its mean over each one-voxel shell ``round(r)`` (mean over ``valid`` voxels only)."""
    shell = np.rint(radial_index(volume.shape[0])).astype(np.int64)
    return volume - radial_profile(volume, valid)[shell]


def _check_cube(name: str, v) -> np.ndarray:
    v = np.asarray(v)
    if v.ndim == 4 and v.shape[0] == 1:  # Dragonfly's intens (1, M, M, M)
        v = v[0]
    if v.ndim != 3 or len(set(v.shape)) != 1:
        raise InputError(f"expected a cubic 3-D intensity (M, M, M), found shape {v.shape}", field=name,
                         fix="pass one model volume, e.g. intens[0] of a Dragonfly output")
    if np.iscomplexobj(v):
        raise InputError("intensity is complex", field=name, fix="pass |F|^2, a real volume")
    return v.astype(np.float64, copy=False)


def prepare_shells(intensity, reference, r_min: float, r_max: float, *,
                   remove_radial_average_: bool = True, mask=None):
    """Shared front end of :func:`shell_correlation` and :func:`spibatch.align.align_intensity`.

    Returns ``(model, ref, select, valid)``: both volumes cropped to the
    common shape (float64, radial average removed when asked, over valid
    voxels), the boolean selection of voxels with ``r_min < r < r_max`` that
    are valid in both, and the validity mask itself (None: all valid).
    See :func:`shell_correlation` for ``mask``.
    """
    model, ref = _check_cube("intensity", intensity), _check_cube("reference", reference)
    if not (0 <= r_min < r_max):
        raise InputError(f"need 0 <= r_min < r_max, got r_min={r_min}, r_max={r_max}",
                         field="r_min, r_max", fix="give the shell range in voxels, e.g. 6 < r < 31")
    model_c, ref_c = crop_to_common(model, ref)
    if isinstance(mask, str):
        if mask != "valid":
            raise InputError(f"unknown mask {mask!r}", field="mask",
                             fix="use None, 'valid' or a boolean array on the intensity's grid")
        valid = np.isfinite(model_c) & np.isfinite(ref_c) & (model_c >= 0) & (ref_c >= 0)
    elif mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != model.shape:
            raise InputError(f"mask shape {mask.shape} differs from intensity {model.shape}",
                             field="mask", fix="pass a boolean mask on the intensity's grid, or 'valid'")
        valid = crop_to_common(mask, ref)[0] & np.isfinite(model_c) & np.isfinite(ref_c)
    else:
        for name, v in (("intensity", model_c), ("reference", ref_c)):
            if not np.all(np.isfinite(v)):
                raise InputError("non-finite voxels (unmeasured?)", field=name,
                                 fix="pass mask='valid' to leave NaN/negative voxels out, or fill them")
        valid = None
    r = radial_index(model_c.shape[0])
    select = (r > r_min) & (r < r_max)
    if valid is not None:
        select &= valid
    if select.sum() < 2:
        raise InputError("fewer than 2 voxels in the shell range", field="r_min, r_max",
                         fix="widen the shell range or check the mask")
    if remove_radial_average_:
        model_c = remove_radial_average(np.nan_to_num(model_c), valid)
        ref_c = remove_radial_average(np.nan_to_num(ref_c), valid)
    return model_c, ref_c, select, valid


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two 1-D float arrays; NaN when either is constant."""
    x = x - x.mean()
    y = y - y.mean()
    d = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / d) if d > 0 else float("nan")


def shell_correlation(intensity, reference, r_min: float, r_max: float,
                      remove_radial_average: bool = True, mask=None) -> float:
    """Pearson correlation of two intensities over the voxels with ``r_min < r < r_max``.

    Parameters
    ----------
    intensity, reference : (M, M, M) and (L, L, L) float, centre at ``M // 2``,
        radii in voxels; a leading axis of 1 (Dragonfly's ``intens``) is dropped.
        When sizes differ the larger is cropped about its centre (see
        :func:`crop_to_common`), so a 93^3 model compares with a 91^3 truth.
    r_min, r_max : shell range in voxels (strict inequalities)
    remove_radial_average : subtract each volume's mean over every one-voxel
        shell first, so that the radial fall-off does not dominate
    mask : None (all voxels; non-finite raises InputError), ``"valid"`` (leave
        out voxels that are NaN/inf/negative in either volume), or a boolean
        array on ``intensity``'s grid (True = use)

    No orientation search: see :func:`spibatch.align.align_intensity`.
    """
    model, ref, select, _ = prepare_shells(intensity, reference, r_min, r_max,
                                        remove_radial_average_=remove_radial_average, mask=mask)
    return pearson(model[select], ref[select])


def shell_correlation_curve(intensity: np.ndarray, reference: np.ndarray, voxel_size: float | None = None,
                            measured_only: bool = True) -> FSCResult:
    """Pearson correlation of two centred (M, M, M) intensities in every one-voxel shell of |q| (radius
    ``round(|r - M // 2|)``), as an :class:`FSCResult` (``fsc`` holds the per-shell correlation, so the
    0.5 / 0.143 crossings read as resolutions).  ``voxel_size``: the real-space voxel ``1 / (M dq)`` in m,
    when the Fourier voxel ``dq`` is known.  With ``measured_only`` voxels that are 0 in either volume (not
    measured: a beam-stop hole, the corners beyond a detector) are left out."""
    a, b = np.asarray(intensity, np.float64), np.asarray(reference, np.float64)
    m = a.shape[0]
    shell = np.rint(radial_index(m)).astype(np.int64).ravel()
    keep = ((a != 0) & (b != 0)).ravel() if measured_only else np.ones(shell.size, bool)
    radius = np.arange(m // 2 + 1)
    values = np.full(radius.size, np.nan)
    counts = np.zeros(radius.size, np.int64)
    av, bv = a.ravel(), b.ravel()
    for k in radius:
        sel = keep & (shell == k)
        counts[k] = int(sel.sum())
        if counts[k] > 2:
            values[k] = pearson(av[sel], bv[sel])
    frequency = radius / (m * voxel_size) if voxel_size else radius / m
    return FSCResult(radius=radius.astype(np.float64), frequency=frequency, fsc=values, num_voxels=counts, size=m,
                     voxel_size=voxel_size)
