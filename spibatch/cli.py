"""The ``spibatch`` command: parses arguments and runs stages (:mod:`spibatch.stages`).

Every command that produces results is a run of one or more stages in a new run folder
(``runs/<name>-<UTC time>/`` or ``--out``).  Bad input stops with one line on stderr and exit 2.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from spibatch import __version__
from spibatch.errors import InputError

log = logging.getLogger("spibatch")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="X-ray single-particle imaging: simulate, reconstruct, phase and validate, "
                       "locally, on Slurm or on Kubernetes.")

OUT_HELP = "write results here instead of runs/<name>-<UTC time>/ (must not hold an earlier run)"
OUT = typer.Option(None, "--out", help=OUT_HELP)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"spibatch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit"),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="only warnings and errors on the terminal")) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("spibatch")
    logger.handlers[:] = [h for h in logger.handlers if not isinstance(h, logging.StreamHandler)
                          or isinstance(h, logging.FileHandler)]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def _echo(lines: list[str]) -> None:
    typer.echo("\n" + "\n".join(lines))


def _finished(run_path: Path, outputs: dict) -> None:
    from spibatch.stages.summary import next_lines, outputs_lines, result_lines

    _echo(outputs_lines(run_path, outputs) + [""] + result_lines(run_path) + next_lines(run_path))


@app.command()
def init(directory: Path = typer.Argument(..., help="folder to write pipeline.yaml (and the example PDB) into"),
         site: Optional[str] = typer.Option(None, "--site", help="also write a commented site.yaml to start from: "
                                            "local, slurm or kubernetes")) -> None:
    """Write a commented pipeline.yaml (and the example structure 1EI7.pdb) into DIRECTORY; --site adds a site file."""
    from spibatch.starter import init as write_starter

    written = write_starter(directory, site)
    typer.echo("\n".join(f"wrote {path}" for path in written))
    site_arg = f" --site {directory / 'site.yaml'}" if site else ""
    typer.echo(f"next: spibatch run {directory / 'pipeline.yaml'}{site_arg}" + (" --dry-run" if site else ""))


@app.command()
def schema() -> None:
    """Print the JSON schema of the pipeline file."""
    from spibatch.config import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


def _one_stage_run(names: list[str], config: Optional[Path], pipeline, **kwargs) -> None:
    from spibatch.stages.standalone import run_stages

    run_path, outputs = run_stages(names, pipeline, config, command=sys.argv, **kwargs)
    _finished(run_path, outputs)


def _load(config: Path):
    from spibatch.config import load_pipeline

    return load_pipeline(config)


@app.command()
def simulate(config: Path = typer.Argument(..., help="pipeline YAML file with a `simulation` section"),
             out: Optional[Path] = OUT) -> None:
    """Simulate sparse diffraction patterns of a PDB structure (Dragonfly photons + detector files)."""
    pipeline = _load(config)
    inputs = (config, pipeline.simulation.pdb) if pipeline.simulation is not None else (config,)
    _one_stage_run(["simulate"], config, pipeline, out=out, inputs=inputs)


@app.command()
def emc(config: Path = typer.Argument(..., help="pipeline YAML file whose `emc` section names photons and detector"),
        out: Optional[Path] = OUT,
        resume: Optional[Path] = typer.Option(None, "--resume", help="continue the EMC run in this run "
                                              "directory from its last checkpoint")) -> None:
    """Reconstruct the 3-D intensity from sparse photons by EMC; under `mpirun -n N` across N ranks."""
    pipeline = _load(config)
    inputs = [config] + [p for p in (pipeline.emc.photons, pipeline.emc.detector, pipeline.emc.start_model) if p]
    _one_stage_run(["emc"], config, pipeline, out=out, resume=resume, inputs=tuple(inputs))


@app.command()
def phase(config: Path = typer.Argument(..., help="pipeline YAML file whose `phasing` section names the intensity"),
          intensity: Optional[Path] = typer.Option(None, "--intensity", help="the 3-D intensity to phase "
                                                   "(overrides phasing.intensity)"),
          truth: Optional[Path] = typer.Option(None, "--truth", help="a true density (truth.h5, MRC, Dragonfly "
                                               "densityMap.bin) to report the FSC against"),
          truth_voxel_size_m: Optional[float] = typer.Option(None, help="the truth's voxel in metres, when its "
                                                             "file does not say (Dragonfly's .bin)"),
          out: Optional[Path] = OUT) -> None:
    """Phase a merged 3-D intensity: many random starts, aligned and averaged, with the PRTF."""
    from spibatch.options import positive_length

    pipeline = _load(config)
    if intensity is not None:
        pipeline.phasing.intensity = intensity.resolve()
    if truth_voxel_size_m is not None and truth is None:
        raise InputError("given without --truth", path=config, field="--truth-voxel-size-m",
                         fix="give --truth TRUTH with it, or leave it out")
    if truth is not None:
        pipeline.validation.reference = truth.resolve()
        pipeline.validation.reference_voxel_size_m = positive_length(truth_voxel_size_m, truth, "--truth-voxel-size-m")
    names = ["phase"] + (["validate"] if truth is not None else [])
    sources = [p for p in (pipeline.phasing.intensity, truth) if p is not None and p.is_file()]
    _one_stage_run(names, config, pipeline, out=out, inputs=(config, *sources))


@app.command()
def validate(first: Path = typer.Argument(..., help="a 3-D volume: our HDF5 result, Dragonfly output_NNN.h5 / .bin, or MRC"),
             second: Path = typer.Argument(..., help="the volume to compare with (e.g. the truth)"),
             dataset: Optional[str] = typer.Option(None, help="dataset to compare in HDF5 files "
                                                   "(default: intensity, intens or density, the first present)"),
             voxel_size_m: Optional[float] = typer.Option(None, help="real-space voxel size in metres, "
                                                          "when the files do not say"),
             kind: str = typer.Option("auto", help="intensity, density, or auto (from the files)"),
             out: Optional[Path] = OUT,
             runs_dir: Path = typer.Option(Path("runs"), help="parent of new run directories")) -> None:
    """Fourier shell correlation of two volumes, aligned first (intensities by rotation, densities by
    translation after resampling onto one voxel): a table, the 0.5 / 0.143 resolutions and a PNG plot."""
    from spibatch.config import Pipeline
    from spibatch.options import from_options
    from spibatch.stages.standalone import run_stages

    pipeline = from_options(lambda: Pipeline(name="validate", output={"runs_dir": runs_dir.resolve()}, validation={
        "volume": first.resolve(), "reference": second.resolve(), "dataset": dataset, "voxel_size_m": voxel_size_m,
        "kind": kind}), first, command="validate")
    run_path, outputs = run_stages(["validate"], pipeline, None, out=out, command=sys.argv, inputs=(first, second))
    typer.echo(Path(outputs["fsc_text"]).read_text(encoding="utf-8").rstrip())
    _echo([f"wrote {outputs['fsc_plot']}", f"wrote {outputs['fsc_table']}"])


@app.command()
def ingest(cxi: Path = typer.Argument(..., help="CXI file with a pattern stack"),
           adu_per_photon: float = typer.Option(1.0, help="detector units per photon"),
           clip_negative: bool = typer.Option(False, help="set negative values to 0 instead of stopping"),
           data_path: str = typer.Option("/entry_1/data_1/data", help="dataset holding the stack"),
           mask_path: Optional[str] = typer.Option(None, help="dataset of the bad-pixel mask (nonzero = bad); "
                                                   "default: the CXI file's own when present"),
           beamstop_radius_pixels: float = typer.Option(0.0, help="with the CXI geometry: exclude pixels this close "
                                                        "to the centre"),
           chunk_frames: int = typer.Option(256, help="frames read per block"),
           out: Optional[Path] = OUT,
           runs_dir: Path = typer.Option(Path("runs"), help="parent of new run directories")) -> None:
    """Convert a CXI pattern stack (3-D or modular 4-D) to a sparse Dragonfly photons file, in chunks,
    and write detector.h5 when the file holds a flat square detector's geometry."""
    from spibatch.config import Pipeline
    from spibatch.options import from_options

    pipeline = from_options(lambda: Pipeline(name="ingest", output={"runs_dir": runs_dir.resolve()}, ingest={
        "cxi": cxi.resolve(), "adu_per_photon": adu_per_photon, "clip_negative": clip_negative,
        "data_path": data_path, "mask_path": mask_path, "beamstop_radius_pixels": beamstop_radius_pixels,
        "chunk_frames": chunk_frames}), cxi, command="ingest")
    _one_stage_run(["ingest"], None, pipeline, out=out, inputs=(cxi,))


@app.command()
def demo(out: Optional[Path] = OUT,
         iterations: Optional[int] = typer.Option(None, min=1, help="EMC iterations (default: demo.yaml's)"),
         starts: Optional[int] = typer.Option(None, min=1, help="phasing starts (default: demo.yaml's)"),
         site: Optional[Path] = typer.Option(None, "--site", help="site YAML file (default: this machine)")) -> None:
    """Run the built-in demo as a pipeline on the local site: simulate 1000 patterns of the protein 1EI7 on a
    64 x 64 detector, reconstruct the 3-D intensity by EMC, phase it, and compare both with the truth."""
    from spibatch.pipeline import start

    def adjust(pipeline) -> None:
        if iterations is not None:
            pipeline.emc.iterations = iterations
        if starts is not None:
            pipeline.phasing.keep_best = min(pipeline.phasing.keep_best, starts)   # first: keep <= starts
            pipeline.phasing.num_starts = starts

    from spibatch.starter import data_file

    run_path, outputs = start(data_file("demo.yaml"), site, out, runs_dir=Path("runs"), adjust=adjust)
    _finished(run_path, outputs)


@app.command()
def run(pipeline: Path = typer.Argument(..., help="pipeline YAML file"),
        site: Optional[Path] = typer.Option(None, "--site", help="site YAML file (site_configs/); default: this "
                                            "machine (Parsl workers on 127.0.0.1)"),
        dry_run: bool = typer.Option(False, "--dry-run", help="validate, then print exactly what would be "
                                     "submitted; create and submit nothing"),
        out: Optional[Path] = OUT,
        until: Optional[str] = typer.Option(None, "--until", help="stop after this stage (simulate|ingest, emc, "
                                            "phase, validate); `spibatch resume` runs the rest")) -> None:
    """Run the whole pipeline (simulate or ingest, EMC, phasing, validation, report) on a site through Parsl."""
    from spibatch.pipeline import start

    run_path, result = start(pipeline, site, out, dry_run=dry_run, until=until)
    if dry_run:
        typer.echo(result.text(), nl=False)
        typer.echo(f"dry run: nothing submitted; the run would go to {run_path}")
        return
    _finished(run_path, result)


@app.command()
def resume(run_dir: Path = typer.Argument(..., help="run directory of an earlier `spibatch run`")) -> None:
    """Continue a `spibatch run` on its own site: finished stages are not run again."""
    from spibatch.pipeline import resume as resume_run

    run_path, outputs = resume_run(run_dir)
    _finished(run_path, outputs)


@app.command()
def monitor(path: Optional[Path] = typer.Argument(None, envvar="SPIBATCH_MONITOR_ROOT",
                                                  help="a run folder, or a folder of runs (e.g. runs/)"),
            host: str = typer.Option("127.0.0.1", envvar="SPIBATCH_MONITOR_HOST",
                                     help="address to listen on (0.0.0.0: every interface; only on a trusted network)"),
            port: int = typer.Option(8765, envvar="SPIBATCH_MONITOR_PORT", min=0, max=65535,
                                     help="TCP port (0: any free one)"),
            poll_ms: int = typer.Option(2000, min=200, help="how often the page asks for news, ms"),
            allowed_host: Optional[list[str]] = typer.Option(None, "--allowed-host", help="a Host name to answer to "
                "besides --host's (repeatable; '*' any; env SPIBATCH_MONITOR_ALLOWED_HOSTS=a,b); needed with 0.0.0.0")) -> None:
    """Serve a live, read-only web page of the runs under PATH (EMC, phasing, FSC, config, log)."""
    from spibatch.monitor.launch import run_monitor

    run_monitor(path, host, port, poll_ms, allowed_host)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a run folder")) -> None:
    """(Re)write RUN_DIR/report.html and its PNGs (every run writes them at its end)."""
    from spibatch.layout import RunLayout
    from spibatch.stages import report as report_stage

    run = RunLayout(run_dir)
    report_stage.check(run=run)
    typer.echo(f"wrote {report_stage.run(run)['report']}")


def main() -> None:
    """Console entry point: run the app; bad input (or a full disk) -> one line on stderr, exit 2; SIGINT and
    SIGTERM -> status interrupted, the line to resume, exit 130 / 143 (:mod:`spibatch.interrupts`)."""
    from spibatch import interrupts
    from spibatch.io.atomic import DiskFull
    from spibatch.options import run_app

    interrupts.install()
    try:
        run_app(app)   # usage errors as one line too
    except InputError as exc:
        if not interrupts.mpi_rank():   # under mpirun rank 0 speaks for all
            typer.echo(f"spibatch: error: {exc}", err=True)
        if isinstance(exc, DiskFull):   # rank 0 alone writes: the other ranks would wait for it forever
            interrupts.abort_mpi(exc.exit_code)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, SystemExit) as exc:   # typer turns a KeyboardInterrupt into SystemExit(130)
        interrupted = interrupts.interrupt_in(exc)
        if interrupted is None:
            raise
        interrupts.exit_interrupted(interrupted)
