"""Patterns: orientation convention, Poisson sampling, scale, memory, determinism, end to end vs Dragonfly."""

from __future__ import annotations

import filecmp
import gc
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from spibatch.config import Geometry, Pipeline, Simulation, from_dragonfly_ini
from spibatch.detector import MASK_EXCLUDED
from spibatch.photons import Photons
from spibatch.sim import patterns
from spibatch.stages.simulate import simulate_to
from spibatch.sim.patterns import (Slicer, fluence_factors, fluence_scale, mean_photons_scale,
                                   random_quaternions, rotation_matrices, sample_counts,
                                   simulate_patterns, sparse_photons)
from spibatch.sim.scattering import intensity, structure_factor
from spibatch.sim.structure import Atoms

REPO = Path(__file__).resolve().parents[1]
TINY = Geometry(detector_pixels=24, pixel_size_m=1e-3, detector_distance_m=0.1, photon_energy_ev=6000,
                beamstop_radius_pixels=2)


class CountingWriter:
    """Stands in for PhotonsWriter: keeps only each block's size and photons per frame."""

    def __init__(self):
        self.sizes: list[int] = []
        self.counts: list[np.ndarray] = []

    def append(self, photons: Photons) -> None:
        self.sizes.append(photons.num_frames)
        self.counts.append(photons.frame_counts())


@pytest.fixture(scope="module")
def tiny_detector():
    return TINY.detector()


@pytest.fixture(scope="module")
def fringe_volume(tiny_detector):
    """|F|^2 of two carbons 60 A apart along model x, on the tiny detector's model grid."""
    pair = Atoms(positions_m=np.array([[-30e-10, 0, 0], [30e-10, 0, 0]]), atomic_numbers=np.array([6, 6]),
                 occupancy=np.ones(2), b_factor_a2=np.zeros(2))
    size = tiny_detector.model_size()
    return intensity(structure_factor(pair, size, tiny_detector.voxel_size_per_m, use_b_factors=False))


def test_quaternions_are_unit_canonical_and_give_rotations():
    quats = random_quaternions(500, np.random.default_rng(3))
    assert quats.shape == (500, 4) and np.all(quats[:, 0] >= 0)
    np.testing.assert_allclose((quats ** 2).sum(axis=1), 1, rtol=1e-12)
    mats = rotation_matrices(quats)
    np.testing.assert_allclose(mats @ mats.transpose(0, 2, 1), np.broadcast_to(np.eye(3), mats.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(mats), 1, rtol=1e-12)
    # uniform: the rotated z axis has no preferred direction
    assert np.abs((mats @ [0, 0, 1]).mean(axis=0)).max() < 0.1
    # (w, x, y, z) = (cos 45, 0, 0, sin 45) is +90 degrees about z: x -> y
    np.testing.assert_allclose(rotation_matrices([[np.sqrt(0.5), 0, 0, np.sqrt(0.5)]])[0] @ [1, 0, 0],
                               [0, 1, 0], atol=1e-12)


def test_slicer_samples_intensity_at_r_times_q(fringe_volume, tiny_detector):
    slicer = Slicer(fringe_volume, tiny_detector, tiny_detector.corr)
    mats = rotation_matrices(random_quaternions(3, np.random.default_rng(5)))
    c = (fringe_volume.shape[0] - 1) // 2
    q = tiny_detector.q_voxels[slicer.pixels]
    expected = np.stack([map_coordinates(fringe_volume, (m @ q.T) + c, order=1, prefilter=False) for m in mats])
    expected *= tiny_detector.corr[slicer.pixels]
    np.testing.assert_allclose(slicer(mats), expected, rtol=2e-5, atol=1e-6 * expected.max())
    assert not np.isin(np.flatnonzero(tiny_detector.mask == MASK_EXCLUDED), slicer.pixels).any()


def test_fringes_turn_with_the_frame(fringe_volume, tiny_detector):
    """Model x fringes lie along the detector's slow axis unrotated, along the fast axis after 90 deg about z."""
    slicer = Slicer(fringe_volume, tiny_detector)
    n = tiny_detector.shape[0]
    image = np.zeros((2, n * n))
    turn = [np.sqrt(0.5), 0, 0, np.sqrt(0.5)]
    image[:, slicer.pixels] = slicer(rotation_matrices([[1, 0, 0, 0], turn]))
    straight, turned = image.reshape(2, n, n)
    row = 3                                      # lines that miss the beam stop
    assert np.ptp(straight[:, row]) > 5 * np.ptp(straight[row, :])   # varies with the slow index
    assert np.ptp(turned[row, :]) > 5 * np.ptp(turned[:, row])       # varies with the fast index


def test_sample_counts_is_poisson_and_skips_zero_rates():
    rng = np.random.default_rng(11)
    rates = np.tile(np.array([0.0, 0.05, 0.5, 2.0, 0.0, 7.0], np.float32), (40000, 1))
    flat, counts = sample_counts(rates, rng)
    dense = np.zeros(rates.size, np.int64)
    dense[flat] = counts
    dense = dense.reshape(rates.shape)
    assert dense[:, [0, 4]].sum() == 0
    mean, var = dense.mean(axis=0)[[1, 2, 3, 5]], dense.var(axis=0)[[1, 2, 3, 5]]
    np.testing.assert_allclose(mean, [0.05, 0.5, 2.0, 7.0], rtol=0.03)
    np.testing.assert_allclose(var, [0.05, 0.5, 2.0, 7.0], rtol=0.05)    # Poisson: variance = mean
    # and the sparse layout equals Photons.from_dense of the same counts
    used = np.array([1, 3, 4, 8, 9, 11])
    full = np.zeros((rates.shape[0], 12), np.int64)
    full[:, used] = dense
    ours, reference = sparse_photons(flat, counts, rates.shape[0], used, 12), Photons.from_dense(full)
    for name in ("ones_indptr", "ones_index", "multi_indptr", "multi_index", "multi_count"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(reference, name))


def test_fluence_factors_and_absolute_scale():
    rng = np.random.default_rng(2)
    factors = fluence_factors(200000, 0.3, rng)
    assert factors.mean() == pytest.approx(1, abs=0.005) and factors.std() == pytest.approx(0.3, rel=0.02)
    assert factors.min() > 0
    np.testing.assert_array_equal(fluence_factors(10, 0.0, rng), np.ones(10))
    assert fluence_scale(1e16) == pytest.approx(1e16 * 2.8179403262e-15 ** 2, rel=1e-9)


def test_mean_photons_scale_of_a_flat_intensity(tiny_detector):
    size = tiny_detector.model_size()
    used = tiny_detector.mask != MASK_EXCLUDED
    scale = mean_photons_scale(np.full((size,) * 3, 3.0), tiny_detector, 500.0)
    assert scale * 3.0 * tiny_detector.corr[used].sum() == pytest.approx(500.0, rel=1e-9)


def test_blocks_never_exceed_chunk_and_memory_does_not_grow(fringe_volume, tiny_detector, monkeypatch):
    rows, calls = [], []
    real_call = Slicer.__call__

    def recording(self, rotations):
        rows.append(len(rotations))
        return real_call(self, rotations)

    monkeypatch.setattr(Slicer, "__call__", recording)
    monkeypatch.setattr(Photons, "from_dense", classmethod(lambda cls, counts: calls.append(counts.shape)))
    monkeypatch.setattr(patterns, "SLICE_PIXELS", 40 * tiny_detector.num_pix)
    peaks = {}
    for num in (600, 4800, 600, 4800):                  # the first pass warms up imports and caches
        writer = CountingWriter()
        gc.collect()
        tracemalloc.start()
        result = simulate_patterns(fringe_volume, tiny_detector, num_patterns=num, scale=1e-4, fluence_jitter=0.1,
                                   seed=4, chunk_frames=100, writer=writer)
        peaks[num] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert sum(writer.sizes) == num == len(result["quaternions"]) and max(writer.sizes) <= 100
        np.testing.assert_array_equal(np.concatenate(writer.counts), result["photons_per_frame"])
    assert max(rows) <= 100 and not calls               # no dense block beyond a slice; no dense frames at all
    # 8x the frames: the peak grows by the per-frame metadata only (quaternion, fluence, count: 48 bytes
    # a frame, + ~9 in this writer), not by anything per pixel (a dense frame here is 2.3 kB)
    assert peaks[4800] - peaks[600] < 4200 * 80, peaks


def _tiny_pipeline(seed: int) -> Pipeline:
    return Pipeline(geometry=TINY, simulation=Simulation(pdb=REPO / "spibatch" / "data" / "1EI7.pdb",
                                                         num_patterns=700, chunk_frames=300, seed=seed,
                                                         fluence_jitter=0.2))


def test_same_seed_gives_identical_files(tmp_path):
    first = simulate_to(_tiny_pipeline(1), tmp_path / "a", show_progress=False)
    second = simulate_to(_tiny_pipeline(1), tmp_path / "b", show_progress=False)
    other = simulate_to(_tiny_pipeline(2), tmp_path / "c", show_progress=False)
    for name in ("photons", "detector", "truth"):
        assert filecmp.cmp(first[name], second[name], shallow=False), name
    assert not filecmp.cmp(first["photons"], other["photons"], shallow=False)
    assert filecmp.cmp(first["detector"], other["detector"], shallow=False)


def test_absolute_fluence_scale(tmp_path):
    from spibatch.io.results import read_result

    fluence = 1e25                                   # photons / m^2 (1e13 per um^2, an XFEL focus)
    pipeline = Pipeline(geometry=TINY, simulation=Simulation(
        pdb=REPO / "spibatch" / "data" / "1EI7.pdb", num_patterns=400, chunk_frames=400,
        mean_photons_per_frame=None, fluence_photons_per_m2=fluence))
    paths = simulate_to(pipeline, tmp_path, show_progress=False)
    datasets, attrs = read_result(paths["truth"])
    assert attrs["photon_scale"] == pytest.approx(fluence * 2.8179403262e-15 ** 2, rel=1e-9)
    # expected photons per frame: scale * sum_p corr_p Ibar(|q_p|); the intensity is |F|^2 in electrons^2
    per_unit_scale = 1.0 / mean_photons_scale(datasets["intensity"].astype(np.float64), TINY.detector(), 1.0)
    expected = attrs["photon_scale"] * per_unit_scale
    assert 5 < expected < 1e5
    assert datasets["photons_per_frame"].mean() == pytest.approx(expected, rel=0.1)


@pytest.fixture(scope="module")
def simulated_4bed(small_dataset, shared_datasets, tmp_path_factory):
    """Dragonfly's small data set, re-simulated by us from 4BED (1000 frames, 1000 photons)."""
    pipeline = Pipeline(geometry=from_dragonfly_ini(small_dataset / "config.ini"),
                        simulation=Simulation(pdb=shared_datasets / "pdb" / "4BED.pdb", num_patterns=1000,
                                              mean_photons_per_frame=1000, chunk_frames=256, seed=1))
    return simulate_to(pipeline, tmp_path_factory.mktemp("sim4bed"), show_progress=False)


def test_mean_photons_match_dragonfly(simulated_4bed):
    from spibatch.io.dragonfly import read_photons
    from spibatch.detector import Detector
    photons = read_photons(simulated_4bed["photons"])
    assert photons.num_frames == 1000 and photons.num_pix == 4096
    assert photons.frame_counts().mean() == pytest.approx(995.9, rel=0.02)       # Dragonfly's photons.emc
    detector = Detector.read(simulated_4bed["detector"])
    excluded = np.flatnonzero(detector.mask == MASK_EXCLUDED)
    assert not np.isin(np.concatenate([photons.ones_index, photons.multi_index]), excluded).any()


def test_truth_matches_dragonfly_intensity_radially(simulated_4bed, small_dataset):
    from spibatch.io.mrc import read_mrc
    from spibatch.io.results import read_result
    from spibatch.sim.scattering import q_magnitude_squared_index

    datasets, attrs = read_result(simulated_4bed["truth"])
    ours = datasets["intensity"].astype(np.float64)
    theirs = np.fromfile(small_dataset / "intensities.bin").reshape(91, 91, 91)
    assert ours.shape == theirs.shape and datasets["quaternions"].shape == (1000, 4)
    radius = np.rint(np.sqrt(q_magnitude_squared_index(91))).astype(int).ravel()
    profile = [np.bincount(radius, v.ravel())[6:31] / np.bincount(radius)[6:31] for v in (ours, theirs)]
    assert np.corrcoef(np.log(profile[0]), np.log(profile[1]))[0, 1] > 0.95
    shell = (radius >= 2) & (radius < 12)                 # same orientation of the particle, low q
    assert np.corrcoef(ours.ravel()[shell], theirs.ravel()[shell])[0, 1] > 0.99
    # electrons: Dragonfly's I(0) is its density's total squared (3.77e6 e: the 10-copy assembly)
    assert np.sqrt(ours[45, 45, 45]) == pytest.approx(np.sqrt(theirs[45, 45, 45]), rel=0.05)
    volume, voxel_a = read_mrc(simulated_4bed["density"])
    assert voxel_a == pytest.approx(attrs["density_voxel_size_m"] * 1e10, rel=1e-6)
    np.testing.assert_array_equal(volume, datasets["density"])          # both [x, y, z]


def test_density_mrc_overlays_the_structure_it_was_made_from(tmp_path):
    """density.mrc (and truth.h5's density_origin_m) place the map where the PDB's atoms are, as ChimeraX
    opens both (the origin was 0: the map sat at the corner, centred on the centre of mass's offset)."""
    import mrcfile

    from spibatch.phasing.compare import density_origin

    atoms = [(40.0, -25.0, 70.0), (52.0, -18.0, 61.0), (45.0, -35.0, 75.0)]
    pdb = tmp_path / "gold.pdb"
    pdb.write_text("".join(f"HETATM{i + 1:5d} AU    AU A{i + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00          AU\n"
                           for i, (x, y, z) in enumerate(atoms)) + "END\n")
    pipeline = Pipeline(geometry=Geometry(detector_pixels=32, pixel_size_m=0.5e-3, detector_distance_m=0.1,
                                          photon_energy_ev=8000, beamstop_radius_pixels=1),
                        simulation=Simulation(pdb=pdb, num_patterns=2, mean_photons_per_frame=100, seed=1))
    paths = simulate_to(pipeline, tmp_path / "sim", show_progress=False)
    with mrcfile.open(paths["density"]) as mrc:
        voxel = float(mrc.voxel_size.x)
        origin = np.array([float(mrc.header.origin[k]) for k in "xyz"])
        volume = np.asarray(mrc.data).transpose(2, 1, 0)            # [x, y, z]
    peak = np.array(np.unravel_index(np.argmax(volume), volume.shape))
    where = origin + peak * voxel
    assert min(np.linalg.norm(where - np.array(a)) for a in atoms) < 1.5 * voxel, (where, voxel)
    assert np.allclose(density_origin(paths["truth"]), origin, atol=1e-3)
