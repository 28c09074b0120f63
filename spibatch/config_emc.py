"""The pipeline file's ``emc:`` section: EMC orientation recovery, its annealing and its coarse-to-fine search."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveFloat, ValidationInfo, field_validator

from spibatch.yaml_models import Section


class BetaSchedule(Section):
    """Deterministic annealing: beta is multiplied by ``factor`` every ``period`` iterations.

    As Dragonfly's ``beta_schedule = 2.0 10``: iterations 1-10 use x1, 11-20 x2, 21-30 x4.
    """

    factor: float = Field(2.0, gt=0, description="beta is multiplied by this ...")
    period: int = Field(10, ge=1, description="... every this many iterations")


class Refine(Section):
    """Coarse-to-fine orientation search (Dragonfly's ``num_div = FINE COARSE``): ``after`` iterations on the
    whole ``emc.num_div`` grid, then each frame searches only the ``num_div`` grid near its most probable
    rotations of the iteration before (chosen again every iteration)."""

    num_div: int | None = Field(None, ge=2, description="the fine grid's 600-cell refinement, more than emc.num_div "
                                "(Dragonfly's num_div = FINE COARSE); default: twice emc.num_div")
    after: int = Field(10, ge=1, description="iterations on the whole coarse grid before the local fine search")
    top: int = Field(4, ge=1, description="each frame's most probable rotations of the iteration before that its "
                     "search is around")
    radius: PositiveFloat = Field(1.0, description="the search's radius around each of them, in coarse grid "
                                  "spacings (the median angle between neighbouring emc.num_div rotations)")
    min_info: float = Field(0.5, ge=0, description="a frame whose mutual information (nats, as metrics.jsonl's "
                            "mutual_info; 0: every rotation as likely) was below this in the iteration before, its "
                            "orientation not yet known, searches the whole fine grid")


class EMC(Section):
    """EMC orientation recovery (``spibatch emc`` and the emc stage).

    ``photons`` and ``detector`` are the inputs of ``spibatch emc CONFIG``
    (relative to the YAML file); left out, ``spibatch emc`` asks for them (or,
    with a ``simulation`` section, to run ``spibatch simulate`` first).
    """

    photons: Path | list[Path] | None = Field(
        None, description="Dragonfly photons file (HDF5 or binary .emc), relative to this YAML file; or a list of "
        "them, their frames numbered on in order (Dragonfly's in_photons_list)")
    photons_list: Path | None = Field(None, description="instead of photons: a text file naming the photons files, "
                                      "one a line, relative to its folder (Dragonfly's in_photons_list)")
    blacklist_file: Path | None = Field(None, description="frames left out: a text file of one 0 (keep) or 1 (leave "
                                        "out) per frame of all the photons files in order, as Dragonfly's "
                                        "blacklist_file (e.g. `spibatch classify`'s); EMC's per-frame outputs then "
                                        "list the kept frames (emc/photons.h5 says where each came from)")
    selection: Literal["odd_only", "even_only"] | None = Field(
        None, description="as Dragonfly's selection: of the frames not blacklisted, odd_only keeps the 1st, 3rd, "
        "... and even_only the 2nd, 4th, ...; null: all")
    detector: Path | None = Field(None, description="Dragonfly detector file matching the photons, relative to this YAML file")
    start_model: Path | None = Field(None, description="optional start model (M, M, M) in photons per voxel (e.g. an "
                                     "output_NNN.h5; with modes its (V, M, M, M) intensities); default: a seeded "
                                     "random model")
    num_div: int = Field(4, ge=1, description="600-cell refinement: 10 (5 n^3 + n) rotations (n = 4: 3240)")
    iterations: int = Field(30, ge=1, description="EMC iterations")
    beta: PositiveFloat | Literal["auto"] = Field(
        "auto", description="deterministic-annealing exponent at the first iteration; 'auto': per frame "
        "exp(-6.5 (photons / 1e5) ** 0.15), Dragonfly's empirical rule")
    beta_factor: float = Field(1.0, gt=0, description="multiplies beta (auto or given), as Dragonfly's beta_factor")
    beta_schedule: BetaSchedule | None = Field(default_factory=BetaSchedule,
                                               description="multiply beta by factor every period iterations; null: constant")
    need_scaling: bool = Field(True, description="fit a scale factor per frame")
    friedel_symmetry: bool = Field(True, description="average the model with its centrosymmetric copy every "
                                   "iteration (Friedel's law, I(q) = I(-q): no anomalous scattering); Dragonfly always "
                                   "does in 3-D; false: leave the model as merged")
    point_group: str | None = Field(None, description="average the model over the particle's point group every "
                                    "iteration: C<n>, D<n> (n-fold axis along z), T, O or I; null: none")
    seed: int = Field(1, ge=0, description="seed of the random start model")
    frames_per_shard: int = Field(4096, ge=1, description="frames per shard step (bounds memory; MPI ranks and HTC "
                                  "tasks get whole shards, so results do not depend on the number of ranks)")
    model_size: int | None = Field(None, ge=3, description="edge of the cubic model grid in voxels; default: the "
                                   "detector's 2 ceil(max |q|) + 1")
    detector_corr: bool = Field(True, description="expected photons = scale x corr x model, corr the detector's "
                                "solid angle x polarization (mean 1), as in Dragonfly; false: the model absorbs it")
    num_modes: int = Field(1, ge=1, description="rotating modes: model volumes (conformations) each frame may be "
                           "one of, in any orientation (Dragonfly's num_modes)")
    nonrot_modes: int = Field(0, ge=0, description="non-rotating 'junk' modes: volumes seen only at the identity "
                              "orientation, for hits that fit no conformation (Dragonfly's num_nonrot_modes)")
    halves: bool = Field(False, description="gold standard: also reconstruct the even and the odd frames apart "
                         "(emc/half_1, emc/half_2; independent random starts), align them and report their FSC "
                         "as the resolution estimate without a truth (emc/halves.json); about one more full run")
    background_file: Path | None = Field(None, description="the detector's known background in photons per pixel "
                                         "per frame (HDF5 dataset 'background' or .npy, one value per detector "
                                         "pixel; e.g. from `spibatch background` on empty frames), relative to this "
                                         "YAML file, as Dragonfly's background_file: expected photons = scale x "
                                         "model view + background_scale x background; null: none")
    fit_background_scale: bool = Field(True, description="with a background_file: fit each frame's background "
                                       "scale (dimensionless, starts at 1) every iteration; false: keep 1")
    refine: Refine | None = Field(None, description="coarse-to-fine orientation search: num_div (the fine grid), "
                                  "after (coarse iterations first), top, radius; null: the emc.num_div grid throughout")
    merge: Literal["pooled", "per_rotation"] = Field(
        "pooled", description="how the frames' photons become the model: 'pooled' (each voxel: all views' photons "
        "over all their weights, the EM update) or 'per_rotation' (Dragonfly's: each rotation's mean view, its "
        "photons over its weight summed over all frames, then the rotations' views averaged with equal weights)")

    @field_validator("photons")
    @classmethod
    def _photons(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("an empty list: name at least one photons file")
        return v

    @field_validator("photons_list")
    @classmethod
    def _one_list(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if v is not None and info.data.get("photons") is not None:
            raise ValueError("give the photons files in emc.photons or in emc.photons_list, not both")
        return v

    @field_validator("point_group")
    @classmethod
    def _point_group(cls, v: str | None) -> str | None:
        if v is not None:
            from spibatch.emc.symmetry import group_matrices

            group_matrices(v)   # ValueError: unknown point group ...
        return v

    @field_validator("beta", mode="before")
    @classmethod
    def _beta(cls, v: Any) -> Any:
        if v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v == float("inf"):
            raise ValueError("a positive number or 'auto'")
        return float(v)

    @field_validator("refine")
    @classmethod
    def _refine(cls, refine: "Refine | None", info: ValidationInfo) -> "Refine | None":
        """The fine grid finer than the coarse one, some iterations left for it, one mode (told at refine's line)."""
        if refine is None or not {"num_div", "iterations", "num_modes", "nonrot_modes"} <= info.data.keys():
            return refine
        num_div = info.data["num_div"]
        if refine.num_div is None:
            refine = refine.model_copy(update={"num_div": 2 * num_div})
        if refine.num_div <= num_div:
            raise ValueError(f"emc.refine.num_div ({refine.num_div}) more than emc.num_div ({num_div}): the "
                             "refinement grid must be finer than the coarse one")
        if refine.after >= info.data["iterations"]:
            raise ValueError(f"emc.refine.after ({refine.after}) less than emc.iterations ({info.data['iterations']}), "
                             "or no iteration searches the fine grid")
        if info.data["num_modes"] > 1 or info.data["nonrot_modes"] > 0:
            raise ValueError("no emc.refine with emc.num_modes > 1 or emc.nonrot_modes > 0 (not supported)")
        return refine
