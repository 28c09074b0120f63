"""Compile a CUDA source from ``kernels/cuda/`` once and launch its kernels, through CuPy or PyCUDA.

The two runtimes are thin: each compiles the same ``.cu`` text and launches a named
kernel with a grid, a block and arguments (device arrays as CuPy arrays, scalars as
NumPy scalars of the C type).  Everything else — argument checks, grid sizes — lives
in :class:`Launcher` and the typed wrappers, once for both runtimes, and is tested
without a GPU by giving them a recording runtime.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

RUNTIMES = ("cupy", "pycuda")
BLOCK = 256                     # threads per block: a multiple of 32 (the kernels' warp reductions need it)


def source(name: str) -> str:
    """The text of ``kernels/cuda/<name>``."""
    return (resources.files("spibatch") / "kernels" / "cuda" / name).read_text(encoding="utf-8")


class CupyRuntime:
    """CuPy RawModule (the default)."""

    def __init__(self, code: str):
        import cupy

        self._module = cupy.RawModule(code=code, options=("--std=c++17",))

    def launch(self, name: str, grid: tuple, block: tuple, args: tuple) -> None:
        self._module.get_function(name)(grid, block, args)


class PycudaRuntime:
    """PyCUDA SourceModule on the primary context (shared with CuPy), CuPy arrays passed as pointers."""

    def __init__(self, code: str):
        import pycuda.autoprimaryctx  # noqa: F401  (the context CuPy uses too)
        from pycuda.compiler import SourceModule

        self._module = SourceModule(code, no_extern_c=True, options=["--std=c++17"])

    def launch(self, name: str, grid: tuple, block: tuple, args: tuple) -> None:
        converted = tuple(np.uintp(a.data.ptr) if hasattr(a, "data") and hasattr(a.data, "ptr") else a for a in args)
        self._module.get_function(name)(*converted, block=block, grid=grid)


@lru_cache(maxsize=None)
def _runtime(kind: str, name: str):
    if kind not in RUNTIMES:
        raise ValueError(f"unknown gpu_runtime {kind!r}: one of {', '.join(RUNTIMES)}")
    cls = CupyRuntime if kind == "cupy" else PycudaRuntime
    return cls(source(name))


class Launcher:
    """Typed launches of the kernels in one ``.cu`` file.

    runtime: "cupy", "pycuda", or any object with ``launch(name, grid, block, args)`` (tests).
    """

    def __init__(self, source_name: str, runtime="cupy"):
        self.source_name = source_name
        self.runtime = _runtime(runtime, source_name) if isinstance(runtime, str) else runtime

    def __call__(self, name: str, grid: tuple, args: tuple, block: tuple = (BLOCK, 1, 1)) -> None:
        grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
        if min(grid) < 1 or grid[0] > 2 ** 31 - 1 or max(grid[1:]) > 65535:
            raise ValueError(f"{name}: grid {grid} outside CUDA's limits")
        self.runtime.launch(name, grid, block, args)


def check(name: str, array, dtype, shape: tuple | None = None) -> None:
    """Raise ValueError unless ``array`` is a C-contiguous device (or host, in tests) array of dtype and shape."""
    if np.dtype(array.dtype) != np.dtype(dtype):
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)}, got {array.dtype}")
    if shape is not None and tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(array.shape)}")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous")


def blocks_for(count: int, per_block: int = BLOCK, most: int = 65535 * 32) -> int:
    """Blocks of a grid-stride loop over ``count`` items."""
    return max(1, min((int(count) + per_block - 1) // per_block, most))
