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


def test_an_emc_that_started_on_data_all_in_runs_as_a_batch_run_would_unless_it_settled():
    """EMC started late (the workers came up after the last frame): after_end does not cut it below
    emc.iterations; a settled model still ends it."""
    source = Source()
    source.ended = True
    stop = FollowStop(source, after_end=3, at_least=6)
    answers = [stop(record(i, 1.0 + 0.2 * i, -900.0 + 10 * i, change=0.04)) for i in range(1, 8)]
    assert answers == [False, False, False, False, False, True, True]
    assert FollowStop(source, after_end=3, at_least=6)(record(1, 1.0, -900.0, change=0.005)), "settled at once"
