"""Atomic writes: nothing truncated under a final name, nothing older lost."""

from __future__ import annotations

import os
import stat

import pytest

from spibatch.io.atomic import atomic_path, write_text


def test_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    final = tmp_path / "result.txt"
    final.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert final.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.txt"]


def test_success_replaces_and_uses_umask_permissions(tmp_path):
    final = write_text(tmp_path / "sub" / "a.txt", "new")
    assert final.read_text() == "new"
    old = os.umask(0)
    os.umask(old)
    assert stat.S_IMODE(final.stat().st_mode) == 0o666 & ~old


def test_a_folder_where_a_file_goes_is_one_line_and_left_alone(tmp_path):
    """`spibatch report` with report.html made a folder, `spibatch stop` with RUN/stop a folder: IsADirectoryError
    tracebacks after the file was written; now one line first, the folder untouched, no temporary file left."""
    from spibatch.errors import InputError

    (tmp_path / "report.html").mkdir()
    (tmp_path / "report.html" / "keep").write_text("x")
    with pytest.raises(InputError, match="report.html: is a folder, where spibatch writes a file"):
        write_text(tmp_path / "report.html", "<html>")
    assert (tmp_path / "report.html" / "keep").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
