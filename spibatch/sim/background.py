"""A known detector background for simulated frames: a smooth per-pixel profile times a per-frame scale.

Real SPI frames carry photons that are not the particle's (beamline and gas scattering, stray light):
a per-pixel mean ``B_t`` that empty frames measure, whose level varies from pulse to pulse. Here
:func:`radial_background` makes such a profile and :func:`add_background` adds its Poisson photons,
frame ``d`` getting ``scale_d x B_t`` on average, to frames already simulated.
"""

from __future__ import annotations

import numpy as np

from spibatch.detector import MASK_EXCLUDED, Detector
from spibatch.photons import Photons


def radial_background(detector: Detector, photons_per_frame: float, *, rise: float = 1.0) -> np.ndarray:
    """(num_pix,) float64 mean background photons per pixel per frame: ``1 + rise x (|q| / max |q|)`` (a gentle
    rise to the edge, as gas scattering past the beam stop), times the detector's corr, scaled so that the pixels
    not excluded hold ``photons_per_frame`` per frame; 0 on excluded pixels."""
    q = np.linalg.norm(detector.q_voxels, axis=1)
    profile = (1.0 + rise * q / max(q.max(), 1e-12)) * detector.corr
    profile[detector.mask == MASK_EXCLUDED] = 0.0
    return profile * (photons_per_frame / profile.sum())


def background_scales(num_frames: int, low: float = 0.5, high: float = 1.5, seed: int = 0) -> np.ndarray:
    """(num_frames,) float64 per-frame background levels, uniform in ``low .. high`` (seeded)."""
    return np.random.default_rng(seed).uniform(low, high, num_frames)


def add_background(photons: Photons, background: np.ndarray, scales: np.ndarray, seed: int = 0,
                   chunk_frames: int = 1024) -> Photons:
    """``photons`` plus Poisson background photons: frame d gets Poisson(scales[d] x background) more in each
    pixel.  background (num_pix,) photons per frame; scales (num_frames,); seeded."""
    rng = np.random.default_rng(seed)
    background = np.asarray(background, np.float64)
    parts = []
    for a in range(0, photons.num_frames, chunk_frames):
        b = min(a + chunk_frames, photons.num_frames)
        dense = photons.to_dense(a, b).astype(np.int64)
        dense += rng.poisson(np.outer(scales[a:b], background))
        parts.append(Photons.from_dense(dense))
    return Photons.concatenate(parts) if parts else photons
