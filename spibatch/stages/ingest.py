"""The ingest stage: measured frames of a CXI stack -> ``ingest/`` (sparse photons and, without emc.detector,
the detector its own geometry describes)."""

from __future__ import annotations

import logging
from pathlib import Path

from spibatch.detector import Detector
from spibatch.errors import InputError
from spibatch.layout import RunLayout
from spibatch.stages.checks import keyed, require_file

log = logging.getLogger("spibatch")


def check(pipeline, config: Path | None = None, run: RunLayout | None = None, *,
          need_detector: bool = True, frames: bool = True, budget=None) -> Detector | None:
    """Before a run: the CXI stack and its detector are usable.  Returns the detector the stage will use:
    ``emc.detector``'s, else the one the CXI geometry describes (None when there is none and ``need_detector``
    is false: `spibatch ingest` converts frames alone).  InputError (one line) when the stack is not there,
    holds no frames, does not fit in memory one block at a time (``budget``, default: this machine), or no
    detector fits; with ``frames``, every frame is read once and checked as the conversion would (a NaN or a
    negative value in the last frame stops it here, before anything is created).  Keys are named as the
    pipeline file spells them, or as `spibatch ingest`'s options when there is no pipeline file."""
    from spibatch import estimates
    from spibatch.io.cxi import UnsupportedLayout, check_frames, read_flat_geometry, stack_info
    from spibatch.io.dragonfly import check_match

    cfg = pipeline.ingest
    if cfg is None:
        raise InputError("no `ingest` section", path=config, field="ingest", fix="add one naming the CXI file")

    def key(name: str) -> str:
        return f"ingest.{name}" if config is not None else "--" + name.replace("_", "-")

    require_file(cfg.cxi, key("cxi") if config is not None else "CXI", fix="give the path of a CXI (HDF5) file")
    with keyed(cfg.data_path, key("data_path")), keyed(cfg.mask_path, key("mask_path")):
        shape, itemsize = stack_info(cfg.cxi, data_path=cfg.data_path, mask_path=cfg.mask_path)
    num_pix = 1
    for n in shape[1:]:
        num_pix *= n
    if shape[0] == 0:
        raise InputError("holds 0 frames", path=cfg.cxi, field=cfg.data_path, fix="give a CXI file with frames")
    estimates.ingest(shape[0], num_pix, itemsize, cfg.chunk_frames, key("chunk_frames")).check(config or cfg.cxi,
                                                                                               budget)
    geometry = None
    if pipeline.emc.detector is not None:
        require_file(pipeline.emc.detector, "emc.detector", fix="give the Dragonfly detector file of these frames")
        detector = Detector.read(pipeline.emc.detector)
        check_match(detector, num_pix, pipeline.emc.detector, cfg.cxi)
    else:
        detector = None
        try:
            geometry = read_flat_geometry(cfg.cxi, data_path=cfg.data_path, mask_path=cfg.mask_path)
        except UnsupportedLayout as exc:
            if need_detector:
                raise
            (log.warning if frames else log.debug)(   # said once, by the check before the run
                "spibatch: warning: %s; detector.h5 is not written (the photons are)", exc)
        else:
            if geometry is not None:
                _check_possible_geometry(geometry, cfg.cxi)
            detector = Detector.from_cxi(cfg.cxi, data_path=cfg.data_path, mask_path=cfg.mask_path,
                                         beamstop_radius_pixels=cfg.beamstop_radius_pixels)
            if detector is not None and not (detector.mask == 0).any():
                _no_pixel_left(detector, cfg, key, config)
        if detector is None and need_detector:
            raise InputError("holds no flat square detector geometry (3-D frames with distance, pixel size and "
                             "photon energy)", path=cfg.cxi, field="/entry_1/instrument_1",
                             fix="set emc.detector to a Dragonfly detector file for these frames")
    if frames:
        check_frames(cfg.cxi, data_path=cfg.data_path, mask_path=cfg.mask_path, adu_per_photon=cfg.adu_per_photon,
                     clip_negative=cfg.clip_negative, chunk_frames=cfg.chunk_frames)
        if pipeline.emc.detector is None and geometry is not None:   # after every refusal, once (not in the run)
            estimates.warn_implausible({"detector_distance_m": geometry["distance_m"], "pixel_size_m":
                                        geometry["pixel_size_m"], "wavelength_m": geometry["wavelength_m"]},
                                       cfg.cxi, key="CXI geometry")
    return detector


def _no_pixel_left(detector: Detector, cfg, key, config: Path | None) -> None:
    """InputError: the beam stop (or the CXI mask) leaves no pixel that orients frames (its detector.h5 would be
    refused by every reader after the conversion)."""
    inscribed = (min(detector.shape) - 1) / 2.0 if detector.shape else 0.0
    if cfg.beamstop_radius_pixels > 0:
        raise InputError(f"a beam stop of radius {cfg.beamstop_radius_pixels:g} pixels leaves no pixel that orients "
                         f"frames (the detector's inscribed circle has radius {inscribed:g})",
                         path=config or cfg.cxi, field=key("beamstop_radius_pixels"),
                         fix=f"use a radius well below {inscribed:g} pixels")
    raise InputError(f"its mask marks all {detector.num_pix} pixels bad: none is left to orient frames", path=cfg.cxi,
                     field=cfg.mask_path or "mask", fix="give the mask of this detector (nonzero = bad pixel)")


def _check_possible_geometry(geometry: dict, path) -> None:
    """A CXI file's geometry beyond any X-ray imaging (a unit slip: eV or keV stored where joules belong made a
    detector.h5 of 5e25 voxels per metre, with a warning only): InputError naming the dataset."""
    from spibatch import estimates
    from spibatch.io.cxi import GEOMETRY_PATHS, JOULE_PER_EV, PLANCK_EV_M

    low, high, _ = estimates.POSSIBLE["wavelength_m"]
    if not low <= geometry["wavelength_m"] <= high:
        joules = PLANCK_EV_M / geometry["wavelength_m"] * JOULE_PER_EV
        hint = (f"did you mean {joules:g} eV ({joules * JOULE_PER_EV:.4g} J)?" if 500 <= joules <= 1e6 else
                f"did you mean {joules:g} keV ({joules * 1e3 * JOULE_PER_EV:.4g} J)?" if 0.5 <= joules < 500 else
                "the photon energy is in joules per photon (6 keV: 9.61e-16 J)")
        raise InputError(f"{joules:g} J per photon (a wavelength of {geometry['wavelength_m']:g} m) is beyond any "
                         "X-ray imaging", path=path, field=GEOMETRY_PATHS["energy"], fix=hint)
    for key, name, dataset in (("distance_m", "detector_distance_m", "distance"),
                               ("pixel_size_m", "pixel_size_m", "x_pixel_size")):
        low, high, unit = estimates.POSSIBLE[name]
        if not low <= geometry[key] <= high:
            raise InputError(f"{geometry[key]:g} {unit} is outside {low:g}-{high:g} {unit}, beyond any X-ray "
                             "imaging", path=path, field=GEOMETRY_PATHS[dataset], fix="it is in metres")


def run(run: RunLayout, pipeline, device, workers=None) -> dict[str, Path]:
    import dataclasses

    from spibatch.detector import MASK_EXCLUDED
    from spibatch.io.cxi import bad_pixels, cxi_to_photons
    from spibatch.io.dragonfly import write_detector

    cfg = pipeline.ingest
    detector = check(pipeline, need_detector=False, frames=False)   # the conversion checks every frame itself
    run.stage_dir("ingest").mkdir(parents=True, exist_ok=True)
    outputs = {"photons": run.photons("ingest")}
    if pipeline.emc.detector is None and detector is not None:
        write_detector(run.detector("ingest"), detector)
        outputs["detector"] = run.detector("ingest")
    elif pipeline.emc.detector is not None:     # the CXI mask's bad pixels are 0 in the photons: EMC must not take
        bad = bad_pixels(cfg.cxi, data_path=cfg.data_path, mask_path=cfg.mask_path)   # them for measured zeros
        if bad is not None and bad.any():            # (``detector``: check's read of emc.detector)
            mask = detector.mask.copy()
            mask[bad] = MASK_EXCLUDED
            write_detector(run.detector("ingest"), dataclasses.replace(detector, mask=mask))
            outputs["detector"] = run.detector("ingest")
            log.info("ingest: %s with the CXI mask's %d bad pixels excluded -> %s", pipeline.emc.detector,
                     int(bad.sum()), run.detector("ingest"))
    elif detector is None:
        log.info("no flat square detector geometry in %s: no detector.h5 written", cfg.cxi)
    frames, pixels = cxi_to_photons(cfg.cxi, outputs["photons"], chunk_frames=cfg.chunk_frames,
                                    adu_per_photon=cfg.adu_per_photon, clip_negative=cfg.clip_negative,
                                    data_path=cfg.data_path, mask_path=cfg.mask_path)
    log.info("ingest: %d frames of %d pixels from %s", frames, pixels, cfg.cxi)
    return outputs
