"""A full disk, for every stage: simulate, ingest, emc, phase, validate, report and `spibatch run`.

Each command writes its run folder into a small tmpfs (mounted here as root; where mounting is not
allowed, the command runs under a file-size limit instead, ``ulimit -f``, and its writes fail with EFBIG).
Each must stop with exit 2 and ONE line naming the file and "no space left on device" (or "file too
large"), print no traceback (HDF5 used to print pages of them and crash with SIGSEGV), leave no
temporary file and no partial file under a final name, and keep what it had written before intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from fault_helpers import error_lines, filled_after, iterations_logged, run, small_disk

REPO = Path(__file__).resolve().parents[1]
PNG_END = b"IEND\xaeB`\x82"


def intact(folder: Path) -> list[str]:
    """Every file of ``folder`` is whole: no temporary ``.*.part`` file, HDF5 files read to the last dataset,
    JSON parses, MRC files read, PNGs end.  Returns the names checked."""
    import mrcfile

    assert not list(folder.rglob(".*.part")), list(folder.rglob(".*.part"))
    checked = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix in (".h5", ".emc"):
            with h5py.File(path, "r") as f:
                f.visititems(lambda name, obj: obj[()] if isinstance(obj, h5py.Dataset) else None)
        elif path.suffix == ".json" or path.name == "lock":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            [json.loads(line) for line in path.read_text().splitlines()]
        elif path.suffix == ".mrc":
            with mrcfile.open(path) as m:
                m.data.sum()
        elif path.suffix == ".png":
            assert path.read_bytes().endswith(PNG_END), path
        checked.append(str(path.relative_to(folder)))
    return checked


def out_of_room(done, folder: Path) -> str:
    """The command stopped for lack of room as promised (see the module docstring); returns its error line."""
    text = done.stdout + done.stderr
    assert done.returncode == 2, (done.returncode, text[-4000:])
    lines = error_lines(done.stderr)
    assert len(lines) == 1, text[-4000:]
    assert "no space left on device" in lines[0] or "file too large" in lines[0], lines[0]
    assert str(folder) in lines[0], lines[0]                    # it names the file
    for word in ("Traceback", "Logging error", "HDF5-DIAG", "Segmentation"):
        assert word not in text, text[-4000:]
    intact(folder)
    print(lines[0])
    return lines[0]


@pytest.mark.slow
def test_emc_into_a_full_disk_stops_in_one_line_and_resumes_elsewhere(emc_config, tmp_path):
    """EMC on a 30 MB disk that another writer fills once the first output is there (5 iterations: their
    outputs, 14.5 MB, and the checkpoint's two copies, 11.5 MB, pass the stage's up-front check): one line, the
    iterations before intact, and the run, copied to a disk with room, resumes to the end."""
    config = emc_config(tmp_path, iterations=5)
    with small_disk(tmp_path, 30 << 20) as (disk, fsize), \
            filled_after(disk / "run" / "emc" / "output_001.h5", disk, 3 << 20, fsize):
        done = run("emc", config, "--out", disk / "run", cwd=tmp_path, fsize=fsize)
        line = out_of_room(done, disk / "run")
        assert f"go on with: spibatch emc {config} --resume {disk / 'run'}" in line, line   # the command that does
        assert json.loads((disk / "run" / "provenance.json").read_text())["status"] in ("failed", "running")
        shutil.copytree(disk / "run", tmp_path / "moved")
    moved = tmp_path / "moved"
    (moved / "lock").unlink(missing_ok=True)
    outputs = sorted(p.name for p in (moved / "emc").glob("output_*.h5"))
    assert outputs and "output_005.h5" not in outputs, outputs
    done = run("emc", config, "--resume", moved, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert iterations_logged(moved / "emc") == (list(range(1, 6)), list(range(1, 6)))


def test_phase_into_a_full_disk_stops_in_one_line(tmp_path, emc_small, emc_config):
    """`spibatch phase` on a 600 KB disk (its phasing.h5 alone is 740 KB): one line, no SIGSEGV."""
    from spibatch.io.results import write_result

    intensity = tmp_path / "intensity.h5"
    rng = np.random.default_rng(1)
    write_result(intensity, {"intensity": rng.random((41, 41, 41)).astype(np.float32)}, {})
    config = tmp_path / "phase.yaml"
    config.write_text(f"name: ph\nphasing: {{intensity: {intensity}, num_starts: 2, keep_best: 2, "
                      "recipe: \"(HIO() ** 10 * ShrinkWrap()) ** 2 * ER() ** 10\"}\n")
    with small_disk(tmp_path, 600 << 10) as (disk, fsize):
        line = out_of_room(run("phase", config, "--out", disk / "run", cwd=tmp_path, fsize=fsize), disk / "run")
    # a phasing run keeps no checkpoint: the line says the command again (a new folder), not `spibatch resume`,
    # which refuses folders that are not `spibatch run`'s
    assert f"go on with: spibatch phase {config} (it starts again, in a new run folder)" in line, line
    assert "resume" not in line, line


TINY_SIMULATION = """\
name: tiny
geometry: {{detector_pixels: 24, pixel_size_m: 1.3e-3, detector_distance_m: 0.15, photon_energy_ev: 6000,
           beamstop_radius_pixels: 2}}
simulation: {{pdb: {pdb}, num_patterns: 400, mean_photons_per_frame: 500, seed: 1, chunk_frames: 50}}
"""


def test_simulate_into_a_full_disk_stops_in_one_line(tmp_path):
    """The simulation's photons (streamed, 360 KB), truth (370 KB) and density (170 KB) on a 800 KB disk."""
    config = tmp_path / "sim.yaml"
    config.write_text(TINY_SIMULATION.format(pdb=REPO / "spibatch" / "data" / "1EI7.pdb"))
    with small_disk(tmp_path, 800 << 10) as (disk, fsize):
        out_of_room(run("simulate", config, "--out", disk / "run", cwd=tmp_path, fsize=fsize), disk / "run")


def test_simulate_judges_the_disk_of_out_not_of_runs_dir(tmp_path):
    """50 000 patterns' photons file (at least 2.4 MB) refused up front for an `--out` on a 800 KB disk, though
    `output.runs_dir` (the working folder's disk) has room: the check judged runs_dir's disk before."""
    config = tmp_path / "sim.yaml"
    config.write_text(TINY_SIMULATION.format(pdb=REPO / "spibatch" / "data" / "1EI7.pdb")
                      .replace("num_patterns: 400", "num_patterns: 50000"))
    with small_disk(tmp_path, 800 << 10) as (disk, fsize):
        if fsize is not None:
            pytest.skip("mounting a small tmpfs is not allowed here: the up-front check reads the real free space")
        done = run("simulate", config, "--out", disk / "run", cwd=tmp_path)
        assert done.returncode == 2, done.stderr[-2000:]
        lines = error_lines(done.stderr)
        assert len(lines) == 1 and "simulation.num_patterns" in lines[0] and "on disk but" in lines[0], lines
        assert str(disk) in lines[0], lines[0]
        assert not (disk / "run").exists()


def test_ingest_into_a_full_disk_stops_in_one_line(tmp_path):
    """A CXI stack of 600 frames (32 x 32) whose photons take 2.6 MB, streamed onto a 2 MB disk."""
    from test_io_cxi import GEOMETRY, make_cxi

    make_cxi(tmp_path / "frames.cxi", frame_shape=(32, 32), num_frames=600, adu=20.0, geometry=GEOMETRY)
    with small_disk(tmp_path, 2 << 20) as (disk, fsize):
        done = run("ingest", tmp_path / "frames.cxi", "--adu-per-photon", "20", "--clip-negative",
                   "--chunk-frames", "50", "--out", disk / "run", cwd=tmp_path, fsize=fsize)
        out_of_room(done, disk / "run")
        assert not (disk / "run" / "ingest" / "photons.emc").exists()


def volume(path: Path, seed: int) -> Path:
    from spibatch.io.results import write_result

    write_result(path, {"density": np.random.default_rng(seed).random((24, 24, 24)).astype(np.float32)}, {})
    return path


def test_validate_into_a_full_disk_stops_in_one_line(tmp_path):
    """`spibatch validate A B` on a 32 KB disk: the FSC table, plot or text does not fit."""
    a, b = volume(tmp_path / "a.h5", 1), volume(tmp_path / "b.h5", 2)
    with small_disk(tmp_path, 32 << 10) as (disk, fsize):
        out_of_room(run("validate", a, b, "--out", disk / "run", cwd=tmp_path, fsize=fsize), disk / "run")


def test_the_file_size_limit_is_one_line_too(tmp_path):
    """Where no tmpfs can be mounted the tests above fall back to the file-size limit (``ulimit -f``): checked here
    on its own -- `spibatch validate` under a 16 KB limit ends with one "file too large" line."""
    a, b = volume(tmp_path / "a.h5", 1), volume(tmp_path / "b.h5", 2)
    line = out_of_room(run("validate", a, b, "--out", tmp_path / "run", cwd=tmp_path, fsize=16 << 10),
                       tmp_path / "run")
    assert "file too large" in line


def test_report_into_a_full_disk_stops_in_one_line_and_keeps_the_run(tmp_path):
    """`spibatch report RUN` of a finished run on a disk with 200 KB left (report.html is ~5 MB): one line,
    every file of the run as it was."""
    a, b = volume(tmp_path / "a.h5", 1), volume(tmp_path / "b.h5", 2)
    done = run("validate", a, b, "--out", tmp_path / "finished", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (tmp_path / "finished" / "report.html").unlink()
    size = sum(p.stat().st_size + 8192 for p in (tmp_path / "finished").rglob("*")) + (200 << 10)
    with small_disk(tmp_path, size) as (disk, fsize):
        shutil.copytree(tmp_path / "finished", disk / "run")
        before = {str(p.relative_to(disk / "run")): p.read_bytes() for p in (disk / "run").rglob("*") if p.is_file()}
        line = out_of_room(run("report", disk / "run", cwd=tmp_path, fsize=fsize), disk / "run")
        assert "report" in line
        assert f"go on with: spibatch report {disk / 'run'};" in line, line
        after = {str(p.relative_to(disk / "run")): p.read_bytes() for p in (disk / "run").rglob("*") if p.is_file()}
        assert after == before


@pytest.mark.slow
def test_run_into_a_full_disk_stops_in_one_line(emc_small, tmp_path):
    """`spibatch run` (local site, EMC as an MPI job) with its run folder on a 26 MB disk that another writer
    fills once EMC's first output is there: the driver ends with one line naming the file, exit 2."""
    from platform_helpers import write_pipeline

    pipeline = write_pipeline(tmp_path, emc_small, starts=1, iterations=4)   # 23.1 MB with the checkpoint
    with small_disk(tmp_path, 26 << 20) as (disk, fsize), \
            filled_after(disk / "run" / "emc" / "output_001.h5", disk, 3 << 20, fsize):
        done = run("run", pipeline, "--out", disk / "run", cwd=tmp_path, fsize=fsize)
        line = out_of_room(done, disk / "run")
        assert f"go on with: spibatch resume {disk / 'run'}" in line, line


@pytest.mark.parametrize("code", [13, 1, 30])   # EACCES, EPERM (chattr +i), EROFS
def test_a_refused_write_is_one_line_naming_the_file(tmp_path, monkeypatch, code):
    """The review: `spibatch emc` into a folder made immutable mid-run ended in a PermissionError traceback."""
    import errno as _errno
    import tempfile as _tempfile

    from spibatch.errors import InputError
    from spibatch.io.atomic import write_text

    def refused(*_args, **_kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(_tempfile, "mkstemp", refused)
    with pytest.raises(InputError, match=r"x\.txt: cannot write it \(.*\); make its folder writable, then resume"):
        write_text(tmp_path / "x.txt", "hi")
    assert code in (_errno.EACCES, _errno.EPERM, _errno.EROFS)
    assert not (tmp_path / "x.txt").exists()
