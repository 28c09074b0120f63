"""What each stage reads: its inputs from the pipeline file, else from an earlier stage of the same run.

Every stage finds its inputs here, so the path of, say, the photons walks one way only:
``emc.photons`` in the pipeline file (its files gathered into ``emc/photons.h5`` when they are several or
frames are left out: :mod:`spibatch.io.frame_selection`), else the ``simulate``/``ingest`` stage's ``photons.emc`` in the
run folder (:mod:`spibatch.layout`).
"""

from __future__ import annotations

from pathlib import Path

from spibatch.errors import InputError
from spibatch.io import frame_selection
from spibatch.layout import RunLayout


def data_stage(pipeline) -> str | None:
    """"simulate", "ingest", "follow" or None (the pipeline names its photons itself)."""
    if getattr(pipeline, "source", None) is not None:
        return "follow"
    return "simulate" if pipeline.simulation is not None else "ingest" if pipeline.ingest is not None else None


def photons_and_detector(run: RunLayout | None, pipeline, config: Path | None = None) -> tuple[Path, Path]:
    """The photons file and detector file EMC reads; InputError when the pipeline gives neither them nor a
    stage (of ``run``, None: a run not made yet) that made them."""
    emc = pipeline.emc
    if frame_selection.gathers(emc) and emc.detector is not None:
        if run is None:
            raise InputError("the frames are gathered into a run folder not made yet", path=config,
                             field="emc.photons", fix="ask FrameSelection.of(pipeline.emc) for them")
        return run.gathered_photons, emc.detector
    if emc.photons is not None and emc.detector is not None:
        return frame_selection.photons_files(emc)[0], emc.detector
    stage = data_stage(pipeline)
    if stage == "follow" and run is not None:      # the follower's chunks: the first one stands for them all
        return run.chunk(1), run.detector("follow")
    if run is not None and stage == "simulate" and run.photons("simulate").exists():
        return run.photons("simulate"), run.detector("simulate")
    if run is not None and stage == "ingest" and run.photons("ingest").exists():
        made = run.detector("ingest")        # ingest's own, or emc.detector with the CXI mask's bad pixels excluded
        return run.photons("ingest"), made if made.exists() or emc.detector is None else emc.detector
    missing = [key for key in ("photons", "detector") if getattr(emc, key) is None]
    if stage == "simulate":
        fix = (f"run `spibatch run {config or 'PIPELINE'}` (it simulates, then runs EMC), or set emc.photons and "
               "emc.detector to a simulation's photons.emc and detector.h5")
    elif stage == "ingest":
        fix = (f"run `spibatch run {config or 'PIPELINE'}` (it ingests {pipeline.ingest.cxi.name}, then runs EMC), "
               "or set emc.photons and emc.detector and remove the ingest section")
    else:
        fix = "set emc.photons and emc.detector to a Dragonfly photons file and its detector file"
    raise InputError(f"no {' or '.join('emc.' + k for k in missing)} given", path=config,
                     field=f"emc.{missing[0]}", fix=fix)


def emc_intensity(run: RunLayout, pipeline) -> Path:
    """EMC's last output in this run (``emc/output_NNN.h5`` of the last iteration; while following a live source
    the last one written, as EMC stops by its own rule)."""
    if data_stage(pipeline) == "follow":
        from spibatch.layout import output_iteration

        done = [i for i in (output_iteration(p) for p in run.emc.glob("output_*.h5")) if i is not None]
        if done:
            return run.emc_output(max(done))
    return run.emc_output(pipeline.emc.iterations)


def phasing_intensity(run: RunLayout | None, pipeline, config: Path | None = None) -> Path:
    """The intensity the phase stage phases: ``phasing.intensity``, else the EMC result of ``run`` (None: a
    run not made yet)."""
    if pipeline.phasing.intensity is not None:
        return pipeline.phasing.intensity
    if run is not None and run.emc.exists():
        return emc_intensity(run, pipeline)
    raise InputError("no intensity to phase", path=config, field="phasing.intensity",
                     fix="set phasing.intensity (e.g. an EMC output_NNN.h5) or give --intensity")


def reference(run: RunLayout, pipeline) -> Path | None:
    """The truth the validate stage compares with: ``validation.reference``, else the simulation's truth.h5."""
    if pipeline.validation.reference is not None:
        return pipeline.validation.reference
    if pipeline.simulation is not None:
        return run.truth
    return None
