"""A modular detector's geometry (EXtra-geom) -> our :class:`~spibatch.detector.Detector`, modules kept as modules.

EXtra-geom gives each pixel's centre ``(x, y, z)`` in metres in the lab frame of CXI (z along the
beam, y up, x to the left looking downstream), the beam through the origin, for data shaped
``(modules, ss, fs)`` -- no assembled image and no gap pixels: a gap is simply where no pixel
is.  With the sample ``distance_m`` upstream of the detector plane (``z`` of the geometry added,
e.g. a CrystFEL ``coffset``), each pixel's scattering vector in model voxels is, as in
:meth:`Detector.flat`, ``q = R (r / |r| - z_hat)`` with ``R = 1 / (wavelength voxel_size)`` the Ewald
radius in voxels and ``|q| = 2 sin(theta) / wavelength`` (no 2 pi).  ``corr`` is the pixel's solid
angle ``A z / |r|^3`` (sr; ``A`` the pixel's area from its fast- and slow-scan vectors) times the
polarization factor.  ``mask``: 2 (excluded) for bad pixels (nonzero in ``bad_pixels``, e.g. a
calibration mask), the ASIC edge rows and columns when ``mask_asic_edges`` (their pixels are
larger or shadowed), and within ``beamstop_radius_m`` of the beam; 0 elsewhere.
"""

from __future__ import annotations

import os

import numpy as np

from spibatch.detector import MASK_EXCLUDED, MASK_USED, Detector
from spibatch.errors import InputError

GEOMETRY_CLASSES = {"AGIPD1M": "AGIPD_1MGeometry", "DSSC1M": "DSSC_1MGeometry", "LPD1M": "LPD_1MGeometry",
                    "JUNGFRAU": "JUNGFRAUGeometry", "AGIPD500K": "AGIPD_500K2GGeometry", "generic": "GenericGeometry"}


def geometry_from_file(path: str | os.PathLike, detector: str = "AGIPD1M"):
    """The EXtra-geom geometry of ``detector`` (a key of :data:`GEOMETRY_CLASSES`) from a CrystFEL ``.geom``
    file; InputError naming the file when EXtra-geom cannot read it."""
    import extra_geom

    if detector not in GEOMETRY_CLASSES:
        raise InputError(f"unknown detector {detector!r}", field="detector",
                         fix=f"use one of {', '.join(GEOMETRY_CLASSES)}")
    cls = getattr(extra_geom, GEOMETRY_CLASSES[detector])
    try:
        return cls.from_crystfel_geom(os.fspath(path))
    except Exception as error:   # extra-geom raises many kinds on a bad file
        raise InputError(f"EXtra-geom cannot read it as {detector}: {error}", path=path, field="geometry",
                         fix="give a CrystFEL .geom file of that detector") from error


def detector_from_geometry(geom, *, wavelength_m: float, distance_m: float, voxel_size_per_m: float | None = None,
                           bad_pixels: np.ndarray | None = None, mask_asic_edges: bool = False,
                           beamstop_radius_m: float = 0.0, polarization: str = "x") -> Detector:
    """Our detector for an EXtra-geom geometry (units and frames in the module docstring).

    wavelength_m : photon wavelength; distance_m : sample to the geometry's z = 0 plane, metres
    voxel_size_per_m : one model voxel in reciprocal space (1/m); default ``pixel / (wavelength distance)``
        (one pixel at the beam, as :meth:`Detector.flat`); a larger voxel gives a smaller model grid
    bad_pixels : (modules, ss, fs), nonzero = bad (excluded), or None
    Returns a Detector with ``shape = geom.expected_data_shape``, pixels in C order over it.
    """
    positions = np.asarray(geom.get_pixel_positions(), np.float64)      # (modules, ss, fs, 3) m
    shape = tuple(positions.shape[:-1])
    if not (np.isfinite(wavelength_m) and wavelength_m > 0 and np.isfinite(distance_m) and distance_m > 0):
        raise InputError(f"wavelength {wavelength_m} m and distance {distance_m} m must be positive",
                         field="geometry", fix="give the photon wavelength and the sample-detector distance")
    pixel_m = float(np.mean(np.atleast_1d(geom.pixel_size)))
    voxel = voxel_size_per_m or pixel_m / (wavelength_m * distance_m)
    x, y = positions[..., 0].ravel(), positions[..., 1].ravel()
    z = positions[..., 2].ravel() + distance_m
    length = np.sqrt(x * x + y * y + z * z)
    ewald = 1.0 / (wavelength_m * voxel)                                  # voxels
    q = np.stack([x / length, y / length, z / length - 1.0], axis=1) * ewald
    area = _pixel_areas(geom, shape).ravel()
    solid_angle = area * z / length ** 3
    if polarization == "x":
        polar = 1.0 - (x / length) ** 2
    elif polarization == "y":
        polar = 1.0 - (y / length) ** 2
    else:
        polar = 0.5 * (1.0 + (z / length) ** 2)
    mask = np.full(len(x), MASK_USED, np.uint8)
    if bad_pixels is not None:
        bad_pixels = np.asarray(bad_pixels)
        if bad_pixels.shape != shape:
            raise InputError(f"a bad-pixel mask of shape {bad_pixels.shape} for a detector of shape {shape}",
                             field="bad_pixels", fix=f"give a mask shaped like the data {shape}")
        mask[bad_pixels.ravel() != 0] = MASK_EXCLUDED
    if mask_asic_edges:
        mask[asic_edges(geom, shape).ravel()] = MASK_EXCLUDED
    mask[np.sqrt(x * x + y * y) < beamstop_radius_m] = MASK_EXCLUDED
    return Detector(q_voxels=q, corr=solid_angle * polar, mask=mask, detd_pixels=float(distance_m / pixel_m),
                    ewald_radius_voxels=float(ewald), voxel_size_per_m=float(voxel), shape=shape)


def _pixel_areas(geom, shape: tuple[int, ...]) -> np.ndarray:
    """(modules, ss, fs) pixel areas in m^2 from each tile's slow- and fast-scan vectors."""
    area = np.zeros(shape, np.float64)
    for m, module in enumerate(geom.modules):
        tiles = geom.split_tiles(area[m])
        for tile, fragment in zip(tiles, module):
            tile[...] = np.linalg.norm(np.cross(fragment.ss_vec, fragment.fs_vec))
    return area


def asic_edges(geom, shape: tuple[int, ...]) -> np.ndarray:
    """(modules, ss, fs) bool: the first and last row and column of every tile (ASIC)."""
    edges = np.zeros(shape, bool)
    for m in range(shape[0]):
        for tile in geom.split_tiles(edges[m]):
            tile[0, :] = tile[-1, :] = True
            tile[:, 0] = tile[:, -1] = True
    return edges
