"""Shared fixtures: where the reference data sets live, and a scratch run directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_datasets() -> Path:
    env = os.environ.get("SPIBATCH_SHARED_DATASETS")
    return Path(env) if env else REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """``../shared/datasets`` (or $SPIBATCH_SHARED_DATASETS); skips with a reason when absent."""
    path = _shared_datasets()
    if not (path / "dragonfly-small" / "photons.emc").exists():
        pytest.skip(f"shared reference data not found at {path} (set SPIBATCH_SHARED_DATASETS)")
    return path


@pytest.fixture(scope="session")
def small_dataset(shared_datasets: Path) -> Path:
    """The Dragonfly-written 'small' data set (64 x 64 detector, 1000 frames)."""
    return shared_datasets / "dragonfly-small"
