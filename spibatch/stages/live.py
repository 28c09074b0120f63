"""EMC and phasing while a live source still records (a pipeline with a ``source:`` section).

* EMC starts once ``source.emc_start_hits`` hits are committed (:func:`first_photons`), takes the chunks
  that arrive after at each iteration boundary (:class:`spibatch.stream.shards.ChunkShards`), and after
  the source ends stops by :class:`FollowStop`.
* Annealing with growing data: the beta schedule counts EMC's iterations from its start, as in a batch
  run, and frames that join later take the current beta (each frame's own from its photon count, times
  the schedule).  A late frame meets a model that the earlier frames have already sharpened, so a sharp
  beta suits it; holding beta back until the data are complete would only delay the answer (the time
  from the last frame to the final density is what a beamtime waits for).  ``benchmarks/streaming.py``
  measures the final model against a batch run on the same hits.
* Annealing stops with the batch run's: beta grows by the schedule until ``emc.iterations`` and then
  holds (a beamtime's EMC may run hundreds of iterations; beta doubling on through them would harden every
  frame's orientation to one rotation).
* Previews (:class:`Previews`, in the driver): while the source records, every
  ``source.preview_every_iterations`` iterations the newest EMC intensity is phased with
  ``source.preview_starts`` starts on a spare worker into ``phase/previews/iteration_NNN/`` with ``preview.json`` (iteration, frames, when the newest frame had
  arrived, when the density was written); when EMC ends the last iteration is phased the same way: the
  quick final density, before the full phase stage.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from spibatch.errors import InputError
from spibatch.layout import PREVIEW_JSON, RunLayout

log = logging.getLogger("spibatch")

MAX_ITERATIONS = 100_000      # while following, EMC ends by FollowStop, not by emc.iterations
PLATEAU = {"mutual_info": 2e-3, "log_likelihood": 2e-4}    # relative change per iteration that counts as level
MODEL_LEVEL = 0.01           # a model that moved by less than this fraction of its rms in an iteration has settled
POLL_S = 0.5


def first_photons(run: RunLayout, min_hits: int, timeout_s: float | None = None) -> tuple[Path, int]:
    """Wait until ``min_hits`` hits are committed (or the follow ended with some); the first chunk file and its
    frame count (EMC starts on it and polls for the rest).  InputError when the follow ended without a hit."""
    from spibatch.io.dragonfly import photons_info
    from spibatch.stream.shards import ChunkShards

    shards, began, life = ChunkShards(run.follow), time.monotonic(), FollowerLife(run)
    while True:
        first = shards.first_chunks(min_hits)
        if first:
            photons = Path(first[0].photons)
            return photons, photons_info(photons)[0]
        if shards.end is not None and shards.hits == 0:
            raise InputError(f"the source ended ({shards.end.get('end', 'ended')}) before a single hit was found "
                             f"in {shards.frames_seen} frames{_skipped_trains(run)}", path=run.follow, field="source",
                             fix="check the source, adu_per_photon and hit_threshold")
        if shards.end is None and follow_over(run):   # ended without an end line: before its first
            shards = ChunkShards(run.follow)          # train, or stopped (an end line comes before the record)
            if not shards.first_chunks(min_hits) and (shards.end is None or shards.hits == 0):
                _raise_if_follow_failed(run)
                problem = (f"the follow stopped after {shards.hits} hit(s), fewer than source.emc_start_hits "
                           f"({min_hits}), without an end line (see stages/follow.log)" if shards.hits else
                           "the source ended before a single hit was committed (no train arrived: see "
                           "stages/follow.log)")
                raise InputError(problem, path=run.follow, field="source",
                                 fix="check the source's target and that data are flowing (source.idle_timeout_s "
                                 "ends a follow that waited that long for its first train)")
            continue
        if run.stop.exists() and shards.end is None and timeout_s is None:
            timeout_s = 60.0          # stopped: the follower commits what it has within its next block
        life.check(f"EMC had not started ({shards.hits} of source.emc_start_hits = {min_hits} hits committed)")
        if timeout_s is not None and time.monotonic() - began > timeout_s:
            raise InputError(f"no hit committed within {timeout_s:.0f} s", path=run.follow, field="source",
                             fix="is the follower running? see stages/follow.log")
        time.sleep(POLL_S)


def follow_status(run: RunLayout) -> dict:
    """``follow/status.json`` (:meth:`spibatch.stream.store.Store.write_status`), or {} while there is none."""
    try:
        status = json.loads(run.follow_status.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return status if isinstance(status, dict) else {}


def _skipped_trains(run: RunLayout, status: dict | None = None) -> str:
    """``"; N trains skipped (reason: count, ...; see stages/follow.log)"`` from the follow's status, or ""
    (an unreadable file whose trains are unknown counts as one)."""
    bad = (follow_status(run) if status is None else status).get("bad_trains")
    if not isinstance(bad, dict):
        return ""
    bad = {k: v for k, v in bad.items() if k != "already ingested" and isinstance(v, int)}
    if not bad:
        return ""
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(bad.items(), key=lambda kv: -kv[1]))
    return f"; {sum(bad.values())} train(s) arrived and were skipped ({reasons}; see stages/follow.log)"


def follow_line(run: RunLayout) -> str | None:
    """``Followed SOURCE: F frames, H hits in C chunks (END)[; N trains skipped (...)]``, None for a run that
    followed nothing.  The run's closing lines say what a follow skipped (said only in stages/follow.log
    before)."""
    status = follow_status(run)
    if not status:
        return None
    numbers = {key: status.get(key) if isinstance(status.get(key), int) else 0
               for key in ("frames_seen", "hits", "chunks")}
    ended = status.get("end_reason")
    return (f"Followed {status.get('source') or 'the source'}: {numbers['frames_seen']:,} frames, {numbers['hits']:,} "
            f"hits in {numbers['chunks']} chunk(s)" + (f" ({ended})" if isinstance(ended, str) else "")
            + _skipped_trains(run, status))


def _raise_if_follow_failed(run: RunLayout, what: str = "follow stage failed before a single hit was committed"
                            ) -> None:
    """InputError with the follow job's own error when it failed (a crash is not "no train arrived")."""
    from spibatch.stages.__main__ import read_result

    result = read_result(run, "follow")
    if result and result.get("status") == "failed":
        error = " ".join(str(result.get("error") or "no error recorded").split())[:300]
        raise InputError(f"the {what}: {error}", path=run.follow,
                         field="source", fix=f"see {run.stage_stream('follow', 'stderr')} and stages/follow.log")


def say_how_the_follow_ended(run: RunLayout) -> None:
    """The follow's end on the driver's terminal (it was in stages/follow.log only): a pause longer than
    ``source.idle_timeout_s`` ends a beamtime's follow for good, and the operator must hear it."""
    status = follow_status(run)
    if not status:
        return
    reason = str(status.get("end_reason") or "")
    line = (f"follow: ended ({reason}): {status.get('frames_seen', 0)} frames, {status.get('hits', 0)} hits in "
            f"{status.get('trains', 0)} trains")
    if reason.startswith("no new train"):
        log.warning("%s; frames arriving from now on are not taken (source.idle_timeout_s ends a follow; a pause "
                    "longer than it needs a new run, or a longer time-out)", line)
    else:
        log.info("%s", line)


def follow_over(run: RunLayout) -> bool:
    """Whether the follow stage has ended, done or failed (its marker, or its job's record: a follower started
    again removes an earlier one's, :class:`spibatch.pipeline.Follower`)."""
    return run.marker("follow").exists() or run.stage_result("follow").exists()


FOLLOWER_STALE_S = 180.0     # a follower whose heartbeat has not changed this long (on the reader's clock) is gone
                             # (3 x NFS's longest attribute cache, 60 s: a shared folder may show a beat late)


class FollowerLife:
    """Whether the follower process of ``run`` still lives: its heartbeat file (``stages/jobs/follow.alive``,
    touched every 2 s by a thread of its own) changed within :data:`FOLLOWER_STALE_S` seconds of this process's
    clock (no clock of another host compared), and no record of its end without an end line."""

    def __init__(self, run: RunLayout, stale_s: float | None = None):
        self.run, self.stale_s = run, FOLLOWER_STALE_S if stale_s is None else stale_s
        self.seen: int | None = None
        self.since = time.monotonic()

    def check(self, where: str) -> None:
        """InputError (one line, the way on) when the follower is gone; ``where``: what stops (EMC's state)."""
        try:
            beat = self.run.follow_alive.stat().st_mtime_ns
        except FileNotFoundError:
            beat = None
        now = time.monotonic()
        if beat != self.seen:
            self.seen, self.since = beat, now
        if self.run.marker("follow").exists():
            return                     # it ended well (its end line is in the index): no beat is owed
        ended = self.run.stage_result("follow").exists()
        if not ended and now - self.since <= self.stale_s:
            return
        _raise_if_follow_failed(run=self.run, what="follow stage failed without ending the follow")
        why = "its process ended" if ended else f"no sign of it for {now - self.since:.0f} s"
        raise InputError(f"the follower stopped without ending the follow ({why}; see stages/follow.log): {where}",
                         path=self.run.follow, field="source",
                         fix=f"spibatch resume {self.run.path} starts a follower again and goes on from what was "
                         "committed (spibatch stop first, if the data have ended)")


class FollowStop:
    """EMC's stopping rule while following: never before the source ended and every chunk was taken; then at
    the first iteration with every frame in which the model moved by less than :data:`MODEL_LEVEL` of its
    rms (``rms_change / model_rms``), or whose mutual information and log-likelihood (both per frame) are
    level with the iteration before (relative change below :data:`PLATEAU`); at the latest ``after_end``
    iterations after the end, but not before ``at_least`` iterations in all (``emc.iterations``); an EMC that
    started late, on data that had all arrived, stops by none of these rules before ``at_least``: it is not cut
    short of what a batch run would do (a model that moves little while beta still rises has not settled).

    The first iteration with every frame may be the last: by the end of a beamtime the model has been
    refined through many iterations on most of the frames, and the last chunks move it little; each
    further iteration costs the time a beamtime waits for its final density.  ``benchmarks/streaming.py``
    measures the CC with the truth this gives against a batch run on the same hits (BENCHMARKS.md)."""

    def __init__(self, source, after_end: int, at_least: int = 1, life: FollowerLife | None = None):
        self.source, self.after_end, self.at_least, self.life = source, after_end, at_least, life
        self.ended_at: int | None = None
        self.late = False
        self.previous: dict | None = None

    def __call__(self, record: dict) -> bool:
        previous, self.previous = self.previous, record
        if self.ended_at is None:
            if not self.source.finished():
                if self.life is not None:
                    self.life.check(f"EMC stopped after iteration {record['iteration']} on {record['num_frames']} "
                                    "hits")
                if previous is not None and previous["num_frames"] == record["num_frames"] and \
                        record["iteration"] >= self.at_least and (_settled(record) or level(previous, record)):
                    self._wait_for_frames(record)
                return False
            self.ended_at = record["iteration"]
            self.late = previous is None      # EMC began on data that had all arrived: a batch run's count
            log.info("emc: the source has ended and every frame is in (%d): iterating to a plateau, at most %d more",
                     record["num_frames"], self.after_end)
        if self.late and record["iteration"] < self.at_least:   # not cut short of the batch run's annealing
            return False
        done = record["iteration"] - self.ended_at + 1
        enough = done >= self.after_end and record["iteration"] >= self.at_least
        return enough or _settled(record) or (previous is not None and level(previous, record))

    def _wait_for_frames(self, record: dict) -> None:
        """The model has settled on the frames it has (its annealing over) and none came: wait (no iteration, no
        file) until new hits are committed or the follow ends -- a paused beamtime wrote an output file an
        iteration, 485 MB in 90 s at 45^3 (the live audit) --, asking after the follower meanwhile."""
        has_new = getattr(self.source, "has_new", None)
        if has_new is None or has_new():
            return
        log.info("emc: the model has settled on %d hits: waiting for new frames", record["num_frames"])
        while not has_new():
            if self.life is not None:
                self.life.check(f"EMC waited after iteration {record['iteration']} on {record['num_frames']} hits")
            time.sleep(POLL_S)

    @property
    def ended(self) -> bool:
        """The source has ended and every frame is in EMC."""
        return self.ended_at is not None


def _settled(record: dict) -> bool:
    """The model moved by less than :data:`MODEL_LEVEL` of its rms in the iteration of ``record``."""
    return record.get("model_rms", 0.0) > 0 and record["rms_change"] <= MODEL_LEVEL * record["model_rms"]


def level(before: dict, after: dict) -> bool:
    """Mutual information and log-likelihood changed by less than :data:`PLATEAU` (relative) from one
    iteration's record to the next."""
    return all(abs(after[k] - before[k]) <= tol * max(abs(before[k]), 1e-12) for k, tol in PLATEAU.items())


# ------------------------------------------------------------------ previews (the driver's side)

def preview_task(run_dir: str, iteration: int, newest_frame: float | None, frames: int, final: bool = False) -> str:
    """Phase EMC iteration ``iteration`` of a following run quickly into ``phase/previews/iteration_NNN/``."""
    from spibatch.phasing.driver import run_phasing
    from spibatch.phasing.settings import PhasingSettings
    from spibatch.stages import load_run

    run, pipeline, device = load_run(run_dir)
    starts = pipeline.source.preview_starts
    settings = PhasingSettings.from_dict({**pipeline.phasing.model_dump(), "recipe": pipeline.source.preview_recipe,
                                          "num_starts": starts, "keep_best": starts})
    out = run.preview(iteration)
    began = time.time()
    run_phasing(run.emc_output(iteration), out, settings, device=device, show_progress=False)
    written = time.time()
    record = {"iteration": iteration, "frames": frames, "final": final, "started": began, "written": written,
              "newest_frame_received": newest_frame,
              "latency_s": None if newest_frame is None else written - newest_frame, "starts": starts}
    from spibatch.io.atomic import write_text

    write_text(out / PREVIEW_JSON, json.dumps(record, indent=1) + "\n")
    log.info("preview of iteration %d (%d frames) written %.1f s after the newest frame", iteration, frames,
             record["latency_s"] or float("nan"))
    return str(out)


class Previews:
    """A thread in the driver: watches ``emc/metrics.jsonl`` and phases every ``every``-th iteration on a worker
    (one preview at a time; a newer iteration replaces a waiting one) while the source records; :meth:`final`
    phases the last one.  Once the follow has ended no preview starts: EMC's last iterations have the cores
    to themselves, and the quick final density comes sooner."""

    def __init__(self, run: RunLayout, submit, every: int):
        from spibatch.stream.shards import ChunkShards

        self.run, self.submit, self.every = run, submit, every
        self.shards = ChunkShards(run.follow)     # when the frames an iteration holds arrived
        self.done: set[int] = set()
        self.future = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="spibatch-previews", daemon=True)

    def __enter__(self) -> "Previews":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join(timeout=5)

    def _newest(self) -> dict | None:
        try:
            lines = self.run.emc_metrics.read_text(encoding="utf-8").splitlines()
            return json.loads(lines[-1]) if lines else None
        except (FileNotFoundError, ValueError, RecursionError, IndexError):
            return None

    def _launch(self, record: dict, final: bool = False):
        iteration = record["iteration"]
        self.done.add(iteration)
        newest = self.shards.received_by(record.get("num_frames", 0))   # its own newest frame, not the follow's
        if newest is None:
            newest = follow_status(self.run).get("last_received")
        return self.submit(preview_task, str(self.run.path), iteration, newest, record.get("num_frames", 0), final)

    def _watch(self) -> None:
        while not self._stop.wait(POLL_S):
            record = self._newest()
            busy = self.future is not None and not self.future.done()
            if record and not busy and record["iteration"] % self.every == 0 and record["iteration"] not in self.done \
                    and follow_status(self.run).get("state") != "ended":
                self.future = self._launch(record)

    def final(self) -> str | None:
        """Phase EMC's last iteration (the quick final density) and wait for it; its folder."""
        self._stop.set()
        self.thread.join(timeout=5)
        record = self._newest()
        if record is None:
            return None
        if self.future is not None:
            try:
                self.future.result()
            except Exception as exc:  # noqa: BLE001 - a preview that failed does not stop the run
                log.warning("a preview failed: %s", exc)
        return self._launch(record, final=True).result()
