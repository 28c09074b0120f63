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
settings and ``emc.iterations``, the iteration the follow's annealing ends at) and its CC, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from spibatch.stream import rehearsal


def follow(args, work: Path, env: dict) -> dict:
    from spibatch.stream.replay import simulated

    frames, paths = simulated(work / "sim", num_hits=args.hits, hit_fraction=args.hit_fraction)
    target = work / "cxi" if args.as_ != "karabo-bridge" else None
    endpoint = str(target) if target is not None else "tcp://127.0.0.1:45731"
    if target is not None:
        target.mkdir(parents=True, exist_ok=True)
    config = work / "live.yaml"
    config.write_text(rehearsal.source_section(args.as_, endpoint, paths["detector"], paths["truth"],
                                               chunk_frames=args.chunk_frames, start_hits=args.start_hits,
                                               preview_every=args.preview_every, after_end=args.after_end,
                                               iterations=args.iterations))
    followed = rehearsal.follow_replay(frames, args.as_, endpoint, config, work / "live", rate_hz=args.rate, env=env,
                                       site=args.site, log_dir=work)
    return rehearsal.summarize(followed)


def batch(work: Path, env: dict, args, followed: dict) -> dict:
    """A batch spibatch emc on the hits the follower kept (all chunks in one photons file), same settings."""
    from spibatch.emc.compare import compare_with_truth
    from spibatch.layout import RunLayout

    run = RunLayout(work / "live")
    photons = rehearsal.hits_photons(run, work / "hits.emc")
    config = work / "batch.yaml"
    iterations = args.iterations     # the config's emc.iterations: the follow anneals as this run does, then holds
    config.write_text(rehearsal.batch_config(photons, run.detector("follow"), iterations=iterations,
                                             frames_per_shard=args.chunk_frames))
    began = time.time()
    rehearsal.spibatch("emc", config, "--out", work / "batch", cwd=work, env=env)
    seconds = time.time() - began
    cc = compare_with_truth(rehearsal.last_output(work / "batch"), work / "sim" / "truth.h5",
                            run.detector("follow"))["cc"]
    return {"batch_emc_cc_with_truth": cc, "batch_iterations": iterations, "batch_emc_s": seconds}


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
    parser.add_argument("--iterations", type=int, default=20,
                        help="emc.iterations of both runs: the batch run's iterations, and the iteration after "
                             "which the follow's annealing holds")
    parser.add_argument("--batch", action="store_true")
    args = parser.parse_args()
    work = args.work.resolve()
    if (work / "live").exists():
        raise SystemExit(f"{work / 'live'} exists: give a new WORK folder")
    work.mkdir(parents=True, exist_ok=True)
    env = rehearsal.environment()
    try:
        result = {"load_before": os.getloadavg()[0], **follow(args, work, env)}
        if args.batch:
            result.update(batch(work, env, args, result))
    except rehearsal.RehearsalFailed as exc:
        raise SystemExit(str(exc)) from None
    result["load_after"] = os.getloadavg()[0]
    (work / "streaming.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
