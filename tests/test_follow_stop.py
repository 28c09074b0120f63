"""A following run's EMC: when it stops after the source ended, and how its annealing ends (spibatch.stages.live)."""

import numpy as np

from spibatch.emc.settings import BetaSchedule, EMCSettings
from spibatch.stages.live import FollowStop


class Source:
    """A stand-in for ChunkShards: finished() once ``ended`` is set."""

    def __init__(self):
        self.ended = False

    def finished(self) -> bool:
        return self.ended


def record(iteration, mi, ll, frames=1000, change=0.05):
    """An iteration's metrics; ``change``: the model's rms change as a fraction of its rms."""
    return {"iteration": iteration, "mutual_info": mi, "log_likelihood": ll, "num_frames": frames,
            "rms_change": change * 0.3, "model_rms": 0.3}


def test_never_stops_while_the_source_records_even_when_level():
    source, stop = Source(), FollowStop(Source(), after_end=3)
    stop.source = source
    assert not any(stop(record(i, 3.0, -800.0)) for i in range(1, 20))
    assert not stop.ended


def test_stops_at_the_first_level_iteration_after_the_end():
    source = Source()
    stop = FollowStop(source, after_end=8)
    assert not stop(record(1, 3.00, -840.0))
    source.ended = True
    assert not stop(record(2, 3.10, -835.0)), "3 % more mutual information is not level"
    assert stop.ended
    assert not stop(record(3, 3.11, -834.0)), "0.3 % is not level either (PLATEAU 2e-3)"
    assert stop(record(4, 3.1105, -834.05)), "a change of 2e-4 / 6e-5 is level"


def test_the_first_iteration_with_every_frame_may_be_the_last():
    """The last chunk moved a converged model little: no further iteration is waited for."""
    source = Source()
    stop = FollowStop(source, after_end=8)
    assert not stop(record(20, 3.9000, -832.00, frames=980))
    source.ended = True
    assert stop(record(21, 3.9030, -832.05, frames=1000))


def test_a_model_that_moved_less_than_one_percent_has_settled():
    """After an annealing step mutual information still climbs while the model hardly moves."""
    source = Source()
    stop = FollowStop(source, after_end=8)
    assert not stop(record(11, 2.82, -850.0, change=0.018))
    source.ended = True
    assert not stop(record(12, 2.98, -845.0, change=0.011)), "1.1 % is still moving"
    assert stop(record(13, 3.03, -843.0, change=0.008))


def test_the_model_level_is_not_asked_before_the_end():
    source = Source()
    stop = FollowStop(source, after_end=8)
    assert not stop(record(5, 1.0, -900.0, change=0.001))


def test_at_most_after_end_iterations_after_the_end():
    source = Source()
    stop = FollowStop(source, after_end=3)
    source.ended = True
    answers = [stop(record(i, 3.0 + 0.1 * i, -800.0 + i)) for i in range(5, 9)]
    assert answers == [False, False, True, True]


def test_anneal_until_holds_beta_after_the_batch_runs_last_iteration():
    counts = np.array([1000.0, 4000.0])
    free = EMCSettings(beta_schedule=BetaSchedule(2.0, 10))
    held = EMCSettings(beta_schedule=BetaSchedule(2.0, 10), anneal_until=20)
    first = free.beta_for(1, counts)
    assert np.allclose(held.beta_for(20, counts), 2 * first)
    assert np.allclose(held.beta_for(21, counts), 2 * first), "held from iteration 20 on"
    assert np.allclose(held.beta_for(500, counts), 2 * first)
    assert np.allclose(free.beta_for(21, counts), 4 * first), "without the cap it doubles on"
    assert np.allclose(held.beta_for(11, counts), free.beta_for(11, counts))


def test_an_emc_that_started_on_data_all_in_runs_as_a_batch_run_would():
    """EMC started late (the workers came up after the last frame): neither after_end nor a model that moves
    little while beta still rises cuts it below emc.iterations (the live audit: it stopped at 14 of 20 as
    "settled", cc 0.9632 against the batch run's 0.9651); at emc.iterations the rules apply again."""
    source = Source()
    source.ended = True
    stop = FollowStop(source, after_end=3, at_least=6)
    answers = [stop(record(i, 1.0 + 0.2 * i, -900.0 + 10 * i, change=0.04)) for i in range(1, 8)]
    assert answers == [False, False, False, False, False, True, True]
    settled = FollowStop(source, after_end=30, at_least=6)
    answers = [settled(record(i, 1.0 + 0.2 * i, -900.0 + 10 * i, change=0.005)) for i in range(1, 8)]
    assert answers == [False, False, False, False, False, True, True], "settled: only from emc.iterations on"
    live = Source()      # an EMC that iterated while the data arrived: the first settled iteration after the end
    through = FollowStop(live, after_end=30, at_least=6)
    assert not through(record(1, 1.0, -900.0, change=0.2))
    live.ended = True
    assert through(record(2, 1.0, -900.0, change=0.005))


def test_a_preview_names_the_arrival_of_its_own_newest_frame(tmp_path):
    """The live audit: a preview of an iteration on 153 hits said its newest frame arrived when the 160th had
    (the follow's last arrival when the preview started): its latency understated by a second.  Now the arrival
    of the newest frame of the commits the iteration holds."""
    import json

    from spibatch import layout
    from spibatch.layout import RunLayout
    from spibatch.stages.live import Previews

    run = RunLayout(tmp_path)
    run.follow.mkdir(parents=True)
    lines = [{"commit": 1, "chunk": layout.chunk_name(1), "first_frame": 0, "frames": 10, "hits": 10,
              "last_received": 100.0},
             {"commit": 2, "chunk": None, "first_frame": 10, "frames": 0, "hits": 10, "last_received": 150.0},
             {"commit": 3, "chunk": layout.chunk_name(2), "first_frame": 10, "frames": 7, "hits": 17,
              "last_received": 200.0}]
    (run.follow / layout.FOLLOW_INDEX).write_text("".join(json.dumps(line) + "\n" for line in lines))
    run.follow_status.write_text(json.dumps({"state": "following", "last_received": 300.0}))
    asked = []
    previews = Previews(run, lambda fn, *args: asked.append(args), every=1)
    previews._launch({"iteration": 4, "num_frames": 10})
    previews._launch({"iteration": 5, "num_frames": 17})
    assert [a[2] for a in asked] == [100.0, 200.0] and [a[3] for a in asked] == [10, 17]


def test_emc_stops_in_one_line_when_the_follower_is_gone(tmp_path):
    """The live audit: a follower killed (SIGKILL, OOM) or crashed writes no end line, and EMC iterated on for
    100 000 iterations, filling the disk; `spibatch stop` could not end it (the follower reads the stop file).
    Now its heartbeat (follow/alive) unchanged for FOLLOWER_STALE_S, or its job's record of an end without the
    stage's marker, stops EMC with the way on."""
    import json
    import os
    import time

    import pytest

    from spibatch.errors import InputError
    from spibatch.layout import RunLayout
    from spibatch.stages.live import FollowerLife

    run = RunLayout(tmp_path)
    run.follow_alive.parent.mkdir(parents=True)       # (follow/ comes with the first train: not needed)
    run.follow_alive.touch()
    source = Source()
    stop = FollowStop(source, after_end=3, life=FollowerLife(run, stale_s=0.3))
    assert not stop(record(1, 1.0, -900.0))
    for i in range(2, 6):                     # beating: EMC goes on waiting for the end
        time.sleep(0.1)
        os.utime(run.follow_alive, ns=(time.time_ns(), time.time_ns() + i * 10 ** 9))
        assert not stop(record(i, 1.0, -900.0))
    time.sleep(0.4)                           # no beat: gone
    with pytest.raises(InputError, match=r"follower stopped without ending the follow \(no sign of it for .*"
                                         r"EMC stopped after iteration 6 on 1000 hits.*spibatch resume"):
        stop(record(6, 1.0, -900.0))
    run.stage_result("follow").parent.mkdir(parents=True, exist_ok=True)
    run.stage_result("follow").write_text(json.dumps({"status": "failed", "error": "interrupted (SIGTERM)"}))
    with pytest.raises(InputError, match="follow stage failed without ending the follow: interrupted"):
        FollowerLife(run, stale_s=3600).check("EMC stopped")
    source.ended = True                       # an ended follow is never asked about
    assert FollowStop(source, after_end=1, life=FollowerLife(run, stale_s=0))(record(7, 1.0, -900.0))


def test_a_settled_emc_waits_for_new_frames_instead_of_iterating():
    """The live audit: while the source paused, EMC iterated on the same hits and wrote an output file each
    iteration (1331 files, 485 MB in 90 s at 45^3).  Once the model has settled on frames that did not change,
    the rule waits (no iteration) until new hits are committed or the follow ends; an unsettled model goes on."""
    import threading
    import time

    class Paused(Source):
        def __init__(self):
            super().__init__()
            self.new = False
            self.asked = 0

        def has_new(self):
            self.asked += 1
            return self.new or self.ended

    source = Paused()
    stop = FollowStop(source, after_end=3)
    assert not stop(record(1, 1.0, -900.0, frames=50, change=0.2))
    assert not stop(record(2, 1.1, -890.0, frames=50, change=0.2)) and source.asked == 0   # moving: iterate on
    timer = threading.Timer(0.8, lambda: setattr(source, "new", True))
    timer.start()
    began = time.monotonic()
    assert not stop(record(3, 1.1, -890.0, frames=50, change=0.005))      # settled, nothing new: waits
    assert time.monotonic() - began >= 0.7 and source.new
    source.new, asked = False, source.asked
    assert not stop(record(4, 1.1, -890.0, frames=60, change=0.005))      # new frames joined: no wait
    assert source.asked == asked                                          # (a wait asks the source first)
    paused = Paused()
    annealing = FollowStop(paused, after_end=3, at_least=20)              # the review: beta still rises
    annealing(record(1, 1.0, -900.0, frames=50, change=0.2))
    assert not annealing(record(2, 1.0, -900.0, frames=50, change=0.005)) and paused.asked == 0


def test_the_driver_says_how_the_follow_ended(tmp_path, caplog):
    """The live audit: a pause longer than source.idle_timeout_s ended the follow for good with 88 of 160 hits
    and the driver's terminal never said so (only stages/follow.log)."""
    import json
    import logging

    from spibatch.layout import RunLayout
    from spibatch.stages.live import say_how_the_follow_ended

    run = RunLayout(tmp_path)
    run.follow.mkdir(parents=True)
    run.follow_status.write_text(json.dumps({"end_reason": "no new train for 6 s", "frames_seen": 320, "hits": 88,
                                             "trains": 32}))
    with caplog.at_level(logging.INFO, logger="spibatch"):
        say_how_the_follow_ended(run)
    [said] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "ended (no new train for 6 s): 320 frames, 88 hits" in said.getMessage()
    assert "source.idle_timeout_s" in said.getMessage()


def test_the_heartbeat_beats_before_the_first_train(tmp_path):
    """The review: the heartbeat went into follow/, which the first good train makes: a follower alive and waiting
    for the beam longer than FOLLOWER_STALE_S was taken for dead.  It beats in stages/jobs/ from the start."""
    import time

    from spibatch.layout import RunLayout
    from spibatch.stages.follow import heartbeat
    from spibatch.stages.live import FollowerLife

    run = RunLayout(tmp_path)
    done = heartbeat(run)
    try:
        for _ in range(50):
            if run.follow_alive.exists():
                break
            time.sleep(0.02)
        assert run.follow_alive.exists() and not run.follow.exists()
        FollowerLife(run, stale_s=3600).check("EMC had not started")      # alive: no error
    finally:
        done.set()


def test_a_signal_inside_held_starts_the_watchdog_and_is_raised_at_its_end(monkeypatch):
    """The review: a signal inside `interrupts.held()` was only noted, so no watchdog started and a commit stuck
    on a hung file system could never be stopped; now it is received (the watchdog starts), raised at the end."""
    import os
    import signal

    import pytest

    from spibatch import interrupts

    started = []
    monkeypatch.setattr(interrupts, "_watchdog", lambda code: started.append(code))
    for name in ("_received", "_raised", "_deferred", "_where", "_holding"):
        monkeypatch.setattr(interrupts, name, [])
    before = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, interrupts._handler)
    try:
        reached = []
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            with interrupts.held():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):          # the handler runs between bytecodes: it has by now
                    pass
                reached.append(True)
        assert reached and started == [128 + signal.SIGTERM] and interrupts._received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, before)
