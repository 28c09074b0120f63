"""The EMC step's GPU path against the CPU path, on every back-end the ``xp`` fixture offers.

On numpy the CUDA kernels are replaced by their numpy twins (kernels/cuda_twin.py): this
checks the orchestration (buffers, chunks of frames, blocks of rotations, pruning, launch
arguments), not the CUDA C; on cupy / pycuda (a GPU) the same tests run the real kernels.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_cuda_launchers import signatures
from test_emc_step import problem  # noqa: F401  (the shared synthetic EMC problem, a fixture)

from spibatch.emc import driver
from spibatch.emc.executors import InProcess
from spibatch.emc.gpu_step import gpu_shard_step, plan
from spibatch.emc.settings import EMCSettings
from spibatch.emc.step import shard_step
from spibatch.emc.types import Shard, StepState
from spibatch.io.results import read_volume
from spibatch.kernels.cuda_twin import TwinRuntime
from spibatch.kernels.device import CPU, Device


def device_of(xp) -> Device:
    """The Device of an ``xp`` fixture back-end: the numpy twins, or the GPU through cupy / pycuda."""
    return Device("gpu", "twin" if xp.name == "numpy" else xp.name)


class Recording:
    """A stand-in for a GPU Device whose kernels launch on ``runtime`` (a twin that counts or checks launches)."""

    xp = np

    def __init__(self, runtime):
        self.launch_runtime = runtime

    def activate(self) -> None:
        return None


def assert_same_sums(cpu, gpu, kept_tolerance: int = 0):
    scale = np.abs(cpu.numerator).max()
    assert np.abs(gpu.numerator - cpu.numerator).max() <= 2e-5 * scale
    assert np.abs(gpu.denominator - cpu.denominator).max() <= 2e-5 * np.abs(cpu.denominator).max()
    f, g = cpu.frames, gpu.frames
    assert set(g) == set(f)
    np.testing.assert_array_equal(g["counts"], f["counts"])
    assert np.mean(g["best_rotation"] == f["best_rotation"]) >= 0.99
    assert np.abs(g["num_kept"] - f["num_kept"]).max() <= kept_tolerance
    np.testing.assert_allclose(g["scale_denominator"], f["scale_denominator"], rtol=2e-5)
    np.testing.assert_allclose(g["log_likelihood"], f["log_likelihood"], rtol=1e-5, atol=0.05)
    np.testing.assert_allclose(g["mutual_info"], f["mutual_info"], atol=2e-3)
    np.testing.assert_allclose(g["best_probability"], f["best_probability"], atol=2e-3)


@pytest.mark.parametrize("beta", [0.05, 1.0])            # many rotations kept per frame / a few
@pytest.mark.parametrize("chunks", [None, (37, 64)])      # all at once / 3 chunks of frames x 7 blocks of rotations
def test_gpu_step_gives_the_cpu_sums(problem, xp, beta, chunks):  # noqa: F811
    detector, pixels, rotations, truth, photons, _ = problem
    shard = Shard.from_photons(photons.select(10, 120), pixels, 10)    # a shard not starting at frame 0
    state = StepState(1, np.full(120, beta), np.linspace(0.8, 1.2, 120))
    cpu = shard_step(truth, rotations, pixels, shard, state)
    frame_chunk, rotation_block = chunks or (None, None)
    gpu = gpu_shard_step(truth, rotations, pixels, shard, state, device=device_of(xp),
                         frame_chunk=frame_chunk, rotation_block=rotation_block)
    assert gpu.first_frame == 10 and len(gpu.frames["counts"]) == 110
    assert isinstance(gpu.numerator, np.ndarray) and gpu.numerator.dtype == np.float64   # host arrays: reduce as is
    assert_same_sums(cpu, gpu, kept_tolerance=0 if xp.name == "numpy" else 1)
    assert {"expand", "likelihood", "normalize", "merge", "transfer"} == set(gpu.timings)


def test_pixels_and_frames_beyond_the_grid_limit_go_in_pieces(problem, monkeypatch):  # noqa: F811
    """More pixels (or frames) than CUDA's grid.y holds (65 535) are launched in row blocks: same sums."""
    from spibatch.emc import gpu_step

    detector, pixels, rotations, truth, photons, _ = problem
    shard = Shard.from_photons(photons, pixels)
    state = StepState(1, np.full(120, 0.2), np.ones(120))
    whole = gpu_shard_step(truth, rotations, pixels, shard, state, device=Device("gpu", "twin"))
    monkeypatch.setattr(gpu_step, "MAX_ROWS", 100)            # 396 used of 564 pixels, 120 frames: in pieces
    runtime = TwinRuntime()
    pieces = gpu_shard_step(truth, rotations, pixels, shard, state, device=Recording(runtime))
    assert runtime.calls["normalize_probabilities"] == 2                           # 2 chunks of frames
    assert runtime.calls["log_views"] == 2 * -(-pixels.num_used // 100)            # pixels in pieces, per chunk
    assert runtime.calls["merge_views"] == 2 * -(-len(pixels.q) // 100)
    assert_same_sums(whole, pieces)


class SignatureCheckingTwin(TwinRuntime):
    """The numpy twins, after checking each launch against the kernel's parsed C signature."""

    expected = signatures("emc.cu")

    def launch(self, name, grid, block, args):
        kinds = self.expected[name]
        assert len(args) == len(kinds), name
        for i, (arg, (pointer, dtype)) in enumerate(zip(args, kinds)):
            assert (isinstance(arg, np.ndarray) if pointer else isinstance(arg, np.generic)), (name, i)
            assert arg.dtype == dtype, (name, i, arg.dtype, dtype)
        super().launch(name, grid, block, args)


def test_every_launch_of_a_chunked_step_matches_the_c_signatures(problem):  # noqa: F811
    detector, pixels, rotations, truth, photons, _ = problem
    shard = Shard.from_photons(photons, pixels)
    runtime = SignatureCheckingTwin()
    gpu_shard_step(truth, rotations, pixels, shard, StepState(1, np.full(120, 0.1), np.ones(120)),
                   device=Recording(runtime), frame_chunk=50, rotation_block=96)
    blocks = -(-len(rotations) // 96)
    assert runtime.calls == {"log_views": 3 * blocks, "photon_log_likelihood": 3 * blocks,
                             "normalize_probabilities": 3, "weighted_photons": 3 * blocks,
                             "merge_views": 3 * blocks}


def test_the_plan_fits_the_memory_budget():
    # the large case: 100 000 frames, 50 000 rotations, 50 000 pixels, 40 GB
    chunk, block = plan(100_000, 50_000, 50_000, 40 * 10 ** 9)
    assert 0 < chunk <= 100_000 and chunk * 50_000 * 8 <= 20 * 10 ** 9
    assert block % 32 == 0 and block * (8 * 50_000 + 48 * chunk) <= 20 * 10 ** 9
    assert plan(500, 420, 1000, 10 ** 9) == (500, 420)              # small: everything at once
    assert plan(10, 10_000, 10 ** 6, 10 ** 6)[1] == 32               # at least a warp of rotations
    sorted_chunk = plan(100_000, 50_000, 50_000, 40 * 10 ** 9, top=3)[0]   # the top rotations' sort: 12 B more
    assert sorted_chunk * 50_000 * 20 <= 20 * 10 ** 9 < (sorted_chunk + 1) * 50_000 * 20 and sorted_chunk < chunk


def test_emc_driver_on_the_device_matches_the_cpu_run(emc_small, tmp_path, xp):
    cfg = EMCSettings(num_div=2, iterations=2, frames_per_shard=120)
    outputs = {}
    for name, device in (("cpu", CPU), ("gpu", device_of(xp))):
        paths = driver.run_emc(cfg, emc_small["photons"], emc_small["detector"], tmp_path / name,
                               executor=InProcess(device))
        outputs[name] = read_volume(paths["intensity"])
    cpu, gpu = outputs["cpu"], outputs["gpu"]
    assert np.abs(gpu - cpu).max() <= 1e-3 * np.abs(cpu).max()
    assert (tmp_path / "gpu" / "output_002.h5").exists() and (tmp_path / "gpu" / "EMC.log").exists()


@pytest.mark.parametrize("chunks", [None, (37, 64)])
def test_gpu_step_searches_each_frames_candidates_as_the_cpu_does(problem, xp, chunks):  # noqa: F811
    """Coarse-to-fine (emc.refine) on the GPU path: the union of the shard's candidates, the other pairs of each
    frame left out; the same sums, best and top rotations as the CPU step with the same candidates."""
    from spibatch.emc.refine import candidates
    from spibatch.emc.types import Rotations

    detector, pixels, rotations, truth, photons, true_rot = problem
    shard = Shard.from_photons(photons.select(10, 120), pixels, 10)
    coarse = Rotations.refined_600_cell(1)
    rng = np.random.default_rng(5)
    top = rng.integers(0, len(coarse), (120, 2))
    found = candidates(top, coarse.quaternions, rotations.quaternions, 1.0)
    assert np.diff(found.ptr).mean() < len(rotations) / 3
    state = StepState(1, np.full(120, 0.3), np.linspace(0.8, 1.2, 120), candidates=found, top=3)
    cpu = shard_step(truth, rotations, pixels, shard, state)
    frame_chunk, rotation_block = chunks or (None, None)
    gpu = gpu_shard_step(truth, rotations, pixels, shard, state, device=device_of(xp),
                         frame_chunk=frame_chunk, rotation_block=rotation_block)
    for d in range(110):                   # every frame's best and top rotations are among its own candidates
        mine = set(found.order[found.pos[found.ptr[10 + d]:found.ptr[11 + d]]])
        assert gpu.frames["best_rotation"][d] in mine
        assert set(gpu.frames["top_rotations"][d][gpu.frames["top_rotations"][d] >= 0]) <= mine
    assert np.mean(gpu.frames["top_rotations"][:, 0] == cpu.frames["top_rotations"][:, 0]) >= 0.99
    cpu.frames.pop("top_rotations"), gpu.frames.pop("top_rotations")
    assert_same_sums(cpu, gpu, kept_tolerance=0 if xp.name == "numpy" else 1)


def test_a_frame_without_candidates_has_no_best_rotation_on_the_device(problem, xp):  # noqa: F811
    """The GPU audit: a frame left with no candidates (what `Candidates.restricted` gives the frames outside an HTC
    task's range) took rotation `searched[0]` as its best on the GPU path -- the argmax of a row of -inf -- where
    the CPU step says -1; every other frame's best is one of its candidates on both."""
    from spibatch.emc.refine import candidates
    from spibatch.emc.types import Rotations

    detector, pixels, rotations, truth, photons, true_rot = problem
    coarse = Rotations.refined_600_cell(1)
    top = np.random.default_rng(5).integers(0, len(coarse), (120, 2))
    found = candidates(top, coarse.quaternions, rotations.quaternions, 1.0).restricted(0, 119)   # 119: none
    shard = Shard.from_photons(photons, pixels)
    state = StepState(1, np.full(120, 0.3), np.ones(120), candidates=found, top=2)
    cpu = shard_step(truth, rotations, pixels, shard, state)
    gpu = gpu_shard_step(truth, rotations, pixels, shard, state, device=device_of(xp))
    assert cpu.frames["best_rotation"][119] == -1 and gpu.frames["best_rotation"][119] == -1
    assert gpu.frames["best_probability"][119] == 0 and list(gpu.frames["top_rotations"][119]) == [-1, -1]
    assert (gpu.frames["best_rotation"][:119] >= 0).all()
    assert np.mean(gpu.frames["best_rotation"] == cpu.frames["best_rotation"]) >= 0.99
