"""The local site: Parsl's HighThroughputExecutor with a LocalProvider on 127.0.0.1 (the default).

EMC in HPC mode runs ``spibatch emc`` under ``mpirun -n workers`` (each rank inside the
container, when one is set) as one task; in HTC mode one task per shard per iteration.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from spibatch import parsl_lean
from spibatch.backends import launchers
from spibatch.backends import parsl_common as common
from spibatch.backends.base import TASKS_LABEL, Launch, Provider, Rendered
from spibatch.backends.containers import check as check_container
from spibatch.yaml_models import Section

log = logging.getLogger("spibatch")


class LocalOptions(Section):
    """The ``local:`` section."""

    cores: int | None = Field(None, ge=1, description="cores the workers share; default: the cores this process "
                              "may use")
    mpi: Literal["auto", "mpirun", "off"] = Field(
        "auto", description="HPC-mode EMC: mpirun (workers ranks; needs mpirun and mpi4py), off (one process, all "
        "cores), auto (mpirun when both are present, workers > 1 and mpirun will start: as root, Open MPI needs "
        "OMPI_ALLOW_RUN_AS_ROOT=1 and OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1)")
    strategy_period_s: float = Field(1.0, ge=0.05, le=3600, description="how often Parsl looks at the queue (s)")
    worker_init: str = Field("", description="shell lines run before the workers start")

    @field_validator("mpi", mode="before")
    @classmethod
    def _off(cls, v):
        return "off" if v is False else v   # YAML reads an unquoted `off` as false


def _has_mpi() -> bool:
    return shutil.which("mpirun") is not None and importlib.util.find_spec("mpi4py") is not None


WORKERS_PER_CORE = 8   # local workers allowed per core: oversubscribed for tests, not a typo's 100 000 processes


class LocalProvider(Provider):
    """This machine: HTEX workers on 127.0.0.1; HPC-mode EMC under mpirun (or one process)."""

    name = "local"
    Options = LocalOptions
    default_emc_mode = "hpc"
    supports_hpc = True

    def node_cores(self) -> int:
        """The ``local.cores`` option, else the cores this process may use."""
        if self.options.cores:
            return self.options.cores
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:          # not on Linux
            return os.cpu_count() or 1

    def uses_mpi(self) -> bool:
        """Whether HPC-mode EMC runs under mpirun on this site (auto: when mpirun and mpi4py are here and
        mpirun will start: Open MPI refuses root without its two allow-as-root variables)."""
        if self.options.mpi == "off" or self.site.workers == 1:
            return False
        return self.options.mpi == "mpirun" or (_has_mpi() and not self._root_refused())

    def why_no_mpi(self) -> str | None:
        """Why HPC-mode EMC runs as one process on this site (None: under mpirun)."""
        if self.uses_mpi():
            return None
        if self.options.mpi == "off":
            return "local.mpi is off"
        if self.site.workers == 1:
            return "one worker"
        return "mpirun or mpi4py is missing here" if not _has_mpi() else "this is root, and Open MPI refuses root"

    def processes_per_node(self) -> int:
        """HPC-mode EMC without MPI is one process; else the workers."""
        return 1 if self.site.emc_mode == "hpc" and not self.uses_mpi() else self.ranks_per_node()

    def _root_refused(self) -> bool:
        """Open MPI would refuse root where the HPC job runs: bare on this machine (a container's image decides
        for itself), with the driver's environment plus what ``local.worker_init`` exports."""
        if self.site.container.runtime != "none":
            return False
        exported = dict(re.findall(r"\b(OMPI_ALLOW_RUN_AS_ROOT(?:_CONFIRM)?)=[\"']?(\w+)", self.options.worker_init))
        return _root_refused({**os.environ, **exported})

    def _parsl_provider(self):
        """Parsl's LocalProvider, whose block may be a fork of the driver (:mod:`spibatch.parsl_lean.pool_fork`)
        where its shell lines are only spibatch's own exports: bare on this machine, no ``local.worker_init``."""
        from spibatch.parsl_lean.pool_fork import ForkedLocalProvider

        bare = self.site.container.runtime == "none" and not self.options.worker_init.strip()
        return ForkedLocalProvider(init_blocks=1, min_blocks=1, max_blocks=1,
                                   env=common.bare_pool_env() if bare else None,
                                   worker_init=common.worker_init(self.site, self.options.worker_init))

    def parsl_config(self, run_dir: Path):
        """One HTEX of ``workers`` workers on this machine, driver and workers on 127.0.0.1."""
        parsl_lean.import_parsl()
        executor = common.htex(self.site, self._parsl_provider(), run_dir, address="127.0.0.1")
        return common.config([executor], run_dir, strategy_period=self.options.strategy_period_s, max_idletime=120.0)

    def emc_launch(self, run_dir: Path, command: list[str], ranks: int | None = None) -> Launch:
        """On the tasks executor: ``mpirun -n ranks`` (when MPI is used and ranks > 1) of the command.  No
        container prefix: the worker that runs the line is in the site's container already, and so are the
        ranks its ``mpirun`` (the image's) starts (found with ch-run for real: a ``ch-run`` inside the image
        was no executable, and a rank per container would have a user namespace each)."""
        ranks = self.site.workers if ranks is None else ranks
        line = launchers.words(command)
        if self.uses_mpi() and ranks > 1:
            line = launchers.mpirun(ranks, max(1, self.node_cores() // ranks))(line)
        return Launch(TASKS_LABEL, line)

    def render(self, run_dir: Path, command: list[str]) -> Rendered:
        """The worker command Parsl would start and the EMC job's command."""
        executor = self.parsl_config(run_dir).executors[0]
        provider = executor.provider
        worker = common.format_launch(executor, self.site.workers, run_dir)
        files = {"workers.sh": "#!/bin/bash\n" + (provider.worker_init + "\n" if provider.worker_init else "")
                 + worker + "\n",
                 "driver.txt": shlex.join(command) + "\n"}
        if self.site.emc_mode == "hpc":
            launch = self.emc_launch(run_dir, common.emc_command(self.site, run_dir))
            files["emc-hpc.sh"] = "#!/bin/bash\n" + launch.command + "\n"
        return Rendered(files)

    def check_counts(self) -> None:
        """Not more than WORKERS_PER_CORE workers a core."""
        cores = self.node_cores()
        if self.site.workers > WORKERS_PER_CORE * cores:
            raise self.fail(f"{self.site.workers} on the local site, which starts that many worker processes at "
                            f"once on this machine's {cores} core(s)", "workers",
                            f"set workers to at most {WORKERS_PER_CORE * cores} ({WORKERS_PER_CORE} a core), or "
                            "local.cores to the cores the machine has")

    def check_site(self, run_dir: Path) -> None:
        """:meth:`check_counts`; container runtime and image present; mpirun and mpi4py when ``local.mpi:
        mpirun``."""
        self.check_counts()
        check_container(self.site.container, self.site.source, [run_dir])
        if self.options.mpi == "mpirun" and self.site.emc_mode == "hpc" and not _has_mpi():
            raise self.fail("local.mpi is mpirun, but mpirun or mpi4py is missing", "local.mpi",
                            "install an MPI and `pip install 'spibatch[mpi]'`, or set local.mpi: auto")
        if self.site.emc_mode == "hpc" and self.site.workers > 1 and self._root_refused():
            if self.options.mpi == "mpirun":
                raise self.fail("local.mpi is mpirun, but this is root and Open MPI refuses to run as root",
                                "local.mpi", "as root in a container: export OMPI_ALLOW_RUN_AS_ROOT=1 "
                                "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 (or in local.worker_init); else run as a user, or "
                                "set local.mpi: auto (one process)")
            if self.options.mpi == "auto" and _has_mpi():
                log.warning("%s: HPC-mode EMC runs as one process: this is root, and Open MPI refuses root unless "
                            "OMPI_ALLOW_RUN_AS_ROOT=1 and OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 are exported",
                            self.site.source)


_OPEN_MPI: dict[str, bool] = {}    # mpirun's path -> whether it is Open MPI's (asked once a process)


def _root_refused(env=None) -> bool:
    """Whether Open MPI's mpirun would refuse to start here: root, without its two allow-as-root variables."""
    env = os.environ if env is None else env
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    if env.get("OMPI_ALLOW_RUN_AS_ROOT") == "1" and env.get("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM") == "1":
        return False
    path = shutil.which("mpirun")
    if path is None:
        return False
    if path not in _OPEN_MPI:
        try:
            done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
            _OPEN_MPI[path] = "Open MPI" in done.stdout + done.stderr
        except (OSError, subprocess.SubprocessError):
            _OPEN_MPI[path] = False
    return _OPEN_MPI[path]
