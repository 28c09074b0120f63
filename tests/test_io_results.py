"""Result files, MRC volumes and read_volume on every format we know."""

from __future__ import annotations

import json
import time

import h5py
import numpy as np
import pytest

from spibatch.errors import InputError
from spibatch.io.mrc import read_mrc, write_mrc
from spibatch.io.results import GZIP_MIN_VOXELS, read_result, read_volume, write_result


def some_result(edge=9):
    rng = np.random.default_rng(4)
    datasets = {"intensity": rng.random((edge, edge, edge), dtype=np.float32),
                "density": rng.random((5, 5, 5), dtype=np.float32),
                "quaternions": rng.normal(size=(7, 4)),
                "emc/likelihood": np.arange(3.0)}
    attrs = {"voxel_size_per_m": 1.25e7, "density_voxel_size_m": 4.1e-9, "stage": "emc", "iteration": 30,
             "shape": np.array([64, 64])}
    provenance = {"config": {"num_div": 4}, "inputs": {"photons.emc": "sha256:abc"}, "versions": {"numpy": "2"}}
    return datasets, attrs, provenance


def test_result_round_trip(tmp_path):
    datasets, attrs, provenance = some_result()
    write_result(tmp_path / "r.h5", datasets, attrs, provenance)
    got, got_attrs = read_result(tmp_path / "r.h5")
    assert set(got) == set(datasets)
    for name, value in datasets.items():
        assert got[name].dtype == value.dtype and np.array_equal(got[name], value)
    assert got_attrs["provenance"] == provenance
    assert got_attrs["voxel_size_per_m"] == 1.25e7 and got_attrs["stage"] == "emc" and got_attrs["iteration"] == 30
    assert np.array_equal(got_attrs["shape"], [64, 64])
    with h5py.File(tmp_path / "r.h5") as f:
        assert json.loads(f.attrs["provenance"]) == provenance  # stored as a JSON string
    write_result(tmp_path / "again.h5", got, got_attrs)  # read_result's output writes back as it was
    assert (tmp_path / "again.h5").read_bytes() == (tmp_path / "r.h5").read_bytes()


def test_result_none_attrs_left_out_and_provenance_twice(tmp_path):
    write_result(tmp_path / "r.h5", {"x": np.zeros(2)}, {"voxel_size_per_m": None})
    assert read_result(tmp_path / "r.h5")[1] == {}
    with pytest.raises(ValueError, match="twice"):
        write_result(tmp_path / "r.h5", {}, {"provenance": {}}, provenance={})


def test_result_same_content_same_bytes(tmp_path):
    datasets, attrs, provenance = some_result()
    write_result(tmp_path / "a.h5", datasets, attrs, provenance)
    time.sleep(1.1)  # a stored timestamp would now differ
    write_result(tmp_path / "b.h5", dict(reversed(list(datasets.items()))), dict(reversed(list(attrs.items()))),
                 dict(reversed(list(provenance.items()))))
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()


def test_large_float_volumes_are_compressed(tmp_path):
    edge = round(GZIP_MIN_VOXELS ** (1 / 3))
    volume = np.zeros((edge, edge, edge), np.float32)
    volume[edge // 2] = 1.0
    write_result(tmp_path / "r.h5", {"intensity": volume, "small": np.zeros((4, 4, 4), np.float32),
                                     "labels": np.zeros((edge, edge, edge), np.uint8)}, {})
    with h5py.File(tmp_path / "r.h5") as f:
        assert f["intensity"].compression == "gzip"
        assert f["small"].compression is None and f["labels"].compression is None
        assert f["intensity"].id.get_storage_size() < volume.nbytes / 10
    assert np.array_equal(read_volume(tmp_path / "r.h5"), volume)


def test_failed_write_keeps_older_result(tmp_path):
    write_result(tmp_path / "r.h5", {"x": np.arange(4)}, {"a": 1})
    before = (tmp_path / "r.h5").read_bytes()
    with pytest.raises(TypeError):
        write_result(tmp_path / "r.h5", {"x": np.arange(4), "bad": np.array([object()])}, {})
    assert (tmp_path / "r.h5").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.h5"]


def test_read_result_bad_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_result(tmp_path / "none.h5")
    with h5py.File(tmp_path / "r.h5", "w") as f:
        f.attrs["provenance"] = "{not json"
    with pytest.raises(InputError, match="not valid JSON") as excinfo:
        read_result(tmp_path / "r.h5")
    assert str(tmp_path / "r.h5") in str(excinfo.value) and "provenance" in str(excinfo.value)


# ------------------------------------------------------------------ read_volume

def test_read_volume_from_our_result(tmp_path):
    datasets, attrs, provenance = some_result()
    write_result(tmp_path / "r.h5", datasets, attrs, provenance)
    assert np.array_equal(read_volume(tmp_path / "r.h5"), datasets["intensity"])
    assert np.array_equal(read_volume(tmp_path / "r.h5", name="density"), datasets["density"])
    for name, match in (("quaternions", "expected a 3-D volume"), ("nothing", "missing")):
        with pytest.raises(InputError, match=match) as excinfo:
            read_volume(tmp_path / "r.h5", name=name)
        assert name in str(excinfo.value) and str(tmp_path / "r.h5") in str(excinfo.value)


def test_read_volume_dragonfly_files(small_dataset):
    intens = read_volume(small_dataset / "dragonfly-run" / "output_030.h5")
    assert intens.shape == (93, 93, 93) and intens.dtype == np.float64
    truth = read_volume(small_dataset / "intensities.bin")
    assert truth.shape == (91, 91, 91) and np.isfinite(truth).all()
    assert truth[45, 45, 45] == truth.max()  # the centre holds the forward-scattering peak
    assert read_volume(small_dataset / "densityMap.bin").shape == (11, 11, 11)


def test_read_volume_intensities_h5(shared_datasets):
    volume = read_volume(shared_datasets / "dragonfly-medium" / "intensities.h5")
    assert volume.shape == (211, 211, 211) and volume.dtype == np.float32
    assert np.unravel_index(np.argmax(volume), volume.shape) == (105, 105, 105)


def test_read_volume_bad_files(tmp_path):
    (tmp_path / "odd.bin").write_bytes(np.zeros(10).tobytes())
    with pytest.raises(InputError, match="not a float64 cube"):
        read_volume(tmp_path / "odd.bin")
    with h5py.File(tmp_path / "modes.h5", "w") as f:
        f["intens"] = np.zeros((2, 3, 3, 3))
    with pytest.raises(InputError, match="expected a 3-D volume") as excinfo:
        read_volume(tmp_path / "modes.h5")
    assert "intens" in str(excinfo.value)
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f["other"] = np.zeros(3)
    with pytest.raises(InputError, match="found: other"):
        read_volume(tmp_path / "empty.h5")
    (tmp_path / "v.txt").write_text("hello")
    with pytest.raises(InputError, match="unknown volume format"):
        read_volume(tmp_path / "v.txt")
    with pytest.raises(InputError, match="not found"):
        read_volume(tmp_path / "missing.mrc")


# ------------------------------------------------------------------ MRC

def test_mrc_round_trip_and_read_volume(tmp_path):
    volume = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    write_mrc(tmp_path / "d.mrc", volume, 41.5)
    got, voxel = read_mrc(tmp_path / "d.mrc")
    assert got.dtype == np.float32 and np.array_equal(got, volume)
    assert voxel == pytest.approx(41.5, rel=1e-6)
    assert np.array_equal(read_volume(tmp_path / "d.mrc"), volume)
    assert [p.name for p in tmp_path.iterdir()] == ["d.mrc"]


def test_mrc_bad_input(tmp_path):
    (tmp_path / "bad.mrc").write_bytes(b"\0" * 100)
    with pytest.raises(InputError, match="not a valid MRC file") as excinfo:
        read_mrc(tmp_path / "bad.mrc")
    assert str(tmp_path / "bad.mrc") in str(excinfo.value)
    with pytest.raises(InputError, match="not found"):
        read_mrc(tmp_path / "none.mrc")
    with pytest.raises(ValueError, match=r"volume must be 3-D \[x, y, z\], got shape \(3, 3\)"):
        write_mrc(tmp_path / "flat.mrc", np.zeros((3, 3)), 1.0)
    assert not (tmp_path / "flat.mrc").exists()


def test_mrc_axis_order_is_x_fastest_in_the_file(tmp_path):
    import mrcfile

    volume = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # [x, y, z]
    write_mrc(tmp_path / "v.mrc", volume, 2.0)
    with mrcfile.open(tmp_path / "v.mrc") as mrc:
        assert (int(mrc.header.nx), int(mrc.header.ny), int(mrc.header.nz)) == (2, 3, 4)
        assert mrc.data[3, 2, 1] == volume[1, 2, 3]
    got, _ = read_mrc(tmp_path / "v.mrc")
    assert np.array_equal(got, volume)


def test_mrc_axis_order_is_honoured_and_a_bad_one_refused(tmp_path):
    """An MRC whose header says columns = z, rows = y, sections = x (mapc, mapr, maps = 3, 2, 1) was read as
    1, 2, 3: validate compared the map with itself transposed (FSC 0.5 at 39 A, cc 0.82) without a word."""
    import mrcfile

    from spibatch.io.results import volume_shape

    volume = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)    # [x, y, z]
    write_mrc(tmp_path / "standard.mrc", volume, 2.0)
    with mrcfile.new(tmp_path / "permuted.mrc") as mrc:
        mrc.set_data(volume)            # data[i, j, k] = volume[x=i, y=j, z=k]: sections x, rows y, columns z
        mrc.voxel_size = 2.0
        mrc.header.mapc, mrc.header.mapr, mrc.header.maps = 3, 2, 1
    for name in ("standard.mrc", "permuted.mrc"):
        read, voxel = read_mrc(tmp_path / name)
        assert np.array_equal(read, volume) and voxel == pytest.approx(2.0), name
        assert volume_shape(tmp_path / name) == (4, 5, 6), name
    with mrcfile.open(tmp_path / "standard.mrc", mode="r+") as mrc:     # left unset by older writers: 1, 2, 3
        mrc.header.mapc = mrc.header.mapr = mrc.header.maps = 0
    assert np.array_equal(read_mrc(tmp_path / "standard.mrc")[0], volume)
    with mrcfile.open(tmp_path / "permuted.mrc", mode="r+") as mrc:
        mrc.header.mapc = mrc.header.mapr = mrc.header.maps = 1
    with pytest.raises(InputError, match=r"mapc/mapr/maps: axis order mapc, mapr, maps = 1, 1, 1 is not an order"):
        read_mrc(tmp_path / "permuted.mrc")
