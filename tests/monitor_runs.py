"""A writer that fills a run folder step by step, as `spibatch demo` does, for the monitor's tests.

EMC iterations go through the real writers (spibatch.emc.records: output_NNN.h5, EMC.log, metrics.jsonl),
phasing through the real result writer (phasing.h5) and the stage's metrics.jsonl line format.
Sizes are tiny (21^3 model, 60 frames) so a test can write many iterations in well under a second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from spibatch.emc import records
from spibatch.io.atomic import write_text
from spibatch.io.results import write_result
from spibatch.layout import RunLayout

EDGE = 21
FRAMES = 60
NUM_ROT = 500
DQ_PER_M = 2.0e7          # reciprocal voxel, 1/m
BETA_DOUBLES_AT = 3       # the iteration whose beta is twice the one before (a change marker)


class RunWriter:
    """``RunWriter(folder, iterations=4, starts=3)``; then ``emc(i)``, ``phasing()``, ``fsc()``, ``finish()``.

    ``pipeline=True``: a `spibatch run` folder (site.yaml, a simulation section), whose stages are marked
    with ``stage_log(name)`` (the stage runs) and ``stage_done(name)``; ``start_done(k)`` writes a phasing
    start's file as a worker does.  ``command``: provenance's command (a one-stage run: ["spibatch", "emc"]).
    """

    def __init__(self, folder: Path, *, iterations: int = 4, starts: int = 3, emc_subdir: str = "emc",
                 pipeline: bool = False, command: list[str] | None = None):
        self.folder = Path(folder)
        self.layout = RunLayout(self.folder)
        self.emc_dir = self.folder / emc_subdir if emc_subdir else self.folder
        self.iterations, self.starts = iterations, starts
        self.command = command or ["spibatch", "run" if pipeline else "demo"]
        self.history: list[dict] = []
        self.rng = np.random.default_rng(7)
        self.folder.mkdir(parents=True, exist_ok=True)
        simulation = "simulation:\n  pdb: 1EI7.pdb\n" if pipeline else ""
        write_text(self.layout.config, f"name: monitor-test\n{simulation}emc:\n  iterations: {iterations}\n"
                                       f"phasing:\n  num_starts: {starts}\n")
        if pipeline:
            write_text(self.layout.site, "name: local\nprovider: local\n")
        self.provenance("running")
        write_text(self.layout.log, "2026-01-01T00:00:00 INFO run directory here\n")

    def provenance(self, status: str) -> None:
        write_text(self.layout.provenance, json.dumps(
            {"status": status, "command": self.command, "started": "2026-01-01T00:00:00Z",
             "finished": None if status == "running" else "2026-01-01T00:05:00Z", "host": "testhost"}))

    def stage_log(self, stage: str) -> None:
        """A line in ``stages/<stage>.log``, as a running stage writes."""
        path = self.layout.stage_log(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"2026-01-01T00:01:00 INFO {stage}: working\n")

    def stage_done(self, stage: str, seconds: float = 12.5) -> None:
        """The stage's marker ``stages/<stage>.json`` (what spibatch.stages.mark_done writes)."""
        self.stage_log(stage)
        write_text(self.layout.marker(stage), json.dumps({"stage": stage, "status": "done", "outputs": {},
                                                          "seconds": seconds, "finished": "2026-01-01T00:02:00Z"}))

    def start_done(self, index: int) -> None:
        """``phase/starts/start_NNN.npz`` of one finished start (the file a pipeline's worker writes)."""
        path = self.layout.start_file(index)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, "a phasing start file\n")

    def model(self, iteration: int) -> np.ndarray:
        """A centred blob with rings that sharpen with the iteration; 0 (not measured) beyond the corners."""
        c = EDGE // 2
        x, y, z = np.mgrid[:EDGE, :EDGE, :EDGE] - c
        r = np.sqrt(x ** 2 + y ** 2 + z ** 2)
        model = 100.0 * np.exp(-r / 3.0) * (1.5 + np.cos(r * (0.5 + 0.1 * iteration))) + 1e-3
        model[r > c] = 0.0
        return model

    def emc(self, iteration: int) -> None:
        """Write iteration ``iteration``: output_NNN.h5, then EMC.log and metrics.jsonl (the real order)."""
        beta = 0.04 * (2.0 if iteration >= BETA_DOUBLES_AT else 1.0)
        prob = np.clip(self.rng.beta(0.5 + iteration, 3.0, FRAMES), 0, 1)
        record = {"iteration": iteration, "beta_mean": beta, "num_rot": NUM_ROT, "mpi_ranks": 1,
                  "log_likelihood": -3000.0 / iteration, "mutual_info": 1.0 + 0.5 * iteration,
                  "rms_change": 0.5 / iteration ** 2, "mean_kept_rotations": NUM_ROT / (2.0 * iteration),
                  "time_s": 1.0, "num_frames": FRAMES}
        frames = {"best_rotation": self.rng.integers(0, NUM_ROT, FRAMES), "best_probability": prob,
                  "log_likelihood": np.full(FRAMES, record["log_likelihood"]),
                  "mutual_info": np.full(FRAMES, record["mutual_info"])}
        quaternions = np.tile([1.0, 0.0, 0.0, 0.0], (NUM_ROT, 1))
        self.emc_dir.mkdir(parents=True, exist_ok=True)
        records.write_iteration(self.emc_dir, iteration, self.model(iteration), frames, np.ones(FRAMES),
                                quaternions, record, DQ_PER_M)
        self.history.append(record)
        header = "spibatch EMC test\n\n" + "\t".join(records.LOG_COLUMNS) + "\n"
        records.write_logs(self.emc_dir, header, self.history)

    def phasing(self, out: str = "phase", starts: int | None = None, merge: bool = True) -> None:
        """Phasing metrics for ``starts`` starts (all by default) and, with ``merge``, phasing.h5."""
        folder = self.folder / out
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(self.starts if starts is None else starts):
            errors = (0.9 * np.exp(-np.arange(40) / (10 + i)) + 0.1).round(6).tolist()
            lines.append({"stage": "phase", "kind": "start", "start": i, "seed": 1 + i, "final_error": errors[-1],
                          "seconds": 1.0, "support_voxels": 300, "algorithms": [["HIO", 30], ["ER", 10]],
                          "errors": errors})
        n = EDGE
        prtf = np.linspace(1.0, 0.2, n // 2 + 1)
        voxel_m = 1.0 / (n * DQ_PER_M)
        if merge:
            lines.append({"stage": "phase", "kind": "merge", "kept_seeds": [1, 2], "final_errors": [0.1, 0.11],
                          "alignment_cc": [1.0, 0.9], "resolution_m": n * voxel_m / 7.5, "resolution_shell": 7.5,
                          "max_measured_shell": n // 2, "seconds": 3.0, "prtf": [None] + prtf[1:].round(4).tolist()})
            x, y, z = np.mgrid[:n, :n, :n] - n // 2
            density = np.exp(-(x ** 2 + y ** 2 + z ** 2) / 8.0).astype(np.float32)
            support = (x ** 2 + y ** 2 + z ** 2 <= 16).astype(np.float32)
            write_result(folder / "phasing.h5",
                         {"density": density, "support": support, "prtf": prtf,
                          "prtf_frequency_per_m": np.arange(prtf.size) / (n * voxel_m)},
                         {"voxel_size_m": voxel_m, "resolution_m": n * voxel_m / 7.5, "resolution_shell": 7.5})
        write_text(folder / "metrics.jsonl", "".join(json.dumps(line) + "\n" for line in lines))

    def fsc(self, out: str = "validate") -> None:
        n = EDGE
        voxel_m = 1.0 / (n * DQ_PER_M)
        radius = np.arange(n // 2 + 1, dtype=float)
        fsc = np.clip(1.2 - radius / 6.0, -0.1, 1.0)
        (self.folder / out).mkdir(parents=True, exist_ok=True)
        write_text(self.folder / out / "fsc_vs_truth.json", json.dumps(
            {"cc": 0.8, "inverted": False, "voxel_size_m": voxel_m, "radius": radius.tolist(),
             "frequency": (radius / (n * voxel_m)).tolist(), "fsc": fsc.tolist(),
             "fsc_0.5_radius": 4.2, "fsc_0.143_radius": 6.34, "resolution_0.5_m": n * voxel_m / 4.2,
             "resolution_0.143_m": n * voxel_m / 6.34, "data_edge_resolution_m": n * voxel_m / (n // 2)}))

    def follow(self, frames: int, hits: int, *, lit_hit: int = 300, received: float = 1.0e9, end: str | None = None):
        """One commit of the live-source follower through its real store (follow/: a chunk of ``hits`` hits,
        ``frames`` frames' statistics -- hits with ``lit_hit`` lit pixels, the rest with 2 --, the index line,
        status.json), frames received from ``received`` on at 1 ms apart; ``end``: then end the follow."""
        from spibatch.detector import Detector
        from spibatch.photons import Photons
        from spibatch.stream.store import FRAME_STATS, Store

        if not hasattr(self, "store"):
            self.store = Store(self.layout.follow, "CXI folder /beamline/cxi", "median + 5 x 1.4826 MAD")
            self.store.load()
            self.store.start(Detector.flat(8, 1e-3, 0.1, 1e-9))
            self.next_train = 10_000
        if not frames:
            if end:
                self.store.end(end)
            return
        stats = np.zeros(frames, FRAME_STATS)
        stats["train_id"] = self.next_train + np.arange(frames) // 10
        stats["pulse_id"] = np.arange(frames) % 10
        stats["received"] = received + 1e-3 * np.arange(frames)
        stats["hit"][:hits] = 1
        stats["lit"] = np.where(stats["hit"] == 1, lit_hit, 2)
        stats["frame"] = -1
        stats["frame"][:hits] = self.store.state.hits + np.arange(hits)
        dense = np.zeros((hits, 64), np.int32)
        dense[:, :4] = 1
        photons = Photons.from_dense(dense) if hits else None
        trains = len(np.unique(stats["train_id"]))
        self.store.commit(photons, stats["train_id"][:hits], stats["pulse_id"][:hits], stats, trains,
                          int(stats["train_id"][-1]), {}, 20.0)
        self.next_train = int(stats["train_id"][-1]) + 1
        if end:
            self.store.end(end)

    def preview(self, iteration: int, frames: int, *, newest_frame: float, written: float, final: bool = False):
        """A preview density of EMC iteration ``iteration`` as the previews thread leaves it: phasing.h5, then
        preview.json."""
        folder = self.layout.preview(iteration)
        folder.mkdir(parents=True, exist_ok=True)
        n = EDGE
        x, y, z = np.mgrid[:n, :n, :n] - n // 2
        density = np.exp(-(x ** 2 + y ** 2 + z ** 2) / (4.0 + iteration)).astype(np.float32)
        write_result(folder / "phasing.h5", {"density": density, "support": (density > 0.1).astype(np.float32)},
                     {"voxel_size_m": 1.0 / (n * DQ_PER_M)})
        write_text(folder / "preview.json", json.dumps(
            {"iteration": iteration, "frames": frames, "final": final, "started": written - 5.0, "written": written,
             "newest_frame_received": newest_frame, "latency_s": written - newest_frame, "starts": 2}))

    def complete(self) -> "RunWriter":
        """Every iteration, the phasing, the FSC, status completed."""
        for i in range(len(self.history) + 1, self.iterations + 1):
            self.emc(i)
        self.phasing()
        self.fsc()
        self.provenance("completed")
        return self


def local_client(root: Path, **options):
    """Starlette's TestClient for the monitor app of ``root``, asking as a browser on this machine does
    (Host 127.0.0.1: the app answers only to the names it is told, the loopback ones by default)."""
    import warnings

    from spibatch.monitor.server import create_app

    with warnings.catch_warnings():   # Starlette >= 1.x would rather have httpx2; httpx works the same here
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    return TestClient(create_app(root, **options), base_url="http://127.0.0.1:8765", raise_server_exceptions=False)


def start_monitor(args: list[str], env: dict | None = None):
    """`spibatch monitor ARGS` in a subprocess; (process, the address it printed, its stdout lines so far)."""
    proc = subprocess.Popen([sys.executable, "-m", "spibatch", "monitor", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    deadline, lines = time.monotonic() + 60, []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "open http://" in line:
            return proc, line.split("open ", 1)[1].split()[0], lines
    proc.kill()
    raise AssertionError(f"no address printed: {lines} {proc.stderr.read()}")


def stop_monitor(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
