"""Progress reporting: a Rich bar on a terminal, plain log lines otherwise.

Long loops take a ``Progress``-like object with ``advance(n)`` and
``note(message)`` (a line for the user: above the bar on a terminal, a log
line otherwise; log.txt gets it either way); callers get one from
:func:`progress` and never need to know where the output goes.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Iterator

log = logging.getLogger("spibatch")


def pace(done: int, seconds: float) -> str:
    """How fast: "120/s" at one item a second or more, else "42.0 s each on average" (a slow count read as "0/s")."""
    if done > 0 and seconds >= done:
        return f"{seconds / done:.1f} s each on average"
    return f"{done / max(seconds, 1e-9):.0f}/s"


class _LogProgress:
    """Plain log lines at most every ``interval_s`` seconds (and at the end)."""

    def __init__(self, total: int, description: str, interval_s: float = 10.0):
        self.total, self.description, self.interval_s = total, description, interval_s
        self.done = 0
        self._start = self._last = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.interval_s or self.done >= self.total:
            self._last = now
            log.info("%s: %d/%d (%s)", self.description, self.done, self.total, pace(self.done, now - self._start))

    def describe(self, text: str) -> None:
        """What is being done now (a log line here; the bar's label on a terminal)."""
        log.info("%s", text)

    def note(self, message: str) -> None:
        log.info("%s", message)


class _RichProgress:
    def __init__(self, bar, task):
        self._bar, self._task = bar, task

    def advance(self, n: int = 1) -> None:
        self._bar.advance(self._task, n)

    def describe(self, text: str) -> None:
        """The bar's label becomes ``text``; the log files get it as a line."""
        self._bar.update(self._task, description=text)
        _to_log_files(text)

    def note(self, message: str) -> None:
        """Print above the bar; only the log files (not the terminal handler) get the log record."""
        self._bar.console.print(message, markup=False, highlight=False)
        _to_log_files(message)


def _to_log_files(message: str) -> None:
    """``message`` as an INFO record to the log files only (the terminal shows it on the bar)."""
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, "%s", (message,), None)
    for handler in log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


class _Silent:
    def advance(self, n: int = 1) -> None:
        pass

    def describe(self, text: str) -> None:
        log.info("%s", text)

    def note(self, message: str) -> None:
        log.info("%s", message)


@contextlib.contextmanager
def progress(total: int, description: str, *, enabled: bool = True) -> Iterator[object]:
    """Yield an object with ``advance(n)``, ``note(message)`` and ``describe(text)`` (what runs now): a Rich
    bar when stdout is a terminal, log lines otherwise."""
    if not enabled:
        yield _Silent()
        return
    if sys.stdout.isatty():
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TimeRemainingColumn(), transient=False) as bar:
            yield _RichProgress(bar, bar.add_task(description, total=total))
        return
    tracker = _LogProgress(total, description)
    yield tracker
