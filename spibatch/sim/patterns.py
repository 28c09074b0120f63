"""Sparse Poisson diffraction patterns of a 3-D intensity in uniformly random orientations.

Rotation convention: frame ``k`` has the unit quaternion ``(w, x, y, z)`` (scalar first,
``w >= 0``) whose matrix ``R_k`` (scipy's ``Rotation.as_matrix``, active, right-handed)
takes the lab q of pixel ``p`` to model coordinates: the frame samples ``I(R_k q_p)``,
i.e. ``intensity[c + (R_k q_p)]`` with the axis order of :mod:`spibatch.sim.scattering`.

Expected photons in pixel ``p`` of frame ``k``: ``scale * fluence_k * corr_p * I(R_k q_p)``
with ``I`` interpolated trilinearly, ``fluence_k`` gamma distributed (mean 1, relative rms
``fluence_jitter``).  Excluded pixels (mask 2) get no photons.  Counts are drawn as a
Poisson total per frame, spread over the pixels multinomially with probabilities
proportional to the rates: the same distribution as independent Poisson counts per
pixel, at a cost that scales with photons instead of pixels.

Memory: frames are sliced ``SLICE_PIXELS`` pixels at a time and written ``chunk_frames``
at a time as sparse Photons; nothing holds a dense frames x pixels array beyond one
slice block.  Per-frame metadata (quaternions, fluence, counts: 48 bytes per frame) is
returned whole.

Speed (benchmarks/simulate_100k.py): one thread; numpy's gather (``take``) holds the GIL,
so slicing in threads gained nothing (measured).  The packed-corner gather is ~8x faster
than ``scipy.ndimage.map_coordinates(order=1)``.
"""

from __future__ import annotations

import numpy as np

from spibatch.detector import MASK_EXCLUDED, Detector
from spibatch.photons import Photons

SLICE_PIXELS = 1 << 16   # pixels interpolated per block (measured fastest: temporaries stay in cache)
SPHERE_DIRECTIONS = 4000   # directions of the shell averages in mean_photons_scale


class Slicer:
    """Trilinear samples of an (M, M, M) volume at rotated detector q-vectors, float32.

    The volume is zero-padded by one voxel and stored with the 8 corners of each cell
    side by side ((M+2)^3, 8) float32, 32 (M+2)^3 bytes: 196 MB for M = 181), so a sample
    costs one 32-byte gather (measured 2x faster than 8 gathers from the plain volume).
    ``weights`` (num_pix,) multiplies each pixel (e.g. corr x scale); only pixels with
    ``mask < 2`` are sampled.
    """

    def __init__(self, volume: np.ndarray, detector: Detector, weights: np.ndarray | None = None):
        m = volume.shape[0]
        if volume.shape != (m, m, m) or m % 2 == 0:
            raise ValueError(f"volume must be an odd cube, got shape {volume.shape}")
        self.centre = (m - 1) // 2
        self.size = m
        side = m + 2
        padded = np.zeros((side, side, side), np.float32)
        padded[1:-1, 1:-1, 1:-1] = volume
        flat = padded.ravel()
        self.side = side
        self.corners = np.zeros((flat.size, 8), np.float32)
        for i, offset in enumerate((0, 1, side, side + 1, side * side, side * side + 1,
                                    side * side + side, side * side + side + 1)):
            self.corners[:flat.size - offset, i] = flat[offset:]
        self.pixels = np.flatnonzero(detector.mask != MASK_EXCLUDED)
        self.q = np.ascontiguousarray(detector.q_voxels[self.pixels].T, np.float32)     # (3, P)
        w = np.ones(detector.num_pix) if weights is None else np.asarray(weights, np.float64)
        self.weights = w[self.pixels].astype(np.float32)

    def __call__(self, rotations: np.ndarray) -> np.ndarray:
        """Samples (F, P) float32 for rotation matrices (F, 3, 3): ``weights * volume(R q)``."""
        x = np.asarray(rotations, np.float32) @ self.q                  # (F, 3, P) model voxels
        x += np.float32(self.centre + 1)                                   # + 1: padding
        np.clip(x, 0.0, np.float32(self.size), out=x)
        cell = x.astype(np.int32)                                          # x >= 0: truncation is floor
        frac = cell.astype(np.float32)
        np.subtract(x, frac, out=frac)                                     # (np.modf is 9x slower)
        s = self.side
        base = cell[:, 0] * s
        base += cell[:, 1]
        base *= s
        base += cell[:, 2]                                                 # (F, P) flat cell index
        corners = self.corners.take(base.ravel(), axis=0).T                # (8, F*P) strided view
        fx, fy, fz = (frac[:, a].ravel() for a in range(3))
        along_z = []
        for pair in range(4):                                              # corners (x, y) = 00, 01, 10, 11
            low = corners[2 * pair]
            value = corners[2 * pair + 1] - low
            value *= fz
            value += low
            along_z.append(value)
        y0 = along_z[1] - along_z[0]
        y0 *= fy
        y0 += along_z[0]
        y1 = along_z[3] - along_z[2]
        y1 *= fy
        y1 += along_z[2]
        y1 -= y0
        y1 *= fx
        y1 += y0
        out = y1.reshape(len(rotations), -1)
        out *= self.weights
        return out


def random_quaternions(num: int, rng: np.random.Generator, piece: int = 65536) -> np.ndarray:
    """(num, 4) float64 uniformly random unit quaternions (w, x, y, z), w >= 0.

    Drawn with scipy's ``Rotation.random`` ``piece`` at a time (bounded temporaries).
    """
    from scipy.spatial.transform import Rotation

    out = np.empty((int(num), 4))
    for start in range(0, int(num), piece):
        count = min(piece, int(num) - start)
        try:
            rot = Rotation.random(count, rng=rng)
        except TypeError:                               # scipy < 1.15
            rot = Rotation.random(count, random_state=rng)
        quat = rot.as_quat()                            # (x, y, z, w)
        out[start:start + count, 0] = quat[:, 3]
        out[start:start + count, 1:] = quat[:, :3]
    out[out[:, 0] < 0] *= -1
    return out


def rotation_matrices(quaternions: np.ndarray) -> np.ndarray:
    """(F, 3, 3) float64 matrices of quaternions (F, 4) (w, x, y, z)."""
    from scipy.spatial.transform import Rotation

    q = np.asarray(quaternions, np.float64)
    return Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix().reshape(-1, 3, 3)


def fluence_factors(num: int, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """(num,) float64 gamma-distributed factors, mean 1, relative rms ``jitter`` (all 1 below 1e-6: a gamma of
    shape 1 / 1e-300^2 overflows)."""
    if jitter < 1e-6:
        return np.ones(num)
    shape = 1.0 / jitter ** 2
    return rng.gamma(shape, 1.0 / shape, size=num)


def sample_counts(rates: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Poisson counts of ``rates`` (F, P): ``(flat indices f * P + p (sorted, unique) int64, counts int64)``.

    A Poisson total per frame, placed multinomially; pixels of rate 0 never get a photon.
    """
    frames, pix = rates.shape
    cum = rates.astype(np.float64).ravel()                               # over the flattened block;
    np.cumsum(cum, out=cum)                                              # 3x faster than cumsum(dtype=)
    ends = cum[pix - 1::pix]
    starts = np.concatenate([[0.0], ends[:-1]])
    totals = np.maximum(ends - starts, 0.0)
    n = rng.poisson(totals)
    frame = np.repeat(np.arange(frames), n)
    target = starts[frame] + rng.random(frame.size) * totals[frame]
    np.minimum(target, np.nextafter(ends, -np.inf)[frame], out=target)   # stay inside the frame
    target.sort()                                                        # sorted keys: faster search,
    flat = np.searchsorted(cum, target, side="right")                    # and flat comes out sorted
    if flat.size == 0:
        return flat.astype(np.int64), flat.astype(np.int64)
    first = np.concatenate([[True], flat[1:] != flat[:-1]])
    where = np.flatnonzero(first)
    counts = np.diff(np.append(where, flat.size))
    return flat[where].astype(np.int64), counts.astype(np.int64)


def sparse_photons(flat: np.ndarray, counts: np.ndarray, num_frames: int, used_pixels: np.ndarray,
                   num_pix: int) -> Photons:
    """Photons of ``num_frames`` frames from sorted flat indices into (frames, len(used_pixels))."""
    width = len(used_pixels)
    frame = flat // width
    pixel = used_pixels[flat % width].astype(np.int32)
    ones = counts == 1
    ones_indptr = np.zeros(num_frames + 1, np.int64)
    np.cumsum(np.bincount(frame[ones], minlength=num_frames), out=ones_indptr[1:])
    multi_indptr = np.zeros(num_frames + 1, np.int64)
    np.cumsum(np.bincount(frame[~ones], minlength=num_frames), out=multi_indptr[1:])
    return Photons(int(num_pix), ones_indptr, pixel[ones], multi_indptr, pixel[~ones],
                   counts[~ones].astype(np.int32))


def simulate_patterns(intensity: np.ndarray, detector: Detector, *, num_patterns: int, scale: float,
                      fluence_jitter: float, seed: int, chunk_frames: int, writer,
                      progress=None) -> dict:
    """Simulate ``num_patterns`` sparse frames and append them to ``writer`` ``chunk_frames`` at a time.

    ``intensity`` (M, M, M) (electrons^2), ``scale`` multiplies ``corr * I`` (photons per
    unit); ``writer.append(Photons)`` receives consecutive blocks.  The same seed gives the
    same frames (rotations and fluence factors do not depend on ``chunk_frames``; the
    Poisson draws do, being taken block by block).  Returns ``quaternions`` (N, 4) float64 (w, x, y, z), ``fluence`` (N,)
    float64, ``photons_per_frame`` (N,) int64 and ``mean_photons`` (float).
    """
    rot_seq, fluence_seq, photon_seq = np.random.SeedSequence(int(seed)).spawn(3)
    quaternions = random_quaternions(int(num_patterns), np.random.default_rng(rot_seq))
    fluence = fluence_factors(int(num_patterns), float(fluence_jitter), np.random.default_rng(fluence_seq))
    photon_rng = np.random.default_rng(photon_seq)
    slicer = Slicer(intensity, detector, detector.corr * float(scale))       # no scaled copy of the volume
    block = max(1, SLICE_PIXELS // max(len(slicer.pixels), 1))
    per_frame = np.zeros(int(num_patterns), np.int64)

    for start in range(0, int(num_patterns), int(chunk_frames)):
        stop = min(start + int(chunk_frames), int(num_patterns))
        flats, counts = [], []
        for a in range(start, stop, block):
            b = min(a + block, stop)
            rates = slicer(rotation_matrices(quaternions[a:b]))
            rates *= fluence[a:b, None].astype(np.float32)
            flat, count = sample_counts(rates, photon_rng)
            flats.append(flat + (a - start) * len(slicer.pixels))
            counts.append(count)
        photons = sparse_photons(np.concatenate(flats), np.concatenate(counts), stop - start,
                                 slicer.pixels, detector.num_pix)
        per_frame[start:stop] = photons.frame_counts()
        writer.append(photons)
        if progress is not None:
            progress.advance(stop - start)
    return {"quaternions": quaternions, "fluence": fluence, "photons_per_frame": per_frame,
            "mean_photons": float(per_frame.mean()) if num_patterns else 0.0}


def shell_average(intensity: np.ndarray, radii: np.ndarray, directions: int = SPHERE_DIRECTIONS) -> np.ndarray:
    """Mean of the trilinear interpolant of ``intensity`` over spheres of ``radii`` (voxels), float64.

    Quadrature over a Fibonacci lattice of ``directions`` points (symmetric I: accurate to
    ~1e-4 relative for the volumes here).
    """
    from scipy.ndimage import map_coordinates

    k = np.arange(directions) + 0.5
    cos_t = 1.0 - 2.0 * k / directions
    phi = np.pi * (1.0 + 5.0 ** 0.5) * k
    sin_t = np.sqrt(1.0 - cos_t ** 2)
    unit = np.stack([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t])     # (3, D)
    c = (intensity.shape[0] - 1) // 2
    out = np.empty(len(radii))
    for i, r in enumerate(np.asarray(radii, np.float64)):
        points = c + r * unit
        out[i] = map_coordinates(intensity, points, order=1, prefilter=False, mode="constant").mean()
    return out


def mean_photons_scale(intensity: np.ndarray, detector: Detector, mean_photons: float) -> float:
    """The ``scale`` that gives ``mean_photons`` photons per frame on average over orientations.

    The orientation average of ``sum_p corr_p I(R q_p)`` is ``sum_p corr_p Ibar(|q_p|)``,
    ``Ibar`` the shell average of the interpolated intensity (:func:`shell_average`), summed
    over the pixels that receive photons (mask < 2); fluence factors have mean 1.
    """
    used = detector.mask != MASK_EXCLUDED
    radius = np.sqrt((detector.q_voxels[used] ** 2).sum(axis=1))
    radii, inverse = np.unique(np.round(radius, 9), return_inverse=True)
    expected = float((detector.corr[used] * shell_average(np.asarray(intensity, np.float64), radii)[inverse]).sum())
    if not expected > 0:
        raise ValueError("the intensity is zero on every used pixel: cannot scale it to a photon count")
    return float(mean_photons) / expected


def fluence_scale(fluence_photons_per_m2: float) -> float:
    """``scale`` for an absolute fluence: photons / m^2 times r_e^2 (corr is in steradians)."""
    return float(fluence_photons_per_m2) * classical_electron_radius() ** 2


def classical_electron_radius() -> float:
    """r_e in metres (CODATA via scipy.constants)."""
    from scipy import constants

    return float(constants.physical_constants["classical electron radius"][0])
