"""Simulate and ingest inputs a review found taken silently or with a traceback (2026-12-07): each is now read
right or refused in one line."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest

from spibatch.config import Ingest
from spibatch.detector import Detector
from spibatch.errors import InputError
from spibatch.sim import SimulationSettings, simulate
from spibatch.sim.scattering import corner_s2
from spibatch.sim.structure import Atoms, check_b_factors, read_structure

PDB_1EI7 = Path(__file__).resolve().parents[1] / "spibatch" / "data" / "1EI7.pdb"


def atom(serial: int, x: str, y: str, z: str, occ: str = "1.00", b: str = "20.00") -> str:
    return f"ATOM  {serial:5d}  CA  ALA A{serial:4d}    {x:>8}{y:>8}{z:>8}{occ:>6}{b:>6}           C\n"


def small_pdb(path: Path, b: str = "20.00") -> Path:
    path.write_text("".join(atom(i + 1, f"{3.0 * i:.3f}", f"{(i % 3) * 2.0:.3f}", f"{(i % 5) * 1.5:.3f}", b=b)
                            for i in range(12)) + "END\n")
    return path


@pytest.mark.parametrize("x, occ, shown, field", [("abc.de", "1.00", "abc.de", "x"), ("", "1.00", "", "x"),
                                                  ("16.2x09", "1.00", "16.2x09", "x"),
                                                  ("1.000", "x.xx", "x.xx", "occupancy")])
def test_a_field_that_is_not_a_number_is_refused_naming_its_line(tmp_path, x, occ, shown, field):
    """gemmi read these as 0 (the atom moved to x = 0, or dropped at occupancy 0) or as the number they begin
    with (16.2x09 as 16.2), and the simulation ran."""
    pdb = tmp_path / "bad.pdb"
    pdb.write_text(atom(1, "1.000", "2.000", "3.000") + atom(2, x, "2.000", "3.000", occ=occ) + "END\n")
    with pytest.raises(InputError) as err:
        read_structure(pdb)
    assert f"line 2, {field} (columns" in str(err.value) and repr(shown) in str(err.value)
    assert str(pdb) in str(err.value)


def test_a_blank_b_factor_stays_allowed_a_blank_occupancy_does_not(tmp_path):
    """A blank B-factor is read as 0 (no blur); a blank occupancy as 0, which dropped the atom without a word."""
    pdb = tmp_path / "blank.pdb"
    pdb.write_text(atom(1, "1.000", "2.000", "3.000", b="") + atom(2, "4.000", "2.000", "3.000") + "END\n")
    assert read_structure(pdb).num_atoms == 2
    pdb.write_text(atom(1, "1.000", "2.000", "3.000", occ="") + atom(2, "4.000", "2.000", "3.000") + "END\n")
    with pytest.raises(InputError, match=r"line 1, occupancy \(columns 55-60\): reads ''"):
        read_structure(pdb)


def test_a_gzipped_pdb_or_mmcif_without_gz_in_its_name_is_read(tmp_path):
    """gemmi decides by the name: a gzipped file named .pdb said 'no atoms found'."""
    import gemmi

    plain = read_structure(PDB_1EI7, assembly=False)
    named = tmp_path / "packed.pdb"
    named.write_bytes(gzip.compress(PDB_1EI7.read_bytes()))
    np.testing.assert_array_equal(read_structure(named, assembly=False).positions_m, plain.positions_m)
    cif = tmp_path / "packed_cif.pdb"
    document = gemmi.read_structure(str(PDB_1EI7)).make_mmcif_document()
    cif.write_bytes(gzip.compress(document.as_string().encode()))
    np.testing.assert_allclose(read_structure(cif, assembly=False).positions_m, plain.positions_m, atol=1e-15)


def b_atoms(b) -> Atoms:
    n = len(b)
    return Atoms(positions_m=np.zeros((n, 3)), atomic_numbers=np.full(n, 6, np.int32), occupancy=np.ones(n),
                 b_factor_a2=np.asarray(b, np.float64))


def test_negative_b_factors_warn_while_mild_and_are_refused_where_they_blow_up(caplog):
    s2 = corner_s2(91, 2.0e7)                            # 0.0061 1/A^2 at the corner
    with caplog.at_level(logging.WARNING, logger="spibatch"):
        check_b_factors(b_atoms([20.0, 5.0]), s2, "p.pdb")
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="spibatch"):
        check_b_factors(b_atoms([20.0, -3.0, -10.0]), s2, "p.pdb")
    assert "2 atoms have negative B-factors (down to -10" in caplog.text
    with pytest.raises(InputError) as err:            # exp(99999 s^2) overflows: a traceback in the expansion before
        check_b_factors(b_atoms([20.0, -99999.0]), s2, "p.pdb")
    assert "atom 2 has B-factor -99999" in str(err.value) and "use_b_factors: false" in str(err.value)


def test_corner_s2_is_the_grids_corner():
    m, dq = 31, 2.0e7
    k = np.arange(m) - (m - 1) // 2
    assert corner_s2(m, dq) == pytest.approx(3 * (k ** 2).max() * (dq * 1e-10) ** 2 / 4)


def test_an_absolute_fluence_beyond_memory_is_refused_and_a_useless_one_said(tmp_path, caplog):
    """1e40 photons/m^2 tried to allocate 447 PiB (a numpy traceback); 1e16 gave 0 photons a frame, exit 0."""
    pdb = small_pdb(tmp_path / "p.pdb")
    det = Detector.flat(16, 0.5e-3, 0.15, wavelength_m=2.07e-10, beamstop_radius_pixels=1)
    sim = SimulationSettings(pdb=pdb, num_patterns=4, mean_photons_per_frame=None, fluence_photons_per_m2=1e40)
    with pytest.raises(InputError) as err:
        simulate(det, sim, tmp_path / "huge", show_progress=False)
    assert "simulation.fluence_photons_per_m2" in str(err.value) and "photons per frame" in str(err.value)
    assert not (tmp_path / "huge" / "photons.emc").exists()
    with caplog.at_level(logging.WARNING, logger="spibatch"):
        simulate(det, SimulationSettings(pdb=pdb, num_patterns=4, mean_photons_per_frame=None,
                                         fluence_photons_per_m2=1e16), tmp_path / "tiny", show_progress=False)
    assert "too few for EMC to orient a frame" in caplog.text


@pytest.mark.parametrize("given", ["entry_1/instrument_1/detector_2/data", "//entry_1/instrument_1/detector_2/data",
                                   "/entry_1/./instrument_1/detector_2/data"])
def test_a_data_path_spelt_otherwise_finds_its_own_detectors_geometry(tmp_path, given):
    """Without its leading slash the path missed the detector-group pattern and took detector_1's distance."""
    path = tmp_path / "two.cxi"
    energy = 6000 * 1.602176634e-19
    with h5py.File(path, "w") as f:
        for name, edge, distance in (("detector_1", 32, 0.15), ("detector_2", 16, 0.5)):
            group = f.create_group(f"/entry_1/instrument_1/{name}")
            group["data"] = np.ones((3, edge, edge), np.float32)
            group["distance"], group["x_pixel_size"], group["y_pixel_size"] = distance, 0.5e-3, 0.5e-3
        f["/entry_1/instrument_1/source_1/energy"] = energy
    cfg = Ingest(cxi=path, data_path=given)
    assert cfg.data_path == "/entry_1/instrument_1/detector_2/data"
    det = Detector.from_cxi(path, data_path=cfg.data_path)
    assert det.num_pix == 256 and det.detd_pixels == pytest.approx(1000.0)


def write_frames(path: Path, frames: np.ndarray, **datasets) -> Path:
    with h5py.File(path, "w") as f:
        f["/entry_1/data_1/data"] = frames
        for name, value in datasets.items():
            f[f"/entry_1/instrument_1/detector_1/{name}"] = value
    return path


def test_a_count_beyond_32_bits_names_its_frame_and_pixel(tmp_path):
    """The line said 'in frames 0..19' for one pixel of frame 2."""
    from spibatch.io.cxi import check_frames

    frames = np.zeros((20, 8, 8), np.int64)
    frames[:, 0, 0] = 1
    frames[2, 1, 3] = np.iinfo(np.int64).max
    with pytest.raises(InputError, match=r"frame 2, pixel 11: 9\.22337e\+18 photons is above 2147483647"):
        check_frames(write_frames(tmp_path / "big.cxi", frames))


@pytest.mark.parametrize("name, value, said", [
    ("corner_position", [np.nan, 0.0, 0.15], "corner_position holds values that are not finite numbers"),
    ("basis_vectors", np.zeros((3, 3)), "basis_vectors holds shape (3, 3), not (2, 3)")])
def test_a_broken_layout_dataset_is_named_with_what_is_wrong(tmp_path, name, value, said):
    """Both said 'puts the pixels elsewhere ... basis_vectors', naming basis_vectors for a NaN corner."""
    from spibatch.io.cxi import UnsupportedLayout, read_flat_geometry

    path = write_frames(tmp_path / "geo.cxi", np.ones((2, 8, 8), np.float32), distance=0.15, x_pixel_size=5e-4,
                        y_pixel_size=5e-4, **{name: value})
    with h5py.File(path, "a") as f:
        f["/entry_1/instrument_1/source_1/energy"] = 6000 * 1.602176634e-19
    with pytest.raises(UnsupportedLayout) as err:
        read_flat_geometry(path)
    assert said in str(err.value) and f"detector_1/{name}" in str(err.value)


def test_a_frame_too_large_alone_does_not_ask_for_fewer_frames():
    from spibatch import estimates

    with pytest.raises(InputError) as err:
        estimates.ingest(2, 10 ** 10, 4, 1, "--chunk-frames").check(None)
    assert "one frame of 10,000,000,000 pixels alone is too large: bin them" in str(err.value)
    assert "fewer frames" not in str(err.value)
