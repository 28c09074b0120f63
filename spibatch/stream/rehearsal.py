"""A rehearsed beamtime, end to end: ``spibatch run`` follows a source that :func:`~spibatch.stream.replay.replay`
plays, and the operator's ``spibatch stop`` ends it; then what it measured, and a batch EMC on the same hits.

What ``benchmarks/streaming.py`` and ``tests/test_follow_pipeline.py`` share:

* :func:`source_section` -- a pipeline file's ``source:``, ``emc:``, ``phasing:`` and ``validation:``
  sections for a replayed simulated particle;
* :func:`follow_replay` -- start ``spibatch run`` in a process of its own, wait until its follower
  runs, play the frames at a rate, ``spibatch stop`` the run (a CXI folder and a bridge have no end of
  their own), wait for the run to end; returns the times it saw;
* :func:`summarize` -- the follow's counts and the latencies from the run folder's files
  (``follow/status.json``, ``phase/previews/*/preview.json``, ``phase/phasing.h5``, validation);
* :func:`hits_photons` -- the follower's chunks as one photons file, for a batch ``spibatch emc`` on
  the very hits the follower kept (:func:`batch_config`).

The processes run ``python -m spibatch`` with the caller's environment; nothing here imports the
pipeline, so the arrows of imports stay as they are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from spibatch.layout import RunLayout


class RehearsalFailed(RuntimeError):
    """A ``spibatch`` command of the rehearsal ended with an error (its stderr's end in the message)."""


def spibatch(*args, cwd: Path, env: dict, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """``python -m spibatch ARGS`` in ``cwd``; RehearsalFailed (with its stderr's end) when it fails."""
    done = subprocess.run([sys.executable, "-m", "spibatch", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, **kwargs)
    if check and done.returncode != 0:
        raise RehearsalFailed(f"spibatch {' '.join(map(str, args))} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done


def source_section(kind: str, target: str, detector: Path, truth: Path | None, *, chunk_frames: int = 100,
                   start_hits: int = 200, preview_every: int = 4, preview_starts: int = 2, after_end: int = 6,
                   num_div: int = 4, flush_s: float = 1.0, idle_timeout_s: float = 120.0, iterations: int = 20,
                   phasing: dict | None = None, preview_recipe: str | None = None, name: str = "live") -> str:
    """A pipeline file that follows ``target`` (a folder, or a bridge's endpoint) of ``kind``; EMC settings as
    :func:`batch_config` writes them (beta doubling every 10 iterations, scaling on, a shard per chunk);
    ``phasing``: the phasing section (default 4 starts, the best 2 kept); ``preview_recipe``: the previews'
    phasing recipe (default: the source section's)."""
    source = {"kind": kind, "target": target, "detector": str(detector), "chunk_frames": chunk_frames,
              "flush_s": flush_s, "idle_timeout_s": idle_timeout_s, "settle_s": 0.2, "emc_start_hits": start_hits,
              "preview_every_iterations": preview_every, "preview_starts": preview_starts,
              "iterations_after_end": after_end}
    if preview_recipe:
        source["preview_recipe"] = preview_recipe
    lines = [f"name: {name}", "source:"] + [f"  {key}: {json.dumps(value)}" for key, value in source.items()]
    lines += [f"emc: {{num_div: {num_div}, iterations: {iterations}, {EMC_COMMON}, frames_per_shard: {chunk_frames}}}",
              f"phasing: {json.dumps(phasing or {'num_starts': 4, 'keep_best': 2})}"]
    if truth is not None:
        lines.append(f"validation: {{reference: {json.dumps(str(truth))}}}")
    return "\n".join(lines) + "\n"


EMC_COMMON = "beta_schedule: {factor: 2.0, period: 10}, need_scaling: true"


@dataclass
class Followed:
    """The times a rehearsal saw (s since the epoch) and the run it followed into."""

    run: RunLayout
    began: float          # spibatch run started
    played_from: float    # the replay's first frame was due
    played_to: float      # the replay had played its last frame
    frames: int           # frames played


def follow_replay(frames, kind: str, target: str, config: Path, run_dir: Path, *, rate_hz: float, env: dict,
                  site: Path | None = None, log_dir: Path | None = None, timeout_s: float | None = None,
                  stop: bool = True) -> Followed:
    """``spibatch run CONFIG --out RUN_DIR`` following ``target`` while ``frames`` (a
    :class:`~spibatch.stream.replay.FrameSet`) are replayed there as ``kind`` at ``rate_hz``; then
    ``spibatch stop RUN_DIR`` (``stop=False``: the source ends by itself -- an EuXFEL run's overview file,
    or the idle time-out) and wait for the run.  The run's stdout/stderr go to ``log_dir`` (default: beside
    the run folder) as ``run.stdout`` / ``run.stderr``.  RehearsalFailed when the run fails."""
    from spibatch.stream.replay import replay

    run = RunLayout(run_dir)
    log_dir = Path(log_dir or run_dir.parent)
    err = log_dir / "run.stderr"
    site_args = ["--site", str(site)] if site else []
    began = time.time()
    with open(log_dir / "run.stdout", "w") as stdout, open(err, "w") as stderr:
        driver = subprocess.Popen([sys.executable, "-m", "spibatch", "run", str(config), "--out", str(run_dir),
                                   *site_args], cwd=log_dir, env=env, stdout=stdout, stderr=stderr)
    try:
        follower = run.stage_stream("follow", "stderr")          # the driver starts the follower first
        while not follower.exists() and driver.poll() is None:
            time.sleep(0.2)
        if driver.poll() is not None:
            raise RehearsalFailed(f"spibatch run ended early ({driver.returncode}): {err.read_text()[-4000:]}")
        played_from = time.time()
        replay(frames, rate_hz, kind, target)
        played_to = time.time()
        if stop:
            spibatch("stop", run.path, cwd=log_dir, env=env)      # the operator: the data have ended
        code = driver.wait(timeout=timeout_s)
    finally:
        if driver.poll() is None:
            driver.terminate()
            driver.wait(timeout=30)
    if code != 0:
        raise RehearsalFailed(f"spibatch run failed ({code}): {err.read_text()[-4000:]}")
    return Followed(run, began, played_from, played_to, frames.num_frames)


def previews(run: RunLayout) -> list[dict]:
    """The run's ``preview.json`` records, oldest first (the quick final density last)."""
    return sorted((json.loads(p.read_text()) for p in run.previews.glob("*/preview.json")), key=lambda p: p["written"])


def summarize(followed: Followed) -> dict:
    """The follow's counts and the latencies (s) of a finished rehearsal, from the run folder's files."""
    run = followed.run
    status = json.loads(run.follow_status.read_text())
    records = previews(run)
    quick = next(p for p in records if p["final"])
    first, last = status["first_received"], status["last_received"]
    metrics = [json.loads(line) for line in run.emc_metrics.read_text().splitlines()]
    out = {"frames_played": followed.frames, "replay_s": followed.played_to - followed.played_from,
           "frames_seen": status["frames_seen"], "hits": status["hits"], "hit_rate": status["hit_rate"],
           "threshold": status["threshold"], "emc_iterations": metrics[-1]["iteration"],
           "previews": len(records) - 1, "first_frame_to_first_preview_s": records[0]["written"] - first,
           "last_frame_to_quick_final_s": quick["written"] - last,
           "last_frame_to_full_final_s": run.phasing.stat().st_mtime - last, "startup_s": first - followed.began}
    if run.fsc_vs_truth.exists():
        fsc = json.loads(run.fsc_vs_truth.read_text())
        out.update({"last_frame_to_validated_s": run.fsc_vs_truth.stat().st_mtime - last,
                    "fsc_0.5_m": fsc.get("resolution_0.5_m"), "fsc_0.143_m": fsc.get("resolution_0.143_m"),
                    "data_edge_m": fsc.get("data_edge_resolution_m")})
    if run.emc_vs_truth.exists():
        out["emc_cc_with_truth"] = json.loads(run.emc_vs_truth.read_text())["cc"]
    return out


def hits_photons(run: RunLayout, out: Path) -> Path:
    """The hits of every chunk of ``run``'s follow, in order, as one photons file ``out``."""
    from spibatch.io.dragonfly import PhotonsWriter, read_photons

    chunks = sorted((run.follow / "chunks").glob("chunk_*.emc"))
    if not chunks:
        raise RehearsalFailed(f"{run.follow}: no chunk of hits")
    first = read_photons(chunks[0])
    with PhotonsWriter(out, first.num_pix) as writer:
        for chunk in chunks:
            writer.append(read_photons(chunk))
    return out


def batch_config(photons: Path, detector: Path, *, iterations: int, num_div: int = 4, frames_per_shard: int = 100,
                 name: str = "batch") -> str:
    """A pipeline file for ``spibatch emc`` on ``photons`` with the EMC settings of :func:`source_section`."""
    return textwrap.dedent(f"""
        name: {name}
        emc: {{photons: {photons}, detector: {detector}, num_div: {num_div}, iterations: {iterations},
              {EMC_COMMON}, frames_per_shard: {frames_per_shard}}}
        """).lstrip()


def last_output(run_dir: Path) -> Path:
    """The newest ``emc/output_NNN.h5`` of a run."""
    outputs = sorted(RunLayout(run_dir).emc.glob("output_*.h5"))
    if not outputs:
        raise RehearsalFailed(f"{run_dir}: no EMC output")
    return outputs[-1]


def environment(**extra: str) -> dict:
    """This process's environment, with mpirun allowed as root (containers) and ``extra`` on top."""
    return dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", **extra)
