"""Atoms of a particle from a PDB or mmCIF file (via gemmi).

What is read
------------
- The first model only.
- The first biological assembly when the file defines one (PDB ``REMARK 350 BIOMT``,
  mmCIF ``_pdbx_struct_assembly_gen``): that is the particle an SPI experiment sees,
  and what Dragonfly's simulator builds (its 4BED density holds ~10x the electrons of
  the deposited model, matching the 10 BIOMT operators).  ``assembly=False`` keeps the
  deposited coordinates.
- Water (HOH, DOD, ..., and the simulation packages' SOL, TIP3, T3P, SPC, ...) is dropped by default: a
  particle in vacuum keeps no crystal solvent.  ``keep_waters=True`` keeps it.
- Alternate locations: every location is kept, weighted by its occupancy (a warning when a group's
  occupancies add up to more than 1: such a file counts those atoms twice).  Atoms of zero occupancy are
  left out (they scatter nothing; they set the particle's size before).
- Hydrogens are kept when the file lists them (they are real electrons); X-ray
  structures usually do not list them.
- Positions are centred on the centre of electron mass (weights ``Z * occupancy``).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spibatch.errors import InputError
from spibatch.io.files import require_file

log = logging.getLogger("spibatch")

ANGSTROM = 1e-10  # m


@dataclass(eq=False)
class Atoms:
    """Atoms of one particle.

    Attributes
    ----------
    positions_m : (N, 3) float64, atom positions in metres, centred on the centre of
        electron mass, in the file's Cartesian frame
    atomic_numbers : (N,) int32, Z of each atom
    occupancy : (N,) float64, in [0, 1]
    b_factor_a2 : (N,) float64, isotropic B-factor in Angstrom^2
    centre_m : (3,) float64, where the centre (the origin of ``positions_m``) lies in the file's frame, in
        metres (zeros for atoms made in code)
    """

    positions_m: np.ndarray
    atomic_numbers: np.ndarray
    occupancy: np.ndarray
    b_factor_a2: np.ndarray
    centre_m: np.ndarray = field(default_factory=lambda: np.zeros(3))

    @property
    def num_atoms(self) -> int:
        return int(self.positions_m.shape[0])

    def electrons(self) -> float:
        """Total electron count ``sum Z * occupancy`` (= F(0) for neutral atoms)."""
        return float((self.atomic_numbers * self.occupancy).sum())

    def radius_m(self) -> float:
        """Largest distance of an atom from the centre, metres."""
        return float(np.sqrt((self.positions_m ** 2).sum(axis=1)).max())


def read_structure(path: str | os.PathLike, *, assembly: bool = True,
                   keep_waters: bool = False, expand: bool = True, warn: bool = True) -> Atoms:
    """Read the atoms of ``path`` (PDB or mmCIF, optionally gzipped); see the module notes.  ``expand``
    False: the assembly's size is checked but the atoms are returned as the file holds them (a quick check).
    ``warn`` False: no warnings (the stage's check said them already).

    Raises InputError (naming the file) when it is missing, unreadable, not a
    structure file, holds no atoms, or holds atoms of unknown element.
    """

    path = Path(path)
    fix = "give a PDB or mmCIF file of the particle (e.g. from https://www.rcsb.org)"
    require_file(path, "simulation.pdb", fix)
    with open(path, "rb") as fh:   # gemmi reads a CR-only file (classic Mac OS) as one line: "all 1 atoms at a point"
        head = fh.read(1 << 16)
    if b"\r" in head and b"\n" not in head and not head.startswith(b"\x1f\x8b"):
        raise InputError("its lines end in CR alone (classic Mac OS), which PDB/mmCIF readers take for one line",
                         path=path, field="simulation.pdb", fix="convert the line endings to LF (e.g. tr '\\r' '\\n')")
    try:
        structure = _read_first_models(path, head)
    except (RuntimeError, ValueError, OSError, UnicodeDecodeError, EOFError) as exc:
        problem = " ".join(str(exc).split()) or exc.__class__.__name__
        raise InputError(f"not a readable PDB/mmCIF file ({problem})", path=path,
                         field="simulation.pdb", fix=fix) from None
    if len(structure) == 0 or structure[0].count_atom_sites() == 0:
        raise InputError("no atoms found (empty or not a PDB/mmCIF file)", path=path,
                         field="simulation.pdb", fix=fix)
    model = structure[0]

    xyz, z, occ, b, chain_of, subchain_of = [], [], [], [], [], []
    alternates: dict[tuple, float] = {}
    for chain in model:
        for residue in chain:
            if (residue.is_water() or residue.name.upper() in MD_WATERS) and not keep_waters:
                continue
            for atom in residue:
                if atom.has_altloc():
                    where = (chain.name, str(residue.seqid), residue.name, atom.name)
                    alternates[where] = alternates.get(where, 0.0) + atom.occ
                pos = atom.pos
                xyz.append((pos.x, pos.y, pos.z))
                z.append(atom.element.atomic_number)
                occ.append(atom.occ)
                b.append(atom.b_iso)
                chain_of.append(chain.name)
                subchain_of.append(residue.subchain)
    if not xyz:
        raise InputError("no atoms left after dropping water", path=path, field="simulation.pdb", fix=fix)
    over = {where: total for where, total in alternates.items() if total > 1.01}
    if over and warn:
        (chain, seqid, name, atom), total = next(iter(over.items()))
        log.warning("spibatch: warning: %s: %d atoms with alternate locations whose occupancies add up to more than 1 "
                    "(chain %s %s %s %s: %.2f): each location is counted with its occupancy", path, len(over), chain,
                    name, seqid, atom, total)
    xyz = np.asarray(xyz, np.float64)
    z = np.asarray(z, np.int32)
    occ = np.asarray(occ, np.float64)
    b = np.asarray(b, np.float64)
    if (z <= 0).any():
        raise InputError(f"{int((z <= 0).sum())} atoms of unknown element", path=path,
                         field="element column", fix="fill the element symbols (columns 77-78 of ATOM records)")
    for name, values, ok, within in (("coordinates", xyz, (np.abs(xyz) <= 1e7).all(axis=1), "within +-1e7 A"),
                                     ("occupancy", occ, (occ >= 0) & (occ <= 1e3), "within 0-1000"),
                                     ("B-factor", b, np.abs(b) <= 1e5, "within +-1e5 A^2")):
        if not ok.all():   # NaN fails too; beyond the bounds the form factors and photon counts overflow
            first = int(np.argmin(ok))
            raise InputError(f"atom {first + 1}: {name} {values[first]} is not a finite number {within}",
                             path=path, field=name, fix="correct the file (the ATOM record's columns)")

    if assembly and len(structure.assemblies) > 0:
        made = _assembly_atoms(structure.assemblies[0], np.asarray(chain_of), np.asarray(subchain_of))
        if made > MAX_ATOMS:
            raise InputError(f"its biological assembly makes {made:,} atoms; at most {MAX_ATOMS:,} are simulated",
                             path=path, field="assembly", fix="set simulation.assembly: false (the file's atoms as "
                             "they are), or give a file of the assembly you want")
        bad = next(((gen, op) for gen in structure.assemblies[0].generators for op in gen.operators
                    if not np.isfinite(op.transform.mat.tolist() + [op.transform.vec.tolist()]).all()), None)
        if bad is not None:   # NaN atoms read as "all atoms lie at one point"
            raise InputError(f"operator {bad[1].name or '?'} of assembly {structure.assemblies[0].name or '?'} holds "
                             "a number that is not finite", path=path,
                             field="assembly (REMARK 350 BIOMT / _pdbx_struct_oper_list)",
                             fix="correct the operator, or set simulation.assembly: false")
        if expand:
            xyz, z, occ, b = _expand_assembly(structure.assemblies[0], xyz, z, occ, b,
                                              np.asarray(chain_of), np.asarray(subchain_of))

    if not (occ > 0).any():
        raise InputError("all atoms have zero occupancy", path=path, field="occupancy", fix=fix)
    present = occ > 0                    # a zero-occupancy atom scatters nothing: it must not set the size
    xyz, z, occ, b = xyz[present], z[present], occ[present], b[present]
    weights = z * occ
    centre = (xyz * weights[:, None]).sum(axis=0) / weights.sum()
    if not np.abs(xyz - centre).max() > 0:
        raise InputError(f"all {len(xyz)} atoms lie at one point: the particle has no extent", path=path,
                         field="coordinates", fix=fix)
    return Atoms(positions_m=(xyz - centre) * ANGSTROM, atomic_numbers=z, occupancy=occ, b_factor_a2=b,
                 centre_m=centre * ANGSTROM)


MAX_B_GROWTH = 10.0   # a negative B-factor multiplies an atom's scattering by exp(-B s^2); refused beyond this


def check_b_factors(atoms: Atoms, s2_max: float, path, *, warn: bool = True) -> None:
    """Negative B-factors make an atom's scattering grow with angle, by ``exp(-B s^2)`` (``s2_max``: s^2 at the
    model's corner, 1/A^2): a warning while the growth stays below :data:`MAX_B_GROWTH`, one InputError beyond
    it (where it overflows, the form factors' expansion fails)."""
    b = atoms.b_factor_a2
    if b.size == 0 or not b.min() < 0:
        return
    first = int(np.argmin(b))
    growth = math.exp(min(-float(b[first]) * s2_max, 700.0))
    if growth > MAX_B_GROWTH:
        raise InputError(f"atom {first + 1} has B-factor {b[first]:g} A^2: its scattering would grow {growth:.3g}-fold "
                         f"out to the model's corner (s^2 = {s2_max:.3g} 1/A^2); a B-factor below 0 is unphysical",
                         path=path, field="B-factor",
                         fix="correct the file's B-factors (columns 61-66), or set simulation.use_b_factors: false")
    if warn:
        log.warning("spibatch: warning: %s: %d atoms have negative B-factors (down to %g A^2): their scattering "
                    "grows with angle, up to %.2fx at the model's corner", path, int((b < 0).sum()), float(b[first]),
                    growth)


MD_WATERS = frozenset({"SOL", "TIP", "TIP3", "TIP4", "TIP5", "T3P", "T4P", "T5P", "SPC", "SPCE", "WAT", "H2O", "D2O"})
MAX_MODELS = 10_000   # gemmi's readers take time quadratic in the models: 500 000 took 41 s (the first one is used)


def _read_first_models(path: Path, head: bytes):
    """gemmi's Structure of ``path`` after counting its models cheaply (InputError beyond :data:`MAX_MODELS`):
    an mmCIF's model column from the parsed document (then built from it: one parse), a PDB's MODEL records."""
    import gzip

    import gemmi

    opener = gzip.open if head.startswith(b"\x1f\x8b") else open
    if opener is gzip.open:
        with gzip.open(path, "rb") as fh:
            head = fh.read(1 << 16)
    first = next((line.strip() for line in head.splitlines() if line.strip() and not line.startswith(b"#")), b"")
    if first[:5].lower() == b"data_":   # what gemmi's readers take for (mm)CIF, whatever the file's name
        if opener is gzip.open and not path.name.lower().endswith(".gz"):    # gemmi decides by the name
            with gzip.open(path, "rb") as fh:
                document = gemmi.cif.read_string(fh.read().decode("latin-1"))
        else:
            document = gemmi.cif.read(str(path))
        coordinates = [b.name for b in document if len(b.find_values("_atom_site.Cartn_x")) > 0]
        if len(coordinates) > 1:   # as gemmi.read_structure: which of them would be the particle?
            raise InputError(f"holds coordinates in {len(coordinates)} data blocks ({', '.join(coordinates[:3])}"
                             f"{', ...' if len(coordinates) > 3 else ''})", path=path, field="simulation.pdb",
                             fix="give a file of one structure (one data block with _atom_site)")
        block = document[0]
        _check_models(len(set(block.find_values("_atom_site.pdbx_PDB_model_num"))), path)
        structure = gemmi.make_structure_from_block(block)
        structure.merge_chain_parts()   # as gemmi.read_structure does (the atoms' order, ligands after chains)
        return structure
    with opener(path, "rb") as fh:
        data = fh.read()
    _check_models(data.count(b"\nMODEL") + data.startswith(b"MODEL"), path)
    _check_pdb_numbers(data, path)
    if opener is gzip.open and not path.name.lower().endswith(".gz"):   # gemmi decides by the name
        return gemmi.read_pdb_string(data.decode("latin-1"))
    return gemmi.read_structure(str(path))


PDB_NUMBERS = (("x", 30, 38), ("y", 38, 46), ("z", 46, 54), ("occupancy", 54, 60), ("B-factor", 60, 66))


def _check_pdb_numbers(data: bytes, path: Path) -> None:
    """One InputError for an ATOM/HETATM record of the first model whose x, y, z (columns 31-54) is not a number,
    occupancy (55-60) or, when given, B-factor (61-66) is not: gemmi reads such a field as 0 or as the number it
    begins with (``16.2x09`` as 16.2), which would move or drop the atom without a word."""
    for number, line in enumerate(data.split(b"\n"), 1):
        if line.startswith(b"ENDMDL"):
            return
        if not line.startswith((b"ATOM", b"HETATM")) or len(line) < 54:
            continue                      # (gemmi refuses a record too short for its coordinates)
        for name, start, end in PDB_NUMBERS:
            text = line[start:end].strip()
            if not text and name == "B-factor":    # read as 0: no blur (a blank occupancy would drop the atom)
                continue
            try:
                float(text)
            except ValueError:
                shown = text.decode("latin-1")
                raise InputError(f"reads {shown!r}, not a number", path=path,
                                 field=f"line {number}, {name} (columns {start + 1}-{end})",
                                 fix="correct the record (PDB's fixed columns)") from None


def _check_models(models: int, path: Path) -> None:
    if models > MAX_MODELS:
        raise InputError(f"holds {models:,} models; spibatch simulates the first and reads at most {MAX_MODELS:,}",
                         path=path, field="simulation.pdb", fix="give a file of the model to simulate")


MAX_ATOMS = 20_000_000   # atoms simulated (2e6 took 14 s and 1 GB to read; the assembly's copies cost the same)


def _generators(assembly, chains, subchains):
    """``(atoms selected (N,) bool, generator)`` for each of the assembly's generators: the subchains it names,
    else its chains."""
    for gen in assembly.generators:
        if len(gen.subchains) > 0:
            yield np.isin(subchains, list(gen.subchains)), gen
        else:
            yield np.isin(chains, list(gen.chains)), gen


def _assembly_atoms(assembly, chains, subchains) -> int:
    """How many atoms :func:`_expand_assembly` would make (counted, nothing copied)."""
    return sum(int(select.sum()) * len(gen.operators) for select, gen in _generators(assembly, chains, subchains))


def _expand_assembly(assembly, xyz, z, occ, b, chains, subchains):
    """Apply the assembly's operators to the chains each generator names (Angstrom in, out)."""
    parts = []
    for select, gen in _generators(assembly, chains, subchains):
        if not select.any():
            continue
        for op in gen.operators:
            mat = np.asarray(op.transform.mat.tolist(), np.float64)
            vec = np.asarray(op.transform.vec.tolist(), np.float64)
            parts.append((xyz[select] @ mat.T + vec, z[select], occ[select], b[select]))
    if not parts:                                 # an assembly that names nothing we read
        return xyz, z, occ, b
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(4))
