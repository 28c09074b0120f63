"""A phasing run: an intensity file in; density, support, PRTF, metrics and picture out.

:func:`run_phasing` runs every start here (one after another on the CPU, batched on a GPU) or takes
the starts' results from elsewhere (the pipeline maps ``run_starts([seed], ...)`` over workers),
merges them and writes the files of :mod:`spibatch.phasing.outputs`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from spibatch.errors import InputError
from spibatch.kernels.device import CPU, Device
from spibatch.phasing.algebra import RecipeError
from spibatch.phasing.inputs import load_measurement
from spibatch.phasing.measurement import max_measured_shell
from spibatch.phasing.multistart import merge
from spibatch.phasing.outputs import merge_record, output_paths, start_record, write_outputs
from spibatch.phasing.settings import PhasingSettings
from spibatch.phasing.starts import StartResult, iter_starts

log = logging.getLogger("spibatch")


def recipe_failed(exc: RecipeError, intensity_path) -> InputError:
    """The one-line InputError for a recipe that failed on these data (a shrink-wrap emptied the support)."""
    return InputError(str(exc), path=intensity_path, field="phasing.recipe",
                      fix="change the ShrinkWrap threshold or the recipe")


def run_phasing(intensity_path: Path, out_dir: Path, settings: PhasingSettings, *, device: Device = CPU,
                results: list[StartResult] | None = None, loaded: tuple[np.ndarray, float | None] | None = None,
                show_progress: bool = True) -> dict[str, Path]:
    """Phase ``intensity_path`` as ``settings`` say into ``out_dir``; returns {name: path} (phasing, density_mrc,
    picture, metrics).

    device : where the starts run (CPU: one after another; GPU: batched on this process's GPU)
    results : the starts' StartResults (seeds ``settings.seeds``), run elsewhere; then only the merge and
        the files happen here
    loaded : the (intensity, dq) :func:`~spibatch.phasing.inputs.load_intensity` already returned for
        this file and these settings
    Bad input (also too few measured voxels to phase, checked before the first start) and a recipe that
    fails on these data raise one InputError.
    """
    from spibatch.io.atomic import write_text
    from spibatch.progress import progress

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = output_paths(out_dir)
    measurement = load_measurement(intensity_path, settings, loaded=loaded)
    recipe, n = settings.recipe, measurement.n
    log.info("phasing %s: %d^3 voxels, %.1f%% measured, voxel %s; %d starts of %s (%d iterations each), "
             "%d threads, FFT %s, on %s", intensity_path, n, 100 * measurement.measured_fraction,
             f"{measurement.voxel_size_m * 1e10:.3g} A" if measurement.voxel_size_m else "unknown",
             settings.num_starts, recipe, recipe.iterations(), settings.threads_here(), settings.fft_backend, device)
    seeds = settings.seeds
    if results is not None:
        if [r.seed for r in results] != seeds:
            raise ValueError(f"results of seeds {[r.seed for r in results]}, expected {seeds}")
        starts = iter(results)
    else:
        ordinal = device.activate()
        if ordinal is not None:
            log.info("phasing on GPU %d (%s) of this node", ordinal, device.runtime)
        starts = iter_starts(seeds, measurement, settings, device)
    lines, done = [], []
    began = time.perf_counter()
    with progress(settings.num_starts, "phasing starts", enabled=show_progress and results is None) as bar:
        for index in range(settings.num_starts):
            try:
                result = next(starts)
            except RecipeError as exc:
                raise recipe_failed(exc, intensity_path) from None
            done.append(result)
            lines.append(json.dumps(start_record(index, result)))
            write_text(paths["metrics"], "\n".join(lines) + "\n")
            log.info("start %d (seed %d%s): final error %.4g%s, support %d voxels, %.1f s%s", index, result.seed,
                     f", data sharpened by {result.sharpen:.2f} voxels" if result.sharpen else "",
                     result.final_error, _free(result), result.support_sizes[-1][1], result.seconds,
                     "" if result.failure is None else f"; stopped, not merged: {result.failure}")
            bar.advance(1)
    try:
        merged = merge(done, measurement, settings.keep_best)
    except RecipeError as exc:
        raise recipe_failed(exc, intensity_path) from None
    data_shell = max_measured_shell(measurement)
    lines.append(json.dumps(merge_record(merged, data_shell, time.perf_counter() - began)))
    write_outputs(paths, merged, done, measurement, settings, intensity_path, data_shell)
    write_text(paths["metrics"], "\n".join(lines) + "\n")
    log.info("kept seeds %s of %d (%s)", merged.kept_seeds, len(done), _why_kept(done))
    if merged.resolution_shell is None:
        log.info("PRTF stays above 1/e to the edge of the data (shell %d)", data_shell)
    else:
        log.info("PRTF 1/e at shell %.2f of %d measured%s", merged.resolution_shell, data_shell,
                 f": {merged.resolution_m * 1e10:.3g} A" if merged.resolution_m else "")
    return paths


def _free(result) -> str:
    """", free error E" (and the sharpened start's error on the measured data, which the kinds are compared
    by), or "" without a free set."""
    if result.free_error is None:
        return ""
    text = f", free error {result.free_error:.4g}"
    if result.sharpen and result.measured_free_error is not None:
        text += f" ({result.measured_free_error:.4g} on the measured data)"
    return text


def _why_kept(done) -> str:
    """How the kept starts were chosen, in words (:func:`spibatch.phasing.multistart.select`)."""
    if not all(r.free_error is not None for r in done):
        return "the lowest final errors"
    kinds = "" if len({r.sharpen > 0 for r in done}) < 2 else (
        "of the kind, sharpened or plain, whose best start predicts the measured free voxels best; ")
    return f"{kinds}ranked by free error x support voxels"
