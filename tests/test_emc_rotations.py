"""The refined 600-cell rotation sampling: counts, normalisation, distinctness, weights, uniformity."""

from __future__ import annotations

import numpy as np
import pytest

from spibatch.emc.rotations import num_rotations, quaternions, rotation_matrices
from spibatch.emc.types import Rotations


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 10])
def test_count_norm_sign_distinct_and_weights(n):
    quats, weights = quaternions(n)
    assert len(quats) == len(weights) == 10 * (5 * n ** 3 + n) == num_rotations(n)
    assert quats.shape == (len(quats), 4) and quats.dtype == np.float64
    assert np.allclose(np.linalg.norm(quats, axis=1), 1.0, atol=1e-12)
    assert (quats[:, 0] >= 0).all()
    # q and -q are the same rotation: make the first non-zero entry positive, then no two may coincide
    lead = quats[np.arange(len(quats)), np.argmax(np.abs(quats) > 1e-9, axis=1)]
    canonical = np.round(quats * np.sign(lead)[:, None], 9) + 0.0   # + 0.0 turns -0.0 into 0.0
    assert len(np.unique(canonical, axis=0)) == len(quats)
    assert (weights > 0).all() and weights.sum() == pytest.approx(1.0, abs=1e-12)
    # the projection from the flat cells: weights vary, but by less than the |p|^-4 range allows
    assert weights.max() / weights.min() < 1.0 / np.cos(np.pi / 5) ** 4 * 1.01


def test_published_counts():
    assert [num_rotations(n) for n in (4, 5, 10)] == [3240, 6300, 50100]
    assert len(Rotations.refined_600_cell(4)) == 3240


@pytest.mark.parametrize("n", [1, 3])
def test_matrices_orthonormal_with_det_one_and_match_scipy(n):
    from scipy.spatial.transform import Rotation

    quats, _ = quaternions(n)
    mats = rotation_matrices(quats)
    assert mats.shape == (len(quats), 3, 3)
    assert np.allclose(mats @ np.swapaxes(mats, 1, 2), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(mats), 1.0, atol=1e-12)
    scipy_mats = Rotation.from_quat(quats[:, [1, 2, 3, 0]]).as_matrix()   # scipy: (x, y, z, w)
    assert np.allclose(mats, scipy_mats, atol=1e-12)


def covering_angle(n: int, samples: np.ndarray) -> float:
    """Largest rotation angle (radians) from a sample rotation to its nearest sampled rotation."""
    quats, _ = quaternions(n)
    nearest = np.abs(samples @ quats.T).max(axis=1)     # |<p, q>| = cos(angle / 2)
    return float(2.0 * np.arccos(np.clip(nearest.min(), -1.0, 1.0)))


def test_quasi_uniform_covering_shrinks_like_one_over_n():
    rng = np.random.default_rng(7)
    samples = rng.normal(size=(4000, 4))
    samples /= np.linalg.norm(samples, axis=1)[:, None]
    angles = np.array([covering_angle(n, samples) for n in range(1, 7)])
    assert (np.diff(angles) < 0).all(), angles              # finer refinement, closer coverage
    scaled = angles * np.arange(1, 7)                        # ~ constant when the gap shrinks as 1 / n
    assert scaled.max() / scaled.min() < 1.3, scaled
    assert np.degrees(angles[3]) < 14.0, np.degrees(angles)  # num_div 4: every rotation within 13 degrees


def test_weights_match_the_volume_each_point_stands_for():
    """Uniform random rotations fall into each sample's Voronoi cell in proportion to its weight."""
    quats, weights = quaternions(2)
    rng = np.random.default_rng(3)
    samples = rng.normal(size=(200_000, 4))
    samples /= np.linalg.norm(samples, axis=1)[:, None]
    owner = np.concatenate([np.abs(block @ quats.T).argmax(axis=1) for block in np.array_split(samples, 20)])
    share = np.bincount(owner, minlength=len(quats)) / len(samples)
    # weighted vs uniform: the weights explain the shares better than equal weights would
    assert np.abs(share - weights).sum() < np.abs(share - 1.0 / len(quats)).sum()


def test_num_div_below_one_refused():
    with pytest.raises(ValueError, match="num_div"):
        quaternions(0)


def test_the_quaternion_convention_the_readme_states():
    """Ours: the standard active matrix, R[0][1] = 2(xy - wz); Dragonfly's make_rot_quat builds its transpose,
    which is our matrix of the conjugate: what the README tells a user comparing orientations."""
    from pathlib import Path

    from spibatch.sim.patterns import rotation_matrices as sim_matrices

    w, x, y, z = q = np.array([0.8, 0.2, -0.4, 0.4]) / np.linalg.norm([0.8, 0.2, -0.4, 0.4])
    ours = rotation_matrices(q[None])[0]
    assert ours[0, 1] == pytest.approx(2 * (x * y - w * z)) and np.allclose(sim_matrices(q[None])[0], ours)
    dragonfly = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y + w * z), 2 * (x * z - w * y)],   # make_rot_quat
                          [2 * (x * y - w * z), 1 - 2 * (x * x + z * z), 2 * (w * x + y * z)],
                          [2 * (w * y + x * z), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)]])
    assert np.allclose(dragonfly, ours.T) and np.allclose(dragonfly, rotation_matrices((q * [1, -1, -1, -1])[None])[0])
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert "R[0][1] = 2(xy - wz)" in readme and "make_rot_quat" in readme and "(w, -x, -y, -z)" in readme
