"""The benchmark file (BENCH.yaml): validated like the pipeline and site files.

Unknown keys, bad values and names that refer to nothing stop with one line naming the file,
the YAML line and the key (:func:`load_bench`).  Relative paths are relative to the file.

```yaml
name: small                 # the matrix's label; results go to bench-<name>/ beside this file (or --out)
matrix:
  sites: [local.yaml]       # site files (relative to this file); `--site` replaces them; none: this machine
  modes: [hpc, htc]         # hpc: EMC as one MPI job; htc: one task per shard per iteration
  workers: [1, 2]           # or `max`: 1, 2, 4, ... up to what each site offers
  scaling: [strong]         # strong: the same frames on every worker count; weak: frames per worker
  workloads: [small]        # names from `workloads:` below
  iterations: 3             # EMC iterations per run
  repeats: 3                # runs per point (medians and spread over them)
  device: cpu               # cpu | gpu (the pipeline's device)
model: {calibrate_workers: [1]}  # or calibrate_sites: [local]; the other points check the model
workloads:
  small: {dataset: dragonfly-small, num_div: 4, frames_per_shard: 250}
  sim: {simulate: {frames: 2000, pixels: 64, photons: 1000}, num_div: 3}
  starts: {kind: phasing, dataset: dragonfly-small, starts: 4, crop_to: 64}
```
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from spibatch.errors import InputError
from spibatch.yaml_models import Section, error_line, read_yaml_mapping

REFERENCE = "the bench file's keys are listed in `spibatch.bench.settings` (and README, `spibatch bench`)"
DEFAULT_RECIPE = "(HIO() ** 20 * ShrinkWrap()) ** 2 * ER() ** 20"


class Simulate(Section):
    """A simulated data set (the simulate stage on the shipped 1EI7 structure unless ``pdb`` says otherwise)."""

    frames: int = Field(1000, ge=1, description="patterns (strong scaling: in all; weak: per worker)")
    pixels: int = Field(64, ge=8, description="detector pixels along each side")
    photons: float = Field(1000.0, gt=0, description="mean photons per frame")
    pdb: Path | None = Field(None, description="PDB/mmCIF structure; default: the shipped 1EI7")
    photon_energy_ev: float = Field(6000.0, gt=0, description="photon energy")
    detector_distance_m: float = Field(0.3, gt=0, description="sample to detector distance")
    pixel_size_m: float = Field(0.512e-3, gt=0, description="pixel pitch (the demo's is 0.512 mm at 64 pixels)")
    seed: int = Field(1, ge=0, description="simulation seed")


EMC_ONLY = ("photons", "detector", "simulate", "frames", "num_div", "frames_per_shard", "model_size", "need_scaling")
PHASING_ONLY = ("intensity", "voxel_size_per_m", "crop_to", "starts", "recipe")


class Workload(Section):
    """One workload: EMC on a data set (shared, a folder, or simulated) or phasing (many starts)."""

    kind: Literal["emc", "phasing"] = Field("emc", description="emc: EMC iterations; phasing: independent starts")
    dataset: str | None = Field(None, description="a shared data set's name (dragonfly-small, dragonfly-medium; "
                                "found in $SPIBATCH_SHARED_DATASETS) or a folder holding photons.emc and det_sim.h5")
    photons: Path | None = Field(None, description="a photons file (with detector), instead of dataset")
    detector: Path | None = Field(None, description="the detector file of photons")
    simulate: Simulate | None = Field(None, description="simulate the data once (in the bench folder)")
    frames: int | None = Field(None, ge=1, description="strong scaling: frames used (default: all); weak: frames "
                               "per worker (default: all / the largest worker count)")
    num_div: int = Field(4, ge=1, description="EMC rotations: 10 (5 n^3 + n)")
    frames_per_shard: int | None = Field(None, ge=1, description="default: strong, the frames / the largest worker "
                                         "count (the same shards at every count); weak, the frames per worker")
    model_size: int | None = Field(None, ge=3, description="EMC model edge (default: the detector's)")
    need_scaling: bool = Field(True, description="EMC fits a scale per frame")
    # phasing
    intensity: Path | None = Field(None, description="phasing: the 3-D intensity (default: the data set's truth)")
    voxel_size_per_m: float | None = Field(None, gt=0, description="phasing: Fourier voxel when the file lacks it")
    crop_to: int | None = Field(None, ge=8, description="phasing: the central crop_to^3 of the intensity")
    starts: int = Field(4, ge=1, description="phasing: independent starts (tasks)")
    recipe: str = Field(DEFAULT_RECIPE, description="phasing: the recipe of every start")

    @model_validator(mode="after")
    def _one_source(self) -> "Workload":
        sources = [k for k in ("dataset", "photons", "simulate") if getattr(self, k) is not None]
        if self.kind == "emc" and len(sources) != 1:
            raise ValueError("an emc workload needs exactly one of dataset, photons (+ detector) and simulate")
        if self.photons is not None and self.detector is None:
            raise ValueError("photons needs detector")
        if self.kind == "phasing" and self.intensity is None and self.dataset is None:
            raise ValueError("a phasing workload needs intensity or dataset (its true intensity)")
        other = PHASING_ONLY if self.kind == "emc" else EMC_ONLY
        unused = [k for k in other if k in self.model_fields_set]
        if unused:
            raise ValueError(f"{unused[0]} is {'a phasing' if self.kind == 'emc' else 'an EMC'} setting, which "
                             f"{'an EMC' if self.kind == 'emc' else 'a phasing'} workload does not use: remove it, or set kind: "
                             f"{'phasing' if self.kind == 'emc' else 'emc'}")
        return self

    @field_validator("recipe")
    @classmethod
    def _recipe(cls, v: str) -> str:
        from spibatch.phasing.operators import parse_recipe

        parse_recipe(v)
        return v


class Matrix(Section):
    """What is crossed with what."""

    sites: list[Path] = Field(default_factory=list, description="site files; none: the embedded local site")
    modes: list[Literal["hpc", "htc"]] = Field(["hpc", "htc"], min_length=1, description="EMC modes")
    workers: list[int] | Literal["max"] = Field([1, 2], description="worker counts, or max: powers of two up to "
                                                "what each site offers")
    scaling: list[Literal["strong", "weak"]] = Field(["strong"], min_length=1, description="strong and/or weak")
    workloads: list[str] = Field(min_length=1, description="names of the workloads to run")
    iterations: int = Field(3, ge=1, le=10_000, description="EMC iterations per run (a bench times iterations: "
                            "more than a few tens add nothing but hours)")
    repeats: int = Field(3, ge=1, le=100, description="runs per point")
    device: Literal["cpu", "gpu"] = Field("cpu", description="the pipeline's device")
    timeout_s: float = Field(3600.0, gt=0, le=7 * 86400, description="one run's limit (at most a week); a run past "
                             "it fails its point")

    @field_validator("modes", "scaling", "workloads")
    @classmethod
    def _once(cls, v):
        """Each value once: a repeated one made the same point twice, the second measurement replacing the first."""
        twice = sorted({x for x in v if v.count(x) > 1})
        if twice:
            raise ValueError(f"{', '.join(map(str, twice))} listed twice")
        return v

    @field_validator("workers")
    @classmethod
    def _workers(cls, v):
        if isinstance(v, list) and (not v or any(w < 1 for w in v)):
            raise ValueError("a list of positive worker counts, or max")
        twice = sorted({w for w in v if v.count(w) > 1}) if isinstance(v, list) else []
        if twice:      # as modes, scaling and workloads: a value once
            raise ValueError(f"{', '.join(map(str, twice))} listed twice")
        return sorted(v) if isinstance(v, list) else v


class ModelSplit(Section):
    """Which measured points calibrate the performance model; every other point checks it."""

    calibrate_workers: list[int] | None = Field(None, description="worker counts that calibrate (default: the "
                                                "smallest of the matrix)")
    calibrate_sites: list[str] | None = Field(None, description="site names that calibrate (e.g. [local]: "
                                              "checked on the other sites)")


class Bench(Section):
    """The whole benchmark file."""

    name: str = Field("bench", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=40,
                      description="label: lower-case letters, digits and '-'")
    matrix: Matrix
    workloads: dict[str, Workload] = Field(min_length=1, description="workload name -> definition")
    model: ModelSplit = Field(default_factory=ModelSplit, description="the model's calibration and check split")
    source: Path | None = Field(None, exclude=True, description="(set by load_bench) the file")

    @model_validator(mode="after")
    def _known(self) -> "Bench":
        for name in self.workloads:    # a part of every point's folder, where `spibatch run` works
            if not re.fullmatch(r"[A-Za-z0-9][-A-Za-z0-9_.]*", name):
                raise ValueError(f"workload name '{name}': letters, digits, '-', '_' and '.' only")
        for name in self.matrix.workloads:
            if name not in self.workloads:
                raise ValueError(f"unknown workload '{name}' in matrix.workloads (defined: "
                                 f"{', '.join(self.workloads)})")
        return self


def shared_datasets(base: Path | None = None) -> Path:
    """Where shared data sets are found by name: $SPIBATCH_SHARED_DATASETS; else ``shared/datasets`` beside the
    source checkout spibatch runs from, or beside a folder above ``base`` (the bench file's: a checkout whose
    package is installed into a virtual environment)."""
    env = os.environ.get("SPIBATCH_SHARED_DATASETS")
    if env:
        return Path(env)
    beside_package = Path(__file__).resolve().parents[3] / "shared" / "datasets"
    above = [folder / "shared" / "datasets" for folder in Path(base).resolve().parents] if base else []
    return next((p for p in [beside_package, *above] if p.is_dir()), beside_package)


def _line_of(lines: dict, *keys) -> str:
    for n in range(len(keys), 0, -1):
        if keys[:n] in lines:
            return f"line {lines[keys[:n]]}: {'.'.join(map(str, keys))}"
    return ".".join(map(str, keys))


def load_bench(path: str | Path) -> Bench:
    """Read and validate BENCH.yaml; paths made absolute; data sets named resolved.  InputError (one line)."""
    path = Path(path)
    data, lines = read_yaml_mapping(path, field="BENCH.yaml", missing_fix="give the path of a bench YAML file",
                                    top_fix="start the file with `name:`, `matrix:` and `workloads:`", holds="keys",
                                    pipe=False)
    try:
        bench = Bench.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        if err["type"] == "value_error" and "unknown workload" in err["msg"]:
            wanted = next(n for n in bench_names(data) if n not in (data.get("workloads") or {}))
            index = data["matrix"]["workloads"].index(wanted)
            raise InputError(err["msg"].removeprefix("Value error, "), path=path,
                             field=_line_of(lines, "matrix", "workloads", index),
                             fix="define it under workloads: or remove it from the matrix") from None
        raise error_line(exc, data, lines, path, Bench, reference=REFERENCE) from None
    bench.source = path.resolve()
    base = path.resolve().parent
    bench.matrix.sites = [(base / s).resolve() for s in bench.matrix.sites]
    for name, work in bench.workloads.items():
        for key in ("photons", "detector", "intensity"):
            if getattr(work, key) is not None:
                setattr(work, key, (base / getattr(work, key)).resolve())
        if work.simulate is not None and work.simulate.pdb is not None:
            work.simulate.pdb = (base / work.simulate.pdb).resolve()
        if work.dataset is not None:
            work.dataset = str(resolve_dataset(work.dataset, base, path, _line_of(lines, "workloads", name,
                                                                                   "dataset")))
    return bench


def bench_names(data: dict) -> list[str]:
    matrix = data.get("matrix") or {}
    return [str(n) for n in (matrix.get("workloads") or [])]


def resolve_dataset(name: str, base: Path, path: Path | None = None, field: str | None = None) -> Path:
    """A data set by shared name or folder (relative to ``base``); InputError when it is neither."""
    candidate = (base / name).resolve()
    if (candidate / "photons.emc").is_file():
        return candidate
    folder = shared_datasets(base)
    shared = folder / name
    if (shared / "photons.emc").is_file():
        return shared.resolve()
    known = sorted(p.parent.name for p in folder.glob("*/photons.emc")) if folder.is_dir() else []
    raise InputError(f"unknown data set '{name}': no photons.emc in {candidate} nor in {shared}", path=path,
                     field=field, fix=f"give a folder with photons.emc and det_sim.h5, or one of the shared sets "
                     f"({', '.join(known) or 'none found: set SPIBATCH_SHARED_DATASETS'})")
