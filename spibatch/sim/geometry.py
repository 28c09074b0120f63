"""The flat square detector's conventions (built by :meth:`spibatch.detector.Detector.flat`) and its resolution.

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

from spibatch.detector import Detector


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
