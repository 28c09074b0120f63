"""HTC mode's sums through files: written by each task, reduced slab by slab, the same bits as types.reduce."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from spibatch.emc import htc_sums
from spibatch.emc.types import ShardSums, reduce
from spibatch.layout import htc_model_name, htc_sums_name, htc_total_name


def parts_of(rng, shape=(7, 5, 6), shards=5, frames=3) -> list[ShardSums]:
    """Sums whose magnitudes differ by many orders, so that any other order of additions moves bits."""
    out = []
    for k in range(shards):
        scale = 10.0 ** rng.integers(-8, 9, size=shape)
        out.append(ShardSums(k * frames, rng.standard_normal(shape) * scale, rng.random(shape) * scale,
                             {"counts": rng.random(frames), "num_kept": rng.integers(0, 9, frames).astype(float)},
                             {"expand": 0.5, "merge": 1.0}))
    return out


@pytest.mark.parametrize("slabs", [1, 2, 3, 64, 10_000])
def test_files_reduced_in_slabs_give_reduce_bit_for_bit(tmp_path, slabs):
    rng = np.random.default_rng(14)
    sums = parts_of(rng)
    expected = reduce(sums)
    reversed_order = sums[-1].numerator.copy()
    for s in sums[-2::-1]:
        reversed_order += s.numerator
    assert not np.array_equal(reversed_order, expected.numerator)    # the data can tell one order from another

    written = [htc_sums.write_part(tmp_path, 4, s) for s in sums[::-1]]    # any order of arrival
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(htc_sums_name(4, s.first_frame) for s in sums)
    with ThreadPoolExecutor(max_workers=3) as pool:
        total, cost = htc_sums.reduce_parts(written, pool.submit, tmp_path, 4, slabs)
    assert np.array_equal(total.numerator, expected.numerator)
    assert np.array_equal(total.denominator, expected.denominator)
    assert total.first_frame == 0 and total.numerator.shape == (7, 5, 6)
    for key in expected.frames:
        assert np.array_equal(total.frames[key], expected.frames[key]), key
    assert total.timings["expand"] == 2.5 and total.timings["merge"] == 5.0 and "write_sums_s" in total.timings
    assert cost["reduce_tasks"] == (0 if slabs == 1 else min(slabs, 7 * 5 * 6))
    assert cost["sums_bytes"] == 5 * 2 * 7 * 5 * 6 * 8
    assert not list(tmp_path.glob("total_*"))                           # the slabs are removed once read
    htc_sums.remove_parts(written)
    assert not list(tmp_path.iterdir())


def test_one_part_is_read_back_as_it_was(tmp_path):
    sums = parts_of(np.random.default_rng(1), shards=1)
    part = htc_sums.write_part(tmp_path, 1, sums[0])
    total, cost = htc_sums.reduce_parts([part], lambda *a: pytest.fail("no task for one part"), tmp_path, 1, 8)
    assert np.array_equal(total.numerator, sums[0].numerator) and cost["reduce_tasks"] == 0


def test_slab_bounds_cover_every_voxel_once():
    for voxels, slabs in [(10, 3), (211 ** 3, 16), (5, 9), (1, 1)]:
        bounds = htc_sums.slab_bounds(voxels, slabs)
        assert bounds[0][0] == 0 and bounds[-1][1] == voxels and len(bounds) == min(slabs, voxels)
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert max(hi - lo for lo, hi in bounds) - min(hi - lo for lo, hi in bounds) <= 1


def test_a_truncated_or_foreign_file_is_refused(tmp_path):
    sums = parts_of(np.random.default_rng(2), shards=2)
    parts = [htc_sums.write_part(tmp_path, 1, s) for s in sums]
    data = open(parts[1].path, "rb").read()
    open(parts[1].path, "wb").write(data[:-8])
    with pytest.raises(ValueError, match="ends early"):
        htc_sums.reduce_parts(parts)
    np.save(parts[1].path, np.zeros((2, 7, 5, 6), np.float16))
    with pytest.raises(ValueError, match="not C-order float32 or float64"):
        htc_sums.reduce_parts(parts)


@pytest.mark.parametrize("slabs", [1, 3])
def test_float32_sums_are_written_as_float32_and_reduce_to_the_same_bits(tmp_path, slabs):
    """The CPU merge's sums are float32 views of one interleaved buffer: their files hold float32 (half the
    bytes), and the reduce adds them in float64 exactly as types.reduce adds the float32 sums in memory."""
    rng = np.random.default_rng(9)
    sums = []
    for s in parts_of(rng, shards=4):
        both = np.stack([s.numerator, s.denominator], axis=-1).astype(np.float32)   # (7, 5, 6, 2)
        sums.append(ShardSums(s.first_frame, both[..., 0], both[..., 1], s.frames, s.timings))
    expected = reduce(sums)
    assert expected.numerator.dtype == np.float64
    written = [htc_sums.write_part(tmp_path, 2, s) for s in sums]
    assert all(np.load(p.path).dtype == np.float32 and p.nbytes == 2 * 7 * 5 * 6 * 4 for p in written)
    with ThreadPoolExecutor(max_workers=2) as pool:
        total, cost = htc_sums.reduce_parts(written, pool.submit, tmp_path, 2, slabs)
    assert total.numerator.dtype == np.float64 and cost["sums_bytes"] == 4 * 2 * 7 * 5 * 6 * 4
    assert np.array_equal(total.numerator, expected.numerator)
    assert np.array_equal(total.denominator, expected.denominator)


def test_what_an_interrupted_iteration_left_is_removed_and_the_timing_log_kept(tmp_path):
    for name in (htc_model_name(3), htc_sums_name(3, 1000), htc_total_name(3, 1), f".{htc_sums_name(3, 0)}.x1y2.part",
                 "timing.jsonl", "notes.txt"):
        (tmp_path / name).write_text("x")
    gone = htc_sums.remove_scratch(tmp_path)
    assert gone == sorted([htc_model_name(3), htc_sums_name(3, 1000), htc_total_name(3, 1),
                           f".{htc_sums_name(3, 0)}.x1y2.part"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "timing.jsonl"]
