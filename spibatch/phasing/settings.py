"""How phasing runs, as plain values: :class:`PhasingSettings`, made once from the config's ``phasing``
section and passed down (it pickles: Parsl workers and MPI ranks get it as it is).

The recipe travels parsed (an :class:`~spibatch.phasing.algebra.Operator`); ``repr`` gives its
text back, which is what files record.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from spibatch.phasing import DEFAULT_RECIPE, DEFAULT_SUPPORT_THRESHOLD
from spibatch.phasing.algebra import Operator, check_budget
from spibatch.phasing.fft import BACKENDS, PLANNING
from spibatch.phasing.operators import parse_recipe

# config key -> field, for the keys whose names differ
RENAMED = {"fft": "fft_backend"}
IGNORED = ("intensity",)          # the input file travels beside the settings, not in them


@dataclass(frozen=True)
class PhasingSettings:
    """The ``phasing`` section's values (see :class:`spibatch.config.Phasing` for each key's meaning).

    recipe : the parsed recipe (``parse_recipe(text)``), run by every start
    num_starts, keep_best, seed : starts ``seed``, ``seed + 1``, ...; the ``keep_best`` of lowest final
        error are averaged
    positivity, realness : the density is >= 0 in the support; the density is real
    initial_support_threshold : the first support (autocorrelation above this fraction of its maximum)
    threads : FFT threads per start; None: every core the process running the start may use
    fft_backend : "auto", "fftw" or "scipy" (the config's ``fft``; a GPU uses its own)
    fft_planning : fftw's plans: "estimate" (reproducible: same seed, same bits in every run) or "measure"
        (timed plans kept as wisdom: faster, but the first run and later ones may differ in rounding)
    dataset, crop_to, fast_fft_size, voxel_size_per_m : how the intensity file is read and padded
        (dq in 1/m, or None to take it from the file)
    """

    recipe: Operator = field(default_factory=lambda: parse_recipe(DEFAULT_RECIPE))
    num_starts: int = 16
    keep_best: int = 8
    seed: int = 1
    positivity: bool = True
    realness: bool = True
    initial_support_threshold: float = DEFAULT_SUPPORT_THRESHOLD
    threads: int | None = None
    fft_backend: str = "auto"
    fft_planning: str = "estimate"
    dataset: str | None = None
    crop_to: int | None = None
    fast_fft_size: bool = True
    voxel_size_per_m: float | None = None

    def __post_init__(self):
        if not isinstance(self.recipe, Operator):
            raise TypeError(f"recipe: expected a parsed recipe (parse_recipe(text)), got {type(self.recipe).__name__}")
        check_budget(self.recipe)
        if self.num_starts < 1 or not 1 <= self.keep_best <= self.num_starts:
            raise ValueError(f"need 1 <= keep_best ({self.keep_best}) <= num_starts ({self.num_starts})")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 (or None: every core), not {self.threads}")
        if self.fft_backend not in BACKENDS:
            raise ValueError(f"unknown FFT backend {self.fft_backend!r}: one of {', '.join(BACKENDS)}")
        if self.fft_planning not in PLANNING:
            raise ValueError(f"unknown FFT planning {self.fft_planning!r}: one of {', '.join(PLANNING)}")
        if not 0 < self.initial_support_threshold < 1:
            raise ValueError(f"initial_support_threshold must be in (0, 1), not {self.initial_support_threshold}")

    @classmethod
    def from_dict(cls, values: dict) -> "PhasingSettings":
        """From ``spibatch.config.Phasing(...).model_dump()`` (``mode="json"`` too): the recipe text parsed,
        ``fft`` as ``fft_backend``, ``intensity`` ignored.  An unknown key is a ValueError."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key in IGNORED:
                continue
            name = RENAMED.get(key, key)
            if name not in names or key in RENAMED.values():     # fft_backend is spelled fft there
                raise ValueError(f"unknown phasing setting {key!r}")
            kwargs[name] = value
        if isinstance(kwargs.get("recipe"), str):
            kwargs["recipe"] = parse_recipe(kwargs["recipe"])
        return cls(**kwargs)

    def as_dict(self) -> dict:
        """The settings under the config's keys, JSON-able (the recipe as its text): what files record."""
        out = {}
        for f in dataclasses.fields(self):
            key = next((k for k, v in RENAMED.items() if v == f.name), f.name)
            value = getattr(self, f.name)
            out[key] = repr(value) if isinstance(value, Operator) else value
        return out

    @property
    def seeds(self) -> list[int]:
        """The seed of every start: seed, seed + 1, ..., seed + num_starts - 1."""
        return [self.seed + k for k in range(self.num_starts)]

    def threads_here(self) -> int:
        """FFT threads for a start run by this process: ``threads``, or every core it may use."""
        if self.threads is not None:
            return self.threads
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
