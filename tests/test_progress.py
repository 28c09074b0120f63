"""spibatch.progress: a Rich bar with the running stage's name on a terminal, log lines elsewhere (issue 12:
`spibatch run` prints the stage being run with a progress bar on a TTY)."""

from __future__ import annotations

import io
import logging
import sys

from spibatch.progress import pace, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_bar_names_the_stage_and_counts(monkeypatch):
    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setenv("COLUMNS", "100")
    with progress(3, "stages") as bar:
        for k, name in enumerate(["emc", "phase", "validate"]):
            bar.describe(f"stage {name}: running ({k + 1} of 3)")
            bar.advance(1)
            bar.note(f"{name}: done")
    text = screen.getvalue()
    assert "stage validate: running (3 of 3)" in text and "3/3" in text, text
    assert text.index("emc: done") < text.index("phase: done") < text.index("validate: done"), text


def test_off_a_terminal_each_stage_is_a_log_line(monkeypatch, caplog):
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    logger = logging.getLogger("spibatch")
    monkeypatch.setattr(logger, "propagate", True)
    with caplog.at_level(logging.INFO, logger="spibatch"), progress(2, "stages") as bar:
        bar.describe("stage emc: running (1 of 2)")
        bar.advance(1)
        bar.describe("stage phase: running (2 of 2)")
        bar.advance(1)
    lines = [r.getMessage() for r in caplog.records]
    assert "stage emc: running (1 of 2)" in lines and "stage phase: running (2 of 2)" in lines, lines
    assert "stages: 2/2" in " ".join(lines), lines


def test_a_slow_count_says_seconds_each_not_zero_per_second():
    assert pace(2, 90.0) == "45.0 s each on average"   # two stages in 90 s: not "0/s"
    assert pace(3000, 1.5) == "2000/s"
    assert pace(0, 5.0) == "0/s"
