"""The Slurm site: Parsl's SlurmProvider.

Executors (see :mod:`spibatch.backends`): ``tasks``, an HTEX whose worker pool is started
with ``srun`` in a batch job (inside the container, when one is set), for the stages,
the phasing starts and the HTC-mode EMC tasks; and, in HPC mode, ``mpi``, Parsl's
MPIExecutor in its own batch job, which runs ``spibatch emc`` as one MPI job of
``workers`` ranks: ``$PARSL_MPI_PREFIX`` (``srun --ntasks N ...``) with ``--mpi=pmi2``
(PMIx hangs with Debian's Slurm + OpenMPI) and ``--overlap`` (an srun inside the
worker's own step), each rank inside the container.  Idle blocks are given back after
``max_idletime_s``, so the two jobs can take turns on the same nodes.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

from pydantic import Field, field_validator

from spibatch.backends import MPI_LABEL, TASKS_LABEL
from spibatch.backends import parsl_common as common
from spibatch.backends.containers import check as check_container
from spibatch.backends.containers import prefix
from spibatch.yaml_models import Section
from spibatch.errors import InputError

WALLTIME = re.compile(r"^(?:(\d+)-)?(\d+):([0-5]\d):([0-5]\d)$")


class Options(Section):
    """The ``slurm:`` section (as Parsl's SlurmProvider)."""

    partition: str | None = Field(None, description="partition (sinfo lists them); default: the cluster's default")
    account: str | None = Field(None, description="account to charge")
    qos: str | None = Field(None, description="quality of service")
    walltime: str = Field("01:00:00", description="per batch job: HH:MM:SS or D-HH:MM:SS")
    nodes: int = Field(1, ge=1, description="nodes per batch job")
    cores_per_node: int | None = Field(None, ge=1, description="CPUs asked per node (--cpus-per-task of the one "
                                       "task per node); default: Slurm's default")
    mem_per_node_gb: int | None = Field(None, ge=1, description="memory per node in GB")
    gpus_per_node: int | None = Field(None, ge=1, description="GPUs per node (--gpus-per-node)")
    exclusive: bool = Field(False, description="ask for whole nodes (--exclusive)")
    scheduler_options: str = Field("", description="more #SBATCH lines, verbatim")
    worker_init: str = Field("", description="shell lines run in the job before the workers (module load ...)")
    mpi_options: str = Field("--mpi=pmix --overlap", description="srun options of the HPC-mode EMC job: the PMI plugin "
                             "your MPI was built for (Debian's OpenMPI: pmix; pmi2 needs an MPI built with Slurm's PMI-2)")
    max_idletime_s: float = Field(30.0, gt=0, description="an idle batch job is ended after this many seconds")
    strategy_period_s: float = Field(5.0, gt=0, description="how often Parsl looks at the queue (s)")

    @field_validator("walltime", mode="before")
    @classmethod
    def _walltime(cls, v):
        match = WALLTIME.match(str(v).strip()) if isinstance(v, (str, int)) else None
        if not match:
            raise ValueError("a walltime HH:MM:SS or D-HH:MM:SS (e.g. 01:30:00)")
        days, hours, minutes, seconds = (int(x or 0) for x in match.groups())
        hours += 24 * days
        if hours * 60 + minutes < 1:
            raise ValueError("a walltime of at least one minute (e.g. 00:10:00)")
        return f"{hours:02d}:{minutes:02d}:{seconds:02d}"


def _provider(site, launcher, *, init_blocks: int, cores: int | None):
    from parsl.providers import SlurmProvider

    opts = site.slurm
    return SlurmProvider(partition=opts.partition, account=opts.account, qos=opts.qos, walltime=opts.walltime,
                         nodes_per_block=opts.nodes, cores_per_node=cores, mem_per_node=opts.mem_per_node_gb,
                         gpus_per_node=opts.gpus_per_node, exclusive=opts.exclusive,
                         scheduler_options=opts.scheduler_options, init_blocks=init_blocks, min_blocks=0,
                         max_blocks=1, worker_init=common.worker_init(site, opts.worker_init), launcher=launcher)


def ranks_per_node(site) -> int:
    return max(1, -(-site.workers // site.slurm.nodes))


def executors(site, run_dir: Path) -> list:
    from parsl.executors import MPIExecutor
    from parsl.launchers import SimpleLauncher, SrunLauncher

    opts = site.slurm
    per_node = ranks_per_node(site)
    tasks = common.htex(site, _provider(site, SrunLauncher(debug=False), init_blocks=1, cores=opts.cores_per_node),
                        run_dir, gpus=opts.gpus_per_node)
    tasks.max_workers_per_node = per_node if not opts.gpus_per_node else min(per_node, opts.gpus_per_node)
    out = [tasks]
    if site.emc_mode == "hpc":
        mpi = MPIExecutor(label=MPI_LABEL, max_workers_per_block=1, mpi_launcher="srun",
                          provider=_provider(site, SimpleLauncher(), init_blocks=0,
                                             cores=opts.cores_per_node or per_node),
                          worker_logdir_root=common.worker_logdir(run_dir), **common.HEARTBEAT)
        out.append(mpi)
    return out


def parsl_config(site, run_dir: Path):
    return common.config(executors(site, run_dir), run_dir, strategy_period=site.slurm.strategy_period_s,
                         max_idletime=site.slurm.max_idletime_s)


def emc_launch(site, run_dir: Path, command: list[str], ranks: int | None = None) -> tuple[str, str, dict]:
    """(executor label, shell command, resource spec) of the HPC-mode EMC job: srun's prefix, then each rank."""
    ranks = site.workers if ranks is None else ranks
    inner = shlex.join(prefix(site.container, [run_dir]) + command)
    nodes = min(site.slurm.nodes, ranks)
    spec = {"num_nodes": nodes, "num_ranks": ranks, "ranks_per_node": -(-ranks // nodes),   # given: Parsl would
            "launcher_options": site.slurm.mpi_options}                                       # write "2.0"
    return MPI_LABEL, f"$PARSL_MPI_PREFIX {inner}", spec


def node_cores(site) -> int:
    """Cores of one node of this site (threads are shared out of them)."""
    return site.slurm.cores_per_node or ranks_per_node(site)


def render(site, run_dir: Path, command: list[str]) -> dict[str, str]:
    """The dry run: each batch script exactly as Parsl's SlurmProvider writes it, and the EMC job's command."""
    files = {"driver.txt": shlex.join(command) + "\n"}
    scripts = run_dir / "runinfo" / "<NNN>" / "submit_scripts"   # Parsl's folder for them in a real run
    for executor in executors(site, run_dir):
        per_node = ranks_per_node(site) if executor.label == TASKS_LABEL else 1
        launch = common.format_launch(executor, per_node)
        files[f"sbatch-{executor.label}.sh"] = common.render_submit(executor.provider, launch, scripts,
                                                                    f"parsl.{executor.label}.block-0")
    if site.emc_mode == "hpc":
        _, line, spec = emc_launch(site, run_dir, common.emc_command(site, run_dir))
        ranks = spec["num_ranks"]
        files["emc-hpc.sh"] = (f"# on the mpi block: PARSL_MPI_PREFIX = srun --ntasks {ranks} --ntasks-per-node "
                               f"{ranks_per_node(site)} --nodelist <block's nodes> --nodes {site.slurm.nodes} "
                               f"{spec['launcher_options']}\n{line}\n")
    return files


def partitions() -> list[str]:
    """Partition names ``sinfo`` lists (the default one without its ``*``)."""
    result = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise InputError(f"sinfo failed: {(result.stderr or result.stdout).strip().splitlines()[:1]}",
                         field="slurm", fix="run on a Slurm login node whose slurmctld answers")
    return [p.strip().rstrip("*") for p in result.stdout.split() if p.strip()]


def preflight(site, run_dir: Path) -> None:
    """sbatch and sinfo present, the partition exists (asks sinfo), the container can run."""
    for program in ("sbatch", "sinfo", "srun"):
        if shutil.which(program) is None:
            raise InputError(f"{program} is not on PATH", path=site.source, field="provider",
                             fix="run on a Slurm login node (or load the Slurm module)")
    names = partitions()
    part = site.slurm.partition
    if part is not None and part not in names:
        raise InputError(f"partition '{part}' does not exist (sinfo lists: {', '.join(names) or 'none'})",
                         path=site.source, field="slurm.partition", fix="use one that sinfo lists, or leave it out")
    check_container(site.container, site.source)


def check_rendered(site, files: dict[str, str]) -> list[str]:
    """Ask ``sbatch --test-only`` about each rendered batch script (nothing is queued); one line each.

    InputError (one line, sbatch's words) when Slurm refuses one.
    """
    import tempfile

    notes = []
    with tempfile.TemporaryDirectory(prefix="spibatch-dry-run-") as scratch:
        for name, text in files.items():
            if not name.startswith("sbatch-"):
                continue
            path = Path(scratch) / name
            path.write_text(text, encoding="utf-8")
            done = subprocess.run(["sbatch", "--test-only", str(path)], capture_output=True, text=True, timeout=60)
            said = " ".join((done.stderr or done.stdout).split())
            if done.returncode != 0:
                raise InputError(f"sbatch --test-only refuses {name}: {said}", path=site.source, field="slurm",
                                 fix="correct the slurm section (partition, walltime, nodes, cores, scheduler_options)")
            notes.append(f"sbatch --test-only: {name} accepted ({said})")
    return notes
