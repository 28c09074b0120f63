"""Coarse-to-fine orientation search: each frame's fine-grid candidates from its best coarse rotations.

From the last of ``refine.after`` iterations on the coarse grid (``emc.num_div``) on, the step reports each
frame's ``refine.top`` most probable rotations (``frames["top_rotations"]``); :func:`candidates` turns
them into the rotations of the fine grid
(``refine.num_div``) within ``refine.radius`` coarse grid spacings of any of them: the only ones that frame
searches in the next iteration (:class:`Candidates`). A frame whose mutual information
was below ``refine.min_info`` (its orientation not known yet) searches the whole fine grid.
Dragonfly does the same with ``num_div = FINE COARSE`` (a fine rotation belongs to a frame when its
nearest coarse rotation is one of the frame's relevant ones); the radius here covers that Voronoi cell
(radius 1 spacing: a little more than the cell) and lets the search reach past it.

Angles: the rotation between unit quaternions p and q is ``2 arccos |p . q|``; the chord ``|p - q|`` of
the doubled set {q, -q} is ``2 sin(angle / 4)``, so a ball query of the doubled fine grid finds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def grid_spacing(quaternions: np.ndarray) -> float:
    """The median angle (radians) between a rotation of the grid and its nearest neighbour."""
    from scipy.spatial import cKDTree

    doubled = np.concatenate([quaternions, -quaternions])
    dist, _ = cKDTree(doubled).query(quaternions, k=2)      # the nearest is the point itself
    return float(np.median(4 * np.arcsin(np.minimum(dist[:, 1] / 2, 1.0))))


def voronoi_order(coarse: np.ndarray, fine: np.ndarray) -> np.ndarray:
    """(R_fine,) int32: the fine rotations sorted by their nearest coarse rotation (then by index)."""
    from scipy.spatial import cKDTree

    _, nearest = cKDTree(np.concatenate([coarse, -coarse])).query(fine)
    return np.lexsort((np.arange(len(fine)), nearest % len(coarse))).astype(np.int32)


class CandidateSearch:
    """What every iteration's :meth:`choose` shares, built once a run: the fine grid sorted by its nearest
    coarse rotation, a ball tree of the fine grid and the search radius (``radius`` coarse grid spacings)."""

    def __init__(self, coarse: np.ndarray, fine: np.ndarray, radius: float):
        from scipy.spatial import cKDTree

        self.coarse, self.num_fine = coarse, len(fine)
        self.order = voronoi_order(coarse, fine)
        self.position = np.empty(len(fine), np.int32)
        self.position[self.order] = np.arange(len(fine), dtype=np.int32)
        angle = radius * grid_spacing(coarse)
        self.chord = 2 * np.sin(min(angle, np.pi) / 4) * (1 + 1e-9)   # rotations right at the radius count
        self.tree = cKDTree(np.concatenate([fine, -fine]))

    def choose(self, top: np.ndarray, centres: np.ndarray | None = None) -> "Candidates":
        """Each frame's fine rotations within the radius of one of its ``top`` (D, k) rotations: indices into
        ``centres`` (unit quaternions; default the coarse grid, the fine grid after the first fine iteration),
        -1: none; a frame with none at all searches the whole fine grid."""
        used = np.unique(top[top >= 0])
        centres = self.coarse if centres is None else centres
        near = {int(c): np.unique(self.position[np.asarray(hits, np.int64) % self.num_fine])
                for c, hits in zip(used, self.tree.query_ball_point(centres[used], self.chord))}
        everything = np.arange(self.num_fine, dtype=np.int32)
        parts = []
        for row in top:
            found = [near[int(c)] for c in row if c >= 0]
            parts.append(np.unique(np.concatenate(found)) if found else everything)
        ptr = np.zeros(len(top) + 1, np.int64)
        np.cumsum([len(p) for p in parts], out=ptr[1:])
        pos = np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)
        return Candidates(ptr, pos, self.order)


def candidates(top: np.ndarray, coarse: np.ndarray, fine: np.ndarray, radius: float,
               centres: np.ndarray | None = None) -> "Candidates":
    """One :meth:`CandidateSearch.choose`: top (D, k) int, coarse (R_c, 4), fine (R_f, 4) unit quaternions,
    radius in coarse grid spacings."""
    return CandidateSearch(coarse, fine, radius).choose(top, centres)


@dataclass
class Candidates:
    """Each frame's rotations to search (coarse-to-fine refinement), for all frames of the run.

    ptr (D_total + 1,) int64 into pos (n,) int32: frame d searches the rotations ``order[pos[ptr[d]:ptr[d + 1]]]``
    (pos ascending per frame); order (R,) int32: the grid's rotations sorted by their nearest coarse rotation,
    so that a run of positions is one neighbourhood (a block of them is needed by few frames).
    """

    ptr: np.ndarray
    pos: np.ndarray
    order: np.ndarray

    def restricted(self, first: int, stop: int) -> "Candidates":
        """Only frames ``first .. stop`` keep their candidates (the others none): what one HTC task needs, a
        slice of ``pos`` instead of the whole run's."""
        a, b = self.ptr[first], self.ptr[stop]
        return Candidates(np.clip(self.ptr, a, b) - a, self.pos[a:b], self.order)

    def everything(self, first: int, num_frames: int, num_rotations: int) -> bool:
        """Whether each of frames ``first .. first + num_frames`` searches all ``num_rotations`` rotations."""
        return bool(np.all(np.diff(self.ptr[first:first + num_frames + 1]) == num_rotations))

    def for_shard(self, first: int, num_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frames ``first .. first + num_frames``: ``(rotations (R',) int64: the union of their candidates, in
        position order; frame (n,) int64 counted from first, local (n,) int64 into rotations)``, by frame."""
        ptr = self.ptr[first:first + num_frames + 1]
        pos = self.pos[ptr[0]:ptr[-1]]
        union = np.unique(pos)
        frame = np.repeat(np.arange(num_frames), np.diff(ptr))
        return self.order[union].astype(np.int64), frame, np.searchsorted(union, pos).astype(np.int64)
