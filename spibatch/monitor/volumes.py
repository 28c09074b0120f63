"""Three orthogonal central slices of a 3-D volume, reduced on the server so volumes never travel whole.

Only the three central planes are read from the HDF5 dataset (h5py reads the
chunks that cross them), thinned to at most MAX_EDGE points a side, and
returned as plain lists ready for a Plotly heatmap: ``z[row][column]`` with
rows along the second axis named in the title, so the picture has the first
axis horizontal.
"""

from __future__ import annotations

import math

import numpy as np

MAX_EDGE = 160            # points per side sent to the browser (strided beyond that)
LOG_DYNAMIC_RANGE = 6.0   # at most this many decades below the maximum on the log scale (else: 1st percentile)


def _stride(edge: int) -> int:
    return max(1, math.ceil(edge / MAX_EDGE))


WHOLE_READ_BYTES = 64 << 20   # a contiguous (unchunked) dataset up to this size is read in one piece


def _planes(ds, lo: int = 0, hi: int | None = None):
    """The three central planes of ``ds`` (an h5py dataset or array, (N, N, N)) within [lo, hi) per axis.

    An unchunked dataset of at most WHOLE_READ_BYTES is read whole first: its last-axis plane is one value of
    every row, which h5py reads as N^2 small reads -- each a Python call when the file was opened through a
    file object, as the monitor opens them (14 ms against 1 ms a 91^3 volume)."""
    if getattr(ds, "chunks", False) is None and ds.nbytes <= WHOLE_READ_BYTES:
        ds = ds[()]
    shape = ds.shape[-3:]
    squeeze = (0,) if len(ds.shape) == 4 else ()   # Dragonfly's intens is (1, N, N, N)
    c = [s // 2 for s in shape]
    hi = [s if hi is None else hi for s in shape]
    sl = [slice(lo, h) for h in hi]
    planes = (np.asarray(ds[squeeze + (sl[0], sl[1], c[2])], float),    # z = centre: (x, y)
              np.asarray(ds[squeeze + (sl[0], c[1], sl[2])], float),    # y = centre: (x, z)
              np.asarray(ds[squeeze + (c[0], sl[1], sl[2])], float))    # x = centre: (y, z)
    return planes, shape


def _axis(count: int, first: int, centre: int, step: int, unit_scale: float | None) -> list[float]:
    idx = first + np.arange(count) * step - centre
    return (np.round(idx * unit_scale, 5) if unit_scale else idx).tolist()


def intensity_slices(ds, voxel_size_per_m: float | None) -> dict:
    """Central slices q_z = 0, q_y = 0, q_x = 0 of an intensity, as log10 (voxels <= 0, not measured, as None).

    Axes in 1/nm (|q| = 2 sin(theta) / wavelength) when the voxel size is known, else in voxels.
    ``zmin``/``zmax``: one colour range for all three, from the 1st percentile (at most
    LOG_DYNAMIC_RANGE decades below the maximum) to the maximum.
    """
    planes, shape = _planes(ds)
    n = shape[0]
    step = _stride(n)
    scale = voxel_size_per_m * 1e-9 if voxel_size_per_m else None
    unit = "1/nm" if scale else "voxels"
    names = (("q_x", "q_y", "q_z = 0"), ("q_x", "q_z", "q_y = 0"), ("q_y", "q_z", "q_x = 0"))
    out, top = [], -np.inf
    for plane, (h, v, title) in zip(planes, names):
        plane = plane[::step, ::step]
        with np.errstate(divide="ignore", invalid="ignore"):
            logged = np.where(plane > 0, np.log10(np.where(plane > 0, plane, 1.0)), np.nan)
        if np.isfinite(logged).any():
            top = max(top, float(np.nanmax(logged)))
        out.append({"title": title, "x_label": f"{h} ({unit})", "y_label": f"{v} ({unit})",
                    "x": _axis(plane.shape[0], 0, n // 2, step, scale), "y": _axis(plane.shape[1], 0, n // 2, step, scale),
                    "z": np.round(logged.T, 3)})
    top = top if np.isfinite(top) else 0.0
    finite = np.concatenate([np.asarray(s["z"], float)[np.isfinite(np.asarray(s["z"], float))] for s in out])
    bottom = max(top - LOG_DYNAMIC_RANGE, float(np.percentile(finite, 1))) if finite.size else top - 1.0
    return {"slices": out, "zmin": min(bottom, top - 0.5), "zmax": top, "edge": n, "stride": step,
            "colorbar": "log10 photons/voxel"}


def density_slices(density, support, voxel_size_m: float | None, margin: int = 4) -> dict:
    """Central slices x, y, z = centre of a density and its support, cropped to the support's extent
    (+ ``margin`` voxels) so the particle fills the picture.  Axes in nm when the voxel size is known."""
    n = density.shape[-1]
    c = n // 2
    half = c
    if support is not None:
        sup_planes, _ = _planes(support)
        pts = [np.argwhere(p > 0.5) for p in sup_planes]
        offsets = [np.abs(p - c).max() for p in pts if p.size]
        if offsets:
            half = min(c, int(max(offsets)) + margin)
    lo, hi = c - half, min(c + half + 1, n)
    planes, _ = _planes(density, lo, hi)
    sups = _planes(support, lo, hi)[0] if support is not None else (None, None, None)
    step = _stride(hi - lo)
    scale = voxel_size_m * 1e9 if voxel_size_m else None
    unit = "nm" if scale else "voxels"
    names = (("x", "y", "z = centre"), ("x", "z", "y = centre"), ("y", "z", "x = centre"))
    out, top, bottom = [], 0.0, 0.0
    for plane, sup, (h, v, title) in zip(planes, sups, names):
        plane = plane[::step, ::step]
        top, bottom = max(top, float(np.max(plane))), min(bottom, float(np.min(plane)))
        item = {"title": title, "x_label": f"{h} ({unit})", "y_label": f"{v} ({unit})",
                "x": _axis(plane.shape[0], lo, c, step, scale), "y": _axis(plane.shape[1], lo, c, step, scale),
                "z": _round(plane.T)}
        if sup is not None:
            item["support"] = np.round(sup[::step, ::step].T, 2)
        out.append(item)
    return {"slices": out, "zmin": bottom, "zmax": top or 1.0, "edge": n, "shown": hi - lo, "stride": step,
            "colorbar": "density (arbitrary units)"}


def _round(a: np.ndarray, digits: int = 4) -> np.ndarray:
    """Round to ``digits`` significant digits of the array's largest magnitude (keeps JSON short)."""
    peak = float(np.max(np.abs(a))) if a.size else 0.0
    if peak == 0 or not np.isfinite(peak):
        return a
    return np.round(a, max(0, digits - 1 - int(math.floor(math.log10(peak)))))
