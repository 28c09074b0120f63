"""Symmetries imposed on the EMC model after each merge.

* Friedel (centrosymmetric) averaging: ``I(q) = I(-q)``, true of any
  diffraction intensity without anomalous scattering.
* Point groups of the particle: ``C<n>`` (n-fold axis along z), ``D<n>``
  (plus 2-fold axes along x), ``T``, ``O`` and ``I`` (icosahedral, 2-fold axes
  along x, y and z: the 60 rotations are the 120 unit quaternions of the
  600-cell's vertices, which form the binary icosahedral group, modulo sign).
The model becomes the average of its rotated copies (trilinear), so a
symmetric model is left unchanged.
"""

from __future__ import annotations

import re

import numpy as np


MAX_AXIS_ORDER = 120   # C<n>/D<n>: D1000 took 11 s an iteration on the small set, D100000 hours


def group_matrices(name: str) -> np.ndarray:
    """Rotation matrices (G, 3, 3) of point group ``name``: "C<n>", "D<n>", "T", "O" or "I"."""
    from scipy.spatial.transform import Rotation

    match = re.fullmatch(r"([CD])([0-9]+)", name)   # ASCII digits, no spaces (as T, O and I)
    if match:
        n = int(match.group(2))
        if not 1 <= n <= MAX_AXIS_ORDER:
            raise ValueError(f"point group {name!r}: n must be 1 to {MAX_AXIS_ORDER} (each iteration averages the "
                             "model over all its rotations)")
        mats = [Rotation.from_euler("z", 2 * np.pi * k / n).as_matrix() for k in range(n)]
        if match.group(1) == "D":
            flip = Rotation.from_euler("x", np.pi).as_matrix()
            mats += [flip @ m for m in mats]
        return np.array(mats)
    if name == "I":
        from spibatch.emc.rotations import cell_vertices, rotation_matrices

        vertices, _ = cell_vertices()
        half = vertices[(vertices[:, 0] > 1e-9) | ((np.abs(vertices[:, 0]) < 1e-9) & _first_positive(vertices))]
        return rotation_matrices(half)
    if name in ("T", "O"):
        return Rotation.create_group(name).as_matrix()
    raise ValueError(f"unknown point group {name!r}: use C<n>, D<n>, T, O or I")


def _first_positive(q: np.ndarray) -> np.ndarray:
    lead = q[np.arange(len(q)), np.argmax(np.abs(q) > 1e-9, axis=1)]
    return lead > 0


def symmetrize(model: np.ndarray, point_group: str | None = None, friedel: bool = False) -> np.ndarray:
    """The model (M, M, M) averaged over ``point_group`` and, with ``friedel``, over inversion."""
    out = np.ascontiguousarray(model, np.float64)
    if point_group and point_group != "C1":
        from spibatch.kernels.emc_cpu import rotation_average

        averaged = np.empty_like(out)
        rotation_average(out, group_matrices(point_group), averaged)
        out = averaged
    if friedel:
        out = 0.5 * (out + out[::-1, ::-1, ::-1])
    return out
