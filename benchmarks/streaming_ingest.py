"""Streaming ingest of AGIPD 1M frames: throughput per core against this machine's copy bandwidth, and the
follower's memory over a long run (issue 13).

Frames are AGIPD 1M shaped (16 x 512 x 128 float32, 4 MiB), "calibrated": ``--adu`` ADU per photon,
Gaussian noise of 0.1 photon, ``--background`` stray photons per frame, and a fraction ``--hit-fraction``
of hits with ``--photons-per-hit`` photons.  A pool of 64 such frames is made once and handed out as
trains of ``--pulses`` frames by an in-memory source (no file or network I/O: what is timed is the
follower's own work, ADU -> photons per module, lit-pixel hit finding, the sparse write of the hits in
chunk files with their IDs, the per-frame statistics and the index, on a scratch folder).

* ``throughput``: frames/s with 1 Numba thread (one core) and with all threads, each between two
  measurements of the copy bandwidth (``numpy.copyto`` of 256 MiB, one thread; bytes copied per
  second); the frame-rate limit is that bandwidth / 4 MiB per frame.  Prints the ratio and the cores
  the facility's peak (352 pulses x 10 Hz = 3520 frames/s) would need at the one-core rate.
* ``rss``: one follower over ``--frames`` frames (all threads), its resident memory (/proc/self/statm)
  sampled every 0.5 s against the frames and hits so far (``--shape 64,64 --chunk-frames 16`` runs it
  on small frames with many commits).
* ``bridge-rss``: the same over a real Karabo bridge: ``replay(..., "karabo-bridge")`` of synthetic frames
  of ``--shape`` in another process, asked for ``--rate`` frames/s (``--part bridge-rss --shape 64,64``).

    python benchmarks/streaming_ingest.py [--part throughput|rss|all] [--frames 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time

import numba
import numpy as np

from spibatch.detector import Detector
from spibatch.stream.blocks import Block
from spibatch.stream.follower import Follower, FollowSettings

SHAPE = (16, 512, 128)
FRAME_BYTES = 4 * 16 * 512 * 128
PEAK_FRAMES_PER_S = 352 * 10


def make_pool(args, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    num_pix = int(np.prod(args.shape))
    pool = rng.normal(0.0, 0.1 * args.adu, (size, num_pix)).astype(np.float32)
    is_hit = np.arange(size) < round(args.hit_fraction * size)
    for i in range(size):
        n = rng.poisson(args.background) + (args.photons_per_hit if is_hit[i] else 0)
        np.add.at(pool[i], rng.integers(0, num_pix, n), np.float32(args.adu))
    return pool.reshape((size,) + args.shape), is_hit


class PoolSource:
    """Trains of ``pulses`` frames drawn in turn from the pool, ``frames`` in all; train IDs from 1."""

    name = "pool"

    def __init__(self, pool: np.ndarray, pulses: int, frames: int):
        self.pool, self.pulses, self.left, self.train, self.ended = pool, pulses, frames, 0, None
        self.at = 0

    def read(self):
        if self.left <= 0:
            self.ended = "done"
            return []
        n = min(self.pulses, self.left)
        if self.at + n > len(self.pool):
            self.at = 0
        data = self.pool[self.at:self.at + n]
        self.at += n
        self.left -= n
        self.train += 1
        return [Block(data, np.full(n, self.train), np.arange(n), "pool")]

    def close(self):
        pass


def detector(shape: tuple[int, ...]) -> Detector:
    num_pix = int(np.prod(shape))
    return Detector(q_voxels=np.zeros((num_pix, 3)), corr=np.ones(num_pix), mask=np.zeros(num_pix, np.uint8),
                    detd_pixels=1.0, ewald_radius_voxels=1.0, shape=shape)


def settings(args) -> FollowSettings:
    return FollowSettings(adu_per_photon=args.adu, threshold=None, chunk_frames=args.chunk_frames, flush_s=2.0,
                          idle_timeout_s=60)


def copy_bandwidth(repeats: int = 5) -> float:
    """Bytes copied per second by one thread (numpy.copyto of 256 MiB), the median of ``repeats``."""
    src = np.ones(64 * 1024 * 1024, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        rates.append(src.nbytes / (time.perf_counter() - start))
    return statistics.median(rates)


def ingest(pool, args, frames: int, threads: int) -> tuple[float, dict]:
    numba.set_num_threads(threads)
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        follower = Follower(PoolSource(pool, args.pulses, frames), detector(args.shape), os.path.join(scratch, "follow"),
                            settings(args))
        start = time.perf_counter()
        summary = follower.run()
        return frames / (time.perf_counter() - start), summary


def throughput(pool, args) -> None:
    ingest(pool, args, 2 * args.pulses, numba.config.NUMBA_NUM_THREADS)     # compile / load the kernels
    rows = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        for _ in range(args.repeats):
            before = copy_bandwidth()
            rate, summary = ingest(pool, args, args.throughput_frames, threads)
            after = copy_bandwidth()
            rows.append((threads, rate, before, after, summary))
            print(f"threads {threads}: {rate:7.1f} frames/s ({rate * FRAME_BYTES / 1e9:5.2f} GB/s of frames); "
                  f"copy bandwidth {before / 1e9:5.2f} / {after / 1e9:5.2f} GB/s before / after; hits "
                  f"{summary['hits']} of {summary['frames_seen']}, threshold {summary['threshold']:.0f} lit pixels",
                  flush=True)
    one = [r for r in rows if r[0] == 1]
    rate = statistics.median(r[1] for r in one)
    bandwidth = statistics.median([r[2] for r in one] + [r[3] for r in one])
    limit = bandwidth / FRAME_BYTES
    print(f"\none core: {rate:.1f} frames/s; copy-bandwidth limit {limit:.1f} frames/s "
          f"({bandwidth / 1e9:.2f} GB/s / 4 MiB): {100 * rate / limit:.0f}% of the limit")
    print(f"the facility's peak of {PEAK_FRAMES_PER_S} frames/s needs {PEAK_FRAMES_PER_S / rate:.1f} cores at this rate")
    allt = [r[1] for r in rows if r[0] != 1]
    if allt:
        print(f"all {numba.config.NUMBA_NUM_THREADS} threads: {statistics.median(allt):.1f} frames/s")


def rss(pool, args) -> None:
    page = os.sysconf("SC_PAGE_SIZE")
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    ingest(pool, args, 2 * args.pulses, numba.config.NUMBA_NUM_THREADS)
    samples = []
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        follower = Follower(PoolSource(pool, args.pulses, args.frames), detector(args.shape),
                            os.path.join(scratch, "follow"),
                            settings(args))
        done = threading.Event()

        def sample():
            while not done.is_set():
                with open("/proc/self/statm") as f:
                    resident = int(f.read().split()[1]) * page
                state = follower.store.state
                samples.append((time.perf_counter(), state.frames_seen, state.hits, resident))
                done.wait(0.5)

        sampler = threading.Thread(target=sample)
        start = time.perf_counter()
        sampler.start()
        summary = follower.run()
        done.set()
        sampler.join()
        wall = time.perf_counter() - start
        chunk_bytes = sum(p.stat().st_size for p in (follower.store.chunks).iterdir())
    print(f"{summary['frames_seen']} frames, {summary['hits']} hits in {summary['chunks']} chunks "
          f"({chunk_bytes / 1e6:.1f} MB on disk) in {wall:.0f} s ({summary['frames_seen'] / wall:.0f} frames/s)")
    print("  s | frames seen | hits | RSS MB")
    step = max(1, len(samples) // 12)
    for t, frames, hits, resident in samples[::step] + samples[-1:]:
        print(f"{t - start:4.0f} | {frames:11d} | {hits:6d} | {resident / 1e6:7.1f}")
    later = [s for s in samples if s[1] >= 0.1 * args.frames]
    if later:
        first, last = later[0], later[-1]
        print(f"RSS from {first[1]} to {last[1]} frames: {first[3] / 1e6:.1f} -> {last[3] / 1e6:.1f} MB "
              f"({(last[3] - first[3]) / 1e6:+.1f} MB; max {max(s[3] for s in later) / 1e6:.1f} MB)")


REPLAY_SCRIPT = """
import sys
from spibatch.stream.replay import FrameSet, replay
shape = tuple(int(n) for n in sys.argv[2].split(","))
hit_fraction, photons, background, adu = (float(x) for x in sys.argv[6:10])
frames = FrameSet.synthetic(shape, int(sys.argv[3]), int(sys.argv[4]), hit_fraction=hit_fraction,
                            photons_per_hit=int(photons), background_photons=background, adu_per_photon=adu,
                            noise_adu=0.1 * adu)
replay(frames, float(sys.argv[5]), "karabo-bridge", sys.argv[1], linger_s=2)
"""


def bridge_rss(args) -> None:
    """The follower's RSS over a real Karabo-bridge replay served by another process (synthetic frames)."""
    import socket
    import subprocess
    import sys

    from spibatch.stream.bridge import BridgeSource

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    trains = args.frames // args.pulses
    server = subprocess.Popen([sys.executable, "-c", REPLAY_SCRIPT, endpoint, ",".join(map(str, args.shape)),
                               str(trains), str(args.pulses), str(args.rate), str(args.hit_fraction),
                               str(args.photons_per_hit), str(args.background), str(args.adu)])
    page = os.sysconf("SC_PAGE_SIZE")
    samples = []
    try:
        with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
            follower = Follower(BridgeSource(endpoint, args.shape, timeout_s=1.0), detector(args.shape),
                                os.path.join(scratch, "follow"),
                                FollowSettings(adu_per_photon=args.adu, chunk_frames=args.chunk_frames,
                                               idle_timeout_s=60))
            done = threading.Event()

            def sample():
                while not done.is_set():
                    with open("/proc/self/statm") as f:
                        samples.append((follower.store.state.frames_seen, int(f.read().split()[1]) * page))
                    done.wait(0.5)

            sampler = threading.Thread(target=sample)
            start = time.perf_counter()
            sampler.start()
            summary = follower.run()
            done.set()
            sampler.join()
            wall = time.perf_counter() - start
    finally:
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    print(f"bridge replay: {summary['frames_seen']} frames of {args.shape} in {summary['trains']} trains, "
          f"{summary['hits']} hits, {wall:.0f} s ({summary['frames_seen'] / wall:.0f} frames/s)")
    step = max(1, len(samples) // 10)
    print("frames seen | RSS MB")
    for frames, resident in samples[::step] + samples[-1:]:
        print(f"{frames:11d} | {resident / 1e6:7.1f}")
    later = [s for s in samples if s[0] >= 0.1 * summary["frames_seen"]]
    if later:
        print(f"RSS from {later[0][0]} to {later[-1][0]} frames: {later[0][1] / 1e6:.1f} -> {later[-1][1] / 1e6:.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("throughput", "rss", "bridge-rss", "all"), default="all")
    parser.add_argument("--rate", type=float, default=20000.0, help="frames/s the bridge replay is asked for; the follow ends 60 s after the last train")
    parser.add_argument("--frames", type=int, default=100_000, help="frames of the RSS run")
    parser.add_argument("--throughput-frames", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pulses", type=int, default=32, help="frames per train (per block)")
    parser.add_argument("--hit-fraction", type=float, default=0.1)
    parser.add_argument("--photons-per-hit", type=int, default=5000)
    parser.add_argument("--background", type=float, default=50.0)
    parser.add_argument("--adu", type=float, default=10.0)
    parser.add_argument("--shape", default="16,512,128", help="frame shape (the throughput part assumes AGIPD 1M)")
    parser.add_argument("--chunk-frames", type=int, default=1024)
    parser.add_argument("--scratch", default=None)
    args = parser.parse_args()
    args.shape = tuple(int(n) for n in args.shape.split(","))
    print(f"frames {args.shape} float32; hit fraction {args.hit_fraction}, {args.photons_per_hit} photons per hit, "
          f"{args.background} background photons, noise 0.1 photon, {args.adu} ADU/photon; trains of {args.pulses}; "
          f"{numba.config.NUMBA_NUM_THREADS} Numba threads available; load average {os.getloadavg()[0]:.1f}", flush=True)
    pool = make_pool(args)[0] if args.part != "bridge-rss" else None
    if args.part in ("throughput", "all") and args.shape == SHAPE:
        throughput(pool, args)
    if args.part in ("rss", "all"):
        rss(pool, args)
    if args.part == "bridge-rss":
        bridge_rss(args)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
