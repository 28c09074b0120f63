"""The Slurm site: Parsl's SlurmProvider.

Executors (see :mod:`spibatch.backends.base`): ``tasks``, an HTEX whose worker pool is started
with ``srun`` in a batch job (inside the container, when one is set), for the stages,
the phasing starts and the HTC-mode EMC tasks; and, in HPC mode, ``mpi``, Parsl's
MPIExecutor in its own batch job, which runs the EMC job as one MPI job of ``workers``
ranks: ``$PARSL_MPI_PREFIX`` (``srun --ntasks N ...``) with ``slurm.mpi_options`` (default
``--mpi=pmix``: the PMI Debian's OpenMPI was built for, and ``--overlap``: an srun inside the
worker's own step), each rank inside the container.  Idle blocks are given back after
``max_idletime_s``, so the two jobs can take turns on the same nodes.  Both executors are
encrypted (the workers reach the driver over the network).
"""

from __future__ import annotations

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
from spibatch.backends.base import MPI_LABEL, TASKS_LABEL, Check, Launch, Provider, Rendered
from spibatch.backends.containers import check as check_container
from spibatch.yaml_models import Section

WALLTIME = re.compile(r"^(?:(\d+)-)?(\d+):([0-5]\d):([0-5]\d)\Z")
SLURM_NAMES = re.compile(r"[A-Za-z0-9_.+:-]{1,64}(,[A-Za-z0-9_.+:-]{1,64}){0,15}")   # a name, or a list by commas


class SlurmOptions(Section):
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
    strategy_period_s: float = Field(5.0, ge=0.05, le=3600, description="how often Parsl looks at the queue (s)")
    start: Literal["sbatch", "salloc"] = Field(
        "sbatch", description="how a worker block starts: sbatch (a batch job: Slurm starts it from its scheduling "
        "pass, 0.3-3 s on idle nodes by default) or salloc (an allocation, granted at once when nodes are free; the "
        "block's script runs on this login node, its workers on the nodes: spibatch.backends.slurm_salloc)")

    @field_validator("partition", "account", "qos")
    @classmethod
    def _names(cls, v):
        """Written into ``#SBATCH`` lines: a name (letters, digits, ``_.+:-``) or names by commas, nothing that
        could end the line or start another (a space, a newline, ``;``)."""
        if v is not None and not SLURM_NAMES.fullmatch(v):   # (match with `$`: "debug\n" passed)
            raise ValueError("a Slurm name: letters, digits and _ . + : - (several separated by commas), no "
                             "spaces or newlines")
        return v

    @field_validator("mpi_options")
    @classmethod
    def _srun_options(cls, v):
        """Written into the job's ``srun`` line: whole shell words on one line (an unbalanced quote broke it)."""
        import shlex

        try:
            shlex.split(v)
        except ValueError as exc:
            raise ValueError(f"srun options as shell words ({exc})") from None
        if "\n" in v or "\r" in v:
            raise ValueError("srun options on one line")
        if re.search(r"[$`\\]", v):   # as a container's options: the job's scripts would expand them
            raise ValueError("srun options without $, ` or \\ (the job's scripts would expand them)")
        return v

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
        if hours > 366 * 24:   # Slurm takes it, then no partition's limit does: the job pends for good
            raise ValueError("a walltime of at most a year (e.g. 7-00:00:00)")
        return f"{hours:02d}:{minutes:02d}:{seconds:02d}"


PROGRAMS = ("sbatch", "sinfo", "srun")   # what a Slurm login node has on PATH (and salloc, to start blocks by it)


class SlurmProvider(Provider):
    """A Slurm cluster through Parsl's SlurmProvider: HTEX workers by srun in a batch job, the
    HPC-mode EMC job on Parsl's MPIExecutor (``$PARSL_MPI_PREFIX``) in its own batch job."""

    name = "slurm"
    Options = SlurmOptions
    default_emc_mode = "hpc"
    gpu_key = "slurm.gpus_per_node"
    supports_hpc = True
    rendered_check = "sbatch --test-only of each batch script"

    def _parsl_provider(self, launcher, *, init_blocks: int, cores: int | None):
        if self.options.start == "salloc":
            from spibatch.backends.slurm_salloc import SallocSlurmProvider as ParslSlurmProvider
        else:
            from parsl.providers import SlurmProvider as ParslSlurmProvider

        opts = self.options
        return ParslSlurmProvider(partition=opts.partition, account=opts.account, qos=opts.qos,
                                  walltime=opts.walltime, nodes_per_block=opts.nodes, cores_per_node=cores,
                                  mem_per_node=opts.mem_per_node_gb, gpus_per_node=opts.gpus_per_node,
                                  exclusive=opts.exclusive, scheduler_options=opts.scheduler_options,
                                  init_blocks=init_blocks, min_blocks=0, max_blocks=1,
                                  worker_init=common.worker_init(self.site, opts.worker_init), launcher=launcher)

    def ranks_per_node(self) -> int:
        """Workers (MPI ranks) per node: the site's workers spread over ``slurm.nodes``."""
        return max(1, -(-self.site.workers // self.options.nodes))

    def node_cores(self) -> int:
        """Cores of one node: ``slurm.cores_per_node``, else one per rank."""
        return self.options.cores_per_node or self.ranks_per_node()

    def executors(self, run_dir: Path) -> list:
        """``tasks`` (HTEX, srun-started worker pool, one GPU per worker where there are GPUs) and, in hpc
        mode, ``mpi`` (MPIExecutor, one worker per block, which runs the EMC job's srun); both encrypted."""
        from parsl.executors import MPIExecutor
        from parsl.launchers import SimpleLauncher, SrunLauncher

        opts = self.options
        per_node = self.ranks_per_node()
        tasks = common.htex(self.site, self._parsl_provider(SrunLauncher(debug=False), init_blocks=1,
                                                            cores=opts.cores_per_node),
                            run_dir, gpus=opts.gpus_per_node)
        tasks.max_workers_per_node = per_node if not opts.gpus_per_node else min(per_node, opts.gpus_per_node)
        out = [tasks]
        if self.site.emc_mode == "hpc":
            mpi = MPIExecutor(label=MPI_LABEL, max_workers_per_block=1, mpi_launcher="srun", encrypted=True,
                              address="127.0.0.1",   # a stand-in (common.any_address), so Parsl asks no web service
                              provider=self._parsl_provider(SimpleLauncher(), init_blocks=0,
                                                            cores=opts.cores_per_node or per_node),
                              worker_logdir_root=common.worker_logdir(run_dir), **common.HEARTBEAT)
            mpi.interchange_launch_cmd = common.interchange_cmd()   # MPIExecutor types it ``str`` (Parsl
            out.append(common.any_address(mpi))                     # passes it on to Popen as a list)
        return out

    def parsl_config(self, run_dir: Path):
        parsl_lean.import_parsl()
        return common.config(self.executors(run_dir), run_dir, strategy_period=self.options.strategy_period_s,
                             max_idletime=self.options.max_idletime_s)

    def emc_launch(self, run_dir: Path, command: list[str], ranks: int | None = None) -> Launch:
        """On the mpi executor: ``$PARSL_MPI_PREFIX`` (srun) of the container of the command."""
        ranks = self.site.workers if ranks is None else ranks
        line = launchers.PARSL_MPI(launchers.container(self.site.container, [run_dir])(launchers.words(command)))
        nodes = min(self.options.nodes, ranks)
        spec = {"num_nodes": nodes, "num_ranks": ranks, "ranks_per_node": -(-ranks // nodes),   # given: Parsl
                "launcher_options": self.options.mpi_options}                                     # would write "2.0"
        return Launch(MPI_LABEL, line, spec)

    def render(self, run_dir: Path, command: list[str]) -> Rendered:
        """Each batch script exactly as Parsl's SlurmProvider writes it, and the EMC job's command."""
        files = {"driver.txt": shlex.join(command) + "\n"}
        scripts = run_dir / "runinfo" / "<NNN>" / "submit_scripts"   # Parsl's folder for them in a real run
        for executor in self.executors(run_dir):
            per_node = self.ranks_per_node() if executor.label == TASKS_LABEL else 1
            launch = common.format_launch(executor, per_node, run_dir)
            text = common.render_submit(executor.provider, launch, scripts, f"parsl.{executor.label}.block-0")
            files[f"sbatch-{executor.label}.sh"] = text
            if self.options.start == "salloc":
                from spibatch.backends.slurm_salloc import salloc_command

                path = f"{scripts}/parsl.{executor.label}.block-0.<time>"   # sbatch-<label>.sh, as Parsl names it
                files[f"salloc-{executor.label}.txt"] = (f"# started on this host (slurm.start: salloc), not queued; "
                                                         f"salloc's messages: {path}.salloc\n"
                                                         f"{shlex.join(salloc_command(text, path))}\n")
        if self.site.emc_mode == "hpc":
            launch = self.emc_launch(run_dir, common.emc_command(self.site, run_dir))
            ranks = launch.resources["num_ranks"]
            files["emc-hpc.sh"] = (f"# on the mpi block: PARSL_MPI_PREFIX = srun --ntasks {ranks} --ntasks-per-node "
                                   f"{self.ranks_per_node()} --nodelist <block's nodes> --nodes {self.options.nodes} "
                                   f"{launch.resources['launcher_options']}\n{launch.command}\n")
        return Rendered(files)

    # ---------------------------------------------------------------- checks

    def _programs(self) -> list[str]:
        wanted = PROGRAMS + (("salloc",) if self.options.start == "salloc" else ())
        missing = [p for p in wanted if shutil.which(p) is None]
        if missing:
            raise self.fail(f"{missing[0]} is not on PATH", "provider",
                            "run on a Slurm login node (or load the Slurm module)", unreachable=True)
        return []

    def partitions(self) -> list[str]:
        """Partition names ``sinfo`` lists (the default one without its ``*``); Unreachable when sinfo fails."""
        try:
            result = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise self.fail(f"sinfo failed: {exc}", "provider",
                            "run on a Slurm login node whose slurmctld answers", unreachable=True) from None
        if result.returncode != 0:
            said = " ".join((result.stderr or result.stdout).split())[:200] or f"exit status {result.returncode}"
            raise self.fail(f"sinfo failed: {said}", "provider",
                            "run on a Slurm login node whose slurmctld answers", unreachable=True)
        return [p.strip().rstrip("*") for p in result.stdout.split() if p.strip()]

    def _partition(self) -> list[str]:
        names, part = self.partitions(), self.options.partition
        if part is not None and part not in names:
            raise self.fail(f"partition '{part}' does not exist (sinfo lists: {', '.join(names) or 'none'})",
                            "slurm.partition", "use one that sinfo lists, or leave it out")
        return []

    def _salloc_options(self, run_dir: Path) -> list[str]:
        """Each block's ``#SBATCH`` options are ones salloc takes (``slurm.start: salloc``)."""
        from spibatch.backends.slurm_salloc import refused, salloc_words

        for name, text in self.render(run_dir, ["spibatch"]).files.items():
            bad = refused(salloc_words(text, name)[0], name) if name.startswith("sbatch-") else []
            if bad and bad[0].startswith("--comment"):
                raise self.fail(f"{bad[0]}: slurm.start: salloc sets each block's --comment itself (a resume on "
                                "another host finds the blocks by it)", "slurm.scheduler_options",
                                "leave --comment out, or start the blocks by sbatch (slurm.start: sbatch)")
            if bad:
                raise self.fail(f"salloc does not take {bad[0]} (slurm.start: salloc runs the block's script on "
                                "this host, with this environment)", "slurm.scheduler_options",
                                "leave it out, or start the blocks by sbatch (slurm.start: sbatch)")
        return []

    def _container(self) -> list[str]:
        check_container(self.site.container, self.site.source)
        return []

    def cluster_checks(self, run_dir: Path) -> list[Check]:
        """sbatch, sinfo and srun on PATH; the partition exists (sinfo); the container runtime and image."""
        part = self.options.partition
        programs = "sbatch, sinfo, srun and salloc" if self.options.start == "salloc" else "sbatch, sinfo and srun"
        checks = [Check(f"{programs} on PATH", self._programs),
                  Check(f"partition {part} exists (sinfo)" if part else "sinfo answers", self._partition)]
        if self.options.start == "salloc":
            checks.append(Check("the blocks' options are salloc's", lambda: self._salloc_options(run_dir)))
        if self.site.container.runtime != "none":
            checks.append(Check(f"{self.site.container.runtime} and the image present", self._container))
        return checks

    def check_rendered(self, rendered: Rendered) -> list[str]:
        """Ask ``sbatch --test-only`` about each rendered batch script (nothing is queued); one line each.

        InputError (one line, sbatch's words) when Slurm refuses one.
        """
        import tempfile

        self._programs()
        notes = []
        with tempfile.TemporaryDirectory(prefix="spibatch-dry-run-") as scratch:
            for name, text in rendered.files.items():
                if not name.startswith("sbatch-"):
                    continue
                path = Path(scratch) / name
                path.write_text(text, encoding="utf-8")
                done = subprocess.run(["sbatch", "--test-only", str(path)], capture_output=True, text=True,
                                      timeout=60)
                said = " ".join((done.stderr or done.stdout).split())
                if done.returncode != 0:
                    raise self.fail(f"sbatch --test-only refuses {name}: {said}", "slurm",
                                    "correct the slurm section (partition, walltime, nodes, cores, scheduler_options)")
                notes.append(f"sbatch --test-only: {name} accepted ({said})")
        return notes
