"""Running the matrix: each point's repeats as real ``spibatch run`` pipelines, resumable.

The bench folder::

    bench.json            the document (schema: spibatch/bench/bench.schema.json), rewritten after every point
    data/                 data subsets and simulations, made once per size
    points/<point>/       pipeline.yaml, site.yaml, rep-1/ rep-2/ ... (the runs' own folders)
    bench.md, *.png, report.html   the table, plots and report (spibatch.bench.report)

A point counts as measured once all its repeats finished; then it is written into ``bench.json``.  Run again
(the same command, an interrupted one included), the measured points whose fingerprint still matches are kept
and a point that was half done has its folder removed and is measured again from its first repeat, so a point's
repeats always run back to back.  A repeat that fails marks its point ``failed`` (with the run's last words),
and the matrix goes on; a failed point is measured again on the next run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spibatch.bench import collect, machine, workloads
from spibatch.bench.matrix import Point, SiteInfo, point_key
from spibatch.bench.settings import Bench

log = logging.getLogger("spibatch")

BENCH_JSON = "bench.json"
POINTS_DIR = "points"
SCHEMA_ID = "spibatch-bench/1"


def stage_of(point: Point) -> str:
    """The last stage a point's pipeline runs: emc, or phase for phasing."""
    return "phase" if point.kind == "phasing" else "emc"


def run_command(pipeline: Path, site: Path, run_dir: Path, stage: str) -> list[str]:
    """The command one repeat runs: the product's own ``spibatch run ... --until STAGE``."""
    return [sys.executable, "-m", "spibatch", "run", str(pipeline), "--site", str(site), "--out", str(run_dir),
            "--until", stage]


def dry_run(bench: Bench, infos: list[SiteInfo], points: list[Point], out: Path, kept: set[str] = frozenset()) -> str:
    """What every point would submit (each site's ``Provider.dry_run``), its pipeline and site files; nothing is
    created under ``out`` (the files are rendered in a temporary folder that is removed).  ``kept``: the points an
    earlier run measured with these settings, which a resume keeps (said, not rendered)."""
    from spibatch.backends import load_site, provider_for

    by_name = {i.name: i for i in infos}
    parts = [f"bench '{bench.name}': {len(points)} point(s) x {bench.matrix.repeats} repeat(s) -> {out}\n"]
    with tempfile.TemporaryDirectory(prefix="spibatch-bench-dry-") as scratch:
        for n, point in enumerate(points, 1):
            if point.key in kept:
                parts.append(f"=== point {n}/{len(points)}: {point.key}: measured already, kept ===\n")
                continue
            info, work = by_name[point.site], bench.workloads[point.workload]
            photons, detector = workloads.data_for(point, work, out, create=False)
            folder = Path(scratch) / point.folder
            pipeline, site_path = workloads.write_point_files(point, work, info, folder, photons, detector)
            run_dir = out / POINTS_DIR / point.folder / "rep-1"
            rendered = provider_for(load_site(site_path)).dry_run(run_dir, run_command(
                out / POINTS_DIR / point.folder / "pipeline.yaml", out / POINTS_DIR / point.folder / "site.yaml",
                run_dir, stage_of(point)))
            frames = f", {point.frames} frames in shards of {point.frames_per_shard}" if point.frames else ""
            parts.append(f"=== point {n}/{len(points)}: {point.key}{frames}, {point.iterations} iteration(s), "
                         f"{point.repeats} repeat(s) ===\n==> pipeline.yaml <==\n{pipeline.read_text()}\n"
                         f"==> site.yaml <==\n{site_path.read_text()}\n{rendered.text()}")
    parts.append(f"dry run: nothing created or submitted; results would go to {out}\n")
    return "".join(parts)


def preflight(bench: Bench, infos: list[SiteInfo], points: list[Point], out: Path) -> None:
    """Each distinct pipeline of the matrix loaded and its measured stage's inputs checked, as `spibatch run`
    would (EMC: photons and detector headers; phasing: the intensity read, cropped and phaseable); InputError (one
    line, naming the workload) before anything is created or submitted.  Data not made yet (a subset, a
    simulation) is checked on the data set it comes from."""
    from spibatch import stages
    from spibatch.config import load_pipeline
    from spibatch.errors import InputError
    from spibatch.stages.preflight import check_run

    if bench.matrix.device == "gpu" and any(i.provider == "local" for i in infos):   # the GPU is this machine's
        from spibatch.kernels.device import resolve

        try:
            resolve("gpu")
        except InputError as exc:
            raise InputError(f"matrix.device gpu on a local site: {exc.problem}", path=bench.source,
                             field="matrix.device", fix=exc.fix) from None
    if bench.matrix.device == "gpu":
        from spibatch.backends import provider_for

        for info in infos:
            if info.provider != "local":
                provider_for(info.site).check_gpus("the bench's matrix.device is gpu")
    by_name, seen = {i.name: i for i in infos}, set()
    with tempfile.TemporaryDirectory(prefix="spibatch-bench-check-") as scratch:
        for point in points:
            work = bench.workloads[point.workload]
            simulated = work.simulate is not None
            if simulated and point.kind != "emc":
                continue
            what = (point.workload, point.kind, point.frames if simulated else None, point.site)
            if what in seen:
                continue
            seen.add(what)
            folder = Path(scratch) / point.folder
            try:
                if simulated:    # the simulation and the EMC on it, sized before anything is made
                    pipeline = folder / "pipeline.yaml"
                    folder.mkdir(parents=True)
                    pipeline.write_text(workloads.simulated_point_text(point, work), encoding="utf-8")
                    check_run(load_pipeline(pipeline), pipeline, by_name[point.site].site)
                    continue
                photons, detector = workloads.data_files(work)
                pipeline, _ = workloads.write_point_files(point, work, by_name[point.site], folder, photons, detector)
                stages.module(stage_of(point)).check(load_pipeline(pipeline), pipeline)
            except InputError as exc:
                if simulated:   # the scratch pipeline's keys, as the workload names them
                    key = SIMULATED_KEYS.get(exc.field or "", (exc.field or "").removeprefix("emc."))
                    raise InputError(f"workload '{point.workload}' ({point.frames:,} frames on site "
                                     f"'{point.site}'): {exc.problem}", path=bench.source,
                                     field=f"workloads.{point.workload}.{key}", fix=exc.fix) from None
                raise InputError(f"workload '{point.workload}': {exc}", path=bench.source,
                                 field=f"workloads.{point.workload}", fix="correct the workload") from None


SIMULATED_KEYS = {"geometry.detector_pixels": "simulate.pixels", "simulation.num_patterns": "simulate.frames",
                  "simulation.mean_photons_per_frame": "simulate.photons", "simulation.pdb": "simulate.pdb",
                  "geometry.photon_energy_ev": "simulate.photon_energy_ev",
                  "geometry.detector_distance_m": "simulate.detector_distance_m",
                  "geometry.pixel_size_m": "simulate.pixel_size_m"}


def load_document(out: Path) -> dict | None:
    """``out/bench.json`` (None when there is none), checked: see :func:`read_document` and
    :func:`check_points`."""
    path = out / BENCH_JSON
    if not path.is_file():
        return None
    document = read_document(path, "--out")
    check_points(document, path)
    return document


def check_points(document: dict, path: Path) -> None:
    """InputError (one line, the file never overwritten) when a measured point's record does not follow from
    itself: its key from its site, mode, workers, workload and scaling; its time per iteration from its runs (an
    EMC run's iterations -> the run's median -> the median over the repeats).  A median edited by hand was resumed
    over and drawn (a traceback in the plots), a mode edited gave efficiencies above 1."""
    from spibatch.errors import InputError

    for record in document.get("points", []):
        if record.get("status") != "measured":
            continue
        key = point_key(*(record.get(k) for k in ("site", "mode", "workers", "workload", "scaling")))
        try:
            runs = record["repeat_runs"]
            same = key == record["key"] and all(
                statistics.median(i["time_s"] for i in r["iterations"]) == r["median_iteration_s"]
                for r in runs if record["kind"] == "emc" and "iterations" in r) and \
                statistics.median(r["median_iteration_s"] for r in runs) == record["summary"]["iteration_s"]["median"]
        except (KeyError, TypeError, ValueError, statistics.StatisticsError):
            same = False
        if not same:
            raise InputError(f"point {record.get('key')}: its record does not follow from its own runs (its key or "
                             "summary edited by hand?)", path=path, field="--out",
                             fix="restore bench.json, or delete that point from it (it is measured again)")


def read_document(path: Path, field: str, *, rates_only: bool = False) -> dict:
    """A bench.json as written by a bench (``rates_only``: any JSON object whose ``rates`` are a bench's, as
    ``python -m spibatch.bench.kernels`` writes them): InputError (one line, the file never overwritten) when it
    is not JSON, holds NaN or Infinity, or breaks the shipped schema (an edited or damaged file: a resume would
    trip over it).  The ``model`` part is not checked: a resume computes it again (and files of earlier
    versions wrote its verdict as the text 'True' / 'False')."""
    import jsonschema

    from spibatch.bench import bench_schema
    from spibatch.errors import InputError

    what = "a bench's rates file" if rates_only else "a bench's document"
    fix = ("name a bench.json, or a rates file of `python -m spibatch.bench.kernels`" if rates_only else
           "restore it, or move it away to start the bench afresh (or delete the damaged point: it is measured again)")

    def no_constant(name: str):
        raise ValueError(f"{name} is not a number JSON allows")

    if not path.is_file():
        raise InputError("is a directory, not a file" if path.is_dir() else
                         "not a regular file (a pipe, socket or device)" if path.exists() else "file not found",
                         path=path, field=field, fix=fix)
    try:
        document = json.loads(path.read_text(encoding="utf-8"), parse_constant=no_constant)
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise InputError(f"not {what} ({' '.join(str(exc).split())[:120]})", path=path, field=field,
                         fix=fix) from None
    schema = bench_schema()
    if rates_only:
        schema = {"type": "object", "required": ["rates"], "properties": {"rates": schema["properties"]["rates"]}}
    else:
        schema = {**schema, "properties": {**schema["properties"], "model": {}}}
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(document))
    if error is not None:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
        raise InputError(f"not {what}: {where or 'the document'}: {error.message[:160]}", path=path, field=field,
                         fix=fix)
    return document


def save_document(out: Path, document: dict) -> Path:
    from spibatch.io.atomic import write_text

    document["updated"] = machine.now()
    return write_text(out / BENCH_JSON, json.dumps(document, indent=1, default=_plain) + "\n")


def _plain(value):
    """JSON for what json cannot write: a NumPy scalar as its Python value (a bool_ written as 'True' broke the
    schema), anything else as text."""
    return value.item() if hasattr(value, "item") and getattr(value, "shape", None) == () else str(value)


def new_document(bench: Bench, infos: list[SiteInfo]) -> dict:
    return {"schema": SCHEMA_ID, "name": bench.name, "bench_file": str(bench.source), "created": machine.now(),
            "updated": machine.now(), "machine": machine.machine(), "versions": machine.versions(),
            "loaded_machine_note": None,
            "sites": [{"name": i.name, "provider": i.provider, "file": str(i.path) if i.path else None,
                       "capacity": i.capacity, "capacity_from": i.capacity_from, "supports_hpc": i.supports_hpc}
                      for i in infos],
            "matrix": bench.matrix.model_dump(mode="json"),
            "workloads": {k: v.model_dump(mode="json") for k, v in bench.workloads.items()},
            "model_settings": bench.model.model_dump(mode="json"),
            "points": [], "rates": None, "model": None}


def kept_points(previous: dict | None, points: list[Point]) -> dict[str, dict]:
    """The measured points of an earlier (interrupted) run that the matrix still asks for, unchanged."""
    if not previous:
        return {}
    wanted = {p.key: p.fingerprint for p in points}
    return {r["key"]: r for r in previous.get("points", [])
            if r.get("status") == "measured" and wanted.get(r["key"]) == r.get("fingerprint")}


def say_what_changed(previous: dict | None, points: list[Point], kept: dict[str, dict]) -> None:
    """Warn of the earlier measured points this run drops (no longer in the matrix) and measures again (their
    settings changed): both happened without a word."""
    wanted = {p.key for p in points}
    earlier = [r["key"] for r in (previous or {}).get("points", []) if r.get("status") == "measured"]
    dropped = [k for k in earlier if k not in wanted]
    again = [k for k in earlier if k in wanted and k not in kept]
    if dropped:
        log.warning("bench: %d measured point(s) no longer in the matrix, dropped from bench.json (their run "
                    "folders stay under points/): %s", len(dropped), ", ".join(dropped))
    if again:
        log.warning("bench: %d measured point(s) whose settings changed are measured again: %s", len(again),
                    ", ".join(again))


def loaded_note(document: dict) -> str | None:
    """A note when points were measured while the 1-minute load exceeded the usable cores (their times are not a
    quiet machine's, and not comparable with points measured quiet), else None."""
    cores = (document.get("machine") or {}).get("usable_cores") or 1
    busy = {}
    for record in document.get("points", []):
        loads = [x[0] for x in (record.get("load_start"), record.get("load_end")) if x and x[0] is not None]
        if loads and max(loads) > cores:
            busy[record["key"]] = max(loads)
    if not busy:
        return None
    return (f"{len(busy)} of {len(document['points'])} point(s) measured at a 1-minute load above the {cores} usable "
            f"core(s) (up to {max(busy.values()):.1f}: {', '.join(busy)}): their times are a loaded machine's, not "
            "comparable with the others'")


def run_matrix(bench: Bench, infos: list[SiteInfo], points: list[Point], out: Path, *,
               on_point=None) -> dict:
    """Measure every point not yet measured; returns the document (also in ``out/bench.json``).

    on_point(record): called after each point (progress lines; the tests' interruption).
    """
    out.mkdir(parents=True, exist_ok=True)
    previous = load_document(out)
    kept = kept_points(previous, points)
    say_what_changed(previous, points, kept)
    document = new_document(bench, infos)
    if previous:
        document["created"] = previous.get("created", document["created"])
        if previous.get("rates"):
            document["rates"] = previous["rates"]
    document["points"] = [kept[p.key] for p in points if p.key in kept]
    save_document(out, document)
    by_name = {i.name: i for i in infos}
    document["interrupted"] = False
    try:
        for n, point in enumerate(points, 1):
            if point.key in kept:
                log.info("bench: point %d/%d %s: measured already, kept", n, len(points), point.key)
                continue
            log.info("bench: point %d/%d %s (load %s)", n, len(points), point.key, machine.load()[0])
            record = measure_point(point, bench, by_name[point.site], out)
            document["points"] = [r for r in document["points"] if r["key"] != point.key] + [record]
            document["points"].sort(key=lambda r: [p.key for p in points].index(r["key"]))
            save_document(out, document)
            if on_point is not None:
                on_point(record)
    except KeyboardInterrupt:   # Ctrl-C, SIGTERM, a time limit: what was measured stays; the rest on the next run
        document["interrupted"] = True
        log.warning("bench: interrupted; %d point(s) measured; the same command continues with the rest",
                    len(document["points"]))
    document["loaded_machine_note"] = loaded_note(document)
    if document["loaded_machine_note"]:
        log.warning("bench: %s", document["loaded_machine_note"])
    save_document(out, document)
    return document


def point_sizes(record: dict, folder: Path) -> tuple[dict | None, int | None]:
    """(sizes, threads per worker) of a point from its own pipeline and site files (what the model counts)."""
    import yaml

    from spibatch.backends import load_site, provider_for
    from spibatch.bench import sizes

    if not (folder / "site.yaml").is_file():
        return None, None
    threads = provider_for(load_site(folder / "site.yaml")).threads_per_worker()
    if record["kind"] == "phasing":
        runs = record.get("repeat_runs") or []
        if not runs or "edge" not in runs[0]:
            return None, threads
        return {"edge": runs[0]["edge"], "starts": len(runs[0]["starts"]),
                "iterations": runs[0]["starts"][0]["iterations"]}, threads
    emc = yaml.safe_load((folder / "pipeline.yaml").read_text(encoding="utf-8"))["emc"]
    return sizes.of_files(Path(emc["photons"]), Path(emc["detector"]), record["frames"], emc["num_div"],
                          emc["frames_per_shard"], emc.get("model_size")), threads


def fill_sizes(out: Path, document: dict) -> None:
    """Sizes and threads of every measured point that lacks them (points measured by an older spibatch)."""
    for record in document["points"]:
        if record["status"] == "measured" and not record.get("sizes"):
            record["sizes"], record["threads_per_worker"] = point_sizes(record, out / POINTS_DIR /
                                                                        record["key"].replace("/", "_"))


def _check_no_run_left(folder: Path) -> None:
    """InputError when a run of a half-done point still runs (a bench killed with -9 leaves its `spibatch run`
    child going): removing its folder under it raced it, and it loaded the machine during the new measurement."""
    from spibatch import layout
    from spibatch.errors import InputError
    from spibatch.lock import lock_is_stale, read_lock

    for lock in folder.glob(f"rep-*/{layout.LOCK}"):
        owner = read_lock(lock.parent)
        if owner and not lock_is_stale(owner):
            raise InputError(f"a run of this point from an earlier bench still runs (pid {owner.get('pid')} on "
                             f"{owner.get('host')})", path=lock.parent, field="--out",
                             fix=f"wait for it to end (or kill {owner.get('pid')}), then run the bench again")


def measure_point(point: Point, bench: Bench, info: SiteInfo, out: Path) -> dict:
    """All repeats of one point, back to back, in ``out/points/<point>/`` (removed first if half done)."""
    folder = out / POINTS_DIR / point.folder
    if folder.exists():
        _check_no_run_left(folder)
        shutil.rmtree(folder)
    work = bench.workloads[point.workload]
    record = {"key": point.key, **point.describe(), "status": "measured", "error": None, "started": machine.now(),
              "load_start": machine.load(), "git_revision": machine.versions().get("git_revision"),
              "repeat_runs": []}
    try:
        photons, detector = workloads.data_for(point, work, out)
        pipeline, site = workloads.write_point_files(point, work, info, folder, photons, detector)
        for r in range(1, point.repeats + 1):
            record["repeat_runs"].append(run_repeat(point, pipeline, site, folder / f"rep-{r}", r,
                                                    bench.matrix.timeout_s))
    except (RuntimeError, ValueError, OSError, subprocess.SubprocessError) as exc:
        record.update(status="failed", error=" ".join(str(exc).split())[:1000])
        log.warning("bench: %s failed: %s", point.key, record["error"])
    record["finished"], record["load_end"] = machine.now(), machine.load()
    if record["status"] == "measured":
        record["sizes"], record["threads_per_worker"] = point_sizes(record, folder)
    record["summary"] = collect.summarize(point.kind, record["repeat_runs"]) if record["status"] == "measured" \
        else None
    return record


def run_repeat(point: Point, pipeline: Path, site: Path, run_dir: Path, repeat: int, timeout: float) -> dict:
    """One ``spibatch run`` of the point; what its run folder says (:mod:`spibatch.bench.collect`)."""
    entry = {"repeat": repeat, "run_dir": str(run_dir), "started": machine.now(), "load_start": machine.load()}
    began = time.perf_counter()
    try:
        done = subprocess.run(run_command(pipeline, site, run_dir, stage_of(point)), capture_output=True, text=True,
                              timeout=timeout, env=dict(os.environ), cwd=run_dir.parent)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"repeat {repeat} ran past matrix.timeout_s ({timeout:.0f} s); see {run_dir}") from None
    entry["run_wall_s"] = time.perf_counter() - began
    entry["finished"], entry["load_end"] = machine.now(), machine.load()
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise RuntimeError(f"repeat {repeat}: `spibatch run` failed ({said}); see {run_dir}")
    if point.kind == "phasing":
        entry.update(collect.phasing_run(run_dir, point.workers))
    else:
        entry.update(collect.emc_run(run_dir, point.mode, point.workers))
    return entry
