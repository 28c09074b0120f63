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
