"""What ``spibatch init`` writes: a commented pipeline file, the example structure, and a site file to start from.

The templates ship inside the package (``spibatch/data/``; the site examples in ``data/sites/``, which the
repository's ``site_configs/`` link to), so an installed spibatch can write them anywhere.
"""

from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path

from spibatch.errors import InputError

SITES = ("local", "slurm", "kubernetes")


def data_file(*parts: str) -> Path:
    """A file shipped in ``spibatch/data/``."""
    return Path(str(resources.files("spibatch").joinpath("data", *parts)))


def init(directory: Path, site: str | None = None) -> list[Path]:
    """Write ``pipeline.yaml`` (unless it exists and a site is asked for), ``1EI7.pdb`` and, with ``site``, the
    commented example site file ``site.yaml`` into ``directory``; returns what was written.  Nothing is
    overwritten: an existing file stops it with one line before anything is written."""
    from spibatch.io.atomic import write_text

    if site is not None and site not in SITES:
        raise InputError(f"unknown site {site!r}", field="--site", fix=f"give one of: {', '.join(SITES)}")
    pipeline, pdb, site_file = directory / "pipeline.yaml", directory / "1EI7.pdb", directory / "site.yaml"
    targets = [site_file] if site is not None and pipeline.exists() else [pipeline] + ([site_file] if site else [])
    for target in targets:
        if os.path.lexists(target):
            raise InputError("already exists", path=target, fix="choose another directory or move the file away")
    if pipeline in targets and pdb.is_symlink() and not pdb.exists():   # a copy would go where the link points
        raise InputError(f"is a dangling symbolic link (to {os.readlink(pdb)})", path=pdb,
                         fix="remove the link, or point it at an existing structure file")
    if pipeline in targets and pdb.exists() and not pdb.is_file():   # kept, the pipeline would read a folder
        raise InputError("exists and is not a file: the pipeline's structure file goes here", path=pdb,
                         fix="move it away (or choose another directory)")
    written = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if pipeline in targets:
            written.append(write_text(pipeline, data_file("pipeline.yaml").read_text(encoding="utf-8")))
            if not pdb.exists():
                shutil.copyfile(data_file("1EI7.pdb"), pdb)
                written.append(pdb)
        if site is not None:
            written.append(write_text(site_file, data_file("sites", f"{site}.yaml").read_text(encoding="utf-8")))
    except OSError as exc:
        why = "it is a file, not a folder" if directory.is_file() else exc.strerror or exc
        raise InputError(f"cannot write here ({why})", path=directory, field="DIRECTORY",
                         fix="choose a folder you may create and write to") from None
    return written


def same_as_example(path: Path) -> bool:
    """Whether ``path`` holds the example structure's bytes (False when it cannot be read)."""
    try:
        return path.read_bytes() == data_file("1EI7.pdb").read_bytes()
    except OSError:
        return False
