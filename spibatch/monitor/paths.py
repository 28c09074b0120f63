"""Which files the monitor may read: everything under one root folder, nothing outside it.

A run is named by its path relative to the monitored root (``"."`` when the
root is itself a run).  :func:`resolve_run` turns such a name into a folder
and refuses ``..``, absolute paths, and symlinks that lead out of the root;
:func:`inside` checks any file path the same way before it is opened.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from spibatch import layout

# A folder is a run when it holds one of these (spibatch's own runs have provenance.json; a bare EMC
# output folder, ours or Dragonfly's, has metrics.jsonl or EMC.log).
RUN_MARKERS = (layout.PROVENANCE, layout.METRICS, layout.EMC_LOG)
SEARCH_DEPTH = 3          # how many folder levels below the root are searched for runs


class OutsideRoot(Exception):
    """A requested path is not under the monitored root (``..``, absolute, or a symlink leading out)."""


class NotFound(Exception):
    """A requested run or file does not exist (yet)."""


def inside(root: Path, path: Path) -> Path:
    """``path`` with symlinks resolved, if it lies under ``root`` (already resolved); OutsideRoot otherwise."""
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise OutsideRoot(f"{path} is outside the monitored folder")
    return real


def resolve_run(root: Path, run: str | None) -> Path:
    """The folder of the run named ``run`` (relative to ``root``, POSIX separators), checked to be inside."""
    if run is None or run == "":
        run = "."
    if "\x00" in run or "\\" in run:
        raise OutsideRoot("run names use forward slashes and no NUL")
    rel = PurePosixPath(run)
    if rel.is_absolute() or ".." in rel.parts:
        raise OutsideRoot(f"{run!r}: absolute paths and '..' are refused")
    folder = inside(root, root.joinpath(*rel.parts))
    if not folder.is_dir() or not is_run(folder):
        raise NotFound(f"no run {run!r} under the monitored folder")
    return folder


def is_run(folder: Path) -> bool:
    """True when ``folder`` holds a run (one of RUN_MARKERS, directly or in emc/)."""
    return any((folder / m).is_file() for m in RUN_MARKERS) or (folder / layout.STAGE_DIRS["emc"] / layout.METRICS).is_file()


def find_runs(root: Path) -> list[Path]:
    """Every run folder under ``root`` (the root itself included), searched SEARCH_DEPTH levels deep.

    A run's own subfolders (``emc/``, ``phase/``) are not listed as runs of their own; symlinked
    folders are followed only when they stay under the root.
    """
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        if is_run(folder):
            found.append(folder)
            return
        if depth >= SEARCH_DEPTH:
            return
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if not entry.is_dir():
                    continue
                child = inside(root, Path(entry.path))
            except (OSError, OutsideRoot):
                continue
            walk(child, depth + 1)

    walk(root, 0)
    return found


def run_name(root: Path, folder: Path) -> str:
    """The name of a run folder for URLs: its POSIX path relative to the root, ``"."`` for the root."""
    rel = folder.relative_to(root).as_posix()
    return rel or "."
