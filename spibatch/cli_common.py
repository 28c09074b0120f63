"""What the ``spibatch`` commands share: the ``--out`` option, loading a pipeline file, a one-stage run, the
lines every run prints at its end (its outputs, its numbers, the report, how to watch it), and the check that a
folder can be written."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

OUT_HELP = "write results here instead of runs/<name>-<UTC time>/ (must not hold an earlier run)"
OUT = typer.Option(None, "--out", help=OUT_HELP)


def echo(lines: list[str]) -> None:
    typer.echo("\n" + "\n".join(lines))


def finished(run_path: Path, outputs: dict) -> None:
    """Print a finished run's closing lines; under ``mpirun`` rank 0 alone (it wrote the run, and the others
    would print it again, read before rank 0's last metrics line)."""
    from spibatch.interrupts import mpi_rank
    from spibatch.stages.summary import next_lines, outputs_lines, result_lines

    if mpi_rank():
        return
    echo(outputs_lines(run_path, outputs) + [""] + result_lines(run_path) + next_lines(run_path))


def one_stage_run(names: list[str], config: Optional[Path], pipeline, **kwargs) -> None:
    from spibatch.stages.standalone import run_stages

    run_path, outputs = run_stages(names, pipeline, config, command=sys.argv, **kwargs)
    finished(run_path, outputs)


def load(config: Path):
    from spibatch.config import load_pipeline

    return load_pipeline(config)


def check_writable_folder(folder: Path, field: str) -> None:
    """A folder that is, or can be made, writable: its nearest existing ancestor takes a temporary folder (removed
    at once; permission bits say nothing to root); InputError (one line) otherwise."""
    import os
    import tempfile

    from spibatch.errors import InputError
    from spibatch.io.files import check_one_line

    check_one_line(folder, field)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = "a file is there, not a folder" if not existing.is_dir() else None
    if problem is None:
        try:
            os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".spibatch-check-"))
        except OSError as exc:
            problem = f"{existing}: {exc.strerror or exc}"
    if problem:
        raise InputError(f"cannot write this folder: {problem}", path=folder, field=field,
                         fix="give a folder you can write")
