"""What the ``spibatch`` commands share: the ``--out`` option, loading a pipeline file, a one-stage run, and
the lines every run prints at its end (its outputs, its numbers, the report, how to watch it)."""

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
