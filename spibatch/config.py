"""Pipeline configuration: YAML -> validated pydantic models, and its JSON schema.

Unknown keys are refused.  A mistake is reported as one line with the file,
the YAML line number, the key, what was expected and what was found.
Physical quantities carry their unit in their name (``*_m``, ``*_ev``,
``*_pixels``, ``*_per_m2``).  Relative paths are taken relative to the
directory of the YAML file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, field_validator,
                      model_validator)

from spibatch.errors import InputError
from spibatch.phasing import DEFAULT_RECIPE, DEFAULT_SUPPORT_THRESHOLD

PLANCK_EV_M = 1.239841984e-6  # h c in eV * m: wavelength_m = PLANCK_EV_M / photon_energy_ev


class Section(BaseModel):
    """A config section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Geometry(Section):
    """A flat square detector at a given distance, behind a round beam stop."""

    detector_pixels: int = Field(64, ge=2, description="pixels along each side of the square detector")
    pixel_size_m: float = Field(0.512e-3, gt=0, description="pixel pitch in metres")
    detector_distance_m: float = Field(0.3, gt=0, description="sample to detector distance in metres")
    wavelength_m: float | None = Field(None, gt=0, description="X-ray wavelength in metres (or give photon_energy_ev)")
    photon_energy_ev: float | None = Field(None, gt=0, description="photon energy in eV (or give wavelength_m)")
    beamstop_radius_pixels: float = Field(6.0, ge=0, description="pixels closer than this to the beam are excluded (mask 2)")
    polarization: Literal["x", "y", "none"] = Field("x", description="direction of the beam's linear polarization")

    @model_validator(mode="after")
    def _one_wavelength(self) -> "Geometry":
        if (self.wavelength_m is None) == (self.photon_energy_ev is None):
            raise ValueError("give exactly one of wavelength_m and photon_energy_ev")
        return self

    @property
    def wavelength(self) -> float:
        """Wavelength in metres, from whichever of wavelength_m / photon_energy_ev was given."""
        if self.wavelength_m is not None:
            return self.wavelength_m
        return PLANCK_EV_M / self.photon_energy_ev


class Simulation(Section):
    """Simulated patterns of a PDB structure in random orientations."""

    pdb: Path = Field(description="PDB or mmCIF file of the particle (relative to this YAML file)")
    num_patterns: int = Field(1000, ge=1, description="number of diffraction patterns")
    mean_photons_per_frame: float | None = Field(
        1000.0, gt=0, description="scale the intensity so a frame holds this many photons on average "
        "(set to null and give fluence_photons_per_m2 for an absolute scale)")
    fluence_photons_per_m2: float | None = Field(None, gt=0, description="incident fluence per pulse, photons / m^2")
    fluence_jitter: float = Field(0.0, ge=0, description="relative rms of a per-pattern fluence factor (gamma distributed, mean 1)")
    use_b_factors: bool = Field(True, description="blur each atom by its PDB B-factor")
    assembly: bool = Field(True, description="build the file's first biological assembly (as Dragonfly's "
                           "simulator does); false: the deposited atoms only")
    keep_waters: bool = Field(False, description="keep water molecules")
    seed: int = Field(1, ge=0, description="random seed: the same seed gives byte-identical files")
    chunk_frames: int = Field(1024, ge=1, description="frames simulated and written per block")

    @model_validator(mode="after")
    def _one_scale(self) -> "Simulation":
        if (self.mean_photons_per_frame is None) == (self.fluence_photons_per_m2 is None):
            raise ValueError("give exactly one of mean_photons_per_frame and fluence_photons_per_m2")
        return self


class BetaSchedule(Section):
    """Deterministic annealing: beta is multiplied by ``factor`` every ``period`` iterations.

    As Dragonfly's ``beta_schedule = 2.0 10``: iterations 1-10 use x1, 11-20 x2, 21-30 x4.
    """

    factor: float = Field(2.0, gt=0, description="beta is multiplied by this ...")
    period: int = Field(10, ge=1, description="... every this many iterations")


class EMC(Section):
    """EMC orientation recovery (``spibatch emc`` and the emc stage).

    ``photons`` and ``detector`` are the inputs of ``spibatch emc CONFIG``
    (relative to the YAML file); left out, ``spibatch emc`` asks for them (or,
    with a ``simulation`` section, to run ``spibatch simulate`` first).
    """

    photons: Path | None = Field(None, description="Dragonfly photons file (HDF5 or binary .emc), relative to this YAML file")
    detector: Path | None = Field(None, description="Dragonfly detector file matching the photons, relative to this YAML file")
    start_model: Path | None = Field(None, description="optional start model (M, M, M) in photons per voxel (e.g. an "
                                     "output_NNN.h5); default: a seeded random model")
    num_div: int = Field(4, ge=1, description="600-cell refinement: 10 (5 n^3 + n) rotations (n = 4: 3240)")
    iterations: int = Field(30, ge=1, description="EMC iterations")
    beta: PositiveFloat | Literal["auto"] = Field(
        "auto", description="deterministic-annealing exponent at the first iteration; 'auto': per frame "
        "exp(-6.5 (photons / 1e5) ** 0.15), Dragonfly's empirical rule")
    beta_factor: float = Field(1.0, gt=0, description="multiplies beta (auto or given), as Dragonfly's beta_factor")
    beta_schedule: BetaSchedule | None = Field(default_factory=BetaSchedule,
                                               description="multiply beta by factor every period iterations; null: constant")
    need_scaling: bool = Field(True, description="fit a scale factor per frame")
    friedel_symmetry: bool = Field(False, description="average the model with its centrosymmetric copy every iteration")
    point_group: str | None = Field(None, description="average the model over the particle's point group every "
                                    "iteration: C<n>, D<n> (n-fold axis along z), T, O or I; null: none")
    seed: int = Field(1, ge=0, description="seed of the random start model")
    frames_per_shard: int = Field(4096, ge=1, description="frames per shard step (bounds memory; MPI ranks and HTC "
                                  "tasks get whole shards, so results do not depend on the number of ranks)")
    model_size: int | None = Field(None, ge=3, description="edge of the cubic model grid in voxels; default: the "
                                   "detector's 2 ceil(max |q|) + 1")

    @field_validator("point_group")
    @classmethod
    def _point_group(cls, v: str | None) -> str | None:
        if v is not None:
            from spibatch.emc.symmetry import group_matrices

            group_matrices(v)   # ValueError: unknown point group ...
        return v

    @field_validator("beta", mode="before")
    @classmethod
    def _beta(cls, v: Any) -> Any:
        if v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v == float("inf"):
            raise ValueError("a positive number or 'auto'")
        return float(v)


class Phasing(Section):
    """Phase retrieval (``spibatch phase`` and the phase stage).

    ``intensity`` is the input of ``spibatch phase CONFIG`` (relative to the YAML file):
    our ``output_NNN.h5`` / ``intensity.h5``, Dragonfly's ``output_NNN.h5`` or ``.bin``, an
    HDF5 or MRC volume, centred (q = 0 at index N // 2).  Voxels at 0 are taken as not measured.
    """

    intensity: Path | None = Field(None, description="3-D intensity to phase, relative to this YAML file")
    dataset: str | None = Field(None, description="HDF5 dataset holding the intensity; default: the first of "
                                "intensity, intens, density")
    voxel_size_per_m: PositiveFloat | None = Field(None, description="Fourier voxel size dq in 1/m, when the file "
                                                   "does not carry it (our EMC and simulator files do): the density "
                                                   "voxel is 1 / (N dq)")
    crop_to: int | None = Field(None, ge=8, description="phase the central crop_to^3 of the intensity (e.g. to match "
                                "a truth's grid)")
    fast_fft_size: bool = Field(True, description="pad the intensity with unmeasured voxels to the next edge of the "
                                "same parity with prime factors <= 13 (211 -> 225): prime FFT lengths are several times "
                                "slower; the density's voxel shrinks by the same factor")
    recipe: str = Field(DEFAULT_RECIPE,
                        description="operators run in reading order: HIO, ER, RAAR, DM, ShrinkWrap; '*' then, "
                        "'**' repeats")
    num_starts: int = Field(16, ge=1, description="independent random starts")
    keep_best: int = Field(8, ge=1, description="starts of lowest final Fourier error averaged")
    seed: int = Field(1, ge=0, description="start k uses seed + k")
    positivity: bool = Field(True, description="the density is >= 0 inside the support")
    realness: bool = Field(True, description="the density is real (real-to-complex FFTs, Friedel-averaged data)")
    initial_support_threshold: float = Field(DEFAULT_SUPPORT_THRESHOLD, gt=0, lt=1, description="first support: the smoothed "
                                             "autocorrelation above this fraction of its maximum")
    threads: int | None = Field(None, ge=1, description="threads per start (FFT and kernels); default: all cores")
    fft: Literal["auto", "fftw", "scipy"] = Field("auto", description="FFT library: fftw (pyFFTW, the [fftw] "
                                                  "extra), scipy, or auto (fftw when installed)")

    @field_validator("recipe")
    @classmethod
    def _recipe(cls, v: str) -> str:
        from spibatch.phasing.operators import parse_recipe

        op = parse_recipe(v)     # RecipeError (a ValueError): reported with the line of the key
        if op.iterations() == 0:
            raise ValueError("the recipe has no iteration (HIO, ER, RAAR or DM)")
        return v

    @model_validator(mode="after")
    def _keep(self) -> "Phasing":
        if self.keep_best > self.num_starts:
            raise ValueError(f"keep_best ({self.keep_best}) is more than num_starts ({self.num_starts})")
        return self


class Ingest(Section):
    """Measured frames: a CXI pattern stack converted to photons by the pipeline's ingest stage.

    The detector comes from ``emc.detector`` when given, else from the CXI file's own
    geometry (flat square detector: distance, pixel size, photon energy).
    """

    cxi: Path = Field(..., description="CXI (HDF5) file with frames (frame, y, x) or (frame, module, ss, fs), "
                      "relative to this YAML file")
    data_path: str = Field("/entry_1/data_1/data", description="dataset holding the frame stack")
    mask_path: str | None = Field(None, description="bad-pixel mask (nonzero = bad) of one frame's shape; default: "
                                  "/entry_1/data_1/mask or /entry_1/instrument_1/detector_1/mask when present")
    adu_per_photon: PositiveFloat = Field(1.0, description="detector units per photon (1 for photon-counted data)")
    clip_negative: bool = Field(False, description="count negative values as 0 photons instead of stopping")
    chunk_frames: int = Field(256, ge=1, description="frames read at a time (bounds memory)")
    beamstop_radius_pixels: float = Field(0.0, ge=0, description="with the CXI geometry: pixels within this radius "
                                          "of the centre are excluded")


class Output(Section):
    runs_dir: Path = Field(Path("runs"), description="results go to <runs_dir>/<name>-<UTC timestamp>/ unless --out is given")


class Pipeline(Section):
    """The whole pipeline file."""

    name: str = Field("spibatch", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=40,
                      description="run name: lower-case letters, digits and '-'")
    geometry: Geometry = Field(default_factory=lambda: Geometry(wavelength_m=6.2e-10))
    simulation: Simulation | None = None
    ingest: Ingest | None = Field(None, description="measured frames from a CXI file (instead of a simulation)")
    emc: EMC = Field(default_factory=EMC)
    phasing: Phasing = Field(default_factory=Phasing)
    output: Output = Field(default_factory=Output)
    device: Literal["cpu", "gpu"] = Field("cpu", description="where EMC and phasing run: cpu (numpy, Numba) or gpu "
                                          "(CuPy, the [gpu] extra; one NVIDIA GPU per MPI rank or Parsl worker)")
    gpu_runtime: Literal["cupy", "pycuda"] = Field("cupy", description="with device: gpu, what compiles and "
                                                   "launches the CUDA kernels: cupy (RawModule) or pycuda "
                                                   "(SourceModule; needs PyCUDA and nvcc)")

    @field_validator("name", mode="before")
    @classmethod
    def _strip(cls, v: Any) -> Any:
        return v.strip() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _one_source(self) -> "Pipeline":
        if self.ingest is not None and self.simulation is not None:
            raise ValueError("give either a simulation or an ingest section, not both")
        if self.ingest is not None and self.emc.photons is not None:
            raise ValueError("with an ingest section the ingest stage writes the photons: leave emc.photons out")
        return self


# ---------------------------------------------------------------- YAML loading

def _load_yaml_with_lines(text: str, path: Path) -> tuple[Any, dict[tuple, int]]:
    """Parse YAML; return the data and a map from key path to 1-based line number."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "YAML"
        raise InputError(f"not valid YAML ({getattr(exc, 'problem', exc)})", path=path, field=where,
                         fix="fix the YAML syntax (indentation, colons, quotes)") from None
    lines: dict[tuple, int] = {}

    def walk(node: Any, prefix: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, value_node in node.value:
                key = key_node.value
                if key in seen:
                    raise InputError(f"key '{key}' appears twice", path=path,
                                     field=f"line {key_node.start_mark.line + 1}: {'.'.join(map(str, prefix + (key,)))}",
                                     fix="keep one of them")
                seen.add(key)
                lines[prefix + (key,)] = key_node.start_mark.line + 1
                walk(value_node, prefix + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[prefix + (i,)] = item.start_mark.line + 1
                walk(item, prefix + (i,))

    if root is not None:
        walk(root, ())
    data = yaml.safe_load(text)
    return data, lines


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def error_line(exc: ValidationError, data: Any, lines: dict[tuple, int], path: Path,
               model: type[BaseModel], reference: str = "`spibatch schema` describes every key") -> InputError:
    """The first validation error as one InputError line: file, line, key, expected, found.

    reference: where the user reads about every key (ends each fix).
    """
    err = exc.errors()[0]
    loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
    key = ".".join(str(x) for x in loc) or "(top level)"
    line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
    where = f"line {line}: {key}" if line else key
    more = len(exc.errors()) - 1
    tail = f" ({more} more error{'s' if more > 1 else ''} after this one)" if more else ""
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        return InputError(f"unknown key (expected one of: {', '.join(allowed)}){tail}", path=path, field=where,
                          fix=f"remove it or correct its spelling; {reference}")
    if err["type"] == "missing":
        return InputError(f"required key is missing{tail}", path=path, field=where, fix=f"add it; {reference}")
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:   # a rule across sections (the model's own validator): its message says what to change
        return InputError(f"{msg}{tail}", path=path, field=where, fix=reference)
    found = f"; found {_describe(err['input'])}"
    return InputError(f"expected: {msg}{found}{tail}", path=path, field=where, fix=f"correct the value; {reference}")


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys the section at ``loc`` accepts (best effort, for the error message)."""
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        ann = field.annotation
        candidates = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return []
        model = candidates[0]
    return list(model.model_fields)


def read_yaml_mapping(path: Path, *, field: str | None = None, missing_fix: str, top_fix: str,
                      holds: str = "sections") -> tuple[dict, dict[tuple, int]]:
    """A YAML file's top-level mapping and the line of every key path; InputError (one line) when the
    file is missing or unreadable, not YAML, or not a mapping.  An empty file is an empty mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("file not found", path=path, field=field, fix=missing_fix) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read ({exc.__class__.__name__})", path=path, field=field,
                         fix="give a readable UTF-8 YAML file") from None
    data, lines = _load_yaml_with_lines(text, path)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise InputError(f"expected a mapping of {holds} at the top level; found {type(data).__name__}",
                         path=path, field="line 1", fix=top_fix)
    return data, lines


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and validate a pipeline YAML file; relative paths become absolute.

    Raises InputError (one line: file, line, key, expected, found) on any mistake.
    """
    path = Path(path)
    data, lines = read_yaml_mapping(path, missing_fix="give the path of a pipeline YAML file (`spibatch init DIR` "
                                    "writes one)", top_fix="start the file with keys such as `name:` and `geometry:`")
    try:
        pipeline = Pipeline.model_validate(data)
    except ValidationError as exc:
        raise error_line(exc, data, lines, path, Pipeline) from None
    return resolve_paths(pipeline, path.parent)


def resolve_paths(pipeline: Pipeline, base: Path) -> Pipeline:
    """Make the file paths in ``pipeline`` absolute, relative to ``base``."""
    base = base.resolve()
    if pipeline.simulation is not None:
        pipeline.simulation.pdb = (base / pipeline.simulation.pdb).resolve()
    if pipeline.ingest is not None:
        pipeline.ingest.cxi = (base / pipeline.ingest.cxi).resolve()
    for key in ("photons", "detector", "start_model"):
        value = getattr(pipeline.emc, key)
        if value is not None:
            setattr(pipeline.emc, key, (base / value).resolve())
    if pipeline.phasing.intensity is not None:
        pipeline.phasing.intensity = (base / pipeline.phasing.intensity).resolve()
    pipeline.output.runs_dir = (base / pipeline.output.runs_dir).resolve()
    return pipeline


def dump_pipeline(pipeline: Pipeline) -> str:
    """The resolved pipeline as YAML text (every default written out)."""
    import yaml

    data = pipeline.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False)


def json_schema() -> dict:
    """The JSON schema of the pipeline file."""
    return Pipeline.model_json_schema()


def from_dragonfly_ini(path: str | Path) -> Geometry:
    """Geometry from a Dragonfly ``config.ini`` (detd, pixsize in mm; lambda in Angstrom; stoprad in pixels)."""
    import configparser

    path = Path(path)
    parser = configparser.ConfigParser(inline_comment_prefixes=("#", ";"))
    if not parser.read(path):
        raise InputError("file not found or unreadable", path=path, fix="give Dragonfly's config.ini")
    try:
        p = parser["parameters"]
        pol = p.get("polarization", "x").strip().lower()
        return Geometry(
            detector_pixels=int(p["detsize"]),
            pixel_size_m=float(p["pixsize"]) * 1e-3,
            detector_distance_m=float(p["detd"]) * 1e-3,
            wavelength_m=float(p["lambda"]) * 1e-10,
            beamstop_radius_pixels=float(p.get("stoprad", "0")),
            polarization=pol if pol in ("x", "y") else "none",
        )
    except KeyError as exc:
        raise InputError("missing key", path=path, field=f"[parameters] {exc.args[0]}",
                         fix="Dragonfly's config.ini needs detd, lambda, detsize and pixsize") from None
    except (ValueError, ValidationError) as exc:
        raise InputError(f"bad value ({str(exc).splitlines()[0]})", path=path, field="[parameters]",
                         fix="check detd, pixsize (mm), lambda (Angstrom), detsize, stoprad") from None


def wavelength_from_energy(photon_energy_ev: float) -> float:
    """Wavelength in metres of a photon of ``photon_energy_ev`` eV."""
    return PLANCK_EV_M / photon_energy_ev


__all__ = ["Pipeline", "Geometry", "Simulation", "EMC", "Phasing", "Output", "load_pipeline",
           "dump_pipeline", "json_schema", "from_dragonfly_ini", "resolve_paths", "wavelength_from_energy"]
