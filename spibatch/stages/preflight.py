"""What ``spibatch run`` checks before it creates anything: every input that exists already, read in full
(the PDB, every CXI frame, every photons frame, a start model, an intensity to phase), and the memory and
time of every stage -- the later ones sized from what the first will make (the simulated detector and
pattern count, the CXI stack), so that ``emc.num_div: 1000`` stops before the simulation, not after it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from spibatch import estimates, stages
from spibatch.errors import InputError
from spibatch.stages import emc as emc_stage
from spibatch.stages import ingest as ingest_stage
from spibatch.stages import phase as phase_stage
from spibatch.stages import simulate as simulate_stage
from spibatch.stages.checks import budget_for

log = logging.getLogger("spibatch")


def check_run(pipeline, config: Path, site=None, folder: Path | None = None) -> None:
    """Every check of :mod:`spibatch.stages`' ``check`` functions that can run before the first stage, for
    the stages ``spibatch run`` chains, on ``site``'s workers (None: this machine), the run written into
    ``folder`` (``--out``; None: under ``output.runs_dir``); InputError (one line)."""
    budget = budget_for(site)
    names = stages.order(pipeline)
    emc = pipeline.emc
    given = [key for key in ("photons", "detector") if getattr(emc, key) is not None
             or (key == "photons" and emc.photons_list is not None)]
    if "follow" in names:
        from spibatch.stages import follow as follow_stage

        follow_stage.check(pipeline, config)
        detector = follow_stage.detector_of(pipeline)
        size, frames, used = detector.model_size(), pipeline.source.emc_start_hits, int((detector.mask == 0).sum())
        frames_field = "source.emc_start_hits"
    elif "ingest" in names:
        detector = ingest_stage.check(pipeline, config, budget=budget)
        size, frames, used = detector.model_size(), _stack_frames(pipeline), int((detector.mask == 0).sum())
        frames_field = "ingest.cxi"
    elif len(given) == 1:
        other = "detector" if given[0] == "photons" else "photons"
        raise InputError(f"emc.{given[0]} without emc.{other}: the emc stage reads both, or the "
                         f"{'simulation' if 'simulate' in names else 'pipeline'}'s own", path=config,
                         field=f"emc.{other}", fix=f"set emc.{other} too, or remove emc.{given[0]}")
    elif given:
        if "simulate" in names:
            simulate_stage.check(pipeline, config, budget=budget, folder=folder)
        found = emc_stage.check(pipeline, config, budget=budget)
        _phase(pipeline, config, budget, found.size)
        if "simulate" in names:
            log.warning("spibatch: warning: %s: emc.photons and emc.detector are given: the emc stage reconstructs "
                        "%s, not the simulated patterns (remove both to reconstruct the simulation)", config,
                        emc.photons)
        return
    elif "simulate" in names:
        flat = simulate_stage.check(pipeline, config, budget=budget, folder=folder)
        size, frames, used, frames_field = flat.model_size, pipeline.simulation.num_patterns, flat.used_pixels, \
            "simulation.num_patterns"
    else:
        raise InputError("none of a `simulation` section, an `ingest` section, or emc.photons and emc.detector",
                         path=config, field="simulation", fix="add a simulation or an ingest (CXI) section, "
                         "or set emc.photons and emc.detector")
    _emc(pipeline, config, budget, size, frames, used, frames_field)
    _phase(pipeline, config, budget, emc.model_size or size)


def _stack_frames(pipeline) -> int:
    from spibatch.io.cxi import stack_shape

    cfg = pipeline.ingest
    return stack_shape(cfg.cxi, data_path=cfg.data_path, mask_path=cfg.mask_path)[0]


def _emc(pipeline, config: Path, budget, smallest: int, frames: int, used: int, frames_field: str) -> None:
    """The emc stage on data a stage will make: the settings' values, the model grid, the estimate, the start
    model, the half sets."""
    from spibatch.emc.checks import check_model_size, check_values

    emc = pipeline.emc
    if emc.halves:
        emc_stage.check_halves(pipeline, frames, 1, None, config)
    if getattr(pipeline, "source", None) is None:   # a live run's frames are not all there at its start
        emc_stage.check_modes_frames(emc_stage.settings_of(pipeline), frames, config)
    size = check_model_size(emc.model_size, smallest, config)
    gpu = pipeline.device == "gpu"
    estimates.emc(size, emc_stage.orientations(emc.num_div, emc.num_modes, emc.nonrot_modes), frames,
                  emc.frames_per_shard, used, emc.iterations,
                  model_field="emc.model_size" if emc.model_size else "geometry.detector_pixels",
                  frames_field=frames_field, gpu=gpu, parallel=budget.parallel(gpu),
                  volumes=emc.num_modes + emc.nonrot_modes,
                  **budget.sharing(shards=-(-frames // emc.frames_per_shard),
                                   following=getattr(pipeline, "source", None) is not None)).check(config, budget)
    with emc_stage.naming(config):
        check_values(emc_stage.settings_of(pipeline))
    if emc.start_model is not None:
        emc_stage.check_start_model(emc.start_model, size, emc.num_modes + emc.nonrot_modes)
    if emc.background_file is not None:     # its size is checked against the detector once a stage made it
        from spibatch.io.background import read_background

        read_background(emc.background_file, None)


def _phase(pipeline, config: Path, budget, model_size: int) -> None:
    """The phase stage: its own intensity checked in full, or EMC's model grid sized (crop_to applied)."""
    from spibatch.phasing.measurement import fast_size

    cfg = pipeline.phasing
    if cfg.intensity is not None:
        phase_stage.check(pipeline, config, budget=budget)
        return
    edge = model_size
    if cfg.crop_to is not None:
        if cfg.crop_to > model_size or (model_size - cfg.crop_to) % 2:
            why = "larger than" if cfg.crop_to > model_size else "of another parity than"
            raise InputError(f"crop_to {cfg.crop_to} is {why} EMC's {model_size}^3 model", path=config,
                             field="phasing.crop_to", fix=f"use at most {model_size}, odd like the model, or "
                             "leave it out")
        edge = cfg.crop_to
    edge = fast_size(edge) if cfg.fast_fft_size else edge
    gpu = pipeline.device == "gpu"
    settings = phase_stage.settings_of(pipeline)
    estimates.phasing(edge, settings.num_starts, settings.recipe.iterations(), gpu=gpu, parallel=budget.parallel(gpu),
                      edge_field="phasing.crop_to" if cfg.crop_to else "geometry.detector_pixels"
                      ).check(config, budget)


__all__ = ["check_run"]
