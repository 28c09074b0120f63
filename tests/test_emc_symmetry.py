"""Point-group and Friedel symmetrisation of the EMC model."""

from __future__ import annotations

import numpy as np
import pytest

from spibatch.emc.symmetry import group_matrices, symmetrize


@pytest.mark.parametrize("name, order", [("C1", 1), ("C5", 5), ("D3", 6), ("T", 12), ("O", 24), ("I", 60)])
def test_groups_are_closed_rotation_groups(name, order):
    mats = group_matrices(name)
    assert mats.shape == (order, 3, 3)
    assert np.allclose(np.einsum("gij,gkj->gik", mats, mats), np.eye(3))
    assert np.allclose(np.linalg.det(mats), 1.0)
    flat = mats.reshape(order, 9)
    for a in mats:
        products = np.einsum("ij,gjk->gik", a, mats).reshape(order, 9)
        assert np.abs(products[:, None] - flat[None]).max(-1).min(1).max() < 1e-9   # each product is in the group


def test_icosahedral_two_fold_axes_along_x_y_z():
    mats = group_matrices("I")
    for axis in np.eye(3):
        two_fold = -np.eye(3) + 2 * np.outer(axis, axis)
        assert np.abs(mats - two_fold).max(axis=(1, 2)).min() < 1e-9


def test_symmetrize_makes_the_model_invariant():
    rng = np.random.default_rng(0)
    model = rng.random((21, 21, 21))
    x = np.arange(21) - 10
    inner = np.sqrt(x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2) < 9
    c4 = symmetrize(model, "C4")
    assert np.allclose(c4[inner], np.rot90(c4, 1, axes=(0, 1))[inner])       # 90 degrees about z
    assert not np.allclose(model[inner], np.rot90(model, 1, axes=(0, 1))[inner])
    assert np.allclose(symmetrize(c4, "C4")[inner], c4[inner])
    friedel = symmetrize(model, friedel=True)
    assert np.array_equal(friedel, friedel[::-1, ::-1, ::-1])
    radial = np.exp(-(x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2) / 20.0)
    assert np.abs(symmetrize(radial, "I") - radial)[inner].max() < 0.03   # only the trilinear blur (peak 1)


@pytest.mark.parametrize("name", ["X7", "D2 ", " I ", "C\u0663"])   # spaces, and non-ASCII digits, read alike
def test_unknown_group(name):
    with pytest.raises(ValueError, match="unknown point group"):
        group_matrices(name)
