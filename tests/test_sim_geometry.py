"""The simulator's flat detector against Dragonfly's own detector file."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from spibatch.config import Geometry, from_dragonfly_ini
from spibatch.detector import MASK_EXCLUDED, MASK_MERGE_ONLY, MASK_USED
from spibatch.sim.geometry import resolution_m


@pytest.fixture(scope="module")
def dragonfly_pair(small_dataset):
    geometry = from_dragonfly_ini(small_dataset / "config.ini")
    with h5py.File(small_dataset / "det_sim.h5", "r") as f:
        reference = {name: f[name][()] for name in ("qx", "qy", "qz", "corr", "mask", "detd", "ewald_rad")}
    return geometry.detector(), reference, geometry


def test_q_vectors_match_dragonfly_in_pixel_order(dragonfly_pair):
    detector, ref, _ = dragonfly_pair
    q_ref = np.stack([ref["qx"], ref["qy"], ref["qz"]], axis=1)
    assert detector.q_voxels.shape == q_ref.shape == (4096, 3)
    scale = np.abs(q_ref).max()
    np.testing.assert_allclose(detector.q_voxels, q_ref, rtol=0, atol=1e-6 * scale)
    # the slow index runs along x (qx changes between rows, qy within a row), qz <= 0
    grid = detector.q_voxels.reshape(64, 64, 3)
    assert np.all(np.diff(grid[:, 32, 0]) > 0) and np.all(np.diff(grid[32, :, 1]) > 0)
    assert detector.q_voxels[:, 2].max() <= 0


def test_corr_mask_and_scalars_match_dragonfly(dragonfly_pair):
    detector, ref, geometry = dragonfly_pair
    np.testing.assert_allclose(detector.corr, ref["corr"], rtol=1e-6)
    np.testing.assert_array_equal(detector.mask, ref["mask"])
    counts = [int((detector.mask == m).sum()) for m in (MASK_USED, MASK_MERGE_ONLY, MASK_EXCLUDED)]
    assert counts == [2984, 1000, 112]
    assert detector.detd_pixels == pytest.approx(float(ref["detd"]), rel=1e-12) == 585.9375
    assert detector.ewald_radius_voxels == pytest.approx(float(ref["ewald_rad"]), rel=1e-12)
    assert detector.shape == (64, 64)
    assert detector.voxel_size_per_m == pytest.approx(
        geometry.pixel_size_m / (geometry.wavelength * geometry.detector_distance_m), rel=1e-12)
    assert detector.model_size() == 91            # Dragonfly's intensities.bin is 91^3


def test_corr_is_solid_angle_in_steradians():
    # unpolarized: corr / ((1 + cos^2 2theta) / 2) summed over a square is its solid angle
    n, pixel, distance = 100, 1e-3, 0.05
    detector = (Geometry(detector_pixels=n, pixel_size_m=pixel, detector_distance_m=distance,
                                      wavelength_m=1e-10, polarization="none", beamstop_radius_pixels=0)).detector()
    cos_2theta = (detector.ewald_radius_voxels + detector.q_voxels[:, 2]) / detector.ewald_radius_voxels
    solid = detector.corr / (0.5 * (1 + cos_2theta ** 2))
    side = n * pixel
    exact = 4 * np.arcsin(side ** 2 / (side ** 2 + 4 * distance ** 2))
    assert solid.sum() == pytest.approx(exact, rel=1e-4)


def test_polarization_direction():
    common = dict(detector_pixels=32, pixel_size_m=2e-3, detector_distance_m=0.05, wavelength_m=2e-10)
    along_x = (Geometry(polarization="x", **common)).detector().corr.reshape(32, 32)
    along_y = (Geometry(polarization="y", **common)).detector().corr.reshape(32, 32)
    np.testing.assert_allclose(along_y, along_x.T, rtol=1e-12)
    # polarized along x: pixels far along x (slow index) lose intensity, far along y do not
    assert along_x[0, 16] < along_x[16, 0]


def test_resolution_at_edge_and_corner(dragonfly_pair):
    detector, _, geometry = dragonfly_pair
    res = resolution_m(detector)
    # edge: the outermost pixel of the central row, 31.5 x 0.5 pixels off the beam;
    # 1 / |q| = lambda / (2 sin theta) with tan(2 theta) = radius / detd
    two_theta = np.arctan(np.hypot(31.5, 0.5) / detector.detd_pixels)
    assert res["edge_m"] == pytest.approx(geometry.wavelength / (2 * np.sin(two_theta / 2)), rel=1e-9)
    assert res["corner_m"] < res["edge_m"]


def test_the_simulate_check_keeps_waters_when_asked(tmp_path):
    """keep_waters: true on a water-only structure: the check before the run read it without the waters and
    refused it ("no atoms left after dropping water"), although the simulation would have kept them."""
    from spibatch.config import load_pipeline
    from spibatch.errors import InputError
    from spibatch.stages import simulate

    (tmp_path / "w.pdb").write_text("".join(
        f"HETATM{k:5d}  O   HOH W{k:4d}    {x:8.3f}{y:8.3f}{0.0:8.3f}  1.00 20.00           O\n"
        for k, (x, y) in enumerate([(0.0, 0.0), (3.0, 0.0), (0.0, 3.0), (3.0, 3.0)], 1)) + "END\n")
    for keep in (True, False):
        (tmp_path / "p.yaml").write_text("name: t\ngeometry: {detector_pixels: 64, pixel_size_m: 0.5e-3, "
                                         "detector_distance_m: 0.15, photon_energy_ev: 6000}\n"
                                         f"simulation: {{pdb: w.pdb, num_patterns: 10, keep_waters: {str(keep).lower()}}}\n")
        pipeline = load_pipeline(tmp_path / "p.yaml")
        if keep:
            simulate.check(pipeline, tmp_path / "p.yaml")
        else:
            with pytest.raises(InputError, match="no atoms left after dropping water"):
                simulate.check(pipeline, tmp_path / "p.yaml")
