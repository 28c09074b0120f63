"""The follow stage: a live source -> ``follow/`` (hits in chunks with their train/pulse IDs, per-frame
statistics, ``status.json``, the detector).

It runs until the source ends -- an EuXFEL run closed by its overview file, no train for
``source.idle_timeout_s``, or ``spibatch stop RUN_DIR`` -- and a second call continues from what was
committed (``spibatch resume``).  ``spibatch run`` starts it as a process of its own on the driver's node
(the bridge and the run folder are reachable there) while EMC takes the chunks as they come.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from spibatch.config import PLANCK_EV_M
from spibatch.errors import InputError
from spibatch.layout import RunLayout
from spibatch.stream.sources import endpoint_problem

log = logging.getLogger("spibatch")


def detector_of(pipeline):
    """The :class:`~spibatch.detector.Detector` of the source's frames: its detector file (a square frame when
    the file holds no shape, as Dragonfly's), or its CrystFEL geometry through EXtra-geom."""
    from spibatch.detector import Detector

    src = pipeline.source
    if src.detector is not None:
        detector = Detector.read(src.detector)
        side = int(round(detector.num_pix ** 0.5))
        if detector.shape is None and side * side == detector.num_pix:
            detector.shape = (side, side)
        if detector.shape is None:
            raise InputError("the detector file holds no frame shape, and its pixels are no square", path=src.detector,
                             field="source.detector", fix="give a detector file written by spibatch for these "
                             "frames, or source.geometry")
        return detector
    from spibatch.stream.geometry import detector_from_geometry, geometry_from_file

    wavelength = src.wavelength_m or PLANCK_EV_M / src.photon_energy_ev
    return detector_from_geometry(geometry_from_file(src.geometry, src.detector_name), wavelength_m=wavelength,
                                  distance_m=src.distance_m, beamstop_radius_m=src.beamstop_radius_m)


def settings_of(pipeline):
    """The source section as :class:`spibatch.stream.follower.FollowSettings` (plain values)."""
    from spibatch.stream.follower import FollowSettings

    src = pipeline.source
    return FollowSettings(adu_per_photon=src.adu_per_photon,
                          threshold=None if src.hit_threshold == "auto" else float(src.hit_threshold),
                          chunk_frames=src.chunk_frames, flush_s=src.flush_s, idle_timeout_s=src.idle_timeout_s)


def check(pipeline, config: Path | None = None, run: RunLayout | None = None) -> None:
    """Before anything is created: a source section, its folder (run folder, CXI folder) or endpoint in the
    right form, and a detector that builds."""
    src = pipeline.source
    if src is None:
        raise InputError("no `source` section", path=config, field="source", fix="add one naming the live source")
    if src.is_path and not Path(src.target).is_dir():
        raise InputError("no such folder", path=src.target, field="source.target",
                         fix="give the run folder or CXI folder the data are written to (it must exist)")
    if src.detector is not None and not Path(src.detector).is_file():
        raise InputError("file not found", path=src.detector, field="source.detector",
                         fix="give the detector file of the frames (ours or Dragonfly's), or source.geometry")
    problem = None if src.is_path else endpoint_problem(src.target)
    if problem is not None:
        raise InputError(f"{src.target!r}: {problem}", path=config, field="source.target",
                         fix="give the bridge's address, e.g. tcp://exflonc05:45000")
    try:
        detector_of(pipeline)
    except InputError as exc:   # the geometry reader names its own fields: say which section they are in
        if exc.field and not exc.field.startswith("source."):
            exc.field = f"source.{exc.field}"
        raise


def run(run: RunLayout, pipeline, device=None, workers=None) -> dict[str, Path]:
    from spibatch.stream.follower import Follower
    from spibatch.stream.sources import open_source

    src = pipeline.source
    detector = detector_of(pipeline)
    source = open_source(src.kind, src.target, tuple(detector.shape), detector_name=src.detector_name,
                         settle_s=src.settle_s, bridge_source=src.bridge_source, bridge_key=src.bridge_key,
                         bridge_sock=src.bridge_sock)
    follower = Follower(source, detector, run.follow, settings_of(pipeline), stop_file=run.stop)
    watch_driver(follower.store, run)
    beating = heartbeat(run)
    try:
        summary = follower.run()
    finally:
        beating.set()
    log.info("follow: %s: %d frames, %d hits in %d chunks (%s)", src.target, summary["frames_seen"], summary["hits"],
             summary["chunks"], summary["end_reason"])
    return {"follow_index": run.follow_index, "follow_status": run.follow_status}


HEARTBEAT_S = 2.0


def heartbeat(run: RunLayout):
    """A daemon thread touching ``stages/jobs/follow.alive`` every :data:`HEARTBEAT_S` while this process lives
    (from before the first train): EMC, which waits for the follow's end line, sees a follower that was killed or
    crashed without writing it (:class:`spibatch.stages.live.FollowerLife`) -- a long read or commit does not stop
    the beat.  Returns the threading.Event that ends it."""
    import threading

    done = threading.Event()
    run.follow_alive.parent.mkdir(parents=True, exist_ok=True)

    def beat() -> None:
        while not done.is_set():
            try:
                run.follow_alive.touch()    # (not the folders: a run folder deleted under an orphan stays so)
            except OSError:
                pass    # a full disk: the next beat tries again
            done.wait(HEARTBEAT_S)

    threading.Thread(target=beat, name="spibatch-follow-heartbeat", daemon=True).start()
    return done


def watch_driver(store, run: RunLayout, period_s: float = 2.0) -> None:
    """A daemon thread: when the driver that started this follower dies (this process is handed to another
    parent), say so once in the log and in ``follow/status.json`` (``driver_gone``).  The follower goes on:
    frames of a beamtime that is still recording are not lost while the operator runs ``spibatch resume``
    (which stops this follower and starts its own from what was committed) or ``spibatch stop``."""
    import os
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(period_s)
        store.driver_gone = True
        log.warning("follow: the driver (process %d) is gone; following on, nothing is lost: `spibatch resume %s` "
                    "takes over (EMC from its checkpoint), `spibatch stop %s` ends the follow", parent, run.path,
                    run.path)

    threading.Thread(target=watch, name="spibatch-driver-watch", daemon=True).start()

