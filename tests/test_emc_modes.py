"""EMC modes: rotating modes (conformations) and non-rotating "junk" modes, with Dragonfly's semantics.

Two conformations of one particle (a domain moved) simulated with our structure-factor code: EMC with
``num_modes: 2`` from a random start separates them and finds their occupancy; the executors, the GPU
path (numpy twins) and the bad-input check see the modes too.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import pytest
from test_emc_executors import one_thread, settings  # noqa: F401  (fixtures and helpers of the executors' tests)
from test_gpu_emc import assert_same_sums

from spibatch.config import Geometry
from spibatch.emc import driver
from spibatch.emc.checks import check_modes
from spibatch.emc.executors import InProcess, Tasks
from spibatch.emc.gpu_step import gpu_shard_step
from spibatch.emc.step import random_model, shard_step
from spibatch.emc.types import PixelSet, Rotations, Shard, StepState, finish, reduce
from spibatch.errors import InputError
from spibatch.kernels.device import Device
from spibatch.photons import Photons


@pytest.fixture(scope="module")
def two_conformations():
    """400 frames of ~3000 photons: 2/3 of conformation A, 1/3 of B (one of four domains moved), at sampled
    rotations (num_div 2); returns (pixels, truths (2, M, M, M) in photons, labels (400,), shard, dense
    counts (400, pixels))."""
    from spibatch.align import align_intensity
    from spibatch.kernels.emc_cpu import views_by_rotation
    from spibatch.sim.scattering import intensity, structure_factor
    from spibatch.sim.structure import Atoms

    detector = Geometry(detector_pixels=24, pixel_size_m=1e-3, detector_distance_m=0.1, wavelength_m=1e-10,
                        beamstop_radius_pixels=2).detector()
    m = detector.model_size()
    rng = np.random.default_rng(11)
    clouds = [rng.normal(scale=3.0, size=(150, 3)) for _ in range(4)]

    def conformation(centres):
        points = np.concatenate([c + cloud for c, cloud in zip(centres, clouds)]) * 1e-10   # Angstrom -> m
        return intensity(structure_factor(Atoms(points, np.full(len(points), 6, np.int32), np.ones(len(points)),
                                                np.zeros(len(points))), m, detector.voxel_size_per_m))

    centres = np.array([[0, 0, 0], [13, 0, 0], [0, 13, 0], [0, 0, 14.0]])
    moved = centres.copy()
    moved[3] = [-10, -4, 9]
    truths = np.stack([conformation(centres), conformation(moved)])
    assert align_intensity(truths[0], truths[1], 2, (m - 1) // 2 - 1).cc < 0.75         # clearly different: 0.71
    pixels, rotations = PixelSet.from_detector(detector), Rotations.refined_600_cell(2)
    labels = (rng.random(400) < 0.35).astype(int)
    true_rot = rng.integers(0, len(rotations), 400)
    views = np.empty((2, len(rotations), len(pixels.q)), np.float32)
    for k in range(2):
        views_by_rotation(truths[k].astype(np.float32).ravel(), m, rotations.matrices,
                          np.zeros(len(rotations), np.int32), pixels.q.T.astype(np.float32),
                          pixels.corr.astype(np.float32), views[k], np.empty(len(rotations)))
    scale = 3000 / views[0, :, :pixels.num_used].sum(axis=1).mean()
    dense = np.zeros((400, detector.num_pix), np.int64)
    rows = np.flatnonzero(pixels.index_of >= 0)
    dense[:, rows[np.argsort(pixels.index_of[rows])]] = rng.poisson(views[labels, true_rot] * scale)
    return pixels, truths * scale, labels, Shard.from_photons(Photons.from_dense(dense), pixels), dense


def test_two_conformations_are_recovered_with_their_occupancy(two_conformations):
    """Three random starts, the one of highest likelihood kept (as one does with modes: a single start can
    leave a few frames in the wrong mode; measured over seeds 5-16, one start: 2 of 12 separate every frame,
    6 more reach 0.96-0.985, 4 fail; the likelihood ranks the clean separations first)."""
    from spibatch.align import align_intensity

    pixels, truths, labels, shard, dense = two_conformations
    rotations = Rotations.refined_600_cell(2, num_modes=2)
    assert len(rotations) == 2 * 420 and rotations.num_volumes == 2 and set(rotations.mode) == {0, 1}
    runs = []
    for seed in (5, 6, 7):
        model = random_model(truths.shape[-1], pixels, rotations, shard.counts.mean(), seed=seed)
        assert model.shape == (2,) + truths.shape[1:]
        scales = np.ones(400)
        for it in range(1, 31):
            state = StepState(it, np.full(400, 0.02 * 2 ** ((it - 1) // 10)), scales)
            sums = shard_step(model, rotations, pixels, shard, state)
            model, scales, _ = finish(reduce([sums]), model, need_scaling=True)
        runs.append((sums.frames["log_likelihood"].sum(), model, sums.frames["mode_probabilities"]))
    _, model, share = max(runs, key=lambda run: run[0])
    assert share.shape == (400, 2) and np.allclose(share.sum(axis=1), 1.0, atol=1e-5)
    found = share.argmax(axis=1)
    flip = int(np.mean(found == labels) < 0.5)               # the modes come out in either order
    assert np.mean((found ^ flip) == labels) >= 0.98          # measured 1.0
    occupancy = share.mean(axis=0)[::-1] if flip else share.mean(axis=0)
    assert np.abs(occupancy - [1 - labels.mean(), labels.mean()]).max() < 0.02  # measured 0.3632 vs 0.365
    r_max = (truths.shape[-1] - 1) // 2 - 1
    for k in range(2):
        assert align_intensity(model[k ^ flip], truths[k], 2, r_max).cc > 0.95   # measured 0.981, 0.973


def test_a_junk_mode_takes_the_frames_that_fit_no_conformation(two_conformations):
    """Frames of pure noise (a flat pattern) go to the non-rotating mode; the particle's frames do not."""
    pixels, truths, labels, shard, dense = two_conformations
    keep = labels == 0
    flat = np.random.default_rng(2).poisson(3000 / pixels.num_used, (100, len(pixels.index_of)))
    flat[:, pixels.index_of < 0] = 0
    real = Photons.from_dense(dense[keep][:200])
    both = Shard.from_photons(Photons.concatenate([real, Photons.from_dense(flat)]), pixels)
    rotations = Rotations.refined_600_cell(2, num_modes=1, nonrot_modes=1)
    assert rotations.num_volumes == 2 and rotations.mode[-1] == 1 and np.allclose(rotations.matrices[-1], np.eye(3))
    level = 3000 / pixels.corr[:pixels.num_used].sum()      # a flat volume whose view holds ~3000 photons
    model = np.stack([truths[0], np.full(truths.shape[1:], level)])
    sums = shard_step(model, rotations, pixels, both, StepState(1, np.full(300, 0.05), np.ones(300)))
    share = sums.frames["mode_probabilities"]
    assert share[:200, 1].max() < 0.01 and share[200:, 1].min() > 0.99


@pytest.mark.parametrize("chunks", [None, (37, 64)])
def test_the_gpu_path_gives_the_cpu_sums_with_modes(two_conformations, chunks):
    pixels, truths, labels, shard, dense = two_conformations
    rotations = Rotations.refined_600_cell(2, num_modes=2, nonrot_modes=1)
    model = np.concatenate([truths, truths[:1].mean() + 0 * truths[:1]])
    state = StepState(1, np.full(400, 0.3), np.linspace(0.8, 1.2, 400))
    cpu = shard_step(model, rotations, pixels, shard, state)
    frame_chunk, rotation_block = chunks or (None, None)
    gpu = gpu_shard_step(model, rotations, pixels, shard, state, device=Device("gpu", "twin"),
                         frame_chunk=frame_chunk, rotation_block=rotation_block)
    assert gpu.numerator.shape == (3,) + truths.shape[1:]
    assert_same_sums(cpu, gpu)
    np.testing.assert_allclose(gpu.frames["mode_probabilities"], cpu.frames["mode_probabilities"], atol=2e-3)


def test_in_process_and_tasks_give_the_same_modes(emc_small, tmp_path, one_thread):  # noqa: F811
    cfg = settings(num_modes=2, nonrot_modes=1, iterations=2)
    inputs = (emc_small["photons"], emc_small["detector"])
    driver.run_emc(cfg, *inputs, tmp_path / "in-process", executor=InProcess())
    with ThreadPoolExecutor(max_workers=2) as pool:
        driver.run_emc(cfg, *inputs, tmp_path / "tasks", executor=Tasks(pool.submit, tmp_path / "tasks" / "htc"))
    with h5py.File(tmp_path / "in-process" / "output_002.h5") as a, h5py.File(tmp_path / "tasks" / "output_002.h5") as b:
        assert a["intensities"].shape[0] == 3 and a["mode_probabilities"].shape == (240, 3)
        np.testing.assert_array_equal(a["intensities"][()], b["intensities"][()])
        np.testing.assert_array_equal(a["mode_probabilities"][()], b["mode_probabilities"][()])
        np.testing.assert_allclose(a["mode_probabilities"][()].sum(axis=1), 1.0)
        np.testing.assert_array_equal(a["intensity"][()], a["intensities"][0])
    with h5py.File(tmp_path / "tasks" / "checkpoint.h5") as f:
        assert f["model"].shape[0] == 3
    start = tmp_path / "in-process" / "output_002.h5"           # a modes run starts from another's volumes
    found = driver.check_inputs(settings(num_modes=2, nonrot_modes=1, start_model=start), *inputs)
    with h5py.File(start) as f:
        np.testing.assert_array_equal(found.start_model, f["intensities"][()])
    with pytest.raises(InputError, match=r"shape \(3, 91, 91, 91\), but the model is \(2, 91, 91, 91\)"):
        driver.check_inputs(settings(num_modes=2, start_model=start), *inputs)


def test_modes_that_do_not_fit_memory_are_one_line_before_any_work(emc_small):
    with pytest.raises(InputError, match=r"num_modes 40 \+ nonrot_modes 2 volumes of 91\^3") as caught:
        check_modes(settings(num_modes=40, nonrot_modes=2), 91, memory=2 ** 30)
    assert caught.value.field == "emc.num_modes" and "\n" not in str(caught.value)
    with pytest.raises(InputError, match="num_modes 1000000"):        # on this machine's real memory
        driver.check_inputs(settings(num_modes=1_000_000), emc_small["photons"], emc_small["detector"])
    check_modes(settings(num_modes=3), 91, memory=2 ** 30)               # 3 x 91^3 x 80 B = 0.17 GiB: fits


def test_half_sets_count_their_modes_twice():
    """emc.halves runs both half sets side by side, each with every volume: 3 volumes of 91^3 (0.17 GiB) fit 0.3 GiB
    once, not twice (the check counted one process, and the halves ran out of memory after the whole run)."""
    check_modes(settings(num_modes=3), 91, memory=0.3 * 2 ** 30)
    with pytest.raises(InputError, match=r"x 2 half sets run side by side \(emc.halves\) need ~0.3 GiB") as caught:
        check_modes(settings(num_modes=3, halves=True), 91, memory=0.3 * 2 ** 30)
    assert "emc.halves: false" in caught.value.fix
