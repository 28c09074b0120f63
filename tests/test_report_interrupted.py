"""A signal while a finished run's report is written: the results are whole, so the command's last line says
how to write the report (``spibatch report RUN``), and a report.html on disk is always a whole report."""

import pytest

from spibatch import rundir
from spibatch.monitor import report


def interrupted(*_args, **_kwargs):
    raise KeyboardInterrupt("SIGTERM")


def test_an_interrupted_report_of_a_completed_run_says_how_to_write_it(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "write_report", interrupted)
    with pytest.raises(KeyboardInterrupt) as caught:
        rundir.write_report_quietly(tmp_path, completed=True)
    assert caught.value.resume_hint.startswith(f"spibatch report {tmp_path}")


def test_a_signal_that_matplotlib_wrapped_is_raised_as_the_signal(tmp_path, monkeypatch):
    def wrapped(*_args):
        try:
            interrupted()
        except KeyboardInterrupt as exc:
            raise RuntimeError("a library's own error") from exc

    monkeypatch.setattr(report, "write_report", wrapped)
    with pytest.raises(KeyboardInterrupt) as caught:
        rundir.write_report_quietly(tmp_path, completed=True)
    assert "spibatch report" in caught.value.resume_hint


def test_an_interrupted_run_keeps_its_own_hint_and_a_failing_report_is_only_logged(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "write_report", interrupted)
    with pytest.raises(KeyboardInterrupt) as caught:
        rundir.write_report_quietly(tmp_path, completed=False)
    assert getattr(caught.value, "resume_hint", None) is None

    def broken(*_args):
        raise ValueError("a plot could not be drawn")

    monkeypatch.setattr(report, "write_report", broken)
    assert rundir.write_report_quietly(tmp_path, completed=True) is None


def test_the_html_is_written_after_its_pngs(tmp_path, monkeypatch):
    import spibatch.monitor.report_png as report_png

    monkeypatch.setattr(report, "collect", lambda run_dir: {})
    monkeypatch.setattr(report_png, "write_pngs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        report.write_report(tmp_path)
    assert not (tmp_path / "report.html").exists()
