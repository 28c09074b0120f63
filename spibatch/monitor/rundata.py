"""Read one run folder for the monitor and the report, safely and while it is still being written.

Every reader returns plain JSON-able dicts (lists, numbers, strings; NaN and infinities become
None).  Files are read only through :mod:`spibatch.monitor.files`, which refuses anything that
resolves outside the monitored root; paths come from :class:`spibatch.layout.RunLayout`.  A file
that is missing gives :class:`~spibatch.monitor.paths.NotFound`; one that cannot be read yet (being
written by a program that does not write atomically, or truncated) gives :class:`NotReady`, which
the server answers with 503 and the page retries; one whose contents are not what they should be
(wrong types or shapes) gives :class:`BadFile` (422).  Values read from a results file are checked
one by one (:func:`number`, :func:`integer`): a string or an infinity where a number belongs shows
as a gap, never as an error page.

Layouts understood: a spibatch run folder (:mod:`spibatch.layout`: the same for every command),
and a bare EMC output folder (``metrics.jsonl`` or Dragonfly's ``EMC.log`` + ``output_NNN.h5``).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from spibatch import layout
from spibatch.emc.records import LOG_COLUMNS
from spibatch.monitor import follow, progress
from spibatch.monitor.files import (MAX_CONFIG_BYTES, BadFile, NotReady, attr_int, attr_number, dataset,
                                    first_line_json, open_h5, read_json, read_jsonl, read_text, stat_inside, tail,
                                    volume)
from spibatch.monitor.lookup import Lookup
from spibatch.monitor.paths import NotFound, OutsideRoot, inside, run_name
from spibatch.monitor.values import clean, integer, number, numbers, text
from spibatch.monitor.volumes import density_slices, intensity_slices

OUTPUT_RE = layout.OUTPUT_RE
LOG_TAIL_LINES = 200
HISTOGRAM_BINS = 25
EMC_KEYS = ("log_likelihood", "mutual_info", "rms_change", "beta_mean", "mean_kept_rotations", "time_s")

BETA_STEP = 0.02   # a change of the mean beta marked on the plots (a schedule doubles it; frames joining a live
                   # run move the mean by < 1 % an iteration: "β ×1" on every iteration, piled up)


class RunData:
    """One run folder under a monitored root (both already resolved by :func:`paths.resolve_run`).

    Made anew for every request: what it has found (folder listings, stats, emc_dir, phase_files,
    provenance, config) is kept for its life only (:class:`~spibatch.monitor.lookup.Lookup`)."""

    _UNSET = object()

    def __init__(self, root: Path, folder: Path):
        self.root, self.folder = root, folder
        self.name = run_name(root, folder)
        self.run = layout.RunLayout(folder)
        self._config: dict | None = None
        self.lookup = Lookup(root)
        self.lookup.known(folder)
        self._emc_dir = self._phase_files = self._provenance = self._UNSET

    # -- where things are -------------------------------------------------------------------------
    def file(self, *parts: str) -> Path:
        """A path inside the run; OutsideRoot if it resolves outside the monitored root."""
        return Path(self.lookup.inside(self.folder.joinpath(*parts)))

    def _in_layout(self, path: Path) -> Path | None:
        """``path`` (of the run's layout) when it is a file inside the root, else None."""
        return path if self.lookup.is_file(path) else None

    def exists(self, path: Path) -> bool:
        return self.lookup.is_file(path)

    def mtime(self, path: Path) -> float | None:
        st = self.lookup.stat(path)
        return st.st_mtime if st is not None else None

    def read_json(self, path: Path):
        """The JSON value of a file of the run, None when it is missing, refused, or not complete JSON."""
        if not self.exists(path):        # what read_json would say (NotFound / OutsideRoot), without asking
            return None
        try:
            return read_json(self.root, path, self.lookup)
        except (NotFound, OutsideRoot, NotReady, BadFile):
            return None

    def read_jsonl(self, path: Path) -> list[dict]:
        return read_jsonl(self.root, path, self.lookup)

    def emc_dir(self) -> Path | None:
        """``emc/`` of a run folder, or the folder itself when it is a bare EMC folder (Dragonfly's), if EMC is there."""
        if self._emc_dir is self._UNSET:
            self._emc_dir = self._find_emc_dir()
        return self._emc_dir

    def _find_emc_dir(self) -> Path | None:
        for parts in ((layout.STAGE_DIRS["emc"],), ()):
            try:
                folder = self.file(*parts)
            except OutsideRoot:
                continue
            if self.lookup.is_dir(folder) and (self.exists(folder / layout.EMC_LOG) or self._outputs_in(folder)
                                               or _is_emc_metrics(self.root, folder / layout.METRICS, self.lookup)):
                return folder
        return None

    def phase_files(self) -> tuple[Path | None, Path | None]:
        """(metrics.jsonl of phasing, phasing.h5), each None when absent."""
        if self._phase_files is self._UNSET:
            metrics = self._in_layout(self.run.phasing_metrics)
            if metrics and (first_line_json(self.root, metrics, self.lookup) or {}).get("stage") != "phase":
                metrics = None
            self._phase_files = metrics, self._in_layout(self.run.phasing)
        return self._phase_files

    def fsc_file(self) -> Path | None:
        return self._in_layout(self.run.fsc_vs_truth)

    def watched(self) -> list[Path]:
        """The files whose change means the page should refresh (each under the root)."""
        paths = [self.run.provenance, self.run.log]
        emc = self.emc_dir()
        if emc is not None:
            paths += [emc / layout.METRICS, emc / layout.EMC_LOG] + [emc / layout.output_name(i) for i in
                                                                      self._outputs_in(emc)]
            paths.append(emc / layout.HALVES_JSON)
        paths += list(self.phase_files()) + [self.fsc_file()] + progress.watched(self) + follow.watched(self)
        return [p for p in paths if p is not None and self.exists(p)]

    def fingerprint(self) -> str:
        """A short string that changes whenever a watched file is added, removed or rewritten."""
        parts = []
        for path in self.watched():
            st = stat_inside(self.root, path)    # not the lookup's: the fingerprint is of the files as they are now
            if st is not None:
                parts.append(f"{path.name}:{st.st_size}:{st.st_mtime_ns}")
        return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]

    # -- summary ----------------------------------------------------------------------------------
    def summary(self) -> dict:
        """Name, status, times, command, what the run holds, the stages and the headline numbers."""
        prov = self.provenance()
        mtimes = [m for m in (self.mtime(p) for p in self.watched()) if m is not None]
        emc = self.emc_dir()
        done, problem = 0, None
        if emc is not None:   # iterations in metrics.jsonl / EMC.log, or output files when there are more
            try:
                logged = self.emc_series()["iteration"][-1:]
            except BadFile as exc:   # (a metrics file over the read limit): the run is listed, with the line
                logged, problem = [], str(exc)
            done = max([0] + logged + self.emc_iterations()[-1:])
        metrics, result = self.phase_files()
        command = prov.get("command")
        command = " ".join(command) if isinstance(command, list) and all(isinstance(c, str) for c in command) else None
        following = follow.has_follow(self)
        out = {"run": self.name, "title": self.folder.name, "status": text(prov.get("status")) or "unknown",
               "started": text(prov.get("started")), "finished": text(prov.get("finished")),
               "error": text(prov.get("error")) or problem, "command": command or None, "host": text(prov.get("host")),
               "last_update": max(mtimes) if mtimes else None,
               "has": {"emc": emc is not None, "phase": bool(metrics or result), "phase_result": result is not None,
                       "fsc": self.fsc_file() is not None, "follow": following},
               "emc_iterations_done": done,   # (a following EMC's emc.iterations ends its annealing, not its run)
               "emc_iterations_planned": self.config_int("emc", "iterations") if emc and not following else None}
        out.update(progress.of(self, out))
        truth = self.read_json(self.run.emc_vs_truth)
        if isinstance(truth, dict) and number(truth.get("cc")) is not None:
            out["emc_cc_with_truth"] = number(truth.get("cc"))
        halves = self.read_json(emc / layout.HALVES_JSON) if emc is not None else None
        if isinstance(halves, dict) and number(halves.get("cc")) is not None:   # the gold-standard half sets
            out["emc_halves"] = {key: number(halves.get(key)) for key in
                                 ("cc", "r_max", "fsc_0.143_radius", "fsc_0.5_radius", "resolution_0.143_m",
                                  "resolution_0.5_m")}
        return clean(out)

    def provenance(self) -> dict:
        if self._provenance is self._UNSET:
            record = self.read_json(self.run.provenance)
            self._provenance = record if isinstance(record, dict) else {}
        return self._provenance

    def config(self) -> dict:
        """The run's config.yaml as a dict ({} when missing or unreadable); read once per RunData."""
        if self._config is None:
            import yaml

            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # libyaml's, ~10x faster, where built
            try:
                cfg = yaml.load(read_text(self.root, self.run.config, limit=MAX_CONFIG_BYTES, lookup=self.lookup),
                                Loader=loader)
            except (NotFound, OutsideRoot, BadFile, yaml.YAMLError, RecursionError, ValueError):
                cfg = None
            self._config = cfg if isinstance(cfg, dict) else {}
        return self._config

    def config_int(self, section: str, key: str) -> int | None:
        """A positive whole number from the config (``emc.iterations``, ``phasing.num_starts``), else None."""
        part = self.config().get(section)
        value = integer(part.get(key)) if isinstance(part, dict) else None
        return value if value is not None and value > 0 else None

    def texts(self) -> dict:
        """config.yaml, provenance.json (pretty), and the last LOG_TAIL_LINES of log.txt and EMC.log."""
        emc = self.emc_dir()
        out = {}
        for key, path in (("config", self.run.config), ("provenance", self.run.provenance), ("log", self.run.log),
                          ("emc_log", emc / layout.EMC_LOG if emc else None)):
            try:
                out[key] = tail(self.root, path, LOG_TAIL_LINES) if path is not None else None
            except (NotFound, OutsideRoot, BadFile):
                out[key] = None
        return out

    # -- EMC --------------------------------------------------------------------------------------
    def emc_series(self) -> dict:
        """Per-iteration metrics: iteration, log_likelihood, mutual_info (nats), rms_change, beta_mean,
        num_rot, mean_kept_rotations, time_s (lists of equal length), and ``changes``: the iterations
        where beta or the number of rotations changed, with a label."""
        emc = self.emc_dir()
        if emc is None:
            raise NotFound("this run has no EMC output")
        rows = self.read_jsonl(emc / layout.METRICS) if self.exists(emc / layout.METRICS) else []
        if not rows and self.exists(emc / layout.EMC_LOG):   # Dragonfly's folder: the log's table
            rows = [{"iteration": r["iter"], "time_s": r["time"], "rms_change": r["rms_change"],
                     "mutual_info": r["info_rate"], "log_likelihood": r["log-likelihood"],
                     "num_rot": r["num_rot"], "beta_mean": r["beta"]}
                    for r in _log_table(read_text(self.root, emc / layout.EMC_LOG, lookup=self.lookup))]
        by_iteration = {}
        for r in rows:
            iteration = integer(r.get("iteration"))
            if iteration is not None and iteration >= 0:
                by_iteration[iteration] = {"iteration": iteration, "num_rot": integer(r.get("num_rot")),
                                           **{k: number(r.get(k)) for k in EMC_KEYS}}
        rows = [by_iteration[i] for i in sorted(by_iteration)]
        keys = ("iteration", "log_likelihood", "mutual_info", "rms_change", "beta_mean", "num_rot",
                "mean_kept_rotations", "time_s")
        series = {k: [r.get(k) for r in rows] for k in keys}
        changes = []
        for prev, row in zip(rows, rows[1:]):
            labels = []
            b0, b1 = prev["beta_mean"], row["beta_mean"]
            ratio = b1 / b0 if b0 and b1 is not None else None
            if ratio is not None and math.isfinite(ratio) and abs(ratio - 1) > BETA_STEP:
                labels.append(f"β ×{ratio:.3g}")
            if prev["num_rot"] != row["num_rot"]:
                labels.append(f"rotations {prev['num_rot']} → {row['num_rot']}")
            if labels:
                changes.append({"iteration": row["iteration"], "label": ", ".join(labels)})
        series["changes"] = changes
        series["planned"] = self.config_int("emc", "iterations")
        series["outputs"] = self.emc_iterations()
        return clean(series)

    def _outputs_in(self, folder: Path) -> list[int]:
        try:
            names = self.lookup.names(folder)
        except OSError:                    # as folder.iterdir() did
            names = [p.name for p in folder.iterdir()]
        found = (OUTPUT_RE.match(name) for name in names)
        return sorted(int(m.group(1)) for m in found if m)

    def emc_iterations(self) -> list[int]:
        """Iterations with a complete ``output_NNN.h5`` (atomic writes: temporary ``.part`` names are skipped)."""
        emc = self.emc_dir()
        return [] if emc is None else self._outputs_in(emc)

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
        with open_h5(self.root, path) as f:
            iteration_read = attr_int(f, "iteration", _iteration_of(path))
            prob = dataset(f, ("best_probability",), path).ravel()
            scale = dataset(f, ("scale", "scale_factors"), path, required=False)
            finite = prob[np.isfinite(prob)]
            out = {"iteration": iteration_read, "num_frames": int(prob.size),
                   "probability": _histogram(prob, (0.0, 1.0)),
                   "median_probability": float(np.median(finite)) if finite.size else None}
            scale = scale[np.isfinite(scale)] if scale is not None else None
            if scale is not None and scale.size:
                out["scale"] = _histogram(scale, (0.0, max(float(np.max(scale)), 0.0) or 1.0))
        return clean(out)

    def emc_slices(self, iteration: int | None = None) -> dict:
        """Three central slices of one iteration's intensity, log10, reduced on the server (see volumes.py)."""
        path = self._output(iteration)
        with open_h5(self.root, path) as f:
            name = "intensity" if "intensity" in f else "intens"
            if name not in f:
                raise NotReady(f"{path.name}: no intensity dataset (yet)")
            dq = attr_number(f, "voxel_size_per_m")
            out = intensity_slices(volume(f, name, path), dq if dq and dq > 0 else None)
            out["iteration"] = attr_int(f, "iteration", _iteration_of(path))
        out["iterations"] = self.emc_iterations()
        return clean(out)

    # -- a live source -------------------------------------------------------------------------------
    def follow(self) -> dict:
        """The live source of a following run: counts, hit rate, lit-pixel histogram, previews, latency."""
        return follow.of(self)

    def preview_slices(self, iteration: int | None = None) -> dict:
        """Central slices of a preview density (the newest when ``iteration`` is None) and its record."""
        return follow.preview_slices(self, iteration)

    # -- phasing and validation -------------------------------------------------------------------
    def phase_series(self) -> dict:
        """Per start: seed, errors per iteration, final error, kept or not; the PRTF and its resolution."""
        metrics, result = self.phase_files()
        if metrics is None and result is None:
            raise NotFound("this run has no phasing output")
        rows = read_jsonl(self.root, metrics) if metrics else []
        starts = [r for r in rows if r.get("kind") == "start"]
        merge = next((r for r in rows if r.get("kind") == "merge"), None)
        out = {"starts": [{"seed": integer(r.get("seed")), "errors": numbers(r.get("errors")),
                           "final_error": number(r.get("final_error")), "algorithms": _algorithms(r.get("algorithms"))}
                          for r in starts],
               "planned": self.config_int("phasing", "num_starts"), "kept_seeds": None, "prtf": None}
        if merge:
            kept = merge.get("kept_seeds")
            out["kept_seeds"] = [integer(s) for s in kept] if isinstance(kept, list) else []
            out["prtf"] = {"prtf": numbers(merge.get("prtf")), "resolution_m": number(merge.get("resolution_m")),
                           "resolution_shell": number(merge.get("resolution_shell")), "frequency_per_m": None,
                           "max_measured_shell": number(merge.get("max_measured_shell"))}
        if result is not None and out["prtf"] is not None:
            with open_h5(self.root, result) as f:
                if "prtf_frequency_per_m" in f and attr_number(f, "voxel_size_m"):
                    out["prtf"]["frequency_per_m"] = dataset(f, ("prtf_frequency_per_m",), result).ravel()
        return clean(out)

    def phase_slices(self) -> dict:
        """Three central slices of the averaged density with the support, cropped to the particle."""
        _, result = self.phase_files()
        if result is None:
            raise NotFound("no phasing.h5 yet (written when every start has finished)")
        return self.density_slices(result)

    def density_slices(self, result: Path) -> dict:
        """Three central slices of the density in a ``phasing.h5`` with its support, cropped to the particle."""
        with open_h5(self.root, result) as f:
            if "density" not in f:
                raise NotReady(f"{result.name}: no density dataset")
            density = volume(f, "density", result)
            support = volume(f, "support", result) if "support" in f else None
            if support is not None and support.shape != density.shape:
                raise BadFile(f"{result.name}: support {support.shape} and density {density.shape} differ")
            voxel = attr_number(f, "voxel_size_m")
            return clean(density_slices(density, support, voxel if voxel and voxel > 0 else None))

    def fsc(self) -> dict:
        """The FSC with the truth: frequency (1/m, or 1/voxel), FSC, the 0.5 / 0.143 resolutions, cc."""
        path = self.fsc_file()
        if path is None:
            raise NotFound("no FSC against a truth in this run")
        data = read_json(self.root, path)
        if not isinstance(data, dict):
            raise BadFile(f"{path.name}: not a JSON object")
        voxel = number(data.get("voxel_size_m"))
        voxel = voxel if voxel and voxel > 0 else None
        frequency = numbers(data.get("frequency")) if "frequency" in data else None
        if frequency is None:     # a file from before "frequency" was written: the box edge from a crossing
            radius = np.array([np.nan if r is None else r for r in numbers(data.get("radius"))], float)
            box = next((number(data.get(f"resolution_{t}_m")) * number(data.get(f"fsc_{t}_radius"))
                        for t in ("0.5", "0.143")
                        if voxel and number(data.get(f"resolution_{t}_m")) and number(data.get(f"fsc_{t}_radius"))), None)
            with np.errstate(all="ignore"):
                frequency = radius / (box or (2 * (radius.size - 1) + 1) * (voxel or 1.0))
        return clean({"frequency": frequency, "frequency_unit": "1/m" if voxel else "1/voxel",
                      "fsc": numbers(data.get("fsc")), "resolution_0.5_m": number(data.get("resolution_0.5_m")),
                      "resolution_0.143_m": number(data.get("resolution_0.143_m")), "cc": number(data.get("cc")),
                      "data_edge_resolution_m": number(data.get("data_edge_resolution_m")),
                      "inverted": data.get("inverted") if isinstance(data.get("inverted"), bool) else None})


def _is_emc_metrics(root: Path, path: Path, lookup: Lookup | None = None) -> bool:
    """True for EMC's metrics.jsonl (rows with an iteration), False for phasing's (rows with stage "phase")."""
    row = first_line_json(root, path, lookup)
    return row is not None and "iteration" in row and row.get("stage") != "phase"


def _log_table(log_text: str) -> list[dict[str, float]]:
    """The table of an ``EMC.log`` (ours or Dragonfly's), as :func:`spibatch.emc.records.read_log_table`
    reads it, from text already read safely; a row that is not all numbers is skipped."""
    rows, in_table = [], False
    for line in log_text.splitlines():
        cells = line.split()
        if cells[:2] in (["iter", "time"], ["Iter", "time"]):
            in_table = True
        elif in_table and len(cells) == len(LOG_COLUMNS):
            try:
                rows.append({name: float(cell) for name, cell in zip(LOG_COLUMNS, cells)})
            except ValueError:
                continue
    return rows


def _algorithms(value) -> list | None:
    """A start's recipe as [[name, iterations], ...], or None when the record holds something else."""
    if not isinstance(value, list):
        return None
    pairs = [[a[0], integer(a[1])] for a in value if isinstance(a, list) and len(a) == 2 and isinstance(a[0], str)]
    return pairs if len(pairs) == len(value) and all(n is not None for _, n in pairs) else None


def _iteration_of(path: Path) -> int:
    m = OUTPUT_RE.match(path.name)
    return int(m.group(1)) if m else -1


def _histogram(values: np.ndarray, span: tuple[float, float]) -> dict:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=span)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


__all__ = ["RunData", "NotReady", "NotFound", "OutsideRoot", "BadFile", "clean", "number", "integer"]
