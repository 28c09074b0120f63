"""The EMC driver in-process: outputs and their consistency, the HTC unit, beta, shards, divergence, settings."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from spibatch.config import EMC, BetaSchedule
from spibatch.emc import driver, hooks, mpi, records
from spibatch.emc.executors import InProcess, run_shards
from spibatch.emc.settings import EMCSettings
from spibatch.emc.step import random_model, shard_step
from spibatch.emc.types import Geometry, Rotations, ShardSpec, StepState, reduce
from spibatch.errors import InputError
from spibatch.detector import Detector
from spibatch.io.results import read_result


def settings(**kw) -> EMCSettings:
    """The pipeline file's emc section (validated) as the driver's settings."""
    return EMCSettings.from_dict(EMC(**{"num_div": 2, "iterations": 3, "frames_per_shard": 60, **kw}).model_dump())


def run(cfg: EMCSettings, emc_small, out, **kw) -> dict:
    return driver.run_emc(cfg, emc_small["photons"], emc_small["detector"], out, executor=InProcess(), **kw)


def test_outputs_present_consistent_and_atomic(emc_small, tmp_path):
    out = tmp_path / "emc"
    paths = run(settings(), emc_small, out)
    assert paths["intensity"] == out / "output_003.h5"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["EMC.log", "checkpoint.h5", "metrics.jsonl", "output_001.h5", "output_002.h5", "output_003.h5"]

    rows = records.read_log_table(out / "EMC.log")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [1, 2, 3] and [m["iteration"] for m in metrics] == [1, 2, 3]
    for row, m in zip(rows, metrics):
        assert row["num_rot"] == m["num_rot"] == 420 and m["mpi_ranks"] == 1 and m["num_frames"] == 240
        assert row["rms_change"] == pytest.approx(m["rms_change"], rel=1e-4)
        assert row["info_rate"] == pytest.approx(m["mutual_info"], abs=1e-6)
        assert row["beta"] == pytest.approx(m["beta_mean"], abs=1e-6)
        assert {"step_s", "combine_s", "finish_s", "write_s"} <= set(m["timing"])
        assert {"expand_s", "likelihood_s", "merge_s"} <= set(m["timing"])        # the step's phases
        assert sum(v for k, v in m["timing"].items() if k not in ("step_s", "combine_s", "finish_s", "write_s")) \
            <= m["timing"]["step_s"] * 1.01 + 1e-3
    assert metrics[0]["rms_change"] > metrics[2]["rms_change"]                    # it settles
    assert metrics[2]["log_likelihood"] > metrics[0]["log_likelihood"]            # and fits better

    data, attrs = read_result(out / "output_003.h5")
    rotations = Rotations.refined_600_cell(2)
    assert data["intensity"].dtype == np.float32 and data["intensity"].shape == (91, 91, 91)
    assert data["orientations"].dtype == np.int32 and data["orientations"].shape == (240,)
    assert ((data["orientations"] >= 0) & (data["orientations"] < 420)).all()
    assert np.array_equal(data["quaternions"], rotations.quaternions[data["orientations"]])
    assert ((data["best_probability"] > 0) & (data["best_probability"] <= 1)).all()
    assert data["scale"].mean() == pytest.approx(1.0) and (data["scale"] > 0).all()
    assert data["log_likelihood"].shape == data["mutual_info"].shape == (240,)
    assert attrs["iteration"] == 3 and attrs["beta"] == pytest.approx(metrics[2]["beta_mean"])
    assert json.loads(attrs["metrics"])["rms_change"] == metrics[2]["rms_change"]

    with h5py.File(out / "checkpoint.h5") as f:
        assert f.attrs["iteration"] == 3
        assert np.array_equal(f["model"][()].astype(np.float32), data["intensity"])
        assert np.array_equal(f["scales"][()], data["scale"])
    assert not list(out.glob(".*"))                                               # no temporary files left


def test_emc_iteration_is_reduce_of_shard_steps(emc_small):
    """The HTC contract: one task per shard, then reduce, gives the in-process sums bit for bit."""
    geometry = Geometry.build(emc_small["detector"], 1)
    specs = ShardSpec.cut(emc_small["photons"], 0, 240, 100)
    assert [(s.start, s.stop, s.first_frame) for s in specs] == [(0, 100, 0), (100, 200, 100), (200, 240, 200)]
    shards = [spec.load(geometry.pixels) for spec in specs]
    assert [s.num_frames for s in shards] == [100, 100, 40]
    counts = np.concatenate([s.counts for s in shards])
    size = Detector.read(emc_small["detector"]).model_size()
    model = random_model(size, geometry.pixels, geometry.rotations, counts.mean(), 5)
    state = StepState(1, settings().beta_for(1, counts), np.ones(240))
    ours = run_shards(shard_step, model, geometry, shards[::-1], state)   # order does not matter
    tasks = reduce([shard_step(model, geometry.rotations, geometry.pixels, s, state) for s in shards])
    assert np.array_equal(ours.numerator, tasks.numerator)
    assert np.array_equal(ours.denominator, tasks.denominator)
    assert set(ours.frames) == set(tasks.frames)
    assert all(np.array_equal(ours.frames[k], tasks.frames[k]) for k in tasks.frames)


def test_beta_auto_fixed_factor_and_schedule():
    counts = np.array([100.0, 1000.0, 10000.0])
    auto = settings(beta_schedule=None).beta_for(7, counts)
    assert np.allclose(auto, np.exp(-6.5 * (counts / 1e5) ** 0.15))
    assert auto[0] > auto[1] > auto[2]                          # brighter frames anneal more gently
    cfg = settings(beta=0.5, beta_factor=2.0, beta_schedule=BetaSchedule(factor=2.0, period=10))
    got = [cfg.beta_for(it, counts)[0] for it in (1, 10, 11, 20, 21, 30)]
    assert got == [1.0, 1.0, 2.0, 2.0, 4.0, 4.0]                # Dragonfly's `beta_schedule = 2.0 10`


@pytest.mark.parametrize("num_shards,size", [(1, 1), (4, 2), (5, 2), (7, 3), (3, 3)])
def test_ranks_own_contiguous_whole_shards(num_shards, size):
    owned = [mpi.rank_shards(num_shards, r, size) for r in range(size)]
    assert [k for ks in owned for k in ks] == list(range(num_shards))      # contiguous, in order, all
    assert max(map(len, owned)) - min(map(len, owned)) <= 1 and len(owned[0]) >= 1
    assert mpi.shard_bounds(250, 60) == [(0, 60), (60, 120), (120, 180), (180, 240), (240, 250)]


def test_divergence_stops_naming_the_iteration_and_keeps_earlier_outputs(emc_small, tmp_path, monkeypatch):
    real_finish = driver.finish

    def diverging(total, model, need_scaling, friedel=False, *background):
        new, scales, metrics = real_finish(total, model, need_scaling, friedel, *background)
        if len(driver_calls) == 1:
            scales = scales * 1e9
        driver_calls.append(1)
        return new, scales, metrics

    driver_calls: list[int] = []
    monkeypatch.setattr(driver, "finish", diverging)
    out = tmp_path / "emc"
    with pytest.raises(InputError, match=r"iteration 2: .*diverged.*scale factor.*need_scaling: false"):
        run(settings(), emc_small, out)
    assert (out / "output_001.h5").is_file() and not (out / "output_002.h5").exists()
    assert [r["iter"] for r in records.read_log_table(out / "EMC.log")] == [1]
    with h5py.File(out / "checkpoint.h5") as f:
        assert f.attrs["iteration"] == 1


def test_nan_model_is_divergence_too():
    scales = np.ones(4)
    model = np.ones((3, 3, 3))
    driver._check_diverged(5, model, scales, 1e6, "p.h5")   # fine
    model[1, 1, 1] = np.nan
    with pytest.raises(InputError, match="iteration 5: .*1 model voxels are NaN"):
        driver._check_diverged(5, model, scales, 1e6, "p.h5")
    with pytest.raises(InputError, match="model voxel reached 2e"):
        driver._check_diverged(5, np.full((3, 3, 3), 2e7), scales, 1e6, "p.h5")


def test_resume_refuses_changed_settings(emc_small, tmp_path):
    out = tmp_path / "emc"
    run(settings(iterations=1), emc_small, out)
    before = (out / "output_001.h5").read_bytes()
    with pytest.raises(InputError, match="settings differ .*: need_scaling"):
        run(settings(iterations=2, need_scaling=False), emc_small, out, resume=True)
    assert (out / "output_001.h5").read_bytes() == before and not (out / "output_002.h5").exists()


@pytest.mark.parametrize("damage, words", [
    (lambda m: m.reshape(-1)[: m.size // 2], "the checkpoint's model holds"),
    (lambda m: np.full_like(m, np.nan), "NaN or infinite"),
])
def test_resume_refuses_a_damaged_checkpoint_model(emc_small, tmp_path, damage, words):
    """A checkpoint whose model was cut short or holds NaN: one line before iteration 2 (was a reshape traceback,
    or a run of NaN models that exited 0)."""
    out = tmp_path / "emc"
    run(settings(iterations=1), emc_small, out)
    with h5py.File(out / "checkpoint.h5", "r+") as f:
        model = f["model"][()]
        del f["model"]
        f["model"] = damage(model)
    with pytest.raises(InputError, match=words):
        run(settings(iterations=2), emc_small, out, resume=True)
    assert not (out / "output_002.h5").exists()


def test_friedel_and_point_group_symmetry_hold_in_the_model(emc_small, tmp_path):
    out = tmp_path / "emc"
    run(settings(iterations=1, friedel_symmetry=True, point_group="C2"), emc_small, out)
    model = read_result(out / "output_001.h5")[0]["intensity"]
    assert np.array_equal(model, model[::-1, ::-1, ::-1]) and model.max() > 0       # I(q) = I(-q)
    assert np.allclose(model, model[::-1, ::-1, :], rtol=1e-5, atol=1e-6 * model.max())   # 2-fold axis along z
    assert "point_group = C2" in (out / "EMC.log").read_text()


def test_hooks_hear_each_iteration_after_its_files(emc_small, tmp_path, caplog):
    out = tmp_path / "emc"
    heard = []

    def hook(record):
        with h5py.File(out / "checkpoint.h5") as f:                               # written before the hook
            heard.append((record["iteration"], int(f.attrs["iteration"]), record["num_frames"]))

    with caplog.at_level("INFO", logger="spibatch"), hooks.standard(3, bar=False) as standard:
        run(settings(), emc_small, out, on_iteration=[hook, *standard])
    assert heard == [(1, 1, 240), (2, 2, 240), (3, 3, 240)]
    rows = [r.getMessage() for r in caplog.records if r.getMessage()[:2] in ("1\t", "2\t", "3\t")]
    assert len(rows) == 3 and rows[2].startswith("3\t")                         # the EMC.log rows, as log lines


def test_files_are_written_while_the_next_iteration_computes_and_a_failed_write_stops_the_run(emc_small, tmp_path,
                                                                                              monkeypatch):
    """A hook that needs no files hears an iteration while its files are still being written; the files are
    all on disk when run_emc returns; a write that fails (a full disk) ends the run with its error, the earlier
    iterations' files kept."""
    import time

    from spibatch.io.atomic import DiskFull

    real_write = records.write_iteration

    def slow_write(out_dir, iteration, *args):
        time.sleep(0.5)
        if iteration == 3 and fail:
            raise DiskFull("no space left on device", path=out_dir / "output_003.h5")
        return real_write(out_dir, iteration, *args)

    monkeypatch.setattr(records, "write_iteration", slow_write)
    out, heard, fail = tmp_path / "emc", [], False

    def early(record):
        heard.append((record["iteration"], (out / records.output_name(record["iteration"])).exists()))

    early.needs_files = False
    paths = run(settings(), emc_small, out, on_iteration=[early])
    assert heard == [(1, False), (2, False), (3, False)]                 # heard before its file was written
    assert paths["intensity"].is_file() and len(records.read_log_table(out / "EMC.log")) == 3
    fail, out = True, tmp_path / "full"
    with pytest.raises(DiskFull, match="no space"):
        run(settings(iterations=5), emc_small, out, on_iteration=[early])
    assert (out / "output_002.h5").is_file() and not (out / "output_003.h5").exists()
    with h5py.File(out / "checkpoint.h5") as f:
        assert f.attrs["iteration"] == 2


def test_the_hold_hook_comes_from_the_environment():
    assert hooks.hold_hooks({}) == [] and hooks.hold_hooks({hooks.HOLD_ENV: "0"}) == []
    [hold] = hooks.hold_hooks({hooks.HOLD_ENV: "2"})
    hold({"iteration": 1})                                                       # not the one: no sleep
    assert len(hooks.hold_hooks({hooks.HOLD_ENV: "x"})) == 0 and hooks.hold_hooks({hooks.HOLD_ENV: "2:x"}) == []
    [short] = hooks.hold_hooks({hooks.HOLD_ENV: "2:0.3"})
    import time
    began = time.monotonic()
    short({"iteration": 2})
    assert 0.3 <= time.monotonic() - began < 30                                 # a hold of 0.3 s, not an hour


def test_a_start_model_at_another_level_is_brought_to_the_data(emc_small, tmp_path):
    """A start model 100x too bright (a truth in other units): with per-frame scaling the level error flipped to
    its inverse every iteration (model sums 373 -> 301 678 -> 1 526 -> 246 300 ...); brought to the frames'
    photons first, the run from it is the run from the same model at its own level."""
    from spibatch.io.results import write_result

    first = run(settings(iterations=2), emc_small, tmp_path / "first")["intensity"]
    model = read_result(first)[0]["intensity"].astype(np.float64)
    sums = {}
    for factor in (1.0, 100.0, 1e-3):
        write_result(tmp_path / f"start{factor:g}.h5", {"intensity": (model * factor).astype(np.float32)}, {})
        out = tmp_path / f"from{factor:g}"
        run(settings(iterations=3, start_model=tmp_path / f"start{factor:g}.h5"), emc_small, out)
        sums[factor] = [float(read_result(out / f"output_00{i}.h5")[0]["intensity"].sum()) for i in (1, 2, 3)]
    for factor in (100.0, 1e-3):
        np.testing.assert_allclose(sums[factor], sums[1.0], rtol=1e-3)
