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


def test_schema_lists_sections_and_units():
    schema = json_schema()
    json.dumps(schema)
    assert set(schema["properties"]) == {"name", "geometry", "simulation", "emc", "phasing", "output"}
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
