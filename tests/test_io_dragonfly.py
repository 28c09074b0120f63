"""Dragonfly photons and detector files: reference data, round trips, bad input, atomic and deterministic writes."""

from __future__ import annotations

import time

import h5py
import numpy as np
import pytest

from spibatch.detector import Detector
from spibatch.errors import InputError
from spibatch.io.dragonfly import (PhotonsWriter, check_match, iter_photons, photons_info, read_photons,
                                   write_detector, write_photons)
from spibatch.photons import Photons

CSR = ("ones_indptr", "ones_index", "multi_indptr", "multi_index", "multi_count")


def same_photons(a: Photons, b: Photons) -> bool:
    return a.num_pix == b.num_pix and all(
        getattr(a, k).dtype == getattr(b, k).dtype and np.array_equal(getattr(a, k), getattr(b, k)) for k in CSR)


def vlen(rows, base=np.int32):
    out = np.empty(len(rows), dtype=object)
    for k, r in enumerate(rows):
        out[k] = np.asarray(r, base)
    return out


GOOD_ROWS = {"place_ones": [[0, 5], [], [7]], "place_multi": [[1], [2, 3], []], "count_multi": [[2], [3, 4], []]}


def make_photons_file(path, num_pix=10, drop=None, **rows):
    """A small valid Dragonfly photons file; ``rows`` replace datasets, ``drop`` removes one."""
    with h5py.File(path, "w") as f:
        if drop != "num_pix":
            f["num_pix"] = np.array([num_pix], np.int32)
        for name, default in GOOD_ROWS.items():
            if name == drop:
                continue
            value = rows.get(name, default)
            if isinstance(value, np.ndarray) and value.dtype != object:
                f[name] = value
            else:
                value, base = value if isinstance(value, tuple) else (value, np.int32)
                f.create_dataset(name, data=vlen(value, base), dtype=h5py.vlen_dtype(base))
    return path


def make_detector_file(path, drop=None, **arrays):
    """A small valid Dragonfly detector file (6 pixels); ``arrays`` replace datasets, ``drop`` removes one."""
    data = {"qx": np.linspace(-1, 1, 6), "qy": np.zeros(6), "qz": np.full(6, 0.1), "corr": np.ones(6),
            "mask": np.array([0, 0, 1, 1, 2, 0], np.uint8), "detd": np.float64(100.0), "ewald_rad": np.float64(50.0)}
    data.update(arrays)
    with h5py.File(path, "w") as f:
        for name, value in data.items():
            if name != drop:
                f[name] = value
    return path


def some_detector() -> Detector:
    rng = np.random.default_rng(3)
    return Detector(q_voxels=rng.normal(size=(12, 3)), corr=rng.random(12),
                    mask=rng.integers(0, 3, 12).astype(np.uint8), detd_pixels=321.5, ewald_radius_voxels=400.25,
                    voxel_size_per_m=1.5e7, shape=(3, 4))


def some_photons(num_frames=30, num_pix=50, seed=1) -> Photons:
    return Photons.from_dense(np.random.default_rng(seed).poisson(0.8, size=(num_frames, num_pix)))


def assert_input_error(excinfo, path, field):
    text = str(excinfo.value)
    assert str(path) in text and "\n" not in text
    if field is not None:
        assert field in text


# ------------------------------------------------------------------ reference data

def test_small_detector_matches_readme(small_dataset):
    det = Detector.read(small_dataset / "det_sim.h5")
    assert det.num_pix == 64 * 64 and det.q_voxels.shape == (4096, 3) and det.q_voxels.dtype == np.float64
    assert np.bincount(det.mask).tolist() == [2984, 1000, 112] and det.mask.dtype == np.uint8
    assert det.ewald_radius_voxels == 585.9375
    assert det.voxel_size_per_m is None and det.shape is None


def test_small_photons_match_readme(small_dataset):
    photons = read_photons(small_dataset / "photons.emc")
    assert photons_info(small_dataset / "photons.emc") == (1000, 4096)
    assert photons.num_frames == 1000 and photons.num_pix == 4096
    assert round(float(photons.frame_counts().mean()), 1) == 995.9
    assert round(float(np.diff(photons.ones_indptr).mean())) == 226
    assert round(float(np.diff(photons.multi_indptr).mean())) == 182
    assert photons.multi_count.max() == 22 and photons.multi_count.min() >= 2


def test_detector_round_trip_matches_original(small_dataset, tmp_path):
    original = small_dataset / "det_sim.h5"
    det = Detector.read(original)
    write_detector(tmp_path / "det.h5", det)
    again = Detector.read(tmp_path / "det.h5")
    for key in ("q_voxels", "corr", "mask"):
        a, b = getattr(det, key), getattr(again, key)
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert (again.detd_pixels, again.ewald_radius_voxels) == (det.detd_pixels, det.ewald_radius_voxels)
    with h5py.File(original) as fa, h5py.File(tmp_path / "det.h5") as fb:
        assert set(fa) == set(fb)
        for name in fa:
            assert fa[name].shape == fb[name].shape and fa[name].dtype == fb[name].dtype
            assert np.array_equal(fa[name][()], fb[name][()])
        assert "voxel_size_per_m" not in fb.attrs and "shape" not in fb.attrs


def test_photons_round_trip_matches_original(small_dataset, tmp_path):
    original = small_dataset / "photons.emc"
    photons = read_photons(original)
    write_photons(tmp_path / "photons.h5", photons)
    assert same_photons(photons, read_photons(tmp_path / "photons.h5"))
    with h5py.File(original) as fa, h5py.File(tmp_path / "photons.h5") as fb:
        assert set(fa) == set(fb)
        for name in fa:
            a, b = fa[name], fb[name]
            assert a.shape == b.shape and a.dtype == b.dtype
            assert h5py.check_vlen_dtype(a.dtype) == h5py.check_vlen_dtype(b.dtype)
            if h5py.check_vlen_dtype(a.dtype) is None:
                assert np.array_equal(a[()], b[()])
            else:
                assert all(np.array_equal(x, y) for x, y in zip(a[()], b[()]))


def test_detector_attributes_round_trip(tmp_path):
    det = some_detector()
    write_detector(tmp_path / "det.h5", det)
    again = Detector.read(tmp_path / "det.h5")
    assert again.voxel_size_per_m == 1.5e7 and again.shape == (3, 4)
    assert np.array_equal(again.q_voxels, det.q_voxels) and np.array_equal(again.mask, det.mask)


def test_blocks_streams_and_slices_agree(small_dataset, monkeypatch):
    path = small_dataset / "photons.emc"
    whole = read_photons(path)
    assert same_photons(read_photons(path, 250, 600), whole.select(250, 600))
    sizes, original = [], h5py.Dataset.__getitem__

    def counting(self, args):
        out = original(self, args)
        if self.name == "/place_ones":
            sizes.append(len(out))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
    parts = list(iter_photons(path, chunk_frames=300))
    assert [p.num_frames for p in parts] == [300, 300, 300, 100]
    assert sizes == [300, 300, 300, 100]  # never the whole dataset at once
    assert same_photons(Photons.concatenate(parts), whole)


def test_writer_appends_blocks(tmp_path):
    photons = some_photons(40)
    with PhotonsWriter(tmp_path / "p.h5", photons.num_pix) as writer:
        for start in range(0, 40, 15):
            writer.append(photons.select(start, min(start + 15, 40)))
        writer.append(Photons.empty(photons.num_pix))
    assert writer.num_frames == 40
    assert same_photons(read_photons(tmp_path / "p.h5"), photons)
    assert np.array_equal(read_photons(tmp_path / "p.h5").to_dense(), photons.to_dense())


@pytest.mark.parametrize("dense", [np.ones((1, 6)), np.ones((3, 6)), np.zeros((4, 6)), np.full((2, 6), 2)])
def test_writer_equal_length_rows(tmp_path, dense):
    photons = Photons.from_dense(dense.astype(np.int32))
    write_photons(tmp_path / "p.h5", photons)
    assert np.array_equal(read_photons(tmp_path / "p.h5").to_dense(), dense)


def test_writer_refuses_bad_photons(tmp_path):
    with PhotonsWriter(tmp_path / "p.h5", 50) as writer:
        with pytest.raises(ValueError, match="num_pix"):
            writer.append(some_photons(num_pix=49))
        bad = some_photons()
        bad.multi_count[0] = 1
        with pytest.raises(ValueError, match="below 2"):
            writer.append(bad)
    with pytest.raises(RuntimeError, match="use PhotonsWriter in a with block"):
        PhotonsWriter(tmp_path / "q.h5", 50).append(some_photons())


def test_binary_emc_reads_like_hdf5(small_dataset, tmp_path):
    photons = read_photons(small_dataset / "photons.emc")
    path = tmp_path / "old.emc"
    header = np.zeros(256, "<i4")
    header[:2] = photons.num_frames, photons.num_pix
    parts = [header, np.diff(photons.ones_indptr), np.diff(photons.multi_indptr),
             photons.ones_index, photons.multi_index, photons.multi_count]
    path.write_bytes(b"".join(np.asarray(p, "<i4").tobytes() for p in parts))
    assert photons_info(path) == (1000, 4096)
    assert same_photons(read_photons(path), photons)
    assert same_photons(read_photons(path, 10, 20), photons.select(10, 20))
    assert same_photons(Photons.concatenate(list(iter_photons(path, 333))), photons)
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(InputError, match="truncated") as excinfo:
        read_photons(path)
    assert_input_error(excinfo, path, None)


def test_binary_emc_dense_refused(tmp_path):
    path = tmp_path / "dense.emc"
    header = np.zeros(256, "<i4")
    header[:3] = 2, 4, 1
    path.write_bytes(header.tobytes() + np.arange(8, dtype="<i4").tobytes())
    with pytest.raises(InputError, match="dense") as excinfo:
        read_photons(path)
    assert_input_error(excinfo, path, "header")


# ------------------------------------------------------------------ atomic and deterministic writes

def test_exception_in_writer_keeps_older_file(tmp_path):
    path = tmp_path / "photons.h5"
    write_photons(path, some_photons(seed=1))
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with PhotonsWriter(path, 50) as writer:
            writer.append(some_photons(seed=2))
            raise RuntimeError("crash while writing")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["photons.h5"]


def test_clean_writer_leaves_no_temp_file(tmp_path):
    write_photons(tmp_path / "photons.h5", some_photons())
    write_detector(tmp_path / "det.h5", some_detector())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det.h5", "photons.h5"]


def test_same_content_same_bytes(tmp_path):
    photons, det = some_photons(), some_detector()
    write_photons(tmp_path / "a.h5", photons)
    write_detector(tmp_path / "da.h5", det)
    time.sleep(1.1)  # HDF5 timestamps have 1 s resolution: a stored time would now differ
    write_photons(tmp_path / "b.h5", photons)
    write_detector(tmp_path / "db.h5", det)
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()
    assert (tmp_path / "da.h5").read_bytes() == (tmp_path / "db.h5").read_bytes()


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("reader", [Detector.read, read_photons, photons_info])
def test_missing_file(tmp_path, reader):
    with pytest.raises(InputError, match="not found") as excinfo:
        reader(tmp_path / "nothing.h5")
    assert_input_error(excinfo, tmp_path / "nothing.h5", None)


@pytest.mark.parametrize("reader", [Detector.read, read_photons])
def test_not_hdf5(tmp_path, reader):
    path = tmp_path / "notes.h5"
    path.write_text("these are not photons\n" * 100)
    with pytest.raises(InputError) as excinfo:
        reader(path)
    assert_input_error(excinfo, path, None)


@pytest.mark.parametrize("kind", ["detector", "photons"])
def test_truncated_hdf5(tmp_path, kind):
    path = tmp_path / f"{kind}.h5"
    if kind == "detector":
        write_detector(path, some_detector())
    else:
        write_photons(path, some_photons(200))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt") as excinfo:
        Detector.read(path) if kind == "detector" else read_photons(path)
    assert_input_error(excinfo, path, None)


@pytest.mark.parametrize("name", ["qx", "qy", "qz", "corr", "mask", "detd", "ewald_rad"])
def test_detector_dataset_missing(tmp_path, name):
    path = make_detector_file(tmp_path / "det.h5", drop=name)
    with pytest.raises(InputError, match="missing") as excinfo:
        Detector.read(path)
    assert_input_error(excinfo, path, name)


@pytest.mark.parametrize("name", ["num_pix", "place_ones", "place_multi", "count_multi"])
def test_photons_dataset_missing(tmp_path, name):
    path = make_photons_file(tmp_path / "p.h5", drop=name)
    with pytest.raises(InputError, match="missing") as excinfo:
        read_photons(path)
    assert_input_error(excinfo, path, name)


@pytest.mark.parametrize("name", ["qy", "corr", "mask"])
def test_detector_lengths_differ(tmp_path, name):
    value = np.zeros(5, np.uint8 if name == "mask" else np.float64)
    path = make_detector_file(tmp_path / "det.h5", **{name: value})
    with pytest.raises(InputError, match="5 entries but qx has 6") as excinfo:
        Detector.read(path)
    assert_input_error(excinfo, path, name)


def test_a_detector_of_no_pixels_names_qx(tmp_path):
    """qx of shape (0,) was blamed on qy ("has 6 entries but qx has 0")."""
    path = make_detector_file(tmp_path / "det.h5", qx=np.zeros(0))
    with pytest.raises(InputError, match="holds no pixel") as excinfo:
        Detector.read(path)
    assert_input_error(excinfo, path, "qx")


@pytest.mark.parametrize("name, value", [("mask", np.zeros(6, np.float32)), ("qx", np.zeros(6, np.int32)),
                                         ("corr", np.ones((6, 1))), ("detd", np.ones(2))])
def test_detector_wrong_dtype_or_shape(tmp_path, name, value):
    path = make_detector_file(tmp_path / "det.h5", **{name: value})
    with pytest.raises(InputError, match="expected") as excinfo:
        Detector.read(path)
    assert_input_error(excinfo, path, name)


@pytest.mark.parametrize("name", ["qx", "qz", "corr"])
def test_detector_nan(tmp_path, name):
    value = np.ones(6)
    value[4] = np.nan
    path = make_detector_file(tmp_path / "det.h5", **{name: value})
    with pytest.raises(InputError, match="NaN") as excinfo:
        Detector.read(path)
    assert_input_error(excinfo, path, name)
    assert "pixel 4" in str(excinfo.value)


def test_detector_mask_values(tmp_path):
    path = make_detector_file(tmp_path / "det.h5", mask=np.array([0, 1, 2, 3, 0, 0], np.uint8))
    with pytest.raises(InputError, match="0, 1 or 2; found 3 at pixel 3") as excinfo:
        Detector.read(path)
    assert_input_error(excinfo, path, "mask")


@pytest.mark.parametrize("name, value, match", [
    ("place_ones", ([[0.0], [1.0], []], np.float64), "variable-length float64"),
    ("count_multi", ([[2], [3, 4], []], np.float32), "variable-length float32"),
    ("place_multi", np.zeros((3, 2), np.int32), "shape \\(3, 2\\)"),
    ("place_ones", ([[0], [1]], np.int32), "row counts differ"),
])
def test_photons_wrong_dtype_or_shape(tmp_path, name, value, match):
    path = make_photons_file(tmp_path / "p.h5", **{name: value})
    with pytest.raises(InputError, match=match) as excinfo:
        read_photons(path)
    assert_input_error(excinfo, path, name)


@pytest.mark.parametrize("rows, match", [([[2], [3, -4], []], "frame 1: negative photon count \\(-4\\)"),
                                         ([[2], [3, 4], []], None),
                                         ([[1], [3, 4], []], "frame 0: photon count below 2 \\(1\\)")])
def test_photons_bad_counts(tmp_path, rows, match):
    path = make_photons_file(tmp_path / "p.h5", count_multi=rows)
    if match is None:  # the good file reads
        assert read_photons(path).to_dense().sum() == 3 + 2 + 3 + 4
        return
    with pytest.raises(InputError, match=match) as excinfo:
        read_photons(path)
    assert_input_error(excinfo, path, "count_multi")


@pytest.mark.parametrize("name, rows, match", [
    ("place_ones", [[0, 5], [], [10]], "frame 2: pixel index 10 outside \\[0, 10\\)"),
    ("place_multi", [[1], [-1, 3], []], "frame 1: pixel index -1 outside"),
])
def test_photons_pixel_out_of_range(tmp_path, name, rows, match):
    path = make_photons_file(tmp_path / "p.h5", **{name: rows})
    with pytest.raises(InputError, match=match) as excinfo:
        read_photons(path)
    assert_input_error(excinfo, path, name)


def test_photons_row_lengths_differ(tmp_path):
    path = make_photons_file(tmp_path / "p.h5", count_multi=[[2], [3], [4]])
    with pytest.raises(InputError, match="frame 1: place_multi has 2 entries but count_multi has 1") as excinfo:
        read_photons(path)
    assert_input_error(excinfo, path, "count_multi")


def test_errors_in_later_chunks_name_the_frame(tmp_path):
    rows = [[2]] * 7 + [[1]]
    path = make_photons_file(tmp_path / "p.h5", place_ones=[[]] * 8, place_multi=[[0]] * 8, count_multi=rows)
    blocks = iter_photons(path, chunk_frames=3)
    assert next(blocks).num_frames == 3 and next(blocks).num_frames == 3
    with pytest.raises(InputError, match="frame 7: photon count below 2"):
        next(blocks)


def test_check_match(tmp_path):
    det = some_detector()
    check_match(det, 12, "det.h5", "photons.h5")
    with pytest.raises(InputError) as excinfo:
        check_match(det, 4096, tmp_path / "det.h5", tmp_path / "photons.h5")
    text = str(excinfo.value)
    assert "4096" in text and "12 pixels" in text and str(tmp_path / "det.h5") in text
    assert_input_error(excinfo, tmp_path / "photons.h5", "num_pix")
