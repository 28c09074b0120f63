"""Shared fixtures: where the reference data sets live, and a scratch run directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_datasets() -> Path:
    env = os.environ.get("SPIBATCH_SHARED_DATASETS")
    return Path(env) if env else REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """``../shared/datasets`` (or $SPIBATCH_SHARED_DATASETS); skips with a reason when absent."""
    path = _shared_datasets()
    if not (path / "dragonfly-small" / "photons.emc").exists():
        pytest.skip(f"shared reference data not found at {path} (set SPIBATCH_SHARED_DATASETS)")
    return path


@pytest.fixture(scope="session")
def small_dataset(shared_datasets: Path) -> Path:
    """The Dragonfly-written 'small' data set (64 x 64 detector, 1000 frames)."""
    return shared_datasets / "dragonfly-small"


@pytest.fixture(scope="session")
def emc_small(small_dataset: Path, tmp_path_factory) -> dict[str, Path]:
    """240 frames of the small set and its detector, rewritten by our writers (EMC tests' input)."""
    from spibatch.io.dragonfly import read_photons, write_detector, write_photons
    from spibatch.detector import Detector
    folder = tmp_path_factory.mktemp("emc_small")
    paths = {"photons": folder / "photons.h5", "detector": folder / "detector.h5"}
    write_photons(paths["photons"], read_photons(small_dataset / "photons.emc", 0, 240))
    write_detector(paths["detector"], Detector.read(small_dataset / "det_sim.h5"))
    return paths


@pytest.fixture
def emc_config(emc_small: dict[str, Path]):
    """``make(folder, **emc)``: write ``folder/pipeline.yaml`` for ``spibatch emc`` on ``emc_small``
    (num_div 2, 3 iterations, shards of 60 frames unless overridden); returns its path."""

    def make(folder: Path, **emc) -> Path:
        settings = {"photons": emc_small["photons"], "detector": emc_small["detector"], "num_div": 2,
                    "iterations": 3, "frames_per_shard": 60, **emc}
        lines = ["name: emc-test", "emc:"] + [f"  {k}: {v}" for k, v in settings.items() if v is not None]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "pipeline.yaml"
        path.write_text("\n".join(lines) + "\n")
        return path

    return make


# ---------------------------------------------------------------- GPU back-ends (issue 5)

class GPUBackend:
    """What a numeric GPU test runs on: ``name``, ``xp`` (numpy or cupy) and ``runtime`` (for the Launcher)."""

    def __init__(self, name: str, xp, runtime):
        self.name, self.xp, self.runtime = name, xp, runtime

    def __repr__(self) -> str:
        return f"GPUBackend({self.name})"


@pytest.fixture(params=["numpy", "cupy", "pycuda"])
def xp(request) -> GPUBackend:
    """The GPU code path on: ``numpy`` (always: the numpy twins of the CUDA kernels, kernels/cuda_twin.py,
    so the orchestration runs without a GPU), ``cupy`` and ``pycuda`` (the CUDA kernels; skipped with
    the reason where CuPy, PyCUDA or a GPU is missing, as in CI)."""
    import numpy

    if request.param == "numpy":
        from spibatch.kernels.cuda_twin import TwinRuntime

        return GPUBackend("numpy", numpy, TwinRuntime())
    from spibatch.errors import InputError
    from spibatch.kernels.xp import require_gpu

    try:
        require_gpu(request.param)
    except InputError as exc:
        pytest.skip(f"{request.param}: no GPU here ({exc.problem})")
    import cupy

    return GPUBackend(request.param, cupy, request.param)
