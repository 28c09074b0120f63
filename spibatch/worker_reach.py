"""Why Parsl gave up on an executor, in one line a user can act on.

When the blocks of an executor fail before any of their worker pools registered (a pool that cannot reach the
interchange exits after probing its addresses; a batch job or pod that dies at its start), Parsl marks the
executor bad and fails every task with ``BadStateException: Executor tasks failed due to: Error 1:`` -- whose
first line, all a stage's failure line shows, says nothing.  :func:`explain` reads the pools' own logs (written
to the run folder, on the shared filesystem) for the addresses they tried in vain, and says which site key sets
the address, or else gives Parsl's whole message on one line.
"""

from __future__ import annotations

import re
from pathlib import Path

# Parsl's pool, when no address it was given answers (the traceback's last line; not its source line, which the
# traceback shows too)
PROBE_FAILED = re.compile(r"ConnectionError: No viable ZMQ url from: (tcp://[^\s,]+(?:, tcp://[^\s,]+)*)")
MAX_LOGS = 64               # pool logs read at most (one per block and node)
TAIL_BYTES = 8192           # of each, the end: where the probe's failure is


def explain(exc: BaseException, run_dir: Path, address_key: str = "", site_source: str | None = None) -> str | None:
    """The cause of a stage's failure when ``exc`` is Parsl's BadStateException, else None."""
    if type(exc).__name__ != "BadStateException":
        return None
    tried = unreachable(run_dir)
    if tried:
        if address_key:
            fix = (f"set {address_key} in {site_source or 'the site file'} to an address of this machine that "
                   "the workers can reach")
        else:
            fix = "the workers' hosts must reach this machine at one of them (a firewall or a network between?)"
        return (f"no worker pool could reach Parsl's interchange (they tried {', '.join(sorted(tried))}): {fix}; "
                f"the pools' logs are in {Path(run_dir) / 'runinfo' / 'workers'}")
    said = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"Parsl stopped using its workers: {re.sub(r'Error [0-9]+:[ ]*', '', said).strip()}"


def unreachable(run_dir: Path) -> set[str]:
    """The interchange addresses (``tcp://host:port``) that worker pools of this run tried in vain, from the ends
    of their logs (``runinfo/workers/<executor>/block-<n>/<manager>/manager.log``)."""
    tried: set[str] = set()
    logs = sorted(Path(run_dir, "runinfo", "workers").glob("*/block-*/*/manager.log"))[:MAX_LOGS]
    for log in logs:
        try:
            with open(log, "rb") as f:
                f.seek(max(0, f.seek(0, 2) - TAIL_BYTES))
                tail = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        for found in PROBE_FAILED.finditer(tail):
            tried.update(url.strip() for url in found.group(1).split(","))
    return tried
