"""Rehearsal: play a data set as a live source at a chosen rate.

A :class:`FrameSet` is trains of frames made on demand (never all in memory): the hits of a photons
file (a simulated particle, or a shared Dragonfly set) turned back into frames, in ADU, with empty
frames between them for a chosen hit fraction (:meth:`FrameSet.from_photons`, :func:`simulated`), or
random sparse hits on any detector shape (:meth:`FrameSet.synthetic`, for tests and benchmarks).
:func:`replay` plays it as

* ``"euxfel-run"``: sequence files of an EuXFEL run folder, one per module and sequence, made with
  EXtra-data's own example-file writer (``extra_data.tests.mockdata``: the INDEX, METADATA and
  INSTRUMENT layout of corrected data) and filled with the frames, each renamed into the folder when
  complete; at the end, the virtual overview file (``extra_data.voview``) that marks the run closed;
* ``"karabo-bridge"``: a Karabo bridge server (``karabo_bridge.ServerInThread``, REP) at an endpoint,
  one message per train;
* ``"cxi-folder"``: CXI files in a folder (``/entry_1/data_1/data`` with ``/entry_1/trainId`` and
  ``pulseId``), each renamed into place when complete.

``rate_hz`` is frames per second, kept on average (a train or a file is released when its frames
are due).  :func:`replay` is what ``spibatch replay SOURCE --rate HZ --as KIND`` calls.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger("spibatch")

KINDS = ("euxfel-run", "karabo-bridge", "cxi-folder")
PDB = Path(__file__).resolve().parents[1] / "data" / "1EI7.pdb"


@dataclass
class FrameSet:
    """``num_trains`` trains of ``pulses_per_train`` frames of ``frame_shape`` (float32 ADU), train IDs from
    ``first_train``; ``make(k) -> (pulses, *frame_shape)`` builds train ``k``; ``is_hit`` (frames,) bool is
    the truth (which frames hold a particle)."""

    frame_shape: tuple[int, ...]
    num_trains: int
    pulses_per_train: int
    make: Callable[[int], np.ndarray]
    is_hit: np.ndarray
    first_train: int = 10_000

    @property
    def num_frames(self) -> int:
        return self.num_trains * self.pulses_per_train

    def train(self, k: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(train ID, frames (pulses, *frame_shape) float32, pulse IDs) of train ``k``."""
        return self.first_train + k, self.make(k), np.arange(self.pulses_per_train, dtype=np.uint64)

    @classmethod
    def from_photons(cls, photons_path: str | os.PathLike, frame_shape: tuple[int, ...], *, hit_fraction: float = 0.2,
                     pulses_per_train: int = 10, num_hits: int | None = None, adu_per_photon: float = 1.0,
                     noise_adu: float = 0.0, first_train: int = 10_000, seed: int = 0) -> "FrameSet":
        """The first ``num_hits`` frames (default: all) of a photons file as hits, at random places among
        empty frames so that ``hit_fraction`` of the frames are hits; counts times ``adu_per_photon`` plus
        Gaussian noise of ``noise_adu`` (seeded per train)."""
        from spibatch.io.dragonfly import read_photons

        photons = read_photons(photons_path, 0, num_hits)
        if photons.num_pix != int(np.prod(frame_shape)):
            raise ValueError(f"the photons have {photons.num_pix} pixels, frames of {frame_shape} "
                             f"{int(np.prod(frame_shape))}")
        hits = photons.num_frames
        total = int(np.ceil(hits / hit_fraction / pulses_per_train)) * pulses_per_train
        order = np.random.default_rng(seed).permutation(total)
        is_hit = np.zeros(total, bool)
        is_hit[order[:hits]] = True
        which = np.full(total, -1)
        which[np.flatnonzero(is_hit)] = np.arange(hits)   # hits keep their order in the file

        def make(k: int) -> np.ndarray:
            rows = which[k * pulses_per_train:(k + 1) * pulses_per_train]
            frames = _noise((pulses_per_train,) + tuple(frame_shape), noise_adu, seed, k)
            for i, row in enumerate(rows):
                if row >= 0:
                    frames[i] += photons.to_dense(row, row + 1).reshape(frame_shape) * np.float32(adu_per_photon)
            return frames

        return cls(tuple(frame_shape), total // pulses_per_train, pulses_per_train, make, is_hit, first_train)

    @classmethod
    def synthetic(cls, frame_shape: tuple[int, ...], num_trains: int, pulses_per_train: int, *, hit_fraction: float = 0.2,
                  photons_per_hit: int = 2000, background_photons: float = 5.0, adu_per_photon: float = 1.0,
                  noise_adu: float = 0.0, first_train: int = 10_000, seed: int = 0) -> "FrameSet":
        """Random hits: ``photons_per_hit`` photons on uniformly drawn pixels; every frame also gets a
        Poisson(``background_photons``) number of stray photons; seeded per train."""
        total = num_trains * pulses_per_train
        is_hit = np.random.default_rng(seed).random(total) < hit_fraction
        num_pix = int(np.prod(frame_shape))

        def make(k: int) -> np.ndarray:
            rng = np.random.default_rng([seed, k])
            frames = _noise((pulses_per_train, num_pix), noise_adu, seed, k)
            for i in range(pulses_per_train):
                n = rng.poisson(background_photons) + (photons_per_hit if is_hit[k * pulses_per_train + i] else 0)
                np.add.at(frames[i], rng.integers(0, num_pix, n), np.float32(adu_per_photon))
            return frames.reshape((pulses_per_train,) + tuple(frame_shape))

        return cls(tuple(frame_shape), num_trains, pulses_per_train, make, is_hit, first_train)


def _noise(shape: tuple[int, ...], noise_adu: float, seed: int, k: int) -> np.ndarray:
    if not noise_adu:
        return np.zeros(shape, np.float32)
    return np.random.default_rng([seed, k, 1]).normal(0.0, noise_adu, shape).astype(np.float32)


def simulated(out_dir: str | os.PathLike, *, num_hits: int = 200, hit_fraction: float = 0.2, pixels: int = 64,
              mean_photons: float = 1000.0, pulses_per_train: int = 10, adu_per_photon: float = 1.0,
              noise_adu: float = 0.0, seed: int = 1) -> tuple[FrameSet, dict[str, Path]]:
    """A simulated particle (the shipped 1EI7 on the demo's 64 x 64 detector at 6 keV, 0.3 m) with
    ``num_hits`` hits among empty frames: ``simulate/`` files in ``out_dir`` (photons, detector, truth) and
    the FrameSet that replays them."""
    from spibatch.detector import Detector
    from spibatch.io.dragonfly import write_detector
    from spibatch.sim import SimulationSettings, simulate

    wavelength = 1.239841984e-6 / 6000.0
    detector = Detector.flat(pixels, 0.5e-3 * 64 / pixels, 0.3, wavelength, beamstop_radius_pixels=3 * pixels / 64)
    sim = SimulationSettings(pdb=PDB, num_patterns=num_hits, mean_photons_per_frame=mean_photons, seed=seed)
    write_detector(Path(out_dir) / "detector.h5", detector)   # first: a run that follows the replay reads it at
    paths = simulate(detector, sim, out_dir, show_progress=False)   # its start, before the frames are simulated
    frames = FrameSet.from_photons(paths["photons"], (pixels, pixels), hit_fraction=hit_fraction,
                                   pulses_per_train=pulses_per_train, adu_per_photon=adu_per_photon,
                                   noise_adu=noise_adu, seed=seed)
    return frames, paths


def frames_from(source: str | os.PathLike, *, detector: str | os.PathLike | None = None,
                out_dir: str | os.PathLike | None = None, hit_fraction: float = 0.2, pulses_per_train: int = 10,
                num_hits: int | None = None, adu_per_photon: float = 1.0, noise_adu: float = 0.0,
                seed: int = 1) -> tuple[FrameSet, Path]:
    """The FrameSet that ``spibatch replay SOURCE`` plays, and the detector file of its frames.

    source : ``"simulated"`` (a simulated particle, written to ``out_dir``: :func:`simulated`, ``num_hits``
        hits, default 200), or a photons file (ours or Dragonfly's, e.g. the shared sets' ``photons.emc``)
        with its ``detector`` file (Dragonfly's ``det_sim.h5`` holds no frame shape: a square one is taken)
    """
    from spibatch.detector import Detector
    from spibatch.errors import InputError

    if os.fspath(source) == "simulated":
        if out_dir is None:
            raise InputError("a simulated source needs a folder for its files", field="out_dir",
                             fix="give the folder to write simulate/ into")
        frames, paths = simulated(out_dir, num_hits=num_hits or 200, hit_fraction=hit_fraction,
                                  pulses_per_train=pulses_per_train, adu_per_photon=adu_per_photon,
                                  noise_adu=noise_adu, seed=seed)
        return frames, paths["detector"]
    if detector is None:
        raise InputError("a photons file needs its detector file", field="detector",
                         fix="give the detector file the photons were recorded or simulated with")
    from spibatch.io.dragonfly import check_match, photons_info

    geometry = Detector.read(detector)
    num_pix = photons_info(source)[1]
    check_match(geometry, num_pix, detector, source)    # one line, before a frame is made
    shape = geometry.shape
    if shape is None:
        side = int(round(np.sqrt(num_pix)))
        shape = (side, side)
    frames = FrameSet.from_photons(source, shape, hit_fraction=hit_fraction, pulses_per_train=pulses_per_train,
                                   num_hits=num_hits, adu_per_photon=adu_per_photon, noise_adu=noise_adu, seed=seed)
    return frames, Path(detector)


def replay(frames: FrameSet, rate_hz: float, as_: str, target: str | os.PathLike, *, trains_per_file: int = 5,
           run_number: int = 1, detector: str = "AGIPD1M", close: bool = True, linger_s: float = 5.0,
           stop: threading.Event | None = None, start_train: int = 0, stop_train: int | None = None) -> int:
    """Play ``frames`` at ``rate_hz`` frames per second as ``as_`` (one of :data:`KINDS`) at ``target``
    (a run folder, a ZeroMQ endpoint such as ``tcp://127.0.0.1:45454``, or a folder).

    trains_per_file : trains per sequence file or CXI file; run_number, detector : the EuXFEL file names
    close : write the overview file that marks the run closed at the end (euxfel-run)
    linger_s : how long the bridge keeps serving after the last train was taken (karabo-bridge)
    stop : an Event that ends the replay early; start_train, stop_train : play only trains k in this range
    Returns the number of trains played.
    """
    from spibatch.stream import replay_writers

    replay_writers.load(as_)   # import the facility's libraries here, not first in a thread at exit
    if as_ not in KINDS:
        raise ValueError(f"as_ must be one of {KINDS}, got {as_!r}")
    if not rate_hz > 0:
        raise ValueError(f"rate_hz must be positive, got {rate_hz}")
    stop = stop or threading.Event()
    trains = range(start_train, frames.num_trains if stop_train is None else min(stop_train, frames.num_trains))
    per_train_s = frames.pulses_per_train / rate_hz
    t0 = time.monotonic()

    def wait_until(k: int) -> bool:
        """Sleep until train k (counted from the first played) is due; False when asked to stop."""
        due = t0 + (k - trains.start) * per_train_s
        while not stop.is_set():
            left = due - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(left, 0.1))
        return False

    if as_ == "karabo-bridge":
        return replay_writers.serve_bridge(frames, trains, os.fspath(target), wait_until, linger_s, stop)
    writer = (replay_writers.write_sequence if as_ == "euxfel-run" else replay_writers.write_cxi)
    played = 0
    folder = Path(target)
    folder.mkdir(parents=True, exist_ok=True)
    # files numbered as if the whole set were played from train 0, a partial first file after the one an earlier
    # replay that stopped there left (stop_train=k, then start_train=k: no file name is used twice)
    for number, first in enumerate(range(trains.start, trains.stop, trains_per_file),
                                   start=-(-trains.start // trains_per_file)):
        group = range(first, min(first + trains_per_file, trains.stop))
        if not wait_until(group.stop - 1):
            break
        writer(frames, group, folder, number, run_number=run_number, detector=detector)
        played += len(group)
    if as_ == "euxfel-run" and close and not stop.is_set():
        replay_writers.close_run(folder)
    return played
