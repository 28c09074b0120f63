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

from spibatch import estimates
from spibatch.errors import InputError
from spibatch.io.files import require_file
from spibatch.layout import RunLayout
from spibatch.stages import finished, inputs

log = logging.getLogger("spibatch")


def check(pipeline, config: Path | None = None, run: RunLayout | None = None, *, budget=None) -> None:
    """Before anything is created: the files named exist and read as volumes, and their comparison fits the
    memory of ``budget`` (default: this machine); two volumes compared alone say what they hold (or
    ``validation.kind`` does)."""
    from spibatch.io.results import check_reference

    cfg = pipeline.validation
    for key in ("volume", "reference"):
        value = getattr(cfg, key)
        if value is not None:
            require_file(value, f"validation.{key}")
    if cfg.volume is not None:
        if cfg.reference is None:
            raise InputError("a volume to compare but no reference", path=config, field="validation.reference",
                             fix="name the volume to compare it with")
        from spibatch.io.results import volume_shape

        keys = {"validation.volume": cfg.volume, "validation.reference": cfg.reference}
        shapes = [(volume_shape(path, cfg.dataset, field=key), key)   # a missing dataset or a non-volume stops here
                  for key, path in keys.items()]
        estimates.validate(shapes).check(config or cfg.volume, budget, paths=keys)   # before reading a 4096^3
        kind = _kind(cfg)
        read = [(path, *_read(path, cfg, kind)) for path in (cfg.volume, cfg.reference)]
        _comparable(cfg, kind, [(path, volume) for path, volume, _ in read])
        if kind == "density":
            _both_voxels_or_neither([(path, voxel) for path, _, voxel in read],
                                    "validation.voxel_size_m", "--voxel-size-m (validation.voxel_size_m)")
    elif cfg.reference is not None:    # a garbage truth stops here, not after the whole phasing
        truth, truth_voxel = check_reference(cfg.reference, cfg.reference_voxel_size_m)
        if truth.min() == truth.max():
            raise InputError("the truth is constant: no structure to compare", path=cfg.reference,
                             field="validation.reference", fix="give the true density itself")
        if pipeline.phasing.intensity is not None:       # `phase --truth` of an intensity file
            _check_phasing_against(pipeline, config, run, Path(cfg.reference), truth_voxel)


def _check_phasing_against(pipeline, config, run, reference: Path, truth_voxel) -> None:
    """The phased density and the truth on one scale: both voxels known or neither (one taken for the other gave
    cc 0.66 and 114 A for 0.98), and the phased intensity and the truth's own on one q grid (the density is turned
    by their alignment)."""
    source = Path(inputs.phasing_intensity(run, pipeline, config))
    dq = pipeline.phasing.voxel_size_per_m or _fourier_voxel(source)
    if truth_voxel is not None and dq is None:
        raise InputError(f"the truth's voxel is known ({truth_voxel:.4g} m) but the intensity records no Fourier "
                         "voxel (voxel_size_per_m): the phased density cannot be put on the truth's grid",
                         path=source, field="phasing.voxel_size_per_m",
                         fix="set phasing.voxel_size_per_m (1 / (N x the density voxel), in 1/m)")
    if truth_voxel is None and dq is not None:
        raise InputError("the truth records no voxel, the phased density's is known: the two cannot be put on one "
                         "grid", path=reference, field="validation.reference_voxel_size_m",
                         fix="give the truth's voxel (--truth-voxel-size-m)")
    if dq is not None and _has_intensity(reference):
        _same_q_voxel([source, reference])


def _both_voxels_or_neither(volumes: list, field: str, option: str) -> None:
    """Two densities of which one records its voxel and the other not: refused (compared as if their voxels were
    equal, a 2 nm truth against a voxel-less volume read cc 0.65 for 0.999)."""
    known = [(path, voxel) for path, voxel in volumes if voxel is not None]
    if len(known) == 1:
        missing = next(path for path, voxel in volumes if voxel is None)
        raise InputError(f"records no voxel while {Path(known[0][0]).name}'s is {known[0][1]:.4g} m: the two cannot "
                         "be put on one grid", path=missing, field=field, fix=f"give its voxel with {option}")


def _comparable(cfg, kind: str, volumes: list) -> None:
    """Each volume a cube holding something, and two intensities sharing at least 3 measured shells: else one
    InputError naming the file, before the run folder is made."""
    import numpy as np

    from spibatch.align import measured_shells
    from spibatch.validate import crop_to_common

    cubes = []
    for (path, volume), key in zip(volumes, ("validation.volume", "validation.reference")):
        volume = np.asarray(volume)
        cube = volume[0] if volume.ndim == 4 and volume.shape[0] == 1 else volume     # (1, N, N, N) as read
        if cube.ndim != 3 or len(set(cube.shape)) != 1:
            raise InputError(f"the {kind} is not a cube (shape {volume.shape})", path=path, field=key,
                             fix="give an N x N x N volume")
        if not np.any(cube > 0):
            raise InputError(f"the {kind} has no positive voxel: nothing to compare", path=path, field=key,
                             fix="give the volume itself (dataset: --dataset)")
        if cube.min() == cube.max():
            raise InputError(f"the {kind} is constant: no structure to compare",
                             path=path, field=key, fix="give the volume itself (dataset: --dataset)")
        cubes.append(cube)
    if kind == "intensity":
        _same_q_voxel([path for path, _ in volumes])
        try:
            measured_shells(*crop_to_common(*(c.astype(np.float64) for c in cubes)))
        except ValueError:
            raise InputError(f"shares fewer than 3 measured shells with {Path(cfg.reference).name} (edges "
                             f"{cubes[0].shape[0]} and {cubes[1].shape[0]})", path=cfg.volume,
                             field="validation.volume", fix="compare intensities on grids of similar size") from None


def _same_q_voxel(paths: list) -> None:
    """Two intensities whose files both give their Fourier voxel (``voxel_size_per_m``) sample q alike: compared
    voxel by voxel on different grids they gave a high CC and a resolution on the first file's scale alone."""
    voxels = [_fourier_voxel(Path(path)) for path in paths]
    if None not in voxels and abs(voxels[0] / voxels[1] - 1) > 1e-3:
        raise InputError(f"its Fourier voxel is {voxels[0]:.6g} 1/m, {Path(paths[1]).name}'s {voxels[1]:.6g} 1/m: "
                         "the intensities sample q differently", path=paths[0], field="voxel_size_per_m",
                         fix="compare intensities of the same geometry and model grid")


def _kind(cfg) -> str:
    from spibatch.io.results import volume_kind

    if cfg.kind != "auto":
        return cfg.kind
    kinds = [volume_kind(path, cfg.dataset) for path in (cfg.volume, cfg.reference)]
    if None in kinds or kinds[0] != kinds[1]:
        unknown = [Path(p).name for p, k in zip((cfg.volume, cfg.reference), kinds) if k is None]
        what = (f"{' and '.join(unknown)} {'do' if len(unknown) > 1 else 'does'} not say whether it holds an intensity or a density" if unknown else
                f"{Path(cfg.volume).name} holds {_a(kinds[0])}, {Path(cfg.reference).name} {_a(kinds[1])}")
        raise InputError(what, path=cfg.volume, field="validation.kind",
                         fix="say which they are: --kind intensity or --kind density (validation.kind), and "
                         "--dataset when an HDF5 file holds both")
    return kinds[0]


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _read(path: Path, cfg, kind: str, warn: bool = True):
    """(volume, real-space voxel in m or None) of one side of a two-volume comparison (``warn``: of an option's
    voxel a file overrides; said once, at the check)."""
    from spibatch.io.results import check_finite, check_reference, read_volume

    if kind == "density":    # read and checked as a truth is: NaN, zero everywhere, the voxel's range
        second = Path(path) == Path(cfg.reference)
        voxel = cfg.reference_voxel_size_m if second else None
        volume, voxel = check_reference(path, voxel or cfg.voxel_size_m,
                                        field="validation.reference" if second else "validation.volume",
                                        voxel_field="validation.reference_voxel_size_m"
                                        if second and cfg.reference_voxel_size_m else "validation.voxel_size_m",
                                        dataset=cfg.dataset or "density", warn=warn)
        return _unit_peak(volume), voxel
    volume = read_volume(path, cfg.dataset)
    check_finite(volume, path=path, field=cfg.dataset or "intensity", fix="mark unmeasured voxels with 0 (the "
                 "comparison leaves voxels that are 0 in the second volume out)")
    return _unit_peak(volume), None


def _unit_peak(volume):
    """``volume`` (float64) divided by its largest |value|: every comparison is scale-free, and values near the
    float range (1e308) would overflow the sums and FFTs into NaN."""
    import numpy as np

    volume = np.asarray(volume, np.float64)
    peak = float(np.max(np.abs(volume))) if volume.size else 0.0
    return volume / peak if peak > 0 else volume


def run(run: RunLayout, pipeline, device, workers=None) -> dict[str, Path]:
    run.validate.mkdir(parents=True, exist_ok=True)
    if pipeline.validation.volume is not None:
        return _two_volumes(run, pipeline.validation)
    reference = inputs.reference(run, pipeline)
    if reference is None or not reference.exists():
        log.info("validate: no reference (truth) to compare with")
        return {}
    outputs, rotation, turned = {}, None, None
    emc_last = inputs.emc_intensity(run, pipeline)
    if emc_last.exists() and _has_intensity(reference):
        rotation = _emc_vs_truth(run, pipeline, emc_last, reference)
        outputs["emc_vs_truth"] = run.emc_vs_truth
    if run.phasing.exists():
        phased = inputs.phasing_intensity(run, pipeline)
        if Path(phased) != emc_last and _has_intensity(reference):   # `phase --truth` of an EMC output elsewhere
            rotation, turned = _intensity_vs_truth(Path(phased), reference, pipeline.phasing.dataset)
        outputs.update(_density_vs_truth(run, pipeline, reference, rotation, turned))
    return outputs


def _intensity_vs_truth(intensity: Path, reference: Path, dataset: str | None = None):
    """(rotation (3, 3), summary) turning the intensity that was phased onto the truth's intensity, over the
    shells both measure: an EMC model comes out in an arbitrary orientation, and so does its phased density
    (``spibatch phase --truth`` of an EMC output compared it unturned: cc 0.66 and 158 A for 0.93 and 39 A)."""
    import numpy as np

    from spibatch.align import compare_intensities
    from spibatch.io.results import read_volume

    if intensity.resolve() == reference.resolve():
        return None, None
    try:     # the dataset the phase stage read (phasing.dataset); the truth's own intensity
        summary = compare_intensities(read_volume(intensity, dataset), read_volume(reference, "intensity"))
    except (InputError, ValueError, OSError) as exc:
        log.warning("spibatch: warning: %s cannot be aligned onto %s's intensity (%s): the phased density is "
                    "compared unturned", intensity, reference, str(exc).split(";")[0])
        return None, None
    log.info("phased intensity %s vs %s: cc %.4f%s", intensity.name, reference.name, summary["cc"],
             " (inversion twin)" if summary["inverted"] else "")
    return np.asarray(summary["rotation"]), {"intensity": str(intensity), **{k: summary[k] for k in
                                             ("cc", "r_min", "r_max", "inverted", "rotation")}}


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
    _resolutions_vs_truth(run, intensity, reference, detector, comparison)
    return np.asarray(comparison["rotation"])


def _resolutions_vs_truth(run: RunLayout, intensity: Path, reference: Path, detector: Path, comparison: dict) -> None:
    """``emc_vs_truth.json`` gains ``truth_fsc``: where the per-shell correlation of the aligned model with the
    truth crosses 0.5 and 0.143 -- and, with gold-standard half sets (``emc/halves.json``), ``half_sets``: theirs,
    so that the estimate without a truth can be judged (half sets at 0.143 against the truth at 0.5)."""
    import json

    import numpy as np

    from spibatch.detector import Detector
    from spibatch.emc.compare import shell_range
    from spibatch.emc.halves import THRESHOLDS, resolutions, shell_fsc, volume_and_voxel
    from spibatch.io.atomic import write_text
    from spibatch.io.results import read_volume
    from spibatch.validate import crop_to_common

    model, voxel = volume_and_voxel(intensity)
    truth = np.asarray(read_volume(reference, "intensity"), np.float64)
    model, truth = crop_to_common(model, truth)
    r_min, r_max = shell_range(Detector.read(detector))
    r_max = min(r_max, (model.shape[0] - 1) // 2 - 1)
    if voxel is not None:
        voxel = voxel * (volume_and_voxel(intensity)[0].shape[0] / model.shape[0])   # the same dq, the cropped grid
    comparison["truth_fsc"] = resolutions(shell_fsc(model, truth, np.asarray(comparison["rotation"]), r_min, r_max,
                                                    voxel))
    try:
        halves = json.loads(run.halves_json.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError, RecursionError):
        halves = None
    if isinstance(halves, dict):
        comparison["half_sets"] = {k: halves.get(k) for k in ("cc", "r_max", "frames") +
                                   tuple(f"{w}_{t}_{u}" for t in THRESHOLDS for w, u in
                                         (("fsc", "radius"), ("resolution", "m")))}
        log.info("EMC gold standard: half sets cross 0.143 at shell %s; the model and the truth cross 0.5 at "
                 "shell %s", halves.get("fsc_0.143_radius"), comparison["truth_fsc"]["fsc_0.5_radius"])
    write_text(run.emc_vs_truth, json.dumps(comparison, indent=2) + "\n")


def _density_vs_truth(run: RunLayout, pipeline, reference: Path, rotation, turned=None) -> dict[str, Path]:
    from spibatch.align import rotate_intensity
    from spibatch.io.results import read_result
    from spibatch.phasing.compare import compare_with_truth, load_truth, write_comparison

    data, attrs = read_result(run.phasing)
    density = data["density"] if rotation is None else rotate_intensity(data["density"], rotation, order=3)
    true_density, true_voxel = load_truth(reference, pipeline.validation.reference_voxel_size_m)
    summary = compare_with_truth(density, attrs.get("voxel_size_m"), true_density, true_voxel,
                                 truth_path=str(reference))
    if turned is not None:
        summary["turned_by_intensity"] = turned
    if rotation is not None:
        phase_done = finished(run, "phase") or {}
        summary.update({"starts": pipeline.phasing.num_starts, "phasing_seconds": phase_done.get("seconds")})
    if attrs.get("voxel_size_m") and attrs.get("max_measured_shell"):     # unknown without a Fourier voxel; any
        n = data["density"].shape[0]                                       # run, `phase --truth` of a truth too
        summary["data_edge_resolution_m"] = n * attrs["voxel_size_m"] / attrs["max_measured_shell"]
    written = write_comparison(summary, run.fsc_vs_truth, run.fsc_vs_truth_png, f"phased density vs {reference.name}")
    from spibatch.phasing.export import write_density_in_truth_frame

    if true_voxel and attrs.get("voxel_size_m"):     # for ChimeraX: the density where the truth is
        from spibatch.phasing.compare import density_origin

        write_density_in_truth_frame(run.density_in_truth_frame, data["density"], attrs["voxel_size_m"], true_density,
                                     true_voxel, rotation=rotation, origin_angstrom=density_origin(reference))
    return {"fsc_vs_truth": written["fsc_vs_truth"], "fsc_plot": written["fsc_plot"],
            **({"density_in_truth_frame": run.density_in_truth_frame} if run.density_in_truth_frame.exists() else {})}


def _fourier_voxel(path: Path) -> float | None:
    """The Fourier voxel dq (1/m) an HDF5 intensity file records (our EMC outputs and truth.h5 do); None when it
    records none; InputError when the attribute is not one positive number."""
    from spibatch.io.hdf5 import open_hdf5
    from spibatch.io.results import is_hdf5, positive_attribute

    if not is_hdf5(path):
        return None
    with open_hdf5(path, "give an HDF5 intensity file") as f:
        value = f.attrs.get("voxel_size_per_m")
    return positive_attribute(value, path, "voxel_size_per_m")


def _two_volumes(run: RunLayout, cfg) -> dict[str, Path]:
    """Two volumes compared alone: aligned (rotation for intensities; resampled, translation for densities), FSC."""
    import json

    from spibatch.align import compare_intensities
    from spibatch.io.atomic import write_text
    from spibatch.io.results import write_result
    from spibatch.phasing.compare import compare_with_truth
    from spibatch.validate import format_table, plot_fsc

    first, second = Path(cfg.volume), Path(cfg.reference)
    kind = _kind(cfg)
    (a, a_voxel), (b, b_voxel) = _read(first, cfg, kind, False), _read(second, cfg, kind, False)
    if kind == "intensity":
        dq = _fourier_voxel(first) or _fourier_voxel(second)
        if dq is None and cfg.voxel_size_m:      # the real-space voxel 1 / (N dq) of the first file's N
            dq = 1.0 / (a.shape[-1] * cfg.voxel_size_m)
        edge = min(a.shape[-1], b.shape[-1])
        summary = compare_intensities(a, b, 1.0 / (edge * dq) if dq else None)
        how = (f"intensities on a {summary['grid']}^3 grid, {first.name} turned onto {second.name} (best rotation"
               f"{', inversion twin' if summary['inverted'] else ''}; shells {summary['r_min']:g}-{summary['r_max']:g}):"
               f" cc {summary['cc']:.4f}")
    else:
        summary = compare_with_truth(a, a_voxel, b, b_voxel, truth_path=str(second))
        summary["kind"] = "density"
        how = (f"densities{' (the reference resampled onto the first voxel)' if summary['truth_resampled'] else ''},"
               f" aligned by translation {summary['shift_voxels']}{' and the inversion twin' if summary['inverted'] else ''}"
               f": cc {summary['cc']:.4f}")
    result = summary["_result"]
    plot_fsc(result, run.fsc_png, title=f"{first.name} vs {second.name} ({kind}, aligned)")
    arrays = {"radius": result.radius, "frequency": result.frequency, "fsc": result.fsc,
              "num_voxels": result.num_voxels}
    units = {"radius": {"units": "Fourier voxels"}, "frequency": {"units": "1/m" if result.voxel_size else "1/voxel"}}
    write_result(run.fsc_table, arrays, {"voxel_size_m": result.voxel_size, "kind": kind}, None, units)
    write_text(run.fsc_text, how + "\n" + format_table(result) + "\n")
    public = {k: v for k, v in summary.items() if not k.startswith("_")}
    write_text(run.fsc_json, json.dumps(public, indent=1) + "\n")
    return {"fsc_plot": run.fsc_png, "fsc_table": run.fsc_table, "fsc_text": run.fsc_text, "fsc_json": run.fsc_json}
