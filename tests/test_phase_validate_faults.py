"""`spibatch phase` and `spibatch validate` on inputs that gave silently wrong numbers (an audit, 2026-12-06): an
intensity not centred at N // 2, a voxel known on one side only, intensities on other q grids, a constant truth,
one kept start's PRTF, a voxel option ignored for intensities, a big-endian raw cube; and the MRC written without
a voxel."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_phasing_operators import _blob, _intensity

from spibatch.errors import InputError
from spibatch.io.mrc import read_mrc
from spibatch.io.results import read_result, write_result
from spibatch.phasing.measurement import check_intensity

N = 32
DQ = 1.0e8
RECIPE = "(HIO(beta=0.9) ** 30 * ShrinkWrap(sigma=2, threshold=0.1)) ** 2 * ER() ** 20"


def cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spibatch", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def pipeline(folder: Path, intensity: str, starts: int = 2, keep: int = 2, extra: str = "") -> Path:
    path = folder / "p.yaml"
    path.write_text(f"name: t\nphasing:\n  intensity: {intensity}\n  recipe: {RECIPE}\n  num_starts: {starts}\n"
                    f"  keep_best: {keep}\n  threads: 1\n  fft: scipy\n{extra}")
    return path


def off_centre(n: int, centre: int) -> np.ndarray:
    """The blob's intensity with q = 0 moved to index ``centre`` on every axis."""
    return np.roll(_intensity(_blob(n, 5, seed=2)), centre - n // 2, axis=(0, 1, 2))


@pytest.mark.parametrize("n", [32, 33])
def test_an_intensity_not_centred_at_n_over_2_is_refused(n):
    """Phased as if centred, it gave cc 0.925 with the truth against 0.982, exit 0 and no word."""
    check_intensity(off_centre(n, n // 2))                              # centred: taken
    with pytest.raises(InputError) as info:
        check_intensity(off_centre(n, n // 2 - 1), source="i.h5")
    assert f"symmetric about index ({n // 2 - 1}, {n // 2 - 1}, {n // 2 - 1}), not about N // 2 = {n // 2}" \
        in str(info.value)


def test_half_a_voxel_off_centre_is_a_warning(caplog):
    """An even edge centred at (N - 1) / 2 (the mean of the two middle voxels): said, not refused."""
    grid = np.indices((N,) * 3) - (N - 1) / 2
    intensity = np.exp(-(grid ** 2).sum(0) / 20.0) * (1 + 0.5 * np.cos(grid[0]) * np.cos(grid[1] / 2))
    with caplog.at_level(logging.WARNING, logger="spibatch"):
        check_intensity(intensity, source="even.h5")
    assert "symmetric about index (15.5, 15.5, 15.5), not about N // 2 = 16" in caplog.text


def test_a_voxel_known_on_one_side_only_is_refused(tmp_path):
    """A density without a voxel against a truth with one (taken as equal: cc 0.65 for 0.999), in validate; and
    phase --truth of an intensity without a Fourier voxel against such a truth (cc 0.66, 114 A for 0.98)."""
    rho = _blob(N, 5, seed=2)
    rho.astype("<f8").tofile(tmp_path / "a.bin")
    write_result(tmp_path / "truth.h5", {"density": rho.astype(np.float32)}, {"density_voxel_size_m": 1e-9})
    done = cli("validate", "a.bin", "truth.h5", "--kind", "density", "--out", "v", cwd=tmp_path)
    assert done.returncode == 2 and "records no voxel while truth.h5's is 1e-09 m" in done.stderr, done.stderr
    assert not (tmp_path / "v").exists()
    done = cli("validate", "a.bin", "truth.h5", "--kind", "density", "--voxel-size-m", "1e-9", "--out", "v2",
               cwd=tmp_path)
    assert done.returncode == 0 and json.loads((tmp_path / "v2/validate/fsc.json").read_text())["cc"] > 0.999
    _intensity(rho).astype("<f8").tofile(tmp_path / "i.bin")
    done = cli("phase", pipeline(tmp_path, "i.bin"), "--truth", "truth.h5", "--out", "r", cwd=tmp_path)
    assert done.returncode == 2 and "the intensity records no Fourier voxel" in done.stderr, done.stderr
    assert "phasing.voxel_size_per_m" in done.stderr and not (tmp_path / "r").exists()


def test_phase_truth_of_intensities_on_other_q_grids_is_refused(tmp_path):
    rho = _blob(N, 5, seed=2)
    write_result(tmp_path / "i.h5", {"intensity": _intensity(rho).astype(np.float32)}, {"voxel_size_per_m": DQ})
    write_result(tmp_path / "truth.h5", {"intensity": _intensity(rho).astype(np.float32),
                                         "density": rho.astype(np.float32)},
                 {"voxel_size_per_m": DQ / 2, "density_voxel_size_m": 2 / (N * DQ)})
    done = cli("phase", pipeline(tmp_path, "i.h5"), "--truth", "truth.h5", "--out", "r", cwd=tmp_path)
    assert done.returncode == 2 and "the intensities sample q differently" in done.stderr, done.stderr


def test_a_constant_truth_is_refused(tmp_path):
    """It was reported resolved "beyond the data edge" (cc 0.11)."""
    rho = _blob(N, 5, seed=2)
    write_result(tmp_path / "i.h5", {"intensity": _intensity(rho).astype(np.float32)}, {"voxel_size_per_m": DQ})
    write_result(tmp_path / "truth.h5", {"density": np.ones((N,) * 3, np.float32)},
                 {"density_voxel_size_m": 1 / (N * DQ)})
    done = cli("phase", pipeline(tmp_path, "i.h5"), "--truth", "truth.h5", "--out", "r", cwd=tmp_path)
    assert done.returncode == 2 and "the truth is constant" in done.stderr, done.stderr


def test_no_voxel_anywhere_one_kept_start_and_the_mrc(tmp_path):
    """Neither file records a voxel (a truth that also holds an intensity: a KeyError after the whole phasing);
    one kept start (its PRTF is 1 by construction: it was read as "above 1/e to the edge of the data"); the
    density MRC with a cell of 0 (an invented 1 A voxel before)."""
    rho = _blob(N, 5, seed=2)
    _intensity(rho).astype("<f8").tofile(tmp_path / "i.bin")
    write_result(tmp_path / "truth.h5", {"intensity": _intensity(rho).astype(np.float32),
                                         "density": rho.astype(np.float32)}, {})
    done = cli("phase", pipeline(tmp_path, "i.bin", starts=1, keep=1), "--truth", "truth.h5", "--out", "r",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "no PRTF resolution from one kept start" in done.stdout, done.stdout
    attrs = read_result(tmp_path / "r/phase/phasing.h5", attrs_only=True)[1]
    assert attrs.get("resolution_shell") is None and attrs.get("resolution_m") is None
    assert read_mrc(tmp_path / "r/phase/density.mrc")[1] in (0, None)
    truth = json.loads((tmp_path / "r/validate/fsc_vs_truth.json").read_text())
    assert truth["cc"] > 0.9 and "data_edge_resolution_m" not in truth


def test_validate_voxel_option_gives_two_intensities_a_scale(tmp_path):
    """--voxel-size-m was ignored for intensities: the table stayed in 1/voxel.  fsc.h5 says its units."""
    rho = _blob(N, 5, seed=2)
    for name in ("a.bin", "b.bin"):
        _intensity(rho).astype("<f8").tofile(tmp_path / name)
    done = cli("validate", "a.bin", "b.bin", "--kind", "intensity", "--voxel-size-m", "3e-10", "--out", "v",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert read_result(tmp_path / "v/validate/fsc.h5", attrs_only=True)[1]["voxel_size_m"] == pytest.approx(3e-10)
    import h5py

    with h5py.File(tmp_path / "v/validate/fsc.h5") as f:       # the units a reader of the table needs
        assert f["frequency"].attrs["units"] == "1/m" and f["radius"].attrs["units"] == "Fourier voxels"


def test_a_big_endian_raw_cube_is_named_as_such(tmp_path):
    from spibatch.io.results import read_volume

    _intensity(_blob(N, 5, seed=2)).astype(">f8").tofile(tmp_path / "i.bin")
    with pytest.raises(InputError, match="a big-endian file"):
        read_volume(tmp_path / "i.bin")


def test_centred_intensities_measured_on_one_side_or_with_hard_edges_pass(caplog):
    """The review's cases: a quadrant, or one half beyond shell 10, unmeasured (the projections alone put the centre
    2.5 voxels off and refused it); an even-edged hard ellipsoid centred at N // 2 (the projections alone warned
    half a voxel off: index 0 has no mirror); sparse Poisson counts (the masked reflections alone are noise)."""
    n = 33
    full = _intensity(_blob(n, 5, seed=2))
    quadrant, half = full.copy(), full.copy()
    quadrant[n // 2 + 1:, n // 2 + 1:, :] = 0
    half[n // 2 + 10:] = 0
    g = np.indices((32,) * 3) - 16
    ellipsoid = (((g / np.array([6, 4, 3])[:, None, None, None]) ** 2).sum(0) < 1).astype(float)
    poisson = np.random.default_rng(0).poisson(full / full.max() * 5).astype(float)
    with caplog.at_level(logging.WARNING, logger="spibatch"):
        for volume in (quadrant, half, _intensity(ellipsoid), poisson):
            check_intensity(volume, source="centred.h5")
    assert "symmetric about" not in caplog.text


@pytest.mark.parametrize("n", [32, 33])
def test_an_intensity_in_fft_order_is_refused(n):
    """q = 0 at index 0 (no fftshift): symmetric about N / 2 when read periodically, so the symmetry test alone
    passed it (odd edges silently), and phasing put q = 0 at the Nyquist corner."""
    with pytest.raises(InputError, match=r"brightest in its corners: q = 0 at index 0 \(FFT order\)"):
        check_intensity(np.fft.ifftshift(_intensity(_blob(n, 5, seed=2))), source="i.h5")


def test_one_hot_voxel_in_a_corner_is_no_fft_order():
    """One zinger of 1e29 in a corner of a centred intensity was read as "brightest in its corners" (FFT order): the
    corners' mean is now taken of the capped amplitudes, as the centring's own."""
    volume = _intensity(_blob(33, 5, seed=2))
    volume[0, 4, 16] = 1e29
    assert check_intensity(volume, source="i.h5").shape == (33, 33, 33)


def test_sparse_counts_off_centre_are_still_caught():
    """Poisson counts of ~1.6 photons a voxel (the peak at 300, corners beyond N / 2 unmeasured), q = 0 three voxels
    off on one axis: the masked reflections alone are noise there; they now search as far as the projections point
    (19 of 20 such passed silently -- the review)."""
    from scipy.ndimage import gaussian_filter

    n, rng = 65, np.random.default_rng(0)
    points = rng.normal(size=(300, 3))                         # 300 atoms in a ball of radius N / 6
    points *= (n / 6 * rng.random(300) ** (1 / 3) / np.linalg.norm(points, axis=1))[:, None]
    rho = np.zeros((n,) * 3)
    np.add.at(rho, tuple((np.round(points).astype(int) + n // 2).T), rng.integers(1, 9, 300))
    full = _intensity(gaussian_filter(rho, 0.7))
    r = np.sqrt(((np.indices(full.shape) - n // 2) ** 2).sum(0))
    base = np.where((r > n // 2) | (r < 3), 0, full)
    shifted = np.zeros_like(base)
    shifted[3:] = base[:-3]
    caught = 0
    for _trial in range(5):
        counts = rng.poisson(shifted / base.max() * 300).astype(float)
        try:
            check_intensity(counts, source="i.h5")
        except InputError as exc:
            caught += "symmetric about index" in str(exc)
    assert caught == 5
