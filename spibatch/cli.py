"""The ``spibatch`` command.

Every command that produces results writes into a new run directory
(``runs/<name>-<UTC time>/`` or ``--out``).  Bad input stops with one line on
stderr and exit status 2.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from importlib import resources
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


def _data_file(name: str) -> Path:
    return Path(str(resources.files("spibatch") / "data" / name))


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


@app.command()
def init(directory: Path = typer.Argument(..., help="folder to write pipeline.yaml (and the example PDB) into")) -> None:
    """Write a commented pipeline.yaml (and the example structure 1EI7.pdb) into DIRECTORY."""
    target = directory / "pipeline.yaml"
    if target.exists():
        raise InputError("already exists", path=target, fix="choose another directory or move the file away")
    directory.mkdir(parents=True, exist_ok=True)
    from spibatch.io.atomic import write_text

    write_text(target, _data_file("pipeline.yaml").read_text(encoding="utf-8"))
    pdb = directory / "1EI7.pdb"
    if not pdb.exists():
        shutil.copyfile(_data_file("1EI7.pdb"), pdb)
    typer.echo(f"wrote {target}\nwrote {pdb}\nnext: spibatch simulate {target}")


@app.command()
def schema() -> None:
    """Print the JSON schema of the pipeline file."""
    from spibatch.config import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


def _simulate(config: Path, out: Optional[Path]) -> Path:
    from spibatch.config import dump_pipeline, load_pipeline
    from spibatch.rundir import create_run_dir, run_in_dir
    from spibatch.sim import simulate as run_simulation
    from spibatch.sim.structure import read_structure

    pipeline = load_pipeline(config)
    if pipeline.simulation is None:
        raise InputError("no `simulation` section", path=config, field="simulation",
                         fix="add one (`spibatch init DIR` writes an example)")
    read_structure(pipeline.simulation.pdb, assembly=False)  # a bad PDB stops here, before any run directory
    run = create_run_dir(pipeline.name, pipeline.output.runs_dir, out,
                         config_text=dump_pipeline(pipeline), command=sys.argv)
    run.add_inputs(config, pipeline.simulation.pdb)

    try:
        outputs = run_in_dir(run, run_simulation, pipeline, run.path)
    finally:
        _write_report(run.path)
    typer.echo(f"\nsimulated {pipeline.simulation.num_patterns} patterns into {run.path}")
    for label, path in outputs.items():
        typer.echo(f"  {label:<12} {path}")
    typer.echo(f"  {'config':<12} {run.file('config.yaml')}\n  {'provenance':<12} {run.file('provenance.json')}"
               f"\n  {'log':<12} {run.file('log.txt')}")
    return run.path


@app.command()
def simulate(config: Path = typer.Argument(..., help="pipeline YAML file with a `simulation` section"),
             out: Optional[Path] = typer.Option(None, "--out", help=OUT_HELP)) -> None:
    """Simulate sparse diffraction patterns of a PDB structure (Dragonfly photons + detector files)."""
    _simulate(config, out)


@app.command()
def demo(out: Optional[Path] = typer.Option(None, "--out", help=OUT_HELP),
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

    run_path, outputs = start(_data_file("demo.yaml"), site, out, runs_dir=Path("runs"), adjust=adjust)
    _print_outputs(run_path, outputs)
    result = json.loads((run_path / "emc" / "truth_comparison.json").read_text(encoding="utf-8"))
    typer.echo(f"\nEMC: {result['iterations']} iterations in {result['emc_seconds']:.0f} s; correlation of the "
               f"reconstructed intensity with the truth at the best orientation"
               f"{' (inversion twin)' if result['inverted'] else ''}, shells {result['r_min']:g}-"
               f"{result['r_max']:g} voxels: cc = {result['cc']:.4f}")
    phased = json.loads((run_path / "phase" / "fsc_vs_truth.json").read_text(encoding="utf-8"))
    half, gold = phased["resolution_0.5_m"], phased["resolution_0.143_m"]
    edge = phased["data_edge_resolution_m"]

    def angstrom(v):
        return f"beyond the data edge ({edge * 1e10:.1f} A)" if v is None else f"{v * 1e10:.1f} A"

    typer.echo(f"phasing: {phased['starts']} starts in {phased['phasing_seconds']:.0f} s; FSC of the density with "
               f"the true density: 0.5 at {angstrom(half)}, 0.143 at {angstrom(gold)}")


def _print_outputs(run_path: Path, outputs: dict) -> None:
    typer.echo(f"\nrun directory {run_path}")
    extra = {"emc_log": run_path / "emc" / "EMC.log", "config": run_path / "config.yaml",
             "site": run_path / "site.yaml", "provenance": run_path / "provenance.json", "log": run_path / "log.txt"}
    for label, path in {**outputs, **extra}.items():
        if Path(path).exists():
            typer.echo(f"  {label:<14} {path}")


@app.command()
def run(pipeline: Path = typer.Argument(..., help="pipeline YAML file"),
        site: Optional[Path] = typer.Option(None, "--site", help="site YAML file (site_configs/); default: this "
                                            "machine (Parsl workers on 127.0.0.1)"),
        dry_run: bool = typer.Option(False, "--dry-run", help="validate, then print exactly what would be "
                                     "submitted; create and submit nothing"),
        out: Optional[Path] = typer.Option(None, "--out", help=OUT_HELP),
        until: Optional[str] = typer.Option(None, "--until", help="stop after this stage (simulate|ingest, emc, "
                                            "phase, validate); `spibatch resume` runs the rest")) -> None:
    """Run the whole pipeline (simulate or ingest, EMC, phasing, validation, report) on a site through Parsl."""
    from spibatch.pipeline import start

    run_path, result = start(pipeline, site, out, dry_run=dry_run, until=until)
    if dry_run:
        typer.echo(result.text(), nl=False)
        typer.echo(f"dry run: nothing submitted; the run would go to {run_path}")
        return
    _print_outputs(run_path, result)


@app.command()
def resume(run_dir: Path = typer.Argument(..., help="run directory of an earlier `spibatch run`")) -> None:
    """Continue a `spibatch run` on its own site: finished stages are not run again."""
    from spibatch.pipeline import resume as resume_run

    run_path, outputs = resume_run(run_dir)
    _print_outputs(run_path, outputs)


def _device_args(pipeline, config: Optional[Path]) -> dict:
    """``device`` / ``gpu_runtime`` for run_emc / run_phasing; InputError (one line) if a GPU is asked but absent.

    Test aid: with SPIBATCH_GPU_TWIN=1 in the environment, ``device: gpu`` runs the GPU code path on the
    numpy twins of the CUDA kernels (no GPU needed; ``kernels/cuda_twin.py``).
    """
    if pipeline.device == "gpu":
        import os

        from spibatch.kernels.xp import TWIN_ENV, require_gpu

        if os.environ.get(TWIN_ENV) == "1":
            from spibatch.kernels.cuda_twin import TwinRuntime

            return {"device": "gpu", "gpu_runtime": TwinRuntime()}

        require_gpu(pipeline.gpu_runtime, path=config)
    return {"device": pipeline.device, "gpu_runtime": pipeline.gpu_runtime}


def _emc_inputs(pipeline, config: Path) -> tuple[Path, Path]:
    missing = [key for key in ("photons", "detector") if getattr(pipeline.emc, key) is None]
    if missing:
        if pipeline.simulation is not None:
            fix = (f"run `spibatch simulate {config}` first, then set emc.photons and emc.detector to its "
                   "photons.emc and detector.h5 (relative to this file)")
        elif pipeline.ingest is not None:
            fix = (f"`spibatch run {config}` ingests {pipeline.ingest.cxi.name} and runs EMC on it; or run "
                   "`spibatch ingest` on it, then set emc.photons and emc.detector and remove the ingest section")
        else:
            fix = "set emc.photons and emc.detector to a Dragonfly photons file and its detector file"
        raise InputError(f"no {' or '.join('emc.' + k for k in missing)} given", path=config,
                         field=f"emc.{missing[0]}", fix=fix)
    return pipeline.emc.photons, pipeline.emc.detector


@app.command()
def emc(config: Path = typer.Argument(..., help="pipeline YAML file whose `emc` section names photons and detector"),
        out: Optional[Path] = typer.Option(None, "--out", help=OUT_HELP),
        resume: Optional[Path] = typer.Option(None, "--resume", help="continue the EMC run in this run "
                                              "directory from its last checkpoint")) -> None:
    """Reconstruct the 3-D intensity from sparse photons by EMC; under `mpirun -n N` across N ranks."""
    from spibatch.emc.mpi import world

    comm = world()
    rank = 0 if comm is None else comm.Get_rank()
    if rank != 0:  # rank 0 speaks for all
        for handler in logging.getLogger("spibatch").handlers:
            handler.setLevel(logging.CRITICAL + 1)
    try:
        _emc(config, out, resume, comm)
    except InputError:
        if rank != 0:
            raise typer.Exit(InputError.exit_code) from None
        raise
    except (typer.Exit, KeyboardInterrupt):
        raise
    except BaseException:
        if comm is None:
            raise
        import traceback

        traceback.print_exc()
        comm.Abort(1)  # the other ranks would wait in the next collective call forever


def _emc(config: Path, out: Optional[Path], resume: Optional[Path], comm) -> None:
    from spibatch.config import dump_pipeline, load_pipeline
    from spibatch.emc import mpi
    from spibatch.emc.driver import check_inputs, run_emc
    from spibatch.rundir import create_run_dir, reopen_run_dir, run_in_dir

    rank, size = mpi.rank_and_size(comm)
    if out is not None and resume is not None:
        raise InputError("--out and --resume together", field="--resume",
                         fix="give --resume RUN_DIR alone to continue a run, or --out DIR alone to start one")
    pipeline = load_pipeline(config)
    device = mpi.collective(comm, _device_args, pipeline, config)    # device: gpu without a GPU stops here
    photons, detector = _emc_inputs(pipeline, config)
    mpi.collective(comm, check_inputs, pipeline.emc, photons, detector, size)  # before any run directory
    inputs = [config, photons, detector] + ([pipeline.emc.start_model] if pipeline.emc.start_model else [])

    def open_run():
        if rank != 0:
            return None
        if resume is None:
            run = create_run_dir(pipeline.name, pipeline.output.runs_dir, out,
                                 config_text=dump_pipeline(pipeline), command=sys.argv)
        else:
            run = reopen_run_dir(resume, command=sys.argv, unchanged=tuple(inputs[1:]))
        run.extra["mpi_ranks"] = size
        run.add_inputs(*inputs)
        return run

    run = mpi.collective(comm, open_run)
    run_path = mpi.broadcast(comm, None if run is None else run.path)
    if rank != 0:
        run_emc(pipeline.emc, photons, detector, run_path, resume=resume is not None, comm=comm,
                show_progress=False, **device)
        return
    try:
        outputs = run_in_dir(run, run_emc, pipeline.emc, photons, detector, run.path, resume=resume is not None,
                             comm=comm, **device)
    finally:
        _write_report(run.path)
    typer.echo(f"\nEMC: {pipeline.emc.iterations} iterations on {size} rank(s) into {run.path}")
    for label, path in outputs.items():
        typer.echo(f"  {label:<12} {path}")
    typer.echo(f"  {'provenance':<12} {run.file('provenance.json')}\n  {'log':<12} {run.file('log.txt')}")


@app.command()
def phase(config: Path = typer.Argument(..., help="pipeline YAML file whose `phasing` section names the intensity"),
          intensity: Optional[Path] = typer.Option(None, "--intensity", help="the 3-D intensity to phase "
                                                   "(overrides phasing.intensity)"),
          truth: Optional[Path] = typer.Option(None, "--truth", help="a true density (truth.h5, MRC, Dragonfly "
                                               "densityMap.bin) to report the FSC against"),
          truth_voxel_size_m: Optional[float] = typer.Option(None, help="the truth's voxel in metres, when its "
                                                             "file does not say (Dragonfly's .bin)"),
          out: Optional[Path] = typer.Option(None, "--out", help=OUT_HELP)) -> None:
    """Phase a merged 3-D intensity: many random starts, aligned and averaged, with the PRTF."""
    from spibatch.config import dump_pipeline, load_pipeline
    from spibatch.phasing.stage import run_phasing
    from spibatch.rundir import create_run_dir, run_in_dir

    pipeline = load_pipeline(config)
    device = _device_args(pipeline, config)    # device: gpu without a GPU stops here
    source = intensity or pipeline.phasing.intensity
    if source is None:
        raise InputError("no intensity to phase", path=config, field="phasing.intensity",
                         fix="set phasing.intensity (e.g. an EMC output_NNN.h5) or give --intensity")
    if not Path(source).is_file():
        raise InputError("file not found", path=source, field="phasing.intensity", fix="check the path")
    if truth is not None and not truth.is_file():
        raise InputError("file not found", path=truth, field="--truth", fix="check the path")
    from spibatch.phasing.measurement import check_intensity
    from spibatch.phasing.stage import load_intensity

    loaded = load_intensity(Path(source), dataset=pipeline.phasing.dataset, crop_to=pipeline.phasing.crop_to,
                            voxel_size_per_m=pipeline.phasing.voxel_size_per_m)
    check_intensity(loaded[0], source=str(source))      # bad input stops before a run directory exists
    run = create_run_dir(pipeline.name, pipeline.output.runs_dir, out, config_text=dump_pipeline(pipeline),
                         command=sys.argv)
    run.add_inputs(config, source, *([truth] if truth else []))

    def body() -> dict:
        outputs = run_phasing(pipeline.phasing, Path(source), run.path, loaded=loaded, **device)
        if truth is not None:
            outputs.update(_phase_vs_truth(outputs["phasing"], truth, truth_voxel_size_m, run.path))
        return outputs

    try:
        outputs = run_in_dir(run, body)
    finally:
        _write_report(run.path)
    _print_phasing(outputs)
    typer.echo(f"\nphasing into {run.path}")
    for label, path in outputs.items():
        typer.echo(f"  {label:<14} {path}")


def _phase_vs_truth(phasing_file: Path, truth: Path, truth_voxel_m: Optional[float], out_dir: Path) -> dict:
    from spibatch.io.results import read_result
    from spibatch.phasing.compare import compare_with_truth, load_truth, write_comparison

    data, attrs = read_result(phasing_file)
    true_density, true_voxel = load_truth(truth, truth_voxel_m)
    summary = compare_with_truth(data["density"], attrs.get("voxel_size_m"), true_density, true_voxel,
                                 truth_path=str(truth))
    return write_comparison(summary, out_dir, f"phased density vs {truth.name}")


def _print_phasing(outputs: dict) -> None:
    from spibatch.io.results import read_result

    attrs = read_result(outputs["phasing"], attrs_only=True)[1]
    res = attrs.get("resolution_m")
    line = (f"PRTF falls below 1/e at {res * 1e10:.3g} A" if res else
            f"PRTF 1/e at shell {attrs['resolution_shell']:.1f}" if attrs.get("resolution_shell") else
            "PRTF stays above 1/e to the edge of the data")
    typer.echo(f"\nphasing: {attrs['keep_best']} of {attrs['num_starts']} starts kept; {line} "
               f"(data reach shell {attrs['max_measured_shell']})")
    if "fsc_vs_truth" in outputs:
        cmp = json.loads(Path(outputs["fsc_vs_truth"]).read_text(encoding="utf-8"))
        half, gold = cmp.get("resolution_0.5_m"), cmp.get("resolution_0.143_m")

        def fmt(v):
            return "beyond Nyquist" if v is None else f"{v * 1e10:.3g} A" if cmp.get("voxel_size_m") else f"{v:.3g} voxels"

        typer.echo(f"FSC with the true density: 0.5 at {fmt(half)}, 0.143 at {fmt(gold)} "
                   f"(cc {cmp['cc']:.3f}{', twin' if cmp['inverted'] else ''})")


@app.command()
def validate(first: Path = typer.Argument(..., help="a 3-D volume: our HDF5 result, Dragonfly output_NNN.h5 / .bin, or MRC"),
             second: Path = typer.Argument(..., help="the volume to compare with (e.g. the truth)"),
             dataset: Optional[str] = typer.Option(None, help="dataset to compare in HDF5 files "
                                                   "(default: intensity, intens or density, the first present)"),
             voxel_size_m: Optional[float] = typer.Option(None, help="real-space voxel size in metres, "
                                                          "when the files do not say"),
             out: Optional[Path] = typer.Option(None, "--out", help=OUT_HELP),
             runs_dir: Path = typer.Option(Path("runs"), help="parent of new run directories")) -> None:
    """Fourier shell correlation of two volumes: a table, the 0.5 / 0.143 resolutions and a PNG plot."""
    from spibatch.io.results import write_result
    from spibatch.rundir import create_run_dir, run_in_dir
    from spibatch.validate import format_table, fsc, plot_fsc

    a, a_voxel = _volume_and_voxel(first, dataset)
    b, b_voxel = _volume_and_voxel(second, dataset)
    voxel = voxel_size_m or a_voxel or b_voxel
    result = fsc(a, b, voxel_size=voxel)  # shape mismatches stop here, before a run directory exists
    run = create_run_dir("validate", runs_dir, out, command=sys.argv)
    run.add_inputs(first, second)

    def body() -> dict:
        plot_fsc(result, run.file("fsc.png"), title=f"{first.name} vs {second.name}")
        arrays = {"radius": result.radius, "frequency": result.frequency, "fsc": result.fsc,
                  "num_voxels": result.num_voxels}
        write_result(run.file("fsc.h5"), arrays, {"voxel_size_m": voxel}, None)
        return {"fsc_plot": run.file("fsc.png"), "fsc_table": run.file("fsc.h5")}

    outputs = run_in_dir(run, body)
    typer.echo(format_table(result))
    typer.echo(f"\nwrote {outputs['fsc_plot']}\nwrote {outputs['fsc_table']}")


def _volume_and_voxel(path: Path, dataset: Optional[str]):
    """A 3-D volume and its real-space voxel size in m (None when the file does not say)."""
    from spibatch.io.mrc import read_mrc
    from spibatch.io.results import MRC_SUFFIXES, read_result, read_volume

    if path.suffix.lower() in MRC_SUFFIXES:
        volume, voxel_angstrom = read_mrc(path)
        return volume, (voxel_angstrom * 1e-10 if voxel_angstrom else None)
    volume = read_volume(path, dataset)
    voxel = None
    if dataset == "density" and path.suffix.lower() in (".h5", ".hdf5"):
        try:
            voxel = read_result(path, attrs_only=True)[1].get("density_voxel_size_m")
        except InputError:
            voxel = None
    return volume, voxel


@app.command()
def ingest(cxi: Path = typer.Argument(..., help="CXI file with a pattern stack"),
           adu_per_photon: float = typer.Option(1.0, help="detector units per photon"),
           clip_negative: bool = typer.Option(False, help="set negative values to 0 instead of stopping"),
           data_path: str = typer.Option("/entry_1/data_1/data", help="dataset holding the stack"),
           chunk_frames: int = typer.Option(256, min=1, help="frames read per block"),
           out: Optional[Path] = typer.Option(None, "--out", help=OUT_HELP),
           runs_dir: Path = typer.Option(Path("runs"), help="parent of new run directories")) -> None:
    """Convert a CXI pattern stack (3-D or modular 4-D) to a sparse Dragonfly photons file, in chunks,
    and write detector.h5 when the file holds a flat square detector's geometry."""
    from spibatch.io.cxi import cxi_detector, cxi_to_photons
    from spibatch.io.dragonfly import write_detector
    from spibatch.rundir import create_run_dir, run_in_dir

    if not cxi.is_file():
        raise InputError("file not found", path=cxi, fix="give the path of a CXI (HDF5) file")
    run = create_run_dir("ingest", runs_dir, out, command=sys.argv)
    run.add_inputs(cxi)

    def body() -> dict:
        frames, pixels = cxi_to_photons(cxi, run.file("photons.emc"), chunk_frames=chunk_frames,
                                        adu_per_photon=adu_per_photon, clip_negative=clip_negative,
                                        data_path=data_path)
        log.info("%d frames of %d pixels", frames, pixels)
        detector = cxi_detector(cxi, data_path=data_path)
        if detector is None:
            log.info("no flat square detector geometry in %s: no detector.h5 written", cxi)
            return {"photons": run.file("photons.emc")}
        write_detector(run.file("detector.h5"), detector)
        return {"photons": run.file("photons.emc"), "detector": run.file("detector.h5")}

    outputs = run_in_dir(run, body)
    for path in outputs.values():
        typer.echo(f"wrote {path}")


@app.command()
def monitor(path: Optional[Path] = typer.Argument(None, envvar="SPIBATCH_MONITOR_ROOT",
                                                  help="a run folder, or a folder of runs (e.g. runs/)"),
            host: str = typer.Option("127.0.0.1", envvar="SPIBATCH_MONITOR_HOST",
                                     help="address to listen on (0.0.0.0: every interface; only on a trusted network)"),
            port: int = typer.Option(8765, envvar="SPIBATCH_MONITOR_PORT", min=0, max=65535,
                                     help="TCP port (0: any free one)"),
            poll_ms: int = typer.Option(2000, min=200, help="how often the page asks for news, ms")) -> None:
    """Serve a live, read-only web page of the runs under PATH (EMC, phasing, FSC, config, log)."""
    from spibatch.monitor.launch import run_monitor

    run_monitor(path, host, port, poll_ms)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a run folder")) -> None:
    """(Re)write RUN_DIR/report.html and its PNGs (every run writes them at its end)."""
    from spibatch.monitor.report import write_report

    if not (run_dir.is_dir()):
        raise InputError("not a folder", path=run_dir, fix="give a run folder (it holds provenance.json)")
    typer.echo(f"wrote {write_report(run_dir)}")


def _write_report(run_path: Path) -> None:
    """report.html + PNGs into a finished (or failed) run; a failure here never fails the run."""
    try:
        from spibatch.monitor.report import write_report

        log.info("report: %s", write_report(run_path))
    except Exception as exc:  # noqa: BLE001 - the run's results are on disk; the report is a view of them
        log.warning("could not write report.html into %s: %s: %s", run_path, exc.__class__.__name__, exc)


def main() -> None:
    """Console entry point: run the app; bad input -> one line on stderr, exit 2."""
    try:
        app()
    except InputError as exc:
        typer.echo(f"spibatch: error: {exc}", err=True)
        sys.exit(exc.exit_code)
