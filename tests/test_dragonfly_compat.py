"""Dragonfly (dragonfly-spi, GPL) as a reference tool: it must read the files our code writes.

Never a dependency: the tests find its ``dragonfly.emc`` through $SPIBATCH_DRAGONFLY (the
executable itself or the venv's ``bin`` folder) or /opt/dragonfly-venv/bin, and skip with
a reason otherwise.  ``bash benchmarks/dragonfly_env.sh`` builds that venv.
"""

from __future__ import annotations

import os
import re
import subprocess
from importlib import resources
from pathlib import Path

import h5py
import numpy as np
import pytest

pytestmark = pytest.mark.dragonfly

DEFAULT_VENV_BIN = Path("/opt/dragonfly-venv/bin")
TIMEOUT_S = 300


def _find_dragonfly() -> Path | None:
    env = os.environ.get("SPIBATCH_DRAGONFLY")
    candidates = []
    if env:
        p = Path(env)
        candidates.append(p / "dragonfly.emc" if p.is_dir() else p)
    candidates.append(DEFAULT_VENV_BIN / "dragonfly.emc")
    for exe in candidates:
        if exe.is_file() and os.access(exe, os.X_OK):
            return exe
    return None


@pytest.fixture(scope="module")
def dragonfly_emc() -> Path:
    exe = _find_dragonfly()
    if exe is None:
        reason = ("Dragonfly not installed: no dragonfly.emc in $SPIBATCH_DRAGONFLY "
                  f"({os.environ.get('SPIBATCH_DRAGONFLY', 'unset')}) or {DEFAULT_VENV_BIN}; "
                  "run `bash benchmarks/dragonfly_env.sh` or set SPIBATCH_DRAGONFLY")
        print(reason)
        pytest.skip(reason)
    return exe


def _run_emc(exe: Path, run_dir: Path, photons: str, detector: str, iterations: int = 2,
             num_div: int = 2) -> tuple[Path, str]:
    """Write a minimal config.ini in ``run_dir``, run ``dragonfly.emc -t 2 iterations``; return (output dir, log)."""
    (run_dir / "config.ini").write_text(
        "[emc]\n"
        f"in_photons_file = {photons}\n"
        f"in_detector_file = {detector}\n"
        f"num_div = {num_div}\n"
        "output_folder = output/\n"
        "log_file = EMC.log\n"
        "need_scaling = 1\n"
        "beta_schedule = 2.0 10\n"
        "fixed_seed = 1\n")
    proc = subprocess.run([str(exe), "-c", "config.ini", "-t", "2", str(iterations)], cwd=run_dir,
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0, (f"dragonfly.emc exited {proc.returncode}\n"
                                  f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    log = run_dir / "EMC.log"
    assert log.is_file(), f"no EMC.log; stdout:\n{proc.stdout[-2000:]}"
    return run_dir / "output", log.read_text()


def _check_output(out_dir: Path, log: str, iterations: int, num_frames: int, num_pix: int) -> None:
    match = re.search(r"num_data\s*=\s*(\d+)", log)
    assert match, f"no num_data in Dragonfly's log:\n{log}"
    assert int(match.group(1)) == num_frames
    match = re.search(r"num_pix\s*=\s*\d+/(\d+)", log)
    assert match and int(match.group(1)) == num_pix, log
    last = out_dir / f"output_{iterations:03d}.h5"
    assert last.is_file(), f"missing {last.name}; have {sorted(p.name for p in out_dir.glob('*'))}"
    with h5py.File(last, "r") as f:
        intens = f["intens"][:]
    assert intens.ndim == 4 and intens.shape[0] == 1
    assert np.all(np.isfinite(intens)) and np.any(intens != 0)
    iters = re.findall(r"^(\d+)\t", log, flags=re.MULTILINE)
    assert [int(i) for i in iters] == list(range(1, iterations + 1)), log


def test_dragonfly_reads_our_rewrite_of_the_small_set(dragonfly_emc, small_dataset, tmp_path):
    from spibatch.detector import Detector
    from spibatch.io.dragonfly import read_photons, write_detector, write_photons

    detector = Detector.read(small_dataset / "det_sim.h5")
    photons = read_photons(small_dataset / "photons.emc").select(0, 200)
    write_detector(tmp_path / "detector.h5", detector)
    write_photons(tmp_path / "photons.emc", photons)
    out_dir, log = _run_emc(dragonfly_emc, tmp_path, "photons.emc", "detector.h5")
    _check_output(out_dir, log, 2, photons.num_frames, detector.num_pix)


@pytest.mark.slow
def test_dragonfly_reconstructs_from_our_simulation(dragonfly_emc, tmp_path):
    from spibatch.config import Geometry, Pipeline, Simulation
    from spibatch.stages.simulate import simulate_to
    from spibatch.io.dragonfly import photons_info
    from spibatch.detector import Detector
    pdb = resources.files("spibatch") / "data" / "1EI7.pdb"
    pipeline = Pipeline(name="dragonfly-compat", geometry=Geometry(wavelength_m=6.2e-10, detector_pixels=64),
                        simulation=Simulation(pdb=Path(str(pdb)), num_patterns=200, seed=3))
    paths = simulate_to(pipeline, tmp_path / "sim", show_progress=False)
    detector = Detector.read(paths["detector"])
    num_frames, num_pix = photons_info(paths["photons"])
    assert (num_frames, num_pix) == (200, 64 * 64)
    out_dir, log = _run_emc(dragonfly_emc, tmp_path / "sim", paths["photons"].name, paths["detector"].name)
    _check_output(out_dir, log, 2, num_frames, detector.num_pix)


@pytest.mark.parametrize("selection", [None, "odd_only"])
def test_dragonfly_leaves_out_the_frames_our_list_blacklist_and_selection_leave_out(dragonfly_emc, small_dataset,
                                                                                    tmp_path, selection):
    """Dragonfly's in_photons_list + blacklist_file (+ selection) on the same files as ours: the frames it
    processes (an orientation other than -1) are the frames FrameSelection keeps, in the same numbering."""
    from types import SimpleNamespace

    from spibatch.detector import Detector
    from spibatch.io.dragonfly import read_photons, write_detector, write_photons
    from spibatch.io.frame_selection import FrameSelection

    photons = read_photons(small_dataset / "photons.emc").select(0, 300)
    write_detector(tmp_path / "detector.h5", Detector.read(small_dataset / "det_sim.h5"))
    write_photons(tmp_path / "a.h5", photons.select(0, 120))
    write_photons(tmp_path / "b.h5", photons.select(120, 300))
    (tmp_path / "list.txt").write_text("a.h5\nb.h5\n")
    left_out = np.random.default_rng(7).random(300) < 0.3
    (tmp_path / "bl.txt").write_text("\n".join(str(int(x)) for x in left_out) + "\n")
    (tmp_path / "config.ini").write_text(
        "[emc]\nin_photons_list = list.txt\nin_detector_file = detector.h5\nblacklist_file = bl.txt\n"
        + (f"selection = {selection}\n" if selection else "")
        + "num_div = 2\noutput_folder = output/\nlog_file = EMC.log\nneed_scaling = 1\nbeta_schedule = 2.0 10\n"
        "fixed_seed = 1\n")
    (tmp_path / "output").mkdir()
    proc = subprocess.run([str(dragonfly_emc), "-c", "config.ini", "-t", "2", "1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with h5py.File(tmp_path / "output" / "output_001.h5", "r") as f:
        processed = np.flatnonzero(f["orientations"][()] != -1)
    emc = SimpleNamespace(photons=None, photons_list=tmp_path / "list.txt", blacklist_file=tmp_path / "bl.txt",
                          selection=selection)
    ours = FrameSelection.of(emc)
    assert ours.total == 300 and ours.kept == len(processed)
    assert np.array_equal(ours.sources()[2], processed)
