"""The matrix: a bench file and its sites -> points, each checked before anything is submitted.

A :class:`Point` is one (site, mode, workers, workload, scaling) cell; it is measured ``repeats``
times, each a real ``spibatch run PIPELINE --site SITE --until emc`` (phasing: ``--until phase``).
Its ``key`` names it in ``bench.json`` and on disk; its ``fingerprint`` changes when anything that
defines it changes (the workload, the site file, iterations, repeats), so a resumed matrix keeps a
measured point only when it would measure the same thing again.

:func:`build` refuses, with one line, before anything runs: more workers than a site offers, a site
that cannot run HPC mode asked for HPC, a data set missing on the workers' filesystem (a Kubernetes
site's pods see only its PVC's ``mount_path``), two sites with one name.  Phasing maps its starts
to tasks in both modes, so a phasing workload gives one point per (site, workers), mode ``tasks``.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from spibatch.bench.settings import Bench, Workload
from spibatch.errors import InputError


@dataclass
class SiteInfo:
    """A site as the matrix sees it: its validated model, file, capacity (workers it offers) and the text of
    its file (part of every point's fingerprint)."""

    name: str
    provider: str
    path: Path | None
    site: object
    capacity: int | None
    capacity_from: str
    supports_hpc: bool
    text: str


def point_key(site, mode, workers, workload, scaling) -> str:
    """A point's name: ``site/mode/wN/workload/scaling`` (:attr:`Point.key`; a bench.json record's is checked
    against its own fields with it)."""
    return f"{site}/{mode}/w{workers}/{workload}/{scaling}"


@dataclass
class Point:
    """One cell of the matrix; ``frames`` are the frames of one run (weak: workers x per worker)."""

    site: str
    provider: str
    mode: str                   # hpc | htc | tasks (phasing)
    workers: int
    workload: str
    kind: str                   # emc | phasing
    scaling: str                # strong | weak
    frames: int | None          # EMC frames of a run (None: phasing)
    frames_per_shard: int | None
    iterations: int
    repeats: int
    device: str
    fingerprint: str = ""
    workload_spec: dict = field(default_factory=dict, repr=False)

    @property
    def key(self) -> str:
        """``site/mode/wN/workload/scaling``: the point's name in bench.json and its folder under points/."""
        return point_key(self.site, self.mode, self.workers, self.workload, self.scaling)

    @property
    def folder(self) -> str:
        return self.key.replace("/", "_")

    def describe(self) -> dict:
        out = asdict(self)
        out.pop("workload_spec")
        return out


def site_infos(paths: list[Path]) -> list[SiteInfo]:
    """Each site file loaded and validated, with what it offers."""
    from spibatch.backends import default_site_path, load_site, provider_for

    out: list[SiteInfo] = []
    for path in paths or [None]:
        site = load_site(path)
        provider = provider_for(site)
        capacity, source = capacity_of(site, provider)
        text = Path(path or default_site_path()).read_text(encoding="utf-8")
        if any(s.name == site.name for s in out):
            raise InputError(f"two sites are named '{site.name}'", path=site.source, field="name",
                             fix="give each site file its own name")
        out.append(SiteInfo(site.name, site.provider, site.source, site, capacity, source, provider.supports_hpc, text))
    return out


def _check_one_process_hpc(bench, info: SiteInfo, most: int) -> None:
    """InputError (one line) for HPC-mode EMC points of 2+ workers on a local site that runs HPC-mode EMC as one
    process (no mpirun): every such point would run the very same command, not a scaling series."""
    if "hpc" not in bench.matrix.modes or most < 2 or info.provider != "local" \
            or not any(bench.workloads[w].kind == "emc" for w in bench.matrix.workloads):
        return
    from spibatch.backends import provider_for

    why = provider_for(info.site.model_copy(update={"workers": most})).why_no_mpi()
    if why is not None:
        raise InputError(f"site '{info.name}' runs HPC-mode EMC as one process ({why}): its HPC points of 1 to "
                         f"{most} workers would all run the same command", path=bench.source, field="matrix.modes",
                         fix="bench HPC mode where mpirun runs (local.mpi: auto with MPI and mpi4py installed; as "
                         "root export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1), or set "
                         "matrix.modes: [htc]")


def capacity_of(site, provider) -> tuple[int | None, str]:
    """Workers the site offers: local, its cores; Slurm, nodes x cores per node (the site's, else sinfo's);
    Kubernetes, the site file's workers (pods at once).  None when nobody can say (no sinfo)."""
    if site.provider == "local":
        return provider.node_cores(), "cores of this machine (local.cores, else the cores this process may use)"
    if site.provider == "slurm":
        cores = site.options.cores_per_node or _sinfo_cpus(site.options.partition)
        if cores is None:
            return None, "unknown (no slurm.cores_per_node and sinfo did not answer)"
        return site.options.nodes * cores, f"slurm.nodes ({site.options.nodes}) x {cores} cores per node"
    return site.workers, "the site file's workers (pods at once)"


def _sinfo_cpus(partition: str | None) -> int | None:
    command = ["sinfo", "-h", "-o", "%c"] + (["-p", partition] if partition else [])
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    values = [int(v.rstrip("+")) for v in done.stdout.split() if v.rstrip("+").isdigit()]
    return max(values) if done.returncode == 0 and values else None


def worker_counts(bench: Bench, info: SiteInfo) -> list[int]:
    """The worker counts of ``info``: the matrix's list, or ``max``: 1, 2, 4, ... up to the capacity (and it)."""
    if bench.matrix.workers != "max":
        return list(bench.matrix.workers)
    if info.capacity is None:
        raise InputError(f"workers: max, but what site '{info.name}' offers is {info.capacity_from}",
                         path=bench.source, field="matrix.workers", fix="list the worker counts, or set "
                         "slurm.cores_per_node in the site file")
    counts = [2 ** k for k in range(int(math.log2(info.capacity)) + 1)]
    return counts + ([info.capacity] if counts[-1] != info.capacity else [])


def dataset_frames(work: Workload) -> int | None:
    """Frames of the workload's photons file (header only), None for a simulation."""
    from spibatch.io.dragonfly import photons_info

    photons = data_files(work)[0]
    return None if photons is None else photons_info(photons)[0]


def data_files(work: Workload) -> tuple[Path | None, Path | None]:
    """(photons, detector) of an existing data set; (None, None) for a simulation."""
    if work.dataset is not None:
        folder = Path(work.dataset)
        return folder / "photons.emc", folder / "det_sim.h5"
    return work.photons, work.detector


def truth_intensity(work: Workload) -> Path | None:
    """The phasing workload's intensity: ``intensity``, else the data set's true intensity file."""
    if work.intensity is not None:
        return work.intensity
    folder = Path(work.dataset)
    return next((folder / n for n in ("intensities.h5", "intensities.bin") if (folder / n).is_file()), None)


def _check_visible(bench: Bench, name: str, work: Workload, info: SiteInfo) -> None:
    """The data set exists, and where the site's workers can read it."""
    paths = [p for p in data_files(work) if p is not None]
    if work.kind == "phasing":
        paths = [truth_intensity(work) or Path(work.dataset) / "intensities.h5"]
    if work.simulate is not None and work.simulate.pdb is not None:
        paths.append(work.simulate.pdb)
    for path in paths:
        if not Path(path).is_file():
            raise InputError(f"workload '{name}': {path} does not exist", path=bench.source,
                             field=f"workloads.{name}", fix="give a data set that exists on the workers' filesystem")
        if info.provider == "kubernetes":
            mount = Path(info.site.options.mount_path)
            if mount not in Path(path).parents:
                raise InputError(f"workload '{name}': {path} is outside the shared filesystem the pods of site "
                                 f"'{info.name}' mount at {mount}", path=bench.source, field=f"workloads.{name}",
                                 fix=f"copy the data set under {mount} (the PVC) and point the workload there")


def fingerprint(point: Point, info: SiteInfo) -> str:
    data = {"point": point.describe(), "workload": point.workload_spec, "site": info.text}
    data["point"].pop("fingerprint")
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build(bench: Bench, infos: list[SiteInfo]) -> list[Point]:
    """Every point of the matrix, in the order they run (site, workload, scaling, workers, mode); InputError
    (one line) on a point no site can run."""
    m = bench.matrix
    points: list[Point] = []
    unknown = [s for s in bench.model.calibrate_sites or [] if s not in {i.name for i in infos}]
    if unknown:
        raise InputError(f"model.calibrate_sites names '{unknown[0]}', which is none of the matrix's sites "
                         f"({', '.join(i.name for i in infos)})", path=bench.source, field="model.calibrate_sites",
                         fix="name a site of the matrix (its `name:`)")
    for info in infos:
        counts = worker_counts(bench, info)
        if info.capacity is not None and max(counts) > info.capacity:
            raise InputError(f"the matrix asks for {max(counts)} workers, but site '{info.name}' offers "
                             f"{info.capacity} ({info.capacity_from})", path=bench.source, field="matrix.workers",
                             fix=f"ask for at most {info.capacity} workers on this site, or use `max`")
        if "hpc" in m.modes and not info.supports_hpc and any(bench.workloads[w].kind == "emc" for w in m.workloads):
            raise InputError(f"site '{info.name}' (provider {info.provider}) cannot run EMC in HPC mode (no MPI "
                             "launch)", path=bench.source, field="matrix.modes",
                             fix="set matrix.modes: [htc] for this site, or bench it in a matrix of its own")
        _check_one_process_hpc(bench, info, max(counts))
        for name in m.workloads:
            work = bench.workloads[name]
            _check_visible(bench, name, work, info)
            available = dataset_frames(work) if work.kind == "emc" else None
            for scaling in m.scaling:
                for w in counts:
                    frames, per_shard = _frames(bench, name, work, scaling, w, max(counts), available)
                    modes = ["tasks"] if work.kind == "phasing" else list(m.modes)
                    for mode in modes:
                        point = Point(info.name, info.provider, mode, w, name, work.kind, scaling, frames, per_shard,
                                      m.iterations, m.repeats, m.device,
                                      workload_spec=work.model_dump(mode="json"))
                        point.fingerprint = fingerprint(point, info)
                        points.append(point)
    absent = sorted(set(bench.model.calibrate_workers or []) - {p.workers for p in points})
    if absent:
        raise InputError(f"model.calibrate_workers names {absent[0]} workers, a count no point of the matrix has "
                         f"({', '.join(map(str, sorted({p.workers for p in points})))})", path=bench.source,
                         field="model.calibrate_workers", fix="name worker counts of matrix.workers")
    return points


def _frames(bench: Bench, name: str, work: Workload, scaling: str, workers: int, most: int,
            available: int | None) -> tuple[int | None, int | None]:
    """(frames of one run, frames per shard) of an EMC point; InputError when the data set is too small."""
    if work.kind == "phasing":
        return None, None
    total = available if available is not None else work.simulate.frames * (most if scaling == "weak" else 1)
    if scaling == "strong":
        frames = work.frames or (work.simulate.frames if work.simulate else total)
        per_shard = work.frames_per_shard or math.ceil(frames / most)
    else:
        per_worker = work.frames or (work.simulate.frames if work.simulate else total // most)
        if per_worker < 1:   # (a ZeroDivisionError below)
            raise InputError(f"workload '{name}' (weak scaling): the data set's {total} frame(s) cannot give each "
                             f"of {most} workers a frame", path=bench.source, field="matrix.workers",
                             fix=f"use at most {total} workers for it, or a larger data set")
        frames = per_worker * workers
        per_shard = work.frames_per_shard or per_worker
    if available is not None and frames > available:
        raise InputError(f"workload '{name}' ({scaling} scaling, {workers} workers) needs {frames} frames; the data "
                         f"set holds {available}", path=bench.source, field=f"workloads.{name}.frames",
                         fix=f"ask for at most {available // (workers if scaling == 'weak' else 1)} frames"
                         if available // (workers if scaling == "weak" else 1) >= 1 else
                         f"use at most {available} workers for it, or a larger data set")
    shards = math.ceil(frames / per_shard)
    if shards < workers:
        raise InputError(f"workload '{name}' ({scaling}, {workers} workers): {frames} frames in shards of "
                         f"{per_shard} make {shards} shard(s), fewer than the workers", path=bench.source,
                         field=f"workloads.{name}.frames_per_shard", fix=f"set it to at most {frames // workers}")
    return frames, per_shard
