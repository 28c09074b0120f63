"""Shared fixtures: where the reference data sets live, and a scratch run directory."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Modules the README's test command installs (the core dependencies and the [test] extra of pyproject.toml): a test
# that asks for one with pytest.importorskip fails when it cannot be imported, instead of skipping -- a Parsl whose
# import broke skipped every platform test as "not installed" and left the run green.  Others still skip.
INSTALLED_FOR_TESTS = {"parsl", "jsonschema", "mpi4py", "pyfftw", "starlette", "uvicorn", "httpx", "selenium",
                       "kubernetes", "kmock", "kubernetes_validate", "helm_python", "dockerfile_parse", "extra_data",
                       "extra_geom", "karabo_bridge", "pytest_timeout", "pytest_asyncio"}
_importorskip = pytest.importorskip


def _import_or_fail(modname: str, minversion: str | None = None, reason: str | None = None, **kwargs):
    """pytest.importorskip, except for INSTALLED_FOR_TESTS: those must import."""
    if modname.split(".")[0] not in INSTALLED_FOR_TESTS:
        return _importorskip(modname, minversion, reason, **kwargs)
    import importlib

    try:
        return importlib.import_module(modname)
    except ImportError as exc:
        raise ImportError(f"{modname} is installed by the README's test command (pip install '.[test]') and "
                          f"must import; it does not: {exc}") from exc


pytest.importorskip = _import_or_fail


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


def slurm_idle() -> bool:
    """Whether a Slurm cluster answers here with a node that can run jobs."""
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return any(s in states for s in ("idle", "mixed", "allocated"))


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running single-node cluster: the one already up, or started here and stopped afterwards."""
    if shutil.which("slurmctld") is None or shutil.which("munged") is None:
        pytest.skip("Slurm is not installed (apt-get install slurm-wlm slurmctld slurmd slurm-client munge; "
                    ".ci/run does)")
    if slurm_idle():
        yield "debug"
        return
    up = subprocess.run(["bash", str(REPO / ".ci" / "slurm-up.sh")], capture_output=True, text=True, timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield "debug"
    finally:
        subprocess.run(["bash", str(REPO / ".ci" / "slurm-down.sh")], timeout=60)
