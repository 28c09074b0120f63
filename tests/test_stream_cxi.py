"""Following a folder where CXI files appear: the shared Dragonfly set and a simulated particle replayed as
frames, bad files, a follower process killed mid-run and resumed, EMC taking the chunks as they come
(issue 13)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from spibatch import layout
from spibatch.detector import Detector
from spibatch.io.dragonfly import read_photons, write_detector
from spibatch.photons import Photons
from spibatch.stream.cxifolder import PULSE_IDS, TRAIN_IDS, CxiFolderSource
from spibatch.stream.follower import Follower, FollowSettings
from spibatch.stream.replay import FrameSet, replay, simulated
from spibatch.stream.shards import ChunkShards
from stream_helpers import chunk_ids, hit_ids

REPO = Path(__file__).resolve().parents[1]


def dragonfly_frames(small_dataset, num_hits=120, **kw) -> tuple[FrameSet, Detector]:
    detector = Detector.read(small_dataset / "det_sim.h5")
    detector.shape = (64, 64)
    return FrameSet.from_photons(small_dataset / "photons.emc", (64, 64), num_hits=num_hits, **kw), detector


def followed_photons(out) -> Photons:
    return Photons.concatenate([read_photons(s.photons, s.start, s.stop) for s in ChunkShards(out).poll()])


def test_replayed_dragonfly_set_comes_back_photon_for_photon(small_dataset, tmp_path):
    """Hits of the shared set, 20% among empty frames, with 0.08 photons (2 ADU) of noise, as CXI files written while
    followed: the follower keeps exactly those hits (automatic threshold) and their photons unchanged."""
    frames, detector = dragonfly_frames(small_dataset, hit_fraction=0.2, adu_per_photon=25.0, noise_adu=2.0)
    folder, out = tmp_path / "cxi", tmp_path / "follow"
    writer = threading.Thread(target=replay, args=(frames, 300.0, "cxi-folder", folder), kwargs={"trains_per_file": 6})
    writer.start()
    summary = Follower(CxiFolderSource(folder, (64, 64), settle_s=0.2), detector, out,
                       FollowSettings(adu_per_photon=25.0, flush_s=0.2, idle_timeout_s=2.0)).run()
    writer.join()
    assert summary["frames_seen"] == frames.num_frames and summary["hits"] == 120
    assert sorted(chunk_ids(out)) == sorted(hit_ids(frames))
    original = read_photons(small_dataset / "photons.emc", 0, 120)
    assert np.array_equal(followed_photons(out).to_dense(), original.to_dense() * (detector.mask != 2))
    assert "median" in json.loads((out / layout.FOLLOW_STATUS).read_text())["threshold_rule"]


def test_a_simulated_particle_replayed_with_empty_frames(tmp_path):
    frames, paths = simulated(tmp_path / "simulate", num_hits=60, hit_fraction=0.25, pixels=32, mean_photons=500)
    detector = Detector.read(paths["detector"])
    replay(frames, 1e6, "cxi-folder", tmp_path / "cxi", trains_per_file=4)
    summary = Follower(CxiFolderSource(tmp_path / "cxi", (32, 32), settle_s=0), detector, tmp_path / "follow",
                       FollowSettings(flush_s=0, idle_timeout_s=0.5)).run()
    assert summary["hits"] == 60 and summary["frames_seen"] == 240
    assert np.array_equal(followed_photons(tmp_path / "follow").to_dense(),
                          read_photons(paths["photons"]).to_dense() * (detector.mask != 2))


def test_bad_cxi_files_are_skipped(tmp_path, caplog):
    detector = Detector.flat(16, 1e-3, 0.1, 1e-9)
    folder = tmp_path / "cxi"
    folder.mkdir()
    frames = FrameSet.synthetic((16, 16), 9, 4, hit_fraction=0.5, photons_per_hit=60)
    for k in range(3):
        replay(frames, 1e6, "cxi-folder", folder, trains_per_file=3, start_train=3 * k, stop_train=3 * k + 3)
    truncated = folder / "frames_00001.cxi"
    os.truncate(truncated, truncated.stat().st_size // 2)
    with h5py.File(folder / "frames_00001b.cxi", "w") as f:       # no train IDs: numbered by its place
        f["entry_1/data_1/data"] = np.zeros((2, 16, 16), np.float32)
    (folder / "frames_00001c.cxi").write_bytes(b"not HDF5 at all")
    os.mkfifo(tmp_path / "fifo")                                   # its frames on a FIFO: reading would hang
    with h5py.File(folder / "frames_00001d.cxi", "w") as f:
        f.create_dataset("entry_1/data_1/data", (2, 16, 16), "f4", external=[(str(tmp_path / "fifo"), 0, 2048)])
    os.mkfifo(folder / "frames_00001e.cxi")                        # a FIFO by the name of a file
    with h5py.File(folder / "frames_00001g.cxi", "w") as f:         # 1e7 frames (10 MB deflated), no train IDs: 1 train
        data = f.create_dataset("entry_1/data_1/data", (10_000_000, 16, 16), "f4", chunks=(1024, 16, 16),
                                compression="gzip")
        zeros = zlib.compress(bytes(1024 * 16 * 16 * 4))
        for start in range(0, 10_000_000, 1024):
            data.id.write_direct_chunk((start, 0, 0), zeros)
    with h5py.File(folder / "frames_00001h.cxi", "w") as f:         # 1e9 frames declared, never written (3 kB)
        f.create_dataset("entry_1/data_1/data", (10 ** 9, 16, 16), "f4", chunks=(1024, 16, 16), compression="gzip")
    with h5py.File(folder / "frames_00001f.cxi", "w") as f:         # train IDs that are text
        f["entry_1/data_1/data"] = np.zeros((2, 16, 16), np.float32)
        f[TRAIN_IDS] = np.array([b"a", b"b"])
    with caplog.at_level(logging.WARNING, logger="spibatch"):
        summary = Follower(CxiFolderSource(folder, (16, 16), settle_s=0, retry_s=0), detector, tmp_path / "follow",
                           FollowSettings(threshold=30, flush_s=0, idle_timeout_s=0.5)).run()
    assert summary["bad_trains"] == {"unreadable file": 5, "repeated or non-monotonic train ID": 1,
                                     "unreadable data": 2}
    assert "frames_00001e.cxi: train unknown: file: not a regular file" in caplog.text
    assert "frames_00001f.cxi: train unknown: file: ValueError" in caplog.text
    assert "10,000,000 frames in one train (9.5 GiB) exceed the 2 GiB" in caplog.text
    assert "frames_00001h.cxi: train unknown: /entry_1/data_1/data: declares 1,000,000,000 frames but only the " \
           "first 0 were written whole" in caplog.text
    assert "frames_00001d.cxi: train unknown: entry_1/data_1/data: its data are external storage in" in caplog.text
    assert "frames_00001.cxi: train unknown: file: cannot be opened" in caplog.text
    assert "frames_00001c.cxi: train unknown: file: cannot be opened" in caplog.text
    assert "frames_00001b.cxi: train 3: train_id: not above the last train taken (10002)" in caplog.text
    assert set(chunk_ids(tmp_path / "follow")) == hit_ids(frames, [0, 1, 2, 6, 7, 8])


def _follow_process(folder, detector_path, out, log_path):
    command = [sys.executable, "-m", "spibatch.stream", "follow", str(out), "--kind", "cxi-folder",
               "--target", str(folder), "--detector", str(detector_path), "--threshold", "30", "--chunk-frames", "3",
               "--flush-s", "0", "--idle-timeout-s", "2", "--settle-s", "0.1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=open(log_path, "a"), env=env, text=True)


def test_a_killed_follower_resumes_with_nothing_lost_or_doubled(tmp_path):
    """The first half of the files is there when the follower process starts; it is SIGKILLed once it has
    committed twice (wherever it is then); the second half appears while a new follower process resumes."""
    detector = Detector.flat(16, 1e-3, 0.1, 1e-9)
    write_detector(tmp_path / "det.h5", detector)
    frames = FrameSet.synthetic((16, 16), 40, 4, hit_fraction=0.4, photons_per_hit=60)
    folder, out, log_path = tmp_path / "cxi", tmp_path / "follow", tmp_path / "follow.log"
    replay(frames, 1e6, "cxi-folder", folder, trains_per_file=2, stop_train=20)
    first = _follow_process(folder, tmp_path / "det.h5", out, log_path)
    index = out / layout.FOLLOW_INDEX
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (index.exists() and sum(1 for _ in open(index)) >= 2):
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = len(chunk_ids(out))
    writer = threading.Thread(target=replay, args=(frames, 80.0, "cxi-folder", folder),
                              kwargs={"trains_per_file": 2, "start_train": 20})
    writer.start()
    second = _follow_process(folder, tmp_path / "det.h5", out, log_path)
    summary = json.loads(second.communicate(timeout=120)[0].strip().splitlines()[-1])
    writer.join()
    assert second.returncode == 0, log_path.read_text()
    assert 0 < before <= len(hit_ids(frames, range(20)))
    ids = chunk_ids(out)
    assert len(ids) == len(set(ids)) and set(ids) == hit_ids(frames), "nothing lost, nothing doubled"
    assert summary["frames_seen"] == frames.num_frames and summary["hits"] == frames.is_hit.sum()
    assert "resuming after train" in log_path.read_text()
    stats = np.fromfile(out / layout.FOLLOW_FRAMES, dtype=[("train_id", "<u8"), ("pulse_id", "<u8"),
                                                           ("rest", "V30")])
    assert len(stats) == frames.num_frames and len(set(zip(stats["train_id"], stats["pulse_id"]))) == len(stats)


def _numbered_by_place(folder: Path, name: str, train_ids=None) -> None:
    """A CXI file of 5 frames without train IDs (the follower numbers it by its place), renamed in whole; or with
    ``train_ids``."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(sum(map(ord, name)))
    with h5py.File(folder / f".{name}", "w") as f:
        f["/entry_1/data_1/data"] = rng.poisson(0.5, (5, 16, 16)).astype(np.float32)
        if train_ids is not None:
            f[TRAIN_IDS] = np.asarray(train_ids, np.uint64)
    os.rename(folder / f".{name}", folder / name)


def _follow_and_crash(folder: Path, out: Path) -> dict:
    """Follow until idle, then remove the end line: the index as a follower killed after its last commit leaves it."""
    summary = Follower(CxiFolderSource(folder, (16, 16), settle_s=0), Detector.flat(16, 1e-3, 0.1, 1e-9), out,
                       FollowSettings(threshold=5, flush_s=0, idle_timeout_s=0.5)).run()
    index = out / layout.FOLLOW_INDEX
    index.write_text("".join(line for line in index.read_text().splitlines(True) if '"end"' not in line))
    return summary


def test_a_resume_numbers_files_as_before_when_the_folder_changed(tmp_path):
    """Files without train IDs are numbered by their place in the order taken; a resumed follower used the place
    in the folder's listing at its restart: a file archived meanwhile made the next new file look ingested
    (dropped), a file that had arrived out of name order shifted an ingested one up (ingested twice)."""
    folder, out = tmp_path / "cxi", tmp_path / "follow"
    for name in ("a.cxi", "b.cxi", "c.cxi"):
        _numbered_by_place(folder, name)
    assert _follow_and_crash(folder, out)["frames_seen"] == 15
    (folder / "a.cxi").rename(tmp_path / "a.cxi")             # archived
    _numbered_by_place(folder, "d.cxi")
    summary = _follow_and_crash(folder, out)
    assert summary["frames_seen"] == 20, summary               # d.cxi taken, as train 4
    assert sorted(chunk_ids(out)) == [(t, p) for t in range(1, 5) for p in range(5)]

    folder, out = tmp_path / "cxi2", tmp_path / "follow2"
    for name in ("a.cxi", "c.cxi"):
        _numbered_by_place(folder, name)
    assert _follow_and_crash(folder, out)["frames_seen"] == 10
    for name in ("b.cxi", "d.cxi"):            # b.cxi out of name order: taken, numbered after c.cxi (not a shift)
        _numbered_by_place(folder, name)
    summary = _follow_and_crash(folder, out)
    ids = chunk_ids(out)
    assert summary["frames_seen"] == 20 and len(ids) == len(set(ids)) == 20, (summary, ids)
    assert sorted({t for t, _ in ids}) == [1, 2, 3, 4]

    # files with train IDs, one of them ending in a bogus jump (refused): every file is still recorded as read
    folder, out = tmp_path / "cxi3", tmp_path / "follow3"
    _numbered_by_place(folder, "a.cxi", [10, 10, 11, 11, 10 ** 11])
    _numbered_by_place(folder, "b.cxi", [12, 12, 13, 13, 14])
    _follow_and_crash(folder, out)
    lines = [json.loads(line) for line in (out / layout.FOLLOW_INDEX).read_text().splitlines()]
    assert [n for line in lines for n in line.get("files", [])] == ["a.cxi", "b.cxi"]
    _numbered_by_place(folder, "c.cxi", [15, 15, 16, 16, 17])
    summary = _follow_and_crash(folder, out)
    assert summary["frames_seen"] == 14 and "already ingested" not in summary["bad_trains"], summary


def test_emc_takes_the_chunks_as_they_come(small_dataset, tmp_path):
    """run_emc(source=ChunkShards): EMC starts on the first chunk and takes the later ones between iterations."""
    from spibatch.config import EMC
    from spibatch.emc import driver
    from spibatch.emc.executors import InProcess
    from spibatch.emc.settings import EMCSettings

    frames, detector = dragonfly_frames(small_dataset, num_hits=60, hit_fraction=0.5)
    replay(frames, 1e6, "cxi-folder", tmp_path / "cxi", trains_per_file=2)
    out = tmp_path / "follow"
    Follower(CxiFolderSource(tmp_path / "cxi", (64, 64), settle_s=0), detector, out,
             FollowSettings(threshold=50, chunk_frames=20, flush_s=60, idle_timeout_s=0.3)).run()
    shards = ChunkShards(out)
    first = shards.first_chunks(20)
    assert first[0].start == 0 and first[0].first_frame == 0
    shards = ChunkShards(out, start_frame=first[0].stop, frames_per_shard=20)
    settings = EMCSettings.from_dict(EMC(num_div=1, iterations=2, frames_per_shard=20).model_dump())
    driver.run_emc(settings, first[0].photons, out / layout.DETECTOR, tmp_path / "emc", executor=InProcess(),
                   source=shards)
    assert shards.finished()
    records = [json.loads(line) for line in open(tmp_path / "emc" / layout.METRICS)]
    assert records[0]["num_frames"] == 60


def test_frames_from_a_shared_set_and_open_source(small_dataset, tmp_path):
    from spibatch.stream.replay import frames_from
    from spibatch.stream.sources import KINDS, open_source

    frames, detector_path = frames_from(small_dataset / "photons.emc", detector=small_dataset / "det_sim.h5",
                                        hit_fraction=0.25, pulses_per_train=8, num_hits=40)
    assert frames.frame_shape == (64, 64) and frames.is_hit.sum() == 40 and frames.num_frames == 160
    assert detector_path == small_dataset / "det_sim.h5"
    assert set(KINDS) == {"euxfel-run", "karabo-bridge", "cxi-folder"}
    assert isinstance(open_source("cxi-folder", str(tmp_path), (64, 64)), CxiFolderSource)
    with pytest.raises(Exception, match="unknown source kind"):
        open_source("hdf5-soup", str(tmp_path), (64, 64))


def test_a_file_whose_writer_stopped_early_gives_its_whole_frames(tmp_path):
    """A CXI file declared for 64 frames whose writer stopped after 20 (chunks of 4 frames, the last one half
    filled is still whole as HDF5 sees it): the follower takes the written frames' trains and skips the rest in
    one line, instead of reading fill values (or, as briefly, skipping the whole file)."""
    detector = Detector.flat(16, 1e-3, 0.1, 1e-9)
    folder = tmp_path / "cxi"
    folder.mkdir()
    frames = FrameSet.synthetic((16, 16), 5, 4, hit_fraction=0.5, photons_per_hit=60)   # 5 trains of 4 frames
    with h5py.File(folder / "frames_00000.cxi", "w") as f:
        data = f.create_dataset("entry_1/data_1/data", (64, 16, 16), "f4", chunks=(4, 16, 16))
        ids = f.create_dataset(TRAIN_IDS, (64,), "u8", chunks=(4,))
        data[:20] = np.concatenate([frames.train(k)[1] for k in range(5)])
        ids[:20] = np.repeat(np.arange(10000, 10005), 4)
        f[PULSE_IDS] = np.tile(np.arange(4), 16)
    summary = Follower(CxiFolderSource(folder, (16, 16), settle_s=0), detector, tmp_path / "follow",
                       FollowSettings(threshold=30, flush_s=0, idle_timeout_s=0.5)).run()
    assert summary["bad_trains"] == {"unreadable data": 1}
    assert set(chunk_ids(tmp_path / "follow")) == hit_ids(frames)


def test_a_float64_cxi_file_is_counted_as_batch_ingest(tmp_path):
    """The CXI folder read every file as float32: 2.5000001 ADU (adu_per_photon 1) became 2.5, 2 photons where batch
    ingest counts 3 -- the Counter's float64 path was never reached from a CXI folder."""
    from spibatch.kernels.photons_cpu import sparse_counts
    from spibatch.stream.cxifolder import DATA
    from spibatch.stream.kernel import Counter

    folder = tmp_path / "cxi"
    folder.mkdir()
    values = np.full((2, 8, 8), 2.5000001)
    with h5py.File(folder / "a.cxi", "w") as f:
        f.create_dataset(DATA, data=values)
    source = CxiFolderSource(folder, (8, 8), settle_s=0.0)
    began, blocks = time.monotonic(), []
    while not blocks and time.monotonic() - began < 10:
        blocks = [item for item in source.read() if hasattr(item, "data")]
        time.sleep(0.05)
    photons = Counter(64).tally(blocks[0].data)["photons"]
    arrays, _ = sparse_counts(values.reshape(2, 64), None, 1.0, True)
    assert int(arrays[4].sum()) == 2 * 192 and photons.tolist() == [192, 192]    # 64 pixels of 3 photons
