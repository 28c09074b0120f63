"""FSC, shell correlation and orientation search (spibatch.validate, spibatch.align)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from spibatch.align import (
    align_intensity,
    aligned_shell_correlation,
    rotate_intensity,
    rotation_grid,
)
from spibatch.errors import InputError
from spibatch.validate import (
    crop_to_common,
    format_table,
    fsc,
    plot_fsc,
    shell_correlation,
)


def _lowpass(volume: np.ndarray, radius: float) -> np.ndarray:
    """Keep Fourier components with |k| <= radius (voxels), drop the rest."""
    n = volume.shape[0]
    k = np.fft.fftfreq(n) * n
    kr = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    return np.fft.ifftn(np.fft.fftn(volume) * (kr <= radius)).real


def _smooth_random(size: int, seed: int, sigma: float = 2.0) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=(size,) * 3), sigma) + 1.0


# ---- FSC ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_fsc_of_a_volume_with_itself_is_one(dtype):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(32, 32, 32)).astype(dtype)
    if dtype is np.complex128:
        a = a + 1j * rng.normal(size=a.shape)
    result = fsc(a, a)
    assert result.radius.tolist() == list(range(17))
    np.testing.assert_allclose(result.fsc, 1.0, atol=1e-12)
    assert result.resolution(0.143) is None and result.resolution(0.5) is None


@pytest.mark.parametrize("n", [32, 33])
def test_fsc_of_independent_noise_is_near_zero(n):
    rng = np.random.default_rng(2)
    result = fsc(rng.normal(size=(n,) * 3), rng.normal(size=(n,) * 3))
    shells = result.radius > 0
    assert np.all(np.abs(result.fsc[shells]) < 4.0 / np.sqrt(result.num_voxels[shells]))


@pytest.mark.parametrize("n", [32, 33])
def test_real_half_space_matches_full_complex_transform(n):
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(n,) * 3), rng.normal(size=(n,) * 3)
    real, full = fsc(a, b), fsc(a.astype(np.complex128), b)
    np.testing.assert_allclose(real.fsc, full.fsc, atol=1e-12)
    np.testing.assert_array_equal(real.num_voxels, full.num_voxels)


def test_fsc_against_low_pass_copy_drops_at_the_cut_off():
    rng = np.random.default_rng(4)
    n, cut = 48, 12.0
    signal = rng.normal(size=(n,) * 3)
    a = signal + 0.05 * rng.normal(size=signal.shape)
    b = _lowpass(signal, cut) + 0.05 * rng.normal(size=signal.shape)
    result = fsc(a, b)
    assert np.all(result.fsc[1:int(cut)] > 0.99)
    assert np.all(np.abs(result.fsc[int(cut) + 2:]) < 0.1)
    for threshold in (0.5, 0.143):
        assert abs(result.crossing_radius(threshold) - cut) <= 1.0
        assert result.resolution(threshold) == pytest.approx(n / result.crossing_radius(threshold))


def test_fsc_of_shifted_delta_is_the_shell_mean_of_the_phase_ramp():
    # a: a point at the centre; b: the same point d voxels along axis 2. A(k) = e^{i phi},
    # B(k) = A(k) e^{-2 pi i k2 d / n}, so FSC(shell) = mean over the shell of cos(2 pi k2 d / n).
    n, d = 32, 3
    a = np.zeros((n,) * 3)
    a[n // 2, n // 2, n // 2] = 1.0
    b = np.roll(a, d, axis=2)
    k = np.fft.fftfreq(n) * n
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    shell = np.rint(np.sqrt(kz ** 2 + ky ** 2 + kx ** 2)).astype(int)
    phase = np.cos(2 * np.pi * kx * d / n)
    expected = [phase[shell == s].mean() for s in range(n // 2 + 1)]
    result = fsc(a, b)
    np.testing.assert_allclose(result.fsc, expected, atol=1e-12)
    np.testing.assert_array_equal(result.num_voxels, [np.sum(shell == s) for s in range(n // 2 + 1)])
    # and the continuous limit, sin(x) / x with x = 2 pi r d / n, at mid radii
    x = 2 * np.pi * result.radius[4:12] * d / n
    np.testing.assert_allclose(result.fsc[4:12], np.sin(x) / x, atol=0.06)


def test_fsc_of_two_noisy_copies_is_snr_over_one_plus_snr():
    rng = np.random.default_rng(5)
    signal = rng.normal(size=(48,) * 3)
    a = signal + rng.normal(size=signal.shape)           # SNR 1 in every shell: FSC = 1 / 2
    b = signal + rng.normal(size=signal.shape)
    result = fsc(a, b)
    shells = result.radius >= 3
    assert np.all(np.abs(result.fsc[shells] - 0.5) < 4.0 / np.sqrt(result.num_voxels[shells]))


def test_crossing_skips_dc_and_empty_shells():
    from spibatch.validate import FSCResult

    def curve(values):
        r = np.arange(len(values), dtype=float)
        return FSCResult(r, r / 10, np.array(values, float), np.ones(len(values), np.int64), 10)

    assert curve([np.nan, 0.9, 0.7, 0.3, 0.1]).crossing_radius(0.5) == pytest.approx(2.5)
    assert curve([1.0, 0.9, np.nan, 0.3, 0.1]).crossing_radius(0.5) == pytest.approx(1 + 2 * 0.4 / 0.6)
    assert curve([-1.0, 0.9, 0.7, 0.3]).crossing_radius(0.5) == pytest.approx(2.5)  # DC sign ignored
    never = curve([1.0, 0.9, 0.9, 0.9])
    assert never.crossing_radius(0.143) is None and never.resolution(0.143) is None
    # means of opposite sign (DC shell at -1) do not make the resolution infinite
    rng = np.random.default_rng(11)
    signal = rng.normal(size=(32,) * 3)
    noisy = _lowpass(signal, 8.0) + 0.05 * rng.normal(size=signal.shape)
    result = fsc(signal - signal.mean() + 1.0, noisy - noisy.mean() - 1.0)
    assert result.fsc[0] == pytest.approx(-1.0) and abs(result.crossing_radius(0.5) - 8.0) <= 1.0


def test_frequencies_and_resolution_in_metres():
    rng = np.random.default_rng(6)
    signal = rng.normal(size=(40,) * 3)
    voxel = 2e-9
    result = fsc(signal, _lowpass(signal, 10.0) + 0.05 * rng.normal(size=signal.shape), voxel_size=voxel)
    assert result.unit == "m"
    np.testing.assert_allclose(result.frequency, result.radius / (40 * voxel))
    r = result.crossing_radius(0.143)
    assert result.resolution(0.143) == pytest.approx(40 * voxel / r)
    assert 40 * voxel / 11 <= result.resolution(0.143) <= 40 * voxel / 9


def test_fsc_table_and_plot(tmp_path):
    rng = np.random.default_rng(7)
    signal = rng.normal(size=(24,) * 3)
    result = fsc(signal, _lowpass(signal, 6.0) + 0.05 * rng.normal(size=signal.shape), voxel_size=1e-9)
    table = format_table(result)
    lines = table.splitlines()
    assert lines[0].split()[0] == "shell" and len(lines) == 1 + 13 + 2
    expected_angstrom = result.resolution(0.143) / 1e-10   # lengths are shown in Angstrom
    assert lines[-1] == f"resolution at FSC = 0.143: {expected_angstrom:.4g} A"
    assert "never below" in format_table(fsc(signal, signal))
    png = tmp_path / "plots" / "fsc.png"
    plot_fsc(result, png, title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in png.parent.iterdir()) == ["fsc.png"]  # no temporary left


def test_a_curve_never_below_names_the_nyquist_limit_only_on_an_even_grid():
    """A 23^3 grid's shell 11 (28.48 A at a 13.62 A voxel) was called "the Nyquist limit" (27.24 A): it is the
    last full shell; a 24^3 grid's shell 12 is Nyquist (2 voxels)."""
    signal = np.random.default_rng(8).normal(size=(23,) * 3)
    odd = format_table(fsc(signal, signal, voxel_size=13.62e-10))
    assert "at least 28.48 A, shell 11's, the last full shell)" in odd and "Nyquist" not in odd
    even = format_table(fsc(signal[:-1, :-1, :-1].copy(), signal[:-1, :-1, :-1].copy(), voxel_size=13.62e-10))
    assert "at least 27.24 A, the Nyquist limit)" in even


@pytest.mark.parametrize("a, b, named, field", [
    (np.zeros((8, 8, 8)), np.zeros((8, 8, 9)), "first.mrc", "shape"),
    (np.zeros((8, 8)), np.zeros((8, 8)), "first.mrc", "shape"),
    (np.zeros((8, 8, 9)), np.zeros((8, 8, 9)), "first.mrc", "shape"),
    (np.zeros((8, 8, 8)), np.full((8, 8, 8), np.nan), "truth.h5", "values"),
])
def test_fsc_bad_input_is_one_line_naming_the_file_and_field(a, b, named, field):
    with pytest.raises(InputError) as err:
        fsc(a, b, names=("first.mrc", "truth.h5"))
    assert err.value.path == named and err.value.field == field and err.value.fix
    assert "\n" not in str(err.value)
    with pytest.raises(InputError) as err:   # without names: 'a' and 'b'
        fsc(a, b)
    assert err.value.path == named.replace("first.mrc", "a").replace("truth.h5", "b")


def test_fsc_shape_mismatch_names_both_files():
    with pytest.raises(InputError) as err:
        fsc(np.zeros((8, 8, 8)), np.zeros((9, 9, 9)), names=("runs/x/phase/density.mrc", "truth.h5"))
    message = str(err.value)
    assert message.startswith("runs/x/phase/density.mrc: shape: shape (8, 8, 8), but truth.h5 is (9, 9, 9)")


# ---- shell correlation ----------------------------------------------------------------------

def test_crop_to_common_keeps_the_centres_together():
    big = np.zeros((93,) * 3)
    small = np.zeros((91,) * 3)
    big[46, 46, 46] = small[45, 45, 45] = 1.0
    big[46 + 30, 46, 46 - 20] = small[45 + 30, 45, 45 - 20] = 2.0
    x, y = crop_to_common(big, small)
    assert x.shape == y.shape == (91,) * 3
    np.testing.assert_array_equal(x, small)
    _, x2 = crop_to_common(small, big)  # either order
    np.testing.assert_array_equal(x2, small)


def test_shell_correlation_crops_91_against_93():
    truth = _smooth_random(91, seed=8)
    padded = np.pad(truth, 1, constant_values=-5.0)          # 93^3, centre 46 == truth centre 45
    assert shell_correlation(padded, truth, 6, 31) == pytest.approx(1.0, abs=1e-12)
    assert shell_correlation(truth, padded[None], 6, 31) == pytest.approx(1.0, abs=1e-12)
    shifted = np.pad(truth, ((2, 0), (1, 1), (1, 1)))        # off by one voxel along axis 0
    assert shell_correlation(shifted, truth, 6, 31) < 0.99


def test_shell_correlation_radial_average_and_mask():
    truth = _smooth_random(41, seed=9)
    r = np.sqrt(((np.indices(truth.shape) - 20) ** 2).sum(0))
    profile = 1e3 * np.exp(-np.rint(r) / 3.0)
    # a function of the shell index is removed exactly; without removal it dominates the correlation
    assert shell_correlation(truth + profile, truth, 3, 15) == pytest.approx(1.0)
    assert shell_correlation(truth + profile, truth, 3, 15, remove_radial_average=False) < 0.5
    holes = truth.copy()
    holes[20, 20, 25:30] = np.nan
    holes[25, 20, 20] = -1.0
    with pytest.raises(InputError, match="mask='valid'"):
        shell_correlation(holes, truth, 3, 15)
    assert shell_correlation(holes, truth, 3, 15, mask="valid") == pytest.approx(1.0)
    keep = np.isfinite(holes) & (holes >= 0)
    assert shell_correlation(holes, truth, 3, 15, mask=keep) == pytest.approx(1.0)
    with pytest.raises(InputError, match="need 0 <= r_min < r_max, got r_min=15, r_max=3"):
        shell_correlation(truth, truth, 15, 3)


@pytest.fixture(scope="module")
def small_truth_and_model(small_dataset):
    truth = np.fromfile(small_dataset / "intensities.bin", dtype=np.float64).reshape(91, 91, 91)
    with h5py.File(small_dataset / "dragonfly-run" / "output_030.h5", "r") as f:
        model = f["intens"][0]
    return truth, model


def test_shell_correlation_dragonfly_model_unaligned(small_truth_and_model):
    truth, model = small_truth_and_model
    assert model.shape == (93, 93, 93)
    assert shell_correlation(truth, truth, 6, 31) == pytest.approx(1.0)
    cc = shell_correlation(model, truth, 6, 31)
    assert -1.0 <= cc <= 1.0
    assert abs(cc) < 0.3          # an EMC model comes out in an arbitrary orientation


# ---- orientation search ---------------------------------------------------------------------

def _angle_deg(m1: np.ndarray, m2: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(m1.T @ m2) - 1) / 2, -1, 1))))


def test_rotation_grid_is_proper_and_spread():
    mats = rotation_grid(500)
    np.testing.assert_allclose(np.linalg.det(mats), 1.0)
    np.testing.assert_allclose(mats @ mats.transpose(0, 2, 1), np.broadcast_to(np.eye(3), mats.shape),
                               atol=1e-12)
    # every rotation is within ~1.6x the nominal spacing of some grid point
    from scipy.spatial.transform import Rotation

    probes = Rotation.random(200, random_state=0).as_matrix()
    nearest = [min(_angle_deg(p, m) for m in mats) for p in probes]
    assert max(nearest) < 1.6 * np.degrees((6 * np.pi / 500) ** (1 / 3))


def test_align_recovers_a_known_rotation():
    from scipy.spatial.transform import Rotation

    volume = _smooth_random(41, seed=10, sigma=1.5)        # no symmetry, not centrosymmetric
    rotation = Rotation.from_euler("zyx", [40, 70, -20], degrees=True).as_matrix()
    rotated = rotate_intensity(volume, rotation, order=3)   # rotated(x) = volume(R x)
    assert abs(shell_correlation(rotated, volume, 3, 15)) < 0.3
    result = align_intensity(rotated, volume, 3, 15, num_rotations=2000)
    assert not result.inverted
    assert _angle_deg(result.rotation, rotation.T) < 1.0    # volume(x) = rotated(R^T x)
    assert result.cc > 0.99
    twin = align_intensity(rotated[::-1, ::-1, ::-1], volume, 3, 15, num_rotations=2000)
    assert twin.inverted and twin.cc > 0.99


@pytest.mark.slow
def test_align_dragonfly_model_to_truth(small_truth_and_model):
    # README: "CC = 0.892 after best rotation"; spibatch.align's docstring says why ours is 0.993
    truth, model = small_truth_and_model
    result = align_intensity(model, truth, 6, 31)
    assert result.cc > 0.98
    assert aligned_shell_correlation(model, truth, result, 6, 31) == pytest.approx(result.cc, abs=0.005)


def test_two_intensities_are_compared_only_in_the_shells_both_measure_whole(small_truth_and_model):
    """Dragonfly's model against its truth: the shells at the beam stop's rim correlate below zero (-0.41, -0.20
    at shells 4, 5) and were read as a resolution of 22.75 voxels; from one shell outside the hole (as the
    detector's shell_range) every shell to the data's edge stays above 0.95 -- the resolution is "never below"."""
    from spibatch.align import compare_intensities, measured_shells
    from spibatch.validate import crop_to_common

    truth, model = small_truth_and_model
    r_min, r_max = measured_shells(*crop_to_common(model, truth))
    assert r_min >= 6 and r_max >= 38
    summary = compare_intensities(model, truth)
    curve = summary["_result"]
    inside = (curve.radius >= r_min) & (curve.radius <= r_max)
    assert np.isnan(curve.fsc[~inside]).all() and np.nanmin(curve.fsc[inside]) > 0.5
    assert curve.resolution(0.5) is None and summary["cc"] > 0.99
    text = format_table(curve)
    assert f"shell {int(r_max)}'s, the last compared" in text and "Nyquist" not in text


# ---- `spibatch validate A B`: the validate stage on two volumes, aligned first ------------------------------

def _cli(*args, cwd):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "spibatch", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_validate_turns_an_intensity_onto_its_truth(tmp_path):
    """Two intensities, one a rotated copy of the other: validate aligns them first (an FSC of the raw pair
    would be meaningless), so the shells correlate near 1 and the rotation is reported."""
    import json

    from scipy.spatial.transform import Rotation

    from spibatch.io.results import write_result

    truth = np.abs(_smooth_random(31, seed=3, sigma=1.2)) + 0.05
    turned = rotate_intensity(truth, Rotation.from_euler("zyx", [30, 50, -15], degrees=True).as_matrix(), order=3)
    turned[turned <= 0] = 1e-6
    write_result(tmp_path / "model.h5", {"intensity": turned.astype(np.float32)}, {})
    write_result(tmp_path / "truth.h5", {"intensity": truth.astype(np.float32)}, {})
    from spibatch.validate import shell_correlation_curve

    raw = shell_correlation_curve(turned, truth)
    done = _cli("validate", "model.h5", "truth.h5", "--out", "v", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "v" / "validate" / "fsc.json").read_text())
    assert summary["kind"] == "intensity" and summary["cc"] > 0.95 and not summary["inverted"]
    aligned = np.asarray(_fsc_of(tmp_path / "v" / "validate" / "fsc.h5"))
    assert np.nanmean(aligned[2:12]) > 0.9 > np.nanmean(raw.fsc[2:12]) + 0.2     # aligned, not raw
    assert "turned onto truth.h5" in done.stdout and "cc 0.9" in done.stdout


def _fsc_of(path):
    from spibatch.io.results import read_result

    return read_result(path)[0]["fsc"]


def test_validate_compares_densities_of_different_boxes_and_voxels(tmp_path):
    """A density phased in a 40^3 box against a truth in a 21^3 box on a twice finer voxel: resampled, both in
    one box, aligned by translation; was refused for the different box sizes."""
    import json

    from spibatch.io.mrc import write_mrc

    x = np.arange(21) - 10
    blob = np.exp(-((x[:, None, None] / 3.0) ** 2 + (x[None, :, None] / 2.0) ** 2 + (x[None, None, :] / 4.0) ** 2))
    blob += 0.5 * np.exp(-(((x[:, None, None] - 4) / 2.0) ** 2 + (x[None, :, None] / 2.0) ** 2
                           + ((x[None, None, :] + 3) / 2.0) ** 2))
    write_mrc(tmp_path / "truth.mrc", blob.astype(np.float32), 1.0)            # 1 A voxels
    from spibatch.phasing.compare import resample

    coarse = resample(blob, 0.5)                                                # the same object on 2 A voxels
    box = np.zeros((40, 40, 40))
    c = coarse.shape[0]
    box[7:7 + c, 9:9 + c, 12:12 + c] = coarse                                  # off centre
    write_mrc(tmp_path / "phased.mrc", box.astype(np.float32), 2.0)
    done = _cli("validate", "phased.mrc", "truth.mrc", "--out", "v", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "v" / "validate" / "fsc.json").read_text())
    assert summary["kind"] == "density" and summary["truth_resampled"] and summary["cc"] > 0.9


def test_voxel_size_option_is_for_the_file_that_does_not_say(tmp_path):
    """An MRC of 2 A voxels against a Dragonfly .bin (no voxel) of the same object on 1 A voxels, `--voxel-size-m
    1e-10` for the .bin: the MRC keeps its own 2 A (the option overrode it: no resampling, cc 0.25, a resolution
    of 17 A), with a warning that the option does not apply to it."""
    import json

    from spibatch.io.mrc import write_mrc
    from spibatch.phasing.compare import resample

    x = np.arange(41) - 20
    fine = np.exp(-((x[:, None, None] / 4.0) ** 2 + (x[None, :, None] / 3.0) ** 2 + (x[None, None, :] / 5.0) ** 2))
    fine += 0.7 * np.exp(-(((x[:, None, None] - 6) / 2.5) ** 2 + (x[None, :, None] / 2.5) ** 2
                           + ((x[None, None, :] + 5) / 2.5) ** 2))
    fine.tofile(tmp_path / "fine.bin")                                          # float64, 1 A, no voxel
    write_mrc(tmp_path / "coarse.mrc", resample(fine, 0.5).astype(np.float32), 2.0)
    done = _cli("validate", "coarse.mrc", "fine.bin", "--kind", "density", "--voxel-size-m", "1e-10", "--out", "v",
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "v" / "validate" / "fsc.json").read_text())
    assert summary["truth_resampled"] and summary["cc"] > 0.95, summary
    assert done.stderr.count("coarse.mrc records its voxel") == 1, done.stderr


def test_validate_asks_what_an_ambiguous_volume_holds(tmp_path):
    """A Dragonfly .bin says nothing about what it holds: one line asking for --kind, nothing created."""
    np.zeros((9, 9, 9)).tofile(tmp_path / "map.bin")
    from spibatch.io.results import write_result

    write_result(tmp_path / "truth.h5", {"density": np.ones((9, 9, 9), np.float32)}, {})
    done = _cli("validate", "map.bin", "truth.h5", "--out", "v", cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "map.bin" in lines[0] and "--kind" in lines[0], done.stderr
    assert not (tmp_path / "v").exists() and not (tmp_path / "runs").exists()


def test_densities_are_compared_in_the_dataset_named(tmp_path):
    """`spibatch validate A B --dataset mine --kind density`: the densities are read from `mine` (the density side
    read `density` whatever --dataset said: a file without one failed after its shape had passed)."""
    import subprocess
    import sys

    blob = np.exp(-((np.indices((11, 11, 11)) - 5) ** 2).sum(0) / 6.0).astype(np.float32)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["mine"], f["density"] = blob, np.ones_like(blob)     # `density` would compare a constant
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f["mine"] = blob
    done = subprocess.run([sys.executable, "-m", "spibatch", "validate", "a.h5", "b.h5", "--dataset", "mine",
                           "--kind", "density", "--out", "v"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cc 1.0000" in done.stdout and "never below 0.5" in done.stdout, done.stdout


@pytest.mark.parametrize("n", [32, 33])
def test_an_even_intensity_is_centred_where_the_phasing_centres_it(n):
    """q = 0 at index N // 2 for every edge (numpy's fftshift, the phasing's convention): two intensities of one
    object, one turned by 90 degrees, agree to 1e-6 (an even edge was taken about (N - 1) // 2: cc 0.994 and a
    resolution of 13 A for identical data)."""
    from spibatch.align import compare_intensities

    rng = np.random.default_rng(7)
    grid = np.indices((n,) * 3) - n // 2
    rho = sum(w * np.exp(-((grid - np.asarray(c)[:, None, None, None]) ** 2).sum(0) / (2 * 2.0 ** 2))
              for w, c in zip(rng.uniform(0.5, 1.5, 4), rng.integers(-5, 6, (4, 3))))
    turned = rho.transpose(1, 0, 2)[(2 * (n // 2) - np.arange(n)) % n]     # (x, y) -> (y, -x) about n // 2

    def intensity(density):
        return np.abs(np.fft.fftshift(np.fft.fftn(density))) ** 2

    summary = compare_intensities(intensity(turned), intensity(rho))
    assert summary["cc"] > 0.999999, summary["cc"]
    assert np.nanmin(summary["_result"].fsc[1:]) > 0.9999
