"""The one-stage commands: ``init``, ``schema``, ``simulate``, ``emc``, ``phase``, ``validate``, ``ingest``; and the
two that prepare EMC's inputs, ``background`` and ``classify``.

Each one-stage command is a run of the stage functions of :mod:`spibatch.stages` in a new run folder (``cli.py``
registers them); ``background`` and ``classify`` write the files they name.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from spibatch.cli_common import OUT, check_writable_folder, echo, load, one_stage_run
from spibatch.errors import InputError


def init(directory: Path = typer.Argument(..., help="folder to write pipeline.yaml (and the example PDB) into"),
         site: Optional[str] = typer.Option(None, "--site", help="also write a commented site.yaml to start from: "
                                            "local, slurm or kubernetes")) -> None:
    """Write a commented pipeline.yaml (and the example structure 1EI7.pdb) into DIRECTORY; --site adds a site file."""
    from spibatch.io.files import check_one_line
    from spibatch.starter import init as write_starter
    from spibatch.starter import same_as_example

    written = write_starter(check_one_line(directory, "DIRECTORY"), site)
    typer.echo("\n".join(f"wrote {path}" for path in written))
    kept = directory / "1EI7.pdb"
    if directory / "pipeline.yaml" in written and kept not in written and not same_as_example(kept):
        typer.echo(f"kept {kept}, which was there and is not the example's 1EI7 (pipeline.yaml's simulation.pdb "
                   "names it: check it is the structure you mean)")
    def arg(path: Path) -> str:       # a folder named -x would be read as an option
        return shlex.quote(f"./{path}" if str(path).startswith("-") else str(path))

    site_arg = f" --site {arg(directory / 'site.yaml')}" if site else ""
    typer.echo(f"next: spibatch run {arg(directory / 'pipeline.yaml')}{site_arg}" + (" --dry-run" if site else ""))


def schema() -> None:
    """Print the JSON schema of the pipeline file."""
    from spibatch.config import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


def simulate(config: Path = typer.Argument(..., help="pipeline YAML file with a `simulation` section"),
             out: Optional[Path] = OUT) -> None:
    """Simulate sparse diffraction patterns of a PDB structure (Dragonfly photons + detector files)."""
    pipeline = load(config)
    inputs = (config, pipeline.simulation.pdb) if pipeline.simulation is not None else (config,)
    one_stage_run(["simulate"], config, pipeline, out=out, inputs=inputs)


def emc(config: Path = typer.Argument(..., help="pipeline YAML file whose `emc` section names photons and detector"),
        out: Optional[Path] = OUT,
        resume: Optional[Path] = typer.Option(None, "--resume", help="continue the EMC run in this run "
                                              "directory from its last checkpoint")) -> None:
    """Reconstruct the 3-D intensity from sparse photons by EMC; under `mpirun -n N` across N ranks."""
    from spibatch.io.frame_selection import input_files

    pipeline = load(config)
    inputs = [config] + input_files(pipeline.emc) + [p for p in (pipeline.emc.detector, pipeline.emc.start_model,
                                                                 pipeline.emc.background_file) if p]
    one_stage_run(["emc"], config, pipeline, out=out, resume=resume, inputs=tuple(inputs))


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

    pipeline = load(config)
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
    one_stage_run(names, config, pipeline, out=out, inputs=(config, *sources),
                  options={"validation.reference": "--truth"} | ({"phasing.intensity": "--intensity"} if intensity
                                                                   else {}))


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
    run_path, outputs = run_stages(["validate"], pipeline, None, out=out, command=sys.argv, inputs=(first, second),
                                   options={"validation.volume": "FIRST", "validation.reference": "SECOND",
                                            "validation.kind": "--kind", "validation.dataset": "--dataset",
                                            "validation.voxel_size_m": "--voxel-size-m"})
    typer.echo(Path(outputs["fsc_text"]).read_text(encoding="utf-8").rstrip())
    echo([f"wrote {outputs['fsc_plot']}", f"wrote {outputs['fsc_table']}"])


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
    one_stage_run(["ingest"], None, pipeline, out=out, inputs=(cxi,))


def background(photons: Path = typer.Argument(..., help="Dragonfly photons file (HDF5 or .emc) of empty (non-hit) "
                                              "frames"),
               out: str = typer.Option(..., "-o", "--out", help="background file to write (HDF5, dataset "
                                       "'background': mean photons per pixel per frame, as Dragonfly reads it)"),
               ) -> None:
    """Mean photons per pixel per frame over empty frames: the background file emc.background_file names."""
    from spibatch.io.background import MAX_VALUE, background_from_photons, write_background
    from spibatch.io.files import check_one_line
    from spibatch.stages.checks import require_file

    require_file(photons, "photons", fix="give a Dragonfly photons file of empty frames")
    if out.endswith(("/", os.sep)):      # Path() drops the slash: 'dir/new/' wrote a file named 'new'
        raise InputError("ends in a slash: it names a folder, and the background is a file", path=out, field="--out",
                         fix=f"name the file, e.g. {out}background.h5")
    out = Path(out)
    check_one_line(out, "--out")
    if out.exists() or out.is_symlink():
        what = ("is the photons file it would read" if out.resolve() == photons.resolve() else
                "is a directory" if out.is_dir() else "exists: nothing is overwritten")
        raise InputError(what, path=out, field="--out", fix="name a new file for the background")
    check_writable_folder(out.absolute().parent, "--out")    # before the pass over the frames
    values = background_from_photons(photons)
    if values.max(initial=0.0) > MAX_VALUE:   # emc.background_file would refuse what this wrote
        raise InputError(f"{int((values > MAX_VALUE).sum())} pixels average above {MAX_VALUE:.0e} photons a frame: "
                         "these are not empty frames", path=photons, field="photons",
                         fix="give the photons file of empty (non-hit) frames")
    write_background(out, values)
    typer.echo(f"{out}: {values.size} pixels, {values.sum():.4g} background photons per frame")


def classify(photons: Optional[list[Path]] = typer.Argument(None, help="Dragonfly photons files (HDF5 or .emc), their "
                                                            "frames numbered on in order, as emc.photons' list"),
             photons_list: Optional[Path] = typer.Option(None, "--photons-list", help="instead: a text file naming "
                                                         "them one a line (emc.photons_list, Dragonfly's "
                                                         "in_photons_list)"),
             detector: Path = typer.Option(..., "--detector", help="the detector file of these photons"),
             out: Path = typer.Option(..., "-o", "--out", help="a new folder for classes.txt, blacklist.txt, "
                                      "classes.json and classes.png"),
             classes: int = typer.Option(5, "--classes", min=2, max=20, help="classes to cluster the frames in"),
             keep: Optional[str] = typer.Option(None, "--keep", help="the classes whose frames EMC reads, e.g. 0,2 "
                                                "(default: the suggestion: the largest class and those like it)"),
             seed: int = typer.Option(0, "--seed", min=0, help="seed of the clustering's random starts")) -> None:
    """2-D classification of the frames before EMC: classes of frames alike, and the blacklist (emc.blacklist_file)
    that leaves out the classes not kept."""
    from spibatch.classify import PixelTables, classify as run_classify
    from spibatch.classify_files import FILES, check_keeps_frames, claimed, describe, open_frames, parse_keep, \
        unclaimed_entries, write_classes
    from spibatch.io.frame_selection import read_list

    if bool(photons) == (photons_list is not None):
        raise InputError("give the photons files, or --photons-list, not both or neither", field="photons",
                         fix="spibatch classify run1.h5 run2.h5 --detector det.h5 -o DIR (or --photons-list files.txt)")
    photons = photons or read_list(photons_list, "--photons-list")
    if out.exists() and (not out.is_dir() or unclaimed_entries(out)):
        raise InputError("exists: nothing is overwritten", path=out, field="--out", fix="name a new folder")
    check_writable_folder(out.absolute(), "--out")
    kept = parse_keep(keep, classes)           # before the pass over the frames
    field = "--photons-list" if photons_list is not None else "photons"
    geometry, blocks, frames = open_frames(photons, detector, classes, field=field)
    try:
        tables = PixelTables.of(geometry)      # the detector leaves every shell of the features a pixel
    except InputError as exc:
        exc.path = str(detector)
        raise
    with claimed(out):
        found = run_classify(blocks, geometry, classes, seed, tables=tables)
        if not found.features["counts"].any():
            raise InputError(f"none of the {frames:,} frames has a photon on a pixel used", path=photons[0],
                             field=field, fix="check the photons files and the detector's mask")
        kept = found.suggested if kept is None else kept
        check_keeps_frames(found, kept)
        blacklist = write_classes(out, found, kept, photons, seed)
    typer.echo("\n".join(describe(found, kept)))
    left = int(sum(s["frames"] for c, s in enumerate(found.summaries) if c not in kept))
    typer.echo(f"{out}: {', '.join(FILES)}; {left:,} of {frames:,} frames left out\n"
               f"next: look at {out / 'classes.png'}, then set emc.blacklist_file: {blacklist} "
               f"(or run again with --keep)")
