"""Following real EuXFEL run folders: AGIPD 1M sequence files written by EXtra-data's own example writer while
the follower reads them with EXtra-data, the geometry from EXtra-geom, the run closed by its overview file;
a geometry that does not fit; a module missing, a truncated file, a wrong module shape, repeated trains
(issue 13)."""

from __future__ import annotations

import json
import logging
import os
import threading

import numpy as np
import pytest

pytest.importorskip("extra_data")
extra_geom = pytest.importorskip("extra_geom")

from spibatch import layout  # noqa: E402
from spibatch.detector import Detector  # noqa: E402
from spibatch.errors import InputError  # noqa: E402
from spibatch.stream.euxfel import RunFolderSource  # noqa: E402
from spibatch.stream.follower import Follower, FollowSettings  # noqa: E402
from spibatch.stream.geometry import asic_edges, detector_from_geometry  # noqa: E402
from spibatch.stream.replay import FrameSet, replay  # noqa: E402
from spibatch.stream.replay_writers import write_sequence  # noqa: E402
from spibatch.stream.shards import ChunkShards  # noqa: E402
from stream_helpers import chunk_ids, hit_ids  # noqa: E402

GEOM = extra_geom.AGIPD_1MGeometry.example()
AGIPD = detector_from_geometry(GEOM, wavelength_m=2e-10, distance_m=0.7)
SETTINGS = FollowSettings(adu_per_photon=10.0, threshold=1000, flush_s=0.1, idle_timeout_s=60)


def agipd_frames(num_trains: int, pulses: int = 2, seed: int = 0) -> FrameSet:
    return FrameSet.synthetic(AGIPD.shape, num_trains, pulses, hit_fraction=0.5, photons_per_hit=4000,
                              background_photons=20, adu_per_photon=10.0, noise_adu=1.0, seed=seed)


def test_detector_from_extra_geom_keeps_modules_and_masks():
    assert AGIPD.shape == (16, 512, 128) and AGIPD.num_pix == 16 * 512 * 128
    positions = GEOM.get_pixel_positions().reshape(-1, 3)
    r = np.sqrt((positions[:, :2] ** 2).sum(axis=1) + 0.7 ** 2)
    two_sin_theta_over_lambda = np.sqrt(2 - 2 * 0.7 / r) / 2e-10      # |q| = 2 sin(theta) / lambda
    q_per_m = np.linalg.norm(AGIPD.q_per_m, axis=1)
    assert np.allclose(q_per_m, two_sin_theta_over_lambda, rtol=1e-9)
    assert np.allclose(AGIPD.corr.max(), 2e-4 ** 2 / 0.7 ** 2, rtol=0.02)   # sr at the beam, times ~1
    bad = np.zeros(AGIPD.shape, bool)
    bad[3, 100, 7] = True
    masked = detector_from_geometry(GEOM, wavelength_m=2e-10, distance_m=0.7, bad_pixels=bad, mask_asic_edges=True,
                                    voxel_size_per_m=4 * AGIPD.voxel_size_per_m)
    assert masked.mask.reshape(AGIPD.shape)[3, 100, 7] == 2
    assert (masked.mask == 2).sum() == (bad | asic_edges(GEOM, AGIPD.shape)).sum() == 16 * 8 * 380 + 1
    assert abs(masked.model_size() - (AGIPD.model_size() // 4)) <= 2


def test_follow_an_agipd_run_while_it_is_written(tmp_path):
    frames = agipd_frames(6)
    run, out = tmp_path / "raw" / "r0001", tmp_path / "follow"
    run.mkdir(parents=True)
    writer = threading.Thread(target=replay, args=(frames, 4.0, "euxfel-run", run), kwargs={"trains_per_file": 2})
    source = RunFolderSource(run, AGIPD.shape, "AGIPD1M", settle_s=0.3)
    writer.start()
    summary = Follower(source, AGIPD, out, SETTINGS).run()
    writer.join()
    assert summary["end_reason"].startswith("run closed") and summary["bad_trains"] == {}
    assert summary["frames_seen"] == frames.num_frames and summary["hits"] == frames.is_hit.sum()
    assert sorted(chunk_ids(out)) == sorted(hit_ids(frames))
    lines = [json.loads(line) for line in open(out / layout.FOLLOW_INDEX)]
    last_file = max(p.stat().st_mtime for p in run.glob("*-S00002.h5"))
    assert lines[0]["time"] < last_file, "the first hits were committed before the run was complete"
    specs = ChunkShards(out).poll()
    assert [s.first_frame for s in specs] == list(np.cumsum([0] + [s.num_frames for s in specs[:-1]]))
    assert Detector.read(out / layout.DETECTOR).shape == AGIPD.shape


@pytest.mark.parametrize("geometry", [extra_geom.DSSC_1MGeometry.example(), extra_geom.JUNGFRAUGeometry.example(2)])
def test_a_run_whose_geometry_does_not_match_stops_before_anything_is_written(tmp_path, geometry):
    run = tmp_path / "r0002"
    run.mkdir()
    write_sequence(agipd_frames(1), range(1), run, 0)
    detector = detector_from_geometry(geometry, wavelength_m=2e-10, distance_m=0.7)
    with pytest.raises(InputError, match="geometry"):
        Follower(RunFolderSource(run, detector.shape, "AGIPD1M"), detector, tmp_path / "follow").run()
    assert not (tmp_path / "follow").exists()


def test_bad_sequence_files_are_skipped_counted_and_named(tmp_path, caplog):
    frames = agipd_frames(12, seed=5)
    run, out = tmp_path / "r0003", tmp_path / "follow"
    run.mkdir()
    for seq in range(6):
        write_sequence(frames, range(2 * seq, 2 * seq + 2), run, seq)
    (run / "CORR-R0001-AGIPD03-S00001.h5").unlink()                    # a module missing for 2 trains
    truncated = run / "CORR-R0001-AGIPD05-S00002.h5"                   # a truncated file
    os.truncate(truncated, truncated.stat().st_size // 3)
    wrong = FrameSet.synthetic((16, 256, 128), 12, 2)                  # module 7 of the wrong shape
    (tmp_path / "wrong").mkdir()
    write_sequence(wrong, range(6, 8), tmp_path / "wrong", 3)
    os.replace(tmp_path / "wrong" / "CORR-R0001-AGIPD07-S00003.h5", run / "CORR-R0001-AGIPD07-S00003.h5")
    for path in run.glob("*-S00004.h5"):                               # sequence 4 repeats sequence 0's trains
        path.unlink()
    write_sequence(frames, range(0, 2), run, 4)   # (EXtra-data refuses an overview of such a run: idle ends it)
    settings = FollowSettings(adu_per_photon=10.0, threshold=1000, flush_s=0.1, idle_timeout_s=1.5)
    with caplog.at_level(logging.WARNING, logger="spibatch"):
        summary = Follower(RunFolderSource(run, AGIPD.shape, "AGIPD1M", settle_s=0), AGIPD, out, settings).run()
    assert summary["end_reason"] == "no new train for 1.5 s"
    assert summary["bad_trains"] == {"module missing": 6, "repeated or non-monotonic train ID": 2}
    text = caplog.text
    assert "train 10002: image.data: modules [3] missing (module 3: no file in this sequence)" in text
    assert "CORR-R0001-AGIPD05-S00002.h5: train unknown: file: sequence 2: cannot be read" in text
    assert "train 10005: image.data: modules [5] missing (CORR-R0001-AGIPD05-S00002.h5 unreadable)" in text
    assert "SPB_DET_AGIPD1M-1/CORR/7CH0:output: trains 10006..10007 (2): image.data: module data of shape " \
           "(256, 128), expected (512, 128)" in text
    assert "trains 10000..10001 (2): train_id: not above the last train taken (10007)" in text
    good = [0, 1, 10, 11]   # (sequence 4 had trains 8, 9: its files were replaced)
    assert sorted(chunk_ids(out)) == sorted(hit_ids(frames, good))
    assert summary["trains"] == len(good) and summary["frames_seen"] == 2 * len(good)


def test_raw_agipd_frames_are_refused_before_anything_is_written(tmp_path):
    from extra_data.tests.mockdata import write_file
    from extra_data.tests.mockdata.detectors import AGIPDModule

    run = tmp_path / "raw"
    run.mkdir()
    for m in range(16):
        write_file(str(run / f"RAW-R0001-AGIPD{m:02d}-S00000.h5"), [AGIPDModule(f"SPB_DET_AGIPD1M-1/DET/{m}CH0",
                                                                                 frames_per_train=2)],
                   ntrains=2, chunksize=2, format_version="1.0")
    with pytest.raises(InputError, match="raw data: each frame is"):
        Follower(RunFolderSource(run, AGIPD.shape, "AGIPD1M"), AGIPD, tmp_path / "follow").run()
    assert not (tmp_path / "follow").exists()


def test_a_module_short_of_some_trains(tmp_path, caplog):
    """Inside one sequence: module 3 has no frames for one train, module 4 fewer frames than the rest for
    another: those trains are skipped and named, the others kept."""
    import h5py

    frames = agipd_frames(3, seed=2)
    run = tmp_path / "r0004"
    run.mkdir()
    write_sequence(frames, range(3), run, 0)
    for module, train, count in ((3, 0, 0), (4, 2, 1)):
        with h5py.File(run / f"CORR-R0001-AGIPD{module:02d}-S00000.h5", "r+") as f:
            f[f"INDEX/SPB_DET_AGIPD1M-1/CORR/{module}CH0:output/image/count"][train] = count
    with caplog.at_level(logging.WARNING, logger="spibatch"):
        summary = Follower(RunFolderSource(run, AGIPD.shape, "AGIPD1M", settle_s=0), AGIPD, tmp_path / "follow",
                           FollowSettings(adu_per_photon=10.0, threshold=1000, idle_timeout_s=1)).run()
    assert summary["bad_trains"] == {"module missing": 1, "modules disagree": 1}
    assert "train 10000: image.data: modules [3] missing (module 3: no data for this train)" in caplog.text
    assert "train 10002: image.data: frames per module differ: [1, 2]" in caplog.text
    assert set(chunk_ids(tmp_path / "follow")) == hit_ids(frames, [1])


def test_geometry_from_a_crystfel_file(tmp_path):
    from spibatch.stream.geometry import geometry_from_file

    GEOM.write_crystfel_geom(str(tmp_path / "agipd.geom"), photon_energy=6000, clen=0.0, adu_per_ev=1.0)
    detector = detector_from_geometry(geometry_from_file(tmp_path / "agipd.geom", "AGIPD1M"), wavelength_m=2e-10,
                                      distance_m=0.7)
    assert detector.shape == AGIPD.shape and np.allclose(detector.q_voxels, AGIPD.q_voxels, atol=1e-6)
    (tmp_path / "bad.geom").write_text("this is not a geometry\n")
    with pytest.raises(InputError, match="bad.geom: geometry: EXtra-geom cannot read it"):
        geometry_from_file(tmp_path / "bad.geom")
