"""The EMC driver's communication across MPI ranks (mpi4py), and its serial stand-in.

Frames are cut into shards of ``frames_per_shard`` (the same cut for any
number of ranks); rank ``r`` of ``n`` owns a contiguous run of whole shards,
the first ``K mod n`` ranks one more than the others, so rank 0 always has
work.  Per iteration :func:`combine` makes every rank hold the same reduced
:class:`~spibatch.emc.types.ShardSums`:

* the merge sums (numerator and denominator, packed into one ``(2, M, M, M)``
  float64 buffer) with ONE ``Allreduce(SUM)``;
* the per-frame arrays (counts, scale denominators, likelihoods, best
  rotations, ...; a few float64 per frame) with one ``Allgatherv``, packed
  frame-major so that each rank's block is contiguous.

Every rank then runs :func:`~spibatch.emc.types.finish` on identical inputs,
so every rank has the new model and all the scales (each needs only its own
frames' scales, but ``finish`` normalises them by their global mean, and the
per-frame gather costs ~60 bytes a frame, nothing beside the model).  Only
rank 0 writes.  MPI implementations give every rank the same bits from
``Allreduce`` (OpenMPI and MPICH do: commutative sums in the same tree), so
the model is not broadcast again.

The shard boundaries do not depend on the number of ranks, so the model can
differ from a 1-rank run only by the order in which partial sums are added
(``(s0 + s1) + (s2 + s3)`` instead of ``((s0 + s1) + s2) + s3``).  Measured:
no difference at all (dragonfly-small, 1000 frames, num_div 4, 12 iterations,
4 shards; and tests/test_emc_mpi.py, tolerance 1e-10), with one Numba thread
per rank on both sides.  The thread count is what moves bits: the kernels
keep per-thread partial sums, and EMC's pruning (P < 1e-6 dropped) turns
that into ~2e-7 relative differences between 1 and 2 threads.  mpirun binds
each rank to one core, and the driver never runs more Numba threads than
the cores a process may use.

``mpi4py`` is imported only inside these functions, and only when the
process was started by an MPI launcher (:func:`world`).
"""

from __future__ import annotations

import os
import time

import numpy as np

from spibatch.emc.types import ShardSums
from spibatch.errors import InputError

# Environment variables an MPI launcher sets (OpenMPI, PMIx/srun, MPICH/Hydra and Intel MPI, MVAPICH).
LAUNCHER_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_SIZE")
LAUNCHER_VARS = LAUNCHER_SIZE_VARS + ("PMIX_RANK", "PMI_RANK")


def world():
    """``MPI.COMM_WORLD`` when started by an MPI launcher with more than one rank, else None.

    mpi4py is imported only when a launcher's variables are present, so a
    serial run never initialises MPI.  Launched with several ranks but without
    mpi4py: InputError (N serial copies would each write the whole run).
    """
    if not any(name in os.environ for name in LAUNCHER_VARS):
        return None
    sizes = [int(os.environ[n]) for n in LAUNCHER_SIZE_VARS if os.environ.get(n, "").isdigit()]
    try:
        from mpi4py import MPI
    except ImportError:
        if sizes and max(sizes) > 1:
            raise InputError(f"started by an MPI launcher with {max(sizes)} ranks, but mpi4py is not installed",
                             field="mpi4py", fix="pip install 'spibatch[mpi]' (needs an MPI library), "
                             "or run without mpirun") from None
        return None
    comm = MPI.COMM_WORLD
    return comm if comm.Get_size() > 1 else None


def rank_and_size(comm) -> tuple[int, int]:
    return (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())


def shard_bounds(num_frames: int, frames_per_shard: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of every shard, ``frames_per_shard`` frames each (the last may be shorter)."""
    return [(a, min(a + frames_per_shard, num_frames)) for a in range(0, num_frames, frames_per_shard)]


def rank_shards(num_shards: int, rank: int, size: int) -> range:
    """Indices of the shards rank ``rank`` of ``size`` owns: contiguous, the first ranks one more."""
    base, extra = divmod(num_shards, size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def collective(comm, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on every rank; an InputError on any rank is raised on every rank.

    Without this a rank that fails alone (a corrupt block in its frames)
    would leave the others waiting in the next collective call forever.
    """
    try:
        result, error = fn(*args, **kwargs), None
    except InputError as exc:
        result, error = None, exc
    if comm is None:
        if error is not None:
            raise error
        return result
    errors = comm.allgather(None if error is None else str(error))
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise error if error is not None else InputError(first)
    return result


def patient_collective(comm, fn):
    """:func:`collective` for a call that may hold one rank long (EMC's stopping rule waiting for frames while
    following a beamtime): the ranks that are done wait at a barrier they test between sleeps (up to 50 ms),
    not in a blocking MPI call, whose progress loop spins a core each (2.7 s of CPU in a 3-s wait, measured)."""
    try:
        result, error = fn(), None
    except InputError as exc:
        result, error = None, exc
    if comm is not None and comm.Get_size() > 1:
        request, pause = comm.Ibarrier(), 1e-4
        while not request.Test():
            time.sleep(pause)
            pause = min(2 * pause, 0.05)

    def again():
        if error is not None:
            raise error
        return result
    return collective(comm, again)


def broadcast(comm, value, root: int = 0):
    """``comm.bcast`` (pickled), or ``value`` itself without a communicator."""
    return value if comm is None else comm.bcast(value, root=root)


def allgather(comm, value) -> list:
    """``[value of rank 0, value of rank 1, ...]`` (pickled), or ``[value]`` without a communicator."""
    return [value] if comm is None else comm.allgather(value)


def combine(comm, local: ShardSums, frames_per_rank: list[int], rows: np.ndarray | None = None) -> ShardSums:
    """The sums over all ranks of each rank's ``local`` sums, identical on every rank (see module docstring).

    frames_per_rank: how many frames each rank holds; ``local.frames`` arrays have
    ``frames_per_rank[rank]`` entries.  rows: where in the run's frame order each gathered row
    (rank 0's frames, then rank 1's, ...) belongs; None when that order is the frame order already
    (each rank holds a contiguous run of frames, the ranks in order).
    """
    from mpi4py import MPI

    volumes = np.empty((2,) + local.numerator.shape)     # (2, M, M, M), or (2, V, M, M, M) with modes
    volumes[0] = local.numerator
    volumes[1] = local.denominator
    comm.Allreduce(MPI.IN_PLACE, volumes, op=MPI.SUM)

    keys = sorted(local.frames)
    dtypes = [local.frames[k].dtype for k in keys]
    widths = [int(np.prod(local.frames[k].shape[1:])) for k in keys]      # 2-D per-frame arrays: several columns
    columns = np.concatenate([[0], np.cumsum(widths)])
    packed = np.empty((frames_per_rank[comm.Get_rank()], int(columns[-1])))
    for j, key in enumerate(keys):
        packed[:, columns[j]:columns[j + 1]] = local.frames[key].reshape(len(packed), -1)
    gathered = np.empty((sum(frames_per_rank), int(columns[-1])))
    counts = [n * int(columns[-1]) for n in frames_per_rank]
    displacements = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
    comm.Allgatherv(packed, [gathered, counts, displacements, MPI.DOUBLE])
    if rows is not None:
        ordered = np.empty_like(gathered)
        ordered[rows] = gathered
        gathered = ordered
    frames = {key: np.ascontiguousarray(gathered[:, columns[j]:columns[j + 1]]).reshape(
              (len(gathered),) + local.frames[key].shape[1:]).astype(dtype, copy=False)
              for j, (key, dtype) in enumerate(zip(keys, dtypes))}
    return ShardSums(0, volumes[0], volumes[1], frames, dict(local.timings))   # timings: this rank's
