"""What a phasing run writes: ``metrics.jsonl`` records, ``phasing.h5``, ``phasing.cxi``, ``density.mrc``, the picture.

``phasing.h5``: density (N, N, N) float32 electrons-ish units (arbitrary scale), centred, indexed
[x, y, z] like the intensity; support (N, N, N) float32 (fraction of kept starts); prtf (S,),
prtf_frequency_per_m (S,); errors (starts, iterations) float32; final_errors, seeds (starts,);
kept_seeds; free_errors (recipe auto); attrs: recipe, voxel_size_m, resolution_m (PRTF 1/e), intensity_file, ...
``phasing.cxi``: the same density, support and PRTF as a CXI file (:func:`spibatch.phasing.export.write_cxi`).
``density.mrc``: the density with its voxel size in Angstrom (a cell of 0 when unknown: no voxel invented).
``phasing.png``: three central slices of density and support, the PRTF, the error curves.
``metrics.jsonl``: one line per start (errors per iteration), then one for the merge.
File names come from :mod:`spibatch.layout`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spibatch import __version__, layout
from spibatch.phasing.export import write_cxi
from spibatch.phasing.measurement import Measurement
from spibatch.phasing.multistart import Merged
from spibatch.phasing.settings import PhasingSettings
from spibatch.phasing.starts import StartResult
from spibatch.rundir import sha256_file


def output_paths(out_dir: Path) -> dict[str, Path]:
    """{name: path} of the files a phasing run writes into ``out_dir``."""
    out_dir = Path(out_dir)
    return {"phasing": out_dir / layout.PHASING, "density_mrc": out_dir / layout.DENSITY_MRC,
            "picture": out_dir / layout.PHASING_PNG, "metrics": out_dir / layout.METRICS,
            "cxi": out_dir / layout.PHASING_CXI}


def start_record(index: int, result: StartResult) -> dict:
    """The metrics.jsonl line of start ``index``."""
    return {"stage": "phase", "kind": "start", "start": index, "seed": result.seed,
            "final_error": result.final_error, "free_error": _finite(result.free_error),
            "sharpen_sigma": round(result.sharpen, 4), "measured_free_error": _finite(result.measured_free_error),
            "failure": result.failure, "seconds": round(result.seconds, 3),
            "support_voxels": result.support_sizes[-1][1], "algorithms": runs(result.algorithms),
            "errors": [round(float(e), 6) for e in result.errors]}


def _finite(value):
    """A float for JSON, None where it is missing or not finite (a failed start's free error is inf)."""
    return None if value is None or not np.isfinite(value) else float(value)


def merge_record(merged: Merged, data_shell: int, seconds: float) -> dict:
    """The metrics.jsonl line of the merge."""
    return {"stage": "phase", "kind": "merge", "kept_seeds": merged.kept_seeds,
            "final_errors": merged.final_errors, "alignment_cc": [round(c, 4) for c in merged.alignment_cc],
            "resolution_m": merged.resolution_m, "resolution_shell": merged.resolution_shell,
            "max_measured_shell": data_shell, "seconds": round(seconds, 2),
            "prtf": [None if not np.isfinite(v) else round(float(v), 4) for v in merged.prtf]}


def runs(names: list[str]) -> list[list]:
    """Run-length code of the algorithm per iteration: [["HIO", 50], ["ER", 100], ...]."""
    out: list[list] = []
    for name in names:
        if out and out[-1][0] == name:
            out[-1][1] += 1
        else:
            out.append([name, 1])
    return out


def write_outputs(paths: dict[str, Path], merged: Merged, results: list[StartResult], measurement: Measurement,
                  settings: PhasingSettings, intensity_path: Path, data_shell: int) -> None:
    """``phasing.h5`` (the merged density, support, PRTF; every start's errors), ``phasing.cxi``, ``density.mrc``
    and the picture, at ``paths["phasing"]``, ``paths["cxi"]``, ``paths["density_mrc"]``, ``paths["picture"]``
    (atomic writes)."""
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
    attrs = {"recipe": repr(settings.recipe), "voxel_size_m": measurement.voxel_size_m, "resolution_m": merged.resolution_m,
             "resolution_shell": merged.resolution_shell, "max_measured_shell": data_shell,
             "intensity_file": str(intensity_path), "num_starts": len(results), "keep_best": len(merged.kept_seeds),
             "positivity": int(settings.positivity), "realness": int(settings.realness),
             "measured_fraction": measurement.measured_fraction, "density_unit": "arbitrary (sqrt of the intensity's "
             "unit per voxel)", "origin": "centre voxel N // 2"}
    provenance = {"stage": "phase", "spibatch": __version__, "phasing": settings.as_dict(),
                  "intensity_file": str(intensity_path), "intensity_sha256": sha256_file(intensity_path),
                  "fft_backend": results[0].fft_backend}
    if any(r.free_error is not None for r in results):
        datasets["free_errors"] = np.array([np.nan if r.free_error is None else r.free_error for r in results])
    if any(r.measured_free_error is not None for r in results):      # recipe auto: which starts were sharpened
        datasets["measured_free_errors"] = np.array([np.nan if r.measured_free_error is None else
                                                     r.measured_free_error for r in results])
        datasets["sharpen_sigmas"] = np.array([r.sharpen for r in results])
    write_result(paths["phasing"], datasets, attrs, provenance=provenance)
    write_cxi(paths["cxi"], merged.density, merged.support, measurement.voxel_size_m, prtf=merged.prtf,
              prtf_frequency_per_m=merged.shell_frequency_per_m, configuration=provenance,
              note=f"{len(merged.kept_seeds)} of {len(results)} starts averaged; recipe {settings.recipe!r}")
    write_mrc(paths["density_mrc"], density, measurement.voxel_size_m * 1e10 if measurement.voxel_size_m else None)
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
