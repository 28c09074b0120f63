"""Helpers of the platform tests: a tiny pipeline on the emc_small data, site files, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

# Tiny but whole: 240 frames in 4 shards of 60, 420 rotations, 3 iterations; phasing on a 41^3 crop.
PIPELINE = """name: platform-test
emc: {{photons: {photons}, detector: {detector}, num_div: 2, iterations: {iterations}, frames_per_shard: 60}}
phasing: {{num_starts: {starts}, keep_best: {starts}, crop_to: 41, recipe: "(HIO() ** 10 * ShrinkWrap()) ** 2 * ER() ** 10"}}
"""

# The local site with EMC in HTC mode: 2 workers, one thread each (the serial driver's numbers, bit for bit).
LOCAL_HTC = """name: local-htc
provider: local
workers: 2
emc_mode: htc
local: {cores: 2, strategy_period_s: 0.5}
"""


def write_pipeline(folder: Path, emc_small: dict, starts: int = 2, iterations: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pipeline.yaml"
    path.write_text(PIPELINE.format(photons=emc_small["photons"], detector=emc_small["detector"], starts=starts,
                                    iterations=iterations))
    return path


def write_site(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def env(**extra) -> dict:
    repo = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=repo + (os.pathsep + path if path else ""), OMPI_ALLOW_RUN_AS_ROOT="1",
                OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", **extra)


def spibatch(*args, cwd: Path, timeout: float = 900, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spibatch", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env(**extra))


def markers(run: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((run / "stages").glob("*.json"))}


def final_model(emc_dir: Path) -> np.ndarray:
    """The last model of an EMC run folder (a pipeline run's emc/, or a `spibatch emc` run)."""
    with h5py.File(emc_dir / "checkpoint.h5") as f:
        return f["model"][()]


def metrics(emc_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (emc_dir / "metrics.jsonl").read_text().splitlines()]


def assert_the_serial_model(emc_dir: Path, emc_config, folder: Path) -> None:
    """``emc_dir`` (an HTC run's emc/, one thread per task) holds the serial driver's model bit for bit, and its
    log-likelihoods: `spibatch emc` of ``emc_config(folder / "serial")`` with one Numba thread."""
    serial = spibatch("emc", emc_config(folder / "serial"), "--out", folder / "serial" / "run", cwd=folder,
                      NUMBA_NUM_THREADS="1")
    assert serial.returncode == 0, serial.stderr[-2000:]
    serial_dir = folder / "serial" / "run" / "emc"
    assert np.array_equal(final_model(emc_dir), final_model(serial_dir))
    assert [m["log_likelihood"] for m in metrics(emc_dir)] == [m["log_likelihood"] for m in metrics(serial_dir)]


def write_live_source(folder: Path, hits: int = 120):
    """A simulated beamtime to follow on a platform: ``hits`` hits among 4x as many 32 x 32 frames, a CXI folder
    to replay them into and a pipeline file following it (num_div 3, chunks of 40, a preview every 2
    iterations, a short phasing recipe).  ``(frames, target, config)``."""
    from spibatch.stream import rehearsal
    from spibatch.stream.replay import simulated

    recipe = "(HIO() ** 10 * ShrinkWrap()) ** 2 * ER() ** 10"
    frames, paths = simulated(folder / "sim", num_hits=hits, hit_fraction=0.25, pixels=32)
    target = folder / "cxi"
    target.mkdir(parents=True)
    config = folder / "live.yaml"
    config.write_text(rehearsal.source_section("cxi-folder", str(target), paths["detector"], paths["truth"],
                                               chunk_frames=40, start_hits=40, preview_every=2, after_end=3,
                                               num_div=3, flush_s=0.5, idle_timeout_s=120,
                                               phasing={"num_starts": 2, "keep_best": 2, "recipe": recipe},
                                               preview_recipe=recipe))
    return frames, target, config



def local_parsl(folder: Path, workers: int = 1, heartbeat: tuple[int, int] | None = None):
    """Parsl started on the local site (``workers`` workers) with its run folder in ``folder``; the DataFlowKernel.
    heartbeat: (period, threshold) in seconds instead of the site's.  Stop it with parsl_shutdown.shutdown."""
    from spibatch.backends import load_site, provider_for
    from spibatch.parsl_shutdown import load

    site = folder / "site.yaml"
    site.write_text(f"name: t\nprovider: local\nworkers: {workers}\n")
    (folder / "run").mkdir()
    config = provider_for(load_site(site)).parsl_config(folder / "run")
    if heartbeat is not None:
        for executor in config.executors:
            executor.heartbeat_period, executor.heartbeat_threshold = heartbeat
    return load(config)


def app_by_value(source: str, name: str):
    """A Parsl python app of function ``name`` defined in ``source``, on the tasks executor: sent by value (the
    workers cannot import a test module)."""
    from parsl import python_app

    from spibatch.backends import TASKS_LABEL

    namespace = {"__name__": "__main__"}
    exec(source, namespace)
    return python_app(namespace[name], executors=[TASKS_LABEL])


def spawned(target, *args):
    """(a daemon process running ``target(*args, ready)``, started with multiprocessing's spawn, whether it set
    ``ready`` within 60 s)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    process = context.Process(target=target, args=(*args, ready), daemon=True)
    process.start()
    return process, ready.wait(60)
