"""The local site's worker pool as a fork of the driver, made before Parsl starts, not a fresh interpreter.

Parsl's ``LocalProvider`` starts a block by running a shell (``bash -c``) that starts ``bash SCRIPT`` in the
background, whose launcher loop starts the worker-pool command: ``python -m spibatch.parsl_lean
process_worker_pool.py ...``, a new Python that imports Parsl again (0.3-0.4 CPU s on the first task result's
path here, and under load the wait for that CPU), although the driver has just imported it.

:class:`ForkedLocalProvider` is that provider with one more way to start a block: :func:`prepare`, called by
:func:`spibatch.parsl_shutdown.load` just before ``parsl.load`` (while the driver runs one thread), forks a waiting
process (a *zygote*, :mod:`spibatch.parsl_lean.zygote`: what it gives up of the driver's, and when it is not made)
for each such provider; :meth:`ForkedLocalProvider.submit` hands it the pool's words, environment and files, and
it runs the pool in itself, as :func:`spibatch.parsl_lean.main` runs it in a fresh Python.  What stays as Parsl's
provider has it: the block's script is written (``runinfo/.../submit_scripts``, what the block runs), its output
goes to ``SCRIPT.out`` / ``.err``, its exit code to ``SCRIPT.ec``, it leads a process group of its own that
:meth:`cancel` signals, and its status comes from the same files.  What differs: the block's processes are forks,
which :mod:`spibatch.owners` cannot find (no owner token in ``/proc/<pid>/environ``, no run folder named), so the
zygote stops the whole group itself -- when the pool ends, when the block is cancelled and when the driver dies --
with SIGTERM, then SIGKILL after :data:`GRACE_S` (see :func:`_run_pool`).

Only where the fork runs what the shell would have run: one node, one pool (Parsl's ``SingleNodeLauncher``, one
task a node), the words ``sys.executable -m spibatch.parsl_lean process_worker_pool.py`` with nothing the shell
would expand, and no shell lines of the user's (``local.worker_init``: a ``module load`` or ``conda activate``
means a shell).  Every other block -- and the second block, since one zygote serves one -- is Parsl's.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import threading
import time

from parsl.jobs.states import JobState, JobStatus
from parsl.launchers import SingleNodeLauncher
from parsl.providers import LocalProvider

from spibatch.parsl_lean.zygote import PR_SET_PDEATHSIG, Zygote, why_not

log = logging.getLogger("spibatch")

SHELL_WORDS = set("$`;&|<>(){}*?[]~!#\\\n")   # a command holding one of these needs the shell to mean it


class ForkedLocalProvider(LocalProvider):
    """Parsl's ``LocalProvider`` whose block may be a fork of the driver (see the module).  ``env``: the variables
    the block's shell lines would export (``PATH``, ``PYTHONPATH``), given whole; None: never fork."""

    def __init__(self, *args, env: dict[str, str] | None = None, **options):
        super().__init__(*args, **options)
        self.fork_env = None if env is None else dict(env)
        self.zygote: Zygote | None = None
        self.forked: set[str] = set()

    def pool_words(self, command: str, tasks_per_node: int) -> list[str] | None:
        """The arguments of ``spibatch.parsl_lean.main`` that ``command`` runs, where a fork can run it (else None)."""
        if self.fork_env is None or self.zygote is None or self.zygote.used or tasks_per_node != 1 \
                or self.nodes_per_block != 1 or type(self.launcher) is not SingleNodeLauncher \
                or SHELL_WORDS & set(command.replace("'", "").replace('"', "")):
            return None
        try:
            words = shlex.split(command)
        except ValueError:
            return None
        head = [sys.executable, "-m", "spibatch.parsl_lean", "process_worker_pool.py"]
        return words[3:] if words[:4] == head else None

    def submit(self, command, tasks_per_node, job_name="parsl.localprovider"):
        words = self.pool_words(command, tasks_per_node)
        if words is None or not self.zygote.alive():
            return super().submit(command, tasks_per_node, job_name)
        job_name = f"{job_name}.{time.time()}"
        script_path = os.path.abspath(f"{self.script_dir}/{job_name}.sh")
        self._write_submit_script(self.worker_init + f"\nexport JOBNAME={job_name}\n"
                                  + self.launcher(command, tasks_per_node, self.nodes_per_block, self.script_dir),
                                  script_path)
        with open(script_path + ".ec", "w") as ec:
            ec.write("-\n")
        env = {**self.fork_env, "JOBNAME": job_name, "CORES": str(os.sysconf("SC_NPROCESSORS_ONLN"))}
        self.zygote.send({"argv": words, "env": env, "script": script_path, "driver": os.getpid()})
        job_id = str(self.zygote.pid)
        self.resources[job_id] = {"job_id": job_id, "status": JobStatus(JobState.RUNNING),
                                  "remote_pid": self.zygote.pid, "script_path": script_path}
        self.forked.add(job_id)
        log.debug("Parsl's worker pool (block %s) is a fork of the driver: pid %s", job_name, job_id)
        return job_id

    def _reap(self) -> dict[str, bool]:
        """Each forked block's pid -> whether it had ended (reaped now or before): this process is its parent, and
        an unreaped one would look alive to Parsl's ``kill(pid, 0)`` for ever."""
        ended = {}
        for job_id in self.forked:
            try:
                ended[job_id] = os.waitpid(int(job_id), os.WNOHANG)[0] != 0
            except ChildProcessError:
                ended[job_id] = True
        return ended

    def status(self, job_ids):
        self._reap()
        return super().status(job_ids)

    def cancel(self, job_ids):
        """A forked block: SIGTERM to its process group (unless it has ended); any other: Parsl's."""
        ended = self._reap()
        theirs = [j for j in job_ids if j not in self.forked]
        for job_id in job_ids:
            if job_id in self.forked:
                self.resources[job_id]["cancelled"] = True
                if not ended[job_id]:
                    try:
                        os.killpg(int(job_id), signal.SIGTERM)
                    except ProcessLookupError:
                        pass
        if theirs:
            super().cancel(theirs)
        return [True for _ in job_ids]

    def release(self) -> None:
        """Let a zygote that never got a block go; reap the forked blocks once they end (their zombies would stay
        in a process that starts Parsl again and again: a test session, `spibatch bench`)."""
        if self.zygote is not None:
            self.zygote.close()
        deadline = time.monotonic() + RELEASE_WAIT_S
        while not all(self._reap().values()) and time.monotonic() < deadline:
            time.sleep(0.02)
        for job_id, ended in self._reap().items():
            if not ended:   # still stopping its processes (up to GRACE_S): reaped by a thread when it ends
                threading.Thread(target=_reap_when_ended, args=(int(job_id),), daemon=True,
                                 name=f"spibatch-reap-{job_id}").start()


def _run_pool(message: dict) -> None:
    """In the zygote: what the block's script does, and what its shell cannot.  Its output goes to ``SCRIPT.out`` /
    ``.err``; it runs the worker pool as a child (a fork), waits for it and writes its exit code to ``SCRIPT.ec``,
    as the script's shell does.  The block's processes are forks: they neither name the run folder nor carry the
    owner's token in ``/proc/<pid>/environ``, so :mod:`spibatch.owners` could not find what they leave.  So the
    zygote is their *subreaper* (a process the pool leaves is its child, not init's), and it stops its whole
    process group -- the pool, its forkserver, resource tracker, manager and workers, their tasks -- when the pool
    ends by itself, when it is cancelled (SIGTERM) and when the driver dies (``PR_SET_PDEATHSIG``):
    :func:`_end_group`."""
    script = message["script"]
    for fd, suffix in ((1, ".out"), (2, ".err")):
        opened = os.open(script + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    signal.signal(signal.SIGTERM, _stopped)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    if _prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0 or os.getppid() != message["driver"]:
        _stopped()
    pool = os.fork()
    if pool == 0:   # pragma: no cover - the pool (measured through what it serves)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)   # as a pool the shell started has it
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)   # (its parent only ends by _stopped, or after it)
        _pool(message)
    while True:   # (the pool's orphans are this process's children now: reaped as they end)
        pid, status = os.waitpid(-1, 0)
        if pid == pool:
            break
    code = os.waitstatus_to_exitcode(status)
    code = code if code >= 0 else 128 - code   # as the shell's $?
    try:
        with open(script + ".ec", "w") as ec:
            ec.write(f"{code}\n")
    except OSError:
        pass
    _end_group()
    os._exit(code)


GRACE_S = 10.0   # after SIGTERM, how long the block's processes have to end before SIGKILL
PR_SET_CHILD_SUBREAPER = 36


def _stopped(*_) -> None:
    """SIGTERM (a cancel, or the driver's death): the block's processes stopped, then this one ends."""
    _end_group()
    os._exit(128 + signal.SIGTERM)


def _end_group() -> None:
    """SIGTERM to this process group but this process; its children (the pool's processes: this is their
    subreaper) reaped as they end, for :data:`GRACE_S` at most; then SIGKILL to the group (this process too)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(0, signal.SIGTERM)
    except OSError:
        pass
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.02)
        except ChildProcessError:   # none left
            return
    os.killpg(0, signal.SIGKILL)


def _prctl(option: int, value: int) -> int:
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def _pool(message: dict) -> None:
    """The worker pool, run as :func:`spibatch.parsl_lean.main` runs it in a fresh Python; ends the process."""
    os.environ.update(message["env"])
    _forget_multiprocessing()
    code = 1
    try:
        from spibatch import parsl_lean

        parsl_lean.main(message["argv"])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int | None):
            print(exc.code, file=sys.stderr)
    except BaseException:   # noqa: BLE001 - said as Python would say it
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _forget_multiprocessing() -> None:
    """The driver's multiprocessing forkserver and resource tracker (if it had them) are not the pool's: their
    descriptors are /dev/null here.  The pool starts its own (:func:`spibatch.parsl_lean.warm_forkserver`)."""
    from multiprocessing import forkserver, resource_tracker

    server = getattr(forkserver, "_forkserver", None)
    if server is not None and getattr(server, "_forkserver_pid", None) is not None:
        server._forkserver_address = server._forkserver_alive_fd = server._forkserver_pid = None
        server._lock = threading.Lock()
    tracker = getattr(resource_tracker, "_resource_tracker", None)
    if tracker is not None and getattr(tracker, "_pid", None) is not None:
        tracker._fd = tracker._pid = None
        tracker._lock = threading.RLock() if isinstance(tracker._lock, type(threading.RLock())) else threading.Lock()


RELEASE_WAIT_S = 2.0   # how long shutdown waits for a cancelled block to end before a thread reaps it


def _reap_when_ended(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:   # reaped meanwhile (the provider's status)
        pass


def prepare(executors) -> int:
    """Give each of ``executors`` whose provider is a :class:`ForkedLocalProvider` that may fork a zygote (see the
    module); how many got one.  Call while this process runs one thread, just before ``parsl.load``."""
    chosen = [e for e in executors if isinstance(getattr(e, "provider", None), ForkedLocalProvider)
              and e.provider.fork_env is not None and e.provider.zygote is None]
    if not chosen:
        return 0
    why = why_not()
    if why is not None:
        log.debug("Parsl's worker pool is started afresh: %s", why)
        return 0
    for each in chosen:
        each.provider.zygote = Zygote(_run_pool, own_group=True)
    return len(chosen)


def release(executors) -> None:
    """Let the zygotes of ``executors`` that never got a block go (after ``parsl.load`` failed, or at shutdown)."""
    for each in executors:
        provider = getattr(each, "provider", None)
        if isinstance(provider, ForkedLocalProvider):
            provider.release()
