"""Why Parsl gave up on an executor, in one line a user can act on.

When the blocks of an executor fail before any of their worker pools registered (a pool that cannot reach the
interchange exits after probing its addresses; a batch job or pod that dies at its start), Parsl marks the
executor bad and fails every task with ``BadStateException: Executor tasks failed due to: Error 1:`` -- whose
first line, all a stage's failure line shows, says nothing.  :func:`explain` reads that executor's pools' own
logs (written to the run folder, on the shared filesystem; only those new or changed since the stage began --
:func:`snapshot` --: a resumed run keeps an earlier attempt's) for the addresses they tried in vain, and says
which site key sets the address, or else gives Parsl's whole message on one line.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

# Parsl's pool, when no address it was given answers (the traceback's last line; not its source line, which the
# traceback shows too)
PROBE_FAILED = re.compile(r"ConnectionError: No viable ZMQ url from: (tcp://[^\s,]+(?:, tcp://[^\s,]+)*)")
MAX_LOGS = 64               # pool logs read at most, the newest first (one per block and node)
TAIL_BYTES = 8192           # of each, the end: where the probe's failure is
MAX_SHOWN = 6               # addresses named in the line
MAX_SAID = 500              # characters of Parsl's own message (it may hold blocks' stdout and stderr)
# Parsl's words for a block its provider could not submit, with the submit command's exit code and standard error:
# refused when the command failed and said why (sbatch/salloc exits 0 where Parsl could not read an id it printed)
REFUSED = re.compile(r"Failed to start block \d+: Cannot launch job [^:\s]+: .*?; recode=(-?\d+|None), stdout=.*?, "
                     r"stderr=(.+?)\s*(?=Error \d+:|$)", re.S)
# the Kubernetes API server's refusal (a quota, an admission policy): the client's ApiException, its JSON body
API_REFUSED = re.compile(r"Failed to start block \d+: .*?HTTP response body: (\{.*?\})\s*(?=Error \d+:|$)", re.S)
FAILURE_NAMES = ("BadStateException", "TooManyJobFailuresError")   # a task of a bad executor; one sent after


def _pool_logs(run_dir: Path, label: str | None = None):
    """(path, lstat) of each pool log of the run folder (of executor ``label``, all when None)."""
    for log in Path(run_dir, "runinfo", "workers").glob(f"{label or '*'}/block-*/*/manager.log"):
        try:
            yield log, log.lstat()
        except OSError:
            continue


def _state(info: os.stat_result) -> tuple[int, int, int]:
    return info.st_ino, info.st_mtime_ns, info.st_size


def snapshot(run_dir: Path) -> dict[str, tuple[int, int, int]]:
    """The pool logs of the run folder now: {path: (inode, mtime ns, size)} -- what :func:`explain` leaves out."""
    return {str(log): _state(info) for log, info in _pool_logs(run_dir)}


def explain(exc: BaseException, run_dir: Path, address_key: str = "", site_file: str = "",
            before: dict | None = None, section: str = "", start_only: bool = False) -> str | None:
    """The cause of a stage's failure when ``exc`` is Parsl's BadStateException (or the TooManyJobFailuresError
    it carries), else None.  ``before``: the :func:`snapshot` taken when the stage began (logs unchanged since
    are an earlier attempt's).  ``site_file``: where the user sets ``address_key`` ("" for "the site file");
    ``section``: the site's provider section, whose settings the scheduler judges (a refused block);
    ``start_only``: None unless the workers never started (refused, or their pools could not reach the driver)."""
    if type(exc).__name__ not in FAILURE_NAMES:
        return None
    label = getattr(getattr(exc, "executor", None), "label", None)
    reason = str(getattr(exc, "reason", None) or exc)
    said = _refused(reason)
    if said:
        said = _bounded(said)
        where = f"the {section} section of {site_file or 'the site file'}" if section else (site_file or "the site")
        return f"the scheduler refused to start a worker block: {said} (what it judged: {where})"   # a setting to
        #                                                      correct, or a limit to wait for: the words say which
    tried = unreachable(run_dir, label, before or {})
    if tried:
        shown = ", ".join(tried[:MAX_SHOWN]) + (f" and {len(tried) - MAX_SHOWN} more" if len(tried) > MAX_SHOWN else "")
        if address_key:
            fix = (f"set {address_key} in {site_file or 'the site file'} to an address of this machine that the "
                   "workers can reach")
        else:
            fix = "the workers' hosts must reach this machine at one of them (a firewall or a network between?)"
        return (f"worker pools could not reach Parsl's interchange (they tried {shown}): {fix}; the pools' logs "
                f"are in {Path(run_dir) / 'runinfo' / 'workers'}")
    if start_only:
        return None
    said = " ".join(line.strip() for line in reason.splitlines() if line.strip())
    said = _bounded(re.sub(r"(?<![A-Za-z])Error [0-9]+:\s*", "", said).strip())   # Parsl numbers the failures
    return f"Parsl stopped using its workers{f' ({label})' if label else ''}: {said}"


def _bounded(said: str) -> str:
    return said[:MAX_SAID].rstrip() + " ..." if len(said) > MAX_SAID else said


def _refused(reason: str) -> str:
    """What the scheduler said when it refused a block, on one line; "" when Parsl's ``reason`` holds no refusal."""
    for found in REFUSED.finditer(reason):
        code, said = found.group(1), " ".join(found.group(2).split())
        if code not in ("0", "None") and said and said != "None":
            return said
    api = API_REFUSED.search(reason)
    if api:
        try:
            body = json.loads(api.group(1))
        except (ValueError, RecursionError):
            return ""
        message = body.get("message") if isinstance(body, dict) else None
        if isinstance(message, str) and message.strip():
            return f"the Kubernetes API server said: {' '.join(message.split())}"
    return ""


def unreachable(run_dir: Path, label: str | None = None, before: dict | None = None) -> list[str]:
    """The interchange addresses (``tcp://host:port``) that worker pools of this run (of executor ``label``, all
    when None) tried in vain, from the ends of their logs that are not in ``before`` as they were
    (``runinfo/workers/<executor>/block-<n>/<manager>/manager.log``), sorted."""
    before = before or {}
    logs = [(info.st_mtime, log) for log, info in _pool_logs(run_dir, label)       # new or changed; not a link,
            if stat.S_ISREG(info.st_mode) and before.get(str(log)) != _state(info)]  # a FIFO, a device
    tried: set[str] = set()
    for _, log in sorted(logs, reverse=True)[:MAX_LOGS]:
        try:
            fd = os.open(log, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            size = os.fstat(fd).st_size
            tail = os.pread(fd, TAIL_BYTES, max(0, size - TAIL_BYTES)).decode("utf-8", "replace")
        except OSError:
            continue
        finally:
            os.close(fd)
        for found in PROBE_FAILED.finditer(tail):
            tried.update(url.strip() for url in found.group(1).split(","))
    return sorted(tried)
