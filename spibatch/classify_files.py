"""What ``spibatch classify`` writes: the classes, the blacklist EMC reads, a summary and a picture to choose from.

In the output folder:

* ``classes.txt``: one class a line per frame of the photons files in order (0 the largest class);
* ``blacklist.txt``: one 0 (keep) or 1 (leave out) a line per frame, Dragonfly's ``blacklist_file`` format and
  ``emc.blacklist_file``'s: the frames of the kept classes (``--keep``, else the suggestion) are 0;
* ``classes.json``: the photons files, the seed, the kept classes and each class's summary
  (:func:`spibatch.classify.summarise`);
* ``classes.png``: each class's mean radial profile, its photon counts and the frames on the first two principal
  components.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from pathlib import Path

import numpy as np

from spibatch.classify import Classes
from spibatch.errors import InputError
from spibatch.io.atomic import atomic_path, write_text

FILES = ("classes.txt", "blacklist.txt", "classes.json", "classes.png")
BASE_BYTES = 224 << 20      # the process and a piece's temporaries (spibatch.classify._pieces): 195 MiB peak at 4 000 medium frames
BYTES_PER_FRAME = 3200      # features, their matrix and its components: 2.8 kB a frame measured (40k-80k frames)


def write_classes(out: str | os.PathLike, classes: Classes, keep: list[int], files: list[Path], seed: int) -> Path:
    """The four files of the module docstring in ``out`` (made; each written atomically); the blacklist's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "classes.txt", "\n".join(map(str, classes.labels.tolist())) + "\n")
    left_out = ~np.isin(classes.labels, keep)
    write_text(out / "blacklist.txt", "\n".join(map(str, left_out.astype(int).tolist())) + "\n")
    summary = {"files": [str(p) for p in files], "frames": len(classes.labels), "seed": seed, "kept": keep,
               "suggested": classes.suggested, "left_out": int(left_out.sum()), "classes": classes.summaries}
    write_text(out / "classes.json", json.dumps(summary, indent=1) + "\n")
    plot_classes(classes, keep, out / "classes.png")
    return out / "blacklist.txt"


def parse_keep(text: str | None, num_classes: int) -> list[int] | None:
    """``--keep 0,2`` as [0, 2] (None: none given); InputError (one line) for anything but classes 0 ..
    ``num_classes`` - 1."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items or not all(re.fullmatch(r"[0-9]{1,3}", t) and int(t) < num_classes for t in items):   # ASCII only
        shown = repr(text) if len(text) <= 40 else repr(text[:40]) + "..."
        raise InputError(f"{shown} is not a list of classes among 0..{num_classes - 1}", field="--keep",
                         fix="give the classes to keep, comma-separated, e.g. --keep 0,2")
    return sorted({int(t) for t in items})


def check_keeps_frames(classes: Classes, keep: list[int]) -> None:
    """InputError (one line, nothing written) when the classes kept hold no frame: EMC would refuse the blacklist."""
    counts = [int(summary["frames"]) for summary in classes.summaries]
    if not sum(counts[c] for c in keep):
        raise InputError(f"class{'es' * (len(keep) > 1)} {','.join(map(str, keep))} hold{'s' * (len(keep) == 1)} no frame (frames per class: "
                         f"{', '.join(f'{c}: {n:,}' for c, n in enumerate(counts))})", field="--keep",
                         fix="keep a class that holds frames")


CLAIM = ".classify.claim"


def unclaimed_entries(out: Path) -> list[str]:
    """What ``out`` holds besides a classify's claim (a claim its SIGKILLed owner left is taken over)."""
    return [p.name for p in out.iterdir() if p.name != CLAIM] if out.is_dir() else []


@contextlib.contextmanager
def claimed(out: Path):
    """``out`` (a new or empty folder) claimed for this command alone while the body runs: a lock held on its claim
    file -- a second `spibatch classify` into it is refused in one line, not left to overwrite the first's files
    (nor to replace them once the first has finished: the folder must still be empty once claimed), and a claim
    left by a killed command is taken over --; on an error the claim, and the folder when this command made it and
    it is still empty, are removed."""
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    claim = out / CLAIM
    fd = os.open(claim, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise InputError("another spibatch classify writes into it now", path=out, field="--out",
                         fix="name another folder") from None
    try:
        if unclaimed_entries(out):
            raise InputError("exists: nothing is overwritten", path=out, field="--out", fix="name a new folder")
        yield out
    except BaseException:
        claim.unlink(missing_ok=True)
        os.close(fd)
        if made:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    claim.unlink(missing_ok=True)
    os.close(fd)


def open_frames(photons: list[Path], detector: Path, num_classes: int, chunk_frames: int = 8192,
                field: str = "photons"):
    """(the detector, the frames of ``photons`` in order as an iterable of blocks, their number): every file's
    header read and matched against the detector first; InputError (one line) for a missing or mismatched file,
    or fewer than 10 frames a class."""
    from spibatch.detector import Detector
    from spibatch.estimates import human_bytes, machine_memory
    from spibatch.io.dragonfly import check_match
    from spibatch.io.files import require_file
    from spibatch.io.frame_selection import FrameSelection

    require_file(detector, "--detector", "give the detector file of these photons")
    geometry = Detector.read(detector)
    every = FrameSelection.of_files(photons, field)          # all of one num_pix: the first stands for them
    check_match(geometry, every.num_pix, detector, photons[0])
    frames = every.total
    if frames < 10 * num_classes:
        raise InputError(f"{frames:,} frames for {num_classes} classes", path=photons[0], field="--classes",
                         fix=f"give at least {10 * num_classes} frames, or fewer classes")
    need, (memory, source) = BASE_BYTES + BYTES_PER_FRAME * frames, machine_memory()
    if need > memory:
        raise InputError(f"{frames:,} frames need about {human_bytes(need)} to classify ({BYTES_PER_FRAME:,} bytes "
                         f"a frame) but this machine has {human_bytes(memory)} ({source})", path=photons[0],
                         field=field, fix="classify the files in parts, or on a machine with more memory")
    return geometry, every.kept_blocks(chunk_frames), frames


def describe(classes: Classes, keep: list[int]) -> list[str]:
    """One line a class: its frames, median photons, distance from the largest class, kept or not."""
    lines = []
    for c, s in enumerate(classes.summaries):
        distance = "-" if s["distance"] is None else f"{s['distance']:.2f}"
        mark = "kept" if c in keep else "left out"
        hint = " (suggested)" if s["suggested"] else ""
        lines.append(f"class {c}: {s['frames']:>8,} frames, median {s['median_photons']:>9.1f} photons, "
                     f"distance {distance:>5}: {mark}{hint}")
    return lines


def plot_classes(classes: Classes, keep: list[int], path: Path) -> None:
    """Three panels: mean radial profile per class (log), photon counts per class, the 2-D map of the frames."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), dpi=100)
    counts = np.maximum(classes.features["counts"], 1.0)
    bins = np.geomspace(counts.min(), counts.max() * 1.01, 40)
    rng = np.random.default_rng(0)
    shown = rng.permutation(len(counts))[:20000]
    for c, s in enumerate(classes.summaries):
        if not s["frames"]:
            continue
        style = "-" if c in keep else "--"
        label = f"{c}: {s['frames']:,}{' kept' if c in keep else ''}"
        axes[0].semilogy(np.asarray(s["profile"]), style, color=f"C{c % 10}", label=label)
        axes[1].hist(counts[classes.labels == c], bins=bins, histtype="step", color=f"C{c % 10}", ls=style)
        mine = shown[classes.labels[shown] == c]
        axes[2].scatter(classes.scores[mine, 0], classes.scores[mine, 1], s=2, color=f"C{c % 10}", alpha=0.5)
    axes[0].set(xlabel="shell of |q| (inner to outer)", ylabel="mean fraction of photons / corr",
                title="radial profile per class (solid: kept)")
    axes[0].legend(fontsize=8)
    axes[1].set(xscale="log", xlabel="photons in the frame", ylabel="frames", title="photons per frame")
    axes[2].set(xlabel="principal component 1", ylabel="principal component 2", title="frames (at most 20 000)")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
