"""CXI stacks -> Dragonfly photons: dense rounding reference, masks, chunked reads, bad input, geometry."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from spibatch.errors import InputError
from spibatch.detector import Detector
from spibatch.io.cxi import cxi_to_photons
from spibatch.io.dragonfly import photons_info, read_photons, write_photons
from spibatch.photons import Photons

DATA = "/entry_1/data_1/data"


def make_cxi(path, frame_shape=(6, 8), num_frames=11, adu=25.0, seed=0, mask=None, mask_at="/entry_1/data_1/mask",
             dtype=np.float32, geometry=None):
    """Poisson photons x adu plus Gaussian read noise, as float ADU; returns the stored stack."""
    rng = np.random.default_rng(seed)
    photons = rng.poisson(1.2, size=(num_frames, *frame_shape))
    data = (photons * adu + rng.normal(0, 0.1 * adu, size=photons.shape)).astype(dtype)
    with h5py.File(path, "w") as f:
        f[DATA] = data
        if mask is not None:
            f[mask_at] = mask
        for name, value in (geometry or {}).items():
            f[name] = value
    return data


def expected_counts(data, adu, bad=None):
    counts = np.rint(data.astype(np.float64) / adu).reshape(len(data), -1)
    if bad is not None:
        counts[:, np.asarray(bad).reshape(-1) != 0] = 0
    return counts.astype(np.int32)


def test_3d_float_adu_equals_dense_rounding(tmp_path):
    data = make_cxi(tmp_path / "run.cxi", adu=25.0)
    result = cxi_to_photons(tmp_path / "run.cxi", tmp_path / "photons.h5", adu_per_photon=25.0, chunk_frames=4)
    assert result == (11, 48) == photons_info(tmp_path / "photons.h5")
    photons = read_photons(tmp_path / "photons.h5")
    expected = expected_counts(data, 25.0)
    assert expected.max() >= 3  # the test data has multi-photon pixels
    assert np.array_equal(photons.to_dense(), expected)
    assert np.array_equal(photons.frame_counts(), expected.sum(axis=1))


def test_4d_modular_with_detector_mask(tmp_path):
    mask = np.zeros((2, 5, 6), np.uint16)
    mask[0, 1, :] = 1
    mask[1, 4, 5] = 8
    data = make_cxi(tmp_path / "run.cxi", frame_shape=(2, 5, 6), num_frames=9, adu=10.0, mask=mask,
                    mask_at="/entry_1/instrument_1/detector_1/mask")
    data_max = data.max()
    assert cxi_to_photons(tmp_path / "run.cxi", tmp_path / "p.h5", adu_per_photon=10.0, chunk_frames=2) == (9, 60)
    dense = read_photons(tmp_path / "p.h5").to_dense()
    assert np.array_equal(dense, expected_counts(data, 10.0, mask))
    assert not dense[:, mask.reshape(-1) != 0].any() and data_max > 10.0


def test_mask_hides_bad_pixels_and_mask_path(tmp_path):
    rng = np.random.default_rng(5)
    data = rng.poisson(1.0, size=(7, 4, 4)).astype(np.float64)
    data[:, 0, 0] = -500.0      # a dead pixel reading negative
    data[:, 3, 2] = np.nan      # a broken pixel
    bad = np.zeros((4, 4), np.uint8)
    bad[0, 0] = bad[3, 2] = 1
    with h5py.File(tmp_path / "run.cxi", "w") as f:
        f[DATA] = data
        f["/my/mask"] = bad[None]  # (1, y, x) is accepted too
    with pytest.raises(InputError, match="NaN"):  # no mask found at the CXI places
        cxi_to_photons(tmp_path / "run.cxi", tmp_path / "p.h5")
    cxi_to_photons(tmp_path / "run.cxi", tmp_path / "p.h5", mask_path="/my/mask")
    dense = read_photons(tmp_path / "p.h5").to_dense()
    assert np.array_equal(dense, expected_counts(np.nan_to_num(data), 1.0, bad))


def test_integer_photon_counted_data(tmp_path):
    counts = np.random.default_rng(2).poisson(0.7, size=(20, 3, 5)).astype(np.uint16)
    with h5py.File(tmp_path / "run.cxi", "w") as f:
        f[DATA] = counts
    cxi_to_photons(tmp_path / "run.cxi", tmp_path / "p.h5")
    assert np.array_equal(read_photons(tmp_path / "p.h5").to_dense(), counts.reshape(20, -1))


def test_reads_in_chunks(tmp_path, monkeypatch):
    make_cxi(tmp_path / "run.cxi", num_frames=10)
    calls, original = [], h5py.Dataset.__getitem__

    def recording(self, args):
        out = original(self, args)
        if self.name == DATA:
            calls.append((args, out.shape))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", recording)
    cxi_to_photons(tmp_path / "run.cxi", tmp_path / "p.h5", chunk_frames=4, adu_per_photon=25.0)
    assert [shape[0] for _, shape in calls] == [4, 4, 2]
    assert [args for args, _ in calls] == [slice(0, 4), slice(4, 8), slice(8, 10)]


def test_negative_counts_name_the_frame(tmp_path):
    data = make_cxi(tmp_path / "run.cxi", adu=25.0)
    with h5py.File(tmp_path / "run.cxi", "r+") as f:
        f[DATA][6, 2, 3] = -40.0  # rounds to -2 photons
    write_photons(tmp_path / "p.h5", Photons.from_dense(np.ones((1, 48), np.int32)))
    before = (tmp_path / "p.h5").read_bytes()
    with pytest.raises(InputError, match="frame 6: 1 pixels round to negative") as excinfo:
        cxi_to_photons(tmp_path / "run.cxi", tmp_path / "p.h5", adu_per_photon=25.0, chunk_frames=4)
    text = str(excinfo.value)
    assert str(tmp_path / "run.cxi") in text and DATA in text and "--clip-negative" in text
    assert (tmp_path / "p.h5").read_bytes() == before  # the older output survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.h5", "run.cxi"]
    cxi_to_photons(tmp_path / "run.cxi", tmp_path / "p.h5", adu_per_photon=25.0, clip_negative=True)
    data[6, 2, 3] = 0
    assert np.array_equal(read_photons(tmp_path / "p.h5").to_dense(), expected_counts(data, 25.0))


@pytest.mark.parametrize("case, field", [("missing file", None), ("no data", DATA), ("2-D data", DATA),
                                         ("mask shape", "/entry_1/data_1/mask"), ("mask_path missing", "/nope"),
                                         ("adu", "adu_per_photon")])
def test_bad_input(tmp_path, case, field):
    path = tmp_path / "run.cxi"
    kwargs = {}
    if case == "no data":
        with h5py.File(path, "w") as f:
            f["/entry_1/data_1/other"] = np.zeros((2, 3, 3))
    elif case == "2-D data":
        with h5py.File(path, "w") as f:
            f[DATA] = np.zeros((3, 3))
    elif case == "mask shape":
        make_cxi(path, mask=np.zeros((8, 6), np.uint8))
    elif case == "mask_path missing":
        make_cxi(path)
        kwargs["mask_path"] = "/nope"
    elif case == "adu":
        make_cxi(path)
        kwargs["adu_per_photon"] = 0.0
    with pytest.raises(InputError) as excinfo:
        cxi_to_photons(path, tmp_path / "p.h5", **kwargs)
    text = str(excinfo.value)
    if case != "adu":
        assert str(path) in text
    if field:
        assert field in text
    assert not (tmp_path / "p.h5").exists()


GEOMETRY = {"/entry_1/instrument_1/detector_1/distance": 0.3, "/entry_1/instrument_1/detector_1/x_pixel_size": 0.512e-3,
            "/entry_1/instrument_1/detector_1/y_pixel_size": 0.512e-3,
            "/entry_1/instrument_1/source_1/energy": 1.239841984e-6 / 6.2e-10 * 1.602176634e-19}


def test_cxi_detector_matches_simulator_geometry(tmp_path):
    from spibatch.config import Geometry

    bad = np.zeros((8, 8), np.uint8)
    bad[0, 5] = 1
    make_cxi(tmp_path / "run.cxi", frame_shape=(8, 8), mask=bad, geometry=GEOMETRY)
    det = Detector.from_cxi(tmp_path / "run.cxi", beamstop_radius_pixels=2)
    ref = (Geometry(detector_pixels=8, pixel_size_m=0.512e-3, detector_distance_m=0.3,
                                 wavelength_m=6.2e-10, beamstop_radius_pixels=2)).detector()
    assert det.num_pix == 64 and det.shape == (8, 8)
    assert np.isclose(det.voxel_size_per_m, ref.voxel_size_per_m, rtol=1e-9)
    assert det.ewald_radius_voxels == pytest.approx(ref.ewald_radius_voxels)
    # CXI pixel (y=r, x=c) is the simulator's pixel (i along x = c, j along y = r)
    q_ref = ref.q_voxels.reshape(8, 8, 3).transpose(1, 0, 2).reshape(64, 3)
    assert np.allclose(det.q_voxels, q_ref)
    assert np.allclose(det.q_voxels[0 * 8 + 5], ref.q_voxels[5 * 8 + 0])  # pixel (y=0, x=5) sits at lab x = +1.5 px
    assert det.q_voxels[0 * 8 + 5, 0] > 0 and det.q_voxels[0 * 8 + 5, 1] < 0
    assert det.mask[0 * 8 + 5] == 2 and (det.mask == 2).sum() == (ref.mask == 2).sum() + 1


def test_cxi_detector_absent_or_unusable(tmp_path):
    make_cxi(tmp_path / "plain.cxi")
    assert Detector.from_cxi(tmp_path / "plain.cxi") is None
    make_cxi(tmp_path / "oblong.cxi", frame_shape=(6, 8), geometry=GEOMETRY)
    with pytest.raises(InputError, match="not a square detector"):
        Detector.from_cxi(tmp_path / "oblong.cxi")
    bad_geometry = dict(GEOMETRY, **{"/entry_1/instrument_1/detector_1/distance": -1.0})
    make_cxi(tmp_path / "neg.cxi", frame_shape=(8, 8), geometry=bad_geometry)
    with pytest.raises(InputError, match="positive") as excinfo:
        Detector.from_cxi(tmp_path / "neg.cxi")
    assert "distance" in str(excinfo.value)


@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f8", "<u2", "<i4"])
def test_fused_kernel_equals_the_dense_reference(dtype):
    """Halves round to even, masked NaN pixels are ignored, a negative count is flagged (or counts 0 with
    clip_negative), whatever the stored dtype and byte order."""
    from spibatch.io.cxi import _to_counts
    from spibatch.kernels.photons_cpu import BAD_NEGATIVE, sparse_counts

    rng = np.random.default_rng(7)
    adu = 4.0
    values = rng.poisson(0.8, size=(37, 91)) * adu + rng.choice([-2.0, -1.0, 0.0, 1.0, 2.0], size=(37, 91))
    values = np.maximum(values, 0) if np.dtype(dtype).kind == "u" else values
    values[3, :5] = [0.5 * adu, 1.5 * adu, 2.5 * adu, 3.5 * adu, 4.5 * adu]   # exact halves: 0, 2, 2, 4, 4
    bad = np.zeros(91, bool)
    bad[[4, 40, 90]] = True
    if np.dtype(dtype).kind == "f":
        values[5, 40] = np.nan
    block = values.astype(dtype)
    reference = _to_counts(block.copy(), 0, bad, adu, False, "x.cxi", DATA)
    assert (reference[3, :4] == [0, 2, 2, 4]).all() and reference.max() >= 3
    for clip in (False, True):
        arrays, flags = sparse_counts(block, bad, adu, clip)
        assert not flags.any() and np.array_equal(Photons(91, *arrays).to_dense(), reference)
    if np.dtype(dtype).kind == "u":
        return
    block[6, 7] = -3 * adu
    arrays, flags = sparse_counts(block, bad, adu, False)
    assert arrays is None and flags[6] == BAD_NEGATIVE and not np.delete(flags, 6).any()
    arrays, _ = sparse_counts(block, bad, adu, True)
    assert np.array_equal(Photons(91, *arrays).to_dense(), _to_counts(block.copy(), 0, bad, adu, True, "x.cxi", DATA))


def test_fused_kernel_flags_what_the_reference_refuses(tmp_path):
    data = make_cxi(tmp_path / "run.cxi", frame_shape=(4, 4), num_frames=6, adu=10.0)
    with h5py.File(tmp_path / "run.cxi", "r+") as f:
        stack = f[DATA][()]
        stack[4, 1, 1] = np.inf
        f[DATA][...] = stack
    with pytest.raises(InputError, match="frame 4: 1 pixels are NaN or inf"):
        cxi_to_photons(tmp_path / "run.cxi", tmp_path / "p.h5", adu_per_photon=10.0, chunk_frames=4)
    assert not (tmp_path / "p.h5").exists() and data.shape == (6, 4, 4)


def test_a_virtual_stack_is_read_where_hdf5_finds_its_sources(tmp_path, monkeypatch):
    """A virtual stack over a missing file is refused (its frames read as fill values: empty patterns ingested);
    one whose absolute source paths moved with it (HDF5 then looks beside the file), or whose relative sources
    lie in HDF5_VDS_PREFIX, is read as HDF5 reads it (the first version refused both)."""
    from spibatch.io.hdf5 import check_other_files

    made = tmp_path / "made"
    made.mkdir()
    frames = np.random.default_rng(0).poisson(2, (5, 8, 8)).astype("f4")
    with h5py.File(made / "src.h5", "w") as f:
        f["d"] = frames
    layout = h5py.VirtualLayout((5, 8, 8), "f4")
    layout[:] = h5py.VirtualSource(str(made / "src.h5"), "d", shape=(5, 8, 8))       # an absolute path
    with h5py.File(made / "stack.cxi", "w") as f:
        f.create_virtual_dataset("/entry_1/data_1/data", layout, fillvalue=0)
    moved = tmp_path / "moved"
    made.rename(moved)                                                                # the old folder gone
    with h5py.File(moved / "stack.cxi", "r") as f:
        assert f["/entry_1/data_1/data"][()].sum() == frames.sum()                   # HDF5 finds it
        check_other_files(f, moved / "stack.cxi")
    (moved / "src.h5").rename(tmp_path / "elsewhere.h5")
    with h5py.File(moved / "stack.cxi", "r") as f, pytest.raises(InputError, match="which is missing"):
        check_other_files(f, moved / "stack.cxi")
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    layout = h5py.VirtualLayout((5, 8, 8), "f4")
    layout[:] = h5py.VirtualSource("src2.h5", "d", shape=(5, 8, 8))
    with h5py.File(tmp_path / "rel.cxi", "w") as f:
        f.create_virtual_dataset("/entry_1/data_1/data", layout, fillvalue=0)
    with h5py.File(prefix / "src2.h5", "w") as f:
        f["d"] = frames
    monkeypatch.setenv("HDF5_VDS_PREFIX", str(prefix))
    monkeypatch.chdir(tmp_path / "moved")
    with h5py.File(tmp_path / "rel.cxi", "r") as f:
        check_other_files(f, tmp_path / "rel.cxi")


def test_saturated_integer_pixels_are_said(tmp_path, caplog):
    """A raw uint16 stack whose unmasked pixels reach 65535: taken as 65535 photons a pixel without a word before
    (EMC fits them as the brightest speckles); now a warning naming the dataset, and none for a stack below it."""
    import logging

    from spibatch.io.cxi import check_frames

    frames = np.random.default_rng(0).poisson(0.5, (4, 8, 8)).astype(np.uint16)
    with h5py.File(tmp_path / "ok.cxi", "w") as f:
        f["/entry_1/data_1/data"] = frames
    frames[2, 3, 3] = 65535
    with h5py.File(tmp_path / "sat.cxi", "w") as f:
        f["/entry_1/data_1/data"] = frames
    with caplog.at_level(logging.WARNING, logger="spibatch"):
        check_frames(tmp_path / "ok.cxi")
        assert "saturated" not in caplog.text
        check_frames(tmp_path / "sat.cxi")
    assert "sat.cxi: entry_1/data_1/data: unmasked pixels reach uint16's largest value (65535)" in caplog.text


def test_a_detector_geometry_other_than_the_centred_default_is_refused(tmp_path):
    """corner_position / basis_vectors were ignored (an audit): an off-centre beam gave |q| 6e7 /m where the
    beam hits, a mirrored detector a mirror-image model.  The default axes, or those turned by 180 degrees, pass."""
    from spibatch.io.cxi import UnsupportedLayout

    n, p = 8, 0.512e-3
    group = "/entry_1/instrument_1/detector_1"

    def layout(basis, centre_px=(n / 2, n / 2)):
        basis = np.asarray(basis, float)
        corner = -(centre_px[0] * basis[0] + centre_px[1] * basis[1])
        corner[2] = 0.3
        return dict(GEOMETRY, **{f"{group}/basis_vectors": basis, f"{group}/corner_position": corner})

    default = [[0, -p, 0], [-p, 0, 0]]
    for name, geometry in (("default", layout(default)), ("turned", layout(-np.asarray(default)))):
        make_cxi(tmp_path / f"{name}.cxi", frame_shape=(n, n), geometry=geometry)
        assert Detector.from_cxi(tmp_path / f"{name}.cxi") is not None
    for name, geometry in (("offcentre", layout(default, (2.5, 3.5))), ("mirror", layout([[0, -p, 0], [p, 0, 0]])),
                           ("rot90", layout([[-p, 0, 0], [0, p, 0]]))):
        make_cxi(tmp_path / f"{name}.cxi", frame_shape=(n, n), geometry=geometry)
        with pytest.raises(UnsupportedLayout, match="puts the pixels elsewhere"):
            Detector.from_cxi(tmp_path / f"{name}.cxi")


def test_cxi_mask_bits_inverted_masks_and_the_second_detector(tmp_path):
    """A CXI bit field (2048: artifact corrected, on every pixel) excluded every pixel it touched; a mask whose 1 marks
    the good pixels (CrystFEL's mask_good) was applied inverted; frames of detector_2 took detector_1's geometry and
    mask."""
    from spibatch.io.cxi import bad_pixels

    bits = np.full((6, 8), 2048, np.uint16)
    bits[2, 3] |= 8                                                    # one dead pixel
    make_cxi(tmp_path / "bits.cxi", mask=bits)
    assert np.flatnonzero(bad_pixels(tmp_path / "bits.cxi")).tolist() == [2 * 8 + 3]
    good = np.ones((6, 8), np.uint8)
    good[0, 0] = 0
    make_cxi(tmp_path / "good.cxi", mask=good)
    with pytest.raises(InputError, match="marks 98% of the pixels bad: is 1 the good pixels' mark"):
        bad_pixels(tmp_path / "good.cxi")
    second = "/entry_1/instrument_1/detector_2"
    geometry = dict(GEOMETRY, **{f"{second}/distance": 0.9, f"{second}/x_pixel_size": 0.512e-3,
                                 f"{second}/y_pixel_size": 0.512e-3})
    one = np.zeros((8, 8), np.uint8)
    one[0, 0] = 1
    with h5py.File(tmp_path / "two.cxi", "w") as f:
        f[f"{second}/data"] = np.ones((3, 8, 8), np.float32)
        f["/entry_1/instrument_1/detector_1/mask"] = one
        for name, value in geometry.items():
            f[name] = value
    det = Detector.from_cxi(tmp_path / "two.cxi", data_path=f"{second}/data")
    assert det.detd_pixels == pytest.approx(0.9 / 0.512e-3) and not (det.mask == 2).any()
    assert bad_pixels(tmp_path / "two.cxi", data_path=f"{second}/data") is None
