"""The emc stage's gold-standard half sets (``emc.halves``): the two halves reconstructed side by side in the
run's mode, then aligned and compared (:mod:`spibatch.emc.halves` holds the split and the comparison)."""

from __future__ import annotations

import logging
from pathlib import Path

from spibatch.errors import InputError
from spibatch.layout import RunLayout

log = logging.getLogger("spibatch")


def run_halves(run: RunLayout, settings, photons, detector, device, workers=None) -> dict[str, Path]:
    """The gold-standard half sets (:mod:`spibatch.emc.halves`), side by side, then their alignment and FSC.

    HTC (``workers``): two drivers in threads here, each with its own :class:`~spibatch.emc.executors.Tasks`
    (scratch ``emc/half_K/htc/``), their shard tasks interleaved on the same workers.  MPI: ``comm.Split`` by
    rank parity -- ranks 0, 2, ... reconstruct half 1, ranks 1, 3, ... half 2, each sub-communicator an
    :class:`~spibatch.emc.executors.MPIRanks` of its own.  Alone: two processes (spawned), each with half of
    this process's cores.  The writer (rank 0, or this process) compares the two (``emc/halves.json``)."""
    import time

    from spibatch.emc import halves
    from spibatch.emc.mpi import world

    comm = None if workers is not None else world()
    rank = 0 if comm is None else comm.Get_rank()
    began = time.perf_counter()
    if comm is None:
        halves.write_halves(photons, run.emc)
    else:
        from spibatch.emc import mpi

        mpi.collective(comm, lambda: halves.write_halves(photons, run.emc) if rank == 0 else None)
    if workers is not None:
        how = "htc"
        results = _halves_as_tasks(run, settings, detector, device, workers)
    elif comm is not None:
        how = f"mpi ({comm.Get_size()} ranks in 2 sub-communicators)"
        results = _halves_on_ranks(comm, run, settings, detector, device)
    else:
        how = "local (2 processes)"
        results = _halves_in_processes(run, settings, detector, device)
    seconds = time.perf_counter() - began
    if rank == 0:
        log.info("emc: half sets reconstructed in %.1f s (%s); aligning half 2 onto half 1", seconds, how)
        frames = [_frames(p) for p in halves.half_photons(run.emc)]
        summary = halves.compare_halves(results[0]["intensity"], results[1]["intensity"], detector, run.halves_json,
                                        extra={"frames": frames, "seeds": [settings.seed + 1, settings.seed + 2],
                                               "iterations": settings.iterations, "mode": how,
                                               "halves_seconds": seconds})
        log.info("emc: %s", halves.describe(summary))
    return {"half_1": results[0]["intensity"], "half_2": results[1]["intensity"], "halves": run.halves_json}


def _frames(photons: Path) -> int:
    from spibatch.io.dragonfly import photons_info

    return photons_info(photons)[0]


def _halves_as_tasks(run: RunLayout, settings, detector, device, workers) -> list[dict]:
    from concurrent.futures import ThreadPoolExecutor

    from spibatch.emc.executors import Tasks
    from spibatch.emc.halves import run_half
    from spibatch.layout import HTC_DIR

    executors = [Tasks(workers.submit, run.half(k) / HTC_DIR, workers.threads(), device,
                       reducers=max(1, workers.count // 2)) for k in (0, 1)]
    with ThreadPoolExecutor(2, thread_name_prefix="half") as pool:
        futures = [pool.submit(run_half, settings, k, detector, run.emc, executors[k]) for k in (0, 1)]
        return [f.result() for f in futures]


def _halves_on_ranks(comm, run: RunLayout, settings, detector, device) -> list[dict]:
    """Half ``rank % 2`` on this rank's sub-communicator; both halves' outputs on every rank.  An InputError of
    either half is raised on every rank (the other half's ranks would otherwise wait for ever)."""
    from spibatch.emc.executors import MPIRanks
    from spibatch.emc.halves import run_half

    index = comm.Get_rank() % 2
    sub = comm.Split(index, comm.Get_rank())
    mine, error = None, None
    try:
        mine = run_half(settings, index, detector, run.emc, MPIRanks(sub, device))
    except InputError as exc:
        error = exc
    finally:
        sub.Free()
    errors = comm.allgather(None if error is None else str(error))
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise error if error is not None else InputError(first)
    everyone = comm.allgather((index, mine))
    return [next(out for k, out in everyone if k == want) for want in (0, 1)]


def _halves_in_processes(run: RunLayout, settings, detector, device) -> list[dict]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from spibatch.emc.halves import run_half_here
    from spibatch.emc.step import default_threads

    threads = max(1, default_threads() // 2)
    try:    # spawned, not forked: Numba's thread pool of the full run does not survive a fork
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(run_half_here, settings, k, detector, run.emc, threads, device) for k in (0, 1)]
            return [f.result() for f in futures]
    finally:   # the pool's semaphores started multiprocessing's resource tracker: it would outlive the run
        from multiprocessing import resource_tracker

        getattr(resource_tracker._resource_tracker, "_stop", lambda: None)()
