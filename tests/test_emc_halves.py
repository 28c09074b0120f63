"""Gold-standard half sets (emc.halves, issue 16): the split, the three modes, the estimate against the truth.

* the split is by frame parity, disjoint and complete, and each half's photons file holds exactly its frames;
* locally (two spawned processes) on a thinned copy of the small set (400 frames, 15 % of the photons: ~150
  a frame, so that the per-shell correlations cross 0.5 and 0.143 inside the measured shells), each half's model
  correlates with the truth, and the half-set FSC's 0.143 crossing lies within a factor 2 of the shell where the
  full model's correlation with the truth crosses 0.5 (measured: 15.9 vs 10.1 -- the halves are optimistic);
* HTC (real Parsl tasks on the local site) and MPI (2 ranks: one sub-communicator per half) give each half the
  model the local processes give it (one thread everywhere);
* too few frames per half: one line, exit 2, before any run folder exists (also in the bad-input corpus).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from platform_helpers import LOCAL_HTC, markers, spibatch, write_site
from spibatch.emc.halves import MIN_HALF_FRAMES, split, write_halves
from spibatch.io.dragonfly import read_photons, write_photons
from spibatch.photons import Photons

TOLERANCE = 1e-6     # max |a - b| / max |a| between two modes' half models (same shards, one thread each)


def pipeline(folder: Path, photons: Path, detector: Path, **emc) -> Path:
    settings = {"photons": photons, "detector": detector, "num_div": 2, "iterations": 3, "frames_per_shard": 60,
                "halves": "true", **emc}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pipeline.yaml"
    path.write_text("\n".join(["name: halves", "emc:"] + [f"  {k}: {v}" for k, v in settings.items()]) + "\n")
    return path


def half_models(run: Path) -> list[np.ndarray]:
    models = []
    for name in ("half_1", "half_2"):
        with h5py.File(run / "emc" / name / "checkpoint.h5") as f:
            models.append(f["model"][()])
    return models


def assert_same_halves(run: Path, reference: Path) -> None:
    for a, b in zip(half_models(reference), half_models(run)):
        assert np.abs(a - b).max() <= TOLERANCE * np.abs(a).max()
    summary = json.loads((run / "emc" / "halves.json").read_text())
    assert summary["frames"] == [120, 120] and summary["cc"] > 0.9


@pytest.fixture(scope="module")
def local_run(emc_small, tmp_path_factory) -> Path:
    """``spibatch emc`` with halves on the 240 frames of emc_small, locally (two processes, one thread each)."""
    folder = tmp_path_factory.mktemp("halves_local")
    done = spibatch("emc", pipeline(folder, emc_small["photons"], emc_small["detector"]), "--out", folder / "run",
                    cwd=folder, NUMBA_NUM_THREADS="1")
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "run"


def test_the_split_is_disjoint_covers_every_frame_and_writes_each_half(emc_small, tmp_path):
    first, second = split(239)
    assert len(np.intersect1d(first, second)) == 0 and np.array_equal(np.union1d(first, second), np.arange(239))
    assert (first % 2 == 0).all() and (second % 2 == 1).all() and (len(first), len(second)) == (120, 119)

    photons = tmp_path / "p.h5"
    whole = read_photons(emc_small["photons"], 0, 239)
    write_photons(photons, whole)
    paths = write_halves(photons, tmp_path / "emc", chunk_frames=50)    # blocks of odd length: parity carries on
    dense = whole.to_dense()
    for path, frames in zip(paths, (first, second)):
        assert np.array_equal(read_photons(path).to_dense(), dense[frames])
    stamp = [p.stat().st_mtime_ns for p in paths]
    write_halves(photons, tmp_path / "emc")                               # already there: kept
    assert [p.stat().st_mtime_ns for p in paths] == stamp


def test_local_halves_estimate_the_resolution_the_truth_measures(small_dataset, tmp_path):
    """400 frames thinned to 15 % of their photons; num_div 3, 10 iterations (~50 s on 2 cores)."""
    from spibatch.detector import Detector
    from spibatch.emc.compare import shell_range
    from spibatch.emc.halves import resolutions, shell_fsc, volume_and_voxel
    from spibatch.align import align_intensity
    from spibatch.io.dragonfly import write_detector
    from spibatch.io.results import read_volume

    dense = read_photons(small_dataset / "photons.emc", 0, 400).to_dense()
    write_photons(tmp_path / "thin.h5", Photons.from_dense(np.random.default_rng(7).binomial(dense, 0.15)))
    write_detector(tmp_path / "det.h5", Detector.read(small_dataset / "det_sim.h5"))
    config = pipeline(tmp_path, tmp_path / "thin.h5", tmp_path / "det.h5", num_div=3, iterations=10,
                      frames_per_shard=100)
    done = spibatch("emc", config, "--out", tmp_path / "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "emc" / "halves.json").read_text())
    assert summary["frames"] == [200, 200] and summary["seeds"] == [2, 3] and "local" in summary["mode"]
    assert "half-set FSC" in done.stdout + done.stderr

    truth = np.asarray(read_volume(small_dataset / "intensities.bin"), np.float64)
    truth = truth[0] if truth.ndim == 4 else truth
    r_min, r_max = shell_range(Detector.read(tmp_path / "det.h5"))
    crossing = {}
    for name in ("half_1", "half_2", "."):
        model, _ = volume_and_voxel(run / "emc" / name / "output_010.h5")
        from spibatch.validate import crop_to_common

        model, ref = crop_to_common(model, truth)
        alignment = align_intensity(model, ref, r_min, r_max)
        assert alignment.cc > 0.3                                            # measured 0.386, 0.387 (full 0.387)
        crossing[name] = resolutions(shell_fsc(model, ref, alignment.rotation, r_min, r_max))["fsc_0.5_radius"]
    half_estimate = summary["fsc_0.143_radius"]
    assert half_estimate is not None and crossing["."] is not None
    assert 0.5 <= half_estimate / crossing["."] <= 2.0                      # measured 15.9 / 10.1 = 1.57


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not found")
def test_two_mpi_ranks_run_one_half_each_and_give_the_local_halves(local_run, emc_small, tmp_path):
    pytest.importorskip("mpi4py")
    config = pipeline(tmp_path, emc_small["photons"], emc_small["detector"])
    env = {"NUMBA_NUM_THREADS": "1", "OMPI_MCA_rmaps_base_oversubscribe": "1"}
    from platform_helpers import env as run_env

    done = subprocess.run([shutil.which("mpirun"), "-n", "2", "--oversubscribe", sys.executable, "-m", "spibatch",
                           "emc", str(config), "--out", str(tmp_path / "run")], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600, env=run_env(**env))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "emc" / "halves.json").read_text())
    assert summary["mode"].startswith("mpi (2 ranks")
    for name in ("half_1", "half_2"):   # each half on a sub-communicator of one rank
        lines = (tmp_path / "run" / "emc" / name / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["mpi_ranks"] for line in lines] == [1, 1, 1]
    assert_same_halves(tmp_path / "run", local_run)


def test_htc_halves_through_parsl_give_the_local_halves(local_run, emc_small, tmp_path):
    pytest.importorskip("parsl")
    config = pipeline(tmp_path, emc_small["photons"], emc_small["detector"])
    site = write_site(tmp_path, "local-htc", LOCAL_HTC)
    done = spibatch("run", config, "--site", site, "--out", tmp_path / "run", cwd=tmp_path, NUMBA_NUM_THREADS="1")
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    assert markers(run)["emc"]["emc_mode"] == "htc"
    for name in ("half_1", "half_2"):   # each half's shard tasks: 120 frames, shards of 60
        timing = [json.loads(x) for x in (run / "emc" / name / "htc" / "timing.jsonl").read_text().splitlines()]
        assert [t["tasks"] for t in timing] == [2, 2, 2]
    assert json.loads((run / "emc" / "halves.json").read_text())["mode"] == "htc"
    assert_same_halves(run, local_run)


def test_too_few_frames_per_half_is_one_line_before_any_work(emc_small, tmp_path):
    photons = tmp_path / "few.h5"
    write_photons(photons, read_photons(emc_small["photons"], 0, 2 * MIN_HALF_FRAMES - 1))
    done = spibatch("emc", pipeline(tmp_path, photons, emc_small["detector"]), cwd=tmp_path)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "emc.halves" in errors[0] and "too few to reconstruct" in errors[0], done.stderr
    assert not (tmp_path / "runs").exists()
