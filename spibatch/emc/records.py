"""What an EMC run writes into its output folder, every file atomically.

Per iteration ``N`` (written in this order, by rank 0 only)::

    output_NNN.h5    intensity (M, M, M) float32, photons per pixel at scale 1, indexed [qx, qy, qz]
                     orientations (D,) int32         most likely rotation of each frame (index into the
                                                     refined 600-cell of num_div)
                     quaternions (D, 4) float64      that rotation, (w, x, y, z), w >= 0: frame d samples
                                                     intensity(R_d q_p), as in truth.h5
                     best_probability (D,) float64   its probability
                     scale (D,) float64              per-frame scale factors after this iteration (mean 1)
                     log_likelihood (D,) float64     sum_r P_dr (log-likelihood of rotation r, log K! included)
                     mutual_info (D,) float64        sum_r P_dr log(P_dr / w_r), nats
                     with modes (num_modes + nonrot_modes = V > 1): intensity is volume 0, and
                     intensities (V, M, M, M) float32  every volume (rotating modes, then non-rotating)
                     mode_probabilities (D, V) float64 each frame's probability of each volume (sum 1;
                                                     orientations then index the modes' list: k R + r)
                     attributes: iteration, beta (mean over frames), num_rot, mpi_ranks, metrics (JSON),
                     intensity_unit, voxel_size_per_m (when the detector says)
    EMC.log          Dragonfly-style: header, then a tab-separated table
                     ``iter time rms_change info_rate log-likelihood num_rot beta``, rewritten whole
    metrics.jsonl    one JSON object per iteration (the monitor reads it), rewritten whole
    checkpoint.h5    model (M, M, M) or (V, M, M, M) float64, scales (D,) float64; attributes iteration, settings
                     (JSON: what must not change on resume), history (JSON: every iteration's metrics)

The checkpoint is written last, so whatever it names is complete on disk;
resuming rewrites ``EMC.log`` and ``metrics.jsonl`` from its history, so
lines of an iteration that was interrupted before its checkpoint disappear.
The names are :mod:`spibatch.layout`'s; :class:`Recorder` writes them all, iteration by iteration.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from spibatch.errors import InputError
from spibatch.io.atomic import write_hdf5, write_text
from spibatch.io.hdf5 import check_written, open_hdf5, read_dataset, require_dataset
from spibatch.io.results import write_result
from spibatch.layout import CHECKPOINT, EMC_LOG, METRICS, output_name

__all__ = ["CHECKPOINT", "EMC_LOG", "METRICS", "LOG_COLUMNS", "Recorder", "log_header", "log_row", "output_name",
           "read_checkpoint", "read_log_table", "read_top_rotations", "write_checkpoint", "write_iteration",
           "write_logs"]
LOG_COLUMNS = ("iter", "time", "rms_change", "info_rate", "log-likelihood", "num_rot", "beta")


def write_iteration(out_dir: Path, iteration: int, model: np.ndarray, frames: dict[str, np.ndarray],
                    scales: np.ndarray, quaternions: np.ndarray, record: dict,
                    voxel_size_per_m: float | None) -> Path:
    """Write ``output_NNN.h5`` of one iteration (layout in the module docstring); returns its path."""
    best = frames["best_rotation"].astype(np.int32)
    datasets = {
        "intensity": (model[0] if model.ndim == 4 else model).astype(np.float32),
        "orientations": best,
        "quaternions": quaternions[np.maximum(best, 0)],
        "best_probability": frames["best_probability"],
        "scale": scales,
        "log_likelihood": frames["log_likelihood"],
        "mutual_info": frames["mutual_info"],
    }
    if "top_rotations" in frames:                         # emc.refine: where the next fine search is
        datasets["top_rotations"] = frames["top_rotations"].astype(np.int32)
    if model.ndim == 4:                                   # modes: every volume, and each frame's share of each
        datasets["intensities"] = model.astype(np.float32)
        datasets["mode_probabilities"] = frames["mode_probabilities"]
    if "background_scale" in frames:                      # a background: each frame's fitted background scale
        datasets["background_scale"] = frames["background_scale"]
    attrs = {"iteration": iteration, "beta": record["beta_mean"], "num_rot": record["num_rot"],
             "mpi_ranks": record["mpi_ranks"], "metrics": json.dumps(record, sort_keys=True),
             "intensity_unit": "photons per pixel", "voxel_size_per_m": voxel_size_per_m}
    path = out_dir / output_name(iteration)
    write_result(path, datasets, attrs)
    return path


def read_top_rotations(out_dir: Path, iteration: int) -> tuple[np.ndarray, np.ndarray]:
    """Each frame's most probable rotations (D, k) int32 and its mutual information (D,) float64 (nats), as
    ``output_NNN.h5`` of an emc.refine iteration holds them (a resume chooses the next fine search from them)."""
    path = out_dir / output_name(iteration)
    fix = "resume needs the last iteration's output_NNN.h5; start a new run"
    with open_hdf5(path, fix) as f:
        return (require_dataset(f, "top_rotations", path, fix)[()].astype(np.int32),
                require_dataset(f, "mutual_info", path, fix)[()].astype(np.float64))


def log_header(info: dict) -> str:
    """The header of ``EMC.log``: data, system and reconstruction parameters, then the table's column names."""
    lines = ["spibatch EMC (Expand-Maximize-Compress), Dragonfly-style log", "",
             "Data parameters:",
             f"\tphotons = {info['photons']}",
             f"\tnum_data = {info['num_data']}",
             f"\tmean_count = {info['mean_count']:.6f}", "",
             "System size:",
             f"\tnum_rot = {info['num_rot']}",
             f"\tnum_pix = {info['num_used']}/{info['num_pix']}",
             f"\tsystem_volume = {info.get('volumes', 1)} X {info['size']} X {info['size']} X {info['size']}", "",
             "Reconstruction parameters:",
             f"\tnum_threads = {info['num_threads']}",
             f"\tnum_proc = {info['mpi_ranks']}",
             f"\tbeta = {info['beta']}",
             f"\tbeta_factor = {info['beta_factor']}",
             f"\tbeta_schedule = {info['beta_schedule']}",
             f"\tneed_scaling = {'yes' if info['need_scaling'] else 'no'}",
             f"\tfriedel_symmetry = {'yes' if info['friedel_symmetry'] else 'no'}",
             f"\tpoint_group = {info['point_group']}",
             f"\tstart_model = {info['start_model']}", "",
             "\t".join(LOG_COLUMNS)]
    return "\n".join(lines) + "\n"


def log_row(record: dict) -> str:
    """One line of the ``EMC.log`` table (no newline)."""
    return (f"{record['iteration']}\t{record['time_s']:.2f}\t{record['rms_change']:.4e}\t"
            f"{record['mutual_info']:.6f}\t{record['log_likelihood']:.6e}\t{record['num_rot']}\t"
            f"{record['beta_mean']:.6f}")


def write_logs(out_dir: Path, header: str, history: list[dict]) -> None:
    """Rewrite ``EMC.log`` and ``metrics.jsonl`` (atomically) from the metrics of every iteration so far."""
    write_text(out_dir / EMC_LOG, header + "".join(log_row(r) + "\n" for r in history))
    write_text(out_dir / METRICS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in history))


def read_log_table(path: str | os.PathLike) -> list[dict[str, float]]:
    """The table of an ``EMC.log`` (ours or Dragonfly's) as one dict per iteration, keyed by LOG_COLUMNS."""
    rows, in_table = [], False
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        cells = line.split()
        if cells[:2] in (["iter", "time"], ["Iter", "time"]):
            in_table = True
            continue
        if in_table and len(cells) == len(LOG_COLUMNS):
            rows.append({name: float(cell) for name, cell in zip(LOG_COLUMNS, cells)})
    return rows


def write_checkpoint(out_dir: Path, iteration: int, model: np.ndarray, scales: np.ndarray,
                     settings: dict, history: list[dict], background_scales: np.ndarray | None = None) -> Path:
    """Write ``checkpoint.h5`` atomically (uncompressed: it is rewritten every iteration)."""
    def fill(f) -> None:
        f.create_dataset("model", data=np.asarray(model, np.float64), track_times=False)
        f.create_dataset("scales", data=np.asarray(scales, np.float64), track_times=False)
        if background_scales is not None:
            f.create_dataset("background_scales", data=np.asarray(background_scales, np.float64), track_times=False)
        f.attrs["iteration"] = int(iteration)
        f.attrs["settings"] = json.dumps(settings, sort_keys=True)
        f.attrs["history"] = json.dumps(history, sort_keys=True)

    return write_hdf5(out_dir / CHECKPOINT, fill)   # in memory, then written by Python (a full disk: one line)


MAX_CHECKPOINT_VALUES = 2 ** 33    # 64 GiB of float64: larger is no checkpoint this program wrote


def read_checkpoint(out_dir: Path, voxels: int | None = None) -> dict | None:
    """``{iteration, model, scales, settings, history}`` from ``out_dir/checkpoint.h5``, or None when absent.
    InputError (one line) for a checkpoint that is not one this run could have written: a model of other than
    ``voxels`` values (checked before it is read: a few kB of fill-only chunks declared 1001^3 took 8 GB),
    values never written, negative scales, an iteration its history does not hold."""
    path = out_dir / CHECKPOINT
    if not path.exists():
        return None
    fix = "delete it to start the EMC run again from iteration 1"
    with open_hdf5(path, fix) as f:
        datasets = {key: require_dataset(f, key, path, fix) for key in ("model", "scales")}
        if "background_scales" in f:
            datasets["background_scales"] = require_dataset(f, "background_scales", path, fix)
        if voxels is not None and datasets["model"].size != voxels:
            raise InputError(f"the checkpoint's model holds {datasets['model'].size} values, these settings' model "
                             f"{voxels} (another detector, model size or number of modes than the run's)", path=path,
                             field="model", fix="delete it to start the EMC run again from iteration 1, or start a "
                             "new run")
        for ds in datasets.values():
            if ds.ndim == 0 or ds.size > MAX_CHECKPOINT_VALUES:
                raise InputError(f"{'a scalar' if ds.ndim == 0 else f'{ds.size:,} values'}: not a checkpoint's",
                                 path=path, field=ds.name.lstrip("/"), fix=fix)
            check_written(ds, path, fix)
        model, scales = (read_dataset(datasets[key], (), path) for key in ("model", "scales"))
        background_scales = (read_dataset(datasets["background_scales"], (), path)
                             if "background_scales" in datasets else None)
        try:
            iteration = int(f.attrs["iteration"])
            settings = json.loads(f.attrs["settings"])
            history = json.loads(f.attrs["history"])
        except (KeyError, TypeError, ValueError, RecursionError, OverflowError):
            raise InputError("attributes iteration, settings or history missing or unreadable", path=path,
                             fix=fix) from None
    if not isinstance(history, list) or not 0 <= iteration <= len(history):
        held = f"of {len(history)} records" if isinstance(history, list) else "(not a list)"
        raise InputError(f"its iteration ({iteration}) is not one its history {held} holds", path=path,
                         field="iteration", fix=fix)
    if np.any(np.asarray(scales) < 0):      # (a positive log-likelihood, exit 0)
        raise InputError("the checkpoint's scales hold negative values", path=path, field="scales", fix=fix)
    return {"iteration": iteration, "model": model, "scales": scales, "background_scales": background_scales,
            "settings": settings,
            "history": history[:iteration]}


class Recorder:
    """Everything an EMC run writes, iteration by iteration, and the history of its records.

    out_dir: the run's EMC folder, or None for a process that writes nothing (MPI ranks but 0);
    header: the ``EMC.log`` header (:func:`log_header`); settings: what the checkpoint records as the
    settings that must not change on resume; quaternions (R, 4) of the rotations; history: the records
    of the iterations before (resumed from the checkpoint; empty for a new run).
    """

    def __init__(self, out_dir: Path | None, header: str, settings: dict, quaternions: np.ndarray,
                 voxel_size_per_m: float | None, history: list[dict]):
        self.out_dir, self.header, self.settings = out_dir, header, settings
        self.quaternions, self.voxel_size_per_m, self.history = quaternions, voxel_size_per_m, list(history)
        self._pool = None       # the writing thread's executor, made at the first save
        self._pending = None    # the save being written

    def start(self) -> None:
        """Create the folder and (re)write ``EMC.log`` and ``metrics.jsonl`` from the history."""
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_logs(self.out_dir, self.header, self.history)

    def save(self, iteration: int, model: np.ndarray, frames: dict[str, np.ndarray], scales: np.ndarray,
             record: dict) -> None:
        """Write the iteration's files -- ``output_NNN.h5``, then the logs with ``record`` (its ``timing.write_s``
        added), then the checkpoint -- in a writing thread, while the next iteration computes: a write that waits
        (a parallel filesystem) does not hold the iterations up; where every core computes, the writes' CPU is
        taken from the iterations instead (BENCHMARKS.md).  One iteration at a time: this waits for the
        iteration before's files first, and raises its error (a full disk) here, or at :meth:`flush`.  The arrays
        are read, not copied: the caller does not change them afterwards (every iteration makes new ones)."""
        self.flush()
        record = dict(record, timing=dict(record["timing"]))
        if self.out_dir is None:
            record["timing"]["write_s"] = 0.0
            self.history.append(record)
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="emc-writer")
        self._pending = self._pool.submit(self._write, iteration, model, frames, scales, record, self.quaternions)

    def _write(self, iteration: int, model: np.ndarray, frames: dict[str, np.ndarray], scales: np.ndarray,
               record: dict, quaternions: np.ndarray) -> None:
        began = time.perf_counter()
        write_iteration(self.out_dir, iteration, model, frames, scales, quaternions, record, self.voxel_size_per_m)
        record["timing"]["write_s"] = time.perf_counter() - began
        self.history.append(record)
        write_logs(self.out_dir, self.header, self.history)
        write_checkpoint(self.out_dir, iteration, model, scales, self.settings, self.history,
                         frames.get("background_scale"))

    def flush(self) -> None:
        """Wait until every saved iteration's files are on disk; raise the error of a write that failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """:meth:`flush`, then end the writing thread."""
        try:
            self.flush()
        finally:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
