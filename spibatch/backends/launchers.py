"""Launchers: small callables that wrap a shell command, as Parsl's ``launchers.py``
(``WrappedLauncher``, ``SrunLauncher``).  They compose by calling one on the other's
result: ``mpi(container(command))`` runs each MPI rank inside the container.

* :func:`container` -- the site's container prefix (``apptainer exec ... IMAGE``,
  ``docker run ...``, ``ch-run ... IMAGE --``; none for ``runtime: none``), the run
  directory bound at its own path (:mod:`spibatch.backends.containers` spells the words);
* :func:`mpirun` -- ``mpirun -n RANKS --bind-to none -x NUMBA_NUM_THREADS=T`` (the local site);
* :data:`PARSL_MPI` -- ``$PARSL_MPI_PREFIX``, which Parsl's MPIExecutor sets to its ``srun
  --ntasks N ...`` line on the block's nodes (the Slurm site); left unquoted for the shell.

A launcher takes and returns shell text: words it adds are quoted with :func:`shlex.join`,
so ``launcher(shlex.join(words))`` equals ``shlex.join(prefix_words + words)``.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

from spibatch.backends.containers import prefix


class Launcher:
    """``launcher(command) -> command``: the shell text that runs ``command`` the launcher's way."""

    def __call__(self, command: str) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Prefix(Launcher):
    """Fixed words before the command (Parsl's ``WrappedLauncher``); no words: the command as it is."""

    words: tuple[str, ...] = ()

    def __call__(self, command: str) -> str:
        return f"{shlex.join(self.words)} {command}" if self.words else command


@dataclass(frozen=True)
class ShellPrefix(Launcher):
    """Shell text before the command, not quoted (a variable the executor fills in)."""

    text: str

    def __call__(self, command: str) -> str:
        return f"{self.text} {command}"


PARSL_MPI = ShellPrefix("$PARSL_MPI_PREFIX")   # Parsl's MPIExecutor: srun --ntasks N ... on the block's nodes


def container(site_container, binds: list[str | os.PathLike] = (), workdir: str | os.PathLike | None = None
              ) -> Prefix:
    """The site's container (a :class:`~spibatch.backends.Container`) as a launcher; ``binds``: more host
    paths mounted at their own path (the run directory); ``workdir``: the working directory (docker only)."""
    return Prefix(tuple(prefix(site_container, binds, workdir)))


def mpirun(ranks: int, threads: int) -> Prefix:
    """OpenMPI's ``mpirun`` of ``ranks`` ranks, unbound, each with ``threads`` Numba threads."""
    return Prefix(("mpirun", "-n", str(ranks), "--bind-to", "none", "-x", f"NUMBA_NUM_THREADS={threads}"))


def words(command: list[str]) -> str:
    """A command's words as shell text (the innermost argument of a launcher)."""
    return shlex.join(command)
