"""The local site: Parsl's HighThroughputExecutor with a LocalProvider on 127.0.0.1 (the default).

EMC in HPC mode runs ``spibatch emc`` under ``mpirun -n workers`` (each rank inside the
container, when one is set) as one task; in HTC mode one task per shard per iteration.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path
from typing import Literal

from pydantic import Field

from spibatch.backends import TASKS_LABEL
from spibatch.backends import parsl_common as common
from spibatch.backends.containers import check as check_container
from spibatch.backends.containers import prefix
from spibatch.yaml_models import Section
from spibatch.errors import InputError


class Options(Section):
    """The ``local:`` section."""

    cores: int | None = Field(None, ge=1, description="cores the workers share; default: the cores this process "
                              "may use")
    mpi: Literal["auto", "mpirun", "off"] = Field(
        "auto", description="HPC-mode EMC: mpirun (workers ranks; needs mpirun and mpi4py), off (one process, all "
        "cores), auto (mpirun when both are present and workers > 1)")
    strategy_period_s: float = Field(1.0, gt=0, description="how often Parsl looks at the queue (s)")
    worker_init: str = Field("", description="shell lines run before the workers start")


def cores(site) -> int:
    if site.local.cores:
        return site.local.cores
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def uses_mpi(site) -> bool:
    """Whether HPC-mode EMC runs under mpirun on this site."""
    if site.local.mpi == "off" or site.workers == 1:
        return False
    if site.local.mpi == "mpirun":
        return True
    import importlib.util

    return shutil.which("mpirun") is not None and importlib.util.find_spec("mpi4py") is not None


def _provider(site):
    from parsl.providers import LocalProvider

    return LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1,
                         worker_init=common.worker_init(site, site.local.worker_init))


def parsl_config(site, run_dir: Path):
    """One HTEX of ``workers`` workers on this machine, driver and workers on 127.0.0.1."""
    executor = common.htex(site, _provider(site), run_dir, address="127.0.0.1")
    return common.config([executor], run_dir, strategy_period=site.local.strategy_period_s, max_idletime=120.0)


def emc_launch(site, run_dir: Path, command: list[str], ranks: int | None = None) -> tuple[str, str, dict]:
    """(executor label, shell command, resource spec) of the HPC-mode EMC job of ``ranks`` (default workers)."""
    ranks = site.workers if ranks is None else ranks
    inner = prefix(site.container, [run_dir]) + command
    if uses_mpi(site) and ranks > 1:
        inner = ["mpirun", "-n", str(ranks), "--bind-to", "none",
                 "-x", f"NUMBA_NUM_THREADS={max(1, cores(site) // ranks)}"] + inner
    return TASKS_LABEL, shlex.join(inner), {}


def node_cores(site) -> int:
    """Cores of one node of this site (threads are shared out of them)."""
    return cores(site)


def render(site, run_dir: Path, command: list[str]) -> dict[str, str]:
    """The dry run: the worker command Parsl would start and the EMC job's command."""
    executor = parsl_config(site, run_dir).executors[0]
    provider = executor.provider
    worker = common.format_launch(executor, site.workers)
    files = {"workers.sh": "#!/bin/bash\n" + (provider.worker_init + "\n" if provider.worker_init else "")
             + worker + "\n",
             "driver.txt": shlex.join(command) + "\n"}
    if site.emc_mode == "hpc":
        files["emc-hpc.sh"] = "#!/bin/bash\n" + emc_launch(site, run_dir, common.emc_command(site, run_dir))[1] + "\n"
    return files


def preflight(site, run_dir: Path) -> None:
    """Container runtime and image present; mpirun and mpi4py when ``local.mpi: mpirun``."""
    check_container(site.container, site.source)
    if site.local.mpi == "mpirun" and site.emc_mode == "hpc":
        import importlib.util

        if shutil.which("mpirun") is None or importlib.util.find_spec("mpi4py") is None:
            raise InputError("local.mpi is mpirun, but mpirun or mpi4py is missing", path=site.source,
                             field="local.mpi", fix="install an MPI and `pip install 'spibatch[mpi]'`, "
                             "or set local.mpi: auto")
