"""What a command prints when its run ends: the outputs, the numbers that say how it went, where to look next.

Read from the run folder only (:mod:`spibatch.layout`), so every command -- one stage or the whole
pipeline -- says the same things the same way.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from spibatch.layout import RunLayout


def outputs_lines(run_path: Path, outputs: dict) -> list[str]:
    """``run directory ...`` then one line per output file and the run's own files."""
    run = RunLayout(run_path)
    lines = [f"run directory {run.path}"]
    extra = {"config": run.config, "site": run.site, "provenance": run.provenance, "log": run.log,
             "report": run.report}
    for label, path in {**outputs, **extra}.items():
        if Path(path).exists():
            lines.append(f"  {label:<14} {path}")
    return lines


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError, RecursionError):
        return None


def _angstrom(value, edge=None, last=None) -> str:
    """``at 28.4 A``, or where the curve never fell below the level: ``never below it (finer than the data
    edge, 27.6 A)`` -- the words the monitor and the report use too; without the data edge (m), the last shell
    compared (``last``, m) is named instead."""
    if value is None:
        if edge:
            return f"never below it (finer than the data edge, {edge * 1e10:.1f} A)"
        return "never below it (finer than the last shell compared" + (f", {last * 1e10:.1f} A)" if last else ")")
    return f"at {value * 1e10:.1f} A"


def _last_shell_m(fsc: dict) -> float | None:
    """1 / the last FSC shell's frequency (m) of an fsc_vs_truth.json, or None when it holds no such number."""
    frequency = fsc.get("frequency")
    last = frequency[-1] if isinstance(frequency, list) and frequency else None
    return 1.0 / last if isinstance(last, (int, float)) and last > 0 else None


def result_lines(run_path: Path) -> list[str]:
    """The EMC, phasing and validation numbers the run folder holds (whichever stages ran)."""
    from spibatch.stages.live import follow_line

    run = RunLayout(run_path)
    lines = [line for line in [follow_line(run)] if line]
    emc_line = _emc_line(run)
    if emc_line:
        lines.append(emc_line)
    halves = _json(run.halves_json)
    if halves is not None and halves.get("cc") is not None:
        from spibatch.emc.halves import describe

        lines.append(f"EMC gold standard ({' + '.join(str(n) for n in halves.get('frames', []))} frames): "
                     f"{describe(halves)}")
    if run.phasing.exists():
        lines.append(_phasing_line(run))
    fsc = _json(run.fsc_vs_truth)
    if fsc is not None:
        edge = fsc.get("data_edge_resolution_m")
        if fsc.get("voxel_size_m"):
            half, gold = (_angstrom(fsc.get(f"resolution_{t}_m"), edge, _last_shell_m(fsc)) for t in ("0.5", "0.143"))
        else:
            never = "never below it (finer than the last shell compared)"     # not Nyquist on an odd grid
            half, gold = (f"at {fsc.get(k):.3g} voxels" if fsc.get(k) else never
                          for k in ("fsc_0.5_radius", "fsc_0.143_radius"))
        lines.append(f"FSC of the density with the true density: 0.5 {half}, 0.143 {gold} "
                     f"(cc {fsc['cc']:.3f}{', twin' if fsc.get('inverted') else ''})")
    return lines


def _emc_line(run: RunLayout) -> str | None:
    """``EMC: N iterations on R rank(s) in T s`` (+ the correlation with the truth when validated)."""
    rows = []
    if run.emc_metrics.exists():
        for line in run.emc_metrics.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except (ValueError, RecursionError):
                continue
    if not rows:
        return None
    from spibatch.stages import finished

    stage = (finished(run, "emc") or {}).get("seconds")    # the stage's own time: setup and writes included,
    iterations = sum(r.get("time_s", 0.0) for r in rows)   # but of its last session only (a resume)
    seconds = max(stage, iterations) if isinstance(stage, (int, float)) else iterations
    shown = f"{seconds:.1f}" if seconds < 10 else f"{seconds:.0f}"     # ("in 0 s" for a 2-second run)
    line = f"EMC: {rows[-1]['iteration']} iterations on {rows[-1].get('mpi_ranks', 1)} rank(s) in {shown} s"
    line += _gathered(run)
    truth = _json(run.emc_vs_truth)
    if truth is not None:
        twin = " (inversion twin)" if truth.get("inverted") else ""
        line += (f"; correlation of the reconstructed intensity with the truth at the best orientation{twin}, "
                 f"shells {truth['r_min']:g}-{truth['r_max']:g} voxels: cc = {truth['cc']:.4f}")
    return line


def _gathered(run: RunLayout) -> str:
    """`` (K of N frames of 3 photons files: emc/photons.h5)`` when EMC read frames gathered from several files or
    with some left out (:mod:`spibatch.io.frame_selection`); else nothing."""
    if not run.gathered_photons.exists():
        return ""
    import h5py

    from spibatch.io.frame_selection import gathered_files

    try:
        with h5py.File(run.gathered_photons, "r") as f:
            kept, files = len(f["source_index"]), len(gathered_files(f))
            total = int(f.attrs["total_frames"]) if "total_frames" in f.attrs else None
    except (OSError, KeyError, ValueError):
        return ""
    of = f" of {total:,}" if total is not None else ""
    return f" ({kept:,}{of} frames of {files} photons file{'s' * (files > 1)}: {run.gathered_photons})"


def _phasing_line(run: RunLayout) -> str:
    from spibatch.io.results import read_result

    attrs = read_result(run.phasing, attrs_only=True)[1]
    res = attrs.get("resolution_m")
    line = ("no PRTF resolution from one kept start (its PRTF is 1 by construction: keep 2 or more)"
            if (attrs.get("keep_best") or 0) < 2 else
            f"PRTF falls below 1/e at {res * 1e10:.3g} A" if res else
            f"PRTF 1/e at shell {attrs['resolution_shell']:.1f}" if attrs.get("resolution_shell") else
            "PRTF stays above 1/e to the edge of the data")
    return (f"phasing: {attrs.get('keep_best')} of {attrs.get('num_starts')} starts kept; {line} "
            f"(data reach shell {attrs.get('max_measured_shell')})")


def next_lines(run_path: Path) -> list[str]:
    """Where the report is, and how to browse the run in the monitor (and what to install for it, where its
    web server is not installed: the line read as a command that then failed)."""
    import importlib.util

    run = RunLayout(run_path)
    lines = []
    if run.report.exists():
        lines.append(f"report: {run.report}")
    command = f"spibatch monitor {shlex.quote(str(run.path))}"
    lines.append(f"browse it (live while a run runs): {command}" if importlib.util.find_spec("starlette") else
                 f"browse it (live while a run runs): pip install 'spibatch[monitor]', then {command}")
    return lines
