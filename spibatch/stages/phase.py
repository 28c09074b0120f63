"""The phase stage: a 3-D intensity -> ``phase/`` (density, support, PRTF, per-start errors).

In this process the starts run one after another on the CPU (batched on a GPU); given the
pipeline's workers, each start is a task (``phase/starts/start_NNN.pkl``, kept for a resume) and
the merge -- alignment, average, PRTF, files -- one more task.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

from spibatch.errors import InputError
from spibatch.io.atomic import atomic_path
from spibatch.layout import RunLayout
from spibatch.stages import inputs, load_run, stage_log


def check(pipeline, config: Path | None = None, run: RunLayout | None = None):
    """Before anything is created: the intensity exists, reads, and can be phased.  Returns what
    :func:`spibatch.phasing.stage.load_intensity` read (reused by the run)."""
    from spibatch.phasing.measurement import check_intensity
    from spibatch.phasing.stage import load_intensity

    source = inputs.phasing_intensity(run, pipeline, config)
    if not Path(source).is_file():
        raise InputError("file not found", path=source, field="phasing.intensity", fix="check the path")
    cfg = pipeline.phasing
    loaded = load_intensity(Path(source), dataset=cfg.dataset, crop_to=cfg.crop_to,
                            voxel_size_per_m=cfg.voxel_size_per_m)
    check_intensity(loaded[0], source=str(source))
    return loaded


def run(run: RunLayout, pipeline, device, workers=None) -> dict[str, Path]:
    from spibatch.phasing.stage import run_phasing

    cfg = pipeline.phasing
    intensity = inputs.phasing_intensity(run, pipeline)
    if workers is None:
        return run_phasing(cfg, intensity, run.phase, show_progress=sys.stdout.isatty(), device=device.kind,
                           gpu_runtime=device.launch_runtime)
    futures = [workers.submit(start_task, str(run.path), k, workers.threads()) for k in range(cfg.num_starts)]
    files = [f.result() for f in futures]
    return workers.submit(merge_task, str(run.path), files).result()


def start_task(run_dir: str, index: int, threads: int) -> str:
    """Start ``index`` of the run's phasing into ``phase/starts/start_NNN.pkl`` (kept when it exists)."""
    from spibatch.phasing.stage import options_of, prepare_measurement, run_start

    run, pipeline, device = load_run(run_dir)
    path = run.start_file(index)
    if path.exists():
        return str(path)
    cfg = pipeline.phasing
    cfg.threads = cfg.threads or threads
    intensity = inputs.phasing_intensity(run, pipeline)
    with stage_log(run, "phase"):
        measurement = prepare_measurement(cfg, intensity)
        options = options_of(cfg, device.kind, device.launch_runtime)   # a GPU start: this worker's GPU
        result = run_start(cfg, intensity, measurement, options, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        pickle.dump(result, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return str(path)


def merge_task(run_dir: str, start_files: list[str]) -> dict[str, Path]:
    """Merge the starts (aligned, averaged, PRTF) and write ``phase/``."""
    from spibatch.phasing.stage import run_phasing

    run, pipeline, _ = load_run(run_dir)
    results = []
    for name in start_files:
        with open(name, "rb") as fh:
            results.append(pickle.load(fh))
    with stage_log(run, "phase"):
        return run_phasing(pipeline.phasing, inputs.phasing_intensity(run, pipeline), run.phase,
                           show_progress=False, results=results)
