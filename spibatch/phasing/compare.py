"""A phased density against a true one: both on one grid, aligned (translation, twin), FSC.

The truth may be smaller than the reconstruction's box (our simulator's ``truth.h5``
keeps the particle's cube, Dragonfly's ``densityMap.bin`` too): it is padded,
centred, to the reconstruction's edge.  A truth on another voxel size is
resampled (cubic spline) onto the reconstruction's voxel first.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from spibatch.errors import InputError
from spibatch.phasing.measurement import pad_centre


def resample(volume: np.ndarray, factor: float) -> np.ndarray:
    """A centred cube resampled by ``factor`` (new voxels per old voxel; cubic spline), kept centred and odd."""
    from scipy.ndimage import affine_transform

    n = volume.shape[0]
    m = int(np.ceil(n * factor / 2)) * 2 + 1
    # output index o maps to input index c_in + (o - c_out) / factor
    offset = n // 2 - (m // 2) / factor
    return affine_transform(volume, np.full(3, 1.0 / factor), offset=offset, output_shape=(m,) * 3, order=3,
                            mode="constant", cval=0.0)


def load_truth(path: Path, voxel_size_m: float | None = None) -> tuple[np.ndarray, float | None]:
    """(true density (L, L, L) float64, its voxel in m or None) from truth.h5, an MRC or a Dragonfly .bin;
    ``voxel_size_m``: the voxel when the file does not record one."""
    from spibatch.io.mrc import read_mrc
    from spibatch.io.results import MRC_SUFFIXES, is_hdf5, read_result, read_volume

    path = Path(path)
    if path.suffix.lower() in MRC_SUFFIXES:
        volume, voxel_a = read_mrc(path)
        return np.asarray(volume, np.float64), (voxel_a * 1e-10 if voxel_a else voxel_size_m)
    volume = np.asarray(read_volume(path, "density" if is_hdf5(path) else None), np.float64)
    voxel = None
    if is_hdf5(path):
        attrs = read_result(path, attrs_only=True)[1]
        voxel = attrs.get("density_voxel_size_m") or attrs.get("voxel_size_m")
    voxel = voxel or voxel_size_m
    return volume, (float(voxel) if voxel else None)


def density_origin(path: str | Path) -> tuple[float, float, float] | None:
    """Where a density file's voxel (0, 0, 0) lies, in Angstrom: an MRC's header origin, or the
    ``density_origin_m`` attribute of our truth.h5; None when the file does not say (or says 0, 0, 0)."""
    from spibatch.io.results import MRC_SUFFIXES, is_hdf5, read_result

    path = Path(path)
    try:
        if path.suffix.lower() in MRC_SUFFIXES:
            import mrcfile

            with mrcfile.open(path, header_only=True, permissive=True) as mrc:
                origin = tuple(float(mrc.header.origin[k]) for k in ("x", "y", "z"))
        elif is_hdf5(path):
            value = read_result(path, attrs_only=True)[1].get("density_origin_m")
            origin = None if value is None else tuple(float(v) * 1e10 for v in np.ravel(value))
        else:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if origin is None or len(origin) != 3 or not np.isfinite(origin).all() or not any(origin):
        return None
    return origin


def compare_with_truth(density: np.ndarray, voxel_m: float | None, truth: np.ndarray, truth_voxel_m: float | None,
                       *, truth_path: str | None = None) -> dict:
    """FSC of the aligned reconstruction with the truth; returns a JSON-able summary (and the curve).

    The truth is resampled onto the reconstruction's voxel when both are known and differ, then both are put
    in the larger of their boxes (centred, zeros around) and the reconstruction is aligned onto the truth
    (sub-voxel translation and the inversion twin).  The shells (``radius``, ``frequency``, ``fsc``: (S,) in
    Fourier voxels of the larger box, 1/m, correlation) stop at the last shell both volumes sample:
    ``shells_end_at_truth_nyquist`` is true where a coarser truth's Nyquist frequency ended them before the box's."""
    from spibatch.phasing.alignment import align
    from spibatch.validate import fsc

    truth, density = _unit_peak(truth, truth_path or "the truth"), _unit_peak(density, "the density")
    resampled = False
    if voxel_m and truth_voxel_m and abs(truth_voxel_m / voxel_m - 1) > 1e-3:
        truth = resample(truth, truth_voxel_m / voxel_m)
        resampled = True
    n = max(density.shape[0], truth.shape[0])   # both in the larger box: a density is zero outside its own
    reference = pad_centre(np.asarray(truth, np.float64), n)
    aligned, how = align(pad_centre(np.asarray(density, np.float64), n), reference)
    result = fsc(aligned, reference, voxel_size=voxel_m or truth_voxel_m)
    cut = bool(resampled and truth_voxel_m > voxel_m)
    if cut:     # a coarser truth says nothing beyond its own Nyquist frequency (interpolated onto the finer voxel
        from dataclasses import replace     # it read 3.05 A against 4 A): the shells stop at the last it samples

        inside = result.radius <= n * voxel_m / (2 * truth_voxel_m) + 1e-9
        result = replace(result, radius=result.radius[inside], frequency=result.frequency[inside],
                         fsc=result.fsc[inside], num_voxels=result.num_voxels[inside])
    half = result.resolution(0.5)
    gold = result.resolution(0.143)
    return {"cc": how.cc, "truth_resampled": resampled, "truth_voxel_size_m": truth_voxel_m, "inverted": how.inverted,
            "shells_end_at_truth_nyquist": cut, "shift_voxels": [round(float(s), 3) for s in how.shift],
            "fsc_0.5_radius": result.crossing_radius(0.5), "fsc_0.143_radius": result.crossing_radius(0.143),
            "resolution_0.5_m": half, "resolution_0.143_m": gold, "voxel_size_m": result.voxel_size,
            "radius": result.radius.tolist(), "frequency": result.frequency.tolist(), "fsc": [None if not np.isfinite(v) else float(v) for v in result.fsc],
            "_result": result, "_aligned": aligned}


def _unit_peak(volume, name: str) -> np.ndarray:
    """``volume`` (float64) divided by its largest magnitude -- the FSC and the CC do not depend on the scale, and
    a truth in huge units (1e300) overflowed the transforms' sums into an FSC of 0; InputError when it is zero
    everywhere or not finite."""
    volume = np.asarray(volume, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        peak = float(np.max(np.abs(volume))) if volume.size else 0.0
    if not np.isfinite(peak) or peak == 0.0:
        raise InputError("zero everywhere" if peak == 0.0 else "holds non-finite values", path=name,
                         field="density", fix="give a density with finite values that are not all zero")
    return volume / peak


def write_comparison(summary: dict, json_path: Path, png_path: Path, title: str) -> dict[str, Path]:
    """The summary as JSON at ``json_path`` (without the private ``_`` keys) and its FSC plot at ``png_path``."""
    from spibatch.io.atomic import write_text
    from spibatch.validate import plot_fsc

    plot_fsc(summary["_result"], png_path, title=title)
    from spibatch.monitor.values import clean   # (non-finite floats as None: JSON has no Infinity or NaN)

    public = clean({k: v for k, v in summary.items() if not k.startswith("_")})
    write_text(Path(json_path), json.dumps(public, indent=1, allow_nan=False) + "\n")
    return {"fsc_vs_truth": Path(json_path), "fsc_plot": Path(png_path)}
