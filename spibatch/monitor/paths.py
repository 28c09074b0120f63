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


MAX_RUN_NAME = 1024       # characters in a run's name (its path under the root); longer: 400


class BadName(ValueError):
    """A run name that cannot name anything (too long, control characters): the server answers 400."""


def within(root: Path, real: Path) -> bool:
    """True when ``real`` (already resolved) is ``root`` or lies under it.

    Compared as strings (both are absolute and normalised by ``realpath``): ``root in real.parents``
    built and compared a Path per level, which was a third of ``/api/runs``' time at 2000 runs."""
    real, root = os.fspath(real), os.fspath(root)
    return real == root or real.startswith(root if root.endswith("/") else root + "/")


def inside(root: Path, path: Path) -> Path:
    """``path`` with symlinks resolved, if it lies under ``root`` (already resolved); OutsideRoot otherwise."""
    real = Path(os.path.realpath(path))
    if not within(root, real):
        raise OutsideRoot(f"{path.name} is outside the monitored folder")
    return real


def resolve_run(root: Path, run: str | None) -> Path:
    """The folder of the run named ``run`` (relative to ``root``, POSIX separators), checked to be inside."""
    if run is None or run == "":
        run = "."
    if len(run) > MAX_RUN_NAME:
        raise BadName(f"a run name has at most {MAX_RUN_NAME} characters, not {len(run)}")
    if "\x00" in run or "\\" in run:
        raise OutsideRoot("run names use forward slashes and no NUL")
    if any(ord(c) < 32 or ord(c) == 127 for c in run):
        raise BadName("a run name has no control characters")
    rel = PurePosixPath(run)
    if rel.is_absolute() or ".." in rel.parts:
        raise OutsideRoot(f"{run[:80]!r}: absolute paths and '..' are refused")
    try:
        folder = inside(root, root.joinpath(*rel.parts))
        found = folder.is_dir() and is_run(folder, root)
    except (OSError, ValueError):      # a name the filesystem refuses (a part over 255 bytes, ...)
        found = False
    if not found:
        raise NotFound(f"no run {run[:80]!r} under the monitored folder")
    return folder


def is_run(folder: Path, root: Path | None = None, lookup=None) -> bool:
    """True when ``folder`` holds a run (one of RUN_MARKERS, directly or in emc/); with ``root``, only
    markers that are files under the root count (a marker symlinked out of it does not).  ``lookup``
    (a :class:`spibatch.monitor.lookup.Lookup` of ``root``): the same answer from its folder listings."""
    candidates = [folder / m for m in RUN_MARKERS] + [folder / layout.STAGE_DIRS["emc"] / layout.METRICS]
    if lookup is not None:
        return any(lookup.is_file(path) for path in candidates)
    for path in candidates:
        try:
            if path.is_file() and (root is None or within(root, Path(os.path.realpath(path)))):
                return True
        except OSError:
            continue
    return False


def run_name(root: Path, folder: Path) -> str:
    """The name of a run folder for URLs: its POSIX path relative to the root, ``"."`` for the root."""
    rel = folder.relative_to(root).as_posix()
    return rel or "."
