"""The `spibatch` command as a user runs it: a real process, its output and exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import spibatch


def spibatch_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spibatch", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_version():
    done = spibatch_cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"spibatch {spibatch.__version__}"


def test_import_stays_light():
    code = ("import sys, spibatch, spibatch.cli; "
            "print(sorted(m for m in ('parsl', 'h5py', 'cupy', 'scipy', 'matplotlib', 'gemmi') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_init_writes_valid_pipeline_and_refuses_to_overwrite(tmp_path):
    done = spibatch_cli("init", str(tmp_path / "proj"))
    assert done.returncode == 0, done.stderr
    pipeline = tmp_path / "proj" / "pipeline.yaml"
    assert pipeline.read_text().startswith("# spibatch pipeline file")
    assert (tmp_path / "proj" / "1EI7.pdb").stat().st_size > 100_000
    before = pipeline.read_text()
    pipeline.write_text(before + "# my edit\n")
    again = spibatch_cli("init", str(tmp_path / "proj"))
    assert again.returncode == 2
    assert "already exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert pipeline.read_text().endswith("# my edit\n")


def test_init_says_when_it_keeps_a_structure_file_that_is_not_the_example(tmp_path):
    """A 1EI7.pdb already in the folder is kept (never overwritten), and said when it is not the example's: the new
    pipeline.yaml names it as the structure to simulate."""
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "1EI7.pdb").write_text("mine\n")
    done = spibatch_cli("init", str(tmp_path / "proj"))
    assert done.returncode == 0, done.stderr
    assert f"kept {tmp_path / 'proj' / '1EI7.pdb'}, which was there and is not the example's 1EI7" in done.stdout
    assert (tmp_path / "proj" / "1EI7.pdb").read_text() == "mine\n"
    assert "kept" not in spibatch_cli("init", str(tmp_path / "fresh")).stdout


@pytest.mark.parametrize("kind", ["slurm", "kubernetes", "local"])
def test_init_site_writes_a_site_file_the_installed_package_ships(tmp_path, kind):
    """`spibatch init DIR --site KIND`: the commented example site file, from the package itself (so a wheel
    carries it), valid as it stands, next to the pipeline; a second init with a site refuses to overwrite."""
    from spibatch.backends import load_site

    done = spibatch_cli("init", str(tmp_path / "proj"), "--site", kind)
    assert done.returncode == 0, done.stderr
    site = load_site(tmp_path / "proj" / "site.yaml")
    assert site.provider == kind and (tmp_path / "proj" / "pipeline.yaml").is_file()
    assert f"--site {tmp_path / 'proj' / 'site.yaml'}" in done.stdout
    again = spibatch_cli("init", str(tmp_path / "proj"), "--site", kind)
    assert again.returncode == 2 and "site.yaml: already exists" in again.stderr
    bad = spibatch_cli("init", str(tmp_path / "other"), "--site", "lsf")
    assert bad.returncode == 2 and "--site" in bad.stderr and not (tmp_path / "other").exists()


def test_schema_is_json():
    done = spibatch_cli("schema")
    assert done.returncode == 0
    assert "geometry" in json.loads(done.stdout)["properties"]


def test_bad_config_one_line_exit_2_no_run_dir(tmp_path):
    bad = tmp_path / "pipeline.yaml"
    bad.write_text("name: t\nsimulation:\n  pdb: x.pdb\n  seeed: 3\noutput:\n  runs_dir: runs\n")
    done = spibatch_cli("simulate", str(bad), cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "line 4: simulation.seeed: unknown key" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_unreadable_pdb_stops_before_any_output(tmp_path):
    (tmp_path / "broken.pdb").write_text("this is not a structure\n")
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text("name: t\ngeometry: {wavelength_m: 2.0e-10}\nsimulation: {pdb: broken.pdb}\n")
    done = spibatch_cli("simulate", str(cfg), cwd=tmp_path)
    assert done.returncode == 2
    assert "broken.pdb" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_out_holding_a_run_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "provenance.json").write_text('{"status": "completed"}')
    done = spibatch_cli("simulate", str(Path(spibatch.__file__).parent / "data" / "demo.yaml"), "--out", str(out))
    assert done.returncode == 2 and "already holds a run" in done.stderr
    assert (out / "provenance.json").read_text() == '{"status": "completed"}'
    assert sorted(p.name for p in out.iterdir()) == ["provenance.json"]


@pytest.mark.parametrize("args", [["validate", "missing_a.h5", "missing_b.h5"], ["ingest", "missing.cxi"]])
def test_missing_inputs(tmp_path, args):
    done = spibatch_cli(*args, cwd=tmp_path)
    assert done.returncode == 2 and "missing" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_demo_writes_a_complete_run(tmp_path):
    from spibatch.detector import Detector
    from spibatch.io.dragonfly import check_match, photons_info
    from spibatch.io.results import read_result
    from spibatch.layout import RunLayout

    done = spibatch_cli("demo", "--iterations", "2", "--starts", "2", cwd=tmp_path)   # demo.yaml: 20 and 8
    assert done.returncode == 0, done.stderr
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("demo-")
    run = RunLayout(runs[0])
    data = run.stage_dir("simulate")
    for path in (data / "detector.h5", data / "photons.emc", run.truth, data / "density.mrc", run.config,
                 run.provenance, run.log, run.report):
        assert path.is_file(), path
        assert str(path) in done.stdout  # it says where everything went
    frames, pixels = photons_info(data / "photons.emc")
    detector = Detector.read(data / "detector.h5")
    check_match(detector, pixels, data / "detector.h5", data / "photons.emc")
    assert (frames, pixels) == (1000, 64 * 64)
    datasets, attrs = read_result(run.truth)
    assert datasets["quaternions"].shape == (1000, 4)
    assert datasets["intensity"].shape[0] == detector.model_size()
    assert json.loads(run.provenance.read_text())["status"] == "completed"
    assert "completed" in run.report.read_text()        # the report is written after the final status
    assert not list(run.path.rglob("*.part")) and not list(run.path.glob(".*")) and not run.lock.exists()
    # then EMC on those patterns, in emc/, and the correlation with the truth, printed and written
    for name in ("output_001.h5", "output_002.h5", "EMC.log", "metrics.jsonl", "checkpoint.h5"):
        assert (run.emc / name).is_file(), name
    assert not run.emc_output(3).exists() and not list(run.emc.glob(".*"))
    comparison = json.loads(run.emc_vs_truth.read_text())
    assert 0.0 < comparison["cc"] <= 1.0 and comparison["iterations"] == 2
    assert (comparison["r_min"], comparison["r_max"]) == (4.0, 31.0)     # beam stop 3 px, edge 32 px
    assert f"cc = {comparison['cc']:.4f}" in done.stdout and str(run.emc_log) in done.stdout
    # then phasing of the EMC intensity, in phase/, and the FSC with the true density in validate/
    for path in (run.phasing, run.phased_density_mrc, run.phasing_png, run.phasing_metrics, run.fsc_vs_truth,
                 run.validate / "fsc_vs_truth.png"):
        assert path.is_file(), path
    phased = json.loads(run.fsc_vs_truth.read_text())
    assert phased["starts"] == 2 and phased["fsc"][0] == pytest.approx(1.0, abs=0.05)
    assert "phasing: 2 of 2 starts kept" in done.stdout and "FSC of the density with the true density" in done.stdout
    assert f"spibatch monitor {run.path}" in done.stdout and f"report: {run.report}" in done.stdout


@pytest.mark.parametrize("second, words", [
    (("intensity", (5, 5, 5), 1.0), "shares fewer than 3 measured shells with b.h5 (edges 41 and 5)"),
    (("intensity", (41, 41, 30), 1.0), "the intensity is not a cube (shape (41, 41, 30))"),
    (("intensity", (41, 41, 41), 0.0), "the intensity has no positive voxel"),
    (("density", (12, 12, 12), 0.0), "the density is zero everywhere"),     # read as a truth is read
    (("density", (12, 12, 7), 1.0), "expected a cubic 3-D density (L, L, L), found shape (12, 12, 7)"),
    (("intensity", (41, 41, 41), -1e308), "SECOND: the intensity is constant: no structure to compare"),
])
def test_volumes_validate_cannot_compare_are_one_line_before_any_run_folder(tmp_path, second, words):
    import h5py
    import numpy as np

    name, shape, value = second
    first = tmp_path / "a.h5"
    with h5py.File(first, "w") as f:
        f[name] = np.random.default_rng(0).random((41,) * 3 if name == "intensity" else (12,) * 3) + 0.5
    with h5py.File(tmp_path / "b.h5", "w") as f:    # value and 2 value alternating; a negative value: |value| throughout
        f[name] = np.full(shape, abs(value)) * (1 + (value > 0) * (np.indices(shape).sum(0) % 2))
    args = ("validate", "b.h5", "a.h5") if "not a cube" in words or "no positive" in words else ("validate", "a.h5",
                                                                                                "b.h5")
    done = spibatch_cli(*args, "--voxel-size-m", "1e-9", cwd=tmp_path)
    assert done.returncode == 2 and words in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_truncated_hdf5_and_negative_counts_exit_2(tmp_path):
    import h5py
    import numpy as np

    good = tmp_path / "volume.h5"
    with h5py.File(good, "w") as f:
        f["intensity"] = np.ones((9, 9, 9), np.float32)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    done = spibatch_cli("validate", str(good), str(cut), cwd=tmp_path)
    assert done.returncode == 2 and "cut.h5" in done.stderr and len(done.stderr.strip().splitlines()) == 1

    cxi = tmp_path / "frames.cxi"
    stack = np.zeros((3, 4, 4), np.float32)
    stack[1, 2, 2] = -3.0
    with h5py.File(cxi, "w") as f:
        f["/entry_1/data_1/data"] = stack
    done = spibatch_cli("ingest", str(cxi), "--out", str(tmp_path / "ingested"), cwd=tmp_path)
    assert done.returncode == 2 and "frame 1" in done.stderr and "clip" in done.stderr
    assert not (tmp_path / "ingested" / "photons.emc").exists()
    assert not (tmp_path / "runs").exists()


def test_run_with_device_gpu_on_this_machine_without_a_gpu_stops_before_the_run_folder(tmp_path):
    """`spibatch run` on the local site with device: gpu where CuPy or a GPU is missing: one line naming
    `device`, before anything is created (the run used to create its folder and fail in the EMC stage)."""
    import importlib.util

    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed here: a GPU may be usable, so the refusal cannot be asserted")
    config = tmp_path / "p.yaml"
    pdb = Path(spibatch.__file__).parent / "data" / "1EI7.pdb"
    config.write_text(f"name: t\ndevice: gpu\nsimulation: {{pdb: {pdb}, num_patterns: 10}}\n")
    done = spibatch_cli("run", str(config), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 2 and "device" in done.stderr and "set to gpu" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_standalone_command_names_the_argument_the_user_gave_not_the_pipeline_key(tmp_path):
    import h5py
    import numpy as np

    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["intensity"] = np.ones((9, 9, 9))
    done = spibatch_cli("validate", "a.h5", "nope.h5", cwd=tmp_path)
    assert done.returncode == 2 and "nope.h5: SECOND: file not found" in done.stderr, done.stderr
    config = tmp_path / "p.yaml"
    config.write_text(f"name: t\nphasing: {{intensity: {tmp_path / 'a.h5'}, recipe: 'ER() ** 5'}}\n")
    done = spibatch_cli("phase", "p.yaml", "--truth", "nope.mrc", cwd=tmp_path)
    assert done.returncode == 2 and "nope.mrc: --truth:" in done.stderr, done.stderr


def test_replay_folders_new_empty_or_an_earlier_replays(tmp_path):
    """replay overwrote what --out / --target held (a run's simulate/ outputs, other files): only a new or empty
    folder, or for --out an earlier replay's own (its mark), is written into."""
    from spibatch.cli_platform import REPLAY_MARK, check_replay_folder
    from spibatch.errors import InputError

    out = tmp_path / "out"
    check_replay_folder(out, "--out", "files", REPLAY_MARK)            # new
    out.mkdir()
    check_replay_folder(out, "--out", "files", REPLAY_MARK)            # empty
    (out / "photons.emc").write_text("x")
    with pytest.raises(InputError, match="--out: is not empty .photons.emc.: replay writes files"):
        check_replay_folder(out, "--out", "files", REPLAY_MARK)
    (out / REPLAY_MARK).write_text("")
    check_replay_folder(out, "--out", "files", REPLAY_MARK)            # an earlier replay's
    with pytest.raises(InputError, match="is not empty"):
        check_replay_folder(out, "--target", "files")                   # a target is never reused
    (tmp_path / "provenance.json").write_text("{}")
    with pytest.raises(InputError, match="lies in the run folder"):
        check_replay_folder(tmp_path / "new", "--out", "files", REPLAY_MARK)


def test_an_option_given_twice_is_refused_one_that_may_repeat_is_not():
    """click kept the last of `--out a --out b`: refused; bench's --site (a list) and global -q are not counted."""
    import typer.main  # noqa: F401  (the app's click command)

    from spibatch.cli import app
    from spibatch.options import repeated_option

    assert repeated_option(app, ["ingest", "x.cxi", "--adu-per-photon", "25", "--adu-per-photon=1"]) == \
        ("--adu-per-photon", "--adu-per-photon", "ingest")
    assert repeated_option(app, ["ingest", "x.cxi", "--clip-negative", "--no-clip-negative"])[:2] == \
        ("--clip-negative", "--no-clip-negative")
    assert repeated_option(app, ["-q", "bench", "b.yaml", "--site", "a.yaml", "--site", "b.yaml"]) is None
    assert repeated_option(app, ["validate", "a", "b", "--out", "o"]) is None
    assert repeated_option(app, ["nosuch", "--out", "a", "--out", "b"]) is None
