"""What a caller of :func:`spibatch.emc.driver.run_emc` may install to hear of each iteration.

``run_emc(..., on_iteration=[...])`` calls each hook with the iteration's record (the dict
written to ``metrics.jsonl``) once the iteration's files, checkpoint included, are on disk -- or, for a
hook whose ``needs_files`` attribute is False, while they are being written.

* :class:`ProgressDisplay`: each iteration's ``EMC.log`` row as a log line, above a progress bar
  on a terminal (a context manager: the bar closes with it);
* :func:`hold_after`: the test aid behind ``SPIBATCH_EMC_HOLD_AFTER=N`` -- sleep after
  iteration N's checkpoint, so that a test can kill the run at a known point (``N:S``: S seconds, so that a
  test can watch a run part-way);
* :func:`standard`: both, as the commands install them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Callable, Iterator

from spibatch.emc.records import log_row
from spibatch.progress import progress

HOLD_ENV = "SPIBATCH_EMC_HOLD_AFTER"
Hook = Callable[[dict], None]


class ProgressDisplay:
    """Note each record's ``EMC.log`` row; with ``bar`` (and a terminal) above a bar up to ``iterations``."""

    needs_files = False   # it reads the record only: the run need not wait for the iteration's files

    def __init__(self, iterations: int, bar: bool = True):
        self.iterations, self.bar = iterations, bar
        self._stack = contextlib.ExitStack()
        self._progress = None

    def __enter__(self) -> "ProgressDisplay":
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def __call__(self, record: dict) -> None:
        if self._progress is None:   # the first record says where a resumed run starts
            left = max(self.iterations - record["iteration"] + 1, 0)
            self._progress = self._stack.enter_context(
                progress(left, "EMC iterations", enabled=self.bar and sys.stdout.isatty()))
        self._progress.note(log_row(record))
        self._progress.advance(1)


def hold_after(iteration: int, seconds: float = 3600.0) -> Hook:
    """A hook that sleeps ``seconds`` once iteration ``iteration`` is written (a test aid)."""

    def hold(record: dict) -> None:
        if record["iteration"] == iteration:
            time.sleep(seconds)

    return hold


def hold_hooks(env=None) -> list[Hook]:
    """``[hold_after(N)]`` when ``SPIBATCH_EMC_HOLD_AFTER=N`` is in the environment (``N:S``: for S seconds, then
    on), else none."""
    value = (os.environ if env is None else env).get(HOLD_ENV, "").strip()
    iteration, _, seconds = value.partition(":")
    if not iteration.isdigit() or int(iteration) <= 0:
        return []
    try:
        return [hold_after(int(iteration), float(seconds) if seconds else 3600.0)]
    except ValueError:
        return []


@contextlib.contextmanager
def standard(iterations: int, *, display: bool = True, bar: bool = True) -> Iterator[list[Hook]]:
    """The hooks a command installs: the progress display (``display``: on the process that writes, rank 0)
    and the hold hook of the environment."""
    with ProgressDisplay(iterations, bar) as shown:
        yield ([shown] if display else []) + hold_hooks()
