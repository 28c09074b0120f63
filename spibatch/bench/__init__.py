"""``spibatch bench``: the cross-platform scaling benchmark and the performance model.

:func:`bench_command` is the command: it validates a bench file (:mod:`spibatch.bench.settings`) and its sites,
builds the matrix (:mod:`spibatch.bench.matrix`: every refusal is one line before anything is submitted), and
either prints what every point would submit (``dry_run``) or measures the points that are not measured yet
(:mod:`spibatch.bench.runner`: each repeat a real ``spibatch run ... --until emc`` on the site), then the kernel
rates of this machine (:mod:`spibatch.bench.kernels`), the model calibrated and checked on the matrix
(:mod:`spibatch.bench.model`) and the report (:mod:`spibatch.bench.report`: ``bench.md``, PNGs, ``report.html``).
``bench.json`` follows the JSON Schema :func:`bench_schema` returns (``spibatch/bench/bench.schema.json``).

Also ``python -m spibatch.bench BENCH.yaml [--site A.yaml ...] [--out DIR] [--dry-run] [--schema]``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("spibatch")

SCHEMA_FILE = "bench.schema.json"


def bench_schema() -> dict:
    """The JSON Schema of ``bench.json`` (shipped as ``spibatch/bench/bench.schema.json``)."""
    from importlib import resources

    return json.loads(resources.files("spibatch.bench").joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


def print_schema() -> None:
    """Print :func:`bench_schema` as JSON (what ``spibatch bench --schema`` shows)."""
    print(json.dumps(bench_schema(), indent=2))


def default_out(bench) -> Path:
    """``bench-<name>/`` beside the bench file: the same command resumes into the same folder."""
    return Path(bench.source).parent / f"bench-{bench.name}"


def check_out(out: Path, name: str | None = None) -> None:
    """The bench folder may be new, or an earlier bench's of the same ``name`` (resumed): not a file, not in or
    a spibatch run's folder, not another bench's (its measured points would be dropped from bench.json)."""
    from spibatch import layout
    from spibatch.errors import InputError
    from spibatch.rundir import check_shell_safe
    from spibatch.run_checks import check_run_files, enclosing_run

    check_shell_safe(out, "--out")     # every point is a `spibatch run` in it
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a directory", path=out, field="--out", fix="choose a folder for the bench")
    if (out / layout.PROVENANCE).exists():
        raise InputError("this folder holds a spibatch run, not a bench", path=out, field="--out",
                         fix="choose a new folder, or an earlier bench's to resume it")
    run = enclosing_run(out, itself=False)
    if run is not None:    # its points' runs would be refused there one by one, after the folder was made
        raise InputError(f"lies inside the earlier run folder {run}", path=out, field="--out",
                         fix="choose a folder outside any run folder")
    if out.is_dir() and any(p.name != layout.LOCK for p in out.iterdir()) and not (out / "bench.json").is_file():
        raise InputError("is not empty and holds no bench.json (not an earlier bench's folder)", path=out,
                         field="--out", fix="choose a new or empty folder, or an earlier bench's to resume it")
    if name is not None and (out / "bench.json").is_file():
        try:
            earlier = json.loads((out / "bench.json").read_text(encoding="utf-8")).get("name")
        except (OSError, ValueError, RecursionError, AttributeError):
            earlier = None    # read and judged by the runner
        if earlier is not None and earlier != name:
            raise InputError(f"holds the bench '{earlier}', not '{name}' (its measured points would be dropped)",
                             path=out, field="--out", fix="choose another folder for this bench, or resume that "
                             "one with its own bench file")
    for folder in (out, out / "points"):   # a resumed bench removes half-done points: never through a link
        if folder.is_dir():
            check_run_files(folder, "--out", deep=False)   # its top: no link, no pipe


def bench_command(bench_yaml: Path, sites: list[Path], *, out: Path | None, dry_run: bool,
                  rates: bool | Path = True) -> tuple[Path, str]:
    """``spibatch bench BENCH.yaml [--site A.yaml ...] [--out DIR] [--dry-run]``.

    sites: site files replacing the bench file's ``matrix.sites`` (empty: the file's, else this machine);
    out: the bench folder (default ``bench-<name>/`` beside the bench file; an earlier, interrupted run there
    is resumed); dry_run: print what every point would submit, create nothing; rates: measure this machine's
    kernel rates for the model (False: not; a path: take them from that earlier bench.json of this machine).  Returns (the bench folder, the text to print).
    Raises :class:`~spibatch.errors.InputError` (one line) on bad input, before anything is submitted.
    """
    from spibatch.bench import matrix, runner
    from spibatch.bench.settings import load_bench

    bench = load_bench(bench_yaml)
    if isinstance(rates, (str, Path)):     # read and checked before hours of matrix, not after
        rates = taken_rates(Path(rates))
    infos = matrix.site_infos([Path(s).resolve() for s in sites] or bench.matrix.sites)
    points = matrix.build(bench, infos)
    out = Path(out).resolve() if out is not None else default_out(bench)
    check_out(out, bench.name)
    runner.preflight(bench, infos, points, out)
    if dry_run:      # an earlier bench.json read and checked as the run would (it said "nothing submitted", rc 0)
        kept = runner.kept_points(runner.load_document(out) if out.is_dir() else None, points)
        return out, runner.dry_run(bench, infos, points, out, kept=set(kept))
    import sys

    from spibatch.lock import release_lock, take_lock

    out.mkdir(parents=True, exist_ok=True)
    take_lock(out, sys.argv, "--out", take_over_stale=True)   # one bench at a time: a second removed the first's points
    try:
        document = runner.run_matrix(bench, infos, points, out)
        if document.get("interrupted") and rates is True:
            rates = False   # no minute of microbenchmarks after an interruption: the next run measures them
        text = finish(out, document, rates=rates)
    finally:
        release_lock(out)
    if document.get("interrupted"):
        text += "interrupted: run the same command again to measure the remaining points\n"
    return out, text


def exit_status(out: Path) -> int:
    """What a bench that measured into ``out`` exits with: 130 when its matrix was interrupted, 1 when a point's
    last measurement failed, else 0 (a script or CI must not take a partial or failed matrix for a result)."""
    from spibatch.bench.runner import load_document

    document = load_document(Path(out)) or {}
    if document.get("interrupted"):
        return 130
    return 1 if any(p.get("status") == "failed" for p in document.get("points", [])) else 0


def taken_rates(path: Path) -> dict:
    """The kernel rates of an earlier bench.json or of ``python -m spibatch.bench.kernels``; InputError when the
    file is not one, or its bench measured none."""
    from spibatch.bench import runner
    from spibatch.errors import InputError

    document = runner.read_document(path, "--rates", rates_only=True)
    rates = document["rates"]
    if not rates:
        raise InputError("holds no kernel rates (its bench measured none)", path=path, field="--rates",
                         fix="name a bench.json whose bench measured them, or leave --rates out to measure them")
    from spibatch.bench.machine import cpu_model

    machine = document.get("machine")
    theirs = machine.get("cpu_model") if isinstance(machine, dict) else None
    if theirs and theirs != cpu_model():      # taken without a word before: the model then fits another CPU's rates
        import logging

        logging.getLogger("spibatch").warning("bench: the rates of %s were measured on '%s', this machine is '%s': "
                                              "the model's predictions are that machine's", path, theirs, cpu_model())
    return rates


def finish(out: Path, document: dict, *, rates: bool | Path | dict = True) -> str:
    """Kernel rates (once per bench folder; ``rates``: True measure them, False not, a dict or a path: these), the
    model's calibration and check, the report; the summary text."""
    from spibatch.bench import model, report, runner

    runner.fill_sizes(out, document)
    if isinstance(rates, (str, Path)):
        rates = taken_rates(Path(rates))
    if isinstance(rates, dict) and not document.get("rates"):
        document["rates"] = rates
    elif rates and not document.get("rates"):
        from spibatch.bench.kernels import measure_rates

        log.info("bench: measuring this machine's kernel rates for the model")
        edges = sorted({p["sizes"]["edge"] for p in document["points"] if p.get("kind") == "phasing" and p.get("sizes")})
        document["rates"] = measure_rates(phasing_edges=edges)
        runner.save_document(out, document)
    if document.get("rates"):
        document["model"] = model.evaluate(document)
    runner.save_document(out, document)
    written = report.write_all(out, document)
    measured = sum(p["status"] == "measured" for p in document["points"])
    failed = [p["key"] for p in document["points"] if p["status"] == "failed"]
    lines = [f"bench '{document['name']}': {measured} point(s) measured"
             + (f", {len(failed)} failed: {', '.join(failed)} (run the command again to retry them)" if failed else ""),
             f"results: {out / runner.BENCH_JSON}"] + [f"wrote {p}" for p in written]
    if document.get("model"):
        lines.append(model.summary_line(document["model"]))
    return "\n".join(lines) + "\n"


__all__ = ["bench_command", "bench_schema", "print_schema", "finish", "default_out", "exit_status"]
