"""Phase retrieval's GPU path (starts batched on one device) against the CPU path, per ``xp`` back-end.

On numpy the CUDA kernels are their numpy twins (kernels/cuda_twin.py) and the FFTs numpy's:
this checks the orchestration (batching, per-start sums and thresholds, the Fourier-space blur,
argument order), not the CUDA C; on cupy / pycuda (a GPU) the same tests run cuFFT and the kernels.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_phasing_operators import _blob, _intensity

from spibatch.kernels.device import Device
from spibatch.phasing.gpu import batches, starts_per_batch
from spibatch.phasing.measurement import autocorrelation_support, prepare
from spibatch.phasing.operators import parse_recipe
from spibatch.phasing.reconstruction import Reconstruction
from spibatch.phasing.settings import PhasingSettings
from spibatch.phasing.starts import run_starts

SEEDS = [3, 4, 5]


def _device(xp) -> Device:
    """The GPU Device of an ``xp`` back-end: the numpy twins of the kernels, or CuPy / PyCUDA on a GPU."""
    return Device("gpu", "twin" if xp.name == "numpy" else xp.runtime)


def _settings(recipe: str) -> PhasingSettings:
    return PhasingSettings(recipe=parse_recipe(recipe), threads=1, fft_backend="scipy")


@pytest.fixture(scope="module")
def measurement():
    return prepare(_intensity(_blob(32, 6)))


@pytest.mark.parametrize("recipe", ["HIO(beta=0.9) ** 5 * ShrinkWrap(sigma=2, threshold=0.1) * ER() ** 5",
                                    "RAAR(beta=0.8) ** 3 * DM() ** 2 * ShrinkWrap(keep=0.05) * ER() ** 3"])
def test_batched_starts_give_each_seeds_cpu_answer(measurement, xp, recipe):
    settings, device = _settings(recipe), _device(xp)
    assert batches(SEEDS, measurement.n, device) == [SEEDS]           # the three starts share one batch
    gpu = run_starts(SEEDS, measurement, settings, device)
    assert [r.seed for r in gpu] == SEEDS
    for seed, result in zip(SEEDS, gpu):
        [cpu] = run_starts([seed], measurement, settings)
        assert isinstance(result.density, np.ndarray) and result.density.dtype == np.float32
        assert np.abs(result.density - cpu.density).max() <= 1e-4 * np.abs(cpu.density).max()
        assert result.algorithms == cpu.algorithms
        np.testing.assert_allclose(result.errors, cpu.errors, rtol=1e-4)
        assert result.final_error == pytest.approx(cpu.final_error, rel=1e-4)
        assert np.count_nonzero(result.support != cpu.support) <= 1e-4 * cpu.support.size
        assert [s[0] for s in result.support_sizes] == [s[0] for s in cpu.support_sizes]
        assert all(abs(a[1] - b[1]) <= 2 for a, b in zip(result.support_sizes, cpu.support_sizes))
    assert len({float(r.final_error) for r in gpu}) == 3        # three different starts, not one copied


def test_complex_iterates_without_realness(xp):
    m = prepare(_intensity(_blob(16, 3)), real=False)
    settings = _settings("HIO() ** 4 * ShrinkWrap() * ER() ** 2")
    gpu = run_starts([7, 8], m, settings, _device(xp))
    for result in gpu:
        [cpu] = run_starts([result.seed], m, settings)
        assert result.density.dtype == np.complex64
        assert np.abs(result.density - cpu.density).max() <= 1e-4 * np.abs(cpu.density).max()


def test_a_nan_voxel_leaves_the_device_threshold_as_the_cpus(xp):
    """The GPU audit: the device's maximum took NaN (`volume.real.max()`), so a start with one NaN voxel got an
    empty support from the shrink-wrap threshold where the CPU kernel (np.fmax: NaN left out) kept 285 voxels."""
    from spibatch.kernels import phasing_cpu
    from spibatch.phasing.gpu import DeviceKernels

    volume = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    volume[1, 2, 3] = np.nan
    device = DeviceKernels(_device(xp))
    on_device = device.xp.asarray(volume)
    cpu_support, gpu_support = np.zeros(volume.shape, bool), device.xp.zeros(volume.shape, bool)
    kept_cpu, top_cpu = phasing_cpu.threshold_relative(volume, 0.5, cpu_support)
    kept_gpu, top_gpu = device.threshold_relative(on_device, 0.5, gpu_support)
    assert top_gpu == top_cpu == np.nanmax(volume) and kept_gpu == kept_cpu > 0


def test_the_batch_holds_every_start_apart(measurement, xp):
    support = autocorrelation_support(measurement, 0.04)
    rec = Reconstruction(measurement, support, SEEDS, device=_device(xp))
    assert rec.x.shape == (3, 32, 32, 32) and rec.support.shape == (3, 32, 32, 32)
    rec.algorithm = "ER"
    rec.modulus_projection()
    assert [len(h) for h in rec.histories] == [1, 1, 1]
    assert len({h[0]["error"] for h in rec.histories}) == 3


def test_batch_sizes_fill_but_do_not_overflow_the_device():
    assert starts_per_batch(128, 16, 80 * 2 ** 30) == 16      # 2 M voxels each: 16 fill an H100
    assert starts_per_batch(128, 100, 80 * 2 ** 30) == 16
    assert starts_per_batch(512, 16, 80 * 2 ** 30) == 1       # one 512^3 start fills it alone
    assert starts_per_batch(128, 16, 2 ** 28) == 2            # little free memory: fewer (64 MB a start)
    assert starts_per_batch(64, 3, 2 ** 40) == 3              # never more than asked
    assert batches(list(range(5)), 64, Device("gpu", "twin")) == [[0, 1, 2, 3, 4]]


def test_phase_stage_on_the_device_writes_the_cpu_result(tmp_path, xp):
    from spibatch.config import Phasing
    from spibatch.io.results import read_result, write_result
    from spibatch.phasing.driver import run_phasing

    path = tmp_path / "intensity.h5"
    write_result(path, {"intensity": _intensity(_blob(32, 5, seed=2)).astype(np.float32)}, {"voxel_size_per_m": 1e8})
    cfg = Phasing(intensity=path, recipe="HIO(beta=0.9) ** 10 * ShrinkWrap(sigma=2, threshold=0.1) * ER() ** 10",
                  num_starts=3, keep_best=2, threads=1, fft="scipy")
    settings = PhasingSettings.from_dict(cfg.model_dump())
    run_phasing(path, tmp_path / "cpu", settings, show_progress=False)
    run_phasing(path, tmp_path / "gpu", settings, show_progress=False, device=_device(xp))
    (cpu, _), (gpu, _) = read_result(tmp_path / "cpu" / "phasing.h5"), read_result(tmp_path / "gpu" / "phasing.h5")
    assert list(gpu["seeds"]) == list(cpu["seeds"]) and list(gpu["kept_seeds"]) == list(cpu["kept_seeds"])
    np.testing.assert_allclose(gpu["errors"], cpu["errors"], rtol=1e-4)
    assert np.abs(gpu["density"] - cpu["density"]).max() <= 1e-4 * np.abs(cpu["density"]).max()


def test_auto_in_a_batch_gives_each_seeds_cpu_answer(measurement, xp):
    """recipe auto on a GPU: the three starts of one batch shrink-wrap with their own thresholds (seed % 3),
    hold out the same free set, and each returns its CPU answer with its free error."""
    settings, device = _settings("Auto(iterations=10, polish=10, period=5)"), _device(xp)
    gpu = run_starts(SEEDS, measurement, settings, device)
    for seed, result in zip(SEEDS, gpu):
        [cpu] = run_starts([seed], measurement, settings)
        assert result.failure is None and cpu.failure is None
        assert result.free_error == pytest.approx(cpu.free_error, rel=1e-3)
        assert result.algorithms == cpu.algorithms == ["RAAR"] * 10 + ["ER"] * 10
        assert all(abs(a[1] - b[1]) <= 2 for a, b in zip(result.support_sizes, cpu.support_sizes))
        assert np.abs(result.density - cpu.density).max() <= 1e-3 * np.abs(cpu.density).max()
    assert len({r.support_sizes[1][1] for r in gpu}) == 3         # three thresholds, three supports
