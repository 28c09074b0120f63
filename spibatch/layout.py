"""Every file and folder name of a run folder, in one place.

A run folder (``runs/<name>-<UTC time>/`` or ``--out``) holds the same layout whichever command
made it -- a one-stage run (``spibatch emc``, ``phase``, ...) or a whole pipeline (``spibatch run``)::

    config.yaml            the resolved pipeline (every default written out)
    site.yaml              the resolved site (pipeline runs)
    provenance.json        versions, host, command, input fingerprints, status, times
    log.txt                the run's log
    lock                   the owner's pid and host while a process writes here
    report.html            the self-contained report, with report_emc.png, report_phasing.png, report_fsc.png
    stages/<stage>.json    a finished stage's marker; stages/<stage>.log its log
    stages/jobs/           a stage run as a job of its own (the MPI EMC job): <stage>.json how it ended,
                           <stage>.stdout, <stage>.stderr; follow.alive (the follower's heartbeat)
    simulate/              photons.emc, detector.h5, truth.h5, density.mrc
    ingest/                photons.emc, detector.h5 (from a CXI stack)
    follow/                a live source's hits: detector.h5, chunks/chunk_NNNNNN.emc (photons + train/pulse
                           IDs, each written atomically), index.jsonl (one line per commit: the EMC side polls
                           it), frames.bin (per-frame statistics), status.json (the monitor's summary)
    stop                   `spibatch stop RUN_DIR` creates it: the follower ends at its next block
    emc/                   output_NNN.h5, EMC.log, metrics.jsonl, checkpoint.h5, htc/ (HTC mode's scratch:
                           model_NNN.npy, each task's sums_NNN_FFFFFFFFF.npy, the reduced slabs
                           total_NNN_KKK.npy -- all removed once read --, timing.jsonl);
                           with emc.halves: half_1/, half_2/ (each an EMC folder of its own, with photons.h5:
                           the even / odd frames) and halves.json (the split, the alignment, the half-set FSC);
                           with several emc.photons files or a blacklist: photons.h5 (the frames EMC reads, and
                           where each came from)
    phase/                 phasing.h5, phasing.cxi, density.mrc, phasing.png, metrics.jsonl, starts/start_NNN.npz,
                           previews/iteration_NNN/ (a following run's preview densities: phasing.h5,
                           density.mrc, preview.json: iteration, frames, time stamps, latency)
    validate/              emc_vs_truth.json, fsc_vs_truth.json (+ .png), density_in_truth_frame.mrc, or fsc.h5, fsc.png, fsc.txt,
                           fsc.json of two volumes
    runinfo/               Parsl's own files (logs, submit scripts)

Nothing else in spibatch spells these names: use :class:`RunLayout` (or the constants, for a
bare folder such as Dragonfly's or an EMC folder given alone).
"""

from __future__ import annotations

import re
from pathlib import Path

# ---- the run folder's own files
CONFIG = "config.yaml"
SITE = "site.yaml"
PROVENANCE = "provenance.json"
LOG = "log.txt"
LOCK = "lock"
REPORT = "report.html"
REPORT_PNGS = {"emc": "report_emc.png", "phasing": "report_phasing.png", "fsc": "report_fsc.png"}
STAGES_DIR = "stages"
JOBS_DIR = "jobs"
RUNINFO = "runinfo"

# ---- stage folders
STAGE_DIRS = {"simulate": "simulate", "ingest": "ingest", "follow": "follow", "emc": "emc", "phase": "phase",
              "validate": "validate"}
STOP = "stop"                    # run root: a request to stop following (`spibatch stop RUN_DIR` writes it)

# ---- data (simulate/, ingest/)
PHOTONS = "photons.emc"
DETECTOR = "detector.h5"
TRUTH = "truth.h5"
DENSITY_MRC = "density.mrc"

# ---- following a live source (follow/)
CHUNKS_DIR = "chunks"
FOLLOW_INDEX = "index.jsonl"     # one JSON line per commit (chunk, frame range, counts), then an "end" line
FOLLOW_FRAMES = "frames.bin"     # per-frame statistics: spibatch.stream.store.FRAME_STATS records, appended
FOLLOW_STATUS = "status.json"    # hit rate, lit-pixel histogram, frames, hits, bad trains: rewritten per commit
CHUNK_RE = re.compile(r"^chunk_(\d{6,})\.emc\Z")

# ---- EMC (emc/, or a bare EMC folder)
EMC_LOG = "EMC.log"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.h5"
HTC_DIR = "htc"
HTC_TIMING = "timing.jsonl"      # in htc/: one line per HTC iteration (where the time went)
HTC_SCRATCH_RE = re.compile(r"^(?:(?:model_\d{3,}|sums_\d{3,}_\d{9,}|total_\d{3,}_\d{3,})\.npy"
                            r"|expect_\d{3,}_\d{9,}\.npz)\Z")   # htc/'s scratch
OUTPUT_RE = re.compile(r"^output_(\d{3,})\.h5\Z")
HALF_DIRS = ("half_1", "half_2")  # gold-standard half sets: frames 0, 2, 4, ... and 1, 3, 5, ...
HALF_PHOTONS = "photons.h5"      # in each half's folder: its frames, a Dragonfly photons file
GATHERED_PHOTONS = "photons.h5"  # in emc/: the kept frames of several files (spibatch.io.frame_selection)
HALVES_JSON = "halves.json"      # the split, each half's result, their alignment and FSC

# ---- phasing (phase/)
PHASING = "phasing.h5"
PHASING_PNG = "phasing.png"
PHASING_CXI = "phasing.cxi"
DENSITY_TRUTH_FRAME = "density_in_truth_frame.mrc"
PREVIEWS_DIR = "previews"
PREVIEW_JSON = "preview.json"
STARTS_DIR = "starts"

# ---- validation (validate/)
EMC_VS_TRUTH = "emc_vs_truth.json"
FSC_VS_TRUTH = "fsc_vs_truth.json"
FSC_VS_TRUTH_PNG = "fsc_vs_truth.png"
FSC_PNG = "fsc.png"
FSC_TABLE = "fsc.h5"
FSC_TEXT = "fsc.txt"
FSC_JSON = "fsc.json"


def output_name(iteration: int) -> str:
    """``output_NNN.h5`` of EMC iteration ``iteration`` (three digits at least, as Dragonfly)."""
    return f"output_{iteration:03d}.h5"


def output_iteration(path: str | Path) -> int | None:
    """The iteration an ``output_NNN.h5`` name holds, or None for any other name."""
    match = OUTPUT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def chunk_name(index: int) -> str:
    """``chunk_NNNNNN.emc``: the follower's chunk ``index`` (from 1) of hits, a Dragonfly photons file."""
    return f"chunk_{index:06d}.emc"


def htc_model_name(iteration: int) -> str:
    """``model_NNN.npy``: the model HTC mode hands its shard tasks for iteration ``iteration`` (in ``htc/``)."""
    return f"model_{iteration:03d}.npy"


def htc_sums_name(iteration: int, first_frame: int) -> str:
    """``sums_NNN_FFFFFFFFF.npy``: the partial sums an HTC task wrote for iteration ``iteration``, its shard's
    frames starting at run frame ``first_frame`` (in ``htc/``)."""
    return f"sums_{iteration:03d}_{first_frame:09d}.npy"


def htc_expectation_name(iteration: int, first_frame: int) -> str:
    """``expect_NNN_FFFFFFFFF.npz``: an HTC task's kept probabilities for iteration ``iteration`` (the per-rotation
    merge's first half; its second half merges them), its frames starting at run frame ``first_frame``."""
    return f"expect_{iteration:03d}_{first_frame:09d}.npz"


def htc_total_name(iteration: int, slab: int) -> str:
    """``total_NNN_KKK.npy``: slab ``slab`` of iteration ``iteration``'s reduced sums (in ``htc/``)."""
    return f"total_{iteration:03d}_{slab:03d}.npy"


def start_name(index: int) -> str:
    """``start_NNN.npz``: phasing start ``index``'s result, as a worker wrote it (:mod:`spibatch.io.start_files`)."""
    return f"start_{index:03d}.npz"


class RunLayout:
    """The paths of one run folder (nothing is created or checked here)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunLayout({str(self.path)!r})"

    # -- the folder's own files
    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def site(self) -> Path:
        return self.path / SITE

    @property
    def provenance(self) -> Path:
        return self.path / PROVENANCE

    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    @property
    def report(self) -> Path:
        return self.path / REPORT

    def report_png(self, kind: str) -> Path:
        return self.path / REPORT_PNGS[kind]

    @property
    def runinfo(self) -> Path:
        return self.path / RUNINFO

    @property
    def stop(self) -> Path:
        """``stop``: its presence asks a follower (and whatever follows it) to end."""
        return self.path / STOP

    # -- stages
    def stage_dir(self, stage: str) -> Path:
        """The folder a stage writes into (``emc/``, ``phase/``, ...)."""
        return self.path / STAGE_DIRS[stage]

    def marker(self, stage: str) -> Path:
        return self.path / STAGES_DIR / f"{stage}.json"

    def stage_log(self, stage: str) -> Path:
        return self.path / STAGES_DIR / f"{stage}.log"

    def stage_result(self, stage: str) -> Path:
        """``stages/jobs/<stage>.json``: how the stage, run as a job of its own, ended."""
        return self.path / STAGES_DIR / JOBS_DIR / f"{stage}.json"

    def stage_stream(self, stage: str, which: str) -> Path:
        """``stages/jobs/<stage>.stdout`` / ``.stderr`` of a stage run as a job of its own."""
        return self.path / STAGES_DIR / JOBS_DIR / f"{stage}.{which}"

    # -- data
    def photons(self, stage: str) -> Path:
        return self.stage_dir(stage) / PHOTONS

    def detector(self, stage: str) -> Path:
        return self.stage_dir(stage) / DETECTOR

    @property
    def truth(self) -> Path:
        return self.stage_dir("simulate") / TRUTH

    @property
    def truth_density_mrc(self) -> Path:
        return self.stage_dir("simulate") / DENSITY_MRC

    # -- following a live source
    @property
    def follow(self) -> Path:
        return self.stage_dir("follow")

    @property
    def follow_index(self) -> Path:
        return self.follow / FOLLOW_INDEX

    @property
    def follow_frames(self) -> Path:
        return self.follow / FOLLOW_FRAMES

    @property
    def follow_status(self) -> Path:
        return self.follow / FOLLOW_STATUS

    @property
    def follow_alive(self) -> Path:
        """``stages/jobs/follow.alive``: touched every 2 s while a follower process lives (its heartbeat; not in
        ``follow/``, which the first good train makes)."""
        return self.stage_stream("follow", "alive")

    def chunk(self, index: int) -> Path:
        return self.follow / CHUNKS_DIR / chunk_name(index)

    # -- EMC
    @property
    def emc(self) -> Path:
        return self.stage_dir("emc")

    def emc_output(self, iteration: int) -> Path:
        return self.emc / output_name(iteration)

    @property
    def emc_log(self) -> Path:
        return self.emc / EMC_LOG

    @property
    def emc_metrics(self) -> Path:
        return self.emc / METRICS

    @property
    def checkpoint(self) -> Path:
        return self.emc / CHECKPOINT

    @property
    def htc(self) -> Path:
        return self.emc / HTC_DIR

    @property
    def gathered_photons(self) -> Path:
        """``emc/photons.h5``: the frames EMC reads when emc.photons are several files or some are left out."""
        return self.emc / GATHERED_PHOTONS

    def half(self, index: int) -> Path:
        """``emc/half_1/`` or ``emc/half_2/`` (``index`` 0 or 1): one gold-standard half set's EMC folder."""
        return self.emc / HALF_DIRS[index]

    @property
    def halves_json(self) -> Path:
        return self.emc / HALVES_JSON

    # -- phasing
    @property
    def phase(self) -> Path:
        return self.stage_dir("phase")

    @property
    def phasing(self) -> Path:
        return self.phase / PHASING

    @property
    def phasing_metrics(self) -> Path:
        return self.phase / METRICS

    @property
    def phased_density_mrc(self) -> Path:
        return self.phase / DENSITY_MRC

    @property
    def phasing_png(self) -> Path:
        return self.phase / PHASING_PNG

    @property
    def previews(self) -> Path:
        """``phase/previews/``: the preview densities of a run that follows a live source."""
        return self.phase / PREVIEWS_DIR

    def preview(self, iteration: int) -> Path:
        """``phase/previews/iteration_NNN/``: the preview phased from EMC iteration ``iteration``."""
        return self.previews / f"iteration_{iteration:03d}"

    def start_file(self, index: int) -> Path:
        return self.phase / STARTS_DIR / start_name(index)

    # -- validation
    @property
    def validate(self) -> Path:
        return self.stage_dir("validate")

    @property
    def emc_vs_truth(self) -> Path:
        return self.validate / EMC_VS_TRUTH

    @property
    def fsc_vs_truth(self) -> Path:
        return self.validate / FSC_VS_TRUTH

    @property
    def fsc_png(self) -> Path:
        return self.validate / FSC_PNG

    @property
    def density_in_truth_frame(self) -> Path:
        """The phased density turned, resampled and shifted onto the truth's grid (an MRC ChimeraX overlays)."""
        return self.validate / DENSITY_TRUTH_FRAME

    @property
    def fsc_vs_truth_png(self) -> Path:
        return self.validate / FSC_VS_TRUTH_PNG

    @property
    def fsc_table(self) -> Path:
        return self.validate / FSC_TABLE

    @property
    def fsc_text(self) -> Path:
        return self.validate / FSC_TEXT

    @property
    def fsc_json(self) -> Path:
        return self.validate / FSC_JSON
