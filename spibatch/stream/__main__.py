"""``python -m spibatch.stream follow|replay ...``: the follower and the replay as processes of their own.

The CLI commands (``spibatch run --follow``, ``spibatch replay``) are the pipeline's; this entry point
is what a test kills and restarts, and a way to rehearse without a pipeline file::

    python -m spibatch.stream follow OUT --kind cxi-folder --target DIR --detector det.h5 [--threshold N]
    python -m spibatch.stream replay PHOTONS --detector det.h5 --rate HZ --as cxi-folder --target DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from spibatch.detector import Detector
from spibatch.errors import InputError
from spibatch.stream.sources import open_source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spibatch.stream")
    sub = parser.add_subparsers(dest="command", required=True)
    follow = sub.add_parser("follow", help="follow a live source into OUT (a follow/ folder)")
    follow.add_argument("out")
    follow.add_argument("--kind", required=True)
    follow.add_argument("--target", required=True)
    follow.add_argument("--detector", required=True, help="detector file (ours, with its shape)")
    follow.add_argument("--detector-name", default="AGIPD1M")
    follow.add_argument("--adu-per-photon", type=float, default=1.0)
    follow.add_argument("--threshold", type=float, default=None)
    follow.add_argument("--chunk-frames", type=int, default=1024)
    follow.add_argument("--flush-s", type=float, default=2.0)
    follow.add_argument("--idle-timeout-s", type=float, default=60.0)
    follow.add_argument("--settle-s", type=float, default=1.0)
    follow.add_argument("--bridge-sock", default="REQ", choices=("REQ", "SUB", "PULL"))
    follow.add_argument("--stop-file", default=None)
    play = sub.add_parser("replay", help="play a photons file as a live source")
    play.add_argument("photons")
    play.add_argument("--detector", required=True)
    play.add_argument("--rate", type=float, required=True, help="frames per second")
    play.add_argument("--as", dest="kind", required=True)
    play.add_argument("--target", required=True)
    play.add_argument("--hit-fraction", type=float, default=0.2)
    play.add_argument("--pulses-per-train", type=int, default=10)
    play.add_argument("--trains-per-file", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        detector = Detector.read(args.detector)
        side = int(round(detector.num_pix ** 0.5))
        if detector.shape is None and side * side == detector.num_pix:   # Dragonfly's files hold no shape
            detector.shape = (side, side)
        shape = tuple(detector.shape or (detector.num_pix,))
        if args.command == "follow":
            from spibatch.stream.follower import Follower, FollowSettings

            settings = FollowSettings(adu_per_photon=args.adu_per_photon, threshold=args.threshold,
                                      chunk_frames=args.chunk_frames, flush_s=args.flush_s,
                                      idle_timeout_s=args.idle_timeout_s)
            source = open_source(args.kind, args.target, shape, detector_name=args.detector_name,
                                 settle_s=args.settle_s, bridge_sock=args.bridge_sock)
            print(json.dumps(Follower(source, detector, args.out, settings, stop_file=args.stop_file).run()))
        else:
            from spibatch.stream.replay import frames_from, replay

            frames, _ = frames_from(args.photons, detector=args.detector, hit_fraction=args.hit_fraction,
                                    pulses_per_train=args.pulses_per_train)
            print(replay(frames, args.rate, args.kind, args.target, trains_per_file=args.trains_per_file))
    except InputError as error:
        print(f"spibatch: error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
