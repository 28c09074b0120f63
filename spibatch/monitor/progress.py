"""Where a run is: its stages (done, running, waiting) and how far phasing has got, from the run's files.

Read from the run folder only (:class:`spibatch.layout.RunLayout` names every file):

- ``stages/<stage>.json``: the stage's marker, written when it finished ("done", its seconds);
- ``stages/<stage>.log``: written while the stage runs (its mtime: the stage's last activity);
- ``provenance.json``: the run's status (running, completed, failed, interrupted);
- ``site.yaml``: present in a pipeline run (``spibatch run`` / ``demo`` / ``resume``), whose stages are
  the data stage its ``config.yaml`` has (simulation or ingest), then emc, phase, validate -- the chain
  :func:`spibatch.stages.order` runs (not imported: the stages import the monitor for the report);
  a one-stage run (``spibatch emc``, ...) has the stage its command names (and validate for
  ``spibatch phase --truth``), plus any other stage that left a marker or a log;
- ``phase/starts/start_NNN.npz`` (one per start finished by a worker, in a pipeline) and the start
  lines of ``phase/metrics.jsonl`` (one per start, in one process), of ``phasing.num_starts`` in
  ``config.yaml``; ``phase/phasing.h5`` once the starts are merged.

A stage of a running run is ``done``, ``running`` (the first one not done) or ``waiting``; of a run
that has ended, one that started but has no marker is ``failed`` / ``interrupted`` (the run's
status) or ``stopped``, and one that never started is ``not run``.
"""

from __future__ import annotations

from pathlib import Path

from spibatch import layout
from spibatch.monitor.files import BadFile
from spibatch.monitor.paths import NotFound, OutsideRoot
from spibatch.monitor.values import number, text

STAGES = tuple(layout.STAGE_DIRS)   # simulate, ingest, emc, phase, validate: the order they run in
MAX_STARTS_LISTED = 100_000         # start files looked for (phasing.num_starts beyond this is not counted)


def planned(data) -> list[str]:
    """The stages this run means to run, in order (``data``: a :class:`~spibatch.monitor.rundata.RunData`)."""
    config, run = data.config(), data.run
    if data.exists(run.site):
        first = ["simulate"] if isinstance(config.get("simulation"), dict) else \
            ["ingest"] if isinstance(config.get("ingest"), dict) else \
            ["follow"] if isinstance(config.get("source"), dict) else []
        return first + ["emc", "phase", "validate"]
    command = data.provenance().get("command")
    if not isinstance(command, list) or len(command) < 2 or command[1] not in STAGES:
        return []
    truth = any(isinstance(a, str) and (a == "--truth" or a.startswith("--truth=")) for a in command)
    return [command[1]] + (["validate"] if command[1] == "phase" and truth else [])


def watched(data) -> list[Path]:
    """The stage files whose change should refresh the page: markers, stage logs, finished starts."""
    run = data.run
    return [p for s in STAGES for p in (run.marker(s), run.stage_log(s))] + start_files(data)


def start_files(data) -> list[Path]:
    """The ``phase/starts/start_NNN.npz`` files written so far (each under the monitored root)."""
    folder = data.run.start_file(0).parent
    try:
        names = set(data.lookup.names(folder))
    except OSError:
        return []
    count = min(max(data.config_int("phasing", "num_starts") or 0, len(names)), MAX_STARTS_LISTED)
    wanted = (folder / layout.start_name(i) for i in range(count))
    return [p for p in wanted if p.name in names and data.exists(p)]


def _marker(data, stage: str) -> dict | None:
    record = data.read_json(data.run.marker(stage))
    return record if isinstance(record, dict) and record.get("status") == "done" else None


def stages(data, status: str) -> list[dict]:
    """One entry per stage of the run: stage, state, seconds (done), finished (done), last_log (epoch s)."""
    run = data.run
    wanted = set(planned(data))
    wanted |= {s for s in STAGES if data.exists(run.marker(s)) or data.exists(run.stage_log(s))}
    out, open_seen = [], False
    for name in (s for s in STAGES if s in wanted):
        marker, last_log = _marker(data, name), data.mtime(run.stage_log(name))
        if marker is not None:
            state = "done"
        elif status == "running":   # EMC takes a live source's chunks while the follow runs: both are running
            state = "running" if not open_seen or (open_seen == "follow" and last_log is not None) else "waiting"
            open_seen = open_seen or name
        elif last_log is not None:
            state = status if status in ("failed", "interrupted") else "stopped"
        else:
            state = "not run"
        out.append({"stage": name, "state": state, "seconds": number((marker or {}).get("seconds")),
                    "finished": text((marker or {}).get("finished")), "last_log": last_log})
    return out


def phasing(data, stage_list: list[dict]) -> dict | None:
    """Phasing's progress: starts finished (start files, or start lines of phase/metrics.jsonl) of those
    planned, and whether they are merged (phasing.h5); None when the run has no phasing."""
    metrics, result = data.phase_files()
    state = next((s["state"] for s in stage_list if s["stage"] == "phase"), None)
    files = start_files(data)
    if state is None and not files and metrics is None and result is None:
        return None
    lines = 0
    if metrics is not None:
        try:
            lines = sum(1 for r in data.read_jsonl(metrics) if r.get("kind") == "start")
        except (NotFound, OutsideRoot, BadFile):
            lines = 0
    return {"state": state or ("done" if result is not None else "running"), "starts_done": max(len(files), lines),
            "starts_planned": data.config_int("phasing", "num_starts"), "merged": result is not None}


def of(data, summary: dict) -> dict:
    """``{"stages": [...], "phasing": {...} | None}`` for a run's summary (its status already read)."""
    stage_list = stages(data, summary.get("status") or "unknown")
    return {"stages": stage_list, "phasing": phasing(data, stage_list)}
