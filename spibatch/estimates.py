"""What a run will need, known before it starts: memory and time lower bounds, and plausible physics.

Each estimate counts only the arrays a stage must hold at the same time, from shapes the config
and the input headers already give, and takes its time from floors set well below the rates
measured in BENCHMARKS.md.  So every number here is a *lower bound*: when it exceeds the machine
the run cannot fit and is refused with one line (the size in bytes and human units, and the
machine's memory with where that number came from); when it does not, nothing is promised.

Memory of "the machine" (:func:`machine_memory`): the smaller of the physical memory
(``/proc/meminfo`` MemTotal, else ``os.sysconf``) and this process's cgroup limit (a Slurm job,
a container), or the per-worker memory a site file declares (:func:`site_memory`).

Physics that is allowed but unlikely (6 eV photons: keV meant) is not refused: :func:`implausible`
gives one warning line per value, with the range XFEL single-particle imaging uses.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spibatch.errors import InputError

log = logging.getLogger("spibatch")

KIB, MIB, GIB, TIB, PIB, EIB = 1 << 10, 1 << 20, 1 << 30, 1 << 40, 1 << 50, 1 << 60
YEAR_S = 365.0 * 86400.0
TIME_LIMIT_S = YEAR_S            # a run whose time floor is longer than this is refused
RUNTIME_BYTES = 100 * MIB        # Python, NumPy, Numba and spibatch loaded (measured ~200 MB)

# Time floors, per core (CPU) or per device (GPU): about 1/20 to 1/30 of what BENCHMARKS.md measured, so a
# time estimate is a lower bound even on a faster machine.
SIMULATE_S_PER_PIXEL_FRAME = 2e-9          # measured 45.5 ns per pixel and frame (one thread; the loop is serial)
EMC_CORE_S_PER_PIXEL_ROTATION = 10e-9      # measured ~300 core-ns per used pixel and rotation (medium set)
EMC_GPU_S_PER_PIXEL_ROTATION = 1e-11
PHASING_CORE_S_PER_VOXEL = 1e-9            # per voxel and iteration; measured 16.6 core-ns (HIO 128^3)
PHASING_GPU_S_PER_VOXEL = 1e-11            # the H100 figure is 4.4e-11 (0.73 ms at 256^3)

# bytes that must exist at once, per unit (see each estimate)
DETECTOR_BYTES_PER_PIXEL = 56      # q (24) and corr (8) float64, mask, the slicer's float32 q and weights, indices
PATTERN_BYTES = 48                 # per simulated pattern: quaternion, fluence, photon count (returned whole)
PHOTONS_FILE_BYTES_PER_FRAME = 48  # three HDF5 variable-length row descriptors of 16 bytes
ROTATION_BYTES = 112               # quaternion (32), matrix (72), weight (8), float64
EMC_MODEL_BYTES_PER_VOXEL = 41     # the model (float64), the merge sums (2 x float32, reduced in float64), the
                                   # new model and the written volume: the peak's growth from 301^3 to 451^3
                                   # (16 let 800^3-1160^3 models through on 23.5 GiB: killed in iteration 1)
EMC_RANK_BYTES_PER_VOXEL = 24      # more per MPI rank: the float64 (2, M^3) buffer of the Allreduce (54-62 B
                                   # measured a rank at 201^3-301^3)
EMC_FRAME_BYTES = 24               # per frame: photon count, scale, beta (float64)
EMC_SHARD_BYTES_PER_FRAME = 32 * 12    # likelihoods (float64) and probabilities (float32) of >= 32 rotations
PHASING_BYTES_PER_VOXEL = 20       # the intensity read (float64), the iterate, its spectrum and the amplitudes
PHASING_START_BYTES_PER_VOXEL = 5  # every start's density (float32) and support (bool), kept for the merge
VALIDATE_BYTES_PER_VOXEL = 96      # per volume, a floor: as read, float64 copies, the aligned copy, its transform
                                   # (105-131 measured at 64^3-128^3, peak RSS, the process's own ~150 MB left out)

# (low, high, unit, what SPI uses): a value outside gives a warning, not an error
PLAUSIBLE = {
    "photon_energy_ev": (1_000.0, 25_000.0, "eV", "XFEL single-particle imaging uses ~1-25 keV"),
    "wavelength_m": (4.9e-11, 1.25e-9, "m", "0.5-12.4 A, i.e. ~1-25 keV photons"),
    "detector_distance_m": (0.03, 10.0, "m", "SPI detectors sit ~0.1-10 m from the sample"),
    "pixel_size_m": (1e-5, 2e-3, "m", "detector pixels are ~10 um-2 mm (AGIPD 200 um, Jungfrau 75 um)"),
}


DENSITY_VOXEL_M = (1e-13, 1e-2)   # a density voxel: 0.001 A .. 1 cm, every one SPI can make and MRC can write

# (low, high, unit): outside, a value is refused (a unit mistake by orders of magnitude, or no X-ray at all)
POSSIBLE = {
    "photon_energy_ev": (10.0, 1e7, "eV"),
    "wavelength_m": (1.2e-13, 1.3e-7, "m"),
    "detector_distance_m": (1e-4, 1e4, "m"),
    "pixel_size_m": (1e-8, 1.0, "m"),
}


def human_bytes(n: float) -> str:
    """``n`` bytes in binary units, B to EiB (3 significant digits)."""
    for unit, size in (("EiB", EIB), ("PiB", PIB), ("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def human_seconds(s: float) -> str:
    """``s`` seconds as seconds, minutes, hours, days or years."""
    for unit, size in (("years", YEAR_S), ("days", 86400.0), ("hours", 3600.0), ("minutes", 60.0)):
        if s >= size:
            return f"{s / size:.3g} {unit}"
    return f"{s:.3g} s"


def machine_memory() -> tuple[int, str]:
    """(bytes, where the number came from): physical memory, or this process's cgroup limit when lower."""
    total, source = None, ""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    total, source = int(line.split()[1]) * KIB, "/proc/meminfo MemTotal"
                    break
    except (OSError, ValueError, IndexError):
        pass
    if total is None:
        try:
            total, source = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "os.sysconf"
        except (OSError, ValueError, AttributeError):
            total, source = 1 << 62, "unknown"
    limit = _cgroup_limit()
    if limit is not None and limit < total:
        return limit, "this process's cgroup memory limit"
    return total, source


def _cgroup_limit() -> int | None:
    """The memory limit of this process's cgroup (v2 memory.max or v1 memory.limit_in_bytes), None if none."""
    relative = ""
    try:
        with open("/proc/self/cgroup", encoding="ascii") as fh:
            for line in fh:
                parts = line.strip().split(":", 2)
                if len(parts) == 3 and parts[0] == "0":
                    relative = parts[2].lstrip("/")
    except OSError:
        pass
    candidates = [Path("/sys/fs/cgroup") / relative / "memory.max", Path("/sys/fs/cgroup/memory.max"),
                  Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")]
    for path in candidates:
        try:
            text = path.read_text(encoding="ascii").strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return None


def machine_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class Budget:
    """What the work may use: memory per process (bytes, and where that number came from), cores and devices."""

    memory: int
    memory_source: str
    cores: int
    devices: int = 1
    where: str = "this machine"
    per_node: int = 1          # worker processes (MPI ranks, HTC workers) that share that memory
    hpc: bool = False          # they are MPI ranks (each also holds the Allreduce buffer)

    @classmethod
    def here(cls) -> "Budget":
        memory, source = machine_memory()
        return cls(memory, source, machine_cores())

    def parallel(self, gpu: bool) -> int:
        """Cores (CPU work) or devices (GPU work) the time estimate may divide by."""
        return self.devices if gpu else self.cores

    def sharing(self, ranks: int = 1, shards: int | None = None, following: bool = False) -> dict:
        """:func:`emc`'s ``ranks`` / ``workers``: ``ranks`` MPI ranks of this process's ``mpirun``, else the
        site's processes sharing a node's memory, at most ``shards``, one fewer MPI rank while following a source
        (a worker is kept for the previews): a lower bound."""
        if ranks > 1 or self.per_node <= 1:
            return {"ranks": ranks}
        n = max(1, min(self.per_node, max(1, shards or self.per_node)) - (self.hpc and following))
        return {"ranks": n} if self.hpc else {"workers": n}


@dataclass(frozen=True)
class Part:
    """``bytes`` held by ``label``, set by the config key (or input) ``field``."""

    label: str
    bytes: float
    field: str


@dataclass
class Estimate:
    """A stage's lower bounds: memory parts held at once, and seconds (None: not estimated)."""

    stage: str
    parts: list[Part]
    seconds: float | None = None
    time_field: str = ""
    fixes: dict[str, str] = field(default_factory=dict)   # field -> what to change
    gpu: bool = False

    @property
    def bytes(self) -> float:
        return RUNTIME_BYTES + sum(p.bytes for p in self.parts)

    def check(self, path, budget: Budget | None = None, paths: dict | None = None) -> "Estimate":
        """``self``, or one InputError when the memory or the time floor cannot fit ``budget`` (default: here).

        The line names ``path`` (the pipeline file), or ``paths[field]`` when the field that sets the size is a
        data file's (``{"phasing.intensity": its path}``)."""
        budget = budget or Budget.here()
        paths = paths or {}
        if self.bytes > budget.memory:
            top = max(self.parts, key=lambda p: p.bytes)
            held = ", ".join(f"{p.label} {human_bytes(p.bytes)}" for p in sorted(self.parts, key=lambda p: -p.bytes)
                             if p.bytes >= 0.01 * self.bytes)
            raise InputError(f"the {self.stage} stage needs at least {human_bytes(self.bytes)} ({self.bytes:.3g} "
                             f"bytes: {held}) but {budget.where} has {human_bytes(budget.memory)} of memory "
                             f"({budget.memory_source})", path=paths.get(top.field, path), field=top.field,
                             fix=self.fixes.get(top.field, f"lower {top.field}"))
        if self.seconds is not None and self.seconds > TIME_LIMIT_S:
            raise InputError(f"the {self.stage} stage would take at least {human_seconds(self.seconds)} on "
                             f"{budget.parallel(self.gpu)} {'GPUs' if self.gpu else 'cores'} of {budget.where} (a "
                             "floor well below the measured speed; the limit is a year)",
                             path=paths.get(self.time_field, path), field=self.time_field,
                             fix=self.fixes.get(self.time_field, f"lower {self.time_field}"))
        return self


# ---------------------------------------------------------------- geometry

@dataclass(frozen=True)
class FlatGeometry:
    """What a flat square detector implies, computed without building it: the model grid edge (voxels, as
    ``Detector.flat(...).model_size()``), the pixels, the used (mask 0) pixels, the distance in pixels."""

    pixels: int
    model_size: int
    num_pix: int
    used_pixels: int
    detd_pixels: float


def flat_geometry(pixels: int, pixel_size_m: float, distance_m: float, beamstop_radius_pixels: float = 0.0
                  ) -> FlatGeometry:
    """The numbers of ``Detector.flat(pixels, pixel_size_m, distance_m, ...)`` from its corner pixel alone
    (the model edge bit for bit: the same float operations on the pixel farthest from the beam)."""
    n = int(pixels)
    detd = float(distance_m) / float(pixel_size_m)
    centre = (n - 1) / 2.0
    x = np.array([0.0 - centre])
    y = np.array([0.0 - centre])
    length = np.sqrt(x * x + y * y + detd * detd)
    ewald = detd
    q = np.stack([x * ewald / length, y * ewald / length, detd * ewald / length - ewald], axis=1)
    qmax = float(np.sqrt((q ** 2).sum(axis=1)).max())
    used = max(0.0, math.pi * (centre ** 2 - float(beamstop_radius_pixels) ** 2))
    return FlatGeometry(n, 2 * int(np.ceil(qmax)) + 1, n * n, int(0.9 * used), detd)


def _check_possible(geometry, path, key: str, names: tuple[str, ...]) -> None:
    """InputError for a value of ``names`` outside :data:`POSSIBLE` (with :func:`implausible`'s unit hint)."""
    for name in names:
        low, high, unit = POSSIBLE[name]
        value = getattr(geometry, name, None)
        if value is not None and not low <= value <= high:
            hint = implausible({name: value}, key)[0].split("?")[0].rpartition("; ")[2]
            raise InputError(f"{value:g} {unit} is outside {low:g}-{high:g} {unit}, beyond any X-ray imaging "
                             f"(SPI: {PLAUSIBLE[name][3]})", path=path, field=f"{key}.{name}",
                             fix=(hint + "?" if hint.startswith("did you mean") else f"give it in {unit}"))


def check_flat(geometry, path, *, key: str = "geometry") -> FlatGeometry:
    """A flat detector's geometry (``config.Geometry`` or anything with its fields) that EMC and phasing can
    use, or one InputError: the detector nearer than one pixel, a model grid too small to phase, no pixel
    left outside the beam stop."""
    _check_possible(geometry, path, key, ("photon_energy_ev", "wavelength_m", "pixel_size_m"))
    flat = flat_geometry(geometry.detector_pixels, geometry.pixel_size_m, geometry.detector_distance_m,
                         min(geometry.beamstop_radius_pixels, geometry.detector_pixels))   # (1e300 squared overflows)
    if flat.detd_pixels < 1.0:
        raise InputError(f"{geometry.detector_distance_m:g} m is {flat.detd_pixels:.3g} pixels of "
                         f"{geometry.pixel_size_m:g} m: the detector would touch the sample", path=path,
                         field=f"{key}.detector_distance_m",
                         fix="give the distance in metres (SPI: ~0.1-10 m) and the pixel pitch in metres")
    _check_possible(geometry, path, key, ("detector_distance_m",))    # too near: the line above says why
    centre = (flat.pixels - 1) / 2.0
    if flat.model_size < 9:
        near = flat.detd_pixels < centre
        raise InputError(f"a {flat.pixels} x {flat.pixels} detector {geometry.detector_distance_m:g} m away "
                         f"samples a model grid of only {flat.model_size}^3 voxels (phasing needs at least 9)",
                         path=path, field=f"{key}.{'detector_distance_m' if near else 'detector_pixels'}",
                         fix="check the distance (metres) and the pixel pitch (metres)" if near else
                         "use a detector of more pixels")
    if geometry.beamstop_radius_pixels >= centre:
        raise InputError(f"a beam stop of radius {geometry.beamstop_radius_pixels:g} pixels covers every pixel "
                         f"EMC orients frames with (the detector's inscribed circle has radius {centre:g})",
                         path=path, field=f"{key}.beamstop_radius_pixels",
                         fix=f"use a radius well below {centre:g} pixels")
    return flat


def implausible(values: dict[str, float | None], key: str = "geometry") -> list[str]:
    """One warning line for each value outside what XFEL single-particle imaging uses (:data:`PLAUSIBLE`)."""
    lines = []
    for name, (low, high, unit, what) in PLAUSIBLE.items():
        value = values.get(name)
        if value is None or low <= value <= high:
            continue
        hint = ""
        for factor, meant in ((1e3, "keV given as eV"), (1e-3, "mm given as m"), (1e-10, "Angstrom given as m"),
                              (1e-6, "um given as m"), (1e-9, "nm given as m")):
            if low <= value * factor <= high and (unit == "eV") == (factor == 1e3):
                hint = f"; did you mean {value * factor:g} ({meant})?"
                break
        lines.append(f"{key}.{name}: {value:g} {unit} is outside {low:g}-{high:g} {unit} ({what}){hint}")
    return lines


def warn_implausible(values: dict[str, float | None], path, key: str = "geometry") -> list[str]:
    """Log :func:`implausible`'s lines as warnings (one line each, the file named); returns them."""
    lines = implausible(values, key)
    for line in lines:
        log.warning("spibatch: warning: %s%s", f"{path}: " if path else "", line)
    return lines


def geometry_values(geometry) -> dict[str, float | None]:
    return {name: getattr(geometry, name, None) for name in PLAUSIBLE}


# ---------------------------------------------------------------- the stages

def simulation(flat: FlatGeometry, num_patterns: int, mean_photons_per_frame: float | None = None,
               chunk_frames: int = 1024) -> Estimate:
    """The simulate stage: the detector, the intensity with its corner table (32 (M+2)^3 bytes) and the
    volume, every pattern's metadata and, with a mean photon count, the photons of one slice block (16 bytes
    each while they are drawn) and of one chunk (8 bytes each); time: every unmasked pixel of every pattern."""
    m = flat.model_size
    parts = [Part("detector arrays", DETECTOR_BYTES_PER_PIXEL * flat.num_pix, "geometry.detector_pixels"),
             Part(f"the {m}^3 intensity and its interpolation table", 8 * m ** 3 + 36 * (m + 2) ** 3,
                  "geometry.detector_pixels"),
             Part("per-pattern orientations and counts", PATTERN_BYTES * num_patterns, "simulation.num_patterns")]
    if mean_photons_per_frame is not None:
        block = max(1, (1 << 16) // max(flat.num_pix, 1))          # frames per slice block (sim.patterns)
        parts += [Part("the photons of one slice block", 16 * mean_photons_per_frame * min(block, num_patterns),
                       "simulation.mean_photons_per_frame"),
                  Part("the photons of one chunk", 8 * mean_photons_per_frame * min(chunk_frames, num_patterns),
                       "simulation.chunk_frames")]
    pixels = max(flat.used_pixels, 1)
    return Estimate("simulate", parts, seconds=SIMULATE_S_PER_PIXEL_FRAME * pixels * num_patterns,
                    time_field="simulation.num_patterns",
                    fixes={"geometry.detector_pixels": f"use fewer pixels ({flat.pixels} per side: {flat.num_pix:,} "
                           f"pixels, a {m}^3 model)",
                           "simulation.num_patterns": f"simulate fewer patterns ({num_patterns:,} asked)",
                           "simulation.mean_photons_per_frame": "ask for fewer photons per frame (SPI: ~10^2-10^4)",
                           "simulation.chunk_frames": "write fewer frames per chunk (the default is 1024)"})


def emc(model_size: int, num_rotations: int, num_frames: int, frames_per_shard: int, used_pixels: int,
        iterations: int, *, model_field: str = "emc.model_size", frames_field: str = "emc.photons",
        gpu: bool = False, parallel: int = 1, volumes: int = 1, rotations_field: str = "emc.num_div",
        ranks: int = 1, workers: int = 1) -> Estimate:
    """The emc stage, per process (every MPI rank and HTC task holds the model; ``ranks`` > 1: the MPI ranks of
    ``mpirun`` on this machine or of one node of a site, each holding it and its Allreduce buffer; ``workers``
    > 1: HTC workers sharing one node, each holding it): the model and its merge sums, the rotations, the
    per-frame numbers, one shard's likelihoods; time: every used pixel of every
    rotation in every iteration (the expand step alone).  With modes, ``volumes`` model volumes (num_modes +
    nonrot_modes) and ``num_rotations`` the orientations of all modes.  rotations_field: the key that sets
    them (``emc.refine.num_div`` for a coarse-to-fine search's fine grid, sized as a whole)."""
    m, shard = model_size, min(frames_per_shard, num_frames)
    per_voxel = (EMC_MODEL_BYTES_PER_VOXEL + (EMC_RANK_BYTES_PER_VOXEL if ranks > 1 else 0)) * max(ranks, 1)
    per_voxel *= max(workers, 1)
    on = (f" on each of {ranks} MPI ranks" if ranks > 1 else f" in each of {workers} workers" if workers > 1
          else "")
    model = (Part(f"the {m}^3 model and merge sums{on}", per_voxel * m ** 3, model_field) if volumes == 1
             else Part(f"{volumes} model volumes of {m}^3 and their merge sums{on}",
                       per_voxel * volumes * m ** 3, "emc.num_modes"))
    parts = [model,
             Part(f"{num_rotations:,} rotations", ROTATION_BYTES * num_rotations, rotations_field),
             Part(f"{num_frames:,} frames' scales and counts", EMC_FRAME_BYTES * num_frames, frames_field),
             Part(f"one shard of {shard:,} frames", EMC_SHARD_BYTES_PER_FRAME * shard, "emc.frames_per_shard")]
    rate = (EMC_GPU_S_PER_PIXEL_ROTATION if gpu else EMC_CORE_S_PER_PIXEL_ROTATION) / max(parallel, 1)
    per_iteration = rate * num_rotations * max(used_pixels, 1)
    field_ = rotations_field if per_iteration * 100 > TIME_LIMIT_S else "emc.iterations"
    return Estimate("emc", parts, seconds=per_iteration * iterations, time_field=field_, gpu=gpu,
                    fixes={"emc.num_div": f"use a smaller num_div ({num_rotations:,} rotations asked; num_div 10 "
                           "gives 50 100)", "emc.refine.num_div": f"use a smaller refine.num_div "
                           f"({num_rotations:,} rotations asked; num_div 10 gives 50 100)", "emc.iterations": f"run fewer iterations ({iterations:,} asked)",
                           "emc.model_size": "leave emc.model_size out (the detector's own size) or lower it",
                           "emc.detector": f"check the detector file's qx, qy, qz (in voxels of the model grid: the "
                           f"largest |q| sets the {m}^3 model), or set emc.model_size",
                           "emc.num_modes": f"use fewer modes ({volumes} volumes asked: num_modes + nonrot_modes)",
                           "emc.frames_per_shard": "use the default frames_per_shard (4096)"})


def phasing(edge: int, num_starts: int, iterations: int, *, edge_field: str = "phasing.intensity",
            gpu: bool = False, parallel: int = 1, read_voxels: int = 0) -> Estimate:
    """The phase stage: the intensity, one start's iterate and spectrum, every start's density and support
    (kept for the merge); time: every voxel of every iteration of every start."""
    voxels = edge ** 3
    parts = [Part(f"a {edge}^3 reconstruction", PHASING_BYTES_PER_VOXEL * voxels, edge_field),
             Part(f"{num_starts:,} starts' densities", PHASING_START_BYTES_PER_VOXEL * voxels * num_starts,
                  "phasing.num_starts")]
    if read_voxels:
        parts.append(Part("the intensity as read (float64)", 8 * read_voxels, "phasing.intensity"))
    rate = (PHASING_GPU_S_PER_VOXEL if gpu else PHASING_CORE_S_PER_VOXEL) / max(parallel, 1)
    return Estimate("phase", parts, seconds=rate * voxels * iterations * num_starts, time_field="phasing.num_starts",
                    gpu=gpu,
                    fixes={"phasing.num_starts": f"use fewer starts ({num_starts:,} asked)",
                           "phasing.crop_to": "phase a smaller central crop (phasing.crop_to)",
                           "phasing.intensity": "phase a smaller volume (phasing.crop_to)"})


def ingest(num_frames: int, frame_pixels: int, itemsize: int, chunk_frames: int,
           chunk_field: str = "ingest.chunk_frames") -> Estimate:
    """The ingest stage: one block of dense frames as read, and its photon counts."""
    block, one = min(chunk_frames, num_frames), f"one frame of {frame_pixels:,} pixels alone is too large: bin them"
    return Estimate("ingest", [Part(f"a block of {block:,} frames of {frame_pixels:,} pixels",
                                    (itemsize + 4) * block * frame_pixels, chunk_field)],
                    fixes={chunk_field: "read fewer frames at a time (the default is 256)" if block > 1 else one})


def validate(volumes: list[tuple[tuple[int, ...], str]]) -> Estimate:
    """The validate stage comparing two volumes ((shape, config key) each): their copies, alignment and FFTs."""
    parts = [Part(f"a {' x '.join(map(str, shape))} volume", VALIDATE_BYTES_PER_VOXEL * float(np.prod(shape)),
                  field) for shape, field in volumes]
    return Estimate("validate", parts, fixes={field: "compare smaller volumes (crop or bin them first)"
                                              for _, field in volumes})


def free_disk(path: Path) -> int | None:
    """Bytes free on the filesystem that will hold ``path`` (its nearest existing ancestor); None if unknown."""
    import shutil

    path = Path(path).resolve()
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def check_disk(need: float, folder: Path, path, field_: str, what: str) -> None:
    """InputError when ``need`` bytes (a lower bound) exceed the free space where ``folder`` will be."""
    free = free_disk(folder)
    if free is not None and need > free:
        raise InputError(f"{what} needs at least {human_bytes(need)} on disk but {folder} has {human_bytes(free)} "
                         "free", path=path, field=field_, fix=f"lower {field_} or write the run elsewhere")


__all__ = ["Budget", "Estimate", "Part", "FlatGeometry", "flat_geometry", "check_flat", "implausible",
           "warn_implausible", "geometry_values", "machine_memory", "human_bytes", "human_seconds", "simulation",
           "emc", "phasing", "ingest", "check_disk", "free_disk", "TIME_LIMIT_S"]
