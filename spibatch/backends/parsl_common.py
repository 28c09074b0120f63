"""Pieces every Parsl-based provider shares: the environment's bin/ on PATH, the HTEX worker
launch command inside the container, the worker environment, and the dry-run rendering of a
Parsl provider's submit script (the very text its ``submit`` writes).

Encryption: every HighThroughputExecutor here is built with ``encrypted=True`` (Parsl's CurveZMQ:
the interchange and each worker pool hold keys in ``runinfo/<NNN>/<label>/certificates``, a 0700
folder, and the interchange accepts only workers with those keys).  It needs pyzmq built with
CURVE (``zmq.has("curve")``; the pyzmq wheels are), no extra package.  On Slurm and Kubernetes the
workers reach the driver over the network, where anyone on it could otherwise read the pickled
tasks or answer as a worker.  On the local site too: 127.0.0.1 does not leave the host, but every
user of a shared host (a login node) can connect to its loopback ports, and the driver unpickles
what comes back, so a site never turns it off.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

from spibatch import parsl_lean
from spibatch.backends import launchers
from spibatch.backends.base import TASKS_LABEL

PLACEHOLDERS = {  # what the dry run shows where Parsl fills in values known only once the interchange runs
    "debug": "", "max_workers_per_node": "--max_workers_per_node={workers}", "addresses": "<driver address>",
    "prefetch_capacity": 0, "cores_per_worker": "{cores_per_worker}", "mem_per_worker": "None",
    "poll_period": 10, "worker_port": "<port>", "cert_dir": "None", "logdir": "{logdir}",
    "logconf": "<logconf>", "heartbeat_period": 30, "address_probe_timeout_string": "",
    "heartbeat_threshold": 120, "drain_period": "None", "cpu_affinity": "none", "enable_mpi_mode": "",
    "mpi_launcher": "mpiexec", "accelerators": "",
}


def env_bin() -> str:
    """The bin/ folder of the Python running spibatch (Parsl's interchange.py and workers live there)."""
    return str(Path(sys.executable).parent)


def put_bin_on_path() -> None:
    """Prepend :func:`env_bin` to PATH in this process (Parsl starts ``interchange.py`` by name)."""
    path = os.environ.get("PATH", "")
    if env_bin() not in path.split(os.pathsep):
        os.environ["PATH"] = env_bin() + (os.pathsep + path if path else "")


def python_words(site) -> list[str]:
    """The Python a worker runs spibatch with: this one on the host, ``python3`` inside an image."""
    return [sys.executable] if site.container.runtime == "none" else ["python3"]


def stage_command(site, stage: str, run_dir: Path) -> list[str]:
    """The words that run one stage of a run folder as a process of its own (every rank of an MPI job runs
    them): ``python -m spibatch.stages STAGE RUN_DIR`` (:mod:`spibatch.stages.__main__`)."""
    return python_words(site) + ["-m", "spibatch.stages", stage, str(Path(run_dir))]


def emc_command(site, run_dir: Path) -> list[str]:
    """The HPC-mode EMC job's words for each rank: ``python -m spibatch.stages emc RUN_DIR``."""
    return stage_command(site, "emc", run_dir)


def worker_init(site, extra: str = "") -> str:
    """Shell lines run before the workers start: bin/ on PATH, spibatch's import path, the user's lines."""
    lines = []
    if site.container.runtime == "none":
        lines.append(f"export PATH={shlex.quote(env_bin())}:$PATH")
        if os.environ.get("PYTHONPATH"):
            lines.append(f"export PYTHONPATH={shlex.quote(os.environ['PYTHONPATH'])}")
    if extra.strip():
        lines.append(extra.strip())
    return "\n".join(lines)


def bare_pool_env() -> dict[str, str]:
    """The variables :func:`worker_init`'s lines export for a pool bare on this machine (a forked pool gets them
    whole: :mod:`spibatch.parsl_lean.pool_fork`)."""
    env = {"PATH": os.pathsep.join([env_bin(), os.environ.get("PATH", "")])}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def lean_launch_cmd(python: list[str]) -> str:
    """Parsl's worker-pool command template, its ``process_worker_pool.py`` started by ``python`` through
    :mod:`spibatch.parsl_lean` (Parsl's processes without the optional packages they never use)."""
    from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD

    script = "process_worker_pool.py "
    assert DEFAULT_LAUNCH_CMD.startswith(script), DEFAULT_LAUNCH_CMD
    return shlex.join(parsl_lean.command(python, script.strip())) + " " + DEFAULT_LAUNCH_CMD[len(script):]


def launch_cmd(site, run_dir: Path) -> str:
    """HTEX's worker-pool command, run inside the site's container (run directory bound): Parsl's
    template (:func:`lean_launch_cmd`), its ``{placeholders}`` filled in when the interchange runs."""
    return launchers.container(site.container, [run_dir], workdir=run_dir)(lean_launch_cmd(python_words(site)))


def interchange_cmd() -> list[str]:
    """How the driver starts Parsl's interchange: ``interchange.py`` through :mod:`spibatch.parsl_lean`."""
    return parsl_lean.command([sys.executable], "interchange.py")


def accelerators(gpus: int | None) -> list[str]:
    """Parsl's ``available_accelerators`` for ``gpus`` GPUs a node/pod: one GPU per worker (its
    CUDA_VISIBLE_DEVICES), and so at most that many workers; [] (no pinning) without GPUs."""
    return [str(i) for i in range(gpus or 0)]


# How often managers and interchange ping each other, and after how long without an answer a worker
# block counts as lost (s): shorter than Parsl's defaults (30, 120), so a lost block shows in a minute.
HEARTBEAT = {"heartbeat_period": 5, "heartbeat_threshold": 60}


def driver_addresses() -> set[str]:
    """This host's IPv4 addresses a worker pool may reach the interchange at: each interface's, the hostname's
    and the default route's -- what Parsl's ``get_all_addresses`` offers the pools when an executor is given no
    address, less its ``address_by_query``, which asks a web service (api.ipify.org) for this host's public
    address: a login node whose outbound HTTPS is silently dropped waits for it up to 30 s per executor, a
    facility may not want its login nodes calling out, and a public address behind NAT is not one a node reaches."""
    import psutil
    from parsl import addresses

    found = set()
    for name in psutil.net_if_addrs():
        try:
            found.add(addresses.address_by_interface(name))
        except Exception:   # no IPv4 address on it (as Parsl: skipped)
            pass
    for finder in (addresses.address_by_hostname, addresses.address_by_route):
        try:
            found.add(finder())
        except Exception:   # the hostname does not resolve, no default route (as Parsl: skipped)
            pass
    return found


def any_address(executor):
    """``executor`` (an HTEX built with a stand-in address: Parsl then looks for none) made as Parsl's "no
    address" one: its interchange listens on every interface and offers the pools :func:`driver_addresses`."""
    executor.address = None
    executor.all_addresses = driver_addresses()
    return executor


def htex(site, provider, run_dir: Path, *, label: str = TASKS_LABEL, cores_per_worker: float = 1.0,
         address: str | None = None, gpus: int | None = None, workers: int | None = None,
         launch: str | None = None, worker_port: int | None = None):
    """The HighThroughputExecutor running stages and tasks: ``workers`` (default ``site.workers``) workers
    per block (with ``gpus`` a node: one GPU each, see :func:`accelerators`); ``launch``: the worker launch
    command (default: Parsl's behind the site's container prefix); ``worker_port``: the one port the
    interchange takes workers on (default: one Parsl picks in 54000-55000); no ``address``: the interchange
    listens on every interface, the pools try :func:`driver_addresses`.  Encrypted (see above)."""
    from parsl.executors import HighThroughputExecutor

    executor = HighThroughputExecutor(
        label=label, provider=provider, address=address or "127.0.0.1", encrypted=True,
        max_workers_per_node=site.workers if workers is None else workers, available_accelerators=accelerators(gpus),
        cores_per_worker=cores_per_worker, launch_cmd=launch_cmd(site, run_dir) if launch is None else launch,
        interchange_launch_cmd=interchange_cmd(), worker_logdir_root=worker_logdir(run_dir), worker_port=worker_port,
        **HEARTBEAT)
    return executor if address else any_address(executor)


def worker_logdir(run_dir: Path) -> str:
    return str(Path(run_dir) / "runinfo" / "workers")


# How many times a task is sent again after the process or the worker block it ran in was lost.  Every task
# spibatch sends may run more than once: a start, a shard's sums, a stage or an EMC job (which resumes from its
# checkpoint) write their files whole, under names only they write.  A task that failed by itself is not sent
# again.  A lost worker process (the OOM killer, a block cancelled at the moment it got the task) may be the
# task's own doing: sent again once.  A lost worker pool (its node gone or cut off, its batch job requeued or
# killed) is not the task's doing, and one loss can hide another: when a node drops off the network, Slurm
# requeues the block's job, which kills the pool on the other node too, but the interchange hears of that only a
# heartbeat threshold later -- and sends the retry there meanwhile (BENCHMARKS.md, "Nodes and pods on a network").
# As Parsl's costs against its ``retries`` (LOST_BUDGET): a try lost with its pool costs 1, so up to
# LOST_BUDGET of them; with its worker WORKER_LOST_COST, more than half the budget, so never two worker
# losses (and none after two pool losses).  A batch job ended by its walltime or its memory limit loses its pool
# too: such a task is tried up to four times (an EMC job resumes from its checkpoint each time).
LOST_BUDGET = 3
WORKER_LOST_COST = 2.0


def retry_lost(exception: BaseException, task_record: dict) -> float:
    """Parsl's ``retry_handler``: a try lost with its worker pool costs 1 (sent again up to
    :data:`LOST_BUDGET` times), with its worker process :data:`WORKER_LOST_COST` (sent again once); any
    other failure costs more than the budget (not sent again)."""
    from parsl.executors.high_throughput.errors import ManagerLost, WorkerLost

    if not isinstance(exception, (ManagerLost, WorkerLost)):
        return LOST_BUDGET + 1.0
    cost = 1.0 if isinstance(exception, ManagerLost) else WORKER_LOST_COST
    spent = task_record.get("fail_cost", 0) + cost
    if spent <= LOST_BUDGET:
        logging.getLogger("spibatch").warning(
            "task %s (%s) was lost with its %s; sending it again (try %d)", task_record.get("id"),
            task_record.get("func_name"), "worker" if isinstance(exception, WorkerLost) else "worker pool (its node "
            "or batch job gone)", task_record.get("fail_count", 0) + 1)
    return cost


def config(executors: list, run_dir: Path, *, strategy_period: float, max_idletime: float):
    """``parsl.config.Config``: usage tracking off, runinfo inside the run directory, tasks lost with their
    worker or worker pool sent again (:func:`retry_lost`)."""
    from parsl.config import Config

    put_bin_on_path()
    return Config(executors=executors, run_dir=str(run_dir / "runinfo"), usage_tracking=0,
                  strategy_period=strategy_period, max_idletime=max_idletime, initialize_logging=True,
                  retries=LOST_BUDGET, retry_handler=retry_lost)


def cert_dir(run_dir: Path, label: str) -> str:
    """Where Parsl writes an encrypted executor's keys in a run (``<NNN>``: the run's number in runinfo/)."""
    return f"{Path(run_dir) / 'runinfo'}/<NNN>/{label}/certificates"


def format_launch(executor, workers: int, run_dir: Path) -> str:
    """The executor's launch command with placeholders where the real one has ports and addresses."""
    values = dict(PLACEHOLDERS)
    values["cert_dir"] = cert_dir(run_dir, executor.label) if executor.encrypted else "None"
    values["worker_port"] = executor.worker_port or PLACEHOLDERS["worker_port"]
    values["max_workers_per_node"] = f"--max_workers_per_node={workers}"
    values["cores_per_worker"] = executor.cores_per_worker
    values["logdir"] = executor.worker_logdir_root or "<runinfo>"
    values["enable_mpi_mode"] = "--enable_mpi_mode " if getattr(executor, "enable_mpi_mode", False) else ""
    values["mpi_launcher"] = getattr(executor, "mpi_launcher", "mpiexec")
    values["heartbeat_period"] = executor.heartbeat_period
    values["heartbeat_threshold"] = executor.heartbeat_threshold
    return executor.launch_cmd.format(**values).replace("{block_id}", "0")


def render_submit(provider, command: str, script_dir: Path, job_name: str) -> str:
    """What ``provider.submit(command, 1, job_name)`` writes as its batch script, without submitting.

    The provider's own ``submit`` runs with its ``execute_wait`` replaced by a stand-in
    that answers like the scheduler and its ``script_dir`` in a temporary folder, so the
    text is Parsl's; the temporary folder is shown as ``script_dir`` (where Parsl puts its
    submit scripts in a real run) and the time stamp in the job name as ``<time>``.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="spibatch-dry-run-") as scratch:
        provider.script_dir = scratch
        provider.execute_wait = lambda cmd, timeout=None: (0, "Submitted batch job 0\n", "")
        provider.submit(command, 1, job_name)
        written = [p for p in Path(scratch).glob(f"{job_name}.*") if not p.name.endswith((".stdout", ".stderr"))]
        stamp = written[0].name[len(job_name) + 1:]
        text = written[0].read_text(encoding="utf-8")
    return text.replace(stamp, "<time>").replace(scratch, str(script_dir))
