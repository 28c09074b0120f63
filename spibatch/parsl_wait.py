"""Waiting for tasks' results without hanging on a platform that can no longer deliver them.

Parsl does not notice that its HTEX interchange died (killed, out of memory): the workers finish their tasks
and nobody hears, and the driver waited on ``future.result()`` for ever with nothing in its log (an audit:
more than 10 minutes, in HTC and HPC mode alike).  :func:`results` waits in steps of :data:`POLL_S` seconds,
and between them stops with one line when an interchange of the running Parsl has died, and says once when
no task has ended for :data:`STALL_S` seconds (a stalled worker pool that Parsl does not replace).  Futures
that are not Parsl's (the in-process executors) are waited for the same way; the checks then find nothing.
"""

from __future__ import annotations

import concurrent.futures
import logging
import sys
import time

log = logging.getLogger("spibatch")

POLL_S = 5.0
STALL_S = 1800.0


class PlatformLost(RuntimeError):
    """The platform can no longer deliver the results waited for (a stage's failure: the run says how to go on)."""


def results(futures, what: str = "tasks", *, poll_s: float | None = None, stall_s: float | None = None) -> list:
    """``[f.result() for f in futures]``, in order; PlatformLost when an interchange of the running Parsl died
    while any was pending."""
    futures = list(futures)
    poll_s = POLL_S if poll_s is None else poll_s
    stall_s = STALL_S if stall_s is None else stall_s
    pending, last, warned = set(futures), time.monotonic(), False
    while pending:
        done, pending = concurrent.futures.wait(pending, timeout=poll_s,
                                                return_when=concurrent.futures.FIRST_COMPLETED)
        if done:
            last, warned = time.monotonic(), False
            continue
        dead = dead_interchanges()
        if dead:
            raise PlatformLost(f"Parsl's interchange ({', '.join(dead)}) died while {len(pending)} of "
                               f"{len(futures)} {what} were running: their results cannot arrive")
        if not warned and time.monotonic() - last > stall_s:
            log.warning("no %s has ended for %.0f s (%d of %d running): if the workers are gone or stopped, "
                        "Ctrl-C and `spibatch resume` (the finished iterations are kept)", what.rstrip("s"),
                        time.monotonic() - last, len(pending), len(futures))
            warned = True
    return [f.result() for f in futures]


def dead_interchanges() -> list[str]:
    """The labels of the running Parsl's executors whose interchange process has ended ([] without Parsl)."""
    if "parsl" not in sys.modules:
        return []
    import parsl

    from spibatch.parsl_shutdown import interchange_dead

    try:
        dfk = parsl.dfk()
    except Exception:  # noqa: BLE001 - NoDataFlowKernelError: no Parsl running
        return []
    return [label for label, executor in dfk.executors.items()
            if not label.startswith("_parsl") and interchange_dead(executor)]
