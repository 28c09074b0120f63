"""The phase stage: an intensity file in, density + support + PRTF files out.

Writes into ``out_dir``:

    phasing.h5       density (N, N, N) float32 electrons-ish units (arbitrary scale), centred,
                     indexed [x, y, z] like the intensity; support (N, N, N) float32 (fraction of
                     kept starts); prtf (S,), prtf_frequency_per_m (S,); errors (starts, iterations)
                     float32; final_errors, seeds (starts,); kept_seeds; attrs: recipe,
                     voxel_size_m, resolution_m (PRTF 1/e), intensity_file, ...
    density.mrc      the density with its voxel size in Angstrom (1 A when unknown)
    phasing.png      three central slices of density and support, the PRTF, the error curves
    metrics.jsonl    one line per start (errors per iteration), then one for the merge

The starts run one after another here; ``run_one``/``merge`` are what the
platform layer maps over workers or ranks.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from spibatch.errors import InputError

if TYPE_CHECKING:
    from spibatch.phasing.multistart import Options

log = logging.getLogger("spibatch")

OUTPUTS = {"phasing": "phasing.h5", "density_mrc": "density.mrc", "picture": "phasing.png",
           "metrics": "metrics.jsonl"}


def load_intensity(path: Path, *, dataset: str | None = None, crop_to: int | None = None,
                   voxel_size_per_m: float | None = None) -> tuple[np.ndarray, float | None]:
    """(intensity (N, N, N) float64 centred, Fourier voxel dq in 1/m or None) from any volume file."""
    from spibatch.io.results import is_hdf5, read_result, read_volume

    volume = np.asarray(read_volume(path, dataset), np.float64)
    dq = voxel_size_per_m
    if dq is None and is_hdf5(path):
        try:
            dq = read_result(path, attrs_only=True)[1].get("voxel_size_per_m")
        except InputError:
            dq = None
    if crop_to is not None:
        volume = crop_centre(volume, crop_to, source=path)
    return volume, (float(dq) if dq else None)


def crop_centre(volume: np.ndarray, edge: int, *, source=None) -> np.ndarray:
    """The central edge^3 of a centred cube (q = 0 at N // 2 stays at edge // 2)."""
    n = volume.shape[0]
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise InputError(f"cannot crop a non-cubic volume of shape {volume.shape}", path=source,
                         field="phasing.crop_to", fix="give an (N, N, N) volume")
    if edge > n:
        raise InputError(f"crop_to {edge} is larger than the volume ({n})", path=source, field="phasing.crop_to",
                         fix=f"use at most {n}")
    if (n - edge) % 2:
        raise InputError(f"crop_to {edge} and the volume's edge {n} differ in parity: the centre voxel would move "
                         "by half a voxel", path=source, field="phasing.crop_to",
                         fix=f"use {edge - 1} or {edge + 1}" if edge > 8 else f"use {edge + 1}")
    from spibatch.phasing.measurement import pad_centre

    return pad_centre(volume, edge)


def options_of(cfg, device: str = "cpu", gpu_runtime: str = "cupy") -> "Options":
    from spibatch.phasing.multistart import Options

    threads = cfg.threads
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return Options(recipe=cfg.recipe, positivity=cfg.positivity,
                   initial_support_threshold=cfg.initial_support_threshold, threads=threads, fft_backend=cfg.fft,
                   device=device, gpu_runtime=gpu_runtime if isinstance(gpu_runtime, str) else "cupy")


def _starts(seeds: list[int], measurement, options, device: str, gpu_runtime):
    """(seed, StartResult) of every start: one after another on the CPU, in batches on a GPU."""
    from spibatch.phasing.multistart import run_one

    if device != "gpu":
        for seed in seeds:
            yield seed, run_one(seed, measurement, options)
        return
    from spibatch.phasing.gpu import batches, run_batch

    for batch in batches(seeds, measurement.n, runtime=gpu_runtime):
        log.info("starts %s together on the GPU", ", ".join(map(str, batch)))
        yield from zip(batch, run_batch(batch, measurement, options, runtime=gpu_runtime))


def prepare_measurement(cfg, intensity_path: Path, loaded: tuple[np.ndarray, float | None] | None = None):
    """The :class:`~spibatch.phasing.measurement.Measurement` that every start of ``cfg`` phases
    (read, checked, padded to a fast FFT size); the same on every worker."""
    from spibatch.phasing.measurement import check_intensity, fast_size, pad_centre, prepare

    intensity, dq = loaded or load_intensity(intensity_path, dataset=cfg.dataset, crop_to=cfg.crop_to,
                                             voxel_size_per_m=cfg.voxel_size_per_m)
    intensity = check_intensity(intensity, source=str(intensity_path))
    if cfg.fast_fft_size and fast_size(intensity.shape[0]) != intensity.shape[0]:
        log.info("padding the %d^3 intensity to %d^3 with unmeasured voxels (a fast FFT size)",
                 intensity.shape[0], fast_size(intensity.shape[0]))
        intensity = pad_centre(intensity, fast_size(intensity.shape[0]))
    return prepare(intensity, real=cfg.realness, voxel_size_per_m=dq, source=str(intensity_path))


def run_start(cfg, intensity_path: Path, measurement, options, index: int):
    """Start ``index`` (seed ``cfg.seed + index``): :func:`~spibatch.phasing.multistart.run_one`, a bad
    recipe reported as InputError."""
    from spibatch.phasing.multistart import run_one
    from spibatch.phasing.operators import RecipeError

    try:
        return run_one(cfg.seed + index, measurement, options)
    except RecipeError as exc:
        raise InputError(str(exc), path=intensity_path, field="phasing.recipe",
                         fix="change the ShrinkWrap threshold or the recipe") from None


def run_phasing(cfg, intensity_path: Path, out_dir: Path, *, show_progress: bool = True,
                loaded: tuple[np.ndarray, float | None] | None = None, results: list | None = None,
                device: str = "cpu", gpu_runtime="cupy") -> dict[str, Path]:
    """Phase ``intensity_path`` with the ``phasing`` section ``cfg`` into ``out_dir``; returns {name: path}.

    ``loaded``: the (intensity, dq) :func:`load_intensity` already returned for this file and cfg.
    ``results``: the starts' StartResults, run elsewhere (the pipeline maps :func:`run_start` over
    workers); then only the merge and the outputs happen here.
    device, gpu_runtime: the pipeline's (gpu: starts batched on this process's GPU, :mod:`.gpu`).
    """
    import time

    from spibatch.io.atomic import write_text
    from spibatch.phasing.multistart import max_measured_shell, merge
    from spibatch.phasing.operators import RecipeError, parse_recipe
    from spibatch.progress import progress

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    measurement = prepare_measurement(cfg, intensity_path, loaded)
    options = options_of(cfg)
    recipe = parse_recipe(cfg.recipe)
    n = measurement.n
    log.info("phasing %s: %d^3 voxels, %.1f%% measured, voxel %s; %d starts of %s (%d iterations each), "
             "%d threads, FFT %s", intensity_path, n, 100 * measurement.measured_fraction,
             f"{measurement.voxel_size_m * 1e10:.3g} A" if measurement.voxel_size_m else "unknown",
             cfg.num_starts, recipe, recipe.iterations(), options.threads, options.fft_backend)
    lines, given, results = [], results, []
    start = time.perf_counter()
    if given is not None:
        starts = iter(zip([cfg.seed + i for i in range(cfg.num_starts)], given))
    else:
        if device == "gpu" and isinstance(gpu_runtime, str):
            from spibatch.kernels.xp import ensure_device

            log.info("phasing on GPU %d (%s) of this node", ensure_device(), gpu_runtime)
        starts = _starts([cfg.seed + i for i in range(cfg.num_starts)], measurement, options, device, gpu_runtime)
    with progress(cfg.num_starts, "phasing starts", enabled=show_progress and given is None) as bar:
        for index in range(cfg.num_starts):
            try:
                seed, result = next(starts)
            except RecipeError as exc:
                raise InputError(str(exc), path=intensity_path, field="phasing.recipe",
                                 fix="change the ShrinkWrap threshold or the recipe") from None
            results.append(result)
            lines.append(json.dumps({"stage": "phase", "kind": "start", "start": index, "seed": seed,
                                     "final_error": result.final_error, "seconds": round(result.seconds, 3),
                                     "support_voxels": result.support_sizes[-1][1],
                                     "algorithms": _runs(result.algorithms),
                                     "errors": [round(float(e), 6) for e in result.errors]}))
            write_text(out_dir / OUTPUTS["metrics"], "\n".join(lines) + "\n")
            log.info("start %d (seed %d): final error %.4g, support %d voxels, %.1f s", index, seed,
                     result.final_error, result.support_sizes[-1][1], result.seconds)
            bar.advance(1)
    merged = merge(results, measurement, cfg.keep_best)
    data_shell = max_measured_shell(measurement)
    summary = {"stage": "phase", "kind": "merge", "kept_seeds": merged.kept_seeds,
               "final_errors": merged.final_errors, "alignment_cc": [round(c, 4) for c in merged.alignment_cc],
               "resolution_m": merged.resolution_m, "resolution_shell": merged.resolution_shell,
               "max_measured_shell": data_shell, "seconds": round(time.perf_counter() - start, 2),
               "prtf": [None if not np.isfinite(v) else round(float(v), 4) for v in merged.prtf]}
    lines.append(json.dumps(summary))
    paths = {name: out_dir / file for name, file in OUTPUTS.items()}
    _write_outputs(paths, merged, results, measurement, cfg, intensity_path, data_shell)
    write_text(paths["metrics"], "\n".join(lines) + "\n")
    log.info("PRTF 1/e at shell %s of %d measured: %s", _fmt(merged.resolution_shell), data_shell,
             f"{merged.resolution_m * 1e10:.3g} A" if merged.resolution_m else "not reached")
    return paths


def _fmt(v) -> str:
    return "none" if v is None else f"{v:.2f}"


def _runs(names: list[str]) -> list[list]:
    """Run-length code of the algorithm per iteration: [["HIO", 50], ["ER", 100], ...]."""
    out: list[list] = []
    for name in names:
        if out and out[-1][0] == name:
            out[-1][1] += 1
        else:
            out.append([name, 1])
    return out


def _write_outputs(paths, merged, results, measurement, cfg, intensity_path, data_shell) -> None:
    from spibatch.io.mrc import write_mrc
    from spibatch.io.results import write_result

    iterations = max(len(r.errors) for r in results)
    errors = np.full((len(results), iterations), np.nan, np.float32)
    for i, r in enumerate(results):
        errors[i, :len(r.errors)] = r.errors
    density = merged.density.real if np.iscomplexobj(merged.density) else merged.density
    datasets = {"density": density, "support": merged.support, "prtf": merged.prtf,
                "prtf_frequency_per_m": merged.shell_frequency_per_m, "errors": errors,
                "final_errors": np.array([r.final_error for r in results]),
                "seeds": np.array([r.seed for r in results]), "kept_seeds": np.array(merged.kept_seeds)}
    if np.iscomplexobj(merged.density):
        datasets["density_imag"] = merged.density.imag
    attrs = {"recipe": cfg.recipe, "voxel_size_m": measurement.voxel_size_m, "resolution_m": merged.resolution_m,
             "resolution_shell": merged.resolution_shell, "max_measured_shell": data_shell,
             "intensity_file": str(intensity_path), "num_starts": len(results), "keep_best": len(merged.kept_seeds),
             "positivity": int(cfg.positivity), "realness": int(cfg.realness),
             "measured_fraction": measurement.measured_fraction, "density_unit": "arbitrary (sqrt of the intensity's "
             "unit per voxel)", "origin": "centre voxel N // 2"}
    from spibatch import __version__
    from spibatch.rundir import sha256_file

    provenance = {"stage": "phase", "spibatch": __version__, "phasing": cfg.model_dump(mode="json"),
                  "intensity_file": str(intensity_path), "intensity_sha256": sha256_file(intensity_path),
                  "fft_backend": results[0].fft_backend}
    write_result(paths["phasing"], datasets, attrs, provenance=provenance)
    voxel_a = measurement.voxel_size_m * 1e10 if measurement.voxel_size_m else 1.0
    write_mrc(paths["density_mrc"], density, voxel_a)
    plot_phasing(paths["picture"], density, merged, results, measurement)


def plot_phasing(path: Path, density: np.ndarray, merged, results, measurement) -> None:
    """PNG: the density's three central slices with the support outline, the PRTF, the errors."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spibatch.io.atomic import atomic_path

    n = density.shape[0]
    c = n // 2
    # show the particle, not the empty box: crop to the support's extent (+ a margin), centred
    inside = np.argwhere(merged.support > 0.5)
    half = int(np.abs(inside - c).max()) + 4 if inside.size else c
    lo, hi = max(c - half, 0), min(c + half + 1, n)
    density = density[lo:hi, lo:hi, lo:hi]
    support = merged.support[lo:hi, lo:hi, lo:hi]
    c -= lo
    fig = plt.figure(figsize=(12, 7), dpi=100)
    grid = fig.add_gridspec(2, 3, height_ratios=(1, 0.9))
    slices = [(density[c, :, :], support[c, :, :], "x = centre (y, z)"),
              (density[:, c, :], support[:, c, :], "y = centre (x, z)"),
              (density[:, :, c], support[:, :, c], "z = centre (x, y)")]
    top = float(np.max(density)) or 1.0
    for i, (img, sup, title) in enumerate(slices):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(img.T, origin="lower", cmap="magma", vmin=min(0.0, float(img.min())), vmax=top)
        ax.contour(sup.T, levels=[0.5], colors="cyan", linewidths=0.7)
        ax.set_title(f"{title}, {hi - lo} of {n} voxels shown", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = fig.add_subplot(grid[1, :2])
    voxel = measurement.voxel_size_m
    if voxel:
        x = merged.shell_frequency_per_m * 1e-10
        ax.set_xlabel("spatial frequency (1/A)")
    else:
        x = np.arange(merged.prtf.size) / n
        ax.set_xlabel("spatial frequency (1/voxel)")
    ax.plot(x, merged.prtf, "o-", ms=3, label=f"PRTF ({len(merged.kept_seeds)} starts)")
    ax.axhline(np.exp(-1), color="C1", ls="--", lw=1, label="1/e")
    if merged.resolution_shell:
        xr = merged.resolution_shell / (n * voxel) * 1e-10 if voxel else merged.resolution_shell / n
        label = f"{merged.resolution_m * 1e10:.3g} A" if merged.resolution_m else f"shell {merged.resolution_shell:.1f}"
        ax.axvline(xr, color="C1", ls=":", lw=1, label=f"1/e at {label}")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("PRTF")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = fig.add_subplot(grid[1, 2])
    kept = set(merged.kept_seeds)
    for r in results:
        ax.semilogy(r.errors, lw=0.8, color="C0" if r.seed in kept else "0.7")
    ax.set_xlabel("iteration")
    ax.set_ylabel("Fourier error (blue: kept)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
