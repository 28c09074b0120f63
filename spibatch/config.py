"""Pipeline configuration: YAML -> validated pydantic models, and its JSON schema.

Unknown keys are refused.  A mistake is reported as one line with the file,
the YAML line number, the key, what was expected and what was found.
Physical quantities carry their unit in their name (``*_m``, ``*_ev``,
``*_pixels``, ``*_per_m2``).  Relative paths are taken relative to the
directory of the YAML file.
"""

from __future__ import annotations

import posixpath

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveFloat, ValidationError, field_validator, model_validator

from spibatch.detector import Detector
from spibatch.errors import InputError
from spibatch.phasing import DEFAULT_RECIPE, DEFAULT_SUPPORT_THRESHOLD
from spibatch.config_emc import EMC, BetaSchedule, Refine  # noqa: F401 (the pipeline's sections, named here)
from spibatch.config_source import Source
from spibatch.yaml_models import Section, load_model

PLANCK_EV_M = 1.239841984e-6  # h c in eV * m: wavelength_m = PLANCK_EV_M / photon_energy_ev


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

    def detector(self) -> Detector:
        """The :class:`~spibatch.detector.Detector` this geometry describes (``Detector.flat``)."""
        return Detector.flat(self.detector_pixels, self.pixel_size_m, self.detector_distance_m, self.wavelength,
                             beamstop_radius_pixels=self.beamstop_radius_pixels, polarization=self.polarization)


class Simulation(Section):
    """Simulated patterns of a PDB structure in random orientations."""

    pdb: Path = Field(description="PDB or mmCIF file of the particle (relative to this YAML file)")
    num_patterns: int = Field(1000, ge=1, description="number of diffraction patterns")
    mean_photons_per_frame: float | None = Field(
        1000.0, ge=1e-3, le=1e12, description="scale the intensity so a frame holds this many photons on average "
        "(set to null and give fluence_photons_per_m2 for an absolute scale)")
    fluence_photons_per_m2: float | None = Field(None, ge=1e6, le=1e40, description="incident fluence per pulse, photons / m^2")
    fluence_jitter: float = Field(0.0, ge=0, le=10, description="relative rms of a per-pattern fluence factor (gamma distributed, mean 1)")
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


MAX_SEED = 2 ** 63 - 1


def _named_dataset(v: str | None) -> str | None:
    """A dataset name, or None; an empty one (or only slashes) refused: it is not "the default"."""
    if v is not None and not v.strip().strip("/"):
        raise ValueError(f"{v!r} names no dataset: leave the key out for the default, or name one")
    return v


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
                        description="'auto' (self-tuning: a free set of 5% of the measured voxels ranks the "
                        "starts and chooses among support schedules), or operators run in reading order: HIO, ER, "
                        "RAAR, DM, ShrinkWrap, Auto; '*' then, '**' repeats")
    num_starts: int = Field(16, ge=1, description="independent random starts")
    keep_best: int = Field(8, ge=1, description="at most this many of the best starts averaged (auto: those ranked "
                                                 "within 1.5x of the best; default: half of num_starts, at least 1)")
    seed: int = Field(1, ge=0, description="start k uses seed + k")
    positivity: bool = Field(True, description="the density is >= 0 inside the support")
    realness: bool = Field(True, description="the density is real (real-to-complex FFTs, Friedel-averaged data)")
    initial_support_threshold: float = Field(DEFAULT_SUPPORT_THRESHOLD, gt=0, lt=1, description="first support: the smoothed "
                                             "autocorrelation above this fraction of its maximum")
    threads: int | None = Field(None, ge=1, le=4096, description="threads per start (FFT and kernels); default: all cores")
    fft: Literal["auto", "fftw", "scipy"] = Field("auto", description="FFT library: fftw (pyFFTW, the [fftw] "
                                                  "extra), scipy, or auto (fftw when installed and fft_planning is measure; "
                                                  "FFTW's estimated plans are erratic on odd edges)")
    fft_planning: Literal["estimate", "measure"] = Field("estimate", description="fftw's plans: estimate (the same "
                                                         "seed gives the same bits in every run) or measure (timed "
                                                         "plans kept as wisdom: ~1.2x faster FFTs, but the first "
                                                         "run on a machine may differ in rounding from later ones)")

    @field_validator("recipe")
    @classmethod
    def _recipe(cls, v: str) -> str:
        from spibatch.phasing.operators import parse_recipe

        op = parse_recipe(v)     # RecipeError (a ValueError): reported with the line of the key
        if op.iterations() == 0:
            raise ValueError("the recipe has no iteration (HIO, ER, RAAR or DM)")
        return v

    @model_validator(mode="before")
    @classmethod
    def _default_keep(cls, data):
        """keep_best not given: half of num_starts (16 -> 8, 2 -> 1), so that any num_starts works alone."""
        if isinstance(data, dict) and "keep_best" not in data:
            starts = data.get("num_starts", 16)
            if isinstance(starts, int) and not isinstance(starts, bool) and starts >= 1:
                data = {**data, "keep_best": max(1, starts // 2)}
        return data

    @model_validator(mode="after")
    def _keep(self) -> "Phasing":
        if self.keep_best > self.num_starts:
            raise ValueError(f"keep_best ({self.keep_best}) is more than num_starts ({self.num_starts})")
        if self.seed + self.num_starts - 1 > MAX_SEED:
            raise ValueError(f"seed {self.seed} with {self.num_starts} starts goes past {MAX_SEED} (2**63 - 1: the "
                             "seeds are kept as 64-bit integers): give a smaller seed")
        return self

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str | None) -> str | None:
        return _named_dataset(v)


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

    @field_validator("data_path", "mask_path")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        """``entry_1/...`` and ``//entry_1/...`` name what ``/entry_1/...`` names: spelt one way, so that the
        frames' own detector group (its geometry, its mask) is found from the path."""
        return None if value is None else posixpath.normpath("/" + value.lstrip("/"))


class Validation(Section):
    """Validation against a reference (``spibatch validate``, ``spibatch phase --truth`` and the validate stage).

    Without ``volume`` the stage compares this run's EMC intensity (aligned by rotation) and phased
    density (aligned by translation and inversion, resampled onto one voxel) with ``reference``; with
    ``volume`` it compares that one file with ``reference``.
    """

    reference: Path | None = Field(None, description="the true volume (our truth.h5, MRC, Dragonfly .bin), relative "
                                   "to this YAML file; default: the simulation's truth.h5")
    reference_voxel_size_m: PositiveFloat | None = Field(None, description="the reference density's voxel in "
                                                         "metres, when its file does not say (Dragonfly's .bin)")
    volume: Path | None = Field(None, description="a volume to compare with the reference instead of this run's "
                                "results")
    dataset: str | None = Field(None, description="the dataset to compare in HDF5 files (default: intensity, intens "
                                "or density, the first present)")
    kind: Literal["auto", "intensity", "density"] = Field(
        "auto", description="what the volumes hold: intensities are aligned by rotation (and the inversion twin), "
        "densities by translation and the twin after resampling onto one voxel; auto: from the files (MRC and "
        "`density` datasets are densities, `intensity`/`intens` intensities)")
    voxel_size_m: PositiveFloat | None = Field(None, description="real-space voxel in metres of both volumes, when "
                                               "their files do not say (two intensities: 1 / (N dq) of the first's "
                                               "edge N)")

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str | None) -> str | None:
        return _named_dataset(v)


class Output(Section):
    runs_dir: Path = Field(Path("runs"), description="results go to <runs_dir>/<name>-<UTC timestamp>/ unless --out is given")


class Pipeline(Section):
    """The whole pipeline file."""

    name: str = Field("spibatch", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=40,
                      description="run name: lower-case letters, digits and '-'")
    geometry: Geometry = Field(default_factory=lambda: Geometry(wavelength_m=6.2e-10))
    simulation: Simulation | None = None
    ingest: Ingest | None = Field(None, description="measured frames from a CXI file (instead of a simulation)")
    source: Source | None = Field(None, description="a live source followed while it records (instead of a "
                                  "simulation or an ingest): EuXFEL run folder, Karabo bridge, CXI folder")
    emc: EMC = Field(default_factory=EMC)
    phasing: Phasing = Field(default_factory=Phasing)
    validation: Validation = Field(default_factory=Validation)
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
        emc = self.emc
        given = emc.photons is not None or emc.photons_list is not None
        if self.ingest is not None and given:
            raise ValueError("with an ingest section the ingest stage writes the photons: leave emc.photons out")
        if self.source is not None and (self.simulation or self.ingest or given or emc.detector):
            raise ValueError("a source section brings its own frames and detector: leave simulation, ingest, "
                             "emc.photons and emc.detector out")
        if not given and (emc.blacklist_file is not None or emc.selection is not None):
            raise ValueError(f"emc.{'blacklist_file' if emc.blacklist_file else 'selection'} leaves out frames of "
                             "emc.photons: give emc.photons (or emc.photons_list) too")
        return self


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and validate a pipeline YAML file; relative paths become absolute.

    Raises InputError (one line: file, line, key, expected, found) on any mistake.
    """
    path = Path(path)
    pipeline = load_model(path, Pipeline, missing_fix="give the path of a pipeline YAML file (`spibatch init DIR` "
                          "writes one)", top_fix="start the file with keys such as `name:` and `geometry:`", pipe=False)
    return resolve_paths(pipeline, path.parent)


def resolve_paths(pipeline: Pipeline, base: Path) -> Pipeline:
    """Make the file paths in ``pipeline`` absolute, relative to ``base``; InputError (naming the key) for a
    path that cannot be resolved (a symbolic-link loop)."""
    base = base.resolve()
    if pipeline.simulation is not None:
        pipeline.simulation.pdb = _absolute(base, pipeline.simulation.pdb, "simulation.pdb")
    if pipeline.ingest is not None:
        pipeline.ingest.cxi = _absolute(base, pipeline.ingest.cxi, "ingest.cxi")
    for key in ("photons", "detector", "start_model", "background_file", "photons_list", "blacklist_file"):
        value = getattr(pipeline.emc, key)
        if isinstance(value, list):
            setattr(pipeline.emc, key, [_absolute(base, v, f"emc.{key}[{k}]") for k, v in enumerate(value)])
        elif value is not None:
            setattr(pipeline.emc, key, _absolute(base, value, f"emc.{key}"))
    if pipeline.phasing.intensity is not None:
        pipeline.phasing.intensity = _absolute(base, pipeline.phasing.intensity, "phasing.intensity")
    if pipeline.source is not None:
        for key in ("detector", "geometry"):
            value = getattr(pipeline.source, key)
            if value is not None:
                setattr(pipeline.source, key, _absolute(base, value, f"source.{key}"))
        if pipeline.source.is_path:
            pipeline.source.target = str(_absolute(base, Path(pipeline.source.target), "source.target"))
    for key in ("reference", "volume"):
        value = getattr(pipeline.validation, key)
        if value is not None:
            setattr(pipeline.validation, key, _absolute(base, value, f"validation.{key}"))
    pipeline.output.runs_dir = _absolute(base, pipeline.output.runs_dir, "output.runs_dir")
    return pipeline


def _absolute(base: Path, value: Path, key: str) -> Path:
    if "\0" in str(value):
        raise InputError("the path holds a NUL character", path=repr(str(value))[1:-1], field=key,
                         fix="write the path without control characters")
    try:
        return (base / value).resolve()
    except (RuntimeError, OSError) as exc:   # a link loop: RuntimeError before Python 3.13, OSError (ELOOP) after
        raise InputError(f"cannot resolve the path ({' '.join(str(exc).split())[:100]})", path=base / value,
                         field=key, fix="check the path (a symbolic link that points to itself?)") from None


def dump_pipeline(pipeline: Pipeline) -> str:
    """The resolved pipeline as YAML text (every default written out)."""
    from spibatch.yaml_models import dump_settings

    return dump_settings(pipeline.model_dump(mode="json"))


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


__all__ = ["Pipeline", "Geometry", "Simulation", "EMC", "Phasing", "Ingest", "Source", "Validation", "Output", "load_pipeline",
           "dump_pipeline", "json_schema", "from_dragonfly_ini", "resolve_paths", "wavelength_from_energy"]
