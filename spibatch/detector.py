"""Detector pixel geometry in the units EMC works in (Dragonfly's).

Each pixel has a scattering vector ``q`` measured in voxels of the 3-D model
grid, a correction factor (solid angle x polarization) and a mask value.
One model voxel is ``voxel_size_per_m`` in reciprocal space, with the
crystallographic convention ``|q| = 2 sin(theta) / wavelength`` (no 2 pi), so
the resolution of a voxel at radius ``r`` is ``1 / (r * voxel_size_per_m)``
metres.  Coordinates as in CXI: z downstream (along the beam), y up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MASK_USED = 0          # pixel used for orientation and merge
MASK_MERGE_ONLY = 1    # pixel merged into the model but not used for orientation
MASK_EXCLUDED = 2      # pixel ignored (beam stop, bad pixel)


@dataclass(eq=False)
class Detector:
    """Pixel geometry of a detector with ``num_pix`` pixels.

    Attributes
    ----------
    q_voxels : (num_pix, 3) float64, scattering vector (qx, qy, qz) of each pixel
        in voxels of the model grid, as Dragonfly's ``qx, qy, qz``
    corr : (num_pix,) float64, solid angle (sr per pixel, in Dragonfly's
        pixel-distance units) times the polarization factor
    mask : (num_pix,) uint8, MASK_USED / MASK_MERGE_ONLY / MASK_EXCLUDED
    detd_pixels : float, sample-to-detector distance in pixel sizes
    ewald_radius_voxels : float, radius of the Ewald sphere (1 / wavelength) in voxels
    voxel_size_per_m : float or None, size of one model voxel in reciprocal space
        (1/m); None when the source file does not say (e.g. a Dragonfly file)
    shape : tuple or None, the detector's array shape when it is an image
        (e.g. (64, 64)); pixel order is C order over that shape
    """

    q_voxels: np.ndarray
    corr: np.ndarray
    mask: np.ndarray
    detd_pixels: float
    ewald_radius_voxels: float
    voxel_size_per_m: float | None = None
    shape: tuple[int, ...] | None = None

    @property
    def num_pix(self) -> int:
        return int(self.q_voxels.shape[0])

    @property
    def q_per_m(self) -> np.ndarray:
        """(num_pix, 3) float64 scattering vectors in 1/m (needs ``voxel_size_per_m``)."""
        if self.voxel_size_per_m is None:
            raise ValueError("this detector carries no physical scale (voxel_size_per_m)")
        return self.q_voxels * self.voxel_size_per_m

    def model_size(self) -> int:
        """Edge of the smallest odd cubic model grid that holds every pixel: 2 * ceil(max |q|) + 1."""
        qmax = float(np.sqrt((self.q_voxels ** 2).sum(axis=1)).max())
        return 2 * int(np.ceil(qmax)) + 1
