"""The frames EMC reads when they are not one photons file: several files and a frame blacklist.

A Dragonfly user's ``in_photons_list`` (several photons files, their frames numbered on in the list's
order), ``blacklist_file`` (one 0 or 1 per frame of all the files, 1 = left out; e.g. after a 2-D
classification, :mod:`spibatch.classify`) and ``selection`` (``odd_only`` / ``even_only``: every other frame
not blacklisted, the first one kept with ``odd_only``) are ``emc.photons`` (a list), ``emc.photons_list``,
``emc.blacklist_file`` and ``emc.selection`` in a pipeline file, with Dragonfly's semantics.

:class:`FrameSelection` reads only headers and the blacklist (a command checks it before making a run folder).
The emc stage then gathers the kept frames, in order, into one photons file in the run (``emc/photons.h5``,
:meth:`FrameSelection.write`) that every rank and task reads; frame ``d`` of EMC's per-frame outputs is row
``d`` of that file, whose datasets ``source_file`` (an index into its dataset ``files``), ``source_frame``
(the frame in that file) and ``source_index`` (the frame in the whole list, the blacklist's line) say where
it came from.  Dragonfly keeps blacklisted frames in its per-frame outputs; spibatch's hold the kept ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spibatch.errors import InputError
from spibatch.io.files import require_file

SELECTIONS = ("odd_only", "even_only")
FIX_LIST = "list one photons file per line (relative to the list's folder; blank lines and '#' lines are skipped)"
FIX_BLACKLIST = ("give one 0 (keep) or 1 (leave out) per frame of all of emc.photons' files in order, "
                 "whitespace-separated (Dragonfly's blacklist_file)")


def gathers(emc) -> bool:
    """Whether the pipeline's emc section reads more than one photons file as it is (a list, a blacklist or a
    selection): then the emc stage gathers its frames (:meth:`FrameSelection.write`)."""
    return (isinstance(emc.photons, list) and len(emc.photons) > 1) or emc.photons_list is not None \
        or emc.blacklist_file is not None or emc.selection is not None


def photons_files(emc) -> list[Path]:
    """The photons files the emc section names (``emc.photons``, one or a list, or ``emc.photons_list``'s);
    InputError (one line) for a list file that cannot be read."""
    if emc.photons_list is not None:
        return read_list(emc.photons_list)
    if emc.photons is None:
        return []
    return [Path(p) for p in emc.photons] if isinstance(emc.photons, list) else [Path(emc.photons)]


def input_files(emc) -> list[Path]:
    """Every file the emc section's frames come from: the photons files, the list naming them, the blacklist."""
    return photons_files(emc) + [p for p in (emc.photons_list, emc.blacklist_file) if p is not None]


def read_list(path: str | os.PathLike, field: str = "emc.photons_list") -> list[Path]:
    """The photons files named in a text list (Dragonfly's ``in_photons_list``), relative ones to the list's
    folder (Dragonfly: to its config.ini's folder, the same for a list beside it); errors name ``field``."""
    path = Path(path)
    require_file(path, field, FIX_LIST)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"unreadable as text ({exc.__class__.__name__})", path=path, field=field,
                         fix=FIX_LIST) from None
    files = []
    for number, line in enumerate(lines, 1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if "\x00" in name or len(name) > 4096:   # (a path holds no NUL and is at most PATH_MAX long)
            what = "a NUL character" if "\x00" in name else f"{len(name):,} characters"
            raise InputError(f"line {number} holds {what}: not a file name", path=path, field=field, fix=FIX_LIST)
        files.append(path.parent / name)
    if not files:
        raise InputError("names no photons file", path=path, field=field, fix=FIX_LIST)
    return files


def read_blacklist(path: str | os.PathLike, frames: int) -> np.ndarray:
    """The blacklist (frames,) bool (True: left out) of a text file of one 0 or 1 per frame; InputError naming
    the file and the first bad value or the count found."""
    path = Path(path)
    require_file(path, "emc.blacklist_file", FIX_BLACKLIST)
    if path.stat().st_size > 64 * (frames + 1) + 4096:   # before reading: a 0/1 a line is 2 bytes
        raise InputError(f"{path.stat().st_size:,} bytes for {frames:,} frames", path=path,
                         field="emc.blacklist_file", fix=FIX_BLACKLIST)
    try:
        tokens = path.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"unreadable as text ({exc.__class__.__name__})", path=path, field="emc.blacklist_file",
                         fix=FIX_BLACKLIST) from None
    if len(tokens) != frames:
        raise InputError(f"holds {len(tokens):,} values for {frames:,} frames", path=path,
                         field="emc.blacklist_file", fix=FIX_BLACKLIST)
    values = np.array(tokens)
    bad = (values != "0") & (values != "1")
    if bad.any():
        k = int(np.argmax(bad))
        raise InputError(f"value {k + 1} (frame {k}) is {tokens[k][:20]!r}, not 0 or 1", path=path,
                         field="emc.blacklist_file", fix=FIX_BLACKLIST)
    return values == "1"


def apply_selection(left_out: np.ndarray, selection: str | None) -> np.ndarray:
    """Dragonfly's ``selection``: of the frames not left out, ``odd_only`` keeps the 1st, 3rd, ... and
    ``even_only`` the 2nd, 4th, ...; the others are left out too.  (D,) bool, True: left out."""
    if selection is None:
        return left_out
    if selection not in SELECTIONS:
        raise ValueError(f"selection {selection!r} is not one of {SELECTIONS}")
    good = np.flatnonzero(~left_out)
    out = left_out.copy()
    out[good[1::2] if selection == "odd_only" else good[0::2]] = True
    return out


def gathered_files(f) -> list[str]:
    """The photons files a gathered ``emc/photons.h5`` (an open h5py File) was made from: its dataset ``files``, or
    the attribute of runs gathered before it became one."""
    return list(f["files"].asstr()[()]) if "files" in f else [str(p) for p in f.attrs["files"]]


@dataclass(frozen=True)
class FrameSelection:
    """Photons ``files`` (each ``counts[k]`` frames of ``num_pix`` pixels) and ``keep`` (sum(counts),) bool."""

    files: tuple[Path, ...]
    counts: tuple[int, ...]
    num_pix: int
    keep: np.ndarray

    @property
    def total(self) -> int:
        return int(sum(self.counts))

    @property
    def kept(self) -> int:
        return int(self.keep.sum())

    @classmethod
    def of_files(cls, files: list[Path], field: str = "emc.photons") -> "FrameSelection":
        """Every frame of ``files``: each one's header read, all of one ``num_pix``; InputError (one line, naming
        ``field``) for a missing or unreadable file, or one of another detector."""
        from spibatch.io.dragonfly import photons_info

        counts, num_pix, seen = [], None, {}
        for k, path in enumerate(files):
            require_file(path, field, "give Dragonfly photons files (HDF5 or binary .emc)")
            status = os.stat(path)
            first = seen.setdefault((status.st_dev, status.st_ino), k)
            if first != k:
                raise InputError(f"listed twice: entry {k + 1} is the same file as entry {first + 1} "
                                 f"({files[first]})", path=path, field=field,
                                 fix="list each photons file once (its frames would count twice, and the gold-"
                                 "standard half sets would share them)")
            frames, pixels = photons_info(path)
            if num_pix is not None and pixels != num_pix:
                raise InputError(f"{pixels} pixels a frame, but {files[0]} has {num_pix}", path=path, field=field,
                                 fix="list photons files of one detector")
            counts.append(frames)
            num_pix = pixels
        return cls(tuple(files), tuple(counts), int(num_pix), np.ones(sum(counts), bool))

    @classmethod
    def of(cls, emc, config: str | os.PathLike | None = None) -> "FrameSelection":
        """The selection of a pipeline's emc section (:meth:`of_files`, the blacklist and the selection applied);
        InputError (one line) on anything wrong or no frame left."""
        files = photons_files(emc)
        field = "emc.photons_list" if emc.photons_list is not None else "emc.photons"
        if not files:
            raise InputError("no photons file given", path=config, field=field, fix="set emc.photons")
        every = cls.of_files(files, field)
        total = every.total
        left_out = np.zeros(total, bool) if emc.blacklist_file is None else read_blacklist(emc.blacklist_file, total)
        keep = ~apply_selection(left_out, emc.selection)
        if not total:
            raise InputError(f"the {len(files)} photons file(s) hold no frame", path=files[0], field=field,
                             fix="give photons files with frames")
        if not keep.any() and emc.selection and (~left_out).any():   # one frame kept, and even_only
            raise InputError(f"{emc.selection} leaves no frame of the {int((~left_out).sum()):,} not blacklisted",
                             path=config, field="emc.selection", fix="remove emc.selection, or give more frames")
        if not keep.any():
            raise InputError(f"every frame left out: no frame of the {total:,} to reconstruct from",
                             path=emc.blacklist_file or config, field="emc.blacklist_file",
                             fix="keep some frames (0 in the blacklist)")
        return cls(every.files, every.counts, every.num_pix, keep)

    @property
    def starts(self) -> np.ndarray:
        """(files + 1,) int64: the first frame of each file in the whole list, and the total."""
        return np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    def sources(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where each kept frame comes from: its file's index (kept,) int32, its frame in that file (kept,) int64
        and its frame in the whole list (kept,) int64."""
        index, starts = np.flatnonzero(self.keep).astype(np.int64), self.starts
        file = (np.searchsorted(starts, index, side="right") - 1).astype(np.int32)
        return file, index - starts[file], index

    def gathered_bytes(self) -> float:
        """About the size of the gathered file: each file's size times the share of its frames kept."""
        starts = self.starts
        return float(sum(path.stat().st_size * self.keep[a:b].mean() for path, a, b in
                         zip(self.files, starts[:-1], starts[1:]) if b > a))

    def kept_blocks(self, chunk_frames: int = 4096):
        """The kept frames, in order, as Photons blocks (each file read ``chunk_frames`` at a time, validated)."""
        from spibatch.io.dragonfly import iter_photons

        for path, start in zip(self.files, self.starts):
            for block in iter_photons(path, chunk_frames):
                yield block.take(np.flatnonzero(self.keep[start:start + block.num_frames]))
                start += block.num_frames

    def check_frames(self, used: np.ndarray | None = None, chunk_frames: int = 4096, tally=None) -> None:
        """Every frame of every file read once with the readers' checks (as
        :func:`spibatch.io.dragonfly.check_photons`); InputError when no kept frame holds a photon (on a pixel
        in ``used``, (num_pix,) bool: those EMC reads).  ``tally``: as photons_seen's."""
        from spibatch.io.dragonfly import photons_seen

        seen, seen_used = photons_seen(self.kept_blocks(chunk_frames), used, tally)
        where = f"the {self.kept:,} kept frames of {len(self.files)} file(s)"
        if not seen:
            raise InputError(f"{where} hold no photon: nothing to reconstruct", path=self.files[0],
                             field="emc.photons", fix="check the files and emc.blacklist_file")
        if used is not None and not seen_used:
            raise InputError(f"{where} hold no photon on a pixel EMC uses (mask 0 in the detector)",
                             path=self.files[0], field="emc.photons", fix="check the detector's mask")

    def matches(self, path: str | os.PathLike) -> bool:
        """Whether ``path`` holds these frames, gathered by :meth:`write` from these files (False: no file)."""
        import h5py

        try:
            with h5py.File(path, "r") as f:
                return (gathered_files(f) == [str(p) for p in self.files]
                        and np.array_equal(f["source_index"][()], self.sources()[2])
                        and len(f["place_ones"]) == self.kept)
        except (OSError, KeyError, ValueError):
            return False

    def write(self, path: str | os.PathLike, chunk_frames: int = 4096) -> None:
        """Gather the kept frames, in order, into the Dragonfly photons file ``path`` (atomic; with
        ``source_file``, ``source_frame``, ``source_index``, ``files`` (a dataset: thousands of paths exceed an
        HDF5 attribute's 64 KiB) and the attribute ``total_frames``)."""
        import h5py

        from spibatch.io.dragonfly import PhotonsWriter

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with PhotonsWriter(path, self.num_pix) as writer:
            for block in self.kept_blocks(chunk_frames):
                writer.append(block)
            file, frame, index = self.sources()
            writer.add("files", np.array([str(p) for p in self.files], dtype=h5py.string_dtype()))
            writer.add("source_file", file, total_frames=self.total)
            writer.add("source_frame", frame)
            writer.add("source_index", index)

    def describe(self) -> str:
        """``3 photons files, 12,000 frames, 1,500 left out: 10,500 read``."""
        files = f"{len(self.files)} photons file{'s' * (len(self.files) > 1)}"
        left = self.total - self.kept
        return f"{files}, {self.total:,} frames" + (f", {left:,} left out: {self.kept:,} read" if left else "")
