"""The container prefix: the words put before a worker's (or each MPI rank's) command,
and the check that the runtime and image are there.

``prefix(container, binds)`` -> ``["apptainer", "exec", "--nv", "--bind", "/data:/data", IMAGE]``,
``["docker", "run", "--rm", ...]``, ``["ch-run", ..., IMAGE, "--"]`` or ``[]`` (runtime none).
The site's binds come first, then ``extra_binds`` (the run directory, always
mounted at its own path so that every file name means the same inside and out).
:func:`spibatch.backends.launchers.container` makes it a launcher that composes with MPI's.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from spibatch.errors import InputError


def _bind_pairs(binds: list[str]) -> list[tuple[str, str]]:
    pairs, seen = [], set()
    for bind in binds:
        source, _, target = str(bind).partition(":")
        target = target or source
        if target not in seen:
            seen.add(target)
            pairs.append((source, target))
    return pairs


def prefix(container, extra_binds: list[str | os.PathLike] = (), workdir: str | os.PathLike | None = None
           ) -> list[str]:
    """The command words that run the next words inside ``container`` (a :class:`~spibatch.backends.Container`).

    extra_binds: more host paths mounted at the same path (the run directory);
    workdir: the working directory inside (docker only; the others keep the caller's).
    """
    if container.runtime == "none":
        return []
    pairs = _bind_pairs(list(container.binds) + [os.fspath(p) for p in extra_binds])
    if container.runtime == "apptainer":
        words = ["apptainer", "exec"] + (["--nv"] if container.gpu else [])
        for source, target in pairs:
            words += ["--bind", f"{source}:{target}"]
        return words + list(container.options) + [container.image]
    if container.runtime == "docker":
        words = ["docker", "run", "--rm", "--network=host", "--ipc=host"] + (["--gpus", "all"] if container.gpu else [])
        words += ["-e", "SPIBATCH_RUN_OWNER"]   # the run owner's token, when set (spibatch.owners): docker passes
        #                                          no other variable of the host's
        for source, target in pairs:
            words += ["-v", f"{source}:{target}"]
        if workdir is not None:
            words += ["-w", os.fspath(workdir)]
        return words + list(container.options) + [container.image]
    if container.runtime == "charliecloud":
        words = ["ch-run"]
        for source, target in pairs:
            words += ["-b", f"{source}:{target}"]
        return words + list(container.options) + [container.image, "--"]
    raise ValueError(f"unknown container runtime {container.runtime!r}")


def check(container, where: Path | None = None, extra_binds: list[str | os.PathLike] = ()) -> None:
    """InputError (one line) when the runtime is not installed or a local image is missing; for Charliecloud
    also when a bind (the site's, then ``extra_binds``: the run directory) has no mount point in the image."""
    if container.runtime == "none":
        return
    program = {"apptainer": "apptainer", "docker": "docker", "charliecloud": "ch-run"}[container.runtime]
    field = "container.runtime"
    if shutil.which(program) is None:
        raise InputError(f"{program} is not on PATH", path=where, field=field,
                         fix=f"install {container.runtime} on the worker nodes (or load its module), "
                         "or set container.runtime: none")
    image = container.image
    local = container.runtime == "charliecloud" or (container.runtime == "apptainer" and "://" not in image)
    if local and not Path(image).exists():
        raise InputError(f"image {image} not found", path=where, field="container.image",
                         fix="build or pull the image first (see containers/ and the README), "
                         "or give its full path")
    if container.runtime == "charliecloud":
        _check_mount_points(container, where, extra_binds)


def _check_mount_points(container, where: Path | None, extra_binds) -> None:
    """ch-run mounts a bind only onto a path the image already has (it makes one only in an image mounted
    read-write: ``-w``); under /tmp the host's /tmp is there, unless the options ask for a private one."""
    if any(o in ("-w", "--write") for o in container.options):
        return
    private_tmp = any(o in ("-t", "--private-tmp") for o in container.options)
    for _, target in _bind_pairs(list(container.binds) + [os.fspath(p) for p in extra_binds]):
        inside = Path(os.path.abspath(target))
        if not private_tmp and inside.parts[1:2] == ("tmp",):
            continue
        if not os.path.lexists(Path(container.image, *inside.parts[1:])):
            raise InputError(f"{target} has no mount point in the image {container.image} (ch-run mounts onto "
                             "paths the image has)", path=where, field="container.binds",
                             fix=f"create it once: mkdir -p {Path(container.image, *inside.parts[1:])} (or bind "
                                 "a path the image has)")
