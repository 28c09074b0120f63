"""The simulate stage: the pipeline's PDB on its detector -> ``simulate/`` (photons, detector, truth)."""

from __future__ import annotations

import sys
from pathlib import Path

from spibatch.errors import InputError
from spibatch.layout import RunLayout
from spibatch.stages.checks import require_file


def check(pipeline, config: Path | None = None, run: RunLayout | None = None, *, budget=None,
          folder: Path | None = None):
    """Before anything is created: a simulation section whose PDB parses; a geometry EMC and phasing can use
    (a warning for each implausible value); the memory, time and disk it needs within ``budget`` (default:
    this machine), the photons file on the disk of ``folder`` (the run's ``--out``; default: ``run``'s folder,
    else ``output.runs_dir``).  Returns the :class:`~spibatch.estimates.FlatGeometry` (model grid, pixels)."""
    from spibatch import estimates
    from spibatch.sim.scattering import corner_s2
    from spibatch.sim.structure import check_b_factors, read_structure

    sim = pipeline.simulation
    if sim is None:
        raise InputError("no `simulation` section", path=config, field="simulation",
                         fix="add one (`spibatch init DIR` writes an example)")
    flat = estimates.check_flat(pipeline.geometry, config)
    estimates.simulation(flat, sim.num_patterns, sim.mean_photons_per_frame, sim.chunk_frames).check(config, budget)
    where = folder if folder is not None else run.path if run is not None else pipeline.output.runs_dir
    estimates.check_disk(estimates.PHOTONS_FILE_BYTES_PER_FRAME * sim.num_patterns, where,
                         config, "simulation.num_patterns", f"the photons file of {sim.num_patterns:,} patterns")
    require_file(sim.pdb, "simulation.pdb", fix="give a PDB or mmCIF file of the particle")
    atoms = read_structure(sim.pdb, assembly=sim.assembly, keep_waters=sim.keep_waters, expand=False)
    if sim.use_b_factors:
        g = pipeline.geometry
        check_b_factors(atoms, corner_s2(flat.model_size, g.pixel_size_m / (g.wavelength * g.detector_distance_m)),
                        sim.pdb)
    estimates.warn_implausible(estimates.geometry_values(pipeline.geometry), config)   # after every refusal
    return flat


def run(run: RunLayout, pipeline, device, workers=None) -> dict[str, Path]:
    return simulate_to(pipeline, run.stage_dir("simulate"), show_progress=sys.stderr.isatty())


def simulate_to(pipeline, out_dir: Path, *, show_progress: bool = False) -> dict[str, Path]:
    """The pipeline's simulation (its ``geometry`` and ``simulation`` sections) into ``out_dir``; {name: path}."""
    from spibatch.sim import SimulationSettings, simulate

    sim = pipeline.simulation
    provenance = {"stage": "simulate", "simulation": sim.model_dump(mode="json"),
                  "geometry": pipeline.geometry.model_dump(mode="json")}
    return simulate(pipeline.geometry.detector(), SimulationSettings.from_dict(sim.model_dump()), Path(out_dir),
                    show_progress=show_progress, provenance=provenance, warn=False)
