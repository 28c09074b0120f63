"""The simulate stage: the pipeline's PDB on its detector -> ``simulate/`` (photons, detector, truth)."""

from __future__ import annotations

import sys
from pathlib import Path

from spibatch.errors import InputError
from spibatch.layout import RunLayout


def check(pipeline, config: Path | None = None, run: RunLayout | None = None) -> None:
    """Before anything is created: a simulation section whose PDB parses."""
    from spibatch.sim.structure import read_structure

    if pipeline.simulation is None:
        raise InputError("no `simulation` section", path=config, field="simulation",
                         fix="add one (`spibatch init DIR` writes an example)")
    read_structure(pipeline.simulation.pdb, assembly=False)


def run(run: RunLayout, pipeline, device, workers=None) -> dict[str, Path]:
    return simulate_to(pipeline, run.stage_dir("simulate"), show_progress=sys.stderr.isatty())


def simulate_to(pipeline, out_dir: Path, *, show_progress: bool = False) -> dict[str, Path]:
    """The pipeline's simulation (its ``geometry`` and ``simulation`` sections) into ``out_dir``; {name: path}."""
    from spibatch.sim import SimulationSettings, simulate

    sim = pipeline.simulation
    provenance = {"stage": "simulate", "simulation": sim.model_dump(mode="json"),
                  "geometry": pipeline.geometry.model_dump(mode="json")}
    return simulate(pipeline.geometry.detector(), SimulationSettings.from_dict(sim.model_dump()), Path(out_dir),
                    show_progress=show_progress, provenance=provenance)
