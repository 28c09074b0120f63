"""Background-aware EMC (Dragonfly's ``background_file``): a known per-pixel background with a fitted per-frame scale.

Frames of a particle (our structure-factor code) at sampled rotations get Poisson background photons: a smooth
radial profile (600 photons per frame on average, against ~1500 of the particle) times a per-frame level drawn
in 0.5-1.5.  Started from the truth, EMC without the background puts the background into the model (its
faint outer shells gain 20-120 %), with it the model stays within a few percent of what EMC gives on the same
frames without any background, and the fitted per-frame levels follow the true ones.  The executors (Tasks,
MPI ranks) give the in-process model with a background too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import pytest
from test_emc_executors import one_thread, settings  # noqa: F401  (fixtures and helpers of the executors' tests)

from spibatch.config import Geometry
from spibatch.emc import driver
from spibatch.emc.executors import InProcess, Tasks
from spibatch.emc.step import shard_step
from spibatch.emc.types import PixelSet, Rotations, Shard, StepState, finish
from spibatch.errors import InputError
from spibatch.io.background import background_from_photons, read_background, write_background
from spibatch.photons import Photons
from spibatch.sim.background import add_background, background_scales, radial_background

SHELLS = (3, 5, 7, 9, 10.5)     # voxel radii: the model's shells from the beam stop to the detector's edge


@pytest.fixture(scope="module")
def with_background():
    """400 frames (~1500 particle photons each, at rotations of num_div 2) with and without ~600 background
    photons; returns a dict of detector, truth (M, M, M) photons, rotations, the frames with and without the
    background, the background (num_pix,) and the true per-frame levels (400,)."""
    from spibatch.kernels.emc_cpu import views_by_rotation
    from spibatch.sim.scattering import intensity, structure_factor
    from spibatch.sim.structure import Atoms

    detector = Geometry(detector_pixels=24, pixel_size_m=1e-3, detector_distance_m=0.1, wavelength_m=1e-10,
                        beamstop_radius_pixels=2).detector()
    m = detector.model_size()
    rng = np.random.default_rng(3)
    centres = ([0, 0, 0], [13, 0, 0], [0, 13, 0], [0, 0, 14.0])
    points = np.concatenate([np.add(c, rng.normal(scale=3.0, size=(150, 3))) for c in centres]) * 1e-10
    atoms = Atoms(points, np.full(len(points), 6, np.int32), np.ones(len(points)), np.zeros(len(points)))
    truth = intensity(structure_factor(atoms, m, detector.voxel_size_per_m))
    pixels, rotations = PixelSet.from_detector(detector), Rotations.refined_600_cell(2)
    views = np.empty((len(rotations), len(pixels.q)), np.float32)
    views_by_rotation(truth.astype(np.float32).ravel(), m, rotations.matrices, rotations.mode,
                      pixels.q.T.astype(np.float32), pixels.corr.astype(np.float32), views, np.empty(len(rotations)))
    scale = 1500 / views[:, :pixels.num_used].sum(axis=1).mean()
    true_rot = rng.integers(0, len(rotations), 400)
    dense = np.zeros((400, detector.num_pix), np.int64)
    rows = np.flatnonzero(pixels.index_of >= 0)
    dense[:, rows[np.argsort(pixels.index_of[rows])]] = rng.poisson(views[true_rot] * scale)
    clean = Photons.from_dense(dense)
    background = radial_background(detector, 600.0)
    levels = background_scales(400, 0.5, 1.5, seed=4)
    return {"detector": detector, "truth": truth * scale, "rotations": rotations, "clean": clean,
            "photons": add_background(clean, background, levels, seed=5), "background": background,
            "levels": levels}


def shell_bias(model: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per shell of SHELLS: sum(model) / sum(truth) - 1."""
    m = truth.shape[0]
    radius = np.linalg.norm(np.indices(truth.shape) - (m - 1) / 2, axis=0)
    return np.array([model[(radius >= a) & (radius < b)].sum() / truth[(radius >= a) & (radius < b)].sum() - 1
                     for a, b in zip(SHELLS[:-1], SHELLS[1:])])


def emc_from_truth(case, photons: Photons, background: np.ndarray | None, iterations: int = 12):
    """EMC (beta 1, scales fitted) from the truth: (model, fitted background levels or None)."""
    pixels = PixelSet.from_detector(case["detector"], background=background)
    shard = Shard.from_photons(photons, pixels)
    nf = photons.num_frames
    model, scales = case["truth"].copy(), np.ones(nf)
    levels = None if background is None else np.ones(nf)
    for iteration in range(1, iterations + 1):
        total = shard_step(model, case["rotations"], pixels, shard, StepState(iteration, np.ones(nf), scales, levels))
        model, scales, _ = finish(total, model, True, False, pixels.background_sum)
        if background is not None:
            levels = total.frames["background_scale"]
    return model, levels


def test_the_background_biases_the_model_without_it_and_not_with_it(with_background):
    """Measured (12 iterations; bias per shell from r = 3 to the edge, minus that of EMC on the same frames
    without background): without the background -0.09 +0.02 +0.22 +1.09 (the faint outer shells take the
    background in), with it +0.02 +0.02 +0.04 +0.17; the fitted levels correlate with the true ones at 0.95."""
    case = with_background
    reference = shell_bias(emc_from_truth(case, case["clean"], None)[0], case["truth"])   # EMC's own, no background
    blind = shell_bias(emc_from_truth(case, case["photons"], None)[0], case["truth"]) - reference
    aware_model, levels = emc_from_truth(case, case["photons"], case["background"])
    aware = shell_bias(aware_model, case["truth"]) - reference
    assert blind[2] > 0.12 and blind[3] > 0.6                       # biased without the background
    assert np.all(np.abs(aware[:3]) < 0.06) and abs(aware[3]) < 0.3  # within a few percent with it
    assert np.all(np.abs(aware) < np.abs(blind) / 3 + 0.03)
    assert np.corrcoef(levels, case["levels"])[0, 1] > 0.9
    assert abs(levels.mean() - 1.0) < 1e-9                           # the file gives the level: mean 1


def test_the_background_step_is_exact_em_where_the_merge_is_exact():
    """With one rotation (the identity) and pixels on voxel centres the merge's splat is exact, so an iteration
    must be one EM step of the Poisson mixture particle + level x background, the levels then divided by their
    mean (the file gives the level): the same expected photons ``W_t + b_d B_t`` as that step written here by
    hand, and a marginal likelihood that never decreases (at the fixed point the unconstrained EM's: the split
    between the model and the levels' common part is a gauge, W + c B and b - c give the same photons).  (On real grids the splat is approximate, and the likelihood of the
    iterations can drift down from the truth: measured 2058 -> 2047 per frame on the case above.)"""
    rng = np.random.default_rng(0)
    m, c = 11, 5
    xy = np.array([(x, y, 0) for x in range(-4, 5) for y in range(-4, 5) if x * x + y * y >= 2], float)
    idx = tuple((xy.astype(int) + c).T)
    w_true, bg = rng.gamma(2.0, 3.0, len(xy)), 1.0 + 0.5 * rng.random(len(xy))
    nf = 300
    dense = rng.poisson(w_true[None] + rng.uniform(0.5, 1.5, nf)[:, None] * bg[None])
    pixels = PixelSet(np.ascontiguousarray(xy), len(xy), np.arange(len(xy), dtype=np.int32), np.ones(len(xy)), bg)
    rotations = Rotations(np.array([[1.0, 0, 0, 0]]), np.eye(3)[None].copy(), np.array([1.0]))
    shard = Shard.from_photons(Photons.from_dense(dense), pixels)

    def expected(w, b):
        return w[None] + b[:, None] * bg[None]

    def marginal(w, b):
        lam = expected(w, b)
        return float((dense * np.log(lam) - lam).sum())

    model = np.zeros((m, m, m))
    model[idx] = w_true
    levels, w, b = np.ones(nf), w_true.copy(), np.ones(nf)
    before = marginal(w, b)
    for iteration in range(1, 16):
        total = shard_step(model, rotations, pixels, shard, StepState(iteration, np.ones(nf), np.ones(nf), levels))
        model, _, _ = finish(total, model, False, False, pixels.background_sum, True)
        levels = total.frames["background_scale"]
        lam = expected(w, b)                            # the hand-written EM step
        share = dense * w[None] / lam
        w, b = share.sum(0) / nf, (dense - share).sum(1) / bg.sum()
        b /= b.mean()                                   # the file's level (what finish does)
        np.testing.assert_allclose(expected(model[idx], levels), expected(w, b), rtol=2e-4)
        now = marginal(model[idx], levels)
        assert now >= before - 1e-9 * abs(before)
        before = now
    assert abs(levels.mean() - 1.0) < 1e-9


def test_without_a_background_the_step_is_unchanged(with_background):
    """The background branch is taken only with a background: ``background=None`` gives the same sums as
    before, bit for bit (same kernels); a zero background gives the same model to float32 rounding."""
    case = with_background
    nf = 400
    plain = PixelSet.from_detector(case["detector"])
    zero = PixelSet.from_detector(case["detector"], background=np.zeros(case["detector"].num_pix))
    state = StepState(1, np.ones(nf), np.ones(nf))
    a = shard_step(case["truth"], case["rotations"], plain, Shard.from_photons(case["photons"], plain), state)
    b = shard_step(case["truth"], case["rotations"], plain, Shard.from_photons(case["photons"], plain),
                   StepState(1, np.ones(nf), np.ones(nf), np.ones(nf)))   # levels without a background: ignored
    np.testing.assert_array_equal(a.numerator, b.numerator)
    assert "particle_counts" not in a.frames
    c = shard_step(case["truth"], case["rotations"], zero, Shard.from_photons(case["photons"], zero),
                   StepState(1, np.ones(nf), np.ones(nf), np.ones(nf)))
    np.testing.assert_allclose(c.numerator, a.numerator, rtol=2e-3, atol=1e-6 * a.numerator.max())
    np.testing.assert_allclose(c.frames["particle_counts"], a.frames["counts"], rtol=1e-5)


def test_background_from_empty_frames(with_background, tmp_path):
    """The helper's mean of empty frames is the background (to Poisson noise), and it reads back."""
    from spibatch.io.dragonfly import write_photons

    case = with_background
    empty = add_background(Photons.from_dense(np.zeros((2000, case["detector"].num_pix), np.int64)),
                           case["background"], np.ones(2000), seed=9)
    write_photons(tmp_path / "empty.h5", empty)
    mean = background_from_photons(tmp_path / "empty.h5")
    assert abs(mean.sum() / case["background"].sum() - 1) < 0.01
    np.testing.assert_allclose(mean, case["background"], atol=5 * np.sqrt(case["background"].max() / 2000))
    write_background(tmp_path / "bg.h5", mean)
    np.testing.assert_array_equal(read_background(tmp_path / "bg.h5", case["detector"].num_pix), mean)


def test_the_background_command_overwrites_nothing(tmp_path):
    """`spibatch background IN -o OUT`: OUT its own input, an existing file or a folder is refused with one line
    (exit 2) and left as it was -- once it wrote over the photons file it was reading."""
    from spibatch.io.dragonfly import write_photons

    photons = tmp_path / "empty.h5"
    write_photons(photons, Photons.from_dense(np.ones((20, 16), np.int64)))
    earlier = tmp_path / "earlier.h5"
    earlier.write_bytes(b"an earlier result")
    (tmp_path / "folder").mkdir()
    before = photons.read_bytes()
    for out, words in ((photons, "is the photons file it would read"), (earlier, "exists: nothing is overwritten"),
                       (tmp_path / "folder", "is a directory")):
        done = subprocess.run([sys.executable, "-m", "spibatch", "background", str(photons), "-o", str(out)],
                              capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert photons.read_bytes() == before and earlier.read_bytes() == b"an earlier result"
    for name in ("bg.h5", "bg.npy"):        # a .npy name gets a .npy file (it was HDF5 that emc then refused)
        done = subprocess.run([sys.executable, "-m", "spibatch", "background", str(photons), "-o",
                               str(tmp_path / name)], capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        np.testing.assert_array_equal(read_background(tmp_path / name, 16), np.ones(16))
    assert np.load(tmp_path / "bg.npy").shape == (16,)


@pytest.mark.parametrize("values, words", [
    (np.ones(10), "10 values, but the detector has"),
    (-1.0, "negative"),
    (np.nan, "NaN or infinite"),
    (1e300, "above 1e\\+06 photons per pixel"),
])
def test_a_bad_background_is_one_line_before_any_work(emc_small, tmp_path, values, words):
    from spibatch.detector import Detector

    num_pix = Detector.read(emc_small["detector"]).num_pix
    if np.ndim(values) == 0:
        values = np.full(num_pix, values)
    np.save(tmp_path / "bg.npy", values)
    with pytest.raises(InputError, match=words) as caught:
        driver.check_inputs(settings(background_file=tmp_path / "bg.npy"), emc_small["photons"],
                            emc_small["detector"])
    assert caught.value.field == "emc.background_file" and "bg.npy" in str(caught.value)
    assert "\n" not in str(caught.value) and not (tmp_path / "out").exists()


def test_a_background_image_must_have_the_detectors_shape(tmp_path):
    """A detector of 32 x 32 pixels: a (16, 64) or (4, 16, 16) background was raveled silently; a flat array (in
    pixel order) and the detector's own shape (also with a leading 1) are read."""
    values = np.arange(1024, dtype=np.float64) * 1e-3
    for shape in ((1024,), (32, 32), (1, 32, 32)):
        np.save(tmp_path / "ok.npy", values.reshape(shape))
        np.testing.assert_array_equal(read_background(tmp_path / "ok.npy", 1024, shape=(32, 32)), values)
    for shape in ((16, 64), (4, 16, 16)):
        np.save(tmp_path / "bad.npy", values.reshape(shape))
        with pytest.raises(InputError, match=f"a {' x '.join(map(str, shape))} array, but the detector's pixels "
                                             "form 32 x 32"):
            read_background(tmp_path / "bad.npy", 1024, shape=(32, 32))
    for shape in ((1, 32, 32), (32, 32)):     # a one-module detector's (modules, ss, fs) = (1, 32, 32)
        np.save(tmp_path / "one.npy", values.reshape(shape))
        np.testing.assert_array_equal(read_background(tmp_path / "one.npy", 1024, shape=(1, 32, 32)), values)


def test_a_start_model_is_leveled_to_the_particles_photons(with_background):
    """With a known background the frames' photons hold the background's too: the truth (1500 particle photons a
    view) leveled to all of them was made ~1.25x too bright, and oscillated; to the particle's it stays itself."""
    from types import SimpleNamespace

    from spibatch.emc.step import leveled

    case = with_background
    pixels = PixelSet.from_detector(case["detector"], background=case["background"])
    used = (pixels.index_of >= 0) & (pixels.index_of < pixels.num_used)      # as EMC counts a frame's photons
    counts = case["photons"].to_dense()[:, used].sum(axis=1).mean()
    assert counts > 1.2 * 1500
    start = leveled(case["truth"], SimpleNamespace(pixels=pixels, rotations=case["rotations"]), counts, say=False)
    assert start.sum() / case["truth"].sum() == pytest.approx(1.0, abs=0.05)


def test_a_backgrounds_far_tails_are_taken_as_zero(tmp_path, caplog):
    """Values below 1e-30 photons a frame (a modelled background's tails; 5e-324 everywhere made every frame's
    background scale NaN) are read as 0, with one warning."""
    import logging

    values = np.array([0.5, 5e-324, 1e-40, 0.0, 2e-30])
    np.save(tmp_path / "bg.npy", values)
    with caplog.at_level(logging.WARNING, logger="spibatch"):
        read = read_background(tmp_path / "bg.npy", 5)
    np.testing.assert_array_equal(read, [0.5, 0.0, 0.0, 0.0, 2e-30])
    assert "2 values below 1e-30 photons per pixel a frame taken as 0" in caplog.text


def small_background(emc_small, folder) -> str:
    """A background for the small set: 5 % of its mean photons per pixel, as a file."""
    path = folder / "bg.h5"
    write_background(path, 0.05 * background_from_photons(emc_small["photons"]) + 1e-4)
    return str(path)


def test_in_process_and_tasks_give_the_same_model_with_a_background(emc_small, tmp_path, one_thread):  # noqa: F811
    cfg = settings(iterations=2, background_file=small_background(emc_small, tmp_path))
    inputs = (emc_small["photons"], emc_small["detector"])
    driver.run_emc(cfg, *inputs, tmp_path / "in-process", executor=InProcess())
    with ThreadPoolExecutor(max_workers=2) as pool:
        driver.run_emc(cfg, *inputs, tmp_path / "tasks", executor=Tasks(pool.submit, tmp_path / "tasks" / "htc"))
    with h5py.File(tmp_path / "in-process" / "output_002.h5") as a, h5py.File(tmp_path / "tasks" / "output_002.h5") as b:
        np.testing.assert_array_equal(a["intensity"][()], b["intensity"][()])
        np.testing.assert_array_equal(a["background_scale"][()], b["background_scale"][()])
        assert a["background_scale"].shape == (240,) and abs(a["background_scale"][()].mean() - 1) < 1e-9
    with h5py.File(tmp_path / "tasks" / "checkpoint.h5") as f:
        assert f["background_scales"].shape == (240,)


@pytest.mark.mpi
def test_two_mpi_ranks_give_the_one_rank_model_with_a_background(emc_small, emc_config, tmp_path):
    import shutil

    from test_emc_mpi import TOLERANCE, run_env

    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("mpirun not found")
    pytest.importorskip("mpi4py")
    config = emc_config(tmp_path, iterations=2, frames_per_shard=60,
                        background_file=small_background(emc_small, tmp_path))
    command = [sys.executable, "-m", "spibatch", "emc", str(config)]
    two = subprocess.run([mpirun, "-n", "2", "--oversubscribe", *command, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300, env=run_env())
    assert two.returncode == 0, two.stdout + two.stderr
    one = subprocess.run([*command, "--out", str(tmp_path / "one")], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300, env=run_env())
    assert one.returncode == 0, one.stderr
    metrics = [json.loads(line) for line in (tmp_path / "two" / "emc" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["mpi_ranks"] == 2 and "background_scale_mean" in metrics[-1]
    with h5py.File(tmp_path / "one" / "emc" / "checkpoint.h5") as a, h5py.File(tmp_path / "two" / "emc" / "checkpoint.h5") as b:
        assert np.abs(b["model"][()] - a["model"][()]).max() <= TOLERANCE * np.abs(a["model"][()]).max()
        np.testing.assert_allclose(a["background_scales"][()], b["background_scales"][()], rtol=TOLERANCE)


@pytest.mark.parametrize("beta", [0.05, 1.0])            # many rotations kept per frame / a few
@pytest.mark.parametrize("chunks", [None, (150, 96)])     # all at once / 3 chunks of frames x 5 blocks of rotations
def test_the_gpu_step_gives_the_cpu_sums_with_a_background(with_background, xp, beta, chunks):
    """The GPU path with a background (kernels views, photon_log_likelihood_bg, weighted_photons_bg,
    particle_photons; on numpy their twins) gives the CPU step's sums, particle_counts included, to float32
    rounding; every launch matches the kernels' C signatures."""
    from test_gpu_emc import SignatureCheckingTwin, assert_same_sums, device_of

    from spibatch.emc.gpu_step import gpu_shard_step

    case = with_background
    pixels = PixelSet.from_detector(case["detector"], background=case["background"])
    shard = Shard.from_photons(case["photons"].select(20, 400), pixels, 20)     # a shard not starting at frame 0
    rng = np.random.default_rng(7)
    state = StepState(2, np.full(400, beta), rng.uniform(0.8, 1.2, 400), rng.uniform(0.5, 1.5, 400))
    cpu = shard_step(case["truth"], case["rotations"], pixels, shard, state)
    frame_chunk, rotation_block = chunks or (None, None)
    device = device_of(xp)
    if xp.name == "numpy":
        class Checked:             # the twins, each launch checked against the parsed C signature
            xp = np
            launch_runtime = SignatureCheckingTwin()

            def activate(self):
                return None
        device = Checked()
    gpu = gpu_shard_step(case["truth"], case["rotations"], pixels, shard, state, device=device,
                         frame_chunk=frame_chunk, rotation_block=rotation_block)
    assert_same_sums(cpu, gpu, kept_tolerance=0 if xp.name == "numpy" else 1)
    np.testing.assert_allclose(gpu.frames["particle_counts"], cpu.frames["particle_counts"], rtol=2e-5)
    assert np.all(gpu.frames["particle_counts"] < gpu.frames["counts"])
    if xp.name == "numpy":
        calls = device.launch_runtime.calls
        assert calls["views"] > 0 and calls["photon_log_likelihood_bg"] > 0 and calls["particle_photons"] > 0
        assert "log_views" not in calls and "weighted_photons" not in calls
    model, scales, _ = finish(gpu, case["truth"], True, False, pixels.background_sum)
    reference, ref_scales, _ = finish(cpu, case["truth"], True, False, pixels.background_sum)
    np.testing.assert_allclose(gpu.frames["background_scale"], cpu.frames["background_scale"], rtol=1e-4)
    assert np.abs(model - reference).max() <= 1e-4 * reference.max()


def test_an_emc_run_on_the_gpu_twin_with_a_background_matches_the_cpu_run(emc_small, tmp_path):
    """The driver on a GPU device (the numpy twins) with emc.background_file: the CPU run's model and fitted
    background levels (the stage no longer refuses a GPU with a background)."""
    from spibatch.io.results import read_volume
    from spibatch.kernels.device import CPU, Device

    cfg = settings(iterations=2, frames_per_shard=240, background_file=small_background(emc_small, tmp_path))
    out = {}
    for name, device in (("cpu", CPU), ("gpu", Device("gpu", "twin"))):
        paths = driver.run_emc(cfg, emc_small["photons"], emc_small["detector"], tmp_path / name,
                               executor=InProcess(device))
        with h5py.File(tmp_path / name / "output_002.h5") as f:
            out[name] = read_volume(paths["intensity"]), f["background_scale"][()]
    (cpu, cpu_levels), (gpu, gpu_levels) = out["cpu"], out["gpu"]
    assert np.abs(gpu - cpu).max() <= 1e-3 * np.abs(cpu).max()
    np.testing.assert_allclose(gpu_levels, cpu_levels, rtol=1e-3)


def test_the_vectorised_float32_log_is_logf_to_an_ulp():
    """log32 (the background likelihood's log from the float's bits) against float64 log, 1e-30 .. 1e13."""
    import numba

    from spibatch.kernels.emc_cpu_bg import log32

    @numba.njit(fastmath=True)
    def logs(x, out):
        for k in range(x.shape[0]):
            out[k] = log32(x[k])

    x = np.exp(np.random.default_rng(0).uniform(np.log(1e-30), np.log(1e13), 100_000)).astype(np.float32)
    x[:4] = (1.0, 2.0, np.sqrt(2, dtype=np.float32), 1e-30)
    out = np.zeros_like(x)
    logs(x, out)
    exact = np.log(x.astype(np.float64))
    assert np.all(np.abs(out - exact) <= 2.5e-7 * np.maximum(np.abs(exact), 1.0))
