"""Near real time, measured: a simulated beamtime replayed as a live source while `spibatch run` follows it.

    python3 benchmarks/streaming.py WORK [--hits 1000] [--hit-fraction 0.2] [--rate 100] [--as cxi-folder]
                                         [--site SITE.yaml] [--batch]

1. A simulated particle (1EI7, the demo's 64 x 64 detector 0.3 m away) with ``--hits`` hits among empty
   frames (``--hit-fraction``), replayed at ``--rate`` frames/s as a live source (``spibatch replay``'s
   machinery: a CXI folder by default, an EuXFEL run folder, or a Karabo bridge).
2. ``spibatch run`` of a pipeline with that ``source:`` follows it: hits found and committed in chunks, EMC
   starting once ``emc_start_hits`` are in and taking the rest as they come, preview densities every few
   iterations, the quick final density, then the full phasing and the validation against the truth.
3. When the replay has played its last frame, the operator's ``spibatch stop RUN`` (a CXI folder and a
   bridge have no end of their own; an EuXFEL run is closed by its overview file).

Prints (and writes WORK/streaming.json): the time from the first frame to the first preview density, from the
last frame to the quick final density and to the full final density with its FSC, the EMC model's CC with
the truth; with ``--batch`` also a batch ``spibatch emc`` on the very hits the follower kept (the same EMC
settings) and its CC, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path


def spibatch(*args, cwd: Path, env: dict, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "spibatch", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, **kwargs)
    if check and done.returncode != 0:
        raise SystemExit(f"spibatch {' '.join(map(str, args))} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done


def pipeline_text(args, target: str, detector: Path, truth: Path) -> str:
    return textwrap.dedent(f"""
        name: live
        source:
          kind: {args.as_}
          target: {target}
          detector: {detector}
          chunk_frames: {args.chunk_frames}
          flush_s: 1.0
          idle_timeout_s: 120
          settle_s: 0.2
          emc_start_hits: {args.start_hits}
          preview_every_iterations: {args.preview_every}
          preview_starts: 2
          iterations_after_end: {args.after_end}
        emc: {{num_div: 4, iterations: {args.iterations}, beta_schedule: {{factor: 2.0, period: 10}}, need_scaling: true,
              frames_per_shard: {args.chunk_frames}}}
        phasing: {{num_starts: 4, keep_best: 2}}
        validation: {{reference: {truth}}}
        """).lstrip()


def follow(args, work: Path, env: dict) -> dict:
    from spibatch.layout import RunLayout
    from spibatch.stream.replay import replay, simulated

    frames, paths = simulated(work / "sim", num_hits=args.hits, hit_fraction=args.hit_fraction)
    target = work / "cxi" if args.as_ != "karabo-bridge" else None
    endpoint = str(target) if target is not None else "tcp://127.0.0.1:45731"
    if target is not None:
        target.mkdir(parents=True, exist_ok=True)
    config = work / "live.yaml"
    config.write_text(pipeline_text(args, endpoint, paths["detector"], paths["truth"]))
    site = ["--site", str(args.site)] if args.site else []
    run = RunLayout(work / "live")
    began = time.time()
    driver = subprocess.Popen([sys.executable, "-m", "spibatch", "run", str(config), "--out", str(run.path), *site],
                              cwd=work, env=env, stdout=open(work / "run.stdout", "w"), stderr=open(work / "run.stderr", "w"))
    follower = run.stage_stream("follow", "stderr")            # the driver starts the follower first
    while not follower.exists() and driver.poll() is None:
        time.sleep(0.2)
    if driver.poll() is not None:
        raise SystemExit(f"spibatch run ended early ({driver.returncode}): {(work / 'run.stderr').read_text()[-4000:]}")
    played_from = time.time()
    replay(frames, args.rate, args.as_, endpoint)
    played_to = time.time()
    spibatch("stop", run.path, cwd=work, env=env)              # the operator: the data have ended
    code = driver.wait()
    if code != 0:
        raise SystemExit(f"spibatch run failed ({code}): {(work / 'run.stderr').read_text()[-4000:]}")
    return summarize(run, began, played_from, played_to, frames.num_frames)


def summarize(run, began: float, played_from: float, played_to: float, frames: int) -> dict:
    status = json.loads(run.follow_status.read_text())
    previews = sorted((json.loads(p.read_text()) for p in run.previews.glob("*/preview.json")),
                      key=lambda p: p["written"])
    quick = next(p for p in previews if p["final"])
    fsc = json.loads(run.fsc_vs_truth.read_text())
    emc = json.loads(run.emc_vs_truth.read_text())
    first, last = status["first_received"], status["last_received"]
    metrics = [json.loads(line) for line in run.emc_metrics.read_text().splitlines()]
    return {"frames_played": frames, "replay_s": played_to - played_from, "frames_seen": status["frames_seen"],
            "hits": status["hits"], "hit_rate": status["hit_rate"], "threshold": status["threshold"],
            "emc_iterations": metrics[-1]["iteration"], "previews": len(previews) - 1,
            "first_frame_to_first_preview_s": previews[0]["written"] - first,
            "last_frame_to_quick_final_s": quick["written"] - last,
            "last_frame_to_full_final_s": run.phasing.stat().st_mtime - last,
            "last_frame_to_validated_s": run.fsc_vs_truth.stat().st_mtime - last,
            "startup_s": first - began, "emc_cc_with_truth": emc["cc"],
            "fsc_0.5_m": fsc.get("resolution_0.5_m"), "fsc_0.143_m": fsc.get("resolution_0.143_m"),
            "data_edge_m": fsc.get("data_edge_resolution_m")}


def batch(work: Path, env: dict, args) -> dict:
    """A batch spibatch emc on the hits the follower kept (all chunks in one photons file), same settings."""
    from spibatch.emc.compare import compare_with_truth
    from spibatch.io.dragonfly import PhotonsWriter, read_photons
    from spibatch.layout import RunLayout

    run = RunLayout(work / "live")
    chunks = sorted((run.follow / "chunks").glob("chunk_*.emc"))
    first = read_photons(chunks[0])
    photons = work / "hits.emc"
    with PhotonsWriter(photons, first.num_pix) as writer:
        for chunk in chunks:
            writer.append(read_photons(chunk))
    config = work / "batch.yaml"
    config.write_text(textwrap.dedent(f"""
        name: batch
        emc: {{photons: {photons}, detector: {run.detector('follow')}, num_div: 4, iterations: {args.iterations},
              beta_schedule: {{factor: 2.0, period: 10}}, need_scaling: true, frames_per_shard: {args.chunk_frames}}}
        """).lstrip())
    began = time.time()
    spibatch("emc", config, "--out", work / "batch", cwd=work, env=env)
    seconds = time.time() - began
    out = RunLayout(work / "batch")
    last = max(out.emc.glob("output_*.h5"))
    cc = compare_with_truth(last, work / "sim" / "truth.h5", run.detector("follow"))["cc"]
    return {"batch_emc_cc_with_truth": cc, "batch_iterations": args.iterations, "batch_emc_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--hits", type=int, default=1000)
    parser.add_argument("--hit-fraction", type=float, default=0.2)
    parser.add_argument("--rate", type=float, default=100.0, help="frames per second (hits and empty frames)")
    parser.add_argument("--as", dest="as_", default="cxi-folder", choices=["cxi-folder", "euxfel-run", "karabo-bridge"])
    parser.add_argument("--site", type=Path, default=None)
    parser.add_argument("--chunk-frames", type=int, default=100)
    parser.add_argument("--start-hits", type=int, default=200)
    parser.add_argument("--preview-every", type=int, default=4)
    parser.add_argument("--after-end", type=int, default=6)
    parser.add_argument("--iterations", type=int, default=20, help="the batch run's iterations")
    parser.add_argument("--batch", action="store_true")
    args = parser.parse_args()
    work = args.work.resolve()
    if (work / "live").exists():
        raise SystemExit(f"{work / 'live'} exists: give a new WORK folder")
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    result = {"load_before": os.getloadavg()[0], **follow(args, work, env)}
    if args.batch:
        result.update(batch(work, env, args))
    result["load_after"] = os.getloadavg()[0]
    (work / "streaming.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
