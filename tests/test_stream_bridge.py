"""Following a real Karabo bridge over ZeroMQ on the loopback: our replay (karabo_bridge.ServerInThread), the
simulator that ships with karabo-bridge, crafted bad trains, a restarted bridge (issue 13)."""

from __future__ import annotations

import logging
import socket
import threading
import time

import numpy as np
import pytest

karabo_bridge = pytest.importorskip("karabo_bridge")

from spibatch import layout  # noqa: E402
from spibatch.detector import Detector  # noqa: E402
from spibatch.stream.bridge import BridgeSource  # noqa: E402
from spibatch.stream.follower import Follower, FollowSettings  # noqa: E402
from spibatch.stream.replay import FrameSet, replay  # noqa: E402
from stream_helpers import chunk_ids, hit_ids  # noqa: E402

DET = Detector.flat(32, 1e-3, 0.1, 1e-9)
SETTINGS = FollowSettings(threshold=100, flush_s=0.1, idle_timeout_s=2.0)
SOURCE = "SPB_DET_AGIPD1M-1/CAL/APPEND_CORRECTED"


def endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def follow_replay(frames, out, trains=None, settings=SETTINGS):
    address = endpoint()
    kwargs = {"linger_s": 1.0}
    if trains is not None:
        kwargs.update(start_train=trains.start, stop_train=trains.stop)
    server = threading.Thread(target=replay, args=(frames, 2000, "karabo-bridge", address), kwargs=kwargs)
    server.start()
    try:
        return Follower(BridgeSource(address, DET.shape), DET, out, settings).run()
    finally:
        server.join()


def test_follow_our_bridge_replay(tmp_path):
    frames = FrameSet.synthetic(DET.shape, 40, 10, hit_fraction=0.2, photons_per_hit=300)
    out = tmp_path / "follow"
    summary = follow_replay(frames, out)
    assert summary["end_reason"] == "no new train for 2 s" and summary["bad_trains"] == {}
    assert summary["frames_seen"] == frames.num_frames and summary["trains"] == 40
    assert sorted(chunk_ids(out)) == sorted(hit_ids(frames))


def test_a_restarted_bridge_is_deduplicated(tmp_path):
    frames = FrameSet.synthetic(DET.shape, 30, 5, hit_fraction=0.3, photons_per_hit=300)
    out = tmp_path / "follow"
    follow_replay(frames, out, range(0, 12))
    index = out / layout.FOLLOW_INDEX     # the follower crashed before its end line: resume
    index.write_text("".join(line for line in open(index) if '"end"' not in line))
    summary = follow_replay(frames, out)  # the bridge starts over from the first train
    assert summary["bad_trains"] == {"already ingested": 12} and summary["trains"] == 30
    ids = chunk_ids(out)
    assert len(ids) == len(set(ids)) and set(ids) == hit_ids(frames)


def test_the_simulator_shipped_with_karabo_bridge(tmp_path):
    """karabo_bridge's own simulated AGIPD module (raw, 'online' order (fs, ss, pulses)): trains, pulses and the
    frame layout are read; its flat 1500-1600 ADU frames are 0 photons at 4000 ADU per photon: no hits."""
    from karabo_bridge.server import SimServerInThread

    address = endpoint()
    server = SimServerInThread(address, detector="AGIPDModule", raw=True, debug=False)
    server.start()
    stop = tmp_path / layout.STOP
    module = Detector(q_voxels=np.zeros((512 * 128, 3)), corr=np.ones(512 * 128), mask=np.zeros(512 * 128, np.uint8),
                      detd_pixels=1.0, ewald_radius_voxels=1.0, shape=(512, 128))

    def stop_after_three_trains():   # or after 60 s whatever came (the asserts below then say what): never a hang
        deadline = time.monotonic() + 60
        index = tmp_path / "follow" / layout.FOLLOW_INDEX
        while time.monotonic() < deadline and not stop.exists():
            if index.exists() and sum(1 for _ in open(index)) >= 3:
                break
            time.sleep(0.05)
        stop.touch()

    watcher = threading.Thread(target=stop_after_three_trains)
    watcher.start()
    try:
        source = BridgeSource(address, (512, 128), timeout_s=5)
        summary = Follower(source, module, tmp_path / "follow",
                           FollowSettings(adu_per_photon=4000, flush_s=0), stop_file=stop).run()
    finally:
        stop.touch()
        watcher.join()
        stopper = threading.Thread(target=server.stop, daemon=True)   # its stop() joins a thread that can wait in
        stopper.start()                                               # a blocking queue get(): never hold the suite
        stopper.join(10)
    assert source.source == "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"
    assert summary["end_reason"].startswith("stop file") and summary["trains"] >= 3
    assert summary["frames_seen"] == 64 * summary["trains"] and summary["hits"] == 0
    assert summary["last_train"] >= 10_000_000_000 and summary["bad_trains"] == {}


def test_online_and_file_orders_give_the_same_frames():
    source = BridgeSource.__new__(BridgeSource)
    source.frame_shape = (4, 6, 3)
    frames = np.arange(5 * 4 * 6 * 3, dtype=np.float32).reshape(5, 4, 6, 3)     # (pulses, modules, ss, fs)
    assert np.array_equal(source._frames(frames), frames)
    assert np.array_equal(source._frames(np.ascontiguousarray(frames.transpose(1, 3, 2, 0))), frames)
    source.frame_shape = (6, 3)
    assert np.array_equal(source._frames(np.ascontiguousarray(frames[:, 0].transpose(2, 1, 0))), frames[:, 0])


def test_bad_trains_from_a_bridge(tmp_path, caplog):
    """Wrong shape mid-stream, a source we do not know (alone, and beside ours), a repeated and a backwards
    train ID, a train cut short, a module missing: one line each, skipped and counted; the rest all kept."""
    from karabo_bridge import ServerInThread

    frames = FrameSet.synthetic(DET.shape, 12, 4, hit_fraction=0.5, photons_per_hit=300)

    def message(k, **change):
        tid, data, pulses = frames.train(k)
        values = {"image.data": data, "image.pulseId": pulses}
        values.update(change.pop("values", {}))
        data_by_source = {SOURCE: values, **change.pop("extra", {})}
        if change.pop("only_unknown", False):
            data_by_source = {"SPB_XTD9_XGM/DOOCS/MAIN": {"data.intensityTD": np.ones(4)}}
        tid = change.pop("tid", tid)
        return data_by_source, {name: {"timestamp.tid": tid} for name in data_by_source}

    messages = [message(0), message(1),
                message(2, values={"image.data": np.zeros((4, 16, 16), np.float32)}),         # wrong shape
                message(3, only_unknown=True),                                                  # unknown source only
                message(4, extra={"SA1_XTD2_XGM/DOOCS/MAIN": {"data.x": np.ones(2)}}),          # unknown beside ours
                message(5), message(5),                                                         # repeated train
                message(1, tid=frames.first_train + 1),                                         # train ID went back
                message(6, values={"image.pulseId": np.arange(2)}),                             # train cut short
                message(7, values={"modulesPresent": [True, False]}),                           # module missing
                message(8), message(9)]
    address = endpoint()
    with ServerInThread(address, sock="REP", maxlen=20) as server:
        for data, meta in messages:
            server.feed(data, meta)
        with caplog.at_level(logging.WARNING, logger="spibatch"):
            summary = Follower(BridgeSource(address, DET.shape), DET, tmp_path / "follow",
                               FollowSettings(threshold=100, flush_s=0, idle_timeout_s=1.5)).run()
    assert summary["bad_trains"] == {"wrong shape": 1, "source missing": 1, "repeated or non-monotonic train ID": 2,
                                     "train cut short": 1, "module missing": 1}
    text = caplog.text
    first = frames.first_train
    assert f"{SOURCE}: train {first + 2}: data: frames of shape (16, 16), the detector's are (32, 32)" in text
    assert f"train {first + 3}: source SPB_XTD9_XGM/DOOCS/MAIN is not one we read: ignored" in text
    assert f"{SOURCE}: train {first + 3}: image.data: the train has only sources ['SPB_XTD9_XGM/DOOCS/MAIN']" in text
    assert f"train {first + 4}: source SA1_XTD2_XGM/DOOCS/MAIN is not one we read" in text
    assert f"{SOURCE}: train {first + 5}: train_id: not above the last train taken ({first + 5})" in text
    assert f"{SOURCE}: train {first + 6}: image.pulseId: 2 pulse IDs for 4 frames (train cut short" in text
    assert f"{SOURCE}: train {first + 7}: modulesPresent: modules [1] missing" in text
    assert set(chunk_ids(tmp_path / "follow")) == hit_ids(frames, [0, 1, 4, 5, 8, 9])


def test_a_slow_client_gets_every_train_and_the_count_is_of_trains_sent(caplog):
    """The replay stopped its server once the queue was empty: the train the serving thread had taken off it,
    still waiting for a slow client's request, was lost and counted as played (a client taking 0.2 s a train got
    4 of 5); with no client at all it said 'played 3 trains'."""
    frames = FrameSet.synthetic(DET.shape, 5, 4, hit_fraction=0.5, photons_per_hit=100)
    address, got = endpoint(), []

    def slow_client():
        client = karabo_bridge.Client(address, timeout=5)
        try:
            for _ in range(5):
                got.append(client.next()[1][SOURCE]["timestamp.tid"])
                time.sleep(0.2)
        except Exception:   # a timeout: fewer than 5 arrived, which the assertion below says
            pass

    reader = threading.Thread(target=slow_client)
    reader.start()
    played = replay(frames, 2000, "karabo-bridge", address, linger_s=5.0)
    reader.join()
    assert played == 5 and len(got) == 5, (played, got)
    few = FrameSet.synthetic(DET.shape, 3, 4, hit_fraction=0.5, photons_per_hit=100)    # the queue's 2 + the one
    with caplog.at_level(logging.WARNING, logger="spibatch"):                            # the thread holds
        assert replay(few, 2000, "karabo-bridge", endpoint(), linger_s=0.5) == 0     # nobody asked
    assert "3 of the 3 trains served were never taken by a client" in caplog.text
