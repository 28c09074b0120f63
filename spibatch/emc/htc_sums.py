"""HTC mode's partial sums through the shared filesystem, reduced in slabs of voxels by tasks.

Returned through Parsl, each shard task's sums (numerator and denominator: 2 x M^3 float64, 150 MB at
M = 211) were pickled, sent through the interchange over ZeroMQ and unpickled in the driver, which held
all of them at once and added them: the driver's time and memory per iteration grew as tasks x model
size.  Here the volumes never pass through Parsl or the driver one shard at a time:

* :func:`write_part` (in the shard task): the two volumes go to ``htc/sums_NNN_FFFFFFFFF.npy`` (one
  ``(2, M, M, M)`` ``.npy``, float32 when both are -- the CPU merge's sums are: half the bytes to write and
  read, and nothing lost, since the reduce adds them in float64 as :func:`~spibatch.emc.types.reduce` does --
  else float64; written atomically: a temporary name, then a rename) and the task
  returns a :class:`Part` -- the file, the shard's first frame, its per-frame arrays (D values each) and
  its timings: kilobytes through the interchange;
* :func:`reduce_slab` (a task): voxels ``lo .. hi`` of every part, added in frame order -- for each voxel
  the very additions :func:`spibatch.emc.types.reduce` makes (the first part's value, then each next one
  added), so the total is the same to the bit -- written to ``htc/total_NNN_KKK.npy``;
* :func:`reduce_parts` (the driver): cuts the M^3 voxels into ``slabs`` contiguous slabs, submits one
  reduce task per slab, reads the slabs into the total (2 M^3 values, whatever the number of tasks) and
  joins the per-frame arrays in frame order.  With one slab, or one part, it adds the parts itself,
  reading them from their files.

What the driver reads per iteration is one model's worth of sums (plus D values per frame), not one per
task; the reduce tasks read ``parts x 2 M^3`` values between them, each ``1 / slabs`` of it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spibatch import parsl_wait
from spibatch.emc.types import ShardSums
from spibatch.io.atomic import atomic_path
from spibatch.layout import HTC_SCRATCH_RE, htc_sums_name, htc_total_name

DTYPE = np.dtype("<f8")   # the sums as they are added, and the slabs' totals
PART_DTYPES = (np.dtype("<f4"), DTYPE)   # what a part file may hold
VOLUMES = 2              # numerator, denominator


@dataclass
class Part:
    """One shard's sums as a task left them: ``path`` holds numerator and denominator ((2,) + ``shape``
    float32 or float64); ``frames`` the per-frame arrays (D,) and ``timings`` the seconds of its phases, as in
    :class:`~spibatch.emc.types.ShardSums`."""

    first_frame: int
    path: str
    shape: tuple[int, ...]
    frames: dict[str, np.ndarray] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    nbytes: int = 0          # the volumes' bytes in the file


def write_volumes(path: str | os.PathLike, volumes: list[np.ndarray]) -> int:
    """``volumes`` (each the same shape) as one ``(len(volumes),) + shape`` ``.npy``, atomically, without
    stacking them in memory first: float32 when every volume is, else float64; returns the bytes of data
    written."""
    shape = volumes[0].shape
    dtype = PART_DTYPES[0] if all(v.dtype == np.float32 for v in volumes) else DTYPE
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": (len(volumes),) + tuple(shape)}
    written = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        for volume in volumes:
            if volume.shape != shape:
                raise ValueError(f"volumes of shapes {shape} and {volume.shape} in one file")
            data = np.ascontiguousarray(volume, dtype)
            fh.write(data.data)
            written += data.nbytes
    return written


def _header(fh, path) -> tuple[tuple[int, ...], int, np.dtype]:
    """The shape, data offset and dtype of the ``.npy`` open in ``fh``; ValueError unless C-order float32 or
    float64 (little-endian)."""
    version = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(fh)
    if dtype not in PART_DTYPES or fortran:
        raise ValueError(f"{path}: {dtype}{' (Fortran order)' if fortran else ''}, not C-order float32 or float64 "
                         "sums")
    return tuple(shape), fh.tell(), dtype


def read_rows(path: str | os.PathLike, rows: list[np.ndarray], lo: int = 0) -> None:
    """Fill ``rows[i]`` (contiguous float64, n values each) with values ``lo .. lo + n`` of volume ``i`` of the
    ``.npy`` at ``path`` (a ``(volumes,) + shape`` float32 or float64 array, volume i flattened in C order;
    float32 values are converted, exactly)."""
    with open(path, "rb", buffering=0) as fh:
        shape, start, dtype = _header(fh, path)
        voxels = int(np.prod(shape[1:]))
        if shape[0] < len(rows) or any(lo + len(r) > voxels for r in rows):
            raise ValueError(f"{path}: shape {shape}, too small for {len(rows)} rows from voxel {lo}")
        for i, row in enumerate(rows):
            fh.seek(start + (i * voxels + lo) * dtype.itemsize)
            target = row if dtype == row.dtype else np.empty(len(row), dtype)
            view, done = memoryview(target).cast("B"), 0
            while done < len(view):
                got = fh.readinto(view[done:])
                if not got:
                    raise ValueError(f"{path}: ends early (truncated?)")
                done += got
            if target is not row:
                row[:] = target


def write_part(folder: str | os.PathLike, iteration: int, sums: ShardSums) -> Part:
    """In the shard task: ``sums``' volumes to ``folder/sums_NNN_FFFFFFFFF.npy``; the small record to return.

    ``timings`` gains ``write_sums_s`` (seconds writing the file)."""
    began = time.perf_counter()
    path = Path(folder) / htc_sums_name(iteration, sums.first_frame)
    nbytes = write_volumes(path, [sums.numerator, sums.denominator])
    timings = dict(sums.timings, write_sums_s=time.perf_counter() - began)
    return Part(sums.first_frame, str(path), tuple(sums.numerator.shape), sums.frames, timings, nbytes)


def add_in_order(paths: list[str], lo: int, hi: int) -> np.ndarray:
    """Voxels ``lo .. hi`` of the parts at ``paths`` (in frame order) added up: (2, hi - lo) float64.

    The first part's values, then each next part's added: :func:`spibatch.emc.types.reduce`'s additions."""
    total = np.empty((VOLUMES, hi - lo), DTYPE)
    read_rows(paths[0], list(total), lo)
    if len(paths) > 1:
        more = np.empty_like(total)
        for path in paths[1:]:
            read_rows(path, list(more), lo)
            total += more
    return total


def reduce_slab(paths: list[str], lo: int, hi: int, out: str) -> dict[str, float]:
    """A reduce task: voxels ``lo .. hi`` of every part (``paths`` in frame order) added up, written to
    ``out`` ((2, hi - lo) float64 ``.npy``, atomically).  Returns its own seconds and bytes read."""
    began = time.perf_counter()
    total = add_in_order(paths, lo, hi)
    added = time.perf_counter()
    write_volumes(out, list(total))
    return {"read_add_s": added - began, "task_s": time.perf_counter() - began,
            "bytes_read": float(len(paths) * total.nbytes)}


def slab_bounds(voxels: int, slabs: int) -> list[tuple[int, int]]:
    """``slabs`` contiguous ranges covering ``0 .. voxels`` (sizes differing by at most one voxel)."""
    slabs = max(1, min(slabs, voxels))
    edges = [voxels * k // slabs for k in range(slabs + 1)]
    return [(edges[k], edges[k + 1]) for k in range(slabs)]


def reduce_parts(parts: list[Part], submit=None, folder: str | os.PathLike | None = None, iteration: int = 0,
                 slabs: int = 1) -> tuple[ShardSums, dict]:
    """The parts' sums added in frame order (any order given): ``(ShardSums, what it cost)``.

    ``slabs`` > 1 (and more than one part): one :func:`reduce_slab` task per slab through ``submit(fn, *args)
    -> Future``, the slabs written to ``folder``, then read here; else the parts are added here.  The cost:
    ``reduce_tasks``, ``reduce_task_s`` (the longest slab task's own time), ``gather_s`` (reading the total
    here, or adding the parts here), ``sums_bytes`` (the parts' volumes)."""
    parts = sorted(parts, key=lambda p: p.first_frame)
    if not parts:
        raise ValueError("an iteration needs at least one shard")
    shape = parts[0].shape
    if any(p.shape != shape for p in parts):
        raise ValueError(f"parts of shapes {sorted({p.shape for p in parts})} in one iteration")
    voxels = int(np.prod(shape))
    paths = [p.path for p in parts]
    bounds = slab_bounds(voxels, slabs) if len(parts) > 1 and submit is not None else [(0, voxels)]
    cost = {"reduce_tasks": 0, "reduce_task_s": 0.0, "gather_s": 0.0,
            "sums_bytes": float(sum(p.nbytes for p in parts))}
    if len(bounds) == 1:
        began = time.perf_counter()
        total = add_in_order(paths, 0, voxels)
        cost["gather_s"] = time.perf_counter() - began
    else:
        outs = [str(Path(folder) / htc_total_name(iteration, k)) for k in range(len(bounds))]
        futures = [submit(reduce_slab, paths, lo, hi, out) for (lo, hi), out in zip(bounds, outs)]
        done = parsl_wait.results(futures, "reduce tasks")
        began = time.perf_counter()
        total = np.empty((VOLUMES, voxels), DTYPE)
        for (lo, hi), out in zip(bounds, outs):
            read_rows(out, [total[0, lo:hi], total[1, lo:hi]])
            Path(out).unlink(missing_ok=True)
        cost.update(reduce_tasks=len(bounds), reduce_task_s=max(d["task_s"] for d in done),
                    gather_s=time.perf_counter() - began)
    frames = {k: np.concatenate([p.frames[k] for p in parts]) for k in parts[0].frames}
    timings = {k: sum(p.timings.get(k, 0.0) for p in parts) for k in parts[0].timings}
    return ShardSums(parts[0].first_frame, total[0].reshape(shape), total[1].reshape(shape), frames, timings), cost


def remove_parts(parts: list[Part]) -> None:
    for part in parts:
        Path(part.path).unlink(missing_ok=True)


def remove_scratch(folder: str | os.PathLike) -> list[str]:
    """Remove what an interrupted HTC iteration left in ``folder`` (models, sums, slabs, their temporary
    files); the timing log stays.  Returns the names removed."""
    gone = []
    for path in Path(folder).glob("*"):
        name = path.name
        temporary = name.startswith(".") and name.endswith(".part") and HTC_SCRATCH_RE.match(name[1:].rsplit(".", 2)[0])
        if path.is_file() and (HTC_SCRATCH_RE.match(name) or temporary):
            path.unlink(missing_ok=True)
            gone.append(name)
    return sorted(gone)
