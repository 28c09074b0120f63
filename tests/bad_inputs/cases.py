"""The table of malformed inputs.  Each case: an id, a category, the command line (after ``python -m
spibatch``; '{name}' is a base input's path, files are named relative to the case's own folder, the
command's working directory), the files to write there first, and the words the one error line must hold
(the file and the field).  tests/test_bad_inputs.py runs every case as a real subprocess."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from bad_inputs import builders as b

# the good pipelines every variant starts from
GEOMETRY = {"detector_pixels": 64, "pixel_size_m": 0.5e-3, "detector_distance_m": 0.15, "photon_energy_ev": 6000}
SIM = {"name": "t", "geometry": GEOMETRY, "simulation": {"pdb": "{pdb}", "num_patterns": 10}}
EMC = {"name": "t", "emc": {"photons": "{photons}", "detector": "{detector}", "num_div": 1, "iterations": 1}}
FOLLOW = {"name": "t", "source": {"kind": "cxi-folder", "target": "frames", "detector": "{detector}"},
          "emc": {"num_div": 1, "iterations": 1}}
PHASE = {"name": "t", "phasing": {"intensity": "{intensity}", "num_starts": 1, "keep_best": 1}}
INGEST = {"name": "t", "ingest": {"cxi": "{cxi}"}}
SITE = {"provider": "local", "workers": 1}
DELETE = object()


@dataclass
class Case:
    id: str
    category: str
    argv: list[str]
    files: dict[str, Callable] = field(default_factory=dict)
    expect: list[str] = field(default_factory=list)
    unless_root: bool = False       # permissions do not stop root


def merged(base: dict, **changes) -> dict:
    """``base`` with ``section__key=value`` (or ``key=value`` at the top) changed; DELETE removes a key."""
    out = copy.deepcopy(base)
    for name, value in changes.items():
        where, keys = out, name.split("__")
        for key in keys[:-1]:
            where = where.setdefault(key, {})
        if value is DELETE:
            where.pop(keys[-1], None)
        else:
            where[keys[-1]] = value
    return out


def pipe(category: str, ident: str, command: str, base: dict, expect: list[str], *, extra: list[str] | None = None,
         files: dict | None = None, **changes) -> Case:
    """A case: ``spibatch COMMAND p.yaml`` on ``base`` changed by ``changes``."""
    text = b.yaml_file(merged(base, **changes))
    return Case(ident, category, [command, "p.yaml", *(extra or [])], {"p.yaml": text, **(files or {})}, expect)


def sim(ident: str, expect: list[str], **changes) -> Case:
    return pipe("config: geometry/simulation", ident, "simulate", SIM, expect, **changes)


def emc(ident: str, expect: list[str], **changes) -> Case:
    return pipe("config: emc", ident, "emc", EMC, expect, **changes)


def phase(ident: str, expect: list[str], **changes) -> Case:
    return pipe("config: phasing", ident, "phase", PHASE, expect, **changes)


def follow(ident: str, expect: list[str], files: dict | None = None, **changes) -> Case:
    """``spibatch run p.yaml`` following a CXI folder (``frames/``, made empty), its source section changed."""
    return pipe("config: source (near real time)", ident, "run", FOLLOW, expect,
                files={"frames": b.directory, **(files or {})},
                **{f"source__{key}": value for key, value in changes.items()})


def emc_file(ident: str, category: str, key: str, builder: Callable, expect: list[str], name: str = "bad.h5",
             **changes) -> Case:
    """``spibatch emc`` with emc.KEY a broken file."""
    return pipe(category, ident, "emc", EMC, [name, *expect], files={name: builder}, **{f"emc__{key}": name},
                **changes)


def phase_file(ident: str, builder: Callable, expect: list[str], name: str = "bad.h5", **changes) -> Case:
    return pipe("file: intensity (HDF5, MRC, Dragonfly .bin)", ident, "phase", PHASE, [name, *expect],
                files={name: builder}, phasing__intensity=name, **changes)


def ingest_cli(ident: str, builder: Callable | None, expect: list[str], options: list[str] = (),
               name: str = "bad.cxi") -> Case:
    files = {name: builder} if builder is not None else {}
    return Case(ident, "file: CXI (spibatch ingest)", ["ingest", name if builder else "{cxi}", *options], files,
                [name if builder else "frames.cxi", *expect])


def site(ident: str, expect: list[str], text: str | None = None, builder: Callable | None = None, **changes) -> Case:
    made = builder or b.text(text if text is not None else b.yaml_text(merged(SITE, **changes)))
    return Case(ident, "site files", ["run", "p.yaml", "--site", "site.yaml"],
                {"p.yaml": b.yaml_file(SIM), "site.yaml": made}, ["site.yaml", *expect])


def run(ident: str, category: str, base: dict, expect: list[str], files: dict | None = None, **changes) -> Case:
    return pipe(category, ident, "run", base, expect, files=files, **changes)


NOT_A_PDB = b.text("this is not a structure file\n")


def atom_line(x: str, y: str, z: str) -> str:
    """One carbon ATOM record of a PDB file at (x, y, z) Angstrom (text, so "nan" can be written)."""
    return f"ATOM      1  CA  ALA A   1    {x:>8}{y:>8}{z:>8}  1.00 20.00           C\n"
LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{x}: &{x} [" + ", ".join([f"*{p}"] * 9) + "]\n" for p, x in zip("abcdefgh", "bcdefghi"))
PHOTONS_LAST = b.FRAMES - 1
RECIPE_5000 = '"' + " * ".join(["ER()"] * 5000) + '"'
NESTED = '"' + "(" * 40 + "ER()" + ")" * 40 + '"'

CASES: list[Case] = [
    # ---------------------------------------------------------------- the pipeline file itself (paths, YAML)
    Case("yaml-missing", "paths", ["emc", "nope.yaml"], {}, ["nope.yaml", "file not found"]),
    Case("yaml-directory", "paths", ["emc", "p.yaml"], {"p.yaml": b.directory}, ["p.yaml", "IsADirectoryError"]),
    Case("yaml-symlink-loop", "paths", ["emc", "p.yaml"], {"p.yaml": b.symlink("p.yaml")}, ["p.yaml", "cannot read"]),
    Case("yaml-dangling-symlink", "paths", ["simulate", "p.yaml"], {"p.yaml": b.symlink("gone.yaml")},
         ["p.yaml", "file not found"]),
    Case("yaml-python-tag", "paths", ["emc", "p.yaml"],
         {"p.yaml": b.text('name: !!python/object/apply:os.system ["touch ran"]\n')}, ["p.yaml", "line 1", "!!tag"]),
    Case("yaml-path-nul", "paths", ["emc", "p.yaml"],
         {"p.yaml": b.text('name: t\nemc:\n  photons: "a\\0b.h5"\n  detector: "{detector}"\n')},
         ["emc.photons", "NUL character"]),
    Case("yaml-not-utf8", "paths", ["emc", "p.yaml"], {"p.yaml": b.raw_bytes(b"name: t\nemc: {num_div: \xff\xfe}\n")},
         ["p.yaml", "UnicodeDecodeError"]),
    Case("yaml-unreadable", "paths", ["emc", "p.yaml"], {"p.yaml": b.unreadable("name: t\n")}, ["p.yaml", "cannot read"],
         unless_root=True),
    Case("yaml-syntax", "config: top level", ["emc", "p.yaml"], {"p.yaml": b.text("name: t\nemc: [1, 2\n")},
         ["p.yaml", "not valid YAML"]),
    Case("yaml-billion-laughs", "config: top level", ["emc", "p.yaml"], {"p.yaml": b.raw_bytes(LAUGHS.encode())},
         ["p.yaml", "line 1", "expands to more than"]),
    Case("yaml-nested-20000", "config: top level", ["emc", "p.yaml"],
         {"p.yaml": b.raw_bytes(b"name: t\nemc: " + b"[" * 20000 + b"]" * 20000 + b"\n")}, ["p.yaml", "nested"]),
    Case("yaml-20-MB", "config: top level", ["emc", "p.yaml"], {"p.yaml": b.raw_bytes(b"#" * 20_000_000)},
         ["p.yaml", "bytes; a settings file is at most"]),
    Case("yaml-top-list", "config: top level", ["emc", "p.yaml"], {"p.yaml": b.text("- name\n- emc\n")},
         ["p.yaml", "line 1", "expected a mapping"]),
    Case("yaml-duplicate-key", "config: top level", ["emc", "p.yaml"],
         {"p.yaml": b.text("name: t\nemc:\n  num_div: 2\n  num_div: 3\n")}, ["p.yaml", "emc.num_div", "twice"]),
    Case("yaml-empty-for-emc", "config: top level", ["emc", "p.yaml"], {"p.yaml": b.text("")},
         ["p.yaml", "emc.photons"]),
    pipe("config: top level", "top-unknown-key", "emc", EMC, ["p.yaml", "emcc", "unknown key"], emcc=1),
    pipe("config: top level", "name-upper-case", "emc", EMC, ["p.yaml", "name"], name="My_Run"),
    pipe("config: top level", "name-too-long", "emc", EMC, ["p.yaml", "name"], name="a" * 41),
    pipe("config: top level", "device-tpu", "emc", EMC, ["p.yaml", "device"], device="tpu"),
    pipe("config: top level", "gpu-runtime-opencl", "emc", EMC, ["p.yaml", "gpu_runtime"], gpu_runtime="opencl"),
    pipe("config: top level", "simulation-and-ingest", "run", SIM, ["p.yaml", "either a simulation or an ingest"],
         ingest={"cxi": "{cxi}"}),
    pipe("config: top level", "ingest-and-emc-photons", "run", INGEST, ["p.yaml", "leave emc.photons out"],
         emc={"photons": "{photons}"}),
    pipe("config: top level", "geometry-not-mapping", "simulate", SIM, ["p.yaml", "geometry"], geometry=5),
    pipe("config: top level", "output-runs-dir-not-path", "emc", EMC, ["p.yaml", "output.runs_dir"],
         output={"runs_dir": "[1, 2]"}),

    # ---------------------------------------------------------------- geometry (every field)
    sim("geometry-pixels-1", ["p.yaml", "geometry.detector_pixels"], geometry__detector_pixels=1),
    sim("geometry-pixels-bool", ["p.yaml", "geometry.detector_pixels", "true/false"], geometry__detector_pixels="true"),
    sim("geometry-pixels-huge", ["p.yaml", "geometry.detector_pixels", "GiB", "of memory"],
        geometry__detector_pixels=100000),
    sim("geometry-pixel-size-zero", ["p.yaml", "geometry.pixel_size_m"], geometry__pixel_size_m=0),
    sim("geometry-pixel-size-nan", ["p.yaml", "geometry.pixel_size_m", "finite"], geometry__pixel_size_m=".nan"),
    sim("geometry-distance-inf", ["p.yaml", "geometry.detector_distance_m", "finite"],
        geometry__detector_distance_m=".inf"),
    sim("geometry-distance-micrometre", ["p.yaml", "geometry.detector_distance_m", "would touch the sample"],
        geometry__detector_distance_m="1.0e-6"),
    sim("geometry-distance-negative", ["p.yaml", "geometry.detector_distance_m"], geometry__detector_distance_m=-0.3),
    sim("geometry-model-too-small", ["p.yaml", "geometry.detector_pixels", "at least 9"],
        geometry__detector_pixels=4),
    sim("geometry-both-wavelengths", ["p.yaml", "geometry", "exactly one of wavelength_m"],
        geometry__wavelength_m="1.0e-10"),
    sim("geometry-no-wavelength", ["p.yaml", "geometry", "exactly one of wavelength_m"],
        geometry__photon_energy_ev=DELETE),
    sim("geometry-energy-text", ["p.yaml", "geometry.photon_energy_ev"], geometry__photon_energy_ev="6 keV"),
    sim("geometry-wavelength-zero", ["p.yaml", "geometry.wavelength_m"], geometry__photon_energy_ev=DELETE,
        geometry__wavelength_m=0),
    sim("geometry-beamstop-negative", ["p.yaml", "geometry.beamstop_radius_pixels"],
        geometry__beamstop_radius_pixels=-1),
    sim("geometry-beamstop-covers-all", ["p.yaml", "geometry.beamstop_radius_pixels", "covers every pixel"],
        geometry__beamstop_radius_pixels=40),
    sim("geometry-polarization-z", ["p.yaml", "geometry.polarization"], geometry__polarization="z"),
    sim("geometry-unknown-key", ["p.yaml", "geometry.pixel_size", "unknown key"], geometry__pixel_size="1e-3"),

    # ---------------------------------------------------------------- simulation (every field) and the PDB
    sim("sim-pdb-key-missing", ["p.yaml", "simulation.pdb", "missing"], simulation__pdb=DELETE),
    pipe("file: PDB/mmCIF", "pdb-missing", "simulate", SIM, ["gone.pdb", "simulation.pdb", "file not found"],
         simulation__pdb="gone.pdb"),
    pipe("file: PDB/mmCIF", "pdb-directory", "simulate", SIM, ["pdbdir", "simulation.pdb"],
         files={"pdbdir": b.directory}, simulation__pdb="pdbdir"),
    pipe("file: PDB/mmCIF", "pdb-symlink-loop", "simulate", SIM, ["loop.pdb", "simulation.pdb"],
         files={"loop.pdb": b.symlink("loop.pdb")}, simulation__pdb="loop.pdb"),
    pipe("file: PDB/mmCIF", "pdb-coordinates-nan", "simulate", SIM, ["nan.pdb", "coordinates", "not a finite"],
         files={"nan.pdb": b.text(atom_line("nan", "nan", "nan") + atom_line("5.0", "2.0", "3.0") + "END\n")},
         simulation__pdb="nan.pdb"),
    pipe("file: PDB/mmCIF", "pdb-one-atom", "simulate", SIM, ["one.pdb", "no extent"],
         files={"one.pdb": b.text(atom_line("1.0", "2.0", "3.0") + "END\n")}, simulation__pdb="one.pdb"),
    pipe("file: PDB/mmCIF", "pdb-garbage", "simulate", SIM, ["junk.pdb", "simulation.pdb"],
         files={"junk.pdb": NOT_A_PDB}, simulation__pdb="junk.pdb"),
    pipe("file: PDB/mmCIF", "pdb-no-atoms", "simulate", SIM, ["empty.pdb", "simulation.pdb", "no atoms"],
         files={"empty.pdb": b.text("HEADER    NOTHING\nEND\n")}, simulation__pdb="empty.pdb"),
    pipe("file: PDB/mmCIF", "mmcif-garbage", "simulate", SIM, ["junk.cif", "simulation.pdb"],
         files={"junk.cif": b.text("data_x\nloop_\n_atom_site.id\n_atom_site.Cartn_x\n1\n")},
         simulation__pdb="junk.cif"),
    pipe("file: PDB/mmCIF", "pdb-binary", "simulate", SIM, ["bin.pdb", "simulation.pdb"],
         files={"bin.pdb": b.raw_bytes(bytes(range(256)) * 8)}, simulation__pdb="bin.pdb"),
    sim("sim-num-patterns-zero", ["p.yaml", "simulation.num_patterns"], simulation__num_patterns=0),
    sim("sim-num-patterns-fraction", ["p.yaml", "simulation.num_patterns"], simulation__num_patterns=2.5),
    sim("sim-num-patterns-1e12", ["p.yaml", "simulation.num_patterns", "TiB", "of memory"],
        simulation__num_patterns="1.0e+12"),
    sim("sim-mean-photons-negative", ["p.yaml", "simulation.mean_photons_per_frame"],
        simulation__mean_photons_per_frame=-5),
    sim("sim-mean-photons-huge", ["p.yaml", "simulation.mean_photons_per_frame", "of memory"],
        simulation__mean_photons_per_frame="1.0e+15"),
    sim("sim-both-scales", ["p.yaml", "simulation", "exactly one of mean_photons_per_frame"],
        simulation__fluence_photons_per_m2="1.0e+20"),
    sim("sim-fluence-negative", ["p.yaml", "simulation.fluence_photons_per_m2"], simulation__mean_photons_per_frame="null",
        simulation__fluence_photons_per_m2=-1),
    sim("sim-jitter-negative", ["p.yaml", "simulation.fluence_jitter"], simulation__fluence_jitter=-0.1),
    sim("sim-b-factors-text", ["p.yaml", "simulation.use_b_factors"], simulation__use_b_factors="maybe"),
    sim("sim-assembly-number", ["p.yaml", "simulation.assembly"], simulation__assembly=3),
    sim("sim-waters-text", ["p.yaml", "simulation.keep_waters"], simulation__keep_waters="sure"),
    sim("sim-seed-negative", ["p.yaml", "simulation.seed"], simulation__seed=-1),
    sim("sim-chunk-zero", ["p.yaml", "simulation.chunk_frames"], simulation__chunk_frames=0),
    sim("sim-unknown-key", ["p.yaml", "simulation.seeed", "unknown key"], simulation__seeed=3),

    # ---------------------------------------------------------------- emc (every field)
    emc("emc-photons-missing", ["gone.h5", "emc.photons", "file not found"], emc__photons="gone.h5"),
    emc("emc-detector-not-given", ["p.yaml", "emc.detector"], emc__detector=DELETE),
    emc("emc-num-div-zero", ["p.yaml", "emc.num_div"], emc__num_div=0),
    emc("emc-num-div-1000", ["p.yaml", "emc.num_div", "TiB", "of memory"], emc__num_div=1000),
    emc("emc-iterations-bool", ["p.yaml", "emc.iterations", "true/false"], emc__iterations="true"),
    emc("emc-iterations-1e12", ["p.yaml", "emc.iterations", "years"], emc__iterations=1000000000000),
    emc("emc-beta-negative", ["p.yaml", "emc.beta"], emc__beta=-1),
    emc("emc-beta-inf", ["p.yaml", "emc.beta"], emc__beta=".inf"),
    emc("emc-beta-text", ["p.yaml", "emc.beta"], emc__beta="hot"),
    emc("emc-beta-factor-inf", ["p.yaml", "emc.beta_factor", "finite"], emc__beta_factor=".inf"),
    emc("emc-schedule-factor-inf", ["p.yaml", "emc.beta_schedule.factor", "finite"],
        emc__beta_schedule={"factor": ".inf"}),
    emc("emc-schedule-period-zero", ["p.yaml", "emc.beta_schedule.period"], emc__beta_schedule={"period": 0}),
    emc("emc-schedule-unknown", ["p.yaml", "emc.beta_schedule.every", "unknown key"],
        emc__beta_schedule={"every": 3}),
    emc("emc-need-scaling-text", ["p.yaml", "emc.need_scaling"], emc__need_scaling="no way"),
    emc("emc-friedel-number", ["p.yaml", "emc.friedel_symmetry"], emc__friedel_symmetry=2),
    emc("emc-point-group", ["p.yaml", "emc.point_group"], emc__point_group="X7"),
    emc("emc-seed-fraction", ["p.yaml", "emc.seed"], emc__seed=1.5),
    emc_file("emc-halves-too-few-frames", "config: emc", "photons", b.photons_variant(b.keep_rows(150)),
             ["emc.halves", "half sets of 75 and 75 frames", "too few to reconstruct"], emc__halves=True),
    emc("emc-frames-per-shard-zero", ["p.yaml", "emc.frames_per_shard"], emc__frames_per_shard=0),
    emc("emc-refine-not-finer", ["p.yaml", "emc.refine.num_div (2)", "finer than the coarse one"],
        emc__num_div=2, emc__iterations=3, emc__refine={"num_div": 2, "after": 1}),
    emc("emc-refine-after-all", ["p.yaml", "emc.refine.after (3)", "emc.iterations"], emc__num_div=1,
        emc__iterations=3, emc__refine={"num_div": 2, "after": 3}),
    emc("emc-refine-top-zero", ["p.yaml", "emc.refine.top"], emc__iterations=3, emc__refine={"after": 1, "top": 0}),
    emc("emc-refine-radius-negative", ["p.yaml", "emc.refine.radius"], emc__iterations=3,
        emc__refine={"after": 1, "radius": -1}),
    emc("emc-refine-min-info-negative", ["p.yaml", "emc.refine.min_info"], emc__iterations=3,
        emc__refine={"after": 1, "min_info": -0.5}),
    emc("emc-merge-unknown", ["p.yaml", "emc.merge", "per_rotation"], emc__iterations=3, emc__merge="tomogram"),
    emc("emc-merge-not-a-string", ["p.yaml", "emc.merge"], emc__iterations=3, emc__merge=1),
    emc("emc-model-size-2", ["p.yaml", "emc.model_size"], emc__model_size=2),
    emc("emc-model-size-small", ["p.yaml", "emc.model_size", "smaller than the detector needs"], emc__model_size=5),
    emc("emc-model-size-5000", ["p.yaml", "emc.model_size", "TiB", "of memory"], emc__model_size=5000),
    emc("emc-num-modes-zero", ["p.yaml", "emc.num_modes", "greater than or equal to 1"], emc__num_modes=0),
    emc("emc-num-modes-huge", ["p.yaml", "emc.num_modes", "GiB", "available"], emc__num_modes=100000),
    emc("emc-nonrot-modes-negative", ["p.yaml", "emc.nonrot_modes"], emc__nonrot_modes=-1),
    emc("emc-detector-corr-text", ["p.yaml", "emc.detector_corr"], emc__detector_corr="maybe"),
    emc("emc-start-model-missing", ["gone.h5", "emc.start_model", "file not found"], emc__start_model="gone.h5"),
    emc("emc-background-missing", ["gone.h5", "emc.background_file", "no such file"],
        emc__background_file="gone.h5"),
    emc_file("background-shape", "file: background", "background_file", b.background_with(size_change=-5),
             ["emc.background_file", "but the detector has"]),
    emc_file("background-negative", "file: background", "background_file", b.background_with(3, -0.5),
             ["emc.background_file", "negative"]),
    emc_file("background-nan", "file: background", "background_file", b.background_with(7, np.nan),
             ["emc.background_file", "NaN"]),
    emc_file("background-no-dataset", "file: background", "background_file", b.background_with(dataset="bg"),
             ["emc.background_file", "no dataset 'background'"]),
    emc_file("background-npy-shape", "file: background", "background_file",
             b.background_with(size_change=3, suffix_npy=True), ["emc.background_file", "but the detector has"],
             name="bad.npy"),
    emc("emc-fit-background-text", ["p.yaml", "emc.fit_background_scale"], emc__fit_background_scale="maybe"),
    emc_file("start-model-shape", "file: start model", "start_model", b.volume_variant("intensity", np.ones((9, 9, 9))),
             ["emc.start_model", "shape"]),
    emc_file("start-model-nan", "file: start model", "start_model",
             b.volume_variant("intensity", lambda: np.full((91, 91, 91), np.nan, np.float32)),
             ["emc.start_model", "NaN"]),
    emc_file("start-model-negative", "file: start model", "start_model",
             b.volume_variant("intensity", lambda: -np.ones((91, 91, 91), np.float32)),
             ["emc.start_model", "negative"]),
    emc("emc-unknown-key", ["p.yaml", "emc.num_dvi", "unknown key"], emc__num_dvi=3),

    # ---------------------------------------------------------------- photons files (HDF5 and binary .emc)
    emc_file("photons-directory", "file: photons", "photons", b.directory, ["emc.photons", "directory"], name="dir.h5"),
    emc_file("photons-garbage", "file: photons", "photons", NOT_A_PDB, ["neither an HDF5 file nor"], name="junk.emc"),
    emc_file("photons-no-place-multi", "file: photons", "photons", b.photons_variant(skip=("place_multi",)),
             ["place_multi", "dataset missing"]),
    emc_file("photons-num-pix-float", "file: photons", "photons", b.photons_variant(num_pix_dtype=np.float64),
             ["num_pix", "expected one integer"]),
    emc_file("photons-num-pix-zero", "file: photons", "photons", b.photons_variant(num_pix=0),
             ["num_pix", "positive pixel count"]),
    emc_file("photons-declared-never-written", "file: photons", "photons", b.declared_photons(20_000_000),
             ["place_ones", "20,000,000 frames", "never written"]),
    emc_file("photons-row-counts-differ", "file: photons", "photons", b.photons_variant(b.drop_rows("count_multi", 1)),
             ["count_multi", "row counts differ"]),
    emc_file("photons-ragged-late-row", "file: photons", "photons",
             b.photons_variant(b.set_row("count_multi", PHOTONS_LAST, [2, 2])), ["count_multi", f"frame {PHOTONS_LAST}"]),
    emc_file("photons-negative-count-late", "file: photons", "photons",
             b.photons_variant(b.set_row("count_multi", PHOTONS_LAST, [-3])),
             ["count_multi", f"frame {PHOTONS_LAST}", "negative"]),
    emc_file("photons-count-one", "file: photons", "photons",
             b.photons_variant(b.set_row("count_multi", PHOTONS_LAST - 1, [1])),
             ["count_multi", f"frame {PHOTONS_LAST - 1}", "below 2"]),
    emc_file("photons-pixel-out-of-range-late", "file: photons", "photons",
             b.photons_variant(b.set_row("place_ones", PHOTONS_LAST, [b.NUM_PIX])),
             ["place_ones", f"frame {PHOTONS_LAST}", "outside"]),
    emc_file("photons-negative-pixel", "file: photons", "photons",
             b.photons_variant(b.set_row("place_multi", PHOTONS_LAST, [-1])), ["place_multi", "outside"]),
    emc_file("photons-zero-frames", "file: photons", "photons",
             b.photons_variant(lambda rows: [rows[k].clear() for k in rows]), ["place_ones", "0 frames"]),
    emc_file("photons-num-pix-mismatch", "file: photons", "photons", b.photons_variant(num_pix=4000),
             ["num_pix", "detector"]),
    emc_file("photons-truncated", "file: photons", "photons", b.truncated("photons"), ["truncated"]),
    emc_file("photons-corrupt-last-frame", "file: photons", "photons", b.corrupted_last_frame,
             ["place_ones", f"frame {PHOTONS_LAST}", "outside"]),
    emc_file("emc-bin-truncated", "file: photons", "photons", b.truncated("photons_bin", 0.9), ["truncated"],
             name="bad.emc"),
    emc_file("emc-bin-dense", "file: photons", "photons",
             b.raw_bytes(np.concatenate([np.array([2, 4096, 1], "<i4"), np.zeros(253 + 2 * 4096, "<i4")]).tobytes()),
             ["header", "dense"], name="bad.emc"),
    emc_file("emc-bin-negative-lengths", "file: photons", "photons",
             b.binary_variant(lengths=(np.full(b.FRAMES, -1), np.zeros(b.FRAMES))), ["negative"], name="bad.emc"),
    emc_file("emc-bin-pixel-out-of-range", "file: photons", "photons",
             b.binary_variant(b.set_row("place_ones", PHOTONS_LAST, [99999, 1, 2, 3, 4])),
             ["place_ones", f"frame {PHOTONS_LAST}"], name="bad.emc"),
    emc_file("emc-bin-count-one", "file: photons", "photons",
             b.binary_variant(b.set_row("count_multi", PHOTONS_LAST, [1])), ["count_multi", "below 2"],
             name="bad.emc"),

    # ---------------------------------------------------------------- detector files
    emc("detector-missing", ["gone-det.h5", "emc.detector", "file not found"], emc__detector="gone-det.h5"),
    emc_file("detector-no-qx", "file: detector", "detector", b.detector_variant(b.replace_dataset("qx", None)),
             ["qx", "dataset missing"]),
    emc_file("detector-nan-qy", "file: detector", "detector", b.detector_variant(b.with_value("qy", 100, np.nan)),
             ["qy", "NaN"]),
    emc_file("detector-declares-1e9-pixels", "file: detector", "detector",
             b.detector_variant(b.declared_pixels(1_500_000_000)), ["qx", "1,500,000,000 pixels"]),
    emc_file("detector-mask-3", "file: detector", "detector", b.detector_variant(b.with_value("mask", 7, 3)),
             ["mask", "0, 1 or 2"]),
    emc_file("detector-all-excluded", "file: detector", "detector",
             b.detector_variant(b.replace_dataset("mask", np.full(4096, 2, np.uint8))), ["mask", "every one of the"]),
    emc_file("detector-q-zero", "file: detector", "detector",
             b.detector_variant(lambda f: [b.replace_dataset(n, np.zeros(4096))(f) for n in ("qx", "qy", "qz")]),
             ["qx", "within one voxel of q = 0"]),
    emc_file("detector-q-huge", "file: detector", "detector",
             b.detector_variant(lambda f: [b.replace_dataset(n, f[n][()] * 1000)(f) for n in ("qx", "qy", "qz")]),
             ["emc.detector", "check the detector file's qx, qy, qz"]),
    emc_file("detector-corr-negative", "file: detector", "detector",
             b.detector_variant(b.replace_dataset("corr", -np.ones(4096))), ["corr", "negative correction"]),
    emc_file("detector-corr-short", "file: detector", "detector",
             b.detector_variant(b.replace_dataset("corr", np.ones(4095))), ["corr", "entries"]),
    emc_file("detector-detd-negative", "file: detector", "detector",
             b.detector_variant(b.replace_dataset("detd", -1.0)), ["detd", "positive"]),
    emc_file("detector-ewald-zero", "file: detector", "detector",
             b.detector_variant(b.replace_dataset("ewald_rad", 0.0)), ["ewald_rad", "positive"]),
    emc_file("detector-shape-attr", "file: detector", "detector", b.detector_variant(b.set_attr("shape", [60, 60])),
             ["shape", "4096"]),
    emc_file("detector-voxel-attr-nan", "file: detector", "detector",
             b.detector_variant(b.set_attr("voxel_size_per_m", np.nan)), ["voxel_size_per_m", "positive"]),
    emc_file("detector-qx-2d", "file: detector", "detector",
             b.detector_variant(b.replace_dataset("qx", np.zeros((64, 64)))), ["qx", "1-D"]),
    emc_file("detector-not-hdf5", "file: detector", "detector", NOT_A_PDB, ["not an HDF5 file"], name="det.h5"),

    # ---------------------------------------------------------------- phasing (every field) and intensity files
    phase("phase-intensity-missing", ["gone.h5", "phasing.intensity", "file not found"], phasing__intensity="gone.h5"),
    phase("phase-no-intensity", ["p.yaml", "phasing.intensity", "no intensity"], phasing__intensity=DELETE),
    phase("phase-dataset-missing", ["intensity.h5", "nope", "phasing.dataset"], phasing__dataset="nope"),
    phase("phase-voxel-negative", ["p.yaml", "phasing.voxel_size_per_m"], phasing__voxel_size_per_m=-1),
    phase("phase-crop-7", ["p.yaml", "phasing.crop_to"], phasing__crop_to=7),
    phase("phase-crop-larger", ["intensity.h5", "phasing.crop_to", "larger"], phasing__crop_to=99),
    phase("phase-crop-parity", ["intensity.h5", "phasing.crop_to", "parity"], phasing__crop_to=20),
    phase("phase-fast-fft-text", ["p.yaml", "phasing.fast_fft_size"], phasing__fast_fft_size="perhaps"),
    phase("phase-fft-planning-bogus", ["p.yaml", "phasing.fft_planning"], phasing__fft_planning="patient"),
    # ---------------------------------------------------------------- the source section (spibatch run following)
    follow("source-kind-ftp", ["p.yaml", "source.kind"], kind="ftp"),
    follow("source-target-missing", ["nowhere", "source.target", "no such folder"], target="nowhere"),
    follow("source-bridge-no-endpoint", ["p.yaml", "source.target", "tcp://"], kind="karabo-bridge", target="exflonc05"),
    follow("source-detector-missing", ["gone.h5", "source.detector", "file not found"], detector="gone.h5"),
    follow("source-detector-and-geometry", ["p.yaml", "source", "exactly one of detector"], geometry="x.geom"),
    follow("source-geometry-no-distance", ["p.yaml", "source", "distance_m"], geometry="x.geom", detector=DELETE),
    follow("source-detector-name", ["p.yaml", "source.detector_name"], detector_name="XYZ"),
    follow("source-geometry-missing", ["gone.geom", "source.geometry"], geometry="gone.geom", detector=DELETE,
           distance_m=0.3, photon_energy_ev=6000),
    follow("source-geometry-garbage", ["bad.geom", "source.geometry", "EXtra-geom"], geometry="bad.geom",
           detector=DELETE, distance_m=0.3, photon_energy_ev=6000, files={"bad.geom": b.text("garbage = 1\n")}),
    follow("source-distance-negative", ["p.yaml", "source.distance_m"], distance_m=-1),
    follow("source-energy-zero", ["p.yaml", "source.photon_energy_ev"], photon_energy_ev=0),
    follow("source-wavelength-negative", ["p.yaml", "source.wavelength_m"], wavelength_m=-1),
    follow("source-beamstop-negative", ["p.yaml", "source.beamstop_radius_m"], beamstop_radius_m=-1),
    follow("source-adu-zero", ["p.yaml", "source.adu_per_photon"], adu_per_photon=0),
    follow("source-threshold-text", ["p.yaml", "source.hit_threshold", "valid number"], hit_threshold="sometimes"),
    follow("source-chunk-zero", ["p.yaml", "source.chunk_frames"], chunk_frames=0),
    follow("source-flush-negative", ["p.yaml", "source.flush_s"], flush_s=-1),
    follow("source-idle-zero", ["p.yaml", "source.idle_timeout_s"], idle_timeout_s=0),
    follow("source-settle-negative", ["p.yaml", "source.settle_s"], settle_s=-1),
    follow("source-bridge-source-number", ["p.yaml", "source.bridge_source"], bridge_source=5),
    follow("source-bridge-key-list", ["p.yaml", "source.bridge_key"], bridge_key=[1]),
    follow("source-start-hits-zero", ["p.yaml", "source.emc_start_hits"], emc_start_hits=0),
    follow("source-after-end-zero", ["p.yaml", "source.iterations_after_end"], iterations_after_end=0),
    follow("source-preview-every-zero", ["p.yaml", "source.preview_every_iterations"], preview_every_iterations=0),
    follow("source-preview-starts-zero", ["p.yaml", "source.preview_starts"], preview_starts=0),
    follow("source-preview-recipe", ["p.yaml", "source.preview_recipe"], preview_recipe="HIO(beta=0.9"),
    follow("source-unknown-key", ["p.yaml", "source.colour"], colour="red"),
    phase("recipe-syntax", ["p.yaml", "phasing.recipe"], phasing__recipe='"HIO(beta=0.9"'),
    phase("recipe-import", ["p.yaml", "phasing.recipe"], phasing__recipe='"__import__(\'os\').system(\'true\')"'),
    phase("recipe-5000-operators", ["p.yaml", "phasing.recipe"], phasing__recipe=RECIPE_5000),
    phase("recipe-1e10-iterations", ["p.yaml", "phasing.recipe"], phasing__recipe='"HIO() ** 10000000000"'),
    phase("recipe-no-iteration", ["p.yaml", "phasing.recipe", "no iteration"], phasing__recipe='"ShrinkWrap()"'),
    phase("recipe-unknown-operator", ["p.yaml", "phasing.recipe"], phasing__recipe='"Foo() ** 3"'),
    phase("recipe-beta-out-of-range", ["p.yaml", "phasing.recipe", "beta"], phasing__recipe='"HIO(beta=5) ** 3"'),
    phase("recipe-deep-nesting", ["p.yaml", "phasing.recipe"], phasing__recipe=NESTED),
    phase("phase-starts-zero", ["p.yaml", "phasing.num_starts"], phasing__num_starts=0),
    phase("phase-keep-more-than-starts", ["p.yaml", "keep_best"], phasing__keep_best=3),
    phase("phase-starts-huge", ["p.yaml", "phasing.num_starts", "of memory"], phasing__num_starts=100000000,
          phasing__keep_best=1),
    phase("phase-support-threshold", ["p.yaml", "phasing.initial_support_threshold"],
          phasing__initial_support_threshold=1.5),
    phase("phase-threads-zero", ["p.yaml", "phasing.threads"], phasing__threads=0),
    phase("phase-fft-cuda", ["p.yaml", "phasing.fft"], phasing__fft="cuda"),
    phase("phase-positivity-text", ["p.yaml", "phasing.positivity"], phasing__positivity="x"),
    phase("phase-realness-number", ["p.yaml", "phasing.realness"], phasing__realness=7),
    phase("phase-seed-negative", ["p.yaml", "phasing.seed"], phasing__seed=-1),
    phase_file("intensity-directory", b.directory, ["phasing.intensity", "directory"], name="vol.h5"),
    phase_file("intensity-no-volume", b.volume_variant("other", np.ones((9, 9, 9))), ["no volume dataset"]),
    phase_file("intensity-external-fifo", b.external_on_fifo("intensity"), ["intensity", "external storage",
                                                                             "not a regular file"]),
    phase_file("intensity-2d", b.volume_variant("intensity", np.ones((9, 9))), ["intensity", "3-D"]),
    phase_file("intensity-nan", b.intensity_with((3, 4, 5), np.nan), ["intensity", "NaN"]),
    phase_file("intensity-negative", b.intensity_with((3, 4, 5), -2.0), ["intensity", "negative"]),
    phase_file("intensity-1e35", b.intensity_with((3, 4, 5), 1e35), ["intensity", "1e+35", "divide"]),
    phase_file("intensity-too-small", b.volume_variant("intensity", np.ones((5, 5, 5))), ["intensity", "at least 8"]),
    phase_file("intensity-not-cubic", b.volume_variant("intensity", np.ones((20, 20, 21))), ["intensity", "cubic"]),
    phase_file("intensity-zero", b.volume_variant("intensity", np.zeros((21, 21, 21))), ["intensity", "zero"]),
    phase_file("intensity-voxel-attr-nan", b.volume_variant("intensity", b.good_intensity, voxel_size_per_m=np.nan),
               ["voxel_size_per_m", "positive"]),
    phase_file("intensity-voxel-attr-text", b.volume_variant("intensity", b.good_intensity, voxel_size_per_m="big"),
               ["voxel_size_per_m", "positive"]),
    phase_file("intensity-declared-3000", b.declared_volume("intensity", (3000, 3000, 3000)),
               ["phasing.intensity", "GiB", "of memory"]),
    phase_file("intensity-mrc-garbage", NOT_A_PDB, ["not a valid MRC"], name="bad.mrc"),
    phase_file("intensity-mrc-extended-header-2gb", b.mrc_extended_header(2 ** 31 - 1),
               ["not a valid MRC", "extended header of 2147483647 bytes"], name="bad.mrc"),
    phase_file("intensity-mrc-2d", b.mrc_variant(np.ones((1, 9, 9))), ["3-D"], name="bad.mrc"),
    phase_file("intensity-mrc-anisotropic", b.mrc_variant(np.ones((9, 9, 9)), voxel=(1.0, 2.0, 3.0)),
               ["voxel"], name="bad.mrc"),
    phase_file("intensity-bin-size", b.raw_bytes(b"\0" * 1001), ["float64 cube"], name="bad.bin"),
    phase_file("intensity-unknown-suffix", b.text("1 2 3\n"), ["unknown volume format"], name="vol.txt"),

    # ---------------------------------------------------------------- spibatch ingest: CXI files and options
    Case("cxi-missing", "file: CXI (spibatch ingest)", ["ingest", "gone.cxi"], {}, ["gone.cxi", "file not found"]),
    ingest_cli("cxi-directory", b.directory, ["directory"]),
    ingest_cli("cxi-not-hdf5", NOT_A_PDB, ["not an HDF5 file"]),
    ingest_cli("cxi-external-link-to-fifo-storage", b.external_link_to_fifo_storage("entry_1/data_1/data"),
               ["inner.h5", "external storage", "not a regular file"]),
    ingest_cli("cxi-rank-2", b.cxi_variant(lambda: np.ones((30, 16), np.float32), geometry=False),
               ["/entry_1/data_1/data", "3-D or 4-D"]),
    ingest_cli("cxi-strings", b.cxi_variant(lambda: np.full((3, 4, 4), b"ab"), geometry=False),
               ["/entry_1/data_1/data", "numeric"]),
    ingest_cli("cxi-mask-shape", b.cxi_variant(mask=np.zeros((8, 8), np.uint8)), ["mask", "shape"]),
    ingest_cli("cxi-mask-path-missing", b.cxi_variant(), ["/nope", "--mask-path", "dataset missing"],
               ["--mask-path", "/nope"]),
    ingest_cli("cxi-data-path-missing", b.cxi_variant(), ["/entry_1/nothing", "--data-path", "dataset missing"],
               ["--data-path", "/entry_1/nothing"]),
    ingest_cli("cxi-negative-late", b.cxi_variant(b.frames_with((b.CXI_FRAMES - 1, 3, 4), -500.0)),
               [f"frame {b.CXI_FRAMES - 1}", "negative"]),
    ingest_cli("cxi-nan-late", b.cxi_variant(b.frames_with((b.CXI_FRAMES - 1, 5, 5), np.nan)),
               [f"frame {b.CXI_FRAMES - 1}", "NaN"]),
    ingest_cli("cxi-inf", b.cxi_variant(b.frames_with((b.CXI_FRAMES - 2, 0, 0), np.inf)),
               [f"frame {b.CXI_FRAMES - 2}", "NaN or inf"]),
    ingest_cli("cxi-count-above-int32", b.cxi_variant(b.frames_with((b.CXI_FRAMES - 1, 1, 1), 1e12)),
               ["/entry_1/data_1/data", "counts above"]),
    ingest_cli("cxi-truncated", lambda path, base: b.truncated("cxi", 0.5)(path, base), ["truncated"]),
    ingest_cli("cxi-zero-frames", b.cxi_variant(lambda: np.zeros((0, 16, 16), np.float32)), ["0 frames"]),
    ingest_cli("cxi-distance-nan", b.cxi_variant(distance=np.nan), ["distance", "positive finite number", "nan"]),
    ingest_cli("cxi-energy-negative", b.cxi_variant(energy_ev=-6000.0), ["energy", "positive finite number"]),
    ingest_cli("cxi-not-square", b.cxi_variant(lambda: np.ones((4, 16, 12), np.float32)), ["square"]),
    ingest_cli("cxi-declared-huge-chunk", b.declared_cxi((100000, 1000, 1000)), ["--chunk-frames", "of memory"],
               ["--chunk-frames", "1000000000"]),
    ingest_cli("cxi-declared-1e9-frames", b.declared_cxi((10 ** 9, 64, 64)),
               ["1,000,000,000 frames", "never written"]),
    ingest_cli("opt-adu-zero", None, ["--adu-per-photon"], ["--adu-per-photon", "0"]),
    ingest_cli("opt-adu-nan", None, ["--adu-per-photon", "finite"], ["--adu-per-photon", "nan"]),
    ingest_cli("opt-chunk-zero", None, ["--chunk-frames"], ["--chunk-frames", "0"]),
    ingest_cli("opt-beamstop-negative", None, ["--beamstop-radius-pixels"], ["--beamstop-radius-pixels", "-1"]),
    pipe("config: ingest", "ingest-adu-zero", "run", INGEST, ["p.yaml", "ingest.adu_per_photon"],
         ingest__adu_per_photon=0),
    pipe("config: ingest", "ingest-clip-text", "run", INGEST, ["p.yaml", "ingest.clip_negative"],
         ingest__clip_negative="often"),
    pipe("config: ingest", "ingest-chunk-zero", "run", INGEST, ["p.yaml", "ingest.chunk_frames"],
         ingest__chunk_frames=0),
    pipe("config: ingest", "ingest-beamstop-negative", "run", INGEST, ["p.yaml", "ingest.beamstop_radius_pixels"],
         ingest__beamstop_radius_pixels=-2),
    pipe("config: ingest", "ingest-cxi-missing", "run", INGEST, ["gone.cxi", "ingest.cxi", "file not found"],
         ingest__cxi="gone.cxi"),
    pipe("config: ingest", "ingest-data-path-missing", "run", INGEST, ["frames.cxi", "/x/y", "ingest.data_path", "dataset missing"],
         ingest__data_path="/x/y"),
    pipe("config: ingest", "ingest-mask-path-missing", "run", INGEST, ["frames.cxi", "/m", "ingest.mask_path", "dataset missing"],
         ingest__mask_path="/m"),
    pipe("config: ingest", "ingest-no-geometry", "run", INGEST, ["nogeo.cxi", "/entry_1/instrument_1"],
         files={"nogeo.cxi": b.cxi_variant(geometry=False)}, ingest__cxi="nogeo.cxi"),
    pipe("config: ingest", "ingest-detector-mismatch", "run", INGEST, ["frames.cxi", "num_pix", "detector"],
         emc={"detector": "{detector}"}),

    # ---------------------------------------------------------------- validation, truths, spibatch validate
    Case("validate-kinds-differ", "file: volumes (spibatch validate)", ["validate", "{intensity}", "dens.h5"],
         {"dens.h5": b.volume_variant("density", np.ones((9, 9, 9)))},
         ["intensity.h5", "validation.kind", "an intensity", "a density"]),
    run("run-validation-kind-bogus", "config: validation", EMC, ["p.yaml", "validation.kind"],
        validation={"kind": "phase"}),
    Case("validate-first-missing", "file: volumes (spibatch validate)", ["validate", "gone.h5", "{truth}"], {},
         ["gone.h5", "FIRST", "file not found"]),
    Case("validate-voxel-nan", "CLI options", ["validate", "{truth}", "{truth}", "--voxel-size-m", "nan"], {},
         ["truth.h5", "--voxel-size-m", "finite"]),
    Case("validate-voxel-negative", "CLI options", ["validate", "{truth}", "{truth}", "--voxel-size-m", "-1"], {},
         ["truth.h5", "--voxel-size-m"]),
    Case("validate-intensity-nan", "file: volumes (spibatch validate)", ["validate", "{intensity}", "i.h5"],
         {"i.h5": b.intensity_with((1, 2, 3), np.nan)}, ["i.h5", "intensity", "NaN", "mark unmeasured voxels with 0"]),
    Case("validate-declared-4096", "file: volumes (spibatch validate)", ["validate", "big.h5", "{intensity}"],
         {"big.h5": b.declared_volume("intensity", (4096, 4096, 4096))},
         ["big.h5", "FIRST", "validate stage needs at least", "of memory", "compare smaller volumes"]),
    Case("validate-constant-1e308", "file: volumes (spibatch validate)", ["validate", "c.h5", "{intensity}"],
         {"c.h5": b.volume_variant("intensity", np.full((9, 9, 9), 1e308))},
         ["c.h5", "FIRST", "constant", "no structure to compare"]),
    Case("validate-dataset-missing", "CLI options", ["validate", "{truth}", "{truth}", "--dataset", "nope"], {},
         ["truth.h5", "nope", "dataset missing"]),
    run("run-volume-missing", "config: validation", EMC, ["gone.h5", "validation.volume", "file not found"],
        validation={"volume": "gone.h5", "reference": "{truth}"}),
    run("run-reference-missing", "config: validation", EMC, ["gone.h5", "validation.reference", "file not found"],
        validation={"reference": "gone.h5"}),
    run("run-reference-voxel-zero", "config: validation", EMC, ["p.yaml", "validation.reference_voxel_size_m"],
        validation={"reference": "{truth}", "reference_voxel_size_m": 0}),
    run("run-volume-without-reference", "config: validation", EMC, ["p.yaml", "validation.reference"],
        validation={"volume": "{truth}"}),
    run("run-validation-dataset-number", "config: validation", EMC, ["p.yaml", "validation.dataset"],
        validation={"dataset": "[1]"}),
    run("run-validation-voxel-negative", "config: validation", EMC, ["p.yaml", "validation.voxel_size_m"],
        validation={"voxel_size_m": -1}),
    Case("truth-voxel-negative", "CLI options", ["phase", "p.yaml", "--truth", "{truth}", "--truth-voxel-size-m", "-1"],
         {"p.yaml": b.yaml_file(PHASE)}, ["truth.h5", "--truth-voxel-size-m"]),
    Case("truth-voxel-without-truth", "CLI options", ["phase", "p.yaml", "--truth-voxel-size-m", "1e-9"],
         {"p.yaml": b.yaml_file(PHASE)}, ["p.yaml", "--truth-voxel-size-m", "without --truth"]),
    Case("truth-missing", "file: truth (spibatch phase --truth)", ["phase", "p.yaml", "--truth", "gone.h5"],
         {"p.yaml": b.yaml_file(PHASE)}, ["gone.h5", "--truth", "file not found"]),
    Case("truth-garbage", "file: truth (spibatch phase --truth)", ["phase", "p.yaml", "--truth", "junk.h5"],
         {"p.yaml": b.yaml_file(PHASE), "junk.h5": NOT_A_PDB}, ["junk.h5", "--truth"]),
    Case("truth-nan", "file: truth (spibatch phase --truth)", ["phase", "p.yaml", "--truth", "t.h5"],
         {"p.yaml": b.yaml_file(PHASE), "t.h5": b.volume_variant("density", np.full((5, 5, 5), np.nan))},
         ["t.h5", "NaN"]),

    # ---------------------------------------------------------------- spibatch run: sized from what the first stage makes
    run("run-sim-num-div-1000", "huge sizes (pipeline)", SIM, ["p.yaml", "emc.num_div", "of memory"], emc={"num_div": 1000}),
    run("run-sim-starts-huge", "huge sizes (pipeline)", SIM, ["p.yaml", "phasing.num_starts", "of memory"],
        phasing={"num_starts": 100000000, "keep_best": 1}),
    run("run-sim-model-size-small", "huge sizes (pipeline)", SIM, ["p.yaml", "emc.model_size", "smaller"],
        emc={"model_size": 11}),
    run("run-sim-crop-larger", "huge sizes (pipeline)", SIM, ["p.yaml", "phasing.crop_to", "larger"],
        phasing={"crop_to": 201}),
    run("run-sim-photons-missing", "paths", SIM, ["gone.emc", "emc.photons", "file not found"],
        emc={"photons": "gone.emc", "detector": "{detector}"}),
    run("run-sim-photons-alone", "config: emc", SIM, ["p.yaml", "emc.detector", "without"],
        emc={"photons": "{photons}"}),
    run("run-sim-start-model-shape", "file: start model", SIM, ["sm.h5", "emc.start_model", "shape"],
        files={"sm.h5": b.volume_variant("intensity", np.ones((9, 9, 9)))}, emc={"start_model": "sm.h5"}),
    run("run-no-data", "config: top level", {"name": "t"}, ["p.yaml", "simulation"]),
    run("run-phase-intensity-nan", "file: intensity (HDF5, MRC, Dragonfly .bin)", SIM, ["i.h5", "NaN"],
        files={"i.h5": b.intensity_with((1, 2, 3), np.nan)}, phasing={"intensity": "i.h5"}),
    Case("run-until-bogus", "CLI options", ["run", "p.yaml", "--until", "bogus"], {"p.yaml": b.yaml_file(SIM)},
         ["--until", "bogus"]),

    # ---------------------------------------------------------------- site files
    site("site-missing", ["file not found"], builder=lambda path, base: None),
    site("site-directory", ["IsADirectoryError"], builder=b.directory),
    site("site-not-utf8", ["UnicodeDecodeError"], builder=b.raw_bytes(b"provider: \xff\n")),
    site("site-bad-yaml", ["not valid YAML"], text="provider: [local\n"),
    site("site-empty", ["--site", "the site file is empty"], text=""),
    site("site-unknown-key", ["workerz", "unknown key"], workerz=3),
    site("site-workers-bool", ["workers", "true/false"], workers="true"),
    site("site-workers-zero", ["workers"], workers=0),
    site("site-workers-fraction", ["workers"], workers=1.5),
    site("site-workers-1e12", ["workers", "100000"], workers=1000000000000),
    site("site-workers-beyond-cores", ["workers: 5000", "core", "local.cores"], workers=5000),
    site("site-provider-pbs", ["provider", "pbs"], provider="pbs"),
    site("site-container-no-image", ["container", "needs an image"], container={"runtime": "apptainer"}),
    site("site-container-binds-text", ["container.binds"], container={"binds": "/data"}),
    site("site-local-period-nan", ["local.strategy_period_s", "finite"], local={"strategy_period_s": ".nan"}),
    site("site-local-cores-zero", ["local.cores"], local={"cores": 0}),
    site("site-local-mpi-always", ["local.mpi"], local={"mpi": "always"}),
    site("site-slurm-walltime", ["slurm.walltime"], provider="slurm", slurm={"walltime": "90 minutes"}),
    site("site-slurm-nodes-zero", ["slurm.nodes"], provider="slurm", slurm={"nodes": 0}),
    site("site-slurm-partition-newline", ["slurm.partition", "Slurm name"],
         text='provider: slurm\nworkers: 2\nslurm:\n  partition: "debug\\nrm -rf ~"\n'),
    site("site-slurm-qos-semicolon", ["slurm.qos", "Slurm name"], provider="slurm", slurm={"qos": "normal;reboot"}),
    site("site-slurm-account-spaces", ["slurm.account", "no spaces"], provider="slurm", slurm={"account": "my project"}),
    site("site-wrong-section", ["slurm", "provider is local"], slurm={"partition": "x"}),
    site("site-k8s-hpc", ["emc_mode", "HTC mode only"], provider="kubernetes", emc_mode="hpc"),

    # ---------------------------------------------------------------- command line, run folders
    Case("cli-missing-argument", "CLI options", ["ingest"], {}, ["spibatch ingest", "Missing argument"]),
    Case("cli-unknown-option", "CLI options", ["emc", "p.yaml", "--frobnicate"], {}, ["spibatch emc", "--frobnicate"]),
    Case("cli-demo-iterations-zero", "CLI options", ["demo", "--iterations", "0"], {}, ["spibatch demo", "--iterations"]),
    Case("cli-unknown-command", "CLI options", ["simulat", "p.yaml"], {}, ["spibatch", "simulat"]),
    Case("cli-out-and-resume", "run folders", ["emc", "p.yaml", "--out", "x", "--resume", "{earlier}"],
         {"p.yaml": b.yaml_file(EMC)}, ["--resume", "--out"]),
    Case("cli-out-holds-run", "run folders", ["emc", "p.yaml", "--out", "{earlier}"], {"p.yaml": b.yaml_file(EMC)},
         ["--out", "already holds a run"]),
    Case("cli-out-is-file", "run folders", ["emc", "p.yaml", "--out", "afile"],
         {"p.yaml": b.yaml_file(EMC), "afile": b.text("x\n")}, ["afile", "--out"]),
    Case("cli-resume-bad-photons", "run folders", ["emc", "p.yaml", "--resume", "{earlier}"],
         {"p.yaml": b.yaml_file(merged(EMC, emc__photons="bad.h5")),
          "bad.h5": b.photons_variant(b.set_row("count_multi", PHOTONS_LAST, [-3]))}, ["bad.h5", "count_multi"]),
    Case("cli-resume-a-file", "run folders", ["emc", "p.yaml", "--resume", "afile"],
         {"p.yaml": b.yaml_file(EMC), "afile": b.text("x\n")}, ["afile", "--resume"]),
    Case("cli-out-under-proc", "run folders", ["emc", "p.yaml", "--out", "/proc/spibatch-run"],
         {"p.yaml": b.yaml_file(EMC)}, ["/proc/spibatch-run", "--out"]),
    Case("cli-resume-not-a-run", "run folders", ["resume", "{intensity}"], {}, ["RUN_DIR", "not a run"]),
    Case("init-into-a-file", "paths", ["init", "afile"], {"afile": b.text("x\n")}, ["afile", "DIRECTORY"]),
    Case("init-under-proc", "paths", ["init", "/proc/spibatch-no"], {}, ["/proc/spibatch-no", "DIRECTORY"]),
    Case("cli-report-missing", "run folders", ["report", "gone"], {}, ["gone"]),
    Case("cli-report-not-a-run", "run folders", ["report", "plain"], {"plain": b.directory},
         ["plain", "RUN_DIR", "not a run folder"]),
    Case("replay-num-hits-negative", "CLI options", ["replay", "simulated", "--rate", "10", "--as", "cxi-folder",
                                                     "--target", "f", "--num-hits", "-3"], {}, ["--num-hits"]),
    Case("replay-bridge-not-an-endpoint", "CLI options", ["replay", "simulated", "--rate", "10", "--as",
                                                          "karabo-bridge", "--target", "notaurl"], {},
         ["--target", "notaurl", "ZeroMQ endpoint"]),
    Case("replay-target-is-a-file", "CLI options", ["replay", "simulated", "--rate", "10", "--as", "cxi-folder",
                                                    "--target", "afile/sub"], {"afile": b.text("x\n")},
         ["afile/sub", "--target", "not a folder"]),
    Case("replay-out-unwritable", "CLI options", ["replay", "simulated", "--rate", "10", "--as", "cxi-folder",
                                                  "--target", "f", "--out", "/proc/spibatch-replay"], {},
         ["/proc/spibatch-replay", "--out"]),
    Case("replay-detector-mismatch", "CLI options", ["replay", "ph.h5", "--detector", "{detector}", "--rate", "10",
                                                     "--as", "cxi-folder", "--target", "f"],
         {"ph.h5": b.photons_variant(num_pix=4000)}, ["ph.h5", "num_pix", "detector"]),
    Case("runs-dir-is-file", "run folders", ["emc", "p.yaml"],
         {"p.yaml": b.yaml_file(merged(EMC, output={"runs_dir": "afile"})), "afile": b.text("x\n")}, ["afile"]),
]
