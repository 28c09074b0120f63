"""The validate stage: this run's results against a reference (the truth), or one volume against it.

Without ``validation.volume``: EMC's last intensity is aligned onto the reference's intensity (best
rotation, inversion twin; ``validate/emc_vs_truth.json``) when both exist, and the phased density --
turned by that rotation -- is compared with the reference's density (translation and twin aligned,
resampled onto one voxel; ``validate/fsc_vs_truth.json`` + ``.png``).  With ``validation.volume``:
the Fourier shell correlation of that volume and the reference (``validate/fsc.h5``, ``fsc.png``,
``fsc.txt``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from spibatch.errors import InputError
from spibatch.layout import RunLayout
from spibatch.stages import finished, inputs

log = logging.getLogger("spibatch")


def check(pipeline, config: Path | None = None, run: RunLayout | None = None) -> None:
    """Before anything is created: the files named exist; two volumes compared alone read and share a shape."""
    from spibatch.io.results import read_volume_and_voxel

    cfg = pipeline.validation
    for key in ("volume", "reference"):
        value = getattr(cfg, key)
        if value is not None and not Path(value).is_file():
            raise InputError("file not found", path=value, field=f"validation.{key}", fix="check the path")
    if cfg.volume is not None:
        if cfg.reference is None:
            raise InputError("a volume to compare but no reference", path=config, field="validation.reference",
                             fix="name the volume to compare it with")
        a = read_volume_and_voxel(cfg.volume, cfg.dataset)[0]
        b = read_volume_and_voxel(cfg.reference, cfg.dataset)[0]
        if a.shape != b.shape:
            raise InputError(f"shape {a.shape}, but {Path(cfg.reference).name} is {b.shape}", path=cfg.volume,
                             field="validation.volume", fix="compare volumes on the same grid")


def run(run: RunLayout, pipeline, device, workers=None) -> dict[str, Path]:
    run.validate.mkdir(parents=True, exist_ok=True)
    if pipeline.validation.volume is not None:
        return _two_volumes(run, pipeline.validation)
    reference = inputs.reference(run, pipeline)
    if reference is None or not reference.exists():
        log.info("validate: no reference (truth) to compare with")
        return {}
    outputs, rotation = {}, None
    emc_last = inputs.emc_intensity(run, pipeline)
    if emc_last.exists() and _has_intensity(reference):
        rotation = _emc_vs_truth(run, pipeline, emc_last, reference)
        outputs["emc_vs_truth"] = run.emc_vs_truth
    if run.phasing.exists():
        outputs.update(_density_vs_truth(run, pipeline, reference, rotation))
    return outputs


def _has_intensity(path: Path) -> bool:
    from spibatch.io.results import is_hdf5

    if not is_hdf5(path):
        return False
    import h5py

    with h5py.File(path, "r") as f:
        return "intensity" in f


def _emc_vs_truth(run: RunLayout, pipeline, intensity: Path, reference: Path):
    import numpy as np

    from spibatch.emc.compare import compare_with_truth

    detector = inputs.photons_and_detector(run, pipeline)[1]
    emc_done = finished(run, "emc") or {}
    comparison = compare_with_truth(intensity, reference, detector, run.emc_vs_truth,
                                    extra={"emc_seconds": emc_done.get("seconds"),
                                           "iterations": pipeline.emc.iterations})
    log.info("EMC intensity vs %s: cc %.4f%s", reference.name, comparison["cc"],
             " (inversion twin)" if comparison["inverted"] else "")
    return np.asarray(comparison["rotation"])


def _density_vs_truth(run: RunLayout, pipeline, reference: Path, rotation) -> dict[str, Path]:
    from spibatch.align import rotate_intensity
    from spibatch.io.results import read_result
    from spibatch.phasing.compare import compare_with_truth, load_truth, write_comparison

    data, attrs = read_result(run.phasing)
    density = data["density"] if rotation is None else rotate_intensity(data["density"], rotation, order=3)
    true_density, true_voxel = load_truth(reference, pipeline.validation.reference_voxel_size_m)
    summary = compare_with_truth(density, attrs.get("voxel_size_m"), true_density, true_voxel,
                                 truth_path=str(reference))
    if rotation is not None:
        phase_done = finished(run, "phase") or {}
        n = data["density"].shape[0]
        summary.update({"starts": pipeline.phasing.num_starts, "phasing_seconds": phase_done.get("seconds"),
                        "data_edge_resolution_m": n * attrs["voxel_size_m"] / attrs["max_measured_shell"]})
    written = write_comparison(summary, run.fsc_vs_truth, run.fsc_vs_truth_png, f"phased density vs {reference.name}")
    return {"fsc_vs_truth": written["fsc_vs_truth"], "fsc_plot": written["fsc_plot"]}


def _two_volumes(run: RunLayout, cfg) -> dict[str, Path]:
    from spibatch.io.atomic import write_text
    from spibatch.io.results import write_result
    from spibatch.io.results import read_volume_and_voxel
    from spibatch.validate import format_table, fsc, plot_fsc

    first, second = Path(cfg.volume), Path(cfg.reference)
    a, a_voxel = read_volume_and_voxel(first, cfg.dataset)
    b, b_voxel = read_volume_and_voxel(second, cfg.dataset)
    voxel = cfg.voxel_size_m or a_voxel or b_voxel
    result = fsc(a, b, voxel_size=voxel)
    plot_fsc(result, run.fsc_png, title=f"{first.name} vs {second.name}")
    arrays = {"radius": result.radius, "frequency": result.frequency, "fsc": result.fsc,
              "num_voxels": result.num_voxels}
    write_result(run.fsc_table, arrays, {"voxel_size_m": voxel}, None)
    write_text(run.fsc_text, format_table(result) + "\n")
    return {"fsc_plot": run.fsc_png, "fsc_table": run.fsc_table, "fsc_text": run.fsc_text}
