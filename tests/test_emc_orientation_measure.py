"""The orientation measure of benchmarks/emc_cases.py, and the rotation convention it rests on.

The convention is pinned by an EMC step started from the true intensity: no global rotation is then
involved, so each frame's most likely rotation must be its true one (up to the grid and the Friedel twin)
without any fit, and the measure must agree with that direct angle.  Synthetic sets then check each side
of the fit: the global rotation on the left, the Friedel twin R Rz(180) on the right, and the tools' files.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from spibatch.detector import Detector
from spibatch.emc.rotations import quaternions as grid_quaternions
from spibatch.emc.rotations import rotation_matrices
from spibatch.emc.step import shard_step
from spibatch.emc.types import PixelSet, Rotations, Shard, StepState
from spibatch.sim.patterns import Slicer, simulate_patterns
from spibatch.sim.patterns import rotation_matrices as truth_matrices
from spibatch.sim.scattering import intensity, structure_factor
from spibatch.sim.structure import Atoms

_spec = importlib.util.spec_from_file_location(
    "emc_cases", Path(__file__).resolve().parents[1] / "benchmarks" / "emc_cases.py")
emc_cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(emc_cases)

FRIEDEL = np.diag([-1.0, -1.0, 1.0])


def _random_rotations(num: int, seed: int) -> np.ndarray:
    return Rotation.random(num, random_state=seed).as_matrix().reshape(-1, 3, 3)


def _direct(true: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Per frame the angle to the true rotation or its twin, no global fit (degrees)."""
    def cos(a, b):
        return (np.einsum("dij,dij->d", a, b) - 1) / 2

    return np.degrees(np.arccos(np.clip(np.maximum(cos(true, found), cos(true @ FRIEDEL, found)), -1, 1)))


class _Collect:
    def append(self, photons):
        self.photons = photons


@pytest.fixture(scope="module")
def step_from_truth():
    """100 frames of 20 random carbons (3000 photons each) on a 32 x 32 detector; one EMC shard step at num_div 4
    from the true intensity: (true rotations, each frame's most likely rotation of the grid)."""
    detector = Detector.flat(32, 1.024e-3, 0.3, 6.2e-10, beamstop_radius_pixels=2, polarization="x")
    rng = np.random.default_rng(5)
    xyz = rng.normal(size=(20, 3)) * 80e-10
    atoms = Atoms(positions_m=xyz - xyz.mean(0), atomic_numbers=np.full(20, 6), occupancy=np.ones(20),
                  b_factor_a2=np.zeros(20))
    truth = intensity(structure_factor(atoms, detector.model_size(), detector.voxel_size_per_m, use_b_factors=False))
    per_frame = Slicer(truth, detector, detector.corr)(_random_rotations(20, 0)).sum(axis=1).mean()
    scale = 3000.0 / per_frame                                     # ~3000 photons a frame
    sink = _Collect()
    meta = simulate_patterns(truth, detector, num_patterns=100, scale=scale, fluence_jitter=0.0, seed=3,
                             chunk_frames=100, writer=sink)
    pixels = PixelSet.from_detector(detector)                      # EMC's corr is the detector's over its mean
    rotations = Rotations.refined_600_cell(4)
    shard = Shard.from_photons(sink.photons, pixels)
    model = truth * scale * detector.corr.mean()
    sums = shard_step(model, rotations, pixels, shard, StepState(1, np.ones(100), np.ones(100)))
    assert 1000 < shard.counts.mean() < 20000
    return truth_matrices(meta["quaternions"]), rotations.matrices[sums.frames["best_rotation"]]


def test_emc_step_from_the_truth_recovers_the_true_rotations(step_from_truth):
    true, found = step_from_truth
    direct = _direct(true, found)
    # the grid's quantisation at num_div 4 (13.5 degree spacing): a true rotation is 7-8 degrees from the nearest
    assert np.median(direct) < 10 and np.mean(direct < 15) > 0.8
    measured = emc_cases.orientation_errors(true, found)
    assert abs(np.median(measured) - np.median(direct)) < 1.0
    # the other conventions would be far off: the transposed matrices, or the twin on the other side
    assert np.median(_direct(true, found.transpose(0, 2, 1))) > 60
    assert np.median(np.degrees(np.arccos(np.clip((np.einsum("dij,dij->d", FRIEDEL @ true, found) - 1) / 2,
                                                  -1, 1)))) > 60


def test_global_rotation_on_the_left_with_twins_on_the_right_is_exact():
    true, g = _random_rotations(300, 1), _random_rotations(1, 2)[0]
    twin = np.random.default_rng(0).random(300) < 0.5
    found = g @ true
    found[twin] = found[twin] @ FRIEDEL
    assert emc_cases.orientation_errors(true, found).max() < 1e-4


def test_wrong_sides_and_random_rotations_give_large_errors():
    true, g = _random_rotations(300, 1), _random_rotations(1, 2)[0]
    assert np.median(emc_cases.orientation_errors(true, true @ g)) > 40                  # G on the right
    assert np.median(emc_cases.orientation_errors(true, (g @ true).transpose(0, 2, 1))) > 40   # transposed
    assert np.median(emc_cases.orientation_errors(true, _random_rotations(300, 3))) > 60
    twin = np.random.default_rng(0).random(300) < 0.5                                    # twin on the left
    found = g @ true
    found[twin] = g @ FRIEDEL @ true[twin]
    assert np.mean(emc_cases.orientation_errors(true, found) < 1) < 0.7


def test_grid_quantisation_is_all_that_is_measured():
    grid = rotation_matrices(grid_quaternions(4)[0])
    true, g = _random_rotations(300, 1), _random_rotations(1, 2)[0]
    target = g @ true
    found = grid[np.argmax(np.einsum("gab,dab->dg", grid, target), axis=1)]
    direct = _direct(target, found)
    measured = emc_cases.orientation_errors(true, found)
    assert np.median(direct) < 10 and abs(np.median(measured) - np.median(direct)) < 0.5


def test_both_tools_files_give_the_slicing_matrices(tmp_path):
    """spibatch records the quaternion of the matrix it slices with; Dragonfly slices with the inverse rotation
    of its (w, x, y, z) quaternion (its matrix is the transpose of the usual one)."""
    quats, weights = grid_quaternions(2)
    pick = np.random.default_rng(1).integers(0, len(quats), 50)
    with h5py.File(tmp_path / "spibatch.h5", "w") as f:
        f["quaternions"], f["orientations"] = quats[pick], pick
    with h5py.File(tmp_path / "dragonfly.h5", "w") as f:
        f["intens"] = np.zeros((1, 3, 3, 3))
        f["quaternions"], f["orientations"] = np.column_stack([quats, weights]), pick
    scipy_rot = Rotation.from_quat(quats[pick][:, [1, 2, 3, 0]])
    np.testing.assert_allclose(emc_cases.recovered_rotations(tmp_path / "spibatch.h5"), scipy_rot.as_matrix(),
                               atol=1e-12)
    np.testing.assert_allclose(emc_cases.recovered_rotations(tmp_path / "dragonfly.h5"),
                               scipy_rot.inv().as_matrix(), atol=1e-12)
