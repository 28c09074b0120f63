"""Phasing: the operator algebra, the recipe parser, and the kernels against plain NumPy."""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.fft
from scipy.ndimage import gaussian_filter

from spibatch.kernels import phasing_cpu as k
from spibatch.phasing.fft import FFTEngine, have_fftw
from spibatch.phasing.measurement import full_spectrum, prepare
from spibatch.phasing.operators import ER, HIO, RecipeError, ShrinkWrap, parse_recipe
from spibatch.phasing.reconstruction import Reconstruction

DEFAULT = "(HIO(beta=0.9) ** 50 * ShrinkWrap(sigma=2, threshold=0.1)) ** 10 * ER() ** 100"


@pytest.mark.parametrize("text", [DEFAULT, "ER() ** 10", "RAAR(beta=0.75) ** 20 * DM() ** 5 * ER()",
                                  "(HIO() ** 3 * (ER() ** 2 * ShrinkWrap(keep=0.1)) ** 2) ** 4"])
def test_recipe_prints_back_as_written(text):
    assert repr(parse_recipe(text)) == text


def test_python_algebra_equals_parsed_recipe():
    built = (HIO(beta=0.9) ** 50 * ShrinkWrap(sigma=2, threshold=0.1)) ** 10 * ER() ** 100
    assert built == parse_recipe(DEFAULT)
    assert repr(built) == DEFAULT
    assert built.iterations() == 600


@pytest.mark.parametrize("text, words", [
    ("HIO() ** 10 * Foo()", "unknown operator 'Foo'"),
    ("HIO ** 10", "HIO needs parentheses"),
    ("HIO(gamma=1) ** 10", "no parameter 'gamma'"),
    ("HIO(beta=1.5)", "beta must be in"),
    ("ER() ** 2.5", "whole number"),
    ("ShrinkWrap(threshold=1.5) * ER()", "threshold must be in [0.001, 0.95]"),
    ("ShrinkWrap(threshold=1e-300) * ER()", "threshold must be in [0.001, 0.95]"),
    ("ShrinkWrap(threshold=0.999999) * ER()", "threshold must be in [0.001, 0.95]"),
    ("ShrinkWrap(sigma=1e300) * ER()", "sigma must be in (0, 100.0]"),
    ("ShrinkWrap(keep=0.99999) * ER()", "keep must be 0 (off) or a fraction"),
    ("ShrinkWrap(keep=1e-9) * ER()", "keep must be 0 (off) or a fraction"),
    ("DM(beta=1e-300) ** 10", "DM: beta must be in [0.01, 1.0]"),
    ("Auto(sigma=1e300, sigma_end=1e300)", "sigma <= 100 voxels"),
    ("HIO() ** \u0663", "expected a number, found '\u0663'"),      # an Arabic-Indic 3 is not a repeat count
    ("ER() + HIO()", "use operators, * and ** only"),
    ("__import__('os')", "unknown operator '__import__'"),
    ("HIO(0.9)", "give parameters by name"),
    ("ER() **", "cannot read the recipe"),
])
def test_bad_recipes_say_what_is_wrong(text, words):
    with pytest.raises(RecipeError) as info:
        parse_recipe(text)
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def _blob(n: int, radius: float, seed: int = 0) -> np.ndarray:
    """A smooth, positive, asymmetric object (N, N, N), centred at N // 2."""
    rng = np.random.default_rng(seed)
    g = np.indices((n, n, n)) - n // 2
    r = np.sqrt((g ** 2).sum(0))
    rho = np.where(r < radius, 1 + rng.random((n, n, n)), 0.0)
    rho[(g[0] > 1) & (r < radius)] *= 2
    return gaussian_filter(rho, 1.0)


def _intensity(rho: np.ndarray) -> np.ndarray:
    return np.abs(np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(rho)))) ** 2


def test_recipe_runs_in_reading_order():
    m = prepare(_intensity(_blob(24, 4)))
    rec = Reconstruction(m, np.ones((24,) * 3, bool), threads=1, fft_backend="scipy")
    parse_recipe("HIO() ** 2 * (ER() * RAAR()) ** 2 * DM()")(rec)
    assert [h["algorithm"] for h in rec.histories[0]] == ["HIO", "HIO", "ER", "RAAR", "ER", "RAAR", "DM"]
    assert [h["iteration"] for h in rec.histories[0]] == list(range(1, 8))


@pytest.mark.parametrize("n", [16, 17])
def test_modulus_projection_on_a_half_spectrum_matches_numpy(n):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, n, n)).astype(np.float32)
    intensity = rng.random((n, n, n)) + 0.1
    intensity[n // 2, n // 2, n // 2 - 1: n // 2 + 2] = 0         # a few free voxels (a beam stop)
    m = prepare(intensity)
    amp_full = m.amplitude_full().astype(np.float64)
    spectrum = np.fft.fftn(x)
    free = amp_full < 0
    want = np.where(free, spectrum, amp_full * np.exp(1j * np.angle(spectrum)))
    err_want = np.sum((np.abs(spectrum) - amp_full)[~free] ** 2)
    half = scipy.fft.rfftn(x).astype(np.complex64)
    err, norm = k.modulus_project(half, m.amplitude, 1.0, n, True)
    assert np.allclose(full_spectrum(half, n), want, rtol=2e-4, atol=2e-4 * np.abs(want).max())
    assert err == pytest.approx(err_want, rel=1e-4)
    assert norm == pytest.approx(np.sum(amp_full[~free] ** 2), rel=1e-5)


def test_friedel_average_fills_voxels_measured_on_one_side():
    n = 15
    rng = np.random.default_rng(2)
    intensity = rng.random((n, n, n)) + 1
    c = n // 2
    intensity[c + 3, c, c] = 0                     # measured only at -q
    m = prepare(intensity)
    full = m.amplitude_full()
    k3 = np.fft.ifftshift(np.arange(n) - c)        # FFT-ordered frequency per index
    i = int(np.flatnonzero(k3 == 3)[0])
    j = int(np.flatnonzero(k3 == -3)[0])
    assert full[i, 0, 0] == pytest.approx(np.sqrt(intensity[c - 3, c, c]), rel=1e-6)
    assert full[j, 0, 0] == full[i, 0, 0]
    # a voxel measured on both sides holds the mean of the two
    a, b = intensity[c + 1, c + 2, c], intensity[c - 1, c - 2, c]
    i1 = int(np.flatnonzero(k3 == 1)[0])
    i2 = int(np.flatnonzero(k3 == 2)[0])
    assert full[i1, i2, 0] ** 2 == pytest.approx((a + b) / 2, rel=1e-5)


@pytest.mark.parametrize("update, expect", [
    (lambda x, y, s: k.update_er(x, y, s, True), lambda x, y, keep: np.where(keep, y, 0)),
    (lambda x, y, s: k.update_hio(x, y, s, True, np.float32(0.9)), lambda x, y, keep: np.where(keep, y, x - 0.9 * y)),
])
def test_real_space_updates_match_numpy(update, expect):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(9, 9, 9)).astype(np.float32)
    y = rng.normal(size=(9, 9, 9)).astype(np.float32)
    s = rng.random((9, 9, 9)) > 0.5
    want = expect(x, y, s & (y > 0))
    update(x, y, s)
    assert np.allclose(x, want, atol=1e-6)


def test_raar_update_is_luke_formula():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(9, 9, 9)).astype(np.float32)
    y = rng.normal(size=(9, 9, 9)).astype(np.float32)
    s = rng.random((9, 9, 9)) > 0.5
    beta = 0.8
    z = 2 * y - x
    ps_z = np.where(s & (z > 0), z, 0)
    want = beta * ps_z + beta * x + (1 - 2 * beta) * y     # beta/2 (R_S R_M + I) x + (1 - beta) P_M x
    k.update_raar(x, y, s, True, np.float32(beta))
    assert np.allclose(x, want, atol=1e-5)


def test_shrinkwrap_blur_is_a_periodic_gaussian_and_keep_uses_the_histogram():
    n = 24
    rho = _blob(n, 5).astype(np.float32)
    m = prepare(_intensity(rho))
    rec = Reconstruction(m, np.ones((n,) * 3, bool), initial=np.fft.ifftshift(rho), fft_backend="scipy")
    ShrinkWrap(sigma=2, threshold=0.2)(rec)
    blurred = gaussian_filter(np.fft.ifftshift(rho).astype(np.float64), 2.0, mode="wrap", truncate=8)
    assert rec.support.shape == (1, n, n, n)                       # one start, on the CPU
    assert np.array_equal(rec.support[0], blurred > 0.2 * blurred.max()) or \
        np.count_nonzero(rec.support[0] != (blurred > 0.2 * blurred.max())) <= 4    # ties at the edge
    ShrinkWrap(sigma=2, keep=0.05)(rec)
    assert abs(rec.support.sum() - 0.05 * n ** 3) <= 0.01 * n ** 3


@pytest.mark.skipif(not have_fftw(), reason="pyFFTW (the [fftw] extra) is not installed")
def test_fftw_and_scipy_engines_agree():
    n = 20
    rng = np.random.default_rng(5)
    engines = [FFTEngine(n, threads=2, backend=b) for b in ("fftw", "scipy")]
    x = rng.normal(size=(n,) * 3).astype(np.float32)
    out = []
    for e in engines:
        e.x[...] = x
        spec = e.forward().copy()
        back = e.inverse(spec.copy()).copy()
        out.append((spec, back))
    assert np.allclose(out[0][0], out[1][0], atol=1e-3)
    assert np.allclose(out[0][1], out[1][1], atol=1e-2)
    assert np.allclose(out[0][1], x * n ** 3, rtol=1e-4, atol=1e-2)    # both unnormalised


@pytest.mark.parametrize("algorithm", ["HIO() ** 150 * ER() ** 50", "RAAR() ** 150 * ER() ** 50",
                                       "DM() ** 100 * ER() ** 50"])
def test_each_algorithm_converges_with_the_true_support(algorithm):
    n = 32
    rho = _blob(n, 5)
    intensity = _intensity(rho)
    g = np.indices((n,) * 3) - n // 2
    intensity[np.sqrt((g ** 2).sum(0)) < 1.5] = 0                          # beam stop
    m = prepare(intensity)
    support = np.fft.ifftshift(rho > 0.01 * rho.max())
    rec = Reconstruction(m, support, seeds=[3], fft_backend="scipy")
    parse_recipe(algorithm)(rec)
    errors = [h["error"] for h in rec.histories[0]]
    assert errors[-1] < 0.02 < errors[0], (errors[0], errors[-1])


def test_er_never_increases_the_error():
    """ER is a pair of projections: the Fourier error cannot grow (Fienup 1982); it stagnates instead."""
    n = 32
    rho = _blob(n, 5)
    m = prepare(_intensity(rho))
    rec = Reconstruction(m, np.fft.ifftshift(rho > 0.01 * rho.max()), seeds=[3], fft_backend="scipy")
    (ER() ** 100)(rec)
    errors = np.array([h["error"] for h in rec.histories[0]])
    assert np.all(np.diff(errors) <= 1e-5 * errors[:-1])
    assert errors[-1] < 0.2 * errors[0]


# ---------------------------------------------------------------- recipe limits (issue 12) and pickling

@pytest.mark.parametrize("count", [5_000, 100_000])
def test_a_recipe_of_many_chained_operators_is_refused_without_recursion(count):
    for text in (" * ".join(["ER()"] * count), "*".join(["ER()"] * count)):
        with pytest.raises(RecipeError) as info:
            parse_recipe(text)
        assert "characters long" in str(info.value) or "more than 500 operators" in str(info.value)
        assert "\n" not in str(info.value) and len(str(info.value)) < 300
    with pytest.raises(RecipeError, match="more than 500 operators"):
        parse_recipe("*".join(["ER()"] * 501))
    assert parse_recipe("*".join(["ER()"] * 500)).iterations() == 500


@pytest.mark.parametrize("text", ["(" * 5_000 + "ER()" + ")" * 5_000, "(" * 100_000, "ER() ** " + "-" * 9_000 + "1",
                                  "HIO(beta=" + "(" * 5_000, "ER() ** " + "9" * 5_000])
def test_deep_or_garbled_recipes_are_one_recipe_error(text):
    with pytest.raises(RecipeError) as info:
        parse_recipe(text)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_nesting_is_limited_but_a_real_nesting_depth_reads():
    assert repr(parse_recipe("(" * 32 + "ER() ** 2" + ")" * 32)) == "ER() ** 2"
    with pytest.raises(RecipeError, match="nests parentheses more than 32 deep"):
        parse_recipe("(" * 33 + "ER()" + ")" * 33)


@pytest.mark.parametrize("text, count", [("HIO() ** 10000000000", "10,000,000,000"),
                                         ("(HIO() ** 1000 * ER()) ** 1000", "1,001,000"),
                                         ("ER() ** " + "9" * 40, "more than 10^39")])
def test_a_recipe_that_would_run_for_ever_is_refused_with_its_count(text, count):
    with pytest.raises(RecipeError) as info:
        parse_recipe(text)
    assert count in str(info.value) and "at most 1,000,000" in str(info.value)


def test_a_built_recipe_over_the_budget_is_refused_by_the_settings():
    from spibatch.phasing.settings import PhasingSettings

    with pytest.raises(RecipeError, match="10,000,000,000 iterations"):
        PhasingSettings(recipe=HIO() ** 10_000_000_000)
    with pytest.raises(RecipeError, match="no iteration"):
        PhasingSettings(recipe=ShrinkWrap() ** 3)


@pytest.mark.parametrize("text", [DEFAULT, "RAAR(beta=0.75) ** 20 * DM() ** 5 * ER()",
                                  "(HIO() ** 3 * (ER() ** 2 * ShrinkWrap(keep=0.1)) ** 2) ** 4"])
def test_a_parsed_recipe_pickles_and_prints_back_as_its_text(text):
    import pickle

    recipe = parse_recipe(text)
    again = pickle.loads(pickle.dumps(recipe))
    assert again == recipe and repr(again) == text
    assert again.iterations() == recipe.iterations() and again.steps() == recipe.steps()


def test_shrinkwrap_refuses_an_empty_or_a_full_support():
    n = 16
    m = prepare(_intensity(_blob(n, 3)))
    rec = Reconstruction(m, np.ones((n,) * 3, bool), initial=np.zeros((n,) * 3, np.float32), fft_backend="scipy")
    with pytest.raises(RecipeError, match="no positive value"):
        ShrinkWrap()(rec)
    flat = Reconstruction(m, np.ones((n,) * 3, bool), initial=np.ones((n,) * 3, np.float32), fft_backend="scipy")
    with pytest.raises(RecipeError, match="kept all 4096 voxels"):
        ShrinkWrap(threshold=0.5)(flat)


def test_shrinkwrap_marks_a_start_whose_support_collapses_failed():
    """A single bright voxel and a high threshold: a support of a voxel or two holds no object (it ran on to
    'support 1 voxels, final error 0.99' and a merged density of one spike).  The start is marked failed, so it is
    not merged (and the stage ends in one line only when every start failed: multistart.merge)."""
    n = 16
    m = prepare(_intensity(_blob(n, 3)))
    spike = np.zeros((n,) * 3, np.float32)
    spike[8, 8, 8] = 1.0
    rec = Reconstruction(m, np.ones((n,) * 3, bool), initial=spike, fft_backend="scipy")
    ShrinkWrap(sigma=0.5, threshold=0.9)(rec)
    assert re.match(r"ShrinkWrap\(sigma=0.5, threshold=0.9\): the support collapsed to \d voxel\(s\) \(fewer "
                    r"than 8\)", rec.failures[0])
