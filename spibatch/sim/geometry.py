"""A flat square detector: pixel q-vectors, solid angle x polarization, mask.

Frames and units (as Dragonfly's ``det_sim.h5``, checked against it in the tests)
---------------------------------------------------------------------------------
- Lab frame as in CXI: z along the beam (downstream), y up, x horizontal
  (x = y cross z: to the left when looking downstream).
- Pixel ``p = i * n + j`` of an ``n x n`` detector: ``i`` is the *slow* index and
  runs along x, ``j`` the fast index along y.  The pixel centre sits at
  ``x = (i - (n-1)/2) * pixel_size``, ``y = (j - (n-1)/2) * pixel_size``,
  ``z = detector_distance``; the beam hits the detector centre.
- Dragonfly's ``qx, qy, qz`` are these lab x, y, z components of the scattering
  vector ``q = k_out - k_in``, ``|k| = 1 / wavelength`` (no 2 pi), in voxels of
  the model grid: ``q = R (r / |r| - z_hat)`` with ``R = D / pixel_size`` the
  Ewald radius in voxels, ``r`` the pixel centre.  ``qz <= 0``.
- One model voxel is ``voxel_size_per_m = pixel_size / (wavelength * D)`` 1/m:
  a pixel near the beam spans one voxel.
- ``corr`` is the pixel's solid angle in steradians, ``pixel_size^2 D / |r|^3``,
  times the polarization factor: ``1 - (x/|r|)^2`` for a beam polarized along x,
  ``1 - (y/|r|)^2`` along y, ``(1 + cos^2 2theta) / 2`` unpolarized.
- ``mask``: 2 (excluded) for pixels whose in-plane distance from the beam is
  below ``beamstop_radius_pixels``; 1 (merged only) beyond the circle through
  the edge pixel centres (distance > (n-1)/2 pixels), i.e. the corners; 0 elsewhere.
"""

from __future__ import annotations

import numpy as np

from spibatch.config import Geometry
from spibatch.detector import MASK_EXCLUDED, MASK_MERGE_ONLY, MASK_USED, Detector


def flat_detector(geometry: Geometry) -> Detector:
    """The Detector of ``geometry``: ``n * n`` pixels in C order over (x, y), q in model voxels.

    Returns a Detector with ``q_voxels`` (n*n, 3) float64, ``corr`` (n*n,) float64 (sr x
    polarization), ``mask`` (n*n,) uint8, ``detd_pixels = ewald_radius_voxels = D / pixel``,
    ``voxel_size_per_m = pixel / (wavelength * D)`` (1/m) and ``shape = (n, n)``.
    """
    n = int(geometry.detector_pixels)
    pixel = float(geometry.pixel_size_m)
    distance = float(geometry.detector_distance_m)
    detd = distance / pixel                      # sample-detector distance in pixels
    centre = (n - 1) / 2.0
    i, j = np.meshgrid(np.arange(n, dtype=np.float64), np.arange(n, dtype=np.float64), indexing="ij")
    x = (i - centre).ravel()                     # pixels, along lab x (slow index)
    y = (j - centre).ravel()                     # pixels, along lab y (fast index)
    length = np.sqrt(x * x + y * y + detd * detd)
    ewald = detd                                 # 1/wavelength in voxels of pixel/(wavelength D)
    q_voxels = np.stack([x * ewald / length, y * ewald / length, detd * ewald / length - ewald], axis=1)

    solid_angle = detd / length ** 3             # sr: (pixel area 1) * cos / r^2 in pixel units
    if geometry.polarization == "x":
        polar = 1.0 - (x / length) ** 2
    elif geometry.polarization == "y":
        polar = 1.0 - (y / length) ** 2
    else:
        polar = 0.5 * (1.0 + (detd / length) ** 2)
    corr = solid_angle * polar

    radius = np.sqrt(x * x + y * y)              # in-plane distance from the beam, pixels
    mask = np.full(n * n, MASK_USED, np.uint8)
    mask[radius > centre] = MASK_MERGE_ONLY
    mask[radius < float(geometry.beamstop_radius_pixels)] = MASK_EXCLUDED
    return Detector(q_voxels=q_voxels, corr=corr, mask=mask, detd_pixels=float(detd),
                    ewald_radius_voxels=float(ewald),
                    voxel_size_per_m=pixel / (geometry.wavelength * distance), shape=(n, n))


def resolution_m(detector: Detector) -> dict[str, float]:
    """Full-period resolution ``1 / |q|`` in metres at the detector's edge centre and corner.

    Edge: the largest |q| in the central row and column (the middle of an edge); corner: the
    largest |q| of all pixels.
    """
    q = np.sqrt((detector.q_per_m ** 2).sum(axis=1))
    corner = float(q.max())
    edge = corner
    if detector.shape is not None and len(detector.shape) == 2:
        n0, n1 = detector.shape
        grid = q.reshape(n0, n1)
        edge = float(max(grid[n0 // 2, :].max(), grid[:, n1 // 2].max()))
    return {"edge_m": 1.0 / edge, "corner_m": 1.0 / corner}
