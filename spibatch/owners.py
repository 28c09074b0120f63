"""The processes a run folder's owner started, wherever they went: found by the token they inherit.

The process that owns a run folder (it holds its lock, :mod:`spibatch.lock`) puts a token into its
environment, ``SPIBATCH_RUN_OWNER=<token>``; every process it starts inherits it, and their children
too: Parsl's interchange and worker pools, ``mpirun`` and the ranks of the MPI EMC job, whatever
process group or session they put themselves in, and after their parent died (re-parented to init).
The lock records the token, so that

* a resume that takes over the lock of a killed owner finds what that owner left running (the
  orphaned MPI job still writing into ``emc/``, Parsl's interchange and workers) and stops it before
  it writes anything itself (:func:`stop`: SIGTERM, then SIGKILL after a grace time);
* an owner that ends -- done, failed or interrupted -- stops whatever it started that still runs
  before it lets go of the lock (:func:`stop_own`), so a run leaves no process behind.

Only this host's processes can be seen (``/proc/<pid>/environ``, Linux); jobs a scheduler runs on
other nodes are cancelled through the scheduler (:mod:`spibatch.pipeline`).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import signal
import time
from pathlib import Path

log = logging.getLogger("spibatch")

OWNER_ENV = "SPIBATCH_RUN_OWNER"
# setproctitle (Parsl names its interchange "parsl: HTEX interchange" with it) overwrites the environment's memory,
# and with it the token in /proc/<pid>/environ, unless this is set: the interchange of a killed driver went unseen
KEEP_ENVIRON = "SPT_NOENV"
# Apptainer (and Singularity) give a container ``NAME`` from the host's ``APPTAINERENV_NAME`` even with --cleanenv:
# the token reaches a containerised MPI job or worker too (docker: `-e SPIBATCH_RUN_OWNER`, backends.containers)
CONTAINER_ENV = ("APPTAINER", "SINGULARITY")
GRACE_S = 10.0        # SIGTERM, then this long for the processes to end, then SIGKILL
KILL_WAIT_S = 10.0    # after SIGKILL, this long for them to disappear
SETTLE_S = 3.0        # an owner that ends waits this long for its children to end by themselves


def new_token() -> str:
    """A token no other owner has: ``<pid>-<16 random hex digits>``."""
    return f"{os.getpid()}-{secrets.token_hex(8)}"


def token_of(token: str, pid) -> bool:
    """Whether ``token`` has the form :func:`new_token` gives the process ``pid`` (``<pid>-<16 hex digits>``): a
    lock whose token names another process's pid was changed by hand, and must not stop that one's processes."""
    if not isinstance(token, str) or not isinstance(pid, int):
        return False
    return re.fullmatch(rf"{pid}-[0-9a-f]{{16}}", token) is not None


def _environments():
    """(pid, environment entries) of this host's processes but this one that can be read (``/proc``)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            yield int(entry), Path("/proc", entry, "environ").read_bytes().split(b"\0")
        except OSError:   # gone meanwhile, or not ours to read
            continue


def tagged(token: str | None) -> list[int]:
    """This host's processes (not this one) whose environment holds ``SPIBATCH_RUN_OWNER=<token>``; zombies
    (ended, not yet reaped) are left out.  [] without a token or without ``/proc``."""
    if not token:
        return []
    wanted = f"{OWNER_ENV}={token}".encode()
    return sorted(pid for pid, environ in _environments() if wanted in environ and alive(pid))


def naming(folder: str | os.PathLike) -> list[int]:
    """This host's processes (not this one) that some run owner started (``SPIBATCH_RUN_OWNER`` in their
    environment, whatever its token) and whose command line names ``folder`` or a path inside it: an MPI job
    (``... spibatch.stages emc FOLDER``), Parsl's pools (``--logdir=FOLDER/runinfo/...``), their scripts.  A
    process the user started (an editor, ``tail -f``) carries no token and is never among them."""
    root, tag = os.fsencode(os.path.realpath(folder)), f"{OWNER_ENV}=".encode()
    found = []
    for pid, environ in _environments():
        if not any(v.startswith(tag) for v in environ):
            continue
        try:
            words = Path("/proc", str(pid), "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(w == root or w.endswith(b"=" + root) or root + b"/" in w for w in words) and alive(pid):
            found.append(pid)
    return sorted(found)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie -- ended, its parent not told yet -- does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path("/proc", str(pid), "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def stop(pids: list[int], grace_s: float = GRACE_S) -> list[int]:
    """SIGTERM ``pids``, SIGKILL those still running ``grace_s`` later; returns those that still run after that
    (not ours to signal, or stuck in the kernel)."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, KILL_WAIT_S)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        pids = _wait_gone(pids, wait)
        if not pids:
            return []
    return pids


def stop_tagged(token: str | None, what: str, grace_s: float = GRACE_S) -> list[int]:
    """Stop every process tagged with ``token``, saying so in one log line (``what``: whose they are);
    returns those that could not be stopped."""
    return stop_said(tagged(token), what, grace_s)


def stop_naming(folder: str | os.PathLike, what: str, grace_s: float = GRACE_S) -> list[int]:
    """Stop every process :func:`naming` finds, saying so in one log line; those that could not be stopped."""
    return stop_said(naming(folder), what, grace_s)


def stop_said(pids: list[int], what: str, grace_s: float = GRACE_S) -> list[int]:
    """:func:`stop` with one log line naming ``pids`` and ``what`` they are (none: nothing said)."""
    if not pids:
        return []
    log.warning("stopping %d process(es) %s (pids %s): SIGTERM, then SIGKILL after %.0f s",
                len(pids), what, " ".join(map(str, pids)), grace_s)
    return stop(pids, grace_s)


def own_token() -> str | None:
    """The token this process gives its children (set while it owns a run folder), or None."""
    return os.environ.get(OWNER_ENV)


class Tagging:
    """While it is entered, this process's children inherit ``SPIBATCH_RUN_OWNER=<token>`` (and
    ``SPT_NOENV=1``, which keeps it readable, and the token for Apptainer containers, :data:`CONTAINER_ENV`); on
    the way out what they left running is stopped
    (:func:`stop_tagged`) and the variables are restored."""

    def __init__(self, token: str):
        self.token = token
        self._before: dict[str, str | None] = {}

    def __enter__(self) -> "Tagging":
        values = {OWNER_ENV: self.token, KEEP_ENVIRON: "1"}
        values.update({f"{runtime}ENV_{OWNER_ENV}": self.token for runtime in CONTAINER_ENV})
        self._before = {name: os.environ.get(name) for name in values}
        os.environ.update(values)
        return self

    def __exit__(self, *exc) -> None:
        try:
            _wait_gone(tagged(self.token), SETTLE_S)   # what was told to stop (Parsl's workers) may still be going
            stop_tagged(self.token, "this run started that still run")
        finally:
            for name, value in self._before.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
