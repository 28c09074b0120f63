"""Structure factor (NUFFT) against a direct sum, grid and axis conventions, density, PDB reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spibatch.errors import InputError
from spibatch.sim.scattering import (density, direct_structure_factor, intensity, structure_factor)
from spibatch.sim.structure import Atoms, read_structure

REPO = Path(__file__).resolve().parents[1]
PDB_1EI7 = REPO / "spibatch" / "data" / "1EI7.pdb"
DQ = 2.0e7        # 1/m: one voxel; with M = 31 the grid reaches |q| = 15 * DQ * sqrt(3) ~ 0.05 1/A
M = 31
C = (M - 1) // 2


def atoms_of(positions_a, z, occ=None, b=None) -> Atoms:
    positions = np.asarray(positions_a, np.float64) * 1e-10
    n = len(positions)
    return Atoms(positions_m=positions, atomic_numbers=np.asarray(z, np.int32),
                 occupancy=np.ones(n) if occ is None else np.asarray(occ, np.float64),
                 b_factor_a2=np.zeros(n) if b is None else np.asarray(b, np.float64))


@pytest.fixture(scope="module")
def few_atoms() -> Atoms:
    rng = np.random.default_rng(7)
    n = 12
    return atoms_of(rng.uniform(-40, 40, (n, 3)), rng.choice([1, 6, 7, 8, 16, 26], n),
                    rng.uniform(0.3, 1.0, n), rng.uniform(0, 400, n))


@pytest.mark.parametrize("use_b_factors", [True, False])
def test_nufft_equals_direct_sum(few_atoms, use_b_factors):
    grid = structure_factor(few_atoms, M, DQ, use_b_factors=use_b_factors)
    assert grid.shape == (M, M, M) and grid.dtype == np.complex128
    k = np.array([[0, 0, 0], [C, C, C], [-C, 3, -7], [5, -C, 11], [1, 2, 3], [-9, -9, C]])
    direct = direct_structure_factor(few_atoms, k * DQ, use_b_factors=use_b_factors)
    np.testing.assert_allclose(grid[tuple((k + C).T)], direct, rtol=1e-7, atol=1e-9 * np.abs(direct).max())
    # the B-factors matter at the corner of this grid (so the test above can tell them apart)
    plain = direct_structure_factor(few_atoms, k[1:2] * DQ, use_b_factors=False)
    blurred = direct_structure_factor(few_atoms, k[1:2] * DQ, use_b_factors=True)
    assert abs(abs(plain[0]) - abs(blurred[0])) > 0.05 * abs(plain[0])


def test_friedel_symmetry_and_forward_intensity(few_atoms):
    import xraydb

    volume = intensity(structure_factor(few_atoms, M, DQ))
    np.testing.assert_allclose(volume, volume[::-1, ::-1, ::-1], rtol=1e-9, atol=1e-12 * volume.max())
    f0_sum = sum(float(xraydb.f0(int(z), 0.0)[0]) * occ
                 for z, occ in zip(few_atoms.atomic_numbers, few_atoms.occupancy))
    assert volume[C, C, C] == pytest.approx(f0_sum ** 2, rel=1e-9)
    assert volume[C, C, C] == pytest.approx(few_atoms.electrons() ** 2, rel=1e-3)  # f0(0) ~ Z
    assert volume.argmax() == np.ravel_multi_index((C, C, C), volume.shape)


def test_volume_axes_follow_atom_axes():
    # two carbons 60 A apart along x: fringes along axis 0 only, with period 1 / (60 A) in q
    pair = atoms_of([[-30, 0, 0], [30, 0, 0]], [6, 6])
    volume = intensity(structure_factor(pair, M, DQ, use_b_factors=False))
    along_x, along_y, along_z = volume[:, C, C], volume[C, :, C], volume[C, C, :]
    assert along_x.min() < 0.2 * along_x.max()
    assert along_y.min() > 0.9 * along_y.max() and along_z.min() > 0.9 * along_z.max()
    k = np.arange(M) - C
    f0 = np.sqrt(along_y / 4.0)                 # |f0(|q|)| along y, where no fringes run
    expected = 4 * f0 ** 2 * np.cos(np.pi * k * DQ * 60e-10) ** 2
    np.testing.assert_allclose(along_x, expected, rtol=1e-6, atol=1e-9 * expected.max())


def test_density_puts_an_atom_where_it_is():
    voxel = 1.0 / (M * DQ)                      # real-space voxel (m)
    atom = atoms_of([[3 * voxel * 1e10, -2 * voxel * 1e10, 0]], [26])
    grid = structure_factor(atom, M, DQ, use_b_factors=False)
    full, voxel_m = density(grid, DQ)
    assert voxel_m == pytest.approx(voxel)
    assert full.shape == (M, M, M)
    assert full.sum() == pytest.approx(grid[C, C, C].real, rel=1e-9)        # electrons
    assert np.unravel_index(full.argmax(), full.shape) == (C + 3, C - 2, C)
    cropped, _ = density(grid, DQ, radius_m=4 * voxel, margin_voxels=2)
    assert cropped.shape == (13, 13, 13)
    assert np.unravel_index(cropped.argmax(), cropped.shape) == (6 + 3, 6 - 2, 6)


def test_read_structure_assembly_centre_and_waters():
    atoms = read_structure(PDB_1EI7)
    plain = read_structure(PDB_1EI7, assembly=False)
    wet = read_structure(PDB_1EI7, assembly=False, keep_waters=True)
    assert atoms.num_atoms == 34 * plain.num_atoms          # BIOMOLECULE 1: 34 copies of chains A, B
    assert wet.num_atoms > plain.num_atoms                  # the file holds HOH
    weights = atoms.atomic_numbers * atoms.occupancy
    centre = (atoms.positions_m * weights[:, None]).sum(axis=0) / weights.sum()
    assert np.abs(centre).max() < 1e-15
    assert atoms.positions_m.dtype == np.float64 and atoms.positions_m.shape == (atoms.num_atoms, 3)
    assert set(np.unique(atoms.atomic_numbers)) == {6, 7, 8, 16}
    assert 1e-9 < atoms.radius_m() < 2e-8


def test_read_structure_mmcif_equals_pdb(tmp_path):
    import gemmi

    cif = tmp_path / "1EI7.cif"
    structure = gemmi.read_structure(str(PDB_1EI7))
    structure.setup_entities()
    structure.make_mmcif_document().write_file(str(cif))
    for assembly in (False, True):           # mmCIF names the assembly's chains by subchain (label_asym_id)
        from_pdb, from_cif = read_structure(PDB_1EI7, assembly=assembly), read_structure(cif, assembly=assembly)
        np.testing.assert_allclose(from_cif.positions_m, from_pdb.positions_m, atol=1e-15)
        np.testing.assert_array_equal(from_cif.atomic_numbers, from_pdb.atomic_numbers)


def test_a_file_of_too_many_models_is_refused_before_gemmi_builds_them(tmp_path):
    """gemmi builds models in time quadratic in their number (500 000 one-atom models: 41 s, twice a run);
    beyond MAX_MODELS one line, counted from the PDB's MODEL records or the mmCIF's model column; the
    mmCIF -- even named .pdb, and gzipped -- is otherwise read as gemmi.read_structure reads it."""
    import gzip

    import gemmi

    from spibatch.sim.structure import MAX_MODELS

    atom = "ATOM      1  CA  ALA A   1       1.000   2.000   3.000  1.00 20.00           C\n"
    pdb = tmp_path / "many.pdb"
    pdb.write_text("".join(f"MODEL {i:8d}\n{atom}ENDMDL\n" for i in range(1, MAX_MODELS + 2)) + "END\n")
    with pytest.raises(InputError, match=f"holds {MAX_MODELS + 1:,} models") as info:
        read_structure(pdb)
    assert str(pdb) in str(info.value)
    structure = gemmi.read_structure(str(PDB_1EI7))
    structure.setup_entities()
    cif = tmp_path / "1EI7-as-cif.pdb.gz"
    cif.write_bytes(gzip.compress(structure.make_mmcif_document().as_string().encode()))
    np.testing.assert_allclose(read_structure(cif).positions_m, read_structure(PDB_1EI7).positions_m, atol=1e-15)
    text = structure.make_mmcif_document().as_string()
    rows = [line for line in text.splitlines() if line.startswith(("ATOM", "HETATM"))]
    first = rows[0].split()
    many = "\n".join(" ".join(first[:-1] + [str(i)]) for i in range(2, MAX_MODELS + 2))
    big = tmp_path / "many.cif"
    big.write_text(text.replace(rows[-1], rows[-1] + "\n" + many, 1))
    with pytest.raises(InputError, match=f"holds {MAX_MODELS + 1:,} models"):
        read_structure(big)
    two = tmp_path / "two.cif"                  # coordinates in two data blocks: which is the particle?
    two.write_text(text + "\n" + text.replace("data_", "data_second", 1))
    with pytest.raises(InputError, match="coordinates in 2 data blocks"):
        read_structure(two)


def test_an_mmcif_with_chain_parts_reads_as_gemmi_reads_it(tmp_path):
    """RCSB's mmCIF lists ligands after all polymer chains: gemmi.read_structure merges a chain's parts (the
    atoms' order); the model-counting reader builds from the block and must merge them too."""
    import gemmi

    structure = gemmi.read_structure(str(PDB_1EI7), merge_chain_parts=False)
    structure.setup_entities()
    for chain in structure[0]:
        for residue in chain:
            if residue.is_water():
                residue.name = "CU"            # kept (not water), split from its chain as a ligand part
                for atom in residue:
                    atom.element = gemmi.Element("Cu")
    parts = tmp_path / "parts.cif"
    structure.make_mmcif_document().write_file(str(parts))
    expected = gemmi.read_structure(str(parts))
    positions = np.array([a.pos.tolist() for ch in expected[0] for r in ch for a in r])
    atoms = read_structure(parts, assembly=False)
    np.testing.assert_allclose(atoms.positions_m + atoms.centre_m, positions * 1e-10, atol=1e-15)


@pytest.mark.parametrize("content", [b"", b"this is not a structure file\n", bytes(range(256)) * 4])
def test_unreadable_pdb_raises_input_error_naming_the_file(tmp_path, content):
    bad = tmp_path / "broken.pdb"
    bad.write_bytes(content)
    with pytest.raises(InputError) as info:
        read_structure(bad)
    message = str(info.value)
    assert str(bad) in message and "\n" not in message
    assert "PDB" in message


def test_missing_pdb_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_structure(tmp_path / "nothing.pdb")


def test_md_waters_alternate_locations_and_empty_atoms(tmp_path, caplog):
    """An audit's cases: a water named SOL (GROMACS) was kept with keep_waters false (22 electrons for 14); two
    alternate locations of occupancy 1.00 each count twice (now said); an atom of zero occupancy 500 A away set
    the particle's radius (498 A for 1.7)."""
    import logging

    from spibatch.sim.structure import read_structure

    path = tmp_path / "alt.pdb"
    path.write_text(
        "ATOM      1  CA AGLY A   1       0.000   0.000   0.000  1.00 10.00           C\n"
        "ATOM      2  CA BGLY A   1       0.500   0.000   0.000  1.00 10.00           C\n"
        "ATOM      3  N   GLY A   1       1.500   0.000   0.000  1.00 10.00           N\n"
        "HETATM    4  OW  SOL W   2       5.000   0.000   0.000  1.00 10.00           O\n"
        "HETATM    5  C   LIG B   3     500.000   0.000   0.000  0.00 10.00           C\n"
        "END\n")
    with caplog.at_level(logging.WARNING, logger="spibatch"):
        atoms = read_structure(path)
    assert atoms.electrons() == 19.0 and len(atoms.atomic_numbers) == 3
    assert atoms.radius_m() < 2e-10
    assert "alternate locations whose occupancies add up to more than 1 (chain A GLY 1 CA: 2.00)" in caplog.text
    assert read_structure(path, keep_waters=True).electrons() == 27.0
