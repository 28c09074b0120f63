"""Which GPU a process uses, and small helpers for numpy-or-cupy arrays (the Device is :mod:`.device`).

``device: cpu`` runs on numpy; ``device: gpu`` on cupy, with the CUDA kernels of
``kernels/cuda/`` launched through ``gpu_runtime`` (cupy or pycuda).  One GPU per
process: an MPI rank takes device ``local_rank % visible`` (OMPI_COMM_WORLD_LOCAL_RANK,
SLURM_LOCALID, MPI_LOCALRANKID, ...), and a Parsl worker started with
``available_accelerators`` already sees exactly one (its CUDA_VISIBLE_DEVICES), so it
takes device 0.  CuPy is imported only here, inside functions.
"""

from __future__ import annotations

import os

import numpy as np

from spibatch.errors import InputError

GPU_RUNTIMES = ("cupy", "pycuda")
# Node-local rank of the process, as launchers set it (OpenMPI, Slurm srun, MPICH/Hydra and Intel MPI, MVAPICH, PMIx)
LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK",
                   "PMIX_LOCAL_RANK", "PMI_LOCAL_RANK")


def local_rank(env=None) -> int:
    """The process's rank on its node from the launcher's variables (0 when none is set)."""
    env = os.environ if env is None else env
    for name in LOCAL_RANK_VARS:
        value = env.get(name, "")
        if value.strip().isdigit():
            return int(value)
    return 0


def visible_devices(env=None) -> list[str] | None:
    """The entries of CUDA_VISIBLE_DEVICES (None when unset: every device is visible)."""
    env = os.environ if env is None else env
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def device_for_rank(rank: int, visible: list[str] | None = None, count: int | None = None) -> int:
    """The CUDA ordinal (within the visible devices) for node-local rank ``rank``: ``rank % devices``.

    visible: CUDA_VISIBLE_DEVICES entries (a Parsl worker with ``available_accelerators`` has one);
    count: the number of devices the runtime sees, used when ``visible`` is None.
    """
    devices = len(visible) if visible is not None else count
    if not devices:
        raise RuntimeError("no CUDA device is visible (CUDA_VISIBLE_DEVICES is empty or no GPU is present)")
    return int(rank) % devices


def require_gpu(runtime: str = "cupy", *, path=None) -> None:
    """InputError (one line: key, what to install) unless CuPy (and PyCUDA for that runtime) and a GPU are here."""
    if runtime not in GPU_RUNTIMES:
        raise InputError(f"unknown GPU runtime {runtime!r}", path=path, field="gpu_runtime",
                         fix=f"set gpu_runtime to one of {', '.join(GPU_RUNTIMES)}")
    try:
        import cupy
    except ImportError:
        raise InputError("set to gpu, but CuPy is not installed", path=path, field="device",
                         fix="pip install cupy-cuda12x (or cupy-cuda13x, matching the CUDA driver), "
                         "or set device: cpu") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:   # CUDARuntimeError: no driver, no device
        count, why = 0, f" ({str(exc).splitlines()[0]})"
    else:
        why = ""
    if count == 0:
        raise InputError(f"set to gpu, but no CUDA GPU is usable here{why}", path=path, field="device",
                         fix="run on a machine with an NVIDIA GPU and driver, or set device: cpu")
    if runtime == "pycuda":
        try:
            import pycuda  # noqa: F401
        except ImportError:
            raise InputError("set to pycuda, but PyCUDA is not installed", path=path, field="gpu_runtime",
                             fix="pip install pycuda (it builds against the local CUDA toolkit), or set "
                             "gpu_runtime: cupy") from None


def use_device(env=None) -> int:
    """Make this process's GPU current for CuPy (and for PyCUDA via CUDA_DEVICE); returns its ordinal."""
    import cupy

    env = os.environ if env is None else env
    ordinal = device_for_rank(local_rank(env), visible_devices(env), cupy.cuda.runtime.getDeviceCount())
    cupy.cuda.Device(ordinal).use()
    env.setdefault("CUDA_DEVICE", str(ordinal))   # pycuda.autoprimaryctx picks this device
    _current[:] = [ordinal]
    return ordinal


_current: list[int] = []


def ensure_device(runtime: str = "cupy") -> int:
    """:func:`use_device` once per process (the GPU code calls it, so a Parsl task or an MPI rank that calls
    a shard step or phasing start on the GPU directly gets its own GPU too); returns the ordinal.  A worker
    without CuPy or a GPU says so in one line (:func:`require_gpu`; the driver could not check it)."""
    if not _current:
        require_gpu(runtime)
        use_device()
    return _current[0]


def module_of(array):
    """The array module an array belongs to (cupy for a device array, else numpy); no CuPy import for numpy."""
    if type(array).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def to_host(array) -> np.ndarray:
    """A numpy copy (or the array itself) of a numpy or cupy array."""
    return array.get() if hasattr(array, "get") and not isinstance(array, np.ndarray) else np.asarray(array)


def synchronize(xp) -> None:
    """Wait for the device (before reading a clock); nothing for numpy."""
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()


def free_bytes(xp, fallback: int = 2 ** 30) -> int:
    """Free device memory in bytes (CuPy's pool counted as free); ``fallback`` for numpy."""
    if xp is np:
        return fallback
    free, _total = xp.cuda.runtime.memGetInfo()
    pool = xp.get_default_memory_pool()
    return int(free + pool.free_bytes())
