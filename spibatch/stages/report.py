"""The report stage: ``report.html`` (the monitor's page as one self-contained file) and its PNGs."""

from __future__ import annotations

from pathlib import Path

from spibatch.errors import InputError
from spibatch.layout import RunLayout


def check(pipeline=None, config: Path | None = None, run: RunLayout | None = None) -> None:
    if run is None or not run.path.is_dir():
        raise InputError("not a folder", path=None if run is None else run.path, field="RUN_DIR",
                         fix="give a run folder (it holds provenance.json)")
    from spibatch.monitor.paths import RUN_MARKERS, is_run

    if not is_run(run.path):    # nothing to report: no report.html written into an arbitrary folder
        raise InputError(f"not a run folder (none of {', '.join(RUN_MARKERS)} here, nor emc/metrics.jsonl)",
                         path=run.path, field="RUN_DIR", fix="give the folder a spibatch command printed as its run "
                         "directory (or a Dragonfly run's)")


def run(run: RunLayout, pipeline=None, device=None, workers=None) -> dict[str, Path]:
    from spibatch.monitor.report import write_report

    return {"report": write_report(run.path)}
