"""Starting and stopping Parsl so that ``spibatch run`` / ``resume`` never hang and leave nothing behind.

Parsl's own clean-up (``dfk.cleanup()``) asks the interchange which workers it has and waits for the
answer without a timeout; an interchange that died first -- a Ctrl-C at the terminal reaches the whole
foreground process group, the interchange's included -- leaves it waiting forever (Parsl issue 2755:
the driver printed the interchange's traceback and hung for more than 9 minutes).  So:

* :func:`load` starts Parsl with SIGINT ignored, which the interchange (and the first worker pool)
  inherit: a Ctrl-C reaches our driver alone, which then shuts Parsl down in order; and it has the first
  blocks submitted as soon as the executors are up, not at the strategy's next tick;
* :func:`shutdown` runs ``dfk.cleanup()`` in a thread with a deadline (:data:`SHUTDOWN_S`); past it, or
  when an interchange is dead already, it cancels the executors' blocks through their providers
  (local worker pools: their process group; Slurm: ``scancel``) and kills the interchanges itself.
  What still runs after that is stopped by the run's owner on its way out (:mod:`spibatch.owners`);
* :func:`cancel_left_jobs`: a resume after the driver was killed (SIGKILL: no clean-up at all) cancels
  the batch jobs it had submitted (Slurm: the jobs whose script lies in the run's ``runinfo/``).
"""

from __future__ import annotations

import getpass
import logging
import shutil
import signal
import subprocess
import sys
import threading
import time

from spibatch.parsl_lean import command, interchange_fork
from spibatch.parsl_wait import interchange_dead, silent

log = logging.getLogger("spibatch")

SHUTDOWN_S = 30.0   # the most dfk.cleanup() may take before we stop Parsl's processes ourselves
CANCEL_S = 30.0     # the most one provider's cancel may take
INTERCHANGE_S = 2.0  # after a signal, how long to look whether it killed an interchange too
FIRST_TICK_S = 0.05  # Parsl's strategy period while it starts (s): the first blocks are submitted this soon
FIRST_BLOCKS_S = 10.0  # the most load() waits for them (LocalProvider: bash; Slurm: sbatch) before going on


def load(config):
    """``parsl.load(config)``, the processes it starts ignoring SIGINT (see the module docstring), the interchanges
    and the local worker pool forks of this process (:mod:`spibatch.parsl_lean.interchange_fork`,
    :mod:`spibatch.parsl_lean.pool_fork`), the first blocks submitted as soon as the executors are up
    (:func:`_first_blocks_now`)."""
    import parsl

    period = config.strategy_period
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    if main:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        config.strategy_period = min(period, FIRST_TICK_S)
        from spibatch.parsl_lean import pool_fork   # (imports Parsl: not before it is imported the lean way)

        forked = interchange_fork.prepare(config.executors, command([sys.executable], "interchange.py"))
        pool_fork.prepare(config.executors)
        try:
            dfk = parsl.load(config)
        except BaseException:
            pool_fork.release(config.executors)
            if forked:
                interchange_fork.release(config.executors)
            raise
    finally:
        config.strategy_period = period
        if main:
            signal.signal(signal.SIGINT, previous)
    _first_blocks_now(dfk, period)
    return dfk


def _first_blocks_now(dfk, period: float) -> None:
    """Parsl's strategy timer starts with the DataFlowKernel, before the executors (whose start takes a second or
    more: the interchange's process), and submits the first blocks at its first tick after they are up: up to a
    whole ``strategy_period`` later (the Slurm site's default: 5 s).  :func:`load` starts it with a tick of
    :data:`FIRST_TICK_S`; here, once every executor that starts blocks has submitted them (at most
    :data:`FIRST_BLOCKS_S`), the timer goes back to the site's ``period`` (it reads its ``interval`` before each
    wait).  A block whose submission failed counts as submitted: Parsl's error handler takes it from there."""
    poller = getattr(dfk, "job_status_poller", None)
    if poller is None or not hasattr(poller, "interval"):
        return
    starting = [e for e in getattr(poller, "_executors", [])
                if getattr(getattr(e, "provider", None), "init_blocks", 0) > 0]
    _wait(lambda: all(e.status_facade for e in starting), FIRST_BLOCKS_S, step=FIRST_TICK_S)   # submitted or failed
    poller.interval = period


def _wait(condition, seconds: float, step: float = 0.1) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(step)


def _within(fn, seconds: float) -> bool:
    """Run ``fn()`` in a daemon thread; whether it finished within ``seconds``.  Its errors are logged."""
    def run() -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - a shutdown step that fails is logged, the next one runs
            log.debug("Parsl shutdown: %s: %s", exc.__class__.__name__, exc)

    thread = threading.Thread(target=run, name="spibatch-parsl-shutdown", daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive()


def shutdown(dfk, deadline_s: float = SHUTDOWN_S) -> None:
    """Shut Parsl down within about ``deadline_s`` seconds, whatever state it is in; never raises."""
    import parsl

    if dfk is None:   # interrupted while Parsl started: the owner stops what it started (spibatch.owners)
        parsl.clear()
        return
    executors = [e for e in dfk.executors.values() if not e.label.startswith("_parsl")]

    def dead() -> list[str]:   # an interchange that died (or is stopped) leaves dfk.cleanup() waiting forever
        return [e.label for e in executors if interchange_dead(e) or silent(e)]

    if isinstance(sys.exc_info()[1], KeyboardInterrupt):   # a signal to the whole process group reached the
        _wait(dead, INTERCHANGE_S)                          # interchange too: give it a moment to show it
    if not dead() and _within(dfk.cleanup, deadline_s):
        _release_zygotes(executors)
        return
    gone = dead()
    why = f"its interchange ({', '.join(gone)}) died or stopped answering" if gone else f"it did not shut down within {deadline_s:.0f} s"
    log.warning("Parsl: %s; cancelling its workers and jobs", why)
    for executor in executors:
        provider = getattr(executor, "provider", None)
        jobs = list(getattr(provider, "resources", {}) or {})
        if jobs:
            _within(lambda p=provider, j=jobs: p.cancel(j), CANCEL_S)
        proc = getattr(executor, "interchange_proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
    _release_zygotes(executors)
    parsl.clear()


def _release_zygotes(executors) -> None:
    """The local worker pools' zygotes that never got a block end (:mod:`spibatch.parsl_lean.pool_fork`)."""
    from spibatch.parsl_lean import pool_fork

    pool_fork.release(executors)


def cancel_left_jobs(run, site) -> None:
    """Cancel the batch jobs a killed driver of ``run`` left in the scheduler's queue (Slurm: the jobs whose
    script lies in the run's ``runinfo/``: Parsl's worker blocks and the EMC job's block; allocations of
    ``slurm.start: salloc`` name it in their comment), with one log line."""
    if site.provider != "slurm" or shutil.which("squeue") is None or shutil.which("scancel") is None:
        return
    try:
        listed = subprocess.run(["squeue", "-h", "-u", getpass.getuser(), "-o", "%i %o|%k"], capture_output=True,
                                text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("could not ask Slurm for the jobs the killed driver left (%s); check squeue", exc)
        return
    prefix = str(run.runinfo) + "/"
    jobs = [job for job, _, said in (line.strip().partition(" ") for line in listed.splitlines())
            if any(part.startswith(prefix) for part in said.rsplit("|", 1))]   # the script (batch), or the comment
                                                                               # (slurm.start: salloc)
    if jobs:
        log.warning("cancelling %d Slurm job(s) the killed driver left: %s", len(jobs), " ".join(jobs))
        subprocess.run(["scancel", *jobs], capture_output=True, timeout=60)
