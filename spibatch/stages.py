"""The pipeline's stages as plain functions of the run directory (what Parsl runs on a worker).

Each stage reads ``config.yaml`` (the resolved pipeline) and earlier stages' files from the
run directory, writes its own outputs there, and finally its marker ``stages/<name>.json``
(``{"stage", "status": "done", "outputs": {name: path}, "seconds", "host", "finished"}``,
atomic).  A stage with a marker is finished: ``spibatch resume`` never runs it again.

Layout: the simulation's or the CXI ingest's files at the top (``photons.emc``, ``detector.h5``,
``truth.h5`` for a simulation),
``emc/`` (``spibatch emc``'s run: ``output_NNN.h5``, ``EMC.log``, ...), ``phase/`` (with
``phase/starts/start_NNN.pkl``, one per start), ``emc/truth_comparison.json`` and
``phase/fsc_vs_truth.json`` from ``validate``, the report where the monitor writes it.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from spibatch.io.atomic import atomic_path, write_text
from spibatch.rundir import log_to, stop_logging, utc_now

log = logging.getLogger("spibatch")

STAGES_DIR = "stages"
EMC_CONFIG = "emc.yaml"   # config.yaml with emc.photons/detector and phasing.intensity filled in


def marker(run_dir, name: str) -> Path:
    return Path(run_dir) / STAGES_DIR / f"{name}.json"


def finished(run_dir, name: str) -> dict | None:
    """The stage's marker, or None when it has not finished."""
    path = marker(run_dir, name)
    if not path.exists():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    return record if record.get("status") == "done" else None


def mark_done(run_dir, name: str, outputs: dict, seconds: float, **extra) -> dict:
    record = {"stage": name, "status": "done", "outputs": {k: str(v) for k, v in outputs.items()},
              "seconds": round(seconds, 3), "host": socket.gethostname(), "pid": os.getpid(),
              "finished": utc_now(), **extra}
    write_text(marker(run_dir, name), json.dumps(record, indent=2) + "\n")
    return record


def load_config(run_dir, name: str = "config.yaml"):
    from spibatch.config import load_pipeline

    return load_pipeline(Path(run_dir) / name)


@contextmanager
def _stage_log(run_dir, name: str):
    """Log records of one stage to ``stages/<name>.log`` (workers are separate processes)."""
    path = Path(run_dir) / STAGES_DIR / f"{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = log_to(path)
    try:
        yield path
    finally:
        stop_logging(handler)


def run_stage(name: str, run_dir: str, *args, since: float | None = None) -> dict:
    """Run stage ``name`` (a function of this module) unless its marker exists; return the marker.

    since: the epoch time the stage's work began elsewhere (the phasing starts), for its seconds.
    """
    done = finished(run_dir, name)
    if done is not None:
        return done
    body = STAGE_BODIES[name]
    with _stage_log(run_dir, name):
        began = time.perf_counter()
        outputs = body(Path(run_dir), *args)
        seconds = time.perf_counter() - began if since is None else time.time() - since
        return mark_done(run_dir, name, outputs, seconds)


# ------------------------------------------------------------------ stage bodies

def simulate(run_dir: Path) -> dict:
    """Simulated photons, detector and truth at the top of the run directory."""
    from spibatch.sim import simulate as run_simulation

    outputs = run_simulation(load_config(run_dir), run_dir, show_progress=False)
    write_emc_config(run_dir, outputs)
    return outputs


def ingest(run_dir: Path) -> dict:
    """The measured data: an ``ingest`` section's CXI stack converted to ``photons.emc`` (and, without
    emc.detector, ``detector.h5`` from the CXI geometry), or the pipeline's own emc.photons / emc.detector."""
    from spibatch.emc.driver import check_inputs
    from spibatch.emc.settings import EMCSettings

    pipeline = load_config(run_dir)
    cfg = pipeline.ingest
    if cfg is None:
        outputs = {"photons": pipeline.emc.photons, "detector": pipeline.emc.detector}
    else:
        from spibatch.io.cxi import check_ingest, cxi_to_photons
        from spibatch.io.dragonfly import write_detector

        detector = check_ingest(cfg, pipeline.emc.detector)
        outputs = {"photons": run_dir / "photons.emc", "detector": pipeline.emc.detector or run_dir / "detector.h5"}
        if pipeline.emc.detector is None:
            write_detector(outputs["detector"], detector)
        frames, pixels = cxi_to_photons(cfg.cxi, outputs["photons"], chunk_frames=cfg.chunk_frames,
                                        adu_per_photon=cfg.adu_per_photon, clip_negative=cfg.clip_negative,
                                        data_path=cfg.data_path, mask_path=cfg.mask_path)
        log.info("ingest: %d frames of %d pixels from %s", frames, pixels, cfg.cxi)
    check_inputs(EMCSettings.from_dict(pipeline.emc.model_dump()), outputs["photons"], outputs["detector"])
    write_emc_config(run_dir, outputs)
    return outputs


def emc_intensity(run_dir: Path) -> Path:
    from spibatch.emc import records

    return Path(run_dir) / "emc" / records.output_name(load_config(run_dir).emc.iterations)


def write_emc_config(run_dir: Path, inputs: dict) -> Path:
    """``emc.yaml``: the run's pipeline with the EMC inputs and the phasing intensity filled in
    (and no ingest section: its photons are ``inputs["photons"]``)."""
    from spibatch.config import dump_pipeline

    pipeline = load_config(run_dir)
    pipeline.ingest = None
    pipeline.emc.photons = Path(inputs["photons"])
    pipeline.emc.detector = Path(inputs["detector"])
    pipeline.phasing.intensity = emc_intensity(run_dir)
    return write_text(Path(run_dir) / EMC_CONFIG, dump_pipeline(pipeline))


def phase_start(run_dir: str, index: int, threads: int) -> str:
    """One phasing start into ``phase/starts/start_NNN.pkl`` (kept when it exists: resume); returns its path."""
    from spibatch.phasing.stage import options_of, prepare_measurement, run_start

    path = Path(run_dir) / "phase" / "starts" / f"start_{index:03d}.pkl"
    if path.exists():
        return str(path)
    pipeline = load_config(run_dir, EMC_CONFIG)
    cfg = pipeline.phasing
    cfg.threads = cfg.threads or threads
    with _stage_log(run_dir, "phase"):
        measurement = prepare_measurement(cfg, cfg.intensity)
        options = options_of(cfg, pipeline.device, pipeline.gpu_runtime)    # a GPU start: this worker's GPU
        result = run_start(cfg, cfg.intensity, measurement, options, index)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        pickle.dump(result, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return str(path)


def phase(run_dir: Path, start_files: list[str]) -> dict:
    """Merge the starts (aligned, averaged, PRTF) and write phase/ (run_phasing with the results given)."""
    from spibatch.phasing.stage import run_phasing

    cfg = load_config(run_dir, EMC_CONFIG).phasing
    results = []
    for name in start_files:
        with open(name, "rb") as fh:
            results.append(pickle.load(fh))
    return run_phasing(cfg, cfg.intensity, run_dir / "phase", show_progress=False, results=results)


def validate(run_dir: Path) -> dict:
    """With a simulation truth: the EMC intensity's correlation and the density's FSC against it."""
    import numpy as np

    from spibatch.align import rotate_intensity
    from spibatch.emc.compare import compare_with_truth as emc_vs_truth
    from spibatch.io.results import read_result
    from spibatch.phasing.compare import compare_with_truth, load_truth, write_comparison

    pipeline = load_config(run_dir, EMC_CONFIG)
    truth, detector = run_dir / "truth.h5", pipeline.emc.detector
    if not truth.exists():
        log.info("validate: no truth.h5 (the data were not simulated): nothing to compare with")
        return {}
    emc_done, phase_done = finished(run_dir, "emc") or {}, finished(run_dir, "phase") or {}
    emc_json = run_dir / "emc" / "truth_comparison.json"
    comparison = emc_vs_truth(pipeline.phasing.intensity, truth, detector, emc_json,
                              extra={"emc_seconds": emc_done.get("seconds"), "iterations": pipeline.emc.iterations})
    data, attrs = read_result(run_dir / "phase" / "phasing.h5")
    rotated = rotate_intensity(data["density"], np.asarray(comparison["rotation"]), order=3)
    true_density, true_voxel = load_truth(truth)
    summary = compare_with_truth(rotated, attrs["voxel_size_m"], true_density, true_voxel, truth_path=str(truth))
    n = data["density"].shape[0]
    summary.update({"starts": pipeline.phasing.num_starts, "phasing_seconds": phase_done.get("seconds"),
                    "data_edge_resolution_m": n * attrs["voxel_size_m"] / attrs["max_measured_shell"]})
    written = write_comparison(summary, run_dir / "phase", "phased density vs the true density")
    return {"emc_vs_truth": emc_json, "phase_vs_truth": written["fsc_vs_truth"]}


def report(run_dir: Path) -> dict:
    """The monitor's report of the run (spibatch.monitor.report.write_report: report.html + PNGs)."""
    from spibatch.monitor.report import write_report

    return {"report": write_report(run_dir)}


STAGE_BODIES = {"simulate": simulate, "ingest": ingest, "phase": phase, "validate": validate, "report": report}
