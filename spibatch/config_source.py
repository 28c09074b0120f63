"""The pipeline file's ``source:`` section: a live source that ``spibatch run`` follows while it records."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveFloat, field_validator, model_validator

from spibatch.yaml_models import Section


class Source(Section):
    """A live source, followed while it records: ``spibatch run`` ingests its hits in chunks, EMC takes them as
    they come, phasing previews run on the current intensity, and the final density follows when it ends."""

    kind: Literal["euxfel-run", "karabo-bridge", "cxi-folder"] = Field(
        description="euxfel-run: a run folder being written (raw/ or proc/ sequence files, read with EXtra-data); "
                    "karabo-bridge: the live bridge (ZeroMQ + msgpack); cxi-folder: a folder where CXI files appear")
    target: str = Field(description="the run folder or CXI folder (relative to this YAML file), or the bridge's "
                        "endpoint, e.g. tcp://exflonc05:45000")
    detector: Path | None = Field(None, description="detector file of the frames (ours or Dragonfly's), relative to "
                                  "this YAML file; or give geometry")
    geometry: Path | None = Field(None, description="CrystFEL .geom file of the detector, read with EXtra-geom "
                                  "(with photon_energy_ev or wavelength_m, and distance_m)")
    detector_name: Literal["AGIPD1M", "AGIPD500K", "DSSC1M", "LPD1M", "JUNGFRAU", "PNCCD"] = Field(
        "AGIPD1M", description="which detector the run's files or the bridge's data come from")
    distance_m: PositiveFloat | None = Field(None, description="sample to detector distance in metres (with geometry)")
    photon_energy_ev: PositiveFloat | None = Field(None, description="photon energy in eV (with geometry)")
    wavelength_m: PositiveFloat | None = Field(None, description="wavelength in metres (with geometry)")
    beamstop_radius_m: float = Field(0.0, ge=0, description="with geometry: pixels this close to the beam are "
                                     "excluded")
    adu_per_photon: PositiveFloat = Field(1.0, description="detector units per photon (1 for photon-counted data)")
    hit_threshold: PositiveFloat | Literal["auto"] = Field(
        "auto", description="a frame is a hit when more pixels than this are lit; auto: median + 5 x 1.4826 MAD of "
                            "the last 10 000 frames (at least 20): right while hits are the minority of frames")
    chunk_frames: int = Field(256, ge=1, description="hits per chunk file handed to EMC")
    flush_s: PositiveFloat = Field(2.0, description="the longest a hit waits before its chunk is written (latency)")
    idle_timeout_s: PositiveFloat = Field(60.0, description="the source has ended when no train arrived for this "
                                          "long (a run folder also ends when EXtra-data's overview file closes it)")
    settle_s: PositiveFloat = Field(1.0, description="a file must stay unchanged this long before it is read")
    bridge_source: str | None = Field(None, description="the bridge's data source to read (default: the one "
                                      "that carries image data)")
    bridge_key: str = Field("image.data", description="the bridge's key of the frames")
    bridge_sock: Literal["REQ", "SUB", "PULL"] = Field("REQ", description="the socket that talks to the bridge: REQ "
                                                    "(the bridge's REP, its default), SUB (a PUB bridge) or PULL (PUSH)")
    emc_start_hits: int = Field(500, ge=1, description="EMC starts once this many hits are in")
    iterations_after_end: int = Field(8, ge=1, description="after the source ends and every hit is in, EMC stops at "
                                      "the first iteration whose mutual information and log-likelihood per frame "
                                      "are level with the iteration before, at most this many iterations after (and "
                                      "not before emc.iterations in all)")
    preview_every_iterations: int = Field(5, ge=1, description="a preview density is phased every this many EMC "
                                          "iterations")
    preview_starts: int = Field(2, ge=1, description="phasing starts of a preview (and of the quick final density)")
    preview_recipe: str = Field("(HIO(beta=0.9) ** 30 * ShrinkWrap(sigma=2, threshold=0.1)) ** 4 * ER() ** 40",
                                description="the phasing recipe of a preview (and of the quick final density): short, "
                                "so a preview follows EMC closely; the full phase stage uses phasing.recipe")

    @field_validator("preview_recipe")
    @classmethod
    def _recipe(cls, v: str) -> str:
        from spibatch.phasing.operators import parse_recipe

        parse_recipe(v)     # RecipeError (a ValueError): one line with the YAML line
        return v

    @model_validator(mode="after")
    def _geometry(self) -> "Source":
        if (self.detector is None) == (self.geometry is None):
            raise ValueError("give exactly one of detector (a detector file) and geometry (a CrystFEL .geom file)")
        if self.geometry is not None:
            if self.distance_m is None or (self.photon_energy_ev is None) == (self.wavelength_m is None):
                raise ValueError("with geometry give distance_m and one of photon_energy_ev and wavelength_m")
        return self

    @property
    def is_path(self) -> bool:
        """Whether ``target`` names a folder (a run folder, a CXI folder) rather than a network endpoint."""
        return self.kind != "karabo-bridge"
