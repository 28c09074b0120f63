"""A following run's live source, for the monitor: frames and hits so far, the hit rate, the lit-pixel
histogram, the preview densities and the time from the newest frame to the newest density.

Read from the run folder only (:class:`spibatch.layout.RunLayout` names every file):

- ``follow/status.json``: the follower rewrites it atomically at every commit (frames, hits, hit rate,
  threshold, lit-pixel histogram with its bin edges, bad trains by reason, when the first and the
  newest frame were received, state and end reason);
- ``follow/index.jsonl``: one line per commit with the cumulative frames and hits and its time: the
  hit rate commit by commit (at most :data:`MAX_POINTS` points, evenly picked);
- ``phase/previews/iteration_NNN/preview.json``: a preview density (EMC iteration, frames, when the
  newest frame had arrived, when the density was written, their difference), ``phasing.h5`` beside it;
- ``phase/phasing.h5``: the full final density, once written (its modification time).

"The newest density" is the newest of the previews (the quick final density is the last of them) and
the full final one; its latency is the time from the newest frame received before it was started to
the moment it was written.
"""

from __future__ import annotations

import re
from pathlib import Path

from spibatch import layout
from spibatch.monitor.files import BadFile, NotReady, read_json, read_jsonl
from spibatch.monitor.paths import NotFound, OutsideRoot
from spibatch.monitor.values import clean, integer, number, numbers, text

MAX_POINTS = 500            # commits shown in the hit-rate history
MAX_PREVIEWS = 10_000       # preview folders looked at
PREVIEW_RE = re.compile(r"iteration_([0-9]{3,9})")
STATUS_KEYS = ("frames_seen", "hits", "trains", "chunks", "last_train", "bad_trains_total")
STATUS_NUMBERS = ("hit_rate", "last_batch_hit_rate", "threshold", "first_received", "last_received", "updated")


def has_follow(data) -> bool:
    return data.exists(data.run.follow_status)


def preview_iterations(data) -> list[int]:
    """EMC iterations with a preview (its ``preview.json`` written: the density is complete), in order."""
    try:
        names = data.lookup.names(data.run.previews)
    except OSError:
        return []
    found = sorted(int(m.group(1)) for m in map(PREVIEW_RE.fullmatch, names) if m)[-MAX_PREVIEWS:]
    return [i for i in found if data.exists(data.run.preview(i) / layout.PREVIEW_JSON)]


def watched(data) -> list[Path]:
    """The files whose change should refresh the page: the status and the previews' records."""
    return [data.run.follow_status] + [data.run.preview(i) / layout.PREVIEW_JSON for i in preview_iterations(data)]


def _preview(data, iteration: int) -> dict | None:
    record = data.read_json(data.run.preview(iteration) / layout.PREVIEW_JSON)
    if not isinstance(record, dict):
        return None
    return {"iteration": iteration, "frames": integer(record.get("frames")), "final": record.get("final") is True,
            "started": number(record.get("started")), "written": number(record.get("written")),
            "newest_frame_received": number(record.get("newest_frame_received")),
            "latency_s": number(record.get("latency_s")), "starts": integer(record.get("starts")),
            "has_density": data.exists(data.run.preview(iteration) / layout.PHASING)}


def _history(data) -> dict:
    """Per commit: time, cumulative frames and hits, and the hit rate of that commit's frames."""
    try:
        rows = [r for r in read_jsonl(data.root, data.run.follow_index) if "commit" in r]
    except (NotFound, OutsideRoot, BadFile):
        rows = []
    if len(rows) > MAX_POINTS:
        step = len(rows) / MAX_POINTS
        rows = [rows[int(k * step)] for k in range(MAX_POINTS - 1)] + [rows[-1]]
    out = {"time": [], "frames_seen": [], "hits": [], "hit_rate": []}
    before_frames = before_hits = 0
    for r in rows:
        frames, hits = integer(r.get("frames_seen")), integer(r.get("hits"))
        if frames is None or hits is None:
            continue
        new = frames - before_frames
        out["time"].append(number(r.get("time")))
        out["frames_seen"].append(frames)
        out["hits"].append(hits)
        out["hit_rate"].append((hits - before_hits) / new if new > 0 else None)
        before_frames, before_hits = frames, hits
    return out


def _histogram(value) -> dict | None:
    if not isinstance(value, dict):
        return None
    edges, counts = numbers(value.get("edges")), numbers(value.get("counts"))
    if not counts or len(edges) != len(counts) or any(c is None for c in counts):
        return None
    return {"edges": edges, "counts": counts}


def of(data) -> dict:
    """The live source of a following run (see the module docstring); NotFound when the run follows none."""
    if not has_follow(data):
        raise NotFound("this run follows no live source (no follow/status.json)")
    status = read_json(data.root, data.run.follow_status)
    if not isinstance(status, dict):
        raise BadFile(f"{data.run.follow_status.name}: not a JSON object")
    bad = status.get("bad_trains")
    out = {"state": text(status.get("state")), "end_reason": text(status.get("end_reason")),
           "source": text(status.get("source")), "threshold_rule": text(status.get("threshold_rule")),
           **{k: integer(status.get(k)) for k in STATUS_KEYS}, **{k: number(status.get(k)) for k in STATUS_NUMBERS},
           "bad_trains": {str(k): integer(v) for k, v in bad.items()} if isinstance(bad, dict) else {},
           "lit_histogram": _histogram(status.get("lit_histogram")), "history": _history(data)}
    previews = [p for p in (_preview(data, i) for i in preview_iterations(data)) if p is not None]
    previews.sort(key=lambda p: (p["written"] or 0, p["iteration"]))
    out["previews"] = previews
    out["latest_preview"] = previews[-1] if previews else None
    newest = None
    if previews:
        p = previews[-1]
        newest = {"kind": "quick final" if p["final"] else "preview", "iteration": p["iteration"],
                  "frames": p["frames"], "written": p["written"], "latency_s": p["latency_s"]}
    final = data.mtime(data.run.phasing)
    if final is not None and out["state"] == "ended" and (newest is None or final > (newest["written"] or 0)):
        last = out["last_received"]
        newest = {"kind": "final", "iteration": None, "frames": out["hits"], "written": final,
                  "latency_s": final - last if last is not None else None}
    out["newest_density"] = newest
    return clean(out)


def preview_slices(data, iteration: int | None) -> dict:
    """Central slices of a preview density (the newest when ``iteration`` is None), with its record."""
    iterations = preview_iterations(data)
    if not iterations:
        raise NotFound("no preview density yet")
    if iteration is None:
        previews = [p for p in (_preview(data, i) for i in iterations) if p is not None and p["has_density"]]
        if not previews:
            raise NotFound("no preview density yet")
        record = max(previews, key=lambda p: (p["written"] or 0, p["iteration"]))
    elif iteration in iterations:
        record = _preview(data, iteration)
    else:
        raise NotFound(f"no preview of iteration {iteration}")
    if record is None or not record["has_density"]:
        raise NotReady(f"the preview of iteration {iteration} is being written")
    out = data.density_slices(data.run.preview(record["iteration"]) / layout.PHASING)
    out["preview"] = record
    return clean(out)
