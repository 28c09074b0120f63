"""The files one point's runs need: its data (a subset of a data set, or a simulation, made once per size),
its pipeline file and its site file (the site's own, with ``workers`` and ``emc_mode`` set to the point's).

Everything goes under the bench folder: ``data/<workload>-<frames>-<digest>/`` (photons and detector, shared by
every point of that size; the digest of what the data are made from, :func:`data_digest`) and ``points/<point>/`` (``pipeline.yaml``, ``site.yaml``, ``rep-N/`` run folders).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from spibatch.bench.matrix import Point, SiteInfo, data_files, truth_intensity
from spibatch.bench.settings import Workload

PHASING_EMC_FRAMES = 64      # a phasing point's pipeline runs a token EMC first (the pipeline's order); its
PHASING_EMC_NUM_DIV = 1      # cost is not part of the phase stage's time


def data_for(point: Point, work: Workload, root: Path, *, create: bool = True) -> tuple[Path, Path]:
    """(photons, detector) of ``point``'s EMC: the data set itself when the point uses all of it, else the first
    ``frames`` frames written once into ``root/data/``; a simulation is run once per size.  With
    ``create=False`` nothing is written: the paths it would use (the dry run)."""
    photons, detector = data_files(work)
    frames = point.frames if point.kind == "emc" else PHASING_EMC_FRAMES
    folder = Path(root) / "data" / f"{point.workload}-{frames}-{data_digest(work, photons, detector)}"
    if work.simulate is not None:
        made = folder / "simulate"
        if create and (made / "photons.emc").is_file() and not _sound(made / "photons.emc"):
            import shutil

            shutil.rmtree(folder)                      # a damaged simulation: made again
        if create and not (made / "photons.emc").is_file():
            simulate(work, frames, folder)
        return made / "photons.emc", made / "detector.h5"
    from spibatch.io.dragonfly import photons_info

    if photons_info(photons)[0] == frames:
        return photons, detector
    subset = folder / "photons.h5"
    if create and subset.is_file() and not _sound(subset):
        subset.unlink()                                # a damaged subset: written again
    if create and not subset.is_file():
        from spibatch.io.atomic import atomic_path
        from spibatch.io.dragonfly import read_photons, write_photons

        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(subset) as tmp:
            write_photons(tmp, read_photons(photons, 0, frames))
    return subset, detector


def data_digest(work: Workload, photons: Path, detector: Path) -> str:
    """8 hex digits of what a workload's data are made from (its data set's files, or its simulation's every
    setting): part of the data folder's name, so that a workload changed under the same name is not measured on
    the data made for the old one (a 200-photon simulation was reused for 2000 photons, without a word)."""
    import hashlib
    import json

    spec = {"simulate": work.simulate.model_dump(mode="json")} if work.simulate is not None else \
        {"data": [str(Path(photons).resolve()), str(Path(detector).resolve())]}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _sound(photons: Path) -> bool:
    """Whether a photons file the bench made earlier reads to its end (a damaged one is made again, not handed to
    every point's runs to fail there); each file read once a process (every point of its size asks)."""
    import logging

    from spibatch.errors import InputError
    from spibatch.io.dragonfly import check_photons

    if photons in _SOUND:
        return True
    try:
        check_photons(photons)
    except InputError as exc:
        logging.getLogger("spibatch").warning("bench: %s is damaged (%s): made again", photons, exc.problem)
        return False
    _SOUND.add(photons)
    return True


_SOUND: set[Path] = set()     # the bench data files read whole and found sound in this process


def simulate(work: Workload, frames: int, folder: Path) -> None:
    """``spibatch simulate`` of the workload's size into ``folder`` (a one-stage run, its own process)."""
    config = simulation_config(work, frames)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(folder.name + ".partial")
    if staging.exists():
        import shutil

        shutil.rmtree(staging)
    staging.mkdir()
    (staging / "sim.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "spibatch", "-q", "simulate", str(staging / "sim.yaml"), "--out",
                           str(staging / "run")], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"simulating {frames} frames failed: {done.stderr.strip()[-500:]}")
    (staging / "run").rename(staging / "simulate-run")
    staging.rename(folder)
    (folder / "simulate").symlink_to("simulate-run/simulate", target_is_directory=True)


def simulation_config(work: Workload, frames: int) -> dict:
    """The pipeline (name, geometry, simulation) that simulates ``frames`` frames of the workload's size."""
    from spibatch.starter import data_file

    sim = work.simulate
    return {"name": "bench-data",
            "geometry": {"detector_pixels": sim.pixels, "pixel_size_m": sim.pixel_size_m,
                         "detector_distance_m": sim.detector_distance_m, "photon_energy_ev": sim.photon_energy_ev},
            "simulation": {"pdb": str(sim.pdb or data_file("1EI7.pdb")), "num_patterns": frames,
                           "mean_photons_per_frame": sim.photons, "seed": sim.seed}}


def simulated_point_text(point: Point, work: Workload) -> str:
    """What preflight checks for a point on simulated data: the simulation and the point's EMC in one pipeline
    (as `spibatch run` would chain them), so that the simulation's and the EMC's sizes are checked before any
    point starts."""
    emc = yaml.safe_load(pipeline_text(point, work, Path("-"), Path("-")))["emc"]
    del emc["photons"], emc["detector"]
    return yaml.safe_dump({**simulation_config(work, point.frames), "emc": emc, "device": point.device},
                          sort_keys=False)


def pipeline_text(point: Point, work: Workload, photons: Path, detector: Path) -> str:
    """The point's pipeline file: EMC on its frames (phasing: a token EMC, then the starts on the intensity)."""
    emc = {"photons": str(photons), "detector": str(detector), "num_div": work.num_div,
           "iterations": point.iterations, "frames_per_shard": point.frames_per_shard or PHASING_EMC_FRAMES,
           "need_scaling": work.need_scaling}
    if point.kind == "phasing":
        emc.update(num_div=PHASING_EMC_NUM_DIV, iterations=1)
    if work.model_size is not None and point.kind == "emc":
        emc["model_size"] = work.model_size
    config = {"name": "bench", "emc": emc, "device": point.device}
    if point.kind == "phasing":
        phasing = {"intensity": str(truth_intensity(work)), "num_starts": work.starts, "keep_best": work.starts,
                   "recipe": work.recipe}
        if work.crop_to is not None:
            phasing["crop_to"] = work.crop_to
        if work.voxel_size_per_m is not None:
            phasing["voxel_size_per_m"] = work.voxel_size_per_m
        config["phasing"] = phasing
    return yaml.safe_dump(config, sort_keys=False)


def site_text(point: Point, info: SiteInfo) -> str:
    """The site's resolved file with the point's workers and EMC mode (phasing: the site's own mode)."""
    from spibatch.backends import dump_site

    site = info.site.model_copy(deep=True)
    site.workers = point.workers
    if point.mode in ("hpc", "htc"):
        site.emc_mode = point.mode
    if site.provider == "local" and site.options.cores is None:
        site.options.cores = info.capacity
    return dump_site(site)


def write_point_files(point: Point, work: Workload, info: SiteInfo, folder: Path, photons: Path,
                      detector: Path) -> tuple[Path, Path]:
    """``folder/pipeline.yaml`` and ``folder/site.yaml`` of the point; their paths."""
    from spibatch.io.atomic import write_text

    folder.mkdir(parents=True, exist_ok=True)
    pipeline = write_text(folder / "pipeline.yaml", pipeline_text(point, work, photons, detector))
    site = write_text(folder / "site.yaml", site_text(point, info))
    return Path(pipeline), Path(site)
