"""Rotation sampling for EMC: the refined 600-cell, as used by Dragonfly.

The 600-cell is the regular 4-D polytope with 120 vertices on the unit
3-sphere and 600 tetrahedral cells.  Refinement ``num_div = n`` places the
points ``(i a + j b + k c + l d) / n`` (``i + j + k + l = n``) in every cell
``abcd``, projects them onto the sphere and keeps one of each antipodal pair
``q, -q`` (the same rotation): ``10 (5 n^3 + n)`` unit quaternions.  A point's
weight is the sphere volume it stands for: central projection from the flat
cell shrinks volume by ``1 / |p|^4`` (``p`` the point before normalisation),
so weights are ``|p|^-4``, normalised to sum to 1.

Quaternions are ``(w, x, y, z)`` float64 with ``w >= 0``; the rotation matrix
of ``q`` maps a pixel's detector-frame q-vector into the model frame.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np

PHI = (1 + 5 ** 0.5) / 2   # golden ratio; the 600-cell's edge is 1 / PHI


def num_rotations(num_div: int) -> int:
    """Number of quaternions of refinement ``num_div``: 10 (5 n^3 + n)."""
    return 10 * (5 * num_div ** 3 + num_div)


def _even_permutations() -> list[tuple[int, ...]]:
    perms = []
    for p in itertools.permutations(range(4)):
        inversions = sum(p[i] > p[j] for i in range(4) for j in range(i + 1, 4))
        if inversions % 2 == 0:
            perms.append(p)
    return perms


@lru_cache(maxsize=1)
def cell_vertices() -> tuple[np.ndarray, np.ndarray]:
    """The 600-cell: vertices (120, 4) float64 on the unit sphere, cells (600, 4) int vertex indices."""
    verts = []
    for i in range(4):
        for s in (1.0, -1.0):
            v = np.zeros(4)
            v[i] = s
            verts.append(v)
    verts.extend(np.array(signs) / 2 for signs in itertools.product((1.0, -1.0), repeat=4))
    base = np.array([PHI, 1.0, 1.0 / PHI, 0.0]) / 2
    for perm in _even_permutations():
        for signs in itertools.product((1.0, -1.0), repeat=3):
            verts.append(_place(base, perm, signs))
    vertices = np.unique(np.round(np.array(verts), 12), axis=0)
    assert vertices.shape == (120, 4), vertices.shape
    dist = np.linalg.norm(vertices[:, None] - vertices[None], axis=-1)
    edge = np.isclose(dist, 1 / PHI)
    cells = []
    for a in range(120):
        nbrs = np.flatnonzero(edge[a])
        for b, c, d in itertools.combinations(nbrs[nbrs > a], 3):
            if edge[b, c] and edge[b, d] and edge[c, d]:
                cells.append((a, b, c, d))
    cells = np.array(cells)
    assert cells.shape == (600, 4), cells.shape
    return vertices, cells


def _place(base: np.ndarray, perm: tuple[int, ...], signs: tuple[float, ...]) -> np.ndarray:
    """``base`` (phi, 1, 1/phi, 0)/2 with signs on its non-zero entries, coordinates permuted by ``perm``."""
    values = base * np.array(list(signs) + [1.0])
    out = np.zeros(4)
    out[list(perm)] = values
    return out


@lru_cache(maxsize=8)
def quaternions(num_div: int) -> tuple[np.ndarray, np.ndarray]:
    """Refined 600-cell sampling: quaternions (R, 4) float64 (w, x, y, z), weights (R,) float64 summing to 1."""
    if num_div < 1:
        raise ValueError(f"num_div must be >= 1, got {num_div}")
    vertices, cells = cell_vertices()
    n = num_div
    ijkl = np.array([c for c in itertools.product(range(n + 1), repeat=4) if sum(c) == n], float) / n
    points = (ijkl @ vertices[cells]).reshape(-1, 4)          # (600 * len(ijkl), 4), unnormalised
    # Points on shared faces appear once per cell; the same point gives the same coordinates to rounding.
    key = np.round(points * (4 * n), 6)
    _, first = np.unique(key, axis=0, return_index=True)
    points = points[np.sort(first)]
    norm = np.linalg.norm(points, axis=1)
    quats = points / norm[:, None]
    weights = norm ** -4
    # Keep one of each antipodal pair: the first non-zero coordinate positive.
    lead = quats[np.arange(len(quats)), np.argmax(np.abs(quats) > 1e-9, axis=1)]
    keep = lead > 0
    quats, weights = quats[keep], weights[keep]
    assert len(quats) == num_rotations(n), (len(quats), num_rotations(n))
    quats = np.where(quats[:, :1] < 0, -quats, quats)  # w >= 0
    return quats, weights / weights.sum()


def rotation_matrices(quats: np.ndarray) -> np.ndarray:
    """Rotation matrices (R, 3, 3) float64 of unit quaternions (R, 4) (w, x, y, z)."""
    w, x, y, z = np.moveaxis(np.asarray(quats, np.float64), -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)
