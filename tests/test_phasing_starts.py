"""Phasing starts and their settings: run_starts against the per-start code it replaced, PhasingSettings
from the config, and data too thin to phase refused before any start."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
from test_phasing_operators import _blob, _intensity

from spibatch.errors import InputError
from spibatch.kernels.device import Device
from spibatch.phasing import DEFAULT_RECIPE
from spibatch.phasing.measurement import independent_amplitudes, initial_support, prepare
from spibatch.phasing.operators import parse_recipe
from spibatch.phasing.settings import PhasingSettings
from spibatch.phasing.starts import run_starts

SNAPSHOT = Path(__file__).parent / "snapshots" / "phasing_starts_9ec6ff9.npz"
# the recipes the snapshot's starts ran (with threads=1, fft="scipy", seeds 0 and 1, _blob(16, 3, seed=7))
SNAPSHOT_RECIPES = {
    "real": "(HIO(beta=0.9) ** 6 * ShrinkWrap(sigma=2, threshold=0.1)) ** 2 * RAAR(beta=0.8) ** 3 * DM() ** 2"
            " * ShrinkWrap(keep=0.05) * ER() ** 6",
    "complex": "HIO() ** 6 * ShrinkWrap(sigma=1.5, threshold=0.1) * ER() ** 6"}


@pytest.mark.parametrize("case", sorted(SNAPSHOT_RECIPES))
def test_run_starts_on_the_cpu_gives_the_old_per_start_results(case):
    """The snapshot holds what ``multistart.run_one(seed, ...)`` of commit 9ec6ff9 returned for seeds 0 and 1;
    run_starts (B = 1 on the CPU) must give the same, start by start: bit for bit with the libraries that
    wrote it (checked when it was written); the tolerances only absorb another numpy / scipy / Numba's
    rounding over these 20 iterations (a voxel or two at the support's edge)."""
    snap = np.load(SNAPSHOT)
    m = prepare(_intensity(_blob(16, 3, seed=7)), real=case == "real", voxel_size_per_m=1e8)
    settings = PhasingSettings(recipe=parse_recipe(SNAPSHOT_RECIPES[case]), threads=1, fft_backend="scipy")
    results = run_starts([0, 1], m, settings)
    assert [r.seed for r in results] == [0, 1]
    for r in results:
        old = {k.split("_", 2)[2]: snap[k] for k in snap.files if k.startswith(f"{case}_{r.seed}_")}
        assert r.algorithms == list(old["algorithms"])
        assert r.density.dtype == old["density"].dtype and r.density.shape == (16,) * 3
        assert [s[0] for s in r.support_sizes] == [int(s[0]) for s in old["support_sizes"]]
        assert all(abs(s[1] - int(t[1])) <= 2 for s, t in zip(r.support_sizes, old["support_sizes"]))
        assert np.count_nonzero(r.support != old["support"]) <= 2
        np.testing.assert_allclose(r.errors, old["errors"], rtol=1e-5)
        assert np.abs(r.density - old["density"]).max() <= 1e-5 * np.abs(old["density"]).max()
        assert r.final_error == pytest.approx(float(old["final_error"]), rel=1e-5)
        assert r.fft_backend == "scipy"


def test_cpu_starts_are_independent_of_their_company():
    """Start 5 is start 5 whether it runs alone or after others, and on the twin GPU in a batch of one."""
    m = prepare(_intensity(_blob(16, 3, seed=7)))
    settings = PhasingSettings(recipe=parse_recipe("HIO() ** 5 * ShrinkWrap() * ER() ** 5"), threads=1,
                               fft_backend="scipy")
    alone = run_starts([5], m, settings)[0]
    together = run_starts([4, 5], m, settings)[1]
    assert np.array_equal(alone.density, together.density) and np.array_equal(alone.errors, together.errors)
    twin = run_starts([5], m, settings, Device("gpu", "twin"))[0]
    assert np.abs(twin.density - alone.density).max() <= 1e-4 * np.abs(alone.density).max()


def _phasing_dump(**values) -> dict:
    from spibatch.config import Phasing

    return Phasing(**values).model_dump()


def test_settings_come_from_the_config_sections_dump():
    from spibatch.config import Phasing

    for dump in (_phasing_dump(intensity=Path("x.h5"), recipe="HIO() ** 4 * ER()", fft="scipy", threads=3,
                               num_starts=4, keep_best=2, crop_to=21),
                 Phasing(recipe="HIO() ** 4 * ER()", fft="scipy", threads=3, num_starts=4, keep_best=2,
                         crop_to=21).model_dump(mode="json")):
        settings = PhasingSettings.from_dict(dump)
        assert settings.recipe == parse_recipe("HIO() ** 4 * ER()") and repr(settings.recipe) == "HIO() ** 4 * ER()"
        assert (settings.fft_backend, settings.threads, settings.num_starts, settings.keep_best) == ("scipy", 3, 4, 2)
        assert settings.crop_to == 21 and settings.seeds == [1, 2, 3, 4]
    defaults = PhasingSettings.from_dict(_phasing_dump())
    assert defaults == PhasingSettings() and repr(defaults.recipe) == DEFAULT_RECIPE
    assert defaults.threads is None and defaults.threads_here() >= 1       # None: every core this process may use
    record = defaults.as_dict()
    assert record["recipe"] == DEFAULT_RECIPE and record["fft"] == "auto" and "fft_backend" not in record
    assert PhasingSettings.from_dict(record) == defaults
    with pytest.raises(ValueError, match="unknown phasing setting 'colour'"):
        PhasingSettings.from_dict({**_phasing_dump(), "colour": "red"})
    with pytest.raises(ValueError, match="unknown phasing setting 'fft_backend'"):
        PhasingSettings.from_dict({"fft_backend": "scipy"})


def test_settings_pickle_with_their_parsed_recipe_and_refuse_a_text():
    settings = PhasingSettings.from_dict(_phasing_dump(recipe="(HIO(beta=0.8) ** 5 * ShrinkWrap()) ** 2 * ER() ** 3"))
    again = pickle.loads(pickle.dumps(settings))
    assert again == settings and repr(again.recipe) == "(HIO(beta=0.8) ** 5 * ShrinkWrap()) ** 2 * ER() ** 3"
    with pytest.raises(TypeError, match="parse_recipe"):
        PhasingSettings(recipe="ER() ** 3")
    with pytest.raises(ValueError, match="keep_best"):
        PhasingSettings(num_starts=2, keep_best=3)


def test_an_intensity_measured_at_too_few_voxels_is_refused_before_any_start():
    """Two measured voxels (one Friedel pair) cannot determine a density: the check counts the independent
    measured amplitudes against the first support's unknowns."""
    n = 16
    intensity = np.zeros((n,) * 3)
    intensity[8, 8, 9] = intensity[8, 8, 7] = 1.0
    m = prepare(intensity)
    assert independent_amplitudes(m) == 1
    with pytest.raises(InputError) as info:
        initial_support(m, 0.04, source="thin.h5")
    text = str(info.value)
    assert text.startswith("thin.h5: phasing.intensity: only 1 independent measured amplitudes") and "\n" not in text
    with pytest.raises(InputError, match="only 1 independent"):
        run_starts([0], m, PhasingSettings(recipe=parse_recipe("ER() ** 2"), threads=1, fft_backend="scipy"))
    # a well-measured blob passes: more measurements than unknowns (a real density, Friedel pairs counted once)
    good = prepare(_intensity(_blob(24, 4)))
    support = initial_support(good, 0.04)
    assert independent_amplitudes(good) > support.sum()


@pytest.mark.parametrize("recipe", ["(HIO() ** 8 * ShrinkWrap()) ** 2 * ER() ** 8",
                                    "Auto(iterations=20, polish=10, period=10)"])
def test_merging_starts_run_elsewhere_writes_what_a_run_of_its_own_writes(tmp_path, recipe, caplog):
    """The pipeline runs ``run_starts([seed], ...)`` per worker and pickles the results; run_phasing given them
    writes the arrays ``spibatch phase`` writes when it runs the starts itself."""
    from spibatch.io.results import read_result, write_result
    from spibatch.phasing.driver import run_phasing
    from spibatch.phasing.inputs import load_measurement

    path = tmp_path / "intensity.h5"
    write_result(path, {"intensity": _intensity(_blob(24, 4, seed=3)).astype(np.float32)}, {"voxel_size_per_m": 1e8})
    settings = PhasingSettings(recipe=parse_recipe(recipe), num_starts=4, keep_best=2, threads=1,
                               fft_backend="scipy")
    with caplog.at_level(logging.INFO, logger="spibatch"):
        here = run_phasing(path, tmp_path / "here", settings, show_progress=False)
    said = [r.getMessage() for r in caplog.records]
    # each start says its kind and the error the kinds are compared by, and the merge why it kept what it kept
    # (a new user read the kept starts as the worse ones: their free errors on the sharpened data were higher)
    kept = next(line for line in said if line.startswith("kept seeds"))
    if recipe.startswith("Auto"):
        assert sum("data sharpened by" in line and "on the measured data)" in line for line in said) == 2, said
        assert "ranked by free error x support voxels" in kept and "sharpened or plain" in kept, kept
    else:
        assert kept.endswith("(the lowest final errors)") and not any("sharpened" in line for line in said), said
    measurement = load_measurement(path, settings)
    shipped = [pickle.loads(pickle.dumps(run_starts([seed], measurement, pickle.loads(pickle.dumps(settings)))[0]))
               for seed in settings.seeds]
    merged = run_phasing(path, tmp_path / "merged", settings, show_progress=False, results=shipped)
    assert sorted(here) == sorted(merged) == ["cxi", "density_mrc", "metrics", "phasing", "picture"]
    assert here["cxi"].name == "phasing.cxi" and here["cxi"].is_file()
    (a, attrs), (b, _) = read_result(here["phasing"]), read_result(merged["phasing"])
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)
    assert attrs["recipe"] == recipe and list(a["seeds"]) == settings.seeds
    if recipe.startswith("Auto"):                   # seeds 1 and 3 sharpened, 2 and 4 not: said in phasing.h5
        assert [s > 0 for s in a["sharpen_sigmas"]] == [True, False, True, False] and np.isfinite(a["measured_free_errors"]).all()
    assert here["phasing"].name == "phasing.h5" and here["density_mrc"].name == "density.mrc"
    with pytest.raises(ValueError, match="expected"):
        run_phasing(path, tmp_path / "wrong", settings, show_progress=False, results=shipped[::-1])
