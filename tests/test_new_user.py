"""What a new user following the README met (a walkthrough from a clean venv, 2026-12-07): the README's own files
and lines must work as written, and the closing lines must not name a command the install cannot run."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readmes_live_yaml_is_a_whole_pipeline_file(tmp_path, monkeypatch):
    """The near-real-time section showed only a `source:` block and ran `spibatch run live.yaml`: no live.yaml
    could be made from it without guessing the rest."""
    from spibatch.config import load_pipeline
    from spibatch.detector import Detector
    from spibatch.io.dragonfly import write_detector

    text = README.read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(name: live\n.*?)```", text, re.S)
    assert block, "the README's live.yaml block is gone"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cxi").mkdir()
    (tmp_path / "replay").mkdir()
    write_detector(tmp_path / "replay" / "detector.h5", Detector.flat(16, 1e-3, 0.1, 1e-9))
    (tmp_path / "live.yaml").write_text(block.group(1))
    pipeline = load_pipeline(tmp_path / "live.yaml")
    assert pipeline.name == "live" and pipeline.source.kind == "cxi-folder" and pipeline.emc.num_div == 4
    recipe = text[block.end():text.index("spibatch resume runs/live", block.end())]
    assert "spibatch run live.yaml --out runs/live &" in recipe and "spibatch stop runs/live" in recipe


@pytest.mark.parametrize("installed", [True, False])
def test_the_closing_line_names_the_monitor_only_where_it_can_run(tmp_path, monkeypatch, installed):
    """`spibatch demo` ended with 'watch it live: spibatch monitor RUN', which then failed after the README's
    install (`pip install .`: no starlette)."""
    from spibatch.stages.summary import next_lines

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        (real(name, *a) if installed else None) if name == "starlette" else real(name, *a)))
    line = next_lines(tmp_path)[-1]
    assert line.startswith("browse it (live while a run runs): ")
    assert ("pip install 'spibatch[monitor]'" in line) != installed and line.endswith(f"spibatch monitor {tmp_path}")


def test_a_curve_that_never_falls_below_its_level_reads_the_same_everywhere(tmp_path):
    """The closing line said '0.143 at beyond the data edge (27.6 A)', the monitor 'never below (beyond
    Nyquist)', the report 'never below': one wording now, with the edge it is finer than."""
    import json

    from spibatch.layout import RunLayout
    from spibatch.stages.summary import result_lines

    run = RunLayout(tmp_path)
    run.fsc_vs_truth.parent.mkdir(parents=True)
    run.fsc_vs_truth.write_text(json.dumps({"voxel_size_m": 1.4e-9, "data_edge_resolution_m": 2.76e-9, "cc": 0.84,
                                            "resolution_0.5_m": 2.84e-9, "resolution_0.143_m": None}))
    assert result_lines(tmp_path) == ["FSC of the density with the true density: 0.5 at 28.4 A, 0.143 never below it "
                                      "(finer than the data edge, 27.6 A) (cc 0.840)"]
    app = (Path(__file__).resolve().parents[1] / "spibatch/monitor/static/app.js").read_text(encoding="utf-8")
    assert "never below it (finer than" in app and "beyond Nyquist" not in app


def test_a_never_below_line_without_the_data_edge_names_the_last_shell(tmp_path):
    """An fsc_vs_truth.json with no data edge printed '(finer than the data edge)' with no value: the last shell
    compared (1 / 4e8 per m = 25 A) is named instead."""
    import json

    from spibatch.layout import RunLayout
    from spibatch.stages.summary import result_lines

    run = RunLayout(tmp_path)
    run.fsc_vs_truth.parent.mkdir(parents=True)
    run.fsc_vs_truth.write_text(json.dumps({"voxel_size_m": 1.25e-9, "cc": 0.9, "resolution_0.5_m": 3e-9,
                                            "resolution_0.143_m": None, "frequency": [0.0, 2e8, 4e8]}))
    assert result_lines(tmp_path)[-1].endswith("0.143 never below it (finer than the last shell compared, 25.0 A) "
                                               "(cc 0.900)")
