"""The EMC executors behind one interface, shards joining between iterations, and the package's import arrows."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import pytest

from spibatch.config import EMC, BetaSchedule
from spibatch.emc import driver, executors, gpu_step, step
from spibatch.emc.executors import InProcess, MPIRanks, Tasks, step_function
from spibatch.emc.settings import RESUME_KEYS, EMCSettings
from spibatch.emc.types import ShardSpec
from spibatch.errors import InputError
from spibatch.io.dragonfly import read_photons, write_photons
from spibatch.detector import Detector
from spibatch.io.results import read_result
from spibatch.kernels.device import CPU, Device

REPO = Path(__file__).resolve().parents[1]


def settings(**kw) -> EMCSettings:
    return EMCSettings.from_dict(EMC(**{"num_div": 2, "iterations": 3, "frames_per_shard": 60, **kw}).model_dump())


@pytest.fixture
def one_thread():
    """Numba on one thread in this (main) thread, as each task runs: the thread count moves the last bits."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


class Later:
    """A source whose shards arrive once ``after`` iterations are done (polled before each iteration)."""

    def __init__(self, specs: list[ShardSpec], after: int):
        self.specs, self.after, self.polls = specs, after, 0

    def poll(self) -> list[ShardSpec]:
        self.polls += 1
        return self.specs if self.polls == self.after + 1 else []


@pytest.fixture(scope="module")
def halves(emc_small, tmp_path_factory) -> dict[str, Path]:
    """The first 120 frames of emc_small in a file of their own; the run's other frames come from the whole file."""
    path = tmp_path_factory.mktemp("halves") / "first.h5"
    write_photons(path, read_photons(emc_small["photons"], 0, 120))
    return {"first": path, "whole": emc_small["photons"], "detector": emc_small["detector"]}


def read_run(out: Path) -> dict:
    data = {f"{p.name}:{k}": v for p in sorted(out.glob("output_*.h5")) for k, v in read_result(p)[0].items()}
    with h5py.File(out / "checkpoint.h5") as f:
        data.update(model=f["model"][()], scales=f["scales"][()])
    return data


def assert_same_run(a: Path, b: Path) -> None:
    first, second = read_run(a), read_run(b)
    assert sorted(first) == sorted(second)
    for key in first:
        assert np.array_equal(first[key], second[key]), key
    ours = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    theirs = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    assert [m["log_likelihood"] for m in ours] == [m["log_likelihood"] for m in theirs]


def test_tasks_through_a_thread_pool_give_the_in_process_model_bit_for_bit(emc_small, tmp_path, one_thread):
    cfg = settings()
    inputs = (emc_small["photons"], emc_small["detector"])
    driver.run_emc(cfg, *inputs, tmp_path / "in-process", executor=InProcess())
    with ThreadPoolExecutor(max_workers=2) as pool:
        tasks = Tasks(pool.submit, tmp_path / "tasks" / "htc", threads=1)
        paths = driver.run_emc(cfg, *inputs, tmp_path / "tasks", executor=tasks)
    assert paths["intensity"] == tmp_path / "tasks" / "output_003.h5"
    assert_same_run(tmp_path / "in-process", tmp_path / "tasks")
    timing = [json.loads(line) for line in (tmp_path / "tasks" / "htc" / "timing.jsonl").read_text().splitlines()]
    assert [t["tasks"] for t in timing] == [4, 4, 4]                     # 240 frames, shards of 60
    assert not list((tmp_path / "tasks" / "htc").glob("model_*.npy"))    # each broadcast model removed after use


def test_shards_joining_after_iteration_2_are_used(halves, tmp_path, one_thread):
    """Half the frames (from another photons file) arrive once iteration 2 is done: iterations 3 and 4 use all."""
    cfg = settings(iterations=4)
    later = ShardSpec.cut(halves["whole"], 120, 240, 60)                  # frames 120..240 of the run, too
    source = Later(later, after=2)
    paths = driver.run_emc(cfg, halves["first"], halves["detector"], tmp_path / "joined", executor=InProcess(),
                           source=source)
    out = tmp_path / "joined"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["num_frames"] for m in metrics] == [120, 120, 240, 240] and source.polls == 4
    early, final = read_result(out / "output_002.h5")[0], read_result(paths["intensity"])[0]
    assert early["orientations"].shape == (120,) and final["orientations"].shape == (240,)
    for key in ("scale", "best_probability", "log_likelihood", "mutual_info"):
        assert final[key].shape == (240,), key
    assert (final["best_probability"][120:] > 0).all() and (final["scale"][120:] > 0).all()
    assert final["scale"][120:].std() > 0                               # fitted, no longer the ones they started at
    with h5py.File(out / "checkpoint.h5") as f:
        assert f["scales"].shape == (240,) and f.attrs["iteration"] == 4

    # the new frames change the model: the same run without them ends elsewhere
    alone = driver.run_emc(cfg, halves["first"], halves["detector"], tmp_path / "alone", executor=InProcess())
    assert not np.array_equal(read_result(alone["intensity"])[0]["intensity"], final["intensity"])
    assert np.array_equal(read_result(tmp_path / "alone" / "output_002.h5")[0]["intensity"], early["intensity"])

    # and tasks take them the same way, bit for bit
    with ThreadPoolExecutor(max_workers=2) as pool:
        driver.run_emc(cfg, halves["first"], halves["detector"], tmp_path / "tasks", source=Later(later, after=2),
                       executor=Tasks(pool.submit, tmp_path / "tasks" / "htc", threads=1))
    assert_same_run(out, tmp_path / "tasks")


def test_small_shards_that_follow_each_other_join_up_to_frames_per_shard(halves, tmp_path, one_thread):
    """A live source's chunks are small; each shard costs an expand and a merge of every rotation per iteration,
    so the new ones join the last shard held while it holds at most ``frames_per_shard`` frames: the same
    photons as one shard read whole, and tasks group them the same way, bit for bit."""
    from spibatch.emc.types import Geometry, Shard

    geometry = Geometry.build(halves["detector"], 2)
    pieces = [spec.load(geometry.pixels) for spec in ShardSpec.cut(halves["whole"], 120, 240, 25)]
    whole = ShardSpec(os.fspath(halves["whole"]), 120, 240, 120).load(geometry.pixels)
    joined = Shard.joined(pieces)
    for field_ in ("first_frame", "ptr", "pixel", "count", "used_end", "counts", "log_factorial"):
        assert np.array_equal(getattr(joined, field_), getattr(whole, field_)), field_
    with pytest.raises(ValueError, match="do not follow each other"):
        Shard.joined([pieces[0], pieces[2]])

    cfg = settings(iterations=3, frames_per_shard=60)
    in_process = InProcess()
    driver.run_emc(cfg, halves["first"], halves["detector"], tmp_path / "joined", executor=in_process,
                   source=Later(ShardSpec.cut(halves["whole"], 120, 240, 25), after=1))
    # 120 frames in 2 shards of 60 at the start; then chunks of 25 join while the shard stays within 60: 50, 50, 20
    assert [s.num_frames for s in in_process.shards] == [60, 60, 50, 50, 20]
    with ThreadPoolExecutor(max_workers=2) as pool:
        tasks = Tasks(pool.submit, tmp_path / "tasks" / "htc", threads=1)
        driver.run_emc(cfg, halves["first"], halves["detector"], tmp_path / "tasks", executor=tasks,
                       source=Later(ShardSpec.cut(halves["whole"], 120, 240, 25), after=1))
    assert [sum(s.num_frames for s in group) for group in tasks.specs] == [60, 60, 50, 50, 20]
    assert_same_run(tmp_path / "joined", tmp_path / "tasks")


def test_new_shards_are_checked(halves, tmp_path):
    detector = Detector.read(halves["detector"])
    whole = os.fspath(halves["whole"])
    fine = driver.check_shards([ShardSpec(whole, 180, 240, 180), ShardSpec(whole, 120, 180, 120)], 120, detector,
                               halves["detector"])
    assert [s.first_frame for s in fine] == [120, 180]                   # in frame order
    with pytest.raises(InputError, match="starts at frame 130 of the run, not 120"):
        driver.check_shards([ShardSpec(whole, 120, 180, 130)], 120, detector, halves["detector"])
    with pytest.raises(InputError, match="frames 200:300 of 240"):
        driver.check_shards([ShardSpec(whole, 200, 300, 120)], 120, detector, halves["detector"])
    with pytest.raises(InputError, match="num_pix"):
        other = tmp_path / "other.h5"
        photons = read_photons(whole, 0, 10)
        write_photons(other, replace(photons, num_pix=photons.num_pix + 1))
        driver.check_shards([ShardSpec(os.fspath(other), 0, 10, 120)], 120, detector, halves["detector"])


class FakeComm:
    def __init__(self, rank: int, size: int):
        self.rank, self.size = rank, size

    def Get_rank(self) -> int:
        return self.rank

    def Get_size(self) -> int:
        return self.size


def test_mpi_ranks_take_contiguous_shards_then_balance_new_ones():
    ranks = MPIRanks(FakeComm(0, 3))
    first = ShardSpec.cut("p.h5", 0, 500, 100)                          # 5 shards on 3 ranks: 2, 2, 1
    assert ranks.owners(first) == [0, 0, 1, 1, 2] and ranks.writes and ranks.size == 3
    for spec, owner in zip(first, ranks.owners(first)):
        ranks.held[owner].append(spec)
    later = ShardSpec.cut("q.h5", 0, 250, 100, first_frame=500)          # 100, 100, 50 frames
    assert ranks.owners(later) == [2, 0, 1]                              # to the rank holding the fewest frames
    assert not MPIRanks(FakeComm(1, 3)).writes


def test_the_step_is_chosen_once_by_the_device():
    assert step_function(CPU) is step.shard_step
    gpu = step_function(Device("gpu", "twin"))
    assert isinstance(gpu, partial) and gpu.func is gpu_step.gpu_shard_step and gpu.keywords == {
        "device": Device("gpu", "twin")}


def test_settings_are_the_config_section_as_plain_values(tmp_path):
    assert EMCSettings() == EMCSettings.from_dict(EMC().model_dump())          # the same defaults
    section = EMC(photons=tmp_path / "p.h5", detector=tmp_path / "d.h5", beta=0.5, start_model=tmp_path / "m.h5",
                  beta_schedule=BetaSchedule(factor=3, period=5), point_group="C2", model_size=101)
    ours = EMCSettings.from_dict(section.model_dump())
    assert ours == EMCSettings.from_dict(section.model_dump(mode="json"))
    assert (ours.beta, ours.beta_schedule.factor, ours.start_model, ours.model_size) == (0.5, 3.0,
                                                                                        tmp_path / "m.h5", 101)
    # the checkpoint records what it always did: the config's JSON of these keys (old checkpoints resume)
    dumped = section.model_dump(mode="json")
    assert json.dumps(ours.resume_record(), sort_keys=True) == json.dumps({k: dumped[k] for k in RESUME_KEYS},
                                                                          sort_keys=True)
    plain = EMC(beta_schedule=None).model_dump(mode="json")
    assert EMCSettings.from_dict(plain).resume_record() == {k: plain[k] for k in RESUME_KEYS}
    with pytest.raises(TypeError, match="not EMC settings: nonsense"):
        EMCSettings.from_dict({**section.model_dump(), "nonsense": 1})


@pytest.mark.mpi
def test_two_mpi_ranks_take_joining_shards_as_one_process_does(halves, tmp_path):
    """New shards go to the rank with the fewest frames, so a rank's frames are no longer contiguous: the
    gathered per-frame arrays are put back in frame order (here rank 0 holds frames 0..100 and 200..240).
    With a junk mode, so the (D, 2) mode probabilities are gathered too."""
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("mpirun not found (apt-get install openmpi-bin libopenmpi-dev; .ci/run does)")
    pytest.importorskip("mpi4py", reason="mpi4py not installed (pip install '.[test]')")
    script = tmp_path / "joining.py"
    script.write_text(f"""
import sys
from mpi4py import MPI
from spibatch.emc import driver
from spibatch.emc.executors import InProcess, MPIRanks
from spibatch.emc.settings import EMCSettings
from spibatch.emc.types import ShardSpec

class Later:
    def __init__(self):
        self.polls = 0
    def poll(self):
        self.polls += 1
        # 3 shards of 50 at first (rank 0: 2, rank 1: 1); then 150..200 to rank 1, 200..240 to rank 0
        return ShardSpec.cut({os.fspath(halves['whole'])!r}, 150, 240, 50, 150) if self.polls == 3 else []

cfg = EMCSettings(num_div=2, iterations=4, frames_per_shard=50, nonrot_modes=1)
comm = MPI.COMM_WORLD
executor = MPIRanks(comm) if comm.Get_size() > 1 else InProcess()
driver.run_emc(cfg, sys.argv[1], {os.fspath(halves['detector'])!r}, sys.argv[2], executor=executor, source=Later())
""")
    first = tmp_path / "first150.h5"
    write_photons(first, read_photons(halves["whole"], 0, 150))
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get(
                   "PYTHONPATH", "")]))
    two = subprocess.run([mpirun, "-n", "2", "--oversubscribe", sys.executable, str(script), str(first),
                          str(tmp_path / "two")], capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stdout + two.stderr
    one = subprocess.run([sys.executable, str(script), str(first), str(tmp_path / "one")], capture_output=True,
                         text=True, timeout=600, env=env)
    assert one.returncode == 0, one.stderr
    a, b = read_run(tmp_path / "one"), read_run(tmp_path / "two")
    assert a["scales"].shape == (240,) and sorted(a) == sorted(b)
    assert np.abs(b["model"] - a["model"]).max() <= 1e-10 * np.abs(a["model"]).max()
    assert np.array_equal(a["output_004.h5:orientations"], b["output_004.h5:orientations"])
    np.testing.assert_allclose(b["output_004.h5:log_likelihood"], a["output_004.h5:log_likelihood"], rtol=1e-10)
    np.testing.assert_allclose(b["scales"], a["scales"], rtol=1e-10)
    assert a["output_004.h5:mode_probabilities"].shape == (240, 2)
    np.testing.assert_allclose(b["output_004.h5:mode_probabilities"], a["output_004.h5:mode_probabilities"],
                               rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- the arrows between modules

def imports_of(path: Path) -> set[str]:
    """Every spibatch module ``path`` imports, also inside functions (as ../shared/tools/import_circles.py counts)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {name for name in out if name.startswith("spibatch")}


def test_emc_has_no_import_circle_and_no_arrow_up():
    package = REPO / "spibatch" / "emc"
    modules = {f"spibatch.emc.{p.stem}": p for p in package.glob("*.py") if p.stem != "__init__"}
    graph = {m: {i for i in imports_of(p) if i in modules and i != m} for m, p in modules.items()}

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph[start])

    circles = sorted(m for m in graph if reaches(m, m, {m}))
    assert not circles, circles
    assert "spibatch.emc.gpu_step" not in graph["spibatch.emc.step"]
    assert "spibatch.emc.step" not in graph["spibatch.emc.gpu_step"]
    upward = ("spibatch.config", "spibatch.cli", "spibatch.pipeline", "spibatch.stages", "spibatch.backends",
              "spibatch.rundir")
    up = {m: sorted(i for i in imports_of(p) if i.startswith(upward)) for m, p in modules.items()}
    assert not any(up.values()), up
    assert all(len(p.read_text().splitlines()) <= 400 for p in modules.values())
    assert executors.Tasks and executors.InProcess          # the executors module imports both steps
