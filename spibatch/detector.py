"""Detector pixel geometry in the units EMC works in (Dragonfly's).

Each pixel has a scattering vector ``q`` measured in voxels of the 3-D model
grid, a correction factor (solid angle x polarization) and a mask value.
One model voxel is ``voxel_size_per_m`` in reciprocal space, with the
crystallographic convention ``|q| = 2 sin(theta) / wavelength`` (no 2 pi), so
the resolution of a voxel at radius ``r`` is ``1 / (r * voxel_size_per_m)``
metres.  Coordinates as in CXI: z downstream (along the beam), y up.
"""

from __future__ import annotations

import os
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

    # ------------------------------------------------------------------ constructors

    @classmethod
    def flat(cls, pixels: int, pixel_size_m: float, distance_m: float, wavelength_m: float, *,
             beamstop_radius_pixels: float = 0.0, polarization: str = "x") -> "Detector":
        """A flat square detector of ``pixels x pixels``, the beam through its centre (Dragonfly's ``det_sim.h5``).

        Pixel ``p = i * n + j``: ``i`` (slow) runs along lab x, ``j`` along lab y; centres at
        ``(idx - (n-1)/2) * pixel_size_m``, the detector ``distance_m`` downstream (z).  ``q`` in model voxels
        of ``pixel_size_m / (wavelength_m * distance_m)`` 1/m, ``|q| = 2 sin(theta) / wavelength`` (no 2 pi):
        ``q = R (r / |r| - z)`` with ``R = distance / pixel`` the Ewald radius in voxels.  ``corr`` is the
        solid angle (sr) times the polarization factor (``polarization``: "x", "y" or "none").  ``mask``: 2
        within ``beamstop_radius_pixels`` of the beam, 1 beyond the circle through the edge pixel centres
        (the corners), 0 elsewhere.
        """
        n = int(pixels)
        detd = float(distance_m) / float(pixel_size_m)   # sample-detector distance in pixels
        centre = (n - 1) / 2.0
        i, j = np.meshgrid(np.arange(n, dtype=np.float64), np.arange(n, dtype=np.float64), indexing="ij")
        x = (i - centre).ravel()                         # pixels, along lab x (slow index)
        y = (j - centre).ravel()                         # pixels, along lab y (fast index)
        length = np.sqrt(x * x + y * y + detd * detd)
        ewald = detd                                     # 1/wavelength in voxels of pixel/(wavelength D)
        q_voxels = np.stack([x * ewald / length, y * ewald / length, detd * ewald / length - ewald], axis=1)
        solid_angle = detd / length ** 3                 # sr: (pixel area 1) * cos / r^2 in pixel units
        if polarization == "x":
            polar = 1.0 - (x / length) ** 2
        elif polarization == "y":
            polar = 1.0 - (y / length) ** 2
        else:
            polar = 0.5 * (1.0 + (detd / length) ** 2)
        radius = np.sqrt(x * x + y * y)                  # in-plane distance from the beam, pixels
        mask = np.full(n * n, MASK_USED, np.uint8)
        mask[radius > centre] = MASK_MERGE_ONLY
        mask[radius < float(beamstop_radius_pixels)] = MASK_EXCLUDED
        return cls(q_voxels=q_voxels, corr=solid_angle * polar, mask=mask, detd_pixels=float(detd),
                   ewald_radius_voxels=float(ewald),
                   voxel_size_per_m=float(pixel_size_m) / (float(wavelength_m) * float(distance_m)), shape=(n, n))

    @classmethod
    def read(cls, path: str | os.PathLike) -> "Detector":
        """A Dragonfly detector file (ours too), checked: InputError naming the file and dataset otherwise."""
        from spibatch.io.dragonfly import read_detector_arrays

        return cls(**read_detector_arrays(path))

    @classmethod
    def from_cxi(cls, path: str | os.PathLike, *, data_path: str | None = None, mask_path: str | None = None,
                 beamstop_radius_pixels: float = 0.0, polarization: str = "x") -> "Detector | None":
        """The flat square detector a CXI file's geometry describes, or None when it holds no such geometry.

        Needs 3-D frames (frame, y, x) with y = x pixels and the distance, pixel sizes (m, equal) and photon
        energy (J) of the CXI geometry; the beam is taken to hit the frame's centre.  Pixels are in the CXI
        frame's C order (y slow, x fast), as :func:`spibatch.io.cxi.cxi_to_photons` numbers them; the CXI
        mask's bad pixels are excluded (mask 2).
        """
        from spibatch.io.cxi import DATA_PATH, read_flat_geometry

        geometry = read_flat_geometry(path, data_path=data_path or DATA_PATH, mask_path=mask_path)
        if geometry is None:
            return None
        n = geometry["pixels"]
        det = cls.flat(n, geometry["pixel_size_m"], geometry["distance_m"], geometry["wavelength_m"],
                       beamstop_radius_pixels=beamstop_radius_pixels, polarization=polarization)
        order = np.arange(n * n).reshape(n, n).T.ravel()  # CXI pixel y * n + x -> flat pixel x * n + y
        mask = det.mask[order].copy()
        if geometry["bad"] is not None:
            mask[geometry["bad"]] = MASK_EXCLUDED
        return cls(q_voxels=det.q_voxels[order], corr=det.corr[order], mask=mask, detd_pixels=det.detd_pixels,
                   ewald_radius_voxels=det.ewald_radius_voxels, voxel_size_per_m=det.voxel_size_per_m, shape=(n, n))

    def model_size(self) -> int:
        """Edge of the smallest odd cubic model grid that holds every pixel: 2 * ceil(max |q|) + 1."""
        qmax = float(np.sqrt((self.q_voxels ** 2).sum(axis=1)).max())
        return 2 * int(np.ceil(qmax)) + 1
