"""Read one run folder for the monitor and the report, safely and while it is still being written.

Every reader returns plain JSON-able dicts (lists, numbers, strings; NaN and
infinities become None).  Files are opened only through :meth:`RunData.file`,
which refuses anything that resolves outside the monitored root.  A file that
is missing gives :class:`~spibatch.monitor.paths.NotFound`; one that cannot be
read yet (being written by a program that does not write atomically, or
truncated) gives :class:`NotReady`, which the server answers with 503 and the
page retries.

Layouts understood: a spibatch run folder (:mod:`spibatch.layout`: the same for every command),
and a bare EMC output folder (``metrics.jsonl`` or Dragonfly's ``EMC.log`` + ``output_NNN.h5``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from spibatch import layout
from spibatch.monitor.paths import NotFound, OutsideRoot, inside, run_name
from spibatch.monitor.volumes import density_slices, intensity_slices

OUTPUT_RE = layout.OUTPUT_RE
LOG_TAIL_LINES = 200
HISTOGRAM_BINS = 25


class NotReady(Exception):
    """A file exists but cannot be read yet (being written, or truncated); retry later."""


def clean(value):
    """``value`` with numpy types turned into Python ones and non-finite floats into None (JSON-safe)."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return clean(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_jsonl(path: Path) -> list[dict]:
    """The complete JSON lines of a file; a last line still being written (no newline, bad JSON) is skipped."""
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def first_row(path: Path) -> dict | None:
    """The first JSON line of a file (only that line is read), or None when it is missing or incomplete."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            row = json.loads(fh.readline())
    except (OSError, ValueError):
        return None
    return row if isinstance(row, dict) else None


class RunData:
    """One run folder under a monitored root (both already resolved by :func:`paths.resolve_run`)."""

    def __init__(self, root: Path, folder: Path):
        self.root, self.folder = root, folder
        self.name = run_name(root, folder)
        self.run = layout.RunLayout(folder)

    # -- where things are -------------------------------------------------------------------------
    def file(self, *parts: str) -> Path:
        """A path inside the run; OutsideRoot if it resolves outside the monitored root."""
        return inside(self.root, self.folder.joinpath(*parts))

    def _in_layout(self, path: Path) -> Path | None:
        """``path`` (of the run's layout) when it is a file inside the root, else None."""
        try:
            path = self.file(str(path.relative_to(self.folder)))
        except (OutsideRoot, ValueError):
            return None
        return path if path.is_file() else None

    def emc_dir(self) -> Path | None:
        """``emc/`` of a run folder, or the folder itself when it is a bare EMC folder (Dragonfly's), if EMC is there."""
        for parts in ((layout.STAGE_DIRS["emc"],), ()):
            try:
                folder = self.file(*parts)
            except OutsideRoot:
                continue
            if folder.is_dir() and ((folder / layout.EMC_LOG).is_file() or any(folder.glob("output_[0-9][0-9][0-9]*.h5"))
                                    or _is_emc_metrics(folder / layout.METRICS)):
                return folder
        return None

    def phase_files(self) -> tuple[Path | None, Path | None]:
        """(metrics.jsonl of phasing, phasing.h5), each None when absent."""
        metrics = self._in_layout(self.run.phasing_metrics)
        if metrics and (first_row(metrics) or {}).get("stage") != "phase":
            metrics = None
        return metrics, self._in_layout(self.run.phasing)

    def fsc_file(self) -> Path | None:
        return self._in_layout(self.run.fsc_vs_truth)

    def watched(self) -> list[Path]:
        """The files whose change means the page should refresh."""
        paths = [self._in_layout(self.run.provenance), self._in_layout(self.run.log)]
        emc = self.emc_dir()
        if emc is not None:
            paths += [emc / layout.METRICS, emc / layout.EMC_LOG] + sorted(emc.glob("output_*.h5"))
        paths += list(self.phase_files()) + [self.fsc_file()]
        return [p for p in paths if p is not None]

    def fingerprint(self) -> str:
        """A short string that changes whenever a watched file is added, removed or rewritten."""
        parts = []
        for path in self.watched():
            try:
                st = path.stat()
            except OSError:
                continue
            parts.append(f"{path.name}:{st.st_size}:{st.st_mtime_ns}")
        import hashlib

        return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]

    # -- summary ----------------------------------------------------------------------------------
    def summary(self) -> dict:
        """Name, status, times, command, what the run holds, and the headline numbers."""
        prov = self.provenance()
        mtimes = []
        for path in self.watched():
            try:
                mtimes.append(path.stat().st_mtime)
            except OSError:
                pass
        emc = self.emc_dir()
        done = 0
        if emc is not None:   # iterations in metrics.jsonl / EMC.log, or output files when there are more
            done = max([0] + self.emc_series()["iteration"][-1:] + self.emc_iterations()[-1:])
        planned = (self.config_value("emc", "iterations") if emc else None)
        metrics, result = self.phase_files()
        out = {"run": self.name, "title": self.folder.name, "status": prov.get("status", "unknown"),
               "started": prov.get("started"), "finished": prov.get("finished"), "error": prov.get("error"),
               "command": " ".join(prov.get("command", [])) or None, "host": prov.get("host"),
               "last_update": max(mtimes) if mtimes else None,
               "has": {"emc": emc is not None, "phase": bool(metrics or result), "phase_result": result is not None,
                       "fsc": self.fsc_file() is not None},
               "emc_iterations_done": done, "emc_iterations_planned": planned}
        truth = self._in_layout(self.run.emc_vs_truth)
        if truth:
            try:
                out["emc_cc_with_truth"] = json.loads(truth.read_text(encoding="utf-8")).get("cc")
            except ValueError:
                pass
        return clean(out)

    def provenance(self) -> dict:
        path = self._in_layout(self.run.provenance)
        if path is None:
            return {}
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return {}
        return record if isinstance(record, dict) else {}

    def config_value(self, section: str, key: str):
        path = self._in_layout(self.run.config)
        if path is None:
            return None
        import yaml

        try:
            cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            return (cfg.get(section) or {}).get(key)
        except (yaml.YAMLError, AttributeError):
            return None

    def texts(self) -> dict:
        """config.yaml, provenance.json (pretty), and the last LOG_TAIL_LINES of log.txt and EMC.log."""
        out = {}
        for key, path in (("config", self.run.config), ("provenance", self.run.provenance), ("log", self.run.log)):
            path = self._in_layout(path)
            out[key] = _tail(path) if path else None
        emc = self.emc_dir()
        out["emc_log"] = _tail(emc / layout.EMC_LOG) if emc and (emc / layout.EMC_LOG).is_file() else None
        return out

    # -- EMC --------------------------------------------------------------------------------------
    def emc_series(self) -> dict:
        """Per-iteration metrics: iteration, log_likelihood, mutual_info (nats), rms_change, beta_mean,
        num_rot, mean_kept_rotations, time_s (lists of equal length), and ``changes``: the iterations
        where beta or the number of rotations changed, with a label."""
        emc = self.emc_dir()
        if emc is None:
            raise NotFound("this run has no EMC output")
        rows = read_jsonl(emc / layout.METRICS) if (emc / layout.METRICS).is_file() else []
        if not rows and (emc / layout.EMC_LOG).is_file():   # Dragonfly's folder: the log's table
            from spibatch.emc.records import read_log_table

            rows = [{"iteration": int(r["iter"]), "time_s": r["time"], "rms_change": r["rms_change"],
                     "mutual_info": r["info_rate"], "log_likelihood": r["log-likelihood"],
                     "num_rot": int(r["num_rot"]), "beta_mean": r["beta"]} for r in read_log_table(emc / layout.EMC_LOG)]
        rows = sorted({int(r["iteration"]): r for r in rows if "iteration" in r}.values(),
                      key=lambda r: r["iteration"])
        keys = ("iteration", "log_likelihood", "mutual_info", "rms_change", "beta_mean", "num_rot",
                "mean_kept_rotations", "time_s")
        series = {k: [r.get(k) for r in rows] for k in keys}
        changes = []
        for prev, row in zip(rows, rows[1:]):
            labels = []
            b0, b1 = prev.get("beta_mean"), row.get("beta_mean")
            if b0 and b1 and abs(b1 / b0 - 1) > 1e-6:
                labels.append(f"β ×{b1 / b0:.3g}")
            if prev.get("num_rot") != row.get("num_rot"):
                labels.append(f"rotations {prev.get('num_rot')} → {row.get('num_rot')}")
            if labels:
                changes.append({"iteration": row["iteration"], "label": ", ".join(labels)})
        series["changes"] = changes
        series["planned"] = self.config_value("emc", "iterations")
        series["outputs"] = self.emc_iterations()
        return clean(series)

    def emc_iterations(self) -> list[int]:
        """Iterations with a complete ``output_NNN.h5`` (atomic writes: temporary ``.part`` names are skipped)."""
        emc = self.emc_dir()
        if emc is None:
            return []
        found = (OUTPUT_RE.match(p.name) for p in emc.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def _output(self, iteration: int | None) -> Path:
        iterations = self.emc_iterations()
        if not iterations:
            raise NotFound("no output_NNN.h5 written yet")
        iteration = iterations[-1] if iteration is None else int(iteration)
        if iteration not in iterations:
            raise NotFound(f"no output for iteration {iteration} (have {iterations[0]}-{iterations[-1]})")
        return inside(self.root, self.emc_dir() / layout.output_name(iteration))

    def emc_frames(self, iteration: int | None = None) -> dict:
        """Histograms over frames of one iteration: the most likely rotation's probability, and the scale."""
        path = self._output(iteration)
        with _open_h5(path) as f:
            iteration_read = int(f.attrs.get("iteration", _iteration_of(path)))
            prob = _read(f, ("best_probability",), path)
            scale = _read(f, ("scale", "scale_factors"), path, required=False)
        out = {"iteration": iteration_read, "num_frames": int(prob.size),
               "probability": _histogram(prob, (0.0, 1.0)), "median_probability": float(np.median(prob))}
        if scale is not None and scale.size:
            out["scale"] = _histogram(scale, (0.0, float(np.max(scale)) or 1.0))
        return clean(out)

    def emc_slices(self, iteration: int | None = None) -> dict:
        """Three central slices of one iteration's intensity, log10, reduced on the server (see volumes.py)."""
        path = self._output(iteration)
        with _open_h5(path) as f:
            name = "intensity" if "intensity" in f else "intens"
            if name not in f:
                raise NotReady(f"{path.name}: no intensity dataset (yet)")
            dq = f.attrs.get("voxel_size_per_m")
            out = intensity_slices(f[name], float(dq) if dq else None)
            out["iteration"] = int(f.attrs.get("iteration", _iteration_of(path)))
        out["iterations"] = self.emc_iterations()
        return clean(out)

    # -- phasing and validation -------------------------------------------------------------------
    def phase_series(self) -> dict:
        """Per start: seed, errors per iteration, final error, kept or not; the PRTF and its resolution."""
        metrics, result = self.phase_files()
        if metrics is None and result is None:
            raise NotFound("this run has no phasing output")
        rows = read_jsonl(metrics) if metrics else []
        starts = [r for r in rows if r.get("kind") == "start"]
        merge = next((r for r in rows if r.get("kind") == "merge"), None)
        out = {"starts": [{"seed": r.get("seed"), "errors": r.get("errors", []), "final_error": r.get("final_error"),
                           "algorithms": r.get("algorithms")} for r in starts],
               "planned": self.config_value("phasing", "num_starts"), "kept_seeds": None, "prtf": None}
        if merge:
            out["kept_seeds"] = merge.get("kept_seeds")
            out["prtf"] = {"prtf": merge.get("prtf"), "resolution_m": merge.get("resolution_m"),
                           "resolution_shell": merge.get("resolution_shell"), "frequency_per_m": None,
                           "max_measured_shell": merge.get("max_measured_shell")}
        if result is not None and out["prtf"] is not None:
            with _open_h5(result) as f:
                if "prtf_frequency_per_m" in f and f.attrs.get("voxel_size_m"):
                    out["prtf"]["frequency_per_m"] = _read(f, ("prtf_frequency_per_m",), result)
        return clean(out)

    def phase_slices(self) -> dict:
        """Three central slices of the averaged density with the support, cropped to the particle."""
        _, result = self.phase_files()
        if result is None:
            raise NotFound("no phasing.h5 yet (written when every start has finished)")
        with _open_h5(result) as f:
            if "density" not in f:
                raise NotReady(f"{result.name}: no density dataset")
            voxel = f.attrs.get("voxel_size_m")
            support = f["support"] if "support" in f else None
            return clean(density_slices(f["density"], support, float(voxel) if voxel else None))

    def fsc(self) -> dict:
        """The FSC with the truth: frequency (1/m, or 1/voxel), FSC, the 0.5 / 0.143 resolutions, cc."""
        path = self.fsc_file()
        if path is None:
            raise NotFound("no FSC against a truth in this run")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise NotReady(f"{path.name}: not complete JSON yet") from None
        voxel = data.get("voxel_size_m")
        frequency = data.get("frequency")
        if frequency is None:     # a file from before "frequency" was written: the box edge from a crossing
            radius = np.asarray(data.get("radius", []), float)
            box = next((data[f"resolution_{t}_m"] * data[f"fsc_{t}_radius"] for t in ("0.5", "0.143")
                        if voxel and data.get(f"resolution_{t}_m") and data.get(f"fsc_{t}_radius")), None)
            frequency = radius / (box or (2 * (radius.size - 1) + 1) * (voxel or 1.0))
        return clean({"frequency": np.asarray(frequency, float), "frequency_unit": "1/m" if voxel else "1/voxel",
                      "fsc": data.get("fsc"), "resolution_0.5_m": data.get("resolution_0.5_m"),
                      "resolution_0.143_m": data.get("resolution_0.143_m"), "cc": data.get("cc"),
                      "data_edge_resolution_m": data.get("data_edge_resolution_m"),
                      "inverted": data.get("inverted")})


def _is_emc_metrics(path: Path) -> bool:
    """True for EMC's metrics.jsonl (rows with an iteration), False for phasing's (rows with stage "phase")."""
    row = first_row(path) if path.is_file() else None
    return row is not None and "iteration" in row and row.get("stage") != "phase"


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - 256 * 1024))
        text = fh.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _iteration_of(path: Path) -> int:
    m = OUTPUT_RE.match(path.name)
    return int(m.group(1)) if m else -1


class _open_h5:
    """``with _open_h5(path) as f``: h5py.File, with unreadable files (truncated, being written) as NotReady."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        import h5py

        try:
            self.f = h5py.File(self.path, "r")
        except FileNotFoundError:
            raise NotFound(f"{self.path.name} has gone") from None
        except OSError as exc:
            raise NotReady(f"{self.path.name} cannot be read yet ({str(exc).splitlines()[0][:120]})") from None
        return self.f

    def __exit__(self, *exc):
        self.f.close()
        if exc[0] is not None and issubclass(exc[0], (OSError, KeyError)) and not issubclass(exc[0], NotFound):
            raise NotReady(f"{self.path.name} cannot be read yet ({exc[1]})") from None
        return False


def _read(f, names, path, required=True):
    for name in names:
        if name in f:
            return np.asarray(f[name][()])
    if required:   # a readable file without it (Dragonfly's outputs have no best_probability): nothing to show
        raise NotFound(f"{path.name}: no dataset {names[0]}")
    return None


def _histogram(values: np.ndarray, span: tuple[float, float]) -> dict:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=span)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


__all__ = ["RunData", "NotReady", "NotFound", "OutsideRoot", "clean", "read_jsonl"]
