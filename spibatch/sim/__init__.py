"""The simulator: PDB -> structure factor -> intensity -> detector -> sparse Poisson patterns.

Modules: :mod:`.geometry` (flat detector, Dragonfly's conventions), :mod:`.structure`
(atoms from PDB/mmCIF), :mod:`.scattering` (F, |F|^2 and density on the model grid),
:mod:`.patterns` (random orientations, slicing, photons).  Heavy imports stay inside
those modules, so ``import spibatch.sim`` is cheap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path

from spibatch import layout

log = logging.getLogger("spibatch")

OUTPUT_NAMES = {"detector": layout.DETECTOR, "photons": layout.PHOTONS, "truth": layout.TRUTH,
                "density": layout.DENSITY_MRC}


@dataclass(frozen=True)
class SimulationSettings:
    """What to simulate (the pipeline's ``simulation`` section as plain values; units in the names)."""

    pdb: Path
    num_patterns: int = 1000
    mean_photons_per_frame: float | None = 1000.0
    fluence_photons_per_m2: float | None = None
    fluence_jitter: float = 0.0
    use_b_factors: bool = True
    assembly: bool = True
    keep_waters: bool = False
    seed: int = 1
    chunk_frames: int = 1024

    @classmethod
    def from_dict(cls, values: dict) -> "SimulationSettings":
        """From a mapping with (at least) these keys, e.g. ``config.Simulation(...).model_dump()``."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: (Path(v) if k == "pdb" else v) for k, v in values.items() if k in names})


def simulate(detector, sim: SimulationSettings, out_dir: str | Path, *, show_progress: bool = True,
             provenance: dict | None = None, warn: bool = True) -> dict[str, Path]:
    """Simulate ``sim`` on ``detector`` (a :class:`~spibatch.detector.Detector` with a physical scale) into ``out_dir``.

    Writes ``detector.h5`` (Dragonfly detector file), ``photons.emc`` (Dragonfly HDF5
    photons file), ``truth.h5`` (``intensity`` (M, M, M) float32 in electrons^2,
    ``density`` (L, L, L) float32 electrons/voxel, ``quaternions`` (N, 4) (w, x, y, z),
    ``fluence`` (N,) each frame's relative fluence (mean 1: the jitter; the absolute scale is ``photon_scale``),
    ``photons_per_frame`` (N,); attributes ``voxel_size_per_m``, ``density_voxel_size_m``, ``photon_scale``) and
    ``density.mrc`` (Angstrom voxels).  Frames are drawn from the model-grid intensity by trilinear interpolation,
    as EMC models them (not |F| at each pixel's exact q: at an oversampling of ~3, 1EI7 at the ``init`` template's
    geometry, frame totals come out 3-6 % high and speckle contrast 4-6 % low; at the demo's ~6, within 0.2 %).
    The model grid edge is ``detector.model_size()``.  ``provenance``: recorded in truth.h5.  ``warn`` False: the
    structure's warnings are not said again (the stage's check said them).  Returns ``{name: path}``.
    InputError (one line, before any pattern is drawn): B-factors so negative that the form factors overflow, an
    absolute fluence whose photons would not fit this machine's memory.
    """
    import numpy as np

    from spibatch.io.dragonfly import PhotonsWriter, write_detector
    from spibatch.io.mrc import write_mrc
    from spibatch.io.results import write_result
    from spibatch.progress import progress
    from spibatch.sim.geometry import resolution_m
    from spibatch.sim.patterns import fluence_scale, mean_photons_scale, simulate_patterns
    from spibatch.sim.scattering import corner_s2, density, intensity, structure_factor
    from spibatch.sim.structure import check_b_factors, read_structure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / file for name, file in OUTPUT_NAMES.items()}

    atoms = read_structure(sim.pdb, assembly=sim.assembly, keep_waters=sim.keep_waters, warn=warn)
    size = detector.model_size()
    if sim.use_b_factors:
        check_b_factors(atoms, corner_s2(size, detector.voxel_size_per_m), sim.pdb, warn=warn)
    log.info("read %d atoms (%.0f electrons, radius %.1f A) from %s", atoms.num_atoms, atoms.electrons(),
             atoms.radius_m() * 1e10, sim.pdb)
    dq = float(detector.voxel_size_per_m)
    res = resolution_m(detector)
    log.info("model grid %d^3, voxel %.4g 1/m in q, %.3g A in real space; resolution %.2f A at the "
             "detector edge, %.2f A in the corner", size, dq, 1e10 / (size * dq), res["edge_m"] * 1e10,
             res["corner_m"] * 1e10)
    oversampling = 1.0 / (dq * 2.0 * atoms.radius_m())
    if oversampling < 2.0:
        log.warning("the particle (%.0f A across) spans more than half the real-space box (%.0f A): "
                    "oversampling %.2f < 2, phasing will struggle; move the detector further or use "
                    "smaller pixels", 2e10 * atoms.radius_m(), 1e10 / dq, oversampling)

    factor = structure_factor(atoms, size, dq, use_b_factors=sim.use_b_factors)
    volume = intensity(factor)
    truth_density, density_voxel_m = density(factor, dq, atoms.radius_m())
    del factor
    if sim.mean_photons_per_frame is not None:
        scale = mean_photons_scale(volume, detector, sim.mean_photons_per_frame)
    else:
        scale = fluence_scale(sim.fluence_photons_per_m2)
        _check_fluence(scale / mean_photons_scale(volume, detector, 1.0), sim, detector)
    log.info("photon scale %.6g photons per (sr x electron^2)", scale)

    write_detector(paths["detector"], detector)
    with PhotonsWriter(paths["photons"], detector.num_pix) as writer, \
            progress(sim.num_patterns, "simulating patterns", enabled=show_progress) as bar:
        result = simulate_patterns(volume, detector, num_patterns=sim.num_patterns, scale=scale,
                                   fluence_jitter=sim.fluence_jitter, seed=sim.seed,
                                   chunk_frames=sim.chunk_frames, writer=writer, progress=bar)
    log.info("%d patterns, %.1f photons per frame on average (requested %s)", sim.num_patterns,
             result["mean_photons"], sim.mean_photons_per_frame if sim.mean_photons_per_frame else "absolute fluence")
    if result["mean_photons"] < FEW_PHOTONS:
        log.warning("spibatch: warning: %s: %.3g photons per frame on average: too few for EMC to orient a frame "
                    "(SPI data hold ~10^2-10^4); raise simulation.fluence_photons_per_m2 or give "
                    "mean_photons_per_frame", sim.pdb, result["mean_photons"])

    write_result(paths["truth"],
                 {"intensity": volume.astype(np.float32), "density": truth_density.astype(np.float32),
                  "quaternions": result["quaternions"], "fluence": result["fluence"],
                  "photons_per_frame": result["photons_per_frame"]},
                 {"voxel_size_per_m": dq, "density_voxel_size_m": density_voxel_m,
                  "density_origin_m": atoms.centre_m - (truth_density.shape[0] - 1) // 2 * density_voxel_m,
                  "intensity_unit": "electrons^2", "photon_scale": scale,
                  "fluence_unit": "relative to the mean (1): each frame's jitter; photon_scale holds the absolute",
                  "mean_photons_per_frame": result["mean_photons"]},
                 provenance=provenance)
    corner = (atoms.centre_m - (truth_density.shape[0] - 1) // 2 * density_voxel_m) * 1e10   # the PDB's frame:
    write_mrc(paths["density"], truth_density, density_voxel_m * 1e10, origin_angstrom=tuple(corner))  # overlays it
    return paths


FEW_PHOTONS = 10.0   # photons per frame on average below which a simulation is said to be useless for EMC


def _check_fluence(expected: float, sim: SimulationSettings, detector) -> None:
    """One InputError when an absolute fluence's ``expected`` photons per frame would not fit in memory (the
    estimate a mean photon count gets before the run)."""
    from spibatch import estimates
    from spibatch.errors import InputError

    flat = estimates.FlatGeometry(int(detector.shape[0]) if detector.shape else 0, detector.model_size(),
                                  detector.num_pix, int((detector.mask == 0).sum()), 0.0)
    need = estimates.simulation(flat, sim.num_patterns, expected, sim.chunk_frames)
    budget = estimates.Budget.here()
    if not need.bytes <= budget.memory:
        raise InputError(f"{sim.fluence_photons_per_m2:g} photons/m^2 gives {expected:.3g} photons per frame, whose "
                         f"drawing needs {estimates.human_bytes(need.bytes)} of the {estimates.human_bytes(budget.memory)}"
                         f" {budget.where} has", field="simulation.fluence_photons_per_m2",
                         fix="give a fluence of ~1e20-1e24 photons/m^2 as XFELs deliver, or mean_photons_per_frame")
