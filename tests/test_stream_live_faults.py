"""Live sources that misbehave as real ones do (an audit's cases, 2026-12-06): EuXFEL run folders written out of
order, files that still grow, two runs in one folder, a damaged index, a dangling link; Karabo bridge trains of no
frames, of strings, of train ID 0, a bridge that restarts; a first train whose ID is bogus; and what the driver
says when the follow ends without a hit.  Small detectors (16 modules of 16 x 16 pixels, or 32 x 32) so that each
case takes seconds."""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("extra_data")
pytest.importorskip("karabo_bridge", reason="karabo-bridge is in the [test] extra")

from spibatch.detector import Detector  # noqa: E402
from spibatch.errors import InputError  # noqa: E402
from spibatch.stream.blocks import Block  # noqa: E402
from spibatch.stream.bridge import BridgeSource  # noqa: E402
from spibatch.stream.euxfel import RunFolderSource  # noqa: E402
from spibatch.stream.follower import JUMP_ACCEPT, Follower, FollowSettings  # noqa: E402
from spibatch.stream.replay import FrameSet  # noqa: E402
from spibatch.stream.replay_writers import close_run, write_sequence  # noqa: E402
from stream_helpers import ListSource, chunk_ids, hit_ids  # noqa: E402

SHAPE = (16, 16, 16)
MODULAR = Detector.flat(64, 0.5e-3, 0.3, 2.07e-10)
MODULAR.shape = SHAPE
FLAT = Detector.flat(32, 1e-3, 0.1, 1e-9)
SETTINGS = FollowSettings(adu_per_photon=10.0, threshold=200, flush_s=0.0, idle_timeout_s=1.5)
SOURCE = "SPB_DET_AGIPD1M-1/CAL/APPEND_CORRECTED"


def frames(num_trains: int, seed: int) -> FrameSet:
    return FrameSet.synthetic(SHAPE, num_trains, 2, hit_fraction=0.5, photons_per_hit=1000, background_photons=5,
                              adu_per_photon=10.0, seed=seed)


def follow_run(run, out, settle_s=0.2, settings=SETTINGS) -> dict:
    return Follower(RunFolderSource(run, SHAPE, "AGIPD1M", settle_s=settle_s), MODULAR, out, settings).run()


def test_sequences_written_out_of_order_are_all_taken(tmp_path, caplog):
    """S00000 and S00002 first, S00001 a second later (correction jobs per sequence): the follower waits for the
    missing one (it took S00002 first and dropped S00001's trains as "non-monotonic")."""
    fs, summary = _sequence_one_late(tmp_path, seed=1, delay_s=1.0)
    assert summary["frames_seen"] == fs.num_frames and summary["bad_trains"] == {}
    assert sorted(chunk_ids(tmp_path / "follow")) == sorted(hit_ids(fs))


def _sequence_one_late(tmp_path, seed: int, delay_s: float, **follow) -> tuple:
    """S00000 and S00002 written, S00001 ``delay_s`` later, then the run closed: (the frames, the summary)."""
    fs, run = frames(6, seed=seed), tmp_path / "r0001"
    run.mkdir()
    write_sequence(fs, range(0, 2), run, 0)
    write_sequence(fs, range(4, 6), run, 2)

    def late():
        time.sleep(delay_s)
        write_sequence(fs, range(2, 4), run, 1)
        close_run(run)

    writer = threading.Thread(target=late)
    writer.start()
    summary = follow_run(run, tmp_path / "follow", **follow)
    writer.join()
    return fs, summary


def test_a_module_file_still_growing_is_not_read_when_another_module_rolls_over(tmp_path):
    """Module 0 has begun S00001 while module 5's S00000 holds train 10000 only; 10001 comes a second later.  The
    sequence waits for module 5 to roll over too (or settle): train 10001 was lost as "module missing"."""
    fs, run = frames(4, seed=2), tmp_path / "r0001"
    for name in ("r0001", "full", "part", "s1"):
        (tmp_path / name).mkdir()
    write_sequence(fs, range(0, 2), tmp_path / "full", 0)
    write_sequence(fs, range(0, 1), tmp_path / "part", 0)           # module 5 mid-write: train 10000 only
    write_sequence(fs, range(2, 4), tmp_path / "s1", 1)
    for path in (tmp_path / "full").glob("*.h5"):
        shutil.copy(tmp_path / "part" / path.name if "AGIPD05" in path.name else path, run / path.name)
    shutil.copy(tmp_path / "s1" / "CORR-R0001-AGIPD00-S00001.h5", run)

    def daq():
        time.sleep(1.0)
        shutil.copy(tmp_path / "full" / "CORR-R0001-AGIPD05-S00000.h5", run)
        for path in (tmp_path / "s1").glob("*.h5"):
            shutil.copy(path, run)
        close_run(run)

    writer = threading.Thread(target=daq)
    writer.start()
    summary = follow_run(run, tmp_path / "follow", settle_s=2.5)
    writer.join()
    assert summary["bad_trains"] == {} and summary["frames_seen"] == fs.num_frames
    assert sorted(chunk_ids(tmp_path / "follow")) == sorted(hit_ids(fs))


def test_trains_listed_backwards_in_a_file_keep_their_own_frames(tmp_path):
    """A file whose INDEX lists its trains in decreasing order: each frame is labelled with the train the file
    gives it (as EXtra-data does), not with the sorted list (which swapped two trains' frames silently)."""
    import h5py

    from spibatch.stream.store import read_frame_stats

    fs, run = frames(4, seed=3), tmp_path / "r0001"
    run.mkdir()
    write_sequence(fs, range(0, 2), run, 0)
    write_sequence(fs, range(2, 4), run, 1)
    for path in run.glob("*-S00001.h5"):
        with h5py.File(path, "r+") as f:
            f["INDEX/trainId"][:] = f["INDEX/trainId"][:][::-1]
    close_run(run)
    expected = {}          # (train, pulse) -> photons over all modules, frames labelled as the files label them
    for path in sorted(run.glob("*.h5")):
        if "AGIPD" not in path.name:
            continue
        module = int(path.name.split("AGIPD")[1][:2])
        with h5py.File(path) as f:
            group = f"SPB_DET_AGIPD1M-1/CORR/{module}CH0:output/image"
            tids = np.repeat(f["INDEX/trainId"][()], f[f"INDEX/{group}/count"][()].astype(np.int64))
            for tid, pulse, frame in zip(tids, f[f"INSTRUMENT/{group}/pulseId"][()].ravel(),
                                         f[f"INSTRUMENT/{group}/data"][()]):
                key = (int(tid), int(pulse))
                expected[key] = expected.get(key, 0) + int(np.rint(frame / 10).clip(0).sum())
    follow_run(run, tmp_path / "follow", settings=FollowSettings(adu_per_photon=10.0, threshold=0, flush_s=0.0,
                                                                  idle_timeout_s=1.5))
    stats = read_frame_stats(tmp_path / "follow" / "frames.bin")
    found = {(int(t), int(p)): int(n) for t, p, n in zip(stats["train_id"], stats["pulse_id"], stats["photons"])}
    assert found == expected and list(stats["train_id"]) == sorted(stats["train_id"])
    assert any(expected[(10002, p)] != expected[(10003, p)] for p in (0, 1))   # the case tells the trains apart


def test_two_runs_in_one_folder_are_one_line_naming_both_files(tmp_path):
    fs, run = frames(2, seed=4), tmp_path / "r0001"
    run.mkdir()
    write_sequence(fs, range(0, 2), run, 0)
    other = tmp_path / "other"
    other.mkdir()
    write_sequence(fs, range(0, 2), other, 0)
    shutil.copy(other / "CORR-R0001-AGIPD03-S00000.h5", run / "CORR-R0002-AGIPD03-S00000.h5")
    with pytest.raises(InputError) as info:
        follow_run(run, tmp_path / "follow")
    message = str(info.value)
    assert "two files for module 3, sequence 0: CORR-R0001-AGIPD03-S00000.h5 and CORR-R0002-AGIPD03-S00000.h5" \
        in message and "\n" not in message
    assert not (tmp_path / "follow").exists()


def test_a_dangling_link_and_a_damaged_index_cost_their_modules_only(tmp_path, caplog):
    """A module file name that is a dangling link (a traceback before) is a module missing; an index that claims
    10^9 frames (an allocation of terabytes before) is named and its trains skipped."""
    import h5py

    fs, run = frames(6, seed=5), tmp_path / "r0001"
    run.mkdir()
    for seq in range(3):
        write_sequence(fs, range(2 * seq, 2 * seq + 2), run, seq)
    (run / "CORR-R0001-AGIPD04-S00000.h5").unlink()
    (run / "CORR-R0001-AGIPD04-S00000.h5").symlink_to(tmp_path / "gone.h5")
    with h5py.File(run / "CORR-R0001-AGIPD09-S00001.h5", "r+") as f:
        f["INDEX/SPB_DET_AGIPD1M-1/CORR/9CH0:output/image/count"][0] = 10 ** 9
    close_run_safe(run)
    with caplog.at_level(logging.WARNING, logger="spibatch"):
        summary = follow_run(run, tmp_path / "follow")
    assert summary["bad_trains"] == {"module missing": 4}
    assert "its index claims 1,000,000,002 entries, the data hold 4" in caplog.text
    assert sorted(chunk_ids(tmp_path / "follow")) == sorted(hit_ids(fs, [4, 5]))


def close_run_safe(run) -> None:
    """An overview file where EXtra-data can write one (it refuses some damaged runs: the idle time-out ends
    those follows)."""
    try:
        close_run(run)
    except Exception:   # noqa: BLE001 - the follow ends by its idle time-out then
        pass


def endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def message(tid, data=None):
    data = np.full((4, 32, 32), 5.0, np.float32) if data is None else data
    return {SOURCE: {"image.data": data}}, {SOURCE: {"timestamp.tid": tid}}


def follow_bridge(messages, out, idle=1.5) -> dict:
    from karabo_bridge import ServerInThread

    address = endpoint()
    with ServerInThread(address, sock="REP", maxlen=len(messages) + 1) as server:
        for data, meta in messages:
            server.feed(data, meta)
        return Follower(BridgeSource(address, FLAT.shape), FLAT, out,
                        FollowSettings(threshold=100, flush_s=0, idle_timeout_s=idle)).run()


def test_bridge_trains_of_no_frames_of_strings_and_of_id_0_are_skipped(tmp_path):
    """Each of them stopped the follow (an IndexError, a ValueError) or, train ID 0 taken first, made every real
    train a "jump" for good."""
    bad = [message(0), message(1_500_000_001, np.zeros((0, 32, 32), np.float32)),
           message(1_500_000_002, np.full((2, 32, 32), "x"))]
    summary = follow_bridge(bad + [message(1_500_000_000 + k) for k in range(3, 6)], tmp_path / "follow")
    assert summary["bad_trains"] == {"no train ID": 1, "empty train": 1, "not numbers": 1}
    assert summary["trains"] == 3 and summary["hits"] == 12 and summary["last_train"] == 1_500_000_005


def test_a_restarted_bridge_is_read_again(tmp_path):
    """The REQ client's request went to the bridge that stopped; the one that came back on the same endpoint kept
    its trains until the idle time-out (a new client now asks it)."""
    from karabo_bridge import ServerInThread

    address, result = endpoint(), {}
    first = ServerInThread(address, sock="REP", maxlen=10)
    for k in range(3):
        first.feed(*message(10000 + k))
    first.start()
    settings = FollowSettings(threshold=100, flush_s=0, idle_timeout_s=6)
    follower = threading.Thread(target=lambda: result.update(
        Follower(BridgeSource(address, FLAT.shape), FLAT, tmp_path / "follow", settings).run()))
    follower.start()
    time.sleep(2.0)
    first.stop()
    time.sleep(1.0)
    second = ServerInThread(address, sock="REP", maxlen=10)
    for k in range(3, 8):
        second.feed(*message(10000 + k))
    second.start()
    follower.join(60)
    second.stop()
    assert result["trains"] == 8 and result["last_train"] == 10007


def test_a_bogus_first_train_gives_way_to_a_run_of_real_ones(tmp_path, caplog):
    """Train 1 taken first, then the facility's IDs: 20 of them in a row, in order, show the first was bogus."""
    ids = [1] + [1_500_000_000 + k for k in range(30)]
    blocks = [Block(np.full((1, 32, 32), 5.0, np.float32), [t], [0], "memory") for t in ids]
    with caplog.at_level(logging.WARNING, logger="spibatch"):
        summary = Follower(ListSource(blocks), FLAT, tmp_path / "follow",
                           FollowSettings(threshold=100, flush_s=0)).run()
    assert summary["last_train"] == ids[-1] and summary["trains"] == 1 + 30 - (JUMP_ACCEPT - 1)
    assert summary["bad_trains"] == {"train ID jump": JUMP_ACCEPT - 1}
    assert f"{JUMP_ACCEPT} trains in a row jumped from train 1" in caplog.text


def test_a_lone_jump_is_still_refused(tmp_path):
    ids = [1_500_000_000 + k for k in range(5)] + [1_900_000_000] + [1_500_000_005 + k for k in range(5)]
    blocks = [Block(np.full((1, 32, 32), 5.0, np.float32), [t], [0], "memory") for t in ids]
    summary = Follower(ListSource(blocks), FLAT, tmp_path / "follow", FollowSettings(threshold=100, flush_s=0)).run()
    assert summary["bad_trains"] == {"train ID jump": 1} and summary["last_train"] == 1_500_000_009



def test_a_follow_of_only_bad_trains_says_so_to_the_driver(tmp_path):
    """Every train arrived and was skipped: the follow still writes its end and counts (it wrote nothing before a
    good train), and the driver's line says what was skipped (it said "no train arrived")."""
    from spibatch.layout import RunLayout
    from spibatch.stages.live import first_photons
    from spibatch.stream.blocks import Skipped

    run = RunLayout(tmp_path / "run")
    items = [Skipped("module missing", "r0001", "image.data", "modules [3] missing", (10000 + k,)) for k in range(5)]
    Follower(ListSource(items), FLAT, run.follow, FollowSettings(threshold=100, flush_s=0)).run()
    with pytest.raises(InputError) as info:
        first_photons(run, 1, timeout_s=5)
    assert "5 train(s) arrived and were skipped (module missing: 5; see stages/follow.log)" in str(info.value)


def test_a_follower_that_failed_is_not_reported_as_no_train(tmp_path):
    from spibatch.layout import RunLayout
    from spibatch.stages.__main__ import write_result
    from spibatch.stages.live import first_photons

    run = RunLayout(tmp_path / "run")
    run.stage_result("follow").parent.mkdir(parents=True)
    write_result(run, "follow", 1, "IndexError: index 0 is out of bounds for axis 0 with size 0")
    with pytest.raises(InputError) as info:
        first_photons(run, 1, timeout_s=5)
    message = str(info.value)
    assert "the follow stage failed before a single hit was committed: IndexError: index 0" in message
    assert "stages/jobs/follow.stderr" in message and "no train arrived" not in message


def test_a_stop_reads_the_sequences_on_disk_past_a_missing_one(tmp_path):
    """S00001 never comes (its correction job failed); `spibatch stop` after S00000: S00002, on disk, is still read
    (the gap wait held it past the stop: 4 of 8 frames, nothing said -- the review)."""
    fs, run = frames(6, seed=2), tmp_path / "r0001"
    run.mkdir()
    write_sequence(fs, range(0, 2), run, 0)
    write_sequence(fs, range(4, 6), run, 2)
    stop = tmp_path / "stop"
    follower = Follower(RunFolderSource(run, SHAPE, "AGIPD1M", settle_s=1.0), MODULAR, tmp_path / "follow",
                        FollowSettings(adu_per_photon=10.0, threshold=200, flush_s=0.0, idle_timeout_s=60.0),
                        stop_file=stop)

    def operator():
        while follower.store.state.frames_seen < 4:
            time.sleep(0.05)
        time.sleep(1.0)
        stop.touch()

    threading.Thread(target=operator, daemon=True).start()
    summary = follower.run()
    assert summary["end_reason"].startswith("stop file") and summary["frames_seen"] == 8


def test_a_missing_sequence_waited_for_longer_than_the_idle_time_out(tmp_path):
    """The gap wait (6 x settle_s = 6 s) outlasted the idle time-out (1.5 s): the follow ended with S00002 unread
    and S00001 (3 s late) lost.  The wait keeps the source alive."""
    fs, summary = _sequence_one_late(tmp_path, seed=3, delay_s=3.0, settle_s=1.0)
    assert summary["frames_seen"] == fs.num_frames and summary["bad_trains"] == {}


def test_a_stop_ends_the_follow_while_the_daq_still_writes(tmp_path):
    """The DAQ keeps writing S00001 (its files change every 0.3 s); `spibatch stop` after S00000 ends the follow
    within its drain time (the files still settling kept the source "alive": 23 s for a 20 s write -- the review)."""
    import os

    fs, run = frames(4, seed=2), tmp_path / "r0001"
    run.mkdir()
    write_sequence(fs, range(0, 2), run, 0)
    write_sequence(fs, range(2, 4), run, 1)
    writing, stop, halt = sorted(run.glob("*S00001.h5")), tmp_path / "stop", threading.Event()
    follower = Follower(RunFolderSource(run, SHAPE, "AGIPD1M", settle_s=1.0), MODULAR, tmp_path / "follow",
                        FollowSettings(adu_per_photon=10.0, threshold=200, flush_s=0.0, idle_timeout_s=60.0),
                        stop_file=stop)

    def daq():
        began = time.monotonic()
        while time.monotonic() - began < 15 and not halt.is_set():
            for path in writing:
                os.utime(path)
            time.sleep(0.3)

    def operator():
        while follower.store.state.frames_seen < 4:
            time.sleep(0.05)
        stop.touch()

    writer = threading.Thread(target=daq, daemon=True)
    writer.start()
    threading.Thread(target=operator, daemon=True).start()
    summary = follower.run()
    still_writing = writer.is_alive()        # the follow ended while the DAQ wrote on (15 s): the stop, not the end
    halt.set()
    assert summary["end_reason"].startswith("stop file") and still_writing
