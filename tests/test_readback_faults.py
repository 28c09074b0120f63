"""Files spibatch reads back, made hostile: JSON nested deeper than Python's parser recurses (a run's provenance,
lock, stage marker, checkpoint attributes, a bench document or rates file) gives one InputError or the answer for any
unreadable file, never a RecursionError traceback; a truth in huge units gives the same comparison, and no JSON
written holds Infinity."""

import json

import h5py
import numpy as np
import pytest

from spibatch.errors import InputError

DEEP = "[" * 100_000 + "]" * 100_000


def test_the_parser_does_recurse_out_on_it():
    with pytest.raises(RecursionError):
        json.loads(DEEP)


def test_a_deep_provenance_is_one_line(tmp_path):
    from spibatch.run_checks import read_provenance

    (tmp_path / "provenance.json").write_text(DEEP)
    with pytest.raises(InputError, match="provenance.json unreadable"):
        read_provenance(tmp_path)


def test_a_deep_lock_reads_as_an_unreadable_lock(tmp_path):
    from spibatch import layout
    from spibatch.lock import read_lock

    (tmp_path / layout.LOCK).write_text(DEEP)
    assert read_lock(tmp_path)["command"] == "(unreadable lock)"


def test_a_deep_stage_marker_counts_as_not_finished(tmp_path):
    from spibatch import stages
    from spibatch.layout import RunLayout

    run = RunLayout(tmp_path)
    run.marker("emc").parent.mkdir(parents=True, exist_ok=True)
    run.marker("emc").write_text(DEEP)
    assert stages.finished(run, "emc") is None


def test_a_checkpoint_with_deep_settings_is_one_line(tmp_path):
    from spibatch.emc.records import CHECKPOINT, read_checkpoint

    with h5py.File(tmp_path / CHECKPOINT, "w") as f:
        f["model"] = np.ones((3, 3, 3))
        f["scales"] = np.ones(2)
        f.attrs["iteration"] = 1
        f.attrs["settings"] = DEEP
        f.attrs["history"] = "[]"
    with pytest.raises(InputError, match="settings or history missing or unreadable"):
        read_checkpoint(tmp_path)


@pytest.mark.parametrize("rates_only", [False, True])
def test_a_deep_bench_document_or_rates_file_is_one_line(tmp_path, rates_only):
    from spibatch.bench import runner

    path = tmp_path / "bench.json"
    path.write_text(DEEP)
    with pytest.raises(InputError, match="maximum recursion depth"):
        runner.read_document(path, "--rates" if rates_only else "bench.json", rates_only=rates_only)


def test_a_truth_in_huge_units_gives_the_same_comparison_and_json_holds_no_infinity(tmp_path):
    """A truth x 1e300 (finite) overflowed the transforms' sums: FSC 0 everywhere, '-Infinity' in the JSON, exit 0.
    The comparison is scale-free now, and the JSON written never holds Infinity or NaN."""
    from scipy.ndimage import gaussian_filter

    from spibatch.phasing.compare import compare_with_truth, write_comparison

    rng = np.random.default_rng(3)
    truth = gaussian_filter(rng.random((24, 24, 24)), 2)
    truth[truth < np.percentile(truth, 80)] = 0
    density = np.roll(truth, 2, 0) + 0.01 * rng.random(truth.shape)
    plain, huge = compare_with_truth(density, None, truth, None), compare_with_truth(density, None, truth * 1e300, None)
    assert huge["cc"] == pytest.approx(plain["cc"], abs=1e-9) and plain["cc"] > 0.99
    assert huge["fsc"] == pytest.approx(plain["fsc"], abs=1e-9)
    with pytest.raises(InputError, match="zero everywhere"):
        compare_with_truth(density, None, np.zeros_like(truth), None)
    plain["fsc_0.5_radius"] = float("-inf")   # whatever a curve gives, the file stays JSON
    write_comparison(plain, tmp_path / "fsc.json", tmp_path / "fsc.png", "t")
    text = (tmp_path / "fsc.json").read_text()
    assert "Infinity" not in text and json.loads(text)["fsc_0.5_radius"] is None
