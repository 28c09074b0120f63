"""The forward FFT that skips the rows an iterate leaves empty (phasing.fft_pruned): the same bits as
scipy.fft.rfftn, taken when the volume is support-limited and not when it is dense; and the phasing
kernels' NaN-blind maxima it came with."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft

from spibatch.kernels import phasing_cpu
from spibatch.phasing.fft_pruned import occupied_slices, rfftn_skipping_zeros


def _support_limited(rng, n, dtype, centre, radius, sparse=False, negative_zeros=False):
    """A volume zero outside a periodic ball around ``centre`` (FFT order wraps it past the edges)."""
    g = np.indices((n,) * 3)
    d2 = sum(np.minimum(abs(g[a] - centre[a]), n - abs(g[a] - centre[a])) ** 2 for a in range(3))
    inside = d2 < radius ** 2
    if sparse:
        inside &= rng.random(inside.shape) < 0.3
    volume = np.zeros((n,) * 3, dtype)
    volume[inside] = rng.normal(size=int(inside.sum()))
    if negative_zeros:
        volume[inside & (rng.random(inside.shape) < 0.02)] = -0.0
    return volume


@pytest.mark.parametrize("n", [16, 33, 48, 64, 91])
def test_the_pruned_forward_gives_rfftns_bits(n):
    rng = np.random.default_rng(n)
    taken = 0
    for case in range(6):
        dtype = np.float64 if case == 5 else np.float32
        centre = (0, 0, 0) if case % 2 == 0 else tuple(int(c) for c in rng.integers(0, n, 3))
        volume = _support_limited(rng, n, dtype, centre, rng.uniform(0.1, 0.25) * n, sparse=case == 2,
                                  negative_zeros=case in (3, 4))
        workers = 1 + case % 3
        pruned = rfftn_skipping_zeros(volume, workers)
        assert pruned is not None, f"case {case}: a ball of at most half the box is worth pruning"
        taken += 1
        full = scipy.fft.rfftn(volume, workers=workers)
        assert pruned.dtype == full.dtype and pruned.shape == full.shape
        assert np.array_equal(pruned.view(np.uint8), full.view(np.uint8)), f"case {case}: not the same bits"
    assert taken == 6


def test_a_dense_volume_or_a_wide_one_takes_the_plain_rfftn():
    rng = np.random.default_rng(1)
    assert rfftn_skipping_zeros(rng.random((32, 32, 32)).astype(np.float32), 2) is None
    wide = np.zeros((32, 32, 32), np.float32)
    wide[:4, 2:28] = 1.0                         # 26 of 32 columns: wider than MAX_SPAN
    assert rfftn_skipping_zeros(wide, 2) is None
    narrow = np.zeros((32, 32, 32), np.float32)
    narrow[:4, 2:12] = 1.0
    narrow[0, 5, 7] = np.nan                     # a NaN counts as occupied, and propagates as rfftn's does
    pruned = rfftn_skipping_zeros(narrow, 2)
    assert pruned is not None
    assert np.array_equal(pruned, scipy.fft.rfftn(narrow, workers=2), equal_nan=True)


def test_an_empty_volume_has_a_zero_spectrum():
    volume = np.zeros((24, 24, 24), np.float32)
    pruned = rfftn_skipping_zeros(volume, 2)
    assert pruned is not None and pruned.shape == (24, 24, 13) and not pruned.any()


def test_occupied_slices_cover_every_occupied_index_outside_the_longest_gap():
    mask = np.array([1, 1, 0, 0, 0, 1, 0, 1], bool)
    assert occupied_slices(mask) == [slice(5, 8), slice(0, 2)]           # wraps past the end
    assert occupied_slices(np.array([0, 1, 1, 0], bool)) == [slice(1, 3)]
    assert occupied_slices(np.array([0, 0, 0, 1], bool)) == [slice(3, 4)]
    assert occupied_slices(np.zeros(5, bool)) == [] and occupied_slices(np.ones(5, bool)) == [slice(0, 5)]
    rng = np.random.default_rng(2)
    for _ in range(200):
        mask = rng.random(int(rng.integers(1, 40))) < rng.uniform(0.05, 0.9)
        covered = np.zeros_like(mask)
        for s in occupied_slices(mask):
            covered[s] = True
        assert not (mask & ~covered).any()
        if mask.any():          # what is left out is one run of False, the longest (circularly)
            left = np.flatnonzero(~covered)
            assert not mask[left].any() and len(left) == _longest_circular_gap(mask)


def _longest_circular_gap(mask):
    n = mask.size
    return max(next((k for k in range(n + 1) if k == n or mask[(i + k) % n]), n) for i in range(n))


def test_a_hand_written_recipe_gives_the_same_bits_with_and_without_the_pruned_forward(monkeypatch):
    """ER's iterate and shrink-wrap's P_S x go through the pruned forward; the recipe's result may not move."""
    import spibatch.phasing.fft_pruned as fft_pruned
    from test_phasing_operators import _blob, _intensity

    from spibatch.phasing.measurement import prepare
    from spibatch.phasing.operators import parse_recipe
    from spibatch.phasing.settings import PhasingSettings
    from spibatch.phasing.starts import run_starts

    m = prepare(_intensity(_blob(32, 5, seed=3)))
    settings = PhasingSettings(recipe=parse_recipe("(HIO() ** 5 * ShrinkWrap()) ** 2 * ER() ** 5 * ShrinkWrap() "
                                                   "* ER() ** 3"), threads=2, fft_backend="scipy")
    calls = []
    real = fft_pruned.rfftn_skipping_zeros
    monkeypatch.setattr(fft_pruned, "rfftn_skipping_zeros", lambda v, w: calls.append(real(v, w)) or calls[-1])
    pruned = run_starts([3], m, settings)[0]
    assert sum(c is not None for c in calls) >= 8          # 3 shrink-wraps + 7 of the ERs (the first follows one)
    monkeypatch.setattr(fft_pruned, "rfftn_skipping_zeros", lambda v, w: None)
    plain = run_starts([3], m, settings)[0]
    assert np.array_equal(pruned.density, plain.density) and np.array_equal(pruned.errors, plain.errors)
    assert pruned.support_sizes == plain.support_sizes


def test_the_maxima_leave_nan_out_as_the_loops_they_replaced_did():
    rng = np.random.default_rng(4)
    volume = rng.random((12, 10, 9)).astype(np.float32)
    volume[3, 4, 5] = 7.0
    volume[6] = np.nan                                  # a whole plane of NaN
    volume[2, 1, 1] = np.nan
    assert phasing_cpu.max_real(volume) == 7.0
    support = np.zeros(volume.shape, bool)
    kept, top = phasing_cpu.threshold_relative(volume, 0.1, support)
    assert top == 7.0 and kept == int((volume > np.float32(0.7)).sum()) and not support[6].any()
    assert np.isnan(phasing_cpu.max_real(np.full((2, 2, 2), np.nan, np.float32)))   # nothing to keep: not > 0
