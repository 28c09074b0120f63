"""EMC's settings as plain values: what the driver, the executors and the steps take (never the config model).

The pipeline file's ``emc`` section is validated by :class:`spibatch.config.EMC`; the stage turns it into
:class:`EMCSettings` with ``EMCSettings.from_dict(pipeline.emc.model_dump())`` (the inputs ``photons`` and
``detector`` travel as paths beside it).  The defaults here are the config's (a test keeps them equal).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

# what must not change between a run and its resumption, as the checkpoint records it (with the data's sizes)
RESUME_KEYS = ("num_div", "beta", "beta_factor", "beta_schedule", "need_scaling", "friedel_symmetry", "point_group",
               "seed", "frames_per_shard", "start_model", "detector_corr", "num_modes", "nonrot_modes", "refine",
               "merge")
INPUT_KEYS = ("photons", "detector", "photons_list", "blacklist_file", "selection")   # in the config's section, not in the settings


@dataclass(frozen=True)
class BetaSchedule:
    """Multiply beta by ``factor`` every ``period`` iterations (Dragonfly's ``beta_schedule = factor period``)."""

    factor: float = 2.0
    period: int = 10


@dataclass(frozen=True)
class Refine:
    """Coarse-to-fine orientation search (Dragonfly's ``num_div = FINE COARSE``).

    The first ``after`` iterations search the whole coarse grid (``EMCSettings.num_div``); from then on each
    iteration searches, for each frame, only the rotations of the fine grid (``num_div``) within ``radius``
    coarse grid spacings of one of its ``top`` most probable rotations of the iteration before -- or the
    whole fine grid where the frame's mutual information was below ``min_info`` (nats).
    """

    num_div: int
    after: int = 10
    top: int = 4
    radius: float = 1.0
    min_info: float = 0.5


@dataclass(frozen=True)
class EMCSettings:
    """One EMC run's settings (meanings as in ``spibatch.config.EMC``).

    num_div: 600-cell refinement; iterations; beta: "auto" or a positive float (the first iteration's
    annealing exponent); beta_factor; beta_schedule: a :class:`BetaSchedule` or None (constant);
    need_scaling: fit a scale per frame; friedel_symmetry; point_group ("C2", ... or None); seed of the
    random start model; frames_per_shard; model_size (voxels, None: the detector's); start_model (a
    volume file or None); detector_corr: the detector's corr (solid angle x polarization) multiplies the
    views and divides the merged photons, as in Dragonfly (False: the model absorbs it); num_modes: rotating
    model volumes (conformations), nonrot_modes: non-rotating "junk" volumes (Dragonfly's num_modes and
    num_nonrot_modes; see :class:`spibatch.emc.types.Rotations`); background_file: the detector's known
    background in photons per pixel per frame (Dragonfly's ``background_file``) or None;
    fit_background_scale: fit each frame's background scale (else it stays 1); anneal_until: the beta
    schedule's last iteration, beta stays as it is there after it (None: it grows as long as the run; a
    following run, whose iterations have no set end, anneals as a batch run of ``emc.iterations`` would and
    then holds beta);
    refine: a :class:`Refine` (coarse-to-fine orientation search) or None; merge: "per_rotation" or "pooled"
    (:class:`spibatch.emc.types.StepState`).
    """

    num_div: int = 4
    iterations: int = 30
    beta: float | str = "auto"
    beta_factor: float = 1.0
    beta_schedule: BetaSchedule | None = BetaSchedule()
    need_scaling: bool = True
    friedel_symmetry: bool = True
    point_group: str | None = None
    seed: int = 1
    frames_per_shard: int = 4096
    model_size: int | None = None
    start_model: Path | None = None
    detector_corr: bool = True
    num_modes: int = 1
    nonrot_modes: int = 0
    halves: bool = False
    background_file: Path | None = None
    fit_background_scale: bool = True
    anneal_until: int | None = None
    refine: Refine | None = None
    merge: str = "pooled"

    @property
    def num_volumes(self) -> int:
        """Model volumes: rotating modes plus non-rotating ones."""
        return self.num_modes + self.nonrot_modes

    @classmethod
    def from_dict(cls, values: dict) -> "EMCSettings":
        """From ``spibatch.config.EMC(...).model_dump()`` (either mode; ``photons`` and ``detector`` are ignored).

        A key that is not a setting raises TypeError (the config and this class went apart)."""
        values = {k: v for k, v in values.items() if k not in INPUT_KEYS}
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"not EMC settings: {', '.join(unknown)}")
        schedule = values.get("beta_schedule", BetaSchedule())
        if isinstance(schedule, dict):
            schedule = BetaSchedule(float(schedule["factor"]), int(schedule["period"]))
        start = values.get("start_model")
        background = values.get("background_file")
        beta = values.get("beta", "auto")
        refine = values.get("refine")
        if isinstance(refine, dict):
            refine = Refine(int(refine["num_div"]), int(refine.get("after", 10)), int(refine.get("top", 4)),
                            float(refine.get("radius", 1.0)), float(refine.get("min_info", 0.5)))
        return cls(**{**values, "beta": beta if beta == "auto" else float(beta), "beta_schedule": schedule,
                      "start_model": None if start is None else Path(start),
                      "background_file": None if background is None else Path(background), "refine": refine})

    def resume_record(self) -> dict:
        """What must not change on resume, JSON-ready, in the checkpoint's shape (the config's JSON dump of
        :data:`RESUME_KEYS`)."""
        out = {key: getattr(self, key) for key in RESUME_KEYS}
        if self.beta_schedule is not None:
            out["beta_schedule"] = {"factor": self.beta_schedule.factor, "period": self.beta_schedule.period}
        if self.start_model is not None:
            out["start_model"] = str(self.start_model)
        if self.refine is not None:
            out["refine"] = {"num_div": self.refine.num_div, "after": self.refine.after, "top": self.refine.top,
                             "radius": self.refine.radius, "min_info": self.refine.min_info}
        if self.anneal_until is not None:       # a following run's (not a config key)
            out["anneal_until"] = self.anneal_until
        if self.background_file is not None:    # only with a background: checkpoints from before still resume
            out["background_file"] = str(self.background_file)
            out["fit_background_scale"] = self.fit_background_scale
        return out

    def beta_for(self, iteration: int, counts: np.ndarray) -> np.ndarray:
        """Per-frame beta (D,) float64 at ``iteration`` (1-based): auto or fixed, times beta_factor and the schedule.

        counts (D,): photons per frame on used pixels."""
        beta = auto_beta(counts) if self.beta == "auto" else np.full(len(counts), float(self.beta))
        beta = beta * self.beta_factor
        if self.beta_schedule is not None:
            steps = iteration if self.anneal_until is None else min(iteration, self.anneal_until)
            beta = beta * self.beta_schedule.factor ** ((steps - 1) // self.beta_schedule.period)
        return beta


def auto_beta(counts: np.ndarray) -> np.ndarray:
    """Dragonfly's empirical starting beta per frame: exp(-6.5 (counts / 1e5) ** 0.15)."""
    return np.exp(-6.5 * np.power(np.maximum(counts, 1.0) * 1e-5, 0.15))
