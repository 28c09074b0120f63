"""Hostile data arriving over time (a review, 2026-12-07): a glitched train ID, garbage that kept a follow open, a
stray first file of another shape, and CXI or run-folder files that change, hang, loop or come again."""

from __future__ import annotations

import logging
import os
import threading
import time

import h5py
import numpy as np
import pytest

pytest.importorskip("extra_data")

from spibatch.config_source import Source  # noqa: E402
from spibatch.detector import Detector  # noqa: E402
from spibatch.errors import InputError  # noqa: E402
from spibatch.stream.blocks import Block, Skipped  # noqa: E402
from spibatch.stream.cxifolder import CxiFolderSource  # noqa: E402
from spibatch.stream.euxfel import RunFolderSource  # noqa: E402
from spibatch.stream.follower import Follower, FollowSettings  # noqa: E402
from spibatch.stream.replay import FrameSet  # noqa: E402
from spibatch.stream.replay_writers import write_sequence  # noqa: E402
from spibatch.stream.train_order import JUMP_ACCEPT  # noqa: E402
from stream_helpers import ListSource, chunk_ids, hit_ids  # noqa: E402

FLAT = Detector.flat(16, 1e-3, 0.1, 1e-9)
SETTINGS = FollowSettings(threshold=100, flush_s=0, idle_timeout_s=0.5)


def train(tid: int, shape=(16, 16)) -> Block:
    return Block(np.full((1, *shape), 5.0, np.float32), [tid], [0], "memory")


def test_a_bit_flipped_train_id_gives_way_to_the_real_ones_below_it(tmp_path, caplog):
    """1000..1004, then 1005 + 2^26 (below the jump guard: taken), then 1006..: every real train was skipped as
    repeated, for good (the bad high-water mark is committed)."""
    ids = list(range(1000, 1005)) + [1005 + 2 ** 26] + list(range(1006, 1036))
    with caplog.at_level(logging.WARNING, logger="spibatch"):
        summary = Follower(ListSource([train(t) for t in ids]), FLAT, tmp_path / "f", SETTINGS).run()
    assert summary["last_train"] == 1035
    assert summary["trains"] == 6 + 30 - (JUMP_ACCEPT - 1)
    assert summary["bad_trains"] == {"repeated or non-monotonic train ID": JUMP_ACCEPT - 1}
    assert f"train {1005 + 2 ** 26} was bogus" in caplog.text


def test_a_source_that_starts_over_stays_a_repeat(tmp_path):
    """Trains sent again after they were taken (a restarted bridge) never count as 'the last one was bogus'."""
    ids = list(range(1000, 1030)) + list(range(1000, 1030))
    summary = Follower(ListSource([train(t) for t in ids]), FLAT, tmp_path / "f", SETTINGS).run()
    assert summary["trains"] == 30 and summary["last_train"] == 1029
    assert summary["bad_trains"] == {"repeated or non-monotonic train ID": 30}


class Garbage(ListSource):
    """Malformed messages without a train, forever (a misconfigured bridge)."""

    def read(self):
        time.sleep(0.002)
        return [Skipped("malformed message", "tcp://x", "message", "FormatError: it cannot be decoded")]


def test_messages_without_a_train_do_not_hold_a_follow_open_nor_flood_the_log(tmp_path, caplog):
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="spibatch"):
        summary = Follower(Garbage([]), FLAT, tmp_path / "f", SETTINGS).run()
    assert time.monotonic() - began < 5, "the idle time-out ran out although garbage kept coming"
    assert summary["end_reason"] == "no new train for 0.5 s" and summary["bad_trains"]["malformed message"] > 5
    said = [r for r in caplog.records if "malformed message" in r.getMessage()]
    assert len(said) == 5 and "further 'malformed message' items are counted, not said" in said[-1].getMessage()


def test_a_stray_first_item_of_another_shape_is_skipped_three_in_a_row_refused(tmp_path):
    summary = Follower(ListSource([train(1, (8, 8))] + [train(t) for t in range(2, 6)]), FLAT, tmp_path / "a",
                       SETTINGS).run()
    assert summary["trains"] == 4 and summary["bad_trains"] == {"wrong shape": 1}
    with pytest.raises(InputError, match=r"\(train 3\); 3 items in a row: the geometry does not match"):
        Follower(ListSource([train(t, (8, 8)) for t in range(1, 6)]), FLAT, tmp_path / "b", SETTINGS).run()
    assert not (tmp_path / "b").exists()


def cxi(path, tid: int, frames: int = 4, value: float = 5.0) -> None:
    """A CXI file of ``frames`` frames of train ``tid``, written beside and renamed in whole."""
    hidden = path.with_name("." + path.name)
    with h5py.File(hidden, "w") as f:
        f["/entry_1/data_1/data"] = np.full((frames, 16, 16), value, np.float32)
        f["/entry_1/trainId"] = np.full(frames, tid, np.uint64)
        f["/entry_1/pulseId"] = np.arange(frames, dtype=np.uint64)
    os.rename(hidden, path)


def follow_cxi(folder, out, **source) -> dict:
    return Follower(CxiFolderSource(folder, (16, 16), **{"settle_s": 0, **source}), FLAT, out, SETTINGS).run()


def test_a_cxi_symlink_loop_costs_one_line_not_the_follow(tmp_path, caplog):
    """stat() of a *.cxi link to itself raised ELOOP out of the source: a traceback, the run failed, and a resume
    failed the same way."""
    folder = tmp_path / "cxi"
    folder.mkdir()
    cxi(folder / "a1.cxi", 1)
    (folder / "a2.cxi").symlink_to(folder / "a2.cxi")
    cxi(folder / "a3.cxi", 3)
    with caplog.at_level(logging.WARNING, logger="spibatch"):
        summary = follow_cxi(folder, tmp_path / "f")
    assert summary["trains"] == 2 and summary["bad_trains"] == {"unreadable file": 1}
    assert "a2.cxi: train unknown: file: not a regular file" in caplog.text


def test_a_renamed_cxi_file_without_train_ids_is_not_taken_twice(tmp_path, caplog):
    folder = tmp_path / "cxi"
    folder.mkdir()
    with h5py.File(folder / "a1.cxi", "w") as f:
        f["/entry_1/data_1/data"] = np.full((3, 16, 16), 5.0, np.float32)
    source = CxiFolderSource(folder, (16, 16), settle_s=0)
    assert len(source.read()) == 1 and source.read() == []       # a1 read
    (folder / "a1.cxi").rename(folder / "a2.cxi")
    with caplog.at_level(logging.WARNING, logger="spibatch"):
        assert source.read() == []
    assert "a2.cxi is a1.cxi, taken before, under another name: skipped" in caplog.text


def test_a_cxi_file_that_grows_keeps_the_follow_open_and_one_changed_after_reading_is_said(tmp_path):
    """A writer adding a frame every 0.2 s for 2 s, idle time-out 0.5 s: the follow ended while it wrote (the
    source said nothing of a file still settling).  Then it appends once more after a pause: said and counted."""
    folder = tmp_path / "cxi"
    folder.mkdir()
    path = folder / "slow.cxi"
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry_1/data_1/data", (0, 16, 16), "f4", maxshape=(None, 16, 16), chunks=(1, 16, 16))

    def writer():
        for _ in range(10):
            time.sleep(0.2)
            with h5py.File(path, "a") as f:
                data = f["/entry_1/data_1/data"]
                data.resize(len(data) + 1, axis=0)
                data[-1] = 5.0
        time.sleep(1.0)                                           # settled and read: then one more frame
        with h5py.File(path, "a") as f:
            data = f["/entry_1/data_1/data"]
            data.resize(len(data) + 1, axis=0)

    thread = threading.Thread(target=writer)
    thread.start()
    summary = Follower(CxiFolderSource(folder, (16, 16), settle_s=0.6), FLAT, tmp_path / "f",
                       FollowSettings(threshold=100, flush_s=0, idle_timeout_s=2.0)).run()
    thread.join()
    assert summary["frames_seen"] == 10
    assert summary["bad_trains"] == {"changed after reading": 1}


HOLDER = """
import sys, time, h5py, numpy as np
f = h5py.File(sys.argv[1], "w")
f["/entry_1/data_1/data"] = np.full((2, 16, 16), 5.0, np.float32)
f.flush()
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
f.close()
"""


def test_a_cxi_file_its_writer_still_holds_is_tried_again(tmp_path, caplog):
    """A writer that holds its file (HDF5's lock) past settle_s: the file was skipped for good ('unable to lock
    file'); it is now tried again until the writer lets go."""
    import subprocess
    import sys

    folder = tmp_path / "cxi"
    folder.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder / "a1.cxi"), "2.0"], stdout=subprocess.PIPE,
                              text=True)
    assert writer.stdout.readline().strip() == "holding"
    source = CxiFolderSource(folder, (16, 16), settle_s=0.2)
    with caplog.at_level(logging.INFO, logger="spibatch"):
        summary = Follower(source, FLAT, tmp_path / "f", FollowSettings(threshold=100, flush_s=0,
                                                                        idle_timeout_s=0.5)).run()
    writer.wait(timeout=30)
    assert "cannot be opened yet" in caplog.text, "the held file opened at once: nothing was tested"
    assert summary["frames_seen"] == 2 and summary["bad_trains"] == {}, summary


SHAPE = (16, 16, 16)
MODULAR = Detector.flat(64, 0.5e-3, 0.3, 2.07e-10)
MODULAR.shape = SHAPE


def run_frames(trains: int, seed: int) -> FrameSet:
    return FrameSet.synthetic(SHAPE, trains, 2, hit_fraction=0.5, photons_per_hit=1000, background_photons=5,
                              adu_per_photon=10.0, seed=seed)


def test_the_last_sequence_short_of_a_module_is_read_when_the_follow_ends(tmp_path, caplog):
    """Sequence 1's module 3 never comes and nothing closes the run: its trains were never read nor said."""
    fs, run = run_frames(4, seed=3), tmp_path / "r0001"
    run.mkdir()
    write_sequence(fs, range(0, 2), run, 0)
    write_sequence(fs, range(2, 4), run, 1)
    (run / "CORR-R0001-AGIPD03-S00001.h5").unlink()
    settings = FollowSettings(adu_per_photon=10.0, threshold=200, flush_s=0.0, idle_timeout_s=1.0)
    with caplog.at_level(logging.INFO, logger="spibatch"):
        summary = Follower(RunFolderSource(run, SHAPE, "AGIPD1M", settle_s=0.2), MODULAR, tmp_path / "f",
                           settings).run()
    assert summary["end_reason"] == "no new train for 1 s"
    assert summary["bad_trains"] == {"module missing": 2}
    assert sorted(chunk_ids(tmp_path / "f")) == sorted(hit_ids(fs, [0, 1]))
    assert "reading what is on disk once more" in caplog.text


def test_a_sequence_written_on_after_it_was_read_gives_its_new_trains(tmp_path, caplog):
    """The DAQ paused longer than settle_s in sequence 0, then wrote on in it: its later trains were lost."""
    fs, run = run_frames(4, seed=4), tmp_path / "r0001"
    run.mkdir()
    write_sequence(fs, range(0, 2), run, 0)

    def daq():
        time.sleep(1.5)
        later = tmp_path / "later"
        later.mkdir()
        write_sequence(fs, range(0, 4), later, 0)    # the same files, now holding trains 0..3, all at once
        for path in sorted(later.iterdir()):
            os.replace(path, run / path.name)

    thread = threading.Thread(target=daq)
    thread.start()
    settings = FollowSettings(adu_per_photon=10.0, threshold=200, flush_s=0.0, idle_timeout_s=3.0)
    with caplog.at_level(logging.WARNING, logger="spibatch"):
        summary = Follower(RunFolderSource(run, SHAPE, "AGIPD1M", settle_s=0.3), MODULAR, tmp_path / "f",
                           settings).run()
    thread.join()
    assert summary["frames_seen"] == fs.num_frames and summary["bad_trains"] == {}, (summary, caplog.text)
    assert sorted(chunk_ids(tmp_path / "f")) == sorted(hit_ids(fs))
    assert "sequence 0 changed after it was read" in caplog.text


def test_the_bridge_socket_is_a_source_key():
    given = {"kind": "karabo-bridge", "target": "tcp://h:4545", "detector": "det.h5"}
    assert Source(**given, bridge_sock="PULL").bridge_sock == "PULL" and Source(**given).bridge_sock == "REQ"
    with pytest.raises(ValueError, match="bridge_sock"):
        Source(**given, bridge_sock="PUSH")
