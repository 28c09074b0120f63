"""Phasing results for other programs: the CXI file (PyNX's layout) and the density MRC in a truth's frame."""

from __future__ import annotations

import h5py
import numpy as np
from scipy.ndimage import shift as nd_shift
from test_phasing_operators import _blob

from spibatch.io.mrc import read_mrc
from spibatch.phasing.export import density_in_truth_frame, write_cxi, write_density_in_truth_frame


def test_the_cxi_file_has_the_layout_pynx_writes(tmp_path):
    rho = _blob(16, 4, seed=1).astype(np.float32)
    support = (rho > 0.1).astype(np.float32)
    path = write_cxi(tmp_path / "phasing.cxi", rho, support, 2e-9, prtf=np.linspace(1, 0, 9),
                     prtf_frequency_per_m=np.arange(9) * 1e7, configuration={"recipe": "auto"}, note="8 of 16")
    with h5py.File(path) as f:
        assert int(f["cxi_version"][()]) == 150 and f.attrs["default"] == "entry_1"
        assert f["entry_1"].attrs["NX_class"] == "NXentry" and f["entry_1"].attrs["default"] == "data_1"
        image = f["entry_1/image_1"]
        assert image.attrs["NX_class"] == "NXdata" and image.attrs["signal"] == "data"
        # C order with x the last (fastest) axis, as density.mrc and CXI viewers: as-is, a viewer shows the mirror
        np.testing.assert_array_equal(image["data"][()], rho.transpose(2, 1, 0))
        np.testing.assert_array_equal(image["support"][()], support.transpose(2, 1, 0))  # the soft link PyNX writes
        assert image["data"].attrs["axes_order"] == "z, y, x" and image["mask"].attrs["axes_order"] == "z, y, x"
        assert "not CXI bad-pixel flags" in image["mask"].attrs["description"]
        assert f["entry_1/data_1/data"].shape == (16,) * 3
        assert image["data_type"][()].decode() == "electron density" and image["data_space"][()].decode() == "real"
        np.testing.assert_allclose(image["image_size"][()], [32e-9] * 3)
        assert '"recipe": "auto"' in image["process_1/configuration"][()].decode()
        assert image["prtf"].shape == (9,)


def test_the_cxi_file_stores_the_density_as_density_mrc_does(tmp_path):
    """Both files store the same C-order (z, y, x) array, so a CXI viewer and ChimeraX show the same hand."""
    import mrcfile

    from spibatch.io.mrc import write_mrc

    rho = _blob(12, 4, seed=2).astype(np.float32)
    write_cxi(tmp_path / "phasing.cxi", rho, rho > 0.1, 2e-9)
    write_mrc(tmp_path / "density.mrc", rho, 20.0)
    with h5py.File(tmp_path / "phasing.cxi") as f, mrcfile.open(tmp_path / "density.mrc") as mrc:
        np.testing.assert_array_equal(f["entry_1/image_1/data"][()], mrc.data)


def test_the_density_lands_on_the_truths_grid_in_its_frame(tmp_path):
    """A reconstruction at half the truth's voxel size, twinned and moved by a fraction of a voxel, comes back
    onto the truth's 21^3 grid where it overlays the truth."""
    truth = _blob(21, 5, seed=4)
    # the reconstruction: 2x finer voxels on a 48^3 box, inverted through the centre, shifted by (1.3, -2.0, 0.6)
    from spibatch.phasing.compare import resample

    fine = resample(truth, 2.0)                          # 43^3, voxel = truth voxel / 2
    fine = np.pad(fine, 3)[:-1, :-1, :-1]                # 48^3 with the centre at 24 (was 21 + 3)
    twin = np.roll(fine[::-1, ::-1, ::-1], 1, axis=(0, 1, 2))
    moved = nd_shift(twin, (1.3, -2.0, 0.6), order=3)
    volume, how = density_in_truth_frame(moved, 1e-9, truth, 2e-9)
    assert volume.shape == truth.shape and how.inverted
    assert np.corrcoef(volume.ravel(), truth.ravel())[0, 1] > 0.98
    info = write_density_in_truth_frame(tmp_path / "density_truth_frame.mrc", moved, 1e-9, truth, 2e-9)
    back, voxel_a = read_mrc(tmp_path / "density_truth_frame.mrc")
    assert back.shape == truth.shape and abs(voxel_a - 20.0) < 1e-3 and info["inverted"]
    np.testing.assert_allclose(back, volume, rtol=1e-6, atol=1e-6)
