"""The phase stage: a 3-D intensity -> ``phase/`` (density, support, PRTF, per-start errors).

In this process the starts run one after another on the CPU (batched on a GPU); given the
pipeline's workers, each start is a task (``phase/starts/start_NNN.npz``, kept for a resume) and
the merge -- alignment, average, PRTF, files -- one more task.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from spibatch import parsl_wait
from spibatch.errors import InputError
from spibatch.io.start_files import read_start, write_start
from spibatch.layout import RunLayout
from spibatch.stages import inputs, load_run, stage_log
from spibatch.stages.checks import budget_for, keyed, naming, require_file


def settings_of(pipeline):
    """The pipeline's phasing section as :class:`spibatch.phasing.settings.PhasingSettings` (recipe parsed)."""
    from spibatch.phasing.settings import PhasingSettings

    return PhasingSettings.from_dict(pipeline.phasing.model_dump())


def check(pipeline, config: Path | None = None, run: RunLayout | None = None, *, budget=None):
    """Before anything is created: the intensity exists, its header shows a volume whose phasing fits the
    memory and time of ``budget`` (default: this machine), its voxel-size attribute (when used) is a positive
    number, and it reads and can be phased (every input check of
    :func:`spibatch.phasing.inputs.check_inputs`).  Returns what it read: (intensity, dq)."""
    from spibatch import estimates
    from spibatch.io.results import check_not_density, is_hdf5, positive_attribute, volume_shape
    from spibatch.phasing.inputs import check_inputs
    from spibatch.phasing.measurement import fast_size

    cfg = pipeline.phasing
    source = Path(inputs.phasing_intensity(run, pipeline, config))
    require_file(source, "phasing.intensity", fix="give a 3-D intensity (an EMC output_NNN.h5, HDF5 or MRC)")
    with keyed(cfg.dataset, "phasing.dataset"):
        check_not_density(source, cfg.dataset, "phasing.intensity")
        shape = volume_shape(source, cfg.dataset, field="phasing.intensity")
    settings = settings_of(pipeline)
    edge = min(cfg.crop_to or shape[0], shape[0])
    edge = fast_size(edge) if cfg.fast_fft_size else edge
    budget = budget or budget_for()
    gpu = pipeline.device == "gpu"
    estimates.phasing(edge, settings.num_starts, settings.recipe.iterations(), gpu=gpu, parallel=budget.parallel(gpu),
                      edge_field="phasing.crop_to" if cfg.crop_to else "phasing.intensity",
                      read_voxels=int(shape[0]) * int(shape[1]) * int(shape[2])
                      ).check(config or source, budget, paths={"phasing.intensity": source})
    dq, where = cfg.voxel_size_per_m, (config or source, "phasing.voxel_size_per_m")
    if dq is None and is_hdf5(source):
        import h5py

        with h5py.File(source, "r") as f:
            dq, where = positive_attribute(f.attrs.get("voxel_size_per_m"), source, "voxel_size_per_m"), \
                (source, "voxel_size_per_m")
    check_voxel(dq, edge, *where)
    with naming(config):
        return check_inputs(source, settings)


def check_voxel(dq: float | None, edge: int, path, field: str) -> None:
    """The density voxel 1 / (edge dq) within ``estimates.DENSITY_VOXEL_M`` (dq = 1e-300 1/m made an infinite
    voxel, a traceback in the MRC writer after the whole phasing)."""
    from spibatch.estimates import DENSITY_VOXEL_M

    if dq is None:
        return
    voxel = 1.0 / (edge * float(dq))
    low, high = DENSITY_VOXEL_M
    if not low <= voxel <= high:
        raise InputError(f"a Fourier voxel of {float(dq):g} 1/m makes a density voxel of {voxel:g} m on the "
                         f"{edge}^3 grid, outside {low:g} .. {high:g} m", path=path, field=field,
                         fix="give dq in 1/m (1 / (N x the density voxel); EMC and simulator files carry it, "
                         "typically 1e6 .. 1e9)")


def run(run: RunLayout, pipeline, device, workers=None) -> dict[str, Path]:
    from spibatch.phasing.driver import run_phasing

    settings = settings_of(pipeline)
    intensity = inputs.phasing_intensity(run, pipeline)
    if workers is None:
        return run_phasing(intensity, run.phase, settings, device=device, show_progress=sys.stdout.isatty())
    futures = [workers.submit(start_task, str(run.path), k, workers.threads()) for k in range(settings.num_starts)]
    files = parsl_wait.results(futures, "phasing starts")
    return parsl_wait.results([workers.submit(merge_task, str(run.path), files)], "merge tasks")[0]


def start_task(run_dir: str, index: int, threads: int) -> str:
    """Start ``index`` of the run's phasing into ``phase/starts/start_NNN.npz`` (kept when it exists)."""
    from spibatch.phasing.algebra import RecipeError
    from spibatch.phasing.driver import recipe_failed
    from spibatch.phasing.inputs import load_measurement
    from spibatch.phasing.starts import run_starts

    run, pipeline, device = load_run(run_dir)   # a GPU start: this worker's GPU
    path = run.start_file(index)
    if path.exists():
        return str(path)
    settings = settings_of(pipeline)
    settings = dataclasses.replace(settings, threads=settings.threads or threads)
    intensity = inputs.phasing_intensity(run, pipeline)
    with stage_log(run, "phase"):
        measurement = load_measurement(intensity, settings)
        try:
            result = run_starts([settings.seeds[index]], measurement, settings, device)[0]
        except RecipeError as exc:
            raise recipe_failed(exc, intensity) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    write_start(path, result)
    return str(path)


def merge_task(run_dir: str, start_files: list[str]) -> dict[str, Path]:
    """Merge the starts (aligned, averaged, PRTF) and write ``phase/``."""
    from spibatch.phasing.driver import run_phasing

    run, pipeline, _ = load_run(run_dir)
    results = [read_start(name) for name in start_files]
    with stage_log(run, "phase"):
        return run_phasing(inputs.phasing_intensity(run, pipeline), run.phase, settings_of(pipeline),
                           show_progress=False, results=results)
