"""The pipeline file: validation, line-numbered errors, schema, Dragonfly config.ini."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from spibatch.config import Pipeline, dump_pipeline, from_dragonfly_ini, json_schema, load_pipeline
from spibatch.errors import InputError

TEMPLATE = Path(str(resources.files("spibatch") / "data" / "pipeline.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path


def test_template_and_demo_validate(tmp_path):
    pipeline = load_pipeline(TEMPLATE)
    assert pipeline.name == "my-run"
    assert pipeline.geometry.detector_pixels == 64
    assert pipeline.simulation.pdb.is_absolute() and pipeline.simulation.pdb.name == "1EI7.pdb"
    assert abs(pipeline.geometry.wavelength - 1.239841984e-6 / 6000) < 1e-18
    demo = load_pipeline(TEMPLATE.with_name("demo.yaml"))
    assert demo.simulation.pdb.exists()


def test_unknown_key_names_line_key_and_choices(tmp_path):
    path = write(tmp_path, "name: x\nsimulation:\n  pdb: a.pdb\n  num_patern: 10\n")
    with pytest.raises(InputError) as err:
        load_pipeline(path)
    msg = str(err.value)
    assert str(path) in msg and "line 4" in msg and "simulation.num_patern" in msg
    assert "num_patterns" in msg  # the keys it would accept
    assert "\n" not in msg


def test_wrong_type_says_expected_and_found(tmp_path):
    path = write(tmp_path, "geometry:\n  wavelength_m: 1e-10\n  detector_pixels: many\n")
    with pytest.raises(InputError) as err:
        load_pipeline(path)
    msg = str(err.value)
    assert "line 3" in msg and "geometry.detector_pixels" in msg
    assert "integer" in msg and "'many'" in msg


def test_negative_quantity_refused(tmp_path):
    path = write(tmp_path, "geometry:\n  wavelength_m: 1e-10\n  pixel_size_m: -1\n")
    with pytest.raises(InputError, match=r"line 3: geometry.pixel_size_m: expected: .*greater than 0"):
        load_pipeline(path)


def test_exactly_one_wavelength(tmp_path):
    path = write(tmp_path, "geometry:\n  wavelength_m: 1e-10\n  photon_energy_ev: 6000\n")
    with pytest.raises(InputError, match="exactly one of wavelength_m and photon_energy_ev"):
        load_pipeline(path)


def test_duplicate_key_and_bad_yaml(tmp_path):
    with pytest.raises(InputError, match=r"line 2: name: key 'name' appears twice"):
        load_pipeline(write(tmp_path, "name: a\nname: b\n"))
    # two spellings of one key that a Python dict (and the settings' models) would fold into one, the last winning
    for first, second in (("1", "'1'"), ("0x1", "1"), ("1.0", "1"), ("~", "null"), ("true", "1")):
        with pytest.raises(InputError, match=r"line 3: .*appears twice"):
            load_pipeline(write(tmp_path, f"name: a\n{first}: x\n{second}: y\n"))
    with pytest.raises(InputError, match=r"line \d+.*not valid YAML"):
        load_pipeline(write(tmp_path, "geometry:\n  wavelength_m: [1,\n"))
    with pytest.raises(InputError, match="mapping of sections"):
        load_pipeline(write(tmp_path, "- a\n- b\n"))


def test_missing_file_and_missing_required(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_pipeline(tmp_path / "nope.yaml")
    with pytest.raises(InputError, match=r"simulation.pdb: required key is missing"):
        load_pipeline(write(tmp_path, "simulation:\n  num_patterns: 3\n"))


def test_resolved_config_round_trips(tmp_path):
    pipeline = load_pipeline(TEMPLATE)
    again = write(tmp_path, dump_pipeline(pipeline))
    assert load_pipeline(again) == pipeline


def test_numbers_are_read_as_yaml_1_2(tmp_path):
    """YAML 1.1 read `iterations: 010` as 8 and `1:30` as 90 without a word: YAML 1.2's numbers instead (010 is
    ten, 0o10 eight, 0x10 sixteen, 1:30 text), and the resolved file round-trips."""
    path = write(tmp_path, "emc:\n  iterations: 010\n  num_div: 0o4\n  frames_per_shard: 0x100\n  seed: 007\n")
    emc = load_pipeline(path).emc
    assert (emc.iterations, emc.num_div, emc.frames_per_shard, emc.seed) == (10, 4, 256, 7)
    again = load_pipeline(write(tmp_path, dump_pipeline(load_pipeline(path)))).emc
    assert (again.iterations, again.num_div) == (10, 4)
    with pytest.raises(InputError, match=r"emc.iterations.*found '1:30'"):
        load_pipeline(write(tmp_path, "emc:\n  iterations: 1:30\n"))


@pytest.mark.parametrize("name", ["0189", "08", "0o17", "010"])
def test_names_that_look_like_numbers_round_trip(tmp_path, name):
    """A run's config.yaml is dumped and read back on every worker and by a resume: a name of digits with a
    leading zero (`"0189"`, plain text to YAML 1.1's dumper) came back as the number 189 and the run could not
    be resumed."""
    first = load_pipeline(write(tmp_path, f"name: '{name}'\n"))
    assert first.name == name
    again = load_pipeline(write(tmp_path, dump_pipeline(first)))
    assert again.name == name and again == first


def test_schema_lists_sections_and_units():
    schema = json_schema()
    json.dumps(schema)
    assert set(schema["properties"]) == {"name", "geometry", "simulation", "ingest", "emc", "phasing", "validation", "output", "source",
                                         "device", "gpu_runtime"}
    geometry = schema["$defs"]["Geometry"]["properties"]
    assert {"detector_distance_m", "pixel_size_m", "wavelength_m", "photon_energy_ev"} <= set(geometry)
    assert schema["$defs"]["Geometry"]["additionalProperties"] is False


def test_dragonfly_ini_units(small_dataset):
    g = from_dragonfly_ini(small_dataset / "config.ini")
    assert g.detector_pixels == 64
    assert g.detector_distance_m == pytest.approx(0.3)
    assert g.pixel_size_m == pytest.approx(0.512e-3)
    assert g.wavelength == pytest.approx(6.2e-10)
    assert g.beamstop_radius_pixels == 6 and g.polarization == "x"


def test_pipeline_defaults_are_valid():
    assert Pipeline().emc.num_div == 4


def test_emc_section_paths_beta_and_defaults(tmp_path):
    path = write(tmp_path, "emc:\n  photons: data/photons.emc\n  detector: ../det.h5\n  beta: 0.05\n"
                           "  beta_schedule: null\n  point_group: D17\n")
    emc = load_pipeline(path).emc
    assert emc.photons == (tmp_path / "data" / "photons.emc").resolve()
    assert emc.detector == (tmp_path.parent / "det.h5").resolve() and emc.start_model is None
    assert emc.beta == 0.05 and emc.beta_schedule is None and emc.point_group == "D17"
    default = Pipeline().emc
    assert default.beta == "auto" and default.beta_factor == 1.0 and default.frames_per_shard == 4096
    assert (default.beta_schedule.factor, default.beta_schedule.period) == (2.0, 10)
    assert default.photons is None and default.model_size is None
    assert default.friedel_symmetry is True and default.merge == "pooled"     # as Dragonfly in 3-D; the EM update
    assert load_pipeline(write(tmp_path, "emc: {beta: auto}\n")).emc.beta == "auto"


@pytest.mark.parametrize("line,expected", [
    ("num_div: 0", r"line 2: emc.num_div: expected: .*greater than or equal to 1; found 0"),
    ("beta: -1", r"line 2: emc.beta: expected: a positive number or 'auto'; found -1"),
    ("beta: automatic", r"line 2: emc.beta: expected: a positive number or 'auto'; found 'automatic'"),
    ("frames_per_shard: 0", r"line 2: emc.frames_per_shard: expected: .*greater than or equal to 1"),
    ("point_group: X5", r"line 2: emc.point_group: expected: unknown point group 'X5'"),
    ("point_group: D100000", r"line 2: emc.point_group: expected: point group 'D100000': n must be 1 to 120"),
    ("beta_schedule: {factor: 2, periode: 10}", r"line 2: emc.beta_schedule.periode: unknown key .*period"),
])
def test_emc_mistakes_are_one_line(tmp_path, line, expected):
    with pytest.raises(InputError, match=expected) as err:
        load_pipeline(write(tmp_path, f"emc:\n  {line}\n"))
    assert "\n" not in str(err.value)


def test_template_emc_section_is_commented_and_valid():
    text = TEMPLATE.read_text()
    assert "# photons:" in text and "beta: auto" in text and "frames_per_shard: 4096" in text
    emc = load_pipeline(TEMPLATE).emc
    assert emc.beta == "auto" and emc.photons is None and emc.num_div == 4
    from spibatch.config import EMC

    for name, field in EMC.model_fields.items():     # every key shown (written or commented), at its default
        assert f"  {name}:" in text or f"  # {name}:" in text, name
        if getattr(emc, name) is not None and f"  {name}:" in text:
            assert getattr(emc, name) == field.get_default(call_default_factory=True), name


# ---- strict numbers in every section of every settings file (issue 12) -------------------------

def _numbers(model, prefix: str):
    """(key path, is_float) of every numeric field of ``model`` and of its sub-sections."""
    from pydantic import BaseModel

    from spibatch.yaml_models import _plain_types

    for name, info in model.model_fields.items():
        kinds = _plain_types(info.annotation)
        sub = [k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)]
        if sub:
            yield from _numbers(sub[0], f"{prefix}{name}.")
        elif bool not in kinds and kinds & {int, float}:
            yield f"{prefix}{name}", float in kinds


def _nested(key: str, value: str) -> str:
    parts = key.split(".")
    return "".join(f"{'  ' * i}{p}:\n" for i, p in enumerate(parts[:-1])) + f"{'  ' * (len(parts) - 1)}{parts[-1]}: {value}\n"


PIPELINE_NUMBERS = [key for section in ("geometry", "simulation", "emc", "phasing", "ingest", "validation")
                    for key in _numbers(getattr(Pipeline.model_fields[section].annotation, "__args__",
                                                (Pipeline.model_fields[section].annotation,))[0], f"{section}.")]


@pytest.mark.parametrize("key, is_float", PIPELINE_NUMBERS, ids=[k for k, _ in PIPELINE_NUMBERS])
def test_every_pipeline_number_refuses_booleans_and_non_finite_values(tmp_path, key, is_float):
    """``iterations: true`` ran one iteration and ``beta_factor: .inf`` "completed": both are refused, in
    every numeric key of every section, with the key named."""
    needs = {"simulation": "simulation:\n  pdb: x.pdb\n", "ingest": "ingest:\n  cxi: x.cxi\n"}
    for bad in (("true", "false", ".inf", "-.inf", ".nan") if is_float else ("true", "false", "2.5")):
        section = key.split(".")[0]
        text = _nested(key, bad)
        if section in needs:   # the section's required key first
            text = needs[section] + text.split("\n", 1)[1]
        with pytest.raises(InputError) as err:
            load_pipeline(write(tmp_path, text))
        assert f": {key}: " in str(err.value), (bad, str(err.value))


def test_site_numbers_refuse_booleans_and_non_finite_values(tmp_path):
    from spibatch.backends import Site, load_site, site_model

    checked = 0
    for provider in ("local", "slurm", "kubernetes"):
        model = site_model(provider)
        for key, is_float in _numbers(model, ""):
            if key.split(".")[0] in {"local", "slurm", "kubernetes"} - {provider}:
                continue
            for bad in (("true", ".inf", ".nan") if is_float else ("true", "2.5")):
                path = tmp_path / "site.yaml"
                path.write_text(f"provider: {provider}\n" + _nested(key, bad))
                with pytest.raises(InputError) as err:
                    load_site(path)
                assert f": {key}: " in str(err.value), (provider, key, bad, str(err.value))
                checked += 1
    assert checked >= 20 and Site.model_fields["workers"].metadata   # workers has bounds (1..100 000)


def test_paths_that_loop_name_the_key(tmp_path):
    (tmp_path / "loop.pdb").symlink_to(tmp_path / "loop.pdb")
    with pytest.raises(InputError, match=r"loop.pdb: simulation.pdb: cannot resolve the path"):
        load_pipeline(write(tmp_path, "simulation: {pdb: loop.pdb}\n"))


@pytest.mark.parametrize("starts, kept", [(None, 8), (16, 8), (2, 1), (3, 1), (1, 1), (40, 20)])
def test_keep_best_defaults_to_half_the_starts(tmp_path, starts, kept):
    """`num_starts: 2` alone is a valid phasing section: keep_best, not given, is half the starts (at least one)."""
    path = tmp_path / "p.yaml"
    path.write_text("name: t\nphasing: {intensity: i.h5" + ("" if starts is None else f", num_starts: {starts}") + "}\n")
    assert load_pipeline(path).phasing.keep_best == kept


def test_a_keep_best_above_num_starts_is_still_refused(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: t\nphasing: {intensity: i.h5, num_starts: 2, keep_best: 3}\n")
    with pytest.raises(InputError, match=r"keep_best \(3\) is more than num_starts \(2\)"):
        load_pipeline(path)


def test_a_settings_file_from_a_pipe_and_a_128_bit_seed_are_read(tmp_path):
    """`--site <(envsubst < t.yaml)` hands a pipe, not a regular file: it is read (a device such as /dev/zero is
    not: the corpus); NumPy's own reproducible seeds (SeedSequence().entropy) have ~39 digits: a seed may."""
    import os
    import threading

    from spibatch.backends import load_site
    from spibatch.config import load_pipeline

    fifo = tmp_path / "site.yaml"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("provider: local\nworkers: 1\n"))
    writer.start()
    assert load_site(fifo).workers == 1
    writer.join(timeout=10)
    seed = 302695553528826236108093402917612497233
    (tmp_path / "p.yaml").write_text(f"name: t\nemc: {{num_div: 1, seed: {seed}}}\n")
    assert load_pipeline(tmp_path / "p.yaml").emc.seed == seed
