"""recipe 'auto': the free set, the self-tuning schedule, ranking by free error, its guards; reproducible
FFTW plans."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_phasing_operators import _blob, _intensity

from spibatch.config import Phasing
from spibatch.errors import InputError
from spibatch.phasing.algebra import RecipeError
from spibatch.phasing.auto import MIN_FREE_VOXELS, Auto, check_free_set, draw_free_set
from spibatch.phasing.measurement import full_spectrum, initial_support, prepare
from spibatch.phasing.multistart import RANK_FACTOR, choose, merge
from spibatch.phasing.operators import parse_recipe
from spibatch.phasing.reconstruction import Reconstruction
from spibatch.phasing.settings import PhasingSettings
from spibatch.phasing.starts import run_starts

REPO = Path(__file__).resolve().parents[1]
SHORT = "Auto(iterations=40, polish=20, period=10)"


def _measurement(n=24, radius=4, beamstop=2.0):
    intensity = _intensity(_blob(n, radius, seed=3))
    g = np.indices((n,) * 3) - n // 2
    intensity[np.sqrt((g ** 2).sum(0)) <= beamstop] = 0
    return prepare(intensity)


def test_auto_is_a_recipe_that_reads_and_prints_back():
    assert repr(parse_recipe("auto")) == "auto" and repr(parse_recipe(" Auto ")) == "auto"
    assert isinstance(parse_recipe("Auto()"), Auto)
    assert repr(parse_recipe(SHORT)) == SHORT and parse_recipe(SHORT).iterations() == 60
    settings = PhasingSettings.from_dict(Phasing(recipe="auto").model_dump())
    assert isinstance(settings.recipe, Auto) and settings.as_dict()["recipe"] == "auto"
    with pytest.raises(RecipeError, match="period"):
        parse_recipe("Auto(period=0)")
    with pytest.raises(RecipeError, match="sigma_end"):
        parse_recipe("Auto(sigma=1, sigma_end=2)")


def test_the_free_set_is_five_percent_in_friedel_pairs_away_from_the_beam_stop():
    m = _measurement()
    free = draw_free_set(m)
    assert free.shape == m.amplitude.shape and np.array_equal(free, draw_free_set(m))     # deterministic
    full = full_spectrum(free, m.n)
    measured = m.measured_full()
    assert not (full & ~measured).any()
    assert 0.045 <= full.sum() / measured.sum() <= 0.08
    inv = (-np.arange(m.n)) % m.n
    assert np.array_equal(full, full[np.ix_(inv, inv, inv)])              # q and -q together
    k = np.fft.fftfreq(m.n) * m.n
    radius = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    assert radius[full].min() >= 3.0                                     # the hole (<= 2) + 2 voxels
    assert not np.array_equal(free, draw_free_set(m, seed=1))


def test_a_free_set_that_cannot_be_drawn_is_one_line():
    n = 16
    intensity = np.zeros((n,) * 3)
    intensity[6:11, 6:11, 6:11] = 1.0                 # 125 measured voxels: 5% is far below the minimum
    m = prepare(intensity)
    with pytest.raises(InputError) as info:
        draw_free_set(m, source="small.h5")
    text = str(info.value)
    assert text.startswith("small.h5: phasing.recipe: cannot draw a free set") and "\n" not in text
    assert str(MIN_FREE_VOXELS) in text
    assert "5% of the 125 measured voxels is 6, fewer than the 200" in text and "at least 4000 measured" in text
    with pytest.raises(InputError, match="cannot draw a free set"):
        run_starts([0], m, PhasingSettings(recipe=parse_recipe("auto"), initial_support_threshold=0.5, threads=1,
                                           fft_backend="scipy"))


def test_holding_out_the_free_set_must_leave_more_measurements_than_unknowns():
    m = _measurement()
    known = int(np.count_nonzero(m.measured_full())) // 2
    with pytest.raises(InputError, match="held out as the free set only"):
        check_free_set(m, support_voxels=known - 10)
    check_free_set(m, support_voxels=known // 4)


def test_auto_holds_out_the_free_voxels_and_ranks_starts_by_their_error():
    m = _measurement()
    settings = PhasingSettings(recipe=parse_recipe(SHORT), num_starts=3, keep_best=2, threads=1, fft_backend="scipy")
    results = run_starts(settings.seeds, m, settings)
    for r in results:
        assert r.free_error is not None and 0 < r.free_error < 1
        assert r.algorithms == ["RAAR"] * 40 + ["ER"] * 20
        assert [s[0] for s in r.support_sizes] == [0, 10, 20, 30, 40, 50]
    merged = merge(results, m, 2)
    kind = choose(results)            # sharpened (odd seeds) or plain starts, whichever predicts the data best
    best = min(r.free_error for r in kind)
    near = [r for r in kind if r.free_error <= 2 * best]
    rank = sorted((r.free_error * np.count_nonzero(r.support), r.seed) for r in near)
    expected = [seed for value, seed in rank if value <= RANK_FACTOR * rank[0][0]][:2]
    assert merged.kept_seeds == expected and merged.kept_seeds[0] in [r.seed for r in near]
    # the modulus constraint never sees a free voxel: its amplitude is -1 (free) in the reconstruction
    rec = Reconstruction(m, initial_support(m, 0.04), [1], threads=1, fft_backend="scipy")
    free = draw_free_set(m)
    rec.hold_out(free)
    assert (rec.amplitude[0 if rec.amplitude.ndim == 4 else ...][free] == -1).all()
    assert np.isfinite(rec.free_errors()[0])


def test_hand_written_recipes_have_no_free_set():
    m = _measurement()
    r = run_starts([0], m, PhasingSettings(recipe=parse_recipe("HIO() ** 5 * ER() ** 5"), threads=1,
                                           fft_backend="scipy"))[0]
    assert r.free_error is None


@pytest.mark.parametrize("size, words", [(0.6, "exploded"), (3, "collapsed")])
def test_a_support_that_explodes_or_collapses_is_named_in_one_line(size, words):
    m = _measurement()
    rec = Reconstruction(m, initial_support(m, 0.04), [7], threads=1, fft_backend="scipy")
    voxels = int(size * m.n ** 3) if size < 1 else int(size)
    why = Auto._runaways(rec, [voxels])[0]
    assert words in why and "start 7" in why and "\n" not in why
    assert Auto._runaways(rec, [1000]) == {}


def test_a_start_that_runs_away_stops_at_once_and_is_not_merged(monkeypatch, tmp_path):
    """Wired into the run: with a ceiling below any real support every update is refused, and after the third
    in a row (iteration 30 of 60) every start stops; none is merged, and the run ends with one line."""
    import spibatch.phasing.auto as auto
    from spibatch.io.results import write_result
    from spibatch.phasing.driver import run_phasing

    monkeypatch.setattr(auto, "MAX_SUPPORT_FRACTION", 1e-4)
    m = _measurement()
    settings = PhasingSettings(recipe=parse_recipe(SHORT), num_starts=2, keep_best=1, threads=1, fft_backend="scipy")
    results = run_starts(settings.seeds, m, settings)
    for r in results:
        assert "exploded" in r.failure and "at iteration 30:" in r.failure and len(r.errors) == 30
        assert [s[0] for s in r.support_sizes] == [0, 10, 20, 30]        # recorded, each one refused
        assert r.free_error == float("inf")
    with pytest.raises(RecipeError, match="exploded .* every other of the 2 starts"):
        merge(results, m, 1)
    path = tmp_path / "intensity.h5"
    intensity = _intensity(_blob(24, 4, seed=3))
    write_result(path, {"intensity": intensity.astype(np.float32)}, {})
    with pytest.raises(InputError) as info:
        run_phasing(path, tmp_path / "out", settings, show_progress=False)
    assert "exploded" in str(info.value) and "\n" not in str(info.value)


def test_a_failed_start_is_left_out_of_the_merge():
    m = _measurement()
    settings = PhasingSettings(recipe=parse_recipe(SHORT), num_starts=3, keep_best=3, threads=1, fft_backend="scipy")
    results = run_starts(settings.seeds, m, settings)
    results[0].failure = "auto: the support of start 1 exploded"
    assert 1 not in merge(results, m, 3).kept_seeds


def _run_start_in_a_fresh_process(cache: Path, planning: str) -> bytes:
    code = ("import sys; from test_phasing_operators import _blob, _intensity;"
            "from spibatch.phasing.measurement import prepare;"
            "from spibatch.phasing.operators import parse_recipe;"
            "from spibatch.phasing.settings import PhasingSettings;"
            "from spibatch.phasing.starts import run_starts;"
            "m = prepare(_intensity(_blob(48, 8, seed=2)));"
            f"s = PhasingSettings(recipe=parse_recipe('(HIO() ** 20 * ShrinkWrap()) ** 2 * ER() ** 10'), threads=2,"
            f" fft_backend='fftw', fft_planning='{planning}');"
            "sys.stdout.buffer.write(run_starts([4], m, s)[0].density.tobytes())")
    env = dict(os.environ, XDG_CACHE_HOME=str(cache), PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True).stdout


def test_fftw_estimate_plans_give_the_same_bits_in_every_run(tmp_path):
    """Same seed, same result: a run with no wisdom, then one after a 'measure' run left timed wisdom for this
    size in the cache (which FFTW_ESTIMATE would take if it were in memory)."""
    pytest.importorskip("pyfftw")
    first = _run_start_in_a_fresh_process(tmp_path, "estimate")
    _run_start_in_a_fresh_process(tmp_path, "measure")
    assert list(tmp_path.glob("spibatch/fftw-wisdom-*"))
    assert _run_start_in_a_fresh_process(tmp_path, "estimate") == first


def test_the_fused_threshold_finds_the_maximum_and_keeps_what_the_two_passes_kept():
    from spibatch.kernels import phasing_cpu

    rng = np.random.default_rng(5)
    volume = np.zeros((20, 20, 20), np.float32)
    volume[5:12, 3:15, 4:9] = rng.random((7, 12, 5)).astype(np.float32)       # planes 0-4 and 12-19 are empty
    for fraction in (0.05, 0.3, 0.9):
        a, b = np.ones(volume.shape, bool), np.zeros(volume.shape, bool)
        kept, top = phasing_cpu.threshold_relative(volume, fraction, a)
        expected = phasing_cpu.threshold_support(volume, np.float32(fraction * phasing_cpu.max_real(volume)), b)
        assert top == phasing_cpu.max_real(volume) and kept == expected and np.array_equal(a, b)


def test_auto_can_shrink_wrap_on_the_blur_of_its_own_projection(monkeypatch):
    import spibatch.phasing.auto as auto

    monkeypatch.setattr(auto, "BLUR_PROJECTION", True)
    m = _measurement()
    settings = PhasingSettings(recipe=parse_recipe(SHORT), threads=1, fft_backend="scipy")
    r = run_starts([3], m, settings)[0]
    assert r.failure is None and [s[0] for s in r.support_sizes] == [0, 10, 20, 30, 40, 50]
    assert 0 < r.free_error < 1 and len(r.errors) == 60


def test_the_kept_starts_predict_the_free_set_within_a_factor_two_and_the_compact_one_leads():
    """A start filled in by unmeasured modes predicts the free set a little better but is larger: the compact one
    leads; a collapsed start (small support, poor prediction) is not kept at all."""
    from spibatch.phasing.multistart import select
    from spibatch.phasing.starts import StartResult

    def start(seed, free, voxels):
        support = np.zeros(10_000, bool)
        support[:voxels] = True
        return StartResult(seed=seed, density=np.zeros(1), support=support, errors=np.zeros(1), algorithms=[],
                           final_error=0.0, seconds=0.0, free_error=free)

    filled, compact, collapsed, poor = start(1, 0.065, 3900), start(2, 0.082, 2500), start(3, 0.45, 40), start(4, 0.2, 900)
    assert [r.seed for r in select([filled, compact, collapsed, poor], 3)] == [2, 1]
    assert [r.seed for r in select([filled, compact], 1)] == [2]
