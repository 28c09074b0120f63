"""recipe 'auto's sharpened starts: the Wilson sigma, the gain and its inverse, which seeds are sharpened, and the
merge's choice between sharpened and plain starts by their free error against the measured amplitudes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_phasing_operators import _blob, _intensity

from spibatch.phasing.algebra import RecipeError
from spibatch.phasing.auto import Auto, schedule
from spibatch.phasing.measurement import prepare
from spibatch.phasing.multistart import choose, merge
from spibatch.phasing.operators import parse_recipe
from spibatch.phasing.settings import PhasingSettings
from spibatch.phasing.sharpen import (MAX_GAIN, blur_back, gain, is_sharpened, measured_free_error, sharpened,
                                      wilson_sigma)
from spibatch.phasing.starts import StartResult, run_starts

SHORT = "Auto(iterations=40, polish=20, period=10)"


def _gaussians(n: int, width: float, seed: int = 0) -> np.ndarray:
    """A sum of 12 Gaussian blobs of ``width`` voxels (N, N, N), centred at N // 2."""
    rng = np.random.default_rng(seed)
    g = np.indices((n, n, n)) - n // 2
    out = np.zeros((n, n, n))
    for centre in rng.normal(0, n / 12, (12, 3)):
        out += rng.uniform(0.5, 1.5) * np.exp(-((g - centre[:, None, None, None]) ** 2).sum(0) / (2 * width ** 2))
    return out


@pytest.mark.parametrize("width", [1.0, 1.6])
def test_the_wilson_sigma_is_the_width_of_gaussian_blobs(width):
    m = prepare(_intensity(_gaussians(48, width)))
    assert wilson_sigma(m) == pytest.approx(width, rel=0.1)


def test_flat_data_have_no_wilson_sigma_and_a_box_falls_off_less_than_blobs():
    flat = prepare(np.ones((24, 24, 24)))
    assert wilson_sigma(flat) == 0.0
    box = np.zeros((48, 48, 48))
    box[18:30, 20:28, 16:32] = 1.0
    assert wilson_sigma(prepare(_intensity(box))) < 0.75 < 0.9 < wilson_sigma(prepare(_intensity(_gaussians(48, 1.0))))


@pytest.mark.parametrize("real", [True, False])
def test_blurring_back_undoes_the_sharpening_and_keeps_the_unmeasured_voxels(real):
    rho = _gaussians(24, 1.5)
    intensity = _intensity(rho)
    g = np.indices(rho.shape) - 12
    intensity[np.sqrt((g ** 2).sum(0)) <= 2] = 0
    m = prepare(intensity, real=real)
    w = gain(m, 0.8)
    assert w.shape == m.amplitude.shape and w.min() == 1.0 and w.max() <= MAX_GAIN
    s = sharpened(m, w)
    measured = m.amplitude >= 0
    assert np.array_equal(s.amplitude >= 0, measured)
    assert np.allclose(s.amplitude[measured], m.amplitude[measured] * w[measured], rtol=1e-5)
    x = np.fft.ifftshift(rho).astype(np.float32 if real else np.complex64)
    k = np.fft.fftfreq(24)
    kz = np.fft.rfftfreq(24) if real else k
    sharp = (np.fft.irfftn(np.fft.rfftn(x) * w, s=x.shape, axes=(0, 1, 2)) if real else np.fft.ifftn(np.fft.fftn(x) * w))
    back = blur_back(sharp.astype(x.dtype), w, real)
    assert back.dtype == x.dtype and np.allclose(back, x, atol=1e-4 * np.abs(x).max())
    assert kz.size == w.shape[-1]


def test_the_free_error_against_the_measured_amplitudes_is_zero_for_the_truth():
    rho = _gaussians(24, 1.5)
    m = prepare(_intensity(rho))
    free = np.zeros(m.amplitude.shape, bool)
    free[3:6, 3:6, 3:6] = True
    truth = np.fft.ifftshift(rho)
    assert measured_free_error(truth, m, free) < 1e-5
    assert measured_free_error(2 * truth, m, free) == pytest.approx(1.0, rel=1e-4)


def _result(seed, sharpen, error, voxels=8):
    support = np.zeros((2, 2, 2), bool)
    support.flat[:voxels] = True
    return StartResult(seed=seed, density=np.zeros((2, 2, 2), np.float32), support=support,
                       errors=np.zeros(1), algorithms=["ER"], final_error=0.1, seconds=0.0, free_error=0.1,
                       sharpen=sharpen, measured_free_error=error)


def test_the_merge_keeps_the_kind_whose_best_start_predicts_the_measured_data_best():
    starts = [_result(1, 0.8, 0.05), _result(2, 0.0, 0.06), _result(3, 0.8, 0.30), _result(4, 0.0, 0.07)]
    assert [r.seed for r in choose(starts)] == [1, 3]
    starts[1].measured_free_error = 0.01
    assert [r.seed for r in choose(starts)] == [2, 4]
    old = _result(6, 0.0, None)                     # a start file written before the error was kept: plain,
    assert [r.seed for r in choose(starts + [old])] == [2, 4, 6]      # comparable with the plain ones only
    plain = [_result(2, 0.0, 0.5), _result(4, 0.0, 0.1)]
    assert choose(plain) == plain
    # 4BED at 128^3: a sharpened start that filled the capsid predicts the free voxels a little better than the
    # plain one that found it hollow, at twice its support: the compact one's kind is kept
    capsid = [_result(8, 0.0, 0.076, voxels=4), _result(11, 0.5, 0.068, voxels=8), _result(2, 0.0, 0.5, voxels=1)]
    assert [r.seed for r in choose(capsid)] == [8, 2]
    capsid[1].support[:] = False
    capsid[1].support.flat[:3] = True           # as compact as the plain one: the better prediction wins
    assert [r.seed for r in choose(capsid)] == [11]


def test_odd_seeds_run_sharpened_even_ones_plain_and_auto_sharpen_0_turns_it_off():
    assert [is_sharpened(s) for s in range(4)] == [False, True, False, True]
    m = prepare(_intensity(_blob(24, 4, seed=3)))
    settings = PhasingSettings(recipe=parse_recipe(SHORT), num_starts=4, keep_best=2, threads=1, fft_backend="scipy")
    results = run_starts(settings.seeds, m, settings)
    assert [r.seed for r in results] == settings.seeds                 # in the order given, whatever ran first
    sigma = 0.7 * wilson_sigma(m)
    assert sigma > 0.3
    for r in results:
        assert r.sharpen == (pytest.approx(sigma) if r.seed % 2 else 0.0)
        assert r.measured_free_error is not None and 0 < r.measured_free_error < 1
        if not r.seed % 2:
            assert r.measured_free_error == r.free_error
        assert np.isfinite(r.density).all() and r.density.dtype == np.float32
    merged = merge(results, m, 2)
    assert {s % 2 for s in merged.kept_seeds} == {choose(results)[0].seed % 2}
    few = PhasingSettings(recipe=parse_recipe(SHORT), num_starts=3, keep_best=2, threads=1, fft_backend="scipy")
    assert all(r.sharpen == 0 for r in run_starts(few.seeds, m, few))     # each kind would merge fewer than 2
    off = PhasingSettings(recipe=parse_recipe("Auto(iterations=40, polish=20, period=10, sharpen=0)"), num_starts=2,
                          keep_best=1, threads=1, fft_backend="scipy")
    assert all(r.sharpen == 0 for r in run_starts(off.seeds, m, off))
    hand = PhasingSettings(recipe=parse_recipe("ER() ** 5"), num_starts=2, keep_best=1, threads=1, fft_backend="scipy")
    assert all(r.sharpen == 0 and r.measured_free_error is None for r in run_starts(hand.seeds, m, hand))


def test_a_sharpened_start_is_the_same_start_whether_run_alone_or_with_others():
    m = prepare(_intensity(_blob(24, 4, seed=3)))
    settings = PhasingSettings(recipe=parse_recipe(SHORT), num_starts=4, keep_best=1, threads=1, fft_backend="scipy")
    together = run_starts([1, 2], m, settings)
    alone = run_starts([1], m, settings)[0]
    assert np.array_equal(together[0].density, alone.density) and together[0].sharpen == alone.sharpen > 0


@pytest.mark.parametrize("value", [-0.1, 1.6])
def test_auto_refuses_a_sharpen_outside_0_to_1_5(value):
    with pytest.raises(RecipeError, match="sharpen must be a number from 0"):
        parse_recipe(f"Auto(sharpen={value})")
    for wrong in ("a", True):
        with pytest.raises(RecipeError, match="sharpen must be a number from 0"):
            Auto(sharpen=wrong)


def test_the_gain_is_capped():
    m = prepare(np.ones((32, 32, 32)))
    assert gain(m, 5.0).max() == pytest.approx(MAX_GAIN) and math.isfinite(float(gain(m, 50.0).max()))


def test_each_kind_meets_every_support_schedule():
    seeds = range(1, 13)
    plain = {schedule(s, paired=True) for s in seeds if not is_sharpened(s)}
    sharp = {schedule(s, paired=True) for s in seeds if is_sharpened(s)}
    assert plain == sharp == set(range(6))
    assert [schedule(s) for s in range(1, 7)] == [1, 2, 3, 4, 5, 0]       # nothing sharpened: as before


def test_starts_come_back_in_the_order_given_even_a_repeated_seed():
    m = prepare(_intensity(_blob(24, 4, seed=3)))
    settings = PhasingSettings(recipe=parse_recipe(SHORT), num_starts=4, keep_best=1, threads=1, fft_backend="scipy")
    results = run_starts([2, 1, 2], m, settings)
    assert [r.seed for r in results] == [2, 1, 2] and [r.sharpen > 0 for r in results] == [False, True, False]
    assert np.array_equal(results[0].density, results[2].density)


def test_the_wilson_fit_needs_five_shells():
    rho = _gaussians(24, 1.0)
    intensity = _intensity(rho)
    g = np.indices(rho.shape) - 12
    r = np.sqrt((g ** 2).sum(0))
    assert wilson_sigma(prepare(np.where(r <= 5.4, intensity, 0))) > 0        # shells 1 .. 5
    assert wilson_sigma(prepare(np.where(r <= 4.4, intensity, 0))) == 0.0      # shells 1 .. 4: too few
