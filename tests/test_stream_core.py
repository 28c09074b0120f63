"""The follower's core on an in-memory source: counting, hit finding, chunks, the EMC poll source, dedup,
bad trains, a geometry that does not fit (issue 13)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from spibatch import layout
from spibatch.detector import Detector
from spibatch.errors import InputError
from spibatch.io.dragonfly import read_photons
from spibatch.photons import Photons
from spibatch.stream.blocks import Block
from spibatch.stream.follower import Follower, FollowSettings
from spibatch.stream.hits import HitFinder
from spibatch.stream.kernel import FLAG_NONFINITE, FLAG_TOO_LARGE, Counter
from spibatch.stream.replay import FrameSet
from spibatch.stream.shards import ChunkShards
from spibatch.stream.store import FRAME_STATS, read_frame_stats
from stream_helpers import ListSource, blocks_of, chunk_ids, hit_ids


DET = Detector.flat(32, 1e-3, 0.1, 1e-9)


def test_counter_equals_the_float64_rint_reference_per_module():
    rng = np.random.default_rng(3)
    modules, per = 4, 1000
    adu = np.array([10.0, 20.0, 35.0, 7.5])
    frames = (rng.normal(0, 0.2, (6, modules, per)) * adu[None, :, None]).astype(np.float32)
    flat = frames.reshape(6, -1)
    for f in range(6):                  # photons, and values right at the half-photon edges
        idx = rng.integers(0, modules * per, 300)
        flat[f, idx] += (rng.poisson(1.2, 300) * adu[idx // per]).astype(np.float32)
    flat[0, :4] = 0.5 * adu[0]           # rint(0.5) = 0, rint(1.5) = 2, as numpy
    flat[0, 4:8] = 1.5 * adu[0]
    flat[1, 10] = np.nan
    flat[2, 11] = 1e12 * adu[0]
    bad = np.zeros(modules * per, bool)
    bad[::97] = True
    counter = Counter(modules * per, modules, adu, bad)
    tally = counter.tally(frames)
    reference = np.rint(flat.astype(np.float64) / np.repeat(adu, per)[None])
    reference[:, bad] = 0
    reference[~np.isfinite(reference) | (reference < 0)] = 0
    reference[2, 11] = 0
    assert list(tally["flags"][:3]) == [0, FLAG_NONFINITE, FLAG_TOO_LARGE]
    assert np.array_equal(tally["lit"], (reference >= 1).sum(axis=1))
    assert np.array_equal(tally["photons"], reference.sum(axis=1))
    rows = np.array([0, 1, 3, 5])
    photons = counter.fill(frames, rows, tally)
    assert np.array_equal(photons.to_dense(), reference[rows].astype(np.int32))
    assert np.array_equal(photons.to_dense(), Photons.from_dense(reference[rows].astype(np.int32)).to_dense())


def test_hit_finder_fixed_and_automatic():
    rng = np.random.default_rng(0)
    background = rng.poisson(30, 2000)
    lit = background.copy()
    hits = rng.random(2000) < 0.1
    lit[hits] += 400
    finder = HitFinder()                       # median + 5 x 1.4826 MAD of the running window
    found = np.concatenate([finder.hits(lit[a:a + 200]) for a in range(0, 2000, 200)])
    assert np.array_equal(found, hits)
    assert 40 < finder.threshold < 80, finder.threshold
    assert np.array_equal(HitFinder(200).hits(lit), lit > 200)
    assert HitFinder().hits(np.zeros(50, int)).sum() == 0 and HitFinder(min_lit=20).threshold == 20


def test_follower_writes_the_hits_in_chunks_emc_can_poll(tmp_path):
    frames = FrameSet.synthetic(DET.shape, 30, 8, hit_fraction=0.25, photons_per_hit=300, background_photons=2)
    out = tmp_path / "follow"
    summary = Follower(ListSource(blocks_of(frames)), DET, out,
                       FollowSettings(threshold=100, chunk_frames=10, flush_s=0)).run()
    assert summary["frames_seen"] == frames.num_frames and summary["hits"] == frames.is_hit.sum()
    assert summary["end_reason"] == "all read" and summary["bad_trains"] == {}
    assert sorted(chunk_ids(out)) == sorted(hit_ids(frames))
    shards = ChunkShards(out, frames_per_shard=4)
    specs = shards.poll()
    assert [s.first_frame for s in specs] == list(np.cumsum([0] + [s.num_frames for s in specs[:-1]]))
    assert sum(s.num_frames for s in specs) == frames.is_hit.sum() and max(s.num_frames for s in specs) <= 4
    assert shards.finished() and shards.poll() == [] and shards.end_reason == "all read"
    first = read_photons(specs[0].photons, specs[0].start, specs[0].stop)
    assert first.frame_counts().min() > 100
    stats = read_frame_stats(out / layout.FOLLOW_FRAMES)
    assert stats.dtype == FRAME_STATS and len(stats) == frames.num_frames
    assert np.array_equal(stats["hit"].astype(bool), frames.is_hit)
    assert sorted(stats["frame"][stats["hit"] == 1]) == list(range(int(frames.is_hit.sum())))
    status = json.loads((out / layout.FOLLOW_STATUS).read_text())
    assert status["state"] == "ended" and status["frames_seen"] == frames.num_frames
    assert sum(status["lit_histogram"]["counts"]) == frames.num_frames
    assert Detector.read(out / layout.DETECTOR).shape == DET.shape


def test_a_geometry_that_does_not_fit_stops_before_anything_is_written(tmp_path):
    block = Block(np.zeros((4, 16, 64), np.float32), [1] * 4, range(4), "run")
    with pytest.raises(InputError, match="geometry does not match"):
        Follower(ListSource([block]), DET, tmp_path / "follow").run()
    assert not (tmp_path / "follow").exists()


def test_a_restarted_source_is_deduplicated_by_train_id(tmp_path, caplog):
    frames = FrameSet.synthetic(DET.shape, 20, 5, hit_fraction=0.3, photons_per_hit=300)
    out = tmp_path / "follow"
    settings = FollowSettings(threshold=100, chunk_frames=4, flush_s=0)
    Follower(ListSource(blocks_of(frames, range(10))), DET, out, settings).run()
    (out / layout.FOLLOW_INDEX).write_text("".join(line for line in open(out / layout.FOLLOW_INDEX)
                                                   if '"end"' not in line))   # as if it had crashed
    with caplog.at_level(logging.INFO, logger="spibatch"):
        summary = Follower(ListSource(blocks_of(frames)), DET, out, settings).run()   # the source starts over
    assert summary["bad_trains"] == {"already ingested": 10}
    assert "trains 10000..10009 already ingested" in caplog.text
    ids = chunk_ids(out)
    assert len(ids) == len(set(ids)) and set(ids) == hit_ids(frames)


def test_bad_trains_are_logged_counted_and_skipped(tmp_path, caplog):
    frames = FrameSet.synthetic(DET.shape, 8, 4, hit_fraction=0.5, photons_per_hit=300)
    good = blocks_of(frames)
    wrong = Block(np.zeros((4, 16, 16), np.float32), [10004] * 4, range(4), "memory")
    repeated = blocks_of(frames, [2])[0]
    items = good[:4] + [wrong, repeated] + good[5:]
    out = tmp_path / "follow"
    with caplog.at_level(logging.WARNING, logger="spibatch"):
        summary = Follower(ListSource(items), DET, out, FollowSettings(threshold=100, flush_s=0)).run()
    assert summary["bad_trains"] == {"wrong shape": 1, "repeated or non-monotonic train ID": 1}
    lines = [r.getMessage() for r in caplog.records]
    assert any("memory: train 10004: data: frames of shape (16, 16)" in line for line in lines)
    assert any("memory: train 10002: train_id: not above the last train taken (10004)" in line for line in lines)
    kept = [k for k in range(8) if k != 4]
    assert set(chunk_ids(out)) == hit_ids(frames, kept)
    status = json.loads((out / layout.FOLLOW_STATUS).read_text())
    assert status["bad_trains_total"] == 2


def test_a_bogus_train_id_far_ahead_is_not_taken_and_does_not_block_the_rest(tmp_path):
    """One train ID 2^62 among real ones (a bad message): skipped as a jump; the trains after it are taken."""
    frames = FrameSet.synthetic(DET.shape, 8, 4, hit_fraction=0.5, photons_per_hit=300)
    good = blocks_of(frames)
    bogus = Block(good[3].data, [2 ** 62] * 4, range(4), "bridge")
    out = tmp_path / "follow"
    summary = Follower(ListSource(good[:3] + [bogus] + good[3:]), DET, out,
                       FollowSettings(threshold=100, flush_s=0)).run()
    assert summary["bad_trains"] == {"train ID jump": 1}
    assert set(chunk_ids(out)) == hit_ids(frames)


def test_a_bogus_first_train_id_is_not_taken(tmp_path):
    """The first train ever has no last train to jump from: an ID outside 0..2^40 is still refused, else every
    real train after it would be 'repeated'."""
    frames = FrameSet.synthetic(DET.shape, 6, 4, hit_fraction=0.5, photons_per_hit=300)
    good = blocks_of(frames)
    items = [Block(good[0].data, [2 ** 62] * 4, range(4), "bridge"), Block(good[0].data, [2 ** 41] * 4, range(4), "bridge")]
    out = tmp_path / "follow"
    summary = Follower(ListSource(items + good), DET, out, FollowSettings(threshold=100, flush_s=0)).run()
    assert summary["bad_trains"] == {"train ID jump": 2}
    assert set(chunk_ids(out)) == hit_ids(frames)


def test_the_stop_file_ends_the_follow_after_committing(tmp_path):
    """`spibatch stop` says the data have ended: what has arrived (here: three more trains waiting in the
    source) is still read and committed, then the follow ends, naming the stop file."""
    frames = FrameSet.synthetic(DET.shape, 6, 4, hit_fraction=0.5, photons_per_hit=300)
    stop = tmp_path / layout.STOP

    class Stopping(ListSource):
        def read(self):
            items = super().read()
            if len(self.items) == 3:
                stop.touch()
            return items

    out = tmp_path / "follow"
    summary = Follower(Stopping(blocks_of(frames)), DET, out, FollowSettings(threshold=100, flush_s=60),
                       stop_file=stop).run()
    assert summary["end_reason"].startswith("stop file") and summary["trains"] == 6
    assert set(chunk_ids(out)) == hit_ids(frames, range(6))


def test_resuming_with_another_detector_is_refused(tmp_path):
    frames = FrameSet.synthetic(DET.shape, 2, 4, hit_fraction=0.5, photons_per_hit=300)
    out = tmp_path / "follow"
    Follower(ListSource(blocks_of(frames)), DET, out, FollowSettings(threshold=100, flush_s=0)).run()
    (out / layout.FOLLOW_INDEX).write_text("".join(line for line in open(out / layout.FOLLOW_INDEX)
                                                   if '"end"' not in line))
    other = Detector.flat(32, 1e-3, 0.2, 1e-9)
    with pytest.raises(InputError, match="started with another detector"):
        Follower(ListSource(blocks_of(FrameSet.synthetic(DET.shape, 4, 4, first_train=20000))), other, out).run()


def test_a_crash_mid_commit_is_cleaned_up_on_resume(tmp_path, caplog):
    """What a kill between the chunk, the statistics and the index line leaves: an orphan chunk, records past
    the last line, a torn last line; the resumed follower drops them and goes on with nothing doubled."""
    frames = FrameSet.synthetic(DET.shape, 12, 4, hit_fraction=0.5, photons_per_hit=300)
    out = tmp_path / "follow"
    settings = FollowSettings(threshold=100, chunk_frames=2, flush_s=0)
    Follower(ListSource(blocks_of(frames, range(6))), DET, out, settings).run()
    index = out / layout.FOLLOW_INDEX
    lines = [line for line in open(index) if '"end"' not in line]
    index.write_text("".join(lines) + '{"commit": 99, "chunk": "chunk_0000')
    (out / layout.CHUNKS_DIR / layout.chunk_name(999)).write_bytes(b"half a chunk")
    with open(out / layout.FOLLOW_FRAMES, "ab") as f:
        f.write(b"\0" * FRAME_STATS.itemsize * 3)
    with caplog.at_level(logging.WARNING, logger="spibatch"):
        summary = Follower(ListSource(blocks_of(frames)), DET, out, settings).run()
    assert "a torn last line" in caplog.text and "chunk_000999.emc: not in the index" in caplog.text
    assert not (out / layout.CHUNKS_DIR / layout.chunk_name(999)).exists()
    ids = chunk_ids(out)
    assert len(ids) == len(set(ids)) and set(ids) == hit_ids(frames)
    stats = read_frame_stats(out / layout.FOLLOW_FRAMES)
    assert summary["frames_seen"] == len(stats) == frames.num_frames and stats["train_id"].min() == frames.first_train


@pytest.mark.parametrize("where", ["read", "process"])
def test_an_interrupted_follow_commits_what_it_received_whole(tmp_path, where, monkeypatch):
    """The live audit: SIGTERM of a Karabo-bridge follower lost the trains received since the last commit (up to
    flush_s of them: a stream cannot send them again).  Now the interrupt commits every item processed whole (no
    end line: a resume goes on), and an item it cut short is dropped with its trains, so a resume takes them."""
    frames = FrameSet.synthetic(DET.shape, 8, 4, hit_fraction=0.5, photons_per_hit=300)
    blocks = blocks_of(frames)
    out = tmp_path / "follow"
    settings = FollowSettings(threshold=100, flush_s=3600, chunk_frames=10 ** 6)   # nothing committed on its own

    class Interrupted(ListSource):
        calls = 0

        def read(self):
            Interrupted.calls += 1
            if where == "read" and Interrupted.calls == 6:
                raise KeyboardInterrupt("SIGTERM")
            return super().read()

    if where == "process":      # the signal lands inside the sixth block's processing, after its trains were taken
        from spibatch.stream import follower as follower_module

        real = follower_module.Follower._process
        seen = []

        def cut(self, block, keep):
            seen.append(block)
            if len(seen) == 6:
                raise KeyboardInterrupt("SIGTERM")
            return real(self, block, keep)

        monkeypatch.setattr(follower_module.Follower, "_process", cut)
    with pytest.raises(KeyboardInterrupt):
        Follower(Interrupted(blocks), DET, out, settings).run()
    index = [json.loads(line) for line in open(out / layout.FOLLOW_INDEX)]
    assert not any("end" in line for line in index) and index[-1]["last_train"] == frames.first_train + 4
    assert set(chunk_ids(out)) == hit_ids(frames, range(5))        # the five whole trains, kept
    assert json.loads((out / layout.FOLLOW_STATUS).read_text())["state"] == "interrupted"
    monkeypatch.undo()
    summary = Follower(ListSource(blocks), DET, out, FollowSettings(threshold=100, flush_s=0)).run()   # resumed
    ids = chunk_ids(out)
    assert len(ids) == len(set(ids)) and set(ids) == hit_ids(frames) and summary["frames_seen"] == frames.num_frames


CHILD = """
import sys, time
from pathlib import Path
from spibatch import interrupts
from spibatch.stream import store as store_mod
from spibatch.stream.follower import Follower, FollowSettings
from spibatch.stream.replay import FrameSet
from spibatch.detector import Detector
from stream_helpers import ListSource, blocks_of
real = store_mod._fsync
def slow(path):                       # a shared file system's fsync: the signals land inside the commit
    print("fsync", flush=True)
    time.sleep(0.6)
    real(path)
store_mod._fsync = slow
det = Detector.flat(32, 1e-3, 0.1, 1e-9)
frames = FrameSet.synthetic(det.shape, 40, 4, hit_fraction=0.5, photons_per_hit=300)
interrupts.install()
Follower(ListSource(blocks_of(frames)), det, Path(sys.argv[1]),
         FollowSettings(threshold=100, flush_s=3600, chunk_frames=8)).run()
"""


def test_a_signal_during_a_commit_waits_for_it(tmp_path):
    """The review: Ctrl-C (SIGINT to the driver's process group) then the driver's SIGTERM, landing while a commit
    ran, lost that batch (its chunk removed as an orphan on the resume; a bridge cannot resend it).  The follow
    job's signals are now raised once the commit is durable, and a second one does not cut the clean-up."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "follow"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout.readline().strip() == "fsync"          # inside the first commit
    time.sleep(0.2)
    child.send_signal(signal.SIGINT)
    time.sleep(0.1)
    child.send_signal(signal.SIGTERM)
    child.communicate(timeout=120)
    assert child.returncode != 0
    index = [json.loads(line) for line in open(out / layout.FOLLOW_INDEX)]
    assert index and index[0]["hits"] >= 8 and not any("end" in line for line in index)
    assert len(chunk_ids(out)) == index[-1]["hits"]


@pytest.mark.parametrize("dtype", [np.float64, ">f8", np.int32, np.float32, np.uint16])
def test_counter_counts_float64_and_wide_integers_as_batch_ingest(dtype):
    """Values within float32 rounding of a half photon: a float32 cast of float64 data turned 2.5000001 ADU into
    2.5 (2 photons, batch ingest 3); wide integers above 2^24 lost their last bits."""
    from spibatch.kernels.photons_cpu import sparse_counts

    if np.dtype(dtype).kind == "f":
        values = np.array([[2.5000001, 0.5000001, 1.4999999, 3.4999999, 0.0, 7.0, -2.0, 1.0]], dtype)
    else:
        top = np.iinfo(dtype).max
        values = np.array([[min(2 ** 24 + 1, top), 3, 0, 1, 2, min(60000, top), 0, 5]], dtype)
    counter = Counter(values.shape[1])
    tally = counter.tally(values)
    ours = counter.fill(values, np.array([0]), tally).to_dense()
    arrays, flags = sparse_counts(values, None, 1.0, True)
    batch = Photons(values.shape[1], *arrays).to_dense()
    assert np.array_equal(ours, batch), (ours, batch)
    assert tally["photons"][0] == batch.sum()
