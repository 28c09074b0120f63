"""The per-rotation merge (``emc.merge: per_rotation``, Dragonfly's; issue 16 item 1).

Each rotation's mean view -- its weighted photons over its weight summed over ALL frames -- is merged with
weight 1, so the model is the plain average of the rotations' views.  The weights need every frame's
probabilities before any merge: the executors sum each shard's :func:`shard_weights` first.

* One shard's sums equal Dragonfly's formula computed here from the step's own kept probabilities and
  dense photons (an independent normalisation; only the trilinear splat is shared).
* Four shards in one process, HTC tasks and 2 real MPI ranks give the one-shard model (the weights are summed
  over all frames before the merge, not per shard); a per-shard normalisation (the tempting shortcut) does not.
* With a known background, and with coarse-to-fine candidates, the same holds; the GPU path (numpy twins)
  gives the CPU's sums in both halves.
* A resume with the other merge is refused before anything is written.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from test_emc_step import problem  # noqa: F401  (the shared synthetic EMC problem, a fixture)

from spibatch.config import EMC
from spibatch.detector import Detector
from spibatch.emc import driver
from spibatch.emc.executors import InProcess, Tasks
from spibatch.emc.gpu_step import gpu_shard_step, gpu_shard_weights
from spibatch.emc.settings import EMCSettings
from spibatch.emc.step import random_model, rotation_factor, shard_step, shard_weights
from spibatch.emc.types import Geometry, Shard, ShardSpec, StepState
from spibatch.errors import InputError
from spibatch.io.results import read_result
from spibatch.kernels.device import Device

REPO = Path(__file__).resolve().parents[1]


def settings(**kw) -> EMCSettings:
    return EMCSettings.from_dict(EMC(**{"num_div": 2, "iterations": 3, "frames_per_shard": 60,
                                        "merge": "per_rotation", **kw}).model_dump())


def dense_counts(shard: Shard, num_pix: int) -> np.ndarray:
    out = np.zeros((shard.num_frames, num_pix))
    frames = np.repeat(np.arange(shard.num_frames), np.diff(shard.ptr))
    np.add.at(out, (frames, shard.pixel), shard.count)
    return out


def test_one_shard_is_dragonflys_formula(emc_small):
    from spibatch.kernels.emc_cpu import merge_views

    geometry = Geometry.build(emc_small["detector"], 2)
    rotations, pixels = geometry.rotations, geometry.pixels
    shard = ShardSpec(str(emc_small["photons"]), 0, 120, 0).load(pixels)
    size = Detector.read(emc_small["detector"]).model_size()
    model = random_model(size, pixels, rotations, float(shard.counts.mean()), 3)
    scales = np.linspace(0.7, 1.3, 120)
    state = StepState(1, np.full(120, 0.3), scales, merge="per_rotation")
    weights = shard_weights(model, rotations, pixels, shard, state)
    kept = shard.__dict__["_expectation"]
    d, r, p = kept.frame.astype(int), kept.rotation.astype(int), kept.prob
    prob = np.zeros((120, len(rotations)))
    prob[d, r] = p
    np.testing.assert_allclose(weights, scales @ prob, rtol=1e-9)
    assert 0 < (weights > 0).sum() < len(rotations)          # some rotations no frame keeps
    sums = shard_step(model, rotations, pixels, shard, dataclasses.replace(state, rotation_factor=rotation_factor(weights)))
    assert "_expectation" not in shard.__dict__                # merged from the kept expectation, then dropped

    # Dragonfly: view_r = sum_d P_dr K_d / corr / W_r, W_r = sum_d P_dr scale_d; each view merged with weight 1
    used = weights > 0
    views = (prob.T @ dense_counts(shard, len(pixels.q))) / pixels.corr[None, :]
    views[used] /= weights[used, None]
    acc = np.zeros(size ** 3 * 2, np.float32)
    merge_views(acc, size, rotations.matrices, rotations.mode, np.ascontiguousarray(pixels.q.T, np.float32),
                views.astype(np.float32), used.astype(np.float64), 2)
    acc = acc.reshape((size,) * 3 + (2,))
    assert np.abs(sums.numerator - acc[..., 0]).max() <= 1e-4 * np.abs(acc[..., 0]).max()
    assert np.abs(sums.denominator - acc[..., 1]).max() <= 1e-4 * acc[..., 1].max()

    pooled = shard_step(model, rotations, pixels, shard, StepState(1, state.beta, scales))   # the EM update differs
    ratio = np.divide(sums.numerator, sums.denominator, where=sums.denominator > 0, out=np.zeros_like(sums.numerator))
    em = np.divide(pooled.numerator, pooled.denominator, where=pooled.denominator > 0,
                   out=np.zeros_like(pooled.numerator))
    assert np.abs(ratio - em).max() > 0.01 * em.max()


def run(cfg: EMCSettings, emc_small, out: Path, executor=None, **kw):
    return driver.run_emc(cfg, emc_small["photons"], emc_small["detector"], out, executor=executor or InProcess(),
                          **kw)


def intensity(path: Path, iteration: int = 3) -> np.ndarray:
    return read_result(path / f"output_{iteration:03d}.h5")[0]["intensity"]


@pytest.mark.parametrize("extra", ["plain", "background", "refine"])
def test_shards_tasks_and_ranks_give_the_one_shard_model(emc_small, tmp_path, extra, monkeypatch):
    """240 frames: one shard, four shards, HTC tasks on two workers, two MPI ranks: the same model; the
    per-shard normalisation is measurably not it."""
    kw = {}
    if extra == "background":
        background = tmp_path / "background.npy"
        np.save(background, np.full(Detector.read(emc_small["detector"]).num_pix, 0.002))
        kw = {"background_file": background}
    elif extra == "refine":
        kw = {"iterations": 4, "refine": {"num_div": 3, "after": 2}}
    last = kw.get("iterations", 3)
    run(settings(frames_per_shard=240, **kw), emc_small, tmp_path / "one")
    one = intensity(tmp_path / "one", last)
    runs = {"four": tmp_path / "four", "tasks": tmp_path / "tasks"}
    import spibatch.emc.executors as executors

    spilled = []
    real_spill = executors._spill
    monkeypatch.setattr(executors, "_spill", lambda shard, folder: (spilled.append(shard.first_frame),
                                                                     real_spill(shard, folder)))
    run(settings(**kw), emc_small, runs["four"])
    # all but the last shard's kept probabilities wait on disk between the halves, every iteration
    assert spilled == [0, 60, 120] * last
    with ThreadPoolExecutor(max_workers=2) as pool:
        run(settings(**kw), emc_small, runs["tasks"], Tasks(pool.submit, runs["tasks"] / "htc"))
    assert not list((runs["tasks"] / "htc").glob("expect_*")), "the tasks' kept probabilities are removed"
    if extra == "plain":
        runs["mpi"] = two_ranks(emc_small, tmp_path)
    for name, path in runs.items():
        assert np.abs(intensity(path, last) - one).max() <= 1e-5 * one.max(), name

    if extra == "plain":   # each shard normalising its rotations by its own frames' weights is another model
        class PerShard(InProcess):
            def step(self, model, geometry, state):
                parts = []
                for shard in self.shards:
                    w = shard_weights(model, geometry.rotations, geometry.pixels, shard, state)
                    parts.append(executors.run_shards(self._step, model, geometry, [shard],
                                                      dataclasses.replace(state, rotation_factor=rotation_factor(w))))
                from spibatch.emc.types import reduce

                total = reduce(parts)
                total.timings["combine"] = 0.0
                return total

        run(settings(), emc_small, tmp_path / "per_shard", PerShard())
        assert np.abs(intensity(tmp_path / "per_shard") - one).max() > 1e-3 * one.max()


def two_ranks(emc_small, tmp_path: Path) -> Path:
    mpirun = shutil.which("mpirun")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        mpirun = None
    if mpirun is None:
        pytest.skip("MPI part not run: mpirun or mpi4py missing (.ci/run installs both)")
    script = tmp_path / "ranks.py"
    script.write_text(f"""
from mpi4py import MPI
from spibatch.emc import driver
from spibatch.emc.executors import MPIRanks
from spibatch.emc.settings import EMCSettings
cfg = EMCSettings(num_div=2, iterations=3, frames_per_shard=60, merge="per_rotation")
driver.run_emc(cfg, {os.fspath(emc_small['photons'])!r}, {os.fspath(emc_small['detector'])!r},
               {os.fspath(tmp_path / 'mpi')!r}, executor=MPIRanks(MPI.COMM_WORLD))
""")
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([mpirun, "-n", "2", "--oversubscribe", sys.executable, str(script)], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return tmp_path / "mpi"


@pytest.mark.parametrize("chunks", [None, (37, 64)])
def test_gpu_path_gives_the_cpu_halves(problem, chunks):  # noqa: F811
    """Numpy twins: the GPU's rotation weights and its merge with the factors equal the CPU's."""
    from test_gpu_emc import assert_same_sums

    detector, pixels, rotations, truth, photons, _ = problem
    shard = Shard.from_photons(photons.select(10, 120), pixels, 10)
    state = StepState(1, np.full(120, 0.3), np.linspace(0.8, 1.2, 120), merge="per_rotation")
    frame_chunk, rotation_block = chunks or (None, None)
    sizes = {"frame_chunk": frame_chunk, "rotation_block": rotation_block}
    device = Device("gpu", "twin")
    cpu_w = shard_weights(truth, rotations, pixels, shard, state, keep=False)
    gpu_w = gpu_shard_weights(truth, rotations, pixels, shard, state, device=device, **sizes)
    np.testing.assert_allclose(gpu_w, cpu_w, rtol=1e-3, atol=1e-3 * cpu_w.max())   # float32 probabilities
    state = dataclasses.replace(state, rotation_factor=rotation_factor(cpu_w))
    cpu = shard_step(truth, rotations, pixels, shard, state)
    gpu = gpu_shard_step(truth, rotations, pixels, shard, state, device=device, **sizes)
    # each rotation counts once, however improbable: the float32 probabilities' relative error (~1e-3 where
    # P ~ 1e-6) reaches the sums undamped, where the pooled merge weighs it by P (2e-5 there)
    for key in ("numerator", "denominator"):
        a, b = getattr(cpu, key), getattr(gpu, key)
        assert np.abs(a - b).max() <= 1e-3 * np.abs(a).max(), key
    cpu.numerator, cpu.denominator = gpu.numerator, gpu.denominator
    assert_same_sums(cpu, gpu)


def test_resume_with_the_other_merge_is_refused(emc_small, tmp_path):
    out = tmp_path / "emc"
    run(settings(iterations=1), emc_small, out)
    before = (out / "output_001.h5").read_bytes()
    with pytest.raises(InputError, match="settings differ .*merge"):
        run(settings(iterations=2, merge="pooled"), emc_small, out, resume=True)
    assert (out / "output_001.h5").read_bytes() == before and not (out / "output_002.h5").exists()


def test_a_full_spill_folder_is_one_line(emc_small, tmp_path, monkeypatch):
    """In process, the kept probabilities of all but the last shard wait on disk: no room there stops the run in
    one line naming the folder and what to do, with the iterations before it on disk."""
    import errno

    import spibatch.emc.executors as executors

    calls = []

    def full(fh, **arrays):
        calls.append(1)
        if len(calls) > 3:                  # iteration 1's three spills go through, iteration 2's first does not
            raise OSError(errno.ENOSPC, "No space left on device")
        np.savez_compressed(fh, **arrays)

    monkeypatch.setattr(executors.np, "savez", full)
    out = tmp_path / "emc"
    with pytest.raises(InputError, match="spibatch-expect-.*emc.merge: cannot keep the per-rotation merge's "
                                         "probabilities here: No space left on device; free space there"):
        run(settings(iterations=2), emc_small, out)
    assert (out / "output_001.h5").exists() and not (out / "output_002.h5").exists()
