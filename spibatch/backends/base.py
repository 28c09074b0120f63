"""The provider contract in one place: :class:`Provider`, what its dry run returns
(:class:`Rendered`) and how its HPC-mode EMC job is launched (:class:`Launch`).

As dask-jobqueue's ``Job``: one subclass per scheduler, with class attributes
(``name``, ``Options``: the pydantic model of the site file's provider section,
``default_emc_mode``, ``supports_hpc``) and methods whose defaults fit a provider
that has no MPI launch, no scheduler to ask and one core per worker.  A provider
is built from a validated site (``provider_for(site)`` in :mod:`spibatch.backends`)
and never submits anything itself: Parsl does, from :meth:`Provider.parsl_config`.

Checks come in two kinds.  :meth:`Provider.check_site` needs nothing outside this
process (an image named, quantities that parse, a runtime on PATH) and always stops
with one :class:`~spibatch.errors.InputError` line.  :meth:`Provider.cluster_checks`
ask the scheduler or the cluster (a partition exists, a namespace exists); where
there is nobody to ask (no ``sbatch``, no kubeconfig, no client library) they raise
:class:`Unreachable`: :meth:`Provider.preflight` (before a real run) stops on it,
the dry run (:meth:`Provider.dry_run`) prints what it rendered and one ``skipped:``
line for each check it could not make.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from spibatch.errors import InputError

if TYPE_CHECKING:   # the site model lives in spibatch.backends, which imports this module
    from pydantic import BaseModel

    from spibatch.backends import Site

TASKS_LABEL = "tasks"   # the HTEX executor: stages, phasing starts, HTC EMC shard tasks
MPI_LABEL = "mpi"       # the MPIExecutor: the HPC EMC job (where the provider has one)
CHECKS_FILE = "checks.txt"   # the dry run's listing of what was checked, after the rendered files


class Unreachable(InputError):
    """The scheduler or cluster cannot be asked from here (its commands, its configuration or its
    client library are missing).  A real run stops on it like on any InputError; the dry run
    skips the checks that need it, one line each."""


@dataclass
class Rendered:
    """What a provider would submit, and what was checked.

    files: file name -> the exact text that would be submitted (batch scripts, manifests, command lines);
    checks: one line per check made or skipped (the scheduler's answers; ``skipped: ...`` where nobody
    could be asked).
    """

    files: dict[str, str]
    checks: list[str] = field(default_factory=list)

    def listing(self) -> dict[str, str]:
        """The files, then ``checks.txt`` (one line per check) when anything was checked."""
        out = dict(self.files)
        if self.checks:
            out[CHECKS_FILE] = "\n".join(self.checks) + "\n"
        return out

    def text(self) -> str:
        """The dry run as printed: ``==> name <==`` and the text of each file of :meth:`listing`."""
        return "".join(f"==> {name} <==\n{text}\n" for name, text in self.listing().items())


@dataclass(frozen=True)
class Launch:
    """The HPC-mode EMC job: one shell line run by a Parsl bash app on ``executor``.

    command: the shell line (MPI prefix, container prefix, then each rank's words);
    resources: Parsl's ``parsl_resource_specification`` ({} = none; the MPIExecutor reads
    ``num_nodes``, ``num_ranks``, ``ranks_per_node``, ``launcher_options``).
    """

    executor: str
    command: str
    resources: dict[str, Any] = field(default_factory=dict)

    @property
    def nodes(self) -> int:
        """Nodes the job spans (threads per rank are shared out of one node's cores)."""
        return int(self.resources.get("num_nodes", 1))


@dataclass(frozen=True)
class Check:
    """One question to the scheduler or cluster.

    what: the question, as the dry run's ``skipped:`` line names it;
    ask: returns notes to print ([] when a pass needs no words); raises InputError when the
    answer is no, :class:`Unreachable` when nobody can be asked.
    """

    what: str
    ask: Callable[[], list[str]]


class Provider:
    """One platform: where stages, tasks and the EMC job run (subclasses: local, slurm, kubernetes)."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]]          # the site file's ``<name>:`` section (extra keys refused)
    default_emc_mode: ClassVar[str] = "htc"    # the site's emc_mode when the file does not say
    supports_hpc: ClassVar[bool] = False       # has an MPI launch (emc_launch): EMC can run in hpc mode
    rendered_check: ClassVar[str] = ""         # what check_rendered asks ("" = nothing), for a skipped line
    address_key: ClassVar[str] = ""            # the site key that says where workers reach the driver ("" = none:
                                               # Parsl offers them every address of this machine)

    def __init__(self, site: Site):
        self.site = site

    @property
    def options(self) -> Any:
        """The site's provider section (an instance of ``Options``)."""
        return self.site.options

    def fail(self, problem: str, field: str | None, fix: str, *, unreachable: bool = False) -> InputError:
        """An InputError (or :class:`Unreachable`) naming the site file and ``field``, to raise."""
        kind = Unreachable if unreachable else InputError
        return kind(problem, path=self.site.source, field=field, fix=fix)

    # ---------------------------------------------------------------- what every provider has

    def parsl_config(self, run_dir: Path) -> Any:
        """``parsl.config.Config``: executors labelled ``"tasks"`` (HTEX: stages and HTC tasks) and, where
        EMC runs in hpc mode through Parsl, ``"mpi"``; usage tracking off; ``<run_dir>/runinfo``."""
        raise NotImplementedError

    def render(self, run_dir: Path, command: list[str]) -> Rendered:
        """The dry run's files: what would be submitted for a run in ``run_dir`` driven by ``command``
        (``spibatch run ...``), exactly; values known only at run time as ``<placeholders>``.
        Writes nothing, submits nothing, asks nobody (``checks`` empty)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- checks

    def check_counts(self) -> None:
        """The site's numbers alone (workers against what the site has), before the stages are sized on them;
        InputError (one line: site file, key).  Default: nothing."""

    def check_site(self, run_dir: Path) -> None:
        """What can be checked without the scheduler; InputError (one line: site file, key) otherwise."""

    gpu_key: ClassVar[str] = ""   # the site key that asks the scheduler for GPUs ("" = the GPU is this machine's)

    def check_gpus(self, what: str) -> None:
        """``what`` (e.g. "device: gpu") runs on GPUs: InputError (one line, naming :attr:`gpu_key`) when this
        batch site asks its scheduler for none (the work would fail on the node, after queueing)."""
        if self.gpu_key and not getattr(self.options, self.gpu_key.split(".")[-1], None):
            raise self.fail(f"{what}, but this {self.name} site asks for no GPUs", self.gpu_key,
                            f"set {self.gpu_key} (GPUs a {'node' if self.name == 'slurm' else 'pod'}), or use "
                            "device: cpu")

    def cluster_checks(self, run_dir: Path) -> list[Check]:
        """Questions to the scheduler or cluster before a run (default: none)."""
        return []

    def check_rendered(self, rendered: Rendered) -> list[str]:
        """Ask the scheduler about the rendered files without submitting them; one note each
        (default: no checks).  InputError on a refusal, :class:`Unreachable` with nobody to ask."""
        return []

    def preflight(self, run_dir: Path) -> None:
        """Everything before a real run: :meth:`check_site`, then each of :meth:`cluster_checks`
        (an :class:`Unreachable` stops here too).  InputError (one line) on the first problem."""
        self.check_site(Path(run_dir))
        for check in self.cluster_checks(Path(run_dir)):
            check.ask()

    def dry_run(self, run_dir: Path, command: list[str]) -> Rendered:
        """``spibatch run --dry-run``: :meth:`check_site`, :meth:`render`, then the checks that ask the
        scheduler (:meth:`cluster_checks`, :meth:`check_rendered`); each that cannot be asked is one
        ``skipped:`` line instead.  InputError when a check's answer is no."""
        run_dir = Path(run_dir)
        self.check_site(run_dir)
        rendered = self.render(run_dir, list(command))
        checks = self.cluster_checks(run_dir)
        if self.rendered_check:
            checks.append(Check(self.rendered_check, lambda: self.check_rendered(rendered)))
        missing: Unreachable | None = None
        for check in checks:
            if missing is None:
                try:
                    rendered.checks += check.ask()
                    continue
                except Unreachable as exc:
                    missing = exc
            rendered.checks.append(f"skipped: {check.what}: {missing.problem}"
                                   + (f" ({missing.fix})" if missing.fix else ""))
        return rendered

    # ---------------------------------------------------------------- EMC in hpc mode, threads

    def emc_launch(self, run_dir: Path, command: list[str], ranks: int | None = None) -> Launch:
        """The HPC-mode EMC job of ``ranks`` (default: the site's workers) MPI ranks, each running
        ``command`` inside the site's container.  Default: none (this provider runs EMC in htc mode only)."""
        raise self.fail(f"provider {self.name} runs EMC in HTC mode only", "emc_mode",
                        "set emc_mode: htc (or leave it out)")

    def node_cores(self) -> int:
        """Cores of one node (or pod) that its workers share (default: 1)."""
        return 1

    def ranks_per_node(self) -> int:
        """Workers (or MPI ranks) sharing one node (default: all the site's workers)."""
        return self.site.workers

    def processes_per_node(self) -> int:
        """Processes of EMC that share one node's memory (each holds the model): :meth:`ranks_per_node`."""
        return self.ranks_per_node()

    def threads_per_worker(self, per_node: int | None = None) -> int:
        """Numba / FFT threads of one task when ``per_node`` tasks (default: :meth:`ranks_per_node`)
        share a node's :meth:`node_cores`; at least 1."""
        per_node = self.ranks_per_node() if per_node is None else per_node
        return max(1, int(self.node_cores()) // max(1, per_node))
