"""Where array code runs: one :class:`Device`, resolved once at a command's entry and passed down.

``Device("cpu")`` runs on numpy (and Numba); ``Device("gpu", "cupy" | "pycuda")`` on CuPy arrays
with the CUDA kernels of ``kernels/cuda/`` compiled and launched by that runtime.  A Device is two
strings, so it pickles into Parsl tasks and MPI ranks; the array module and the launch runtime are
looked up where they are used (each process takes its own GPU, :func:`spibatch.kernels.xp.ensure_device`).

Runtimes are registered by name.  Besides ``cupy`` and ``pycuda`` there is ``twin``: the numpy twins
of the CUDA kernels (:mod:`spibatch.kernels.cuda_twin`), which run the whole GPU code path on a
machine without a GPU.  It is a test aid: :func:`resolve` picks it for ``device: gpu`` when
``SPIBATCH_GPU_TWIN=1`` is in the environment.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

TWIN_ENV = "SPIBATCH_GPU_TWIN"
KINDS = ("cpu", "gpu")
# name -> "module:attribute" of a class whose instances launch kernels (``launch(name, grid, block, args)``)
# and whose ``xp`` (when it has one) is the array module to use with it; cupy/pycuda are built per .cu source
# by kernels.cuda_launch and carry no entry here.
REGISTERED = {"twin": "spibatch.kernels.cuda_twin:TwinRuntime"}
GPU_RUNTIMES = ("cupy", "pycuda", *REGISTERED)


@dataclass(frozen=True)
class Device:
    """kind: "cpu" | "gpu"; runtime: "numpy" on the CPU, "cupy" | "pycuda" | a registered name on a GPU."""

    kind: str = "cpu"
    runtime: str = "numpy"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown device kind {self.kind!r}: one of {', '.join(KINDS)}")
        allowed = ("numpy",) if self.kind == "cpu" else GPU_RUNTIMES
        if self.runtime not in allowed:
            raise ValueError(f"runtime {self.runtime!r} does not run on {self.kind}: one of {', '.join(allowed)}")

    @property
    def is_gpu(self) -> bool:
        return self.kind == "gpu"

    @property
    def real_gpu(self) -> bool:
        """A GPU through CuPy (not a registered stand-in such as the twin)."""
        return self.is_gpu and self.runtime not in REGISTERED

    @property
    def xp(self):
        """The array module: numpy, or cupy on a real GPU (a registered runtime names its own)."""
        if not self.is_gpu:
            return np
        if self.runtime in REGISTERED:
            return getattr(runtime_object(self.runtime), "xp", np)
        import cupy

        return cupy

    @property
    def launch_runtime(self):
        """What :class:`~spibatch.kernels.cuda_launch.Launcher` takes: "cupy", "pycuda", or the registered
        runtime's (per-process) instance."""
        return runtime_object(self.runtime) if self.runtime in REGISTERED else self.runtime

    def activate(self) -> int | None:
        """Make this process's GPU current (once per process); its ordinal, or None off a real GPU."""
        if not self.real_gpu:
            return None
        from spibatch.kernels.xp import ensure_device

        return ensure_device(self.runtime)

    def __str__(self) -> str:
        return "cpu" if not self.is_gpu else f"gpu ({self.runtime})"


CPU = Device()


@lru_cache(maxsize=None)
def runtime_object(name: str):
    """The one instance of the registered runtime ``name`` in this process."""
    module, _, attribute = REGISTERED[name].partition(":")
    return getattr(importlib.import_module(module), attribute)()


def resolve(kind: str = "cpu", runtime: str = "cupy", *, path=None, env=None) -> Device:
    """The Device a pipeline's ``device`` / ``gpu_runtime`` ask for, checked: InputError (one line naming the
    key and what to install) when a GPU is asked for and CuPy, PyCUDA or a GPU is missing."""
    env = os.environ if env is None else env
    if kind == "cpu":
        return CPU
    if env.get(TWIN_ENV) == "1":
        return Device("gpu", "twin")
    from spibatch.kernels.xp import require_gpu

    require_gpu(runtime, path=path)
    return Device("gpu", runtime)


def declared(kind: str = "cpu", runtime: str = "cupy", *, env=None) -> Device:
    """The Device a pipeline asks for, unchecked: what a driver without a GPU hands to tasks that will run where
    there is one (each worker checks on arrival).  The twin when ``SPIBATCH_GPU_TWIN=1``, as :func:`resolve`."""
    env = os.environ if env is None else env
    if kind == "cpu":
        return CPU
    return Device("gpu", "twin" if env.get(TWIN_ENV) == "1" else runtime)
