"""The pipeline and platform commands: ``demo``, ``run``, ``resume``, ``monitor``, ``report`` (``cli.py``
registers them)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from spibatch.cli_common import OUT, check_writable_folder, finished


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

    from spibatch.errors import InputError
    from spibatch.starter import data_file

    try:
        run_path, outputs = start(data_file("demo.yaml"), site, out, runs_dir=Path("runs"), adjust=adjust)
    except InputError as exc:   # a refusal of the demo's own file names the option that led to it
        key = exc.field or ""
        option = ("--starts" if starts is not None and key in ("phasing.num_starts", "phasing.keep_best") else
                  "--iterations" if iterations is not None and key.startswith(("emc.beta_schedule", "emc.iterations"))
                  and "on disk" not in exc.problem else None)
        if exc.path is None or Path(exc.path).name != "demo.yaml" or option is None:
            raise
        raise InputError(exc.problem, field=option, fix=f"give a smaller {option}") from None
    finished(run_path, outputs)


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
    finished(run_path, result)


def resume(run_dir: Path = typer.Argument(..., help="run directory of an earlier `spibatch run`"),
           site: Optional[Path] = typer.Option(None, "--site", help="a site file that replaces the run's own "
                                               "(e.g. the worker environment or partition that made a stage "
                                               "fail, fixed); its copy in the run folder is updated")) -> None:
    """Continue a `spibatch run` on its own site (or on --site): finished stages are not run again."""
    from spibatch.pipeline import resume as resume_run

    run_path, outputs = resume_run(run_dir, site_path=site)
    finished(run_path, outputs)


def monitor(path: Optional[Path] = typer.Argument(None, envvar="SPIBATCH_MONITOR_ROOT",
                                                  help="a run folder, or a folder of runs (e.g. runs/)"),
            host: str = typer.Option("127.0.0.1", envvar="SPIBATCH_MONITOR_HOST",
                                     help="address to listen on (0.0.0.0: every interface; only on a trusted network)"),
            port: int = typer.Option(8765, envvar="SPIBATCH_MONITOR_PORT", min=0, max=65535,
                                     help="TCP port (0: any free one)"),
            poll_ms: int = typer.Option(2000, min=200, max=3_600_000, help="how often the page asks for news, ms"),
            allowed_host: Optional[list[str]] = typer.Option(None, "--allowed-host", help="a Host name to answer to "
                "besides --host's (repeatable; '*' any; env SPIBATCH_MONITOR_ALLOWED_HOSTS=a,b); needed with 0.0.0.0")) -> None:
    """Serve a live, read-only web page of the runs under PATH (EMC, phasing, FSC, config, log)."""
    from spibatch.monitor.launch import run_monitor

    run_monitor(path, host, port, poll_ms, allowed_host)


def report(run_dir: Path = typer.Argument(..., help="a run folder")) -> None:
    """(Re)write RUN_DIR/report.html and its PNGs (every run writes them at its end)."""
    import shlex
    import sys

    from spibatch import lock
    from spibatch.errors import InputError
    from spibatch.io.atomic import say_how_to_go_on
    from spibatch.layout import RunLayout
    from spibatch.stages import report as report_stage

    run = RunLayout(run_dir)
    report_stage.check(run=run)
    owner = lock.read_lock(run.path)
    stale = owner is not None and lock.lock_is_stale(owner)     # its writer was killed: nobody writes into it
    if not stale:
        lock.take_lock(run.path, ["spibatch", *sys.argv[1:]], "RUN_DIR")   # one writer: a live run's is refused
    try:
        typer.echo(f"wrote {report_stage.run(run)['report']}")
    except InputError as exc:         # a full disk: the command to go on with is this one
        say_how_to_go_on(exc, f"spibatch report {shlex.quote(str(run_dir))}")
        raise
    finally:
        if not stale:
            lock.release_lock(run.path)


def bench(bench_file: Path = typer.Argument(..., help="benchmark file (BENCH.yaml: the matrix of sites, modes, "
                                            "workers and workloads; benchmarks/bench/ has examples)"),
          site: list[Path] = typer.Option([], "--site", help="site file(s) to run the matrix on, replacing the "
                                          "bench file's matrix.sites (repeat the option)"),
          dry_run: bool = typer.Option(False, "--dry-run", help="print what every point would submit; create "
                                       "and submit nothing"),
          out: Optional[Path] = typer.Option(None, "--out", help="the bench folder (default: bench-<name>/ beside "
                                             "the bench file; an interrupted matrix there is resumed)"),
          rates: Optional[Path] = typer.Option(None, "--rates", help="take the kernel rates from this bench.json "
                                               "(of the same machine) instead of measuring them"),
          no_rates: bool = typer.Option(False, "--no-rates", help="no kernel rates, no model")) -> None:
    """Cross-platform scaling benchmark: every point of the matrix a real pipeline run; bench.json, a table,
    plots, report.html, and the performance model checked on points it was not calibrated on."""
    from spibatch.bench import bench_command, exit_status
    from spibatch.errors import InputError

    if rates is not None and no_rates:
        raise InputError("given with --no-rates, which measures and uses no rates", path=rates, field="--rates",
                         fix="give one of --rates FILE and --no-rates")
    folder, text = bench_command(bench_file, list(site), out=out, dry_run=dry_run,
                                 rates=False if no_rates else (rates or True))
    typer.echo(text, nl=not text.endswith("\n"))
    status = 0 if dry_run else exit_status(folder)
    if status:
        raise typer.Exit(status)


def replay(source: str = typer.Argument(..., help="'simulated' (a simulated particle among empty frames), or a "
                                        "photons file (e.g. a shared Dragonfly set's photons.emc) with --detector"),
           rate: float = typer.Option(..., "--rate", help="frames per second"),
           as_: str = typer.Option(..., "--as", help="euxfel-run (sequence files written by EXtra-data's own "
                                   "writer), karabo-bridge (a bridge server), or cxi-folder"),
           target: str = typer.Option(..., "--target", help="the run folder, the bridge's ZeroMQ endpoint "
                                      "(tcp://127.0.0.1:4545) or the CXI folder"),
           detector: Optional[Path] = typer.Option(None, "--detector", help="the photons file's detector file"),
           hit_fraction: float = typer.Option(0.2, help="hits among the frames played (the rest are empty)"),
           num_hits: Optional[int] = typer.Option(None, help="hits of a simulated source (default 200)"),
           out: Optional[Path] = typer.Option(None, "--out", help="where a simulated source's files go "
                                              "(default replay/)")) -> None:
    """Play a data set as a live source at a rate -- an EuXFEL run being written, a Karabo bridge or a folder
    of CXI files -- to rehearse a beamtime (spibatch run with a `source:` section follows it)."""
    import math

    from spibatch.errors import InputError
    from spibatch.stream.replay import KINDS, frames_from
    from spibatch.stream.sources import endpoint_problem
    from spibatch.stream.replay import replay as play

    if as_ not in KINDS:
        raise InputError(f"unknown kind {as_!r}", field="--as", fix=f"give one of: {', '.join(KINDS)}")
    if not (math.isfinite(rate) and 1e-3 <= rate <= 1e9):
        raise InputError(f"expected 0.001 to 1e9 frames per second, found {rate!r}", field="--rate",
                         fix="e.g. --rate 100")
    if not 1e-6 <= hit_fraction <= 1:
        raise InputError(f"expected a fraction in [1e-6, 1], found {hit_fraction}", field="--hit-fraction",
                         fix="e.g. 0.2: one frame in five is a hit")
    if num_hits is not None and not 1 <= num_hits <= 10 ** 7:
        raise InputError(f"expected 1 to 10,000,000 hits, found {num_hits}", field="--num-hits",
                         fix="e.g. --num-hits 200")
    hits = num_hits or 200
    if source == "simulated" and detector is not None:   # (ignored without a word before)
        raise InputError("a simulated source writes its own detector file", field="--detector",
                         fix="leave --detector out, or give a photons file as the source")
    if source != "simulated" and out is not None:
        raise InputError(f"only a simulated source writes files to --out; {source} is played as it is",
                         field="--out", fix="leave --out out, or give 'simulated' as the source")
    out = out if out is not None else Path("replay")
    if source != "simulated" and Path(source).is_file():   # every frame of the file is a hit
        from spibatch.io.dragonfly import photons_info

        held = photons_info(source)[0]
        if num_hits is not None and num_hits > held:
            raise InputError(f"{num_hits:,} hits asked, but {source} holds {held:,} frames", field="--num-hits",
                             fix=f"give at most {held:,} (or leave --num-hits out: every frame)")
        hits = num_hits or held
    if hits / hit_fraction > 10 ** 8:   # (a photons file's frames were made in memory: 37 GiB, a traceback)
        raise InputError(f"{hits:,} hits at a hit fraction of {hit_fraction:g} make more than 1e8 frames",
                         field="--hit-fraction", fix="play fewer hits, or a larger hit fraction")
    problem = endpoint_problem(target, ("tcp", "ipc", "inproc")) if as_ == "karabo-bridge" else None
    if problem is not None:
        raise InputError(f"{target!r}: {problem}", field="--target", fix="e.g. --target tcp://127.0.0.1:4545")
    if as_ != "karabo-bridge":      # the folders it writes: one line now, not a traceback after the simulation
        check_replay_folder(Path(target), "--target", "its numbered files from the first")
        check_writable_folder(Path(target), "--target")
    if source == "simulated":
        check_replay_folder(out, "--out", "photons.emc, detector.h5, truth.h5 and density.mrc", REPLAY_MARK)
        check_writable_folder(out, "--out")
        out.mkdir(parents=True, exist_ok=True)   # the mark first: a replay stopped mid-simulation may be redone
        (out / REPLAY_MARK).write_text("written by spibatch replay: its simulated source's files may be replaced\n")
        if as_ != "karabo-bridge":    # now, not after the simulation: a run that follows the replay refused a
            Path(target).mkdir(parents=True, exist_ok=True)   # folder not there yet ("source.target: no such folder")
    frames, detector_path = frames_from(source, detector=detector, out_dir=out, hit_fraction=hit_fraction,
                                        num_hits=num_hits)
    typer.echo(f"replaying {frames.num_frames} frames ({frames.num_trains} trains) at {rate:g} frames/s as {as_} "
               f"to {target}; the detector file: {detector_path}", err=True)
    trains = play(frames, rate, as_, target)
    typer.echo(f"played {trains} trains to {target}")


REPLAY_MARK = ".spibatch-replay"


def check_replay_folder(folder: Path, field: str, writes: str, mark: str | None = None) -> None:
    """A folder replay writes into: new, empty, or (``mark``) an earlier replay's own; never inside a run folder.
    Replay overwrote what was there (a run's simulate/ outputs, another beamtime's files) without a word."""
    from spibatch.errors import InputError
    from spibatch.run_checks import enclosing_run

    inside = enclosing_run(folder)
    if inside is not None:
        raise InputError(f"lies in the run folder {inside}", path=folder, field=field,
                         fix="give a folder outside every run folder")
    held = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if held and not (mark and mark in held):
        shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        raise InputError(f"is not empty ({shown}): replay writes {writes} there and would overwrite them",
                         path=folder, field=field, fix="give a new or empty folder")


def _follows(run) -> bool:
    """Whether the run's own config.yaml has a ``source`` section (a live run before its first train)."""
    from spibatch.yaml_models import read_yaml_mapping

    if not run.config.is_file():    # (a pipe would block: the settings reader takes those)
        return False
    config, _ = read_yaml_mapping(run.config, missing_fix="", top_fix="")   # unreadable: that line, not "no source"
    return bool(config.get("source"))


def stop(run_dir: Path = typer.Argument(..., help="a run folder that follows a live source")) -> None:
    """Tell a run that follows a live source that the data have ended: it ingests what has arrived, finishes
    EMC by its stopping rule, and phases and validates the result."""
    from spibatch.errors import InputError
    from spibatch.io.atomic import write_text
    from spibatch.layout import RunLayout
    from spibatch.rundir import read_provenance, utc_now

    run = RunLayout(run_dir)
    record = read_provenance(run.path, field_name="RUN_DIR", deep=False)   # a run folder (its top: a live run's
    # chunks may number thousands), or one line saying it is not
    status = record.get("status")
    if status == "completed":
        raise InputError("this run has completed: there is nothing to stop", path=run.path, field="RUN_DIR",
                         fix="give the folder of a live run that is still following its source")
    if status in ("failed", "interrupted"):   # a stop file left here would end its resumed follow at once
        raise InputError(f"this run has {'failed' if status == 'failed' else 'been interrupted'}: it is not running, "
                         "there is nothing to stop", path=run.path, field="RUN_DIR",
                         fix=f"`spibatch resume {run.path}` continues it (then `spibatch stop` ends its follow)")
    if not run.follow.exists() and not _follows(run):    # (a follow makes its folder with its first train)
        raise InputError("this run does not follow a live source (no follow/ folder, no source in its "
                         "config.yaml)", path=run.path, field="RUN_DIR",
                         fix="give the run folder of a `spibatch run` whose pipeline has a source")
    if run.stop.is_file():     # a second stop rewrote the first one's time without a word
        asked = run.stop.read_text(errors="replace").strip()[:80]
        typer.echo(f"{run.path} was asked to stop already ({asked}): it is finishing what has arrived", err=True)
        return
    write_text(run.stop, f"stop requested {utc_now()}\n")
    typer.echo(f"asked {run.path} to stop: it finishes what has arrived ({run.stop})")
