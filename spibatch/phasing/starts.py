"""Independent phasing starts: ``run_starts(seeds, measurement, settings, device)``.

Each start runs the recipe from random phases drawn with its own seed, from the same first
support, and is independent of every other: the pipeline maps ``run_starts([seed], ...)`` over
Parsl workers or MPI ranks, ``spibatch phase`` runs them all here, and
:func:`~spibatch.phasing.multistart.merge` reduces the results.  On the CPU the starts run one
after another (B = 1, each using ``settings.threads`` FFT threads); on a GPU as many share the
device as fill it (:func:`~spibatch.phasing.gpu.batches`).  Start ``seed`` gives the same answer
either way, to float32 rounding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from spibatch.kernels.device import CPU, Device
from spibatch.kernels.xp import to_host
from spibatch.phasing import sharpen
from spibatch.phasing.auto import check_data, find_auto
from spibatch.phasing.gpu import batches
from spibatch.phasing.measurement import Measurement, initial_support
from spibatch.phasing.reconstruction import Reconstruction
from spibatch.phasing.settings import PhasingSettings


@dataclass
class StartResult:
    """One start: density and support (N, N, N) in FFT order, float32 (complex64 without realness) / bool;
    errors (iterations,) the relative Fourier error per modulus projection; algorithms: the name per
    iteration; final_error: the error of the final density (what starts are ranked by, without a free set);
    seconds: its share of the run time; support_sizes: (iteration, voxels) after each shrink-wrap;
    free_error: the final density's error on the held-out voxels (recipe ``auto``; None otherwise): what
    starts are ranked by when every start has one; failure: why the start stopped early (its support
    exploded or collapsed), None when it ran to the end: a failed start is not merged; sharpen: the width
    (voxels) of the Gaussian its data were sharpened by (recipe ``auto``'s odd seeds,
    :mod:`~spibatch.phasing.sharpen`; its density is blurred back, its support and errors are those of the
    sharpened data), 0 when not; measured_free_error: the free error of its density against the measured amplitudes
    (recipe ``auto``): what the merge compares sharpened and plain starts by."""

    seed: int
    density: np.ndarray
    support: np.ndarray
    errors: np.ndarray
    algorithms: list[str]
    final_error: float
    seconds: float
    support_sizes: list[tuple[int, int]] = field(default_factory=list)
    fft_backend: str = ""
    free_error: float | None = None
    failure: str | None = None
    sharpen: float = 0.0
    measured_free_error: float | None = None


def run_starts(seeds: list[int], measurement: Measurement, settings: PhasingSettings,
               device: Device = CPU) -> list[StartResult]:
    """The StartResult of every seed (in the order given), host arrays.

    Raises InputError when the measurement cannot be phased (too few measured voxels for its first
    support) and RecipeError when the recipe fails on these data (a shrink-wrap empties the support).
    """
    return list(iter_starts(seeds, measurement, settings, device))


def iter_starts(seeds: list[int], measurement: Measurement, settings: PhasingSettings,
                device: Device = CPU) -> Iterator[StartResult]:
    """:func:`run_starts`, each result in the order of ``seeds``, as soon as its batch (its own start, on the
    CPU) and those of the seeds before it have finished."""
    seeds = [int(s) for s in seeds]
    step = find_auto(settings.recipe)
    sigma = step.params["sharpen"] * sharpen.wilson_sigma(measurement) if step is not None else 0.0
    # plain and sharpened starts, by seed (sharpen.is_sharpened), when each kind has two or more
    paired = sigma >= sharpen.MIN_SIGMA and settings.num_starts >= sharpen.MIN_STARTS
    sharp = [paired and sharpen.is_sharpened(s) for s in seeds]
    kinds = []                                     # (positions, data, support, gain); checked before any start
    for flag in (False, True):
        positions = [i for i, kind in enumerate(sharp) if kind == flag]
        if positions:
            gain = sharpen.gain(measurement, sigma) if flag else None
            data = measurement if gain is None else sharpen.sharpened(measurement, gain)
            support = initial_support(data, settings.initial_support_threshold)
            check_data(settings.recipe, data, support)
            kinds.append((positions, data, support, gain))
    free = None
    if any(sharp):
        from spibatch.phasing.auto import draw_free_set

        free = draw_free_set(measurement)
    groups = []                                    # (positions of one batch, data, support, gain)
    for positions, data, support, gain in kinds:
        cut = batches(positions, data.n, device) if device.is_gpu else [[p] for p in positions]
        groups += [(group, data, support, gain) for group in cut]
    groups.sort(key=lambda g: g[0][0])             # the CPU's single starts in the order given
    threads, ready, upto = settings.threads_here(), {}, 0
    for group, data, support, gain in groups:
        results = _run_group([seeds[p] for p in group], data, support, settings, device, threads, paired)
        for position, result in zip(group, results):
            if step is not None:
                _measured(result, gain, sigma, measurement, free)
            ready[position] = result
        while upto in ready:
            yield ready.pop(upto)
            upto += 1


def _measured(result: StartResult, w: np.ndarray | None, sigma: float, measurement: Measurement,
              free: np.ndarray | None) -> None:
    """A start of recipe auto: its density blurred back when its data were sharpened (``w``), and its free
    error against the measured amplitudes (on the ``free`` voxels)."""
    if w is None:
        result.measured_free_error = result.free_error
        return
    result.density = sharpen.blur_back(result.density, w, measurement.real)
    result.sharpen = sigma
    result.measured_free_error = (math.inf if result.failure is not None else
                                  sharpen.measured_free_error(result.density, measurement, free))


def _run_group(seeds: list[int], measurement: Measurement, support: np.ndarray, settings: PhasingSettings,
               device: Device, threads: int, paired: bool = False) -> list[StartResult]:
    began = time.perf_counter()
    rec = Reconstruction(measurement, support, seeds, positivity=settings.positivity, device=device,
                         threads=threads, fft_backend=settings.fft_backend, fft_planning=settings.fft_planning)
    rec.paired_seeds = paired                  # auto: sharpened and plain starts share each support schedule
    settings.recipe(rec)
    density = rec.density()
    rec.fft.x[...] = density                   # rank the starts by the error of what they return
    rec.changed()
    finals = rec.fourier_errors()
    frees = rec.free_errors() if rec.free is not None else [None] * len(seeds)
    density, supports = to_host(density), to_host(rec.support)
    seconds = (time.perf_counter() - began) / len(seeds)       # a batch's time, shared
    return [StartResult(seed=seed, density=density[b].copy(), support=supports[b].copy(),
                        errors=np.array([h["error"] for h in rec.histories[b]]),
                        algorithms=[h["algorithm"] for h in rec.histories[b]], final_error=finals[b],
                        seconds=seconds, support_sizes=list(rec.support_sizes[b]), fft_backend=rec.fft.backend,
                        free_error=math.inf if b in rec.failures else frees[b], failure=rec.failures.get(b))
            for b, seed in enumerate(seeds)]
