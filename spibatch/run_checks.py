"""What an earlier run folder must be before anything reopens it (``--resume``, ``spibatch resume``, ``stop``):
its provenance.json a readable record of the expected shape, none of its own files and folders a symbolic link
or a pipe (a FIFO hung the read; a link took the writes elsewhere), its recorded inputs and its config.yaml as
they were when the run started.  Every refusal is one InputError; nothing here writes."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from spibatch import layout
from spibatch.errors import InputError
from spibatch.io.fingerprint import same_fingerprint

PROVENANCE_FIX = "give the run directory of an earlier run (it holds provenance.json)"
# key -> the JSON types it may hold in provenance.json (a hand-edited record gave AttributeError tracebacks)
PROVENANCE_TYPES = {"status": str, "command": list, "inputs": dict, "resumed": list, "outputs": dict,
                    "config_sha256": str, "site_sha256": str}


def _a(word: str) -> str:
    """``word`` with its article: "an int", "a list"."""
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def config_digest(text: str) -> str:
    """The SHA-256 of a run's config.yaml text, as provenance.json's ``config_sha256`` records it."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_provenance(path: Path, field_name: str = "--resume", *, deep: bool = True) -> dict:
    """A run folder's provenance record; InputError (one line) when it is missing, not a regular file,
    unreadable, or not a record of the expected shape.  The folder's own files are checked first
    (:func:`check_run_files`; ``deep`` false: its top level only, for a look that writes nothing below it)."""
    check_run_files(Path(path), field_name, deep=deep)
    file = Path(path) / layout.PROVENANCE
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("not found" if not Path(path).exists() else "no provenance.json here: not a run directory",
                         path=path, field=field_name, fix=PROVENANCE_FIX) from None
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"provenance.json unreadable ({exc.__class__.__name__})", path=path, field=field_name,
                         fix=PROVENANCE_FIX) from None
    if not isinstance(record, dict):
        raise InputError(f"provenance.json holds {_a(type(record).__name__)}, not a run's record", path=path,
                         field=field_name, fix=PROVENANCE_FIX + "; it was edited or overwritten")
    for key, kind in PROVENANCE_TYPES.items():
        if key in record and record[key] is not None and not isinstance(record[key], kind):
            raise InputError(f"provenance.json: {key} holds {_a(type(record[key]).__name__)}, not {_a(kind.__name__)}",
                             path=path, field=field_name, fix="the record was edited: put the original back")
    inputs = record.get("inputs") or {}
    if not all(isinstance(v, str) for v in inputs.values()) or not all(isinstance(r, dict)
                                                                       for r in record.get("resumed") or []):
        raise InputError("provenance.json: inputs or resumed hold values of the wrong kind", path=path,
                         field=field_name, fix="the record was edited: put the original back")
    return record


def enclosing_run(path: Path, *, itself: bool = True) -> Path | None:
    """The run folder that holds ``path`` (``path`` itself too unless ``itself`` is false), or None."""
    path = Path(path).resolve()
    return next((p for p in ((path,) if itself else ()) + tuple(path.parents) if (p / layout.PROVENANCE).is_file()),
                None)


def check_run_files(path: Path, field: str = "--resume", *, deep: bool = True) -> None:
    """InputError at the first entry in the run folder ``path``, at any depth (``deep``; else at its top), that
    is a symbolic link or neither a regular file nor a folder (a FIFO, a socket, a device): spibatch makes none,
    a resume reads and writes through its own files (a FIFO named lock or provenance.json blocked it for good)."""
    if not path.is_dir():
        return   # read_provenance says what is wrong
    for folder, dirs, files in os.walk(path):    # a link to a folder is listed in dirs, never followed
        entries = sorted(dirs + files)
        if not deep:
            dirs.clear()   # the top level only
        for name in entries:
            entry = Path(folder) / name
            try:
                mode = entry.lstat().st_mode
            except OSError:
                continue   # removed meanwhile
            if stat.S_ISLNK(mode):
                problem = f"is a symbolic link (to {os.readlink(entry)})"
            elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                problem = "is not a regular file (a FIFO, socket or device)"
            else:
                continue
            raise InputError(f"{entry.relative_to(path)} {problem}; spibatch's own files and folders are never "
                             "links or pipes", path=path, field=field,
                             fix=f"remove {entry} (copy the file in its place if it is the run's own)")


def check_unchanged(record: dict, paths: tuple[str | os.PathLike, ...], field: str = "--resume") -> None:
    """Every file in ``paths`` that the run recorded as an input is still there with its recorded fingerprint;
    InputError naming the first that changed or disappeared otherwise.  (Files the run did not record are
    not checked here; EMC's checkpoint records the fingerprints of the data it was computed from.)"""
    for name in paths:
        before = record.get("inputs", {}).get(str(Path(name).resolve()))
        if before is None:
            continue
        if not Path(name).is_file():
            raise InputError("this input of the run is gone", path=name, field=field,
                             fix="put the original file back, or start a new run")
        if not same_fingerprint(name, before):
            raise InputError("changed since the run started (its SHA-256 differs from provenance.json's)",
                             path=name, field=field, fix="resume with the original file, or start a new run")


def check_site_unchanged(record: dict, site: Path) -> None:
    """The run's site.yaml is the one it started with (``site_sha256``; runs before it was recorded: not checked):
    a resume runs the site's shell lines (``worker_init``, ``scheduler_options``), so an edited copy in a run folder
    someone handed over would run their commands."""
    _check_digest(record, "site_sha256", site, "put the run's original site.yaml back, or give a site file with --site",
                  "; a site file's worker_init and scheduler_options are shell commands a resume would run",
                  "read it; then give the site file to use with --site FILE, or put the original back")


def check_config_unchanged(record: dict, config: Path) -> None:
    """The run's config.yaml is the one it started with (``config_sha256``; runs before it was recorded: not
    checked): an edited one would run the remaining stages with other settings than the finished ones."""
    _check_digest(record, "config_sha256", config, "put the run's original config.yaml back", "",
                  "put the original back; for other settings start a new run, giving it what this one made (e.g. "
                  "spibatch phase NEW.yaml --intensity RUN/emc/output_NNN.h5)")


def _check_digest(record: dict, key: str, path: Path, unreadable_fix: str, why: str, fix: str) -> None:
    """``path``'s text has the SHA-256 ``record[key]`` holds (nothing to check without it), else one InputError."""
    before = record.get(key)
    if before is None:
        return
    try:
        now = config_digest(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"unreadable ({exc.__class__.__name__})", path=path, field="RUN_DIR",
                         fix=unreadable_fix) from None
    if now != before:
        raise InputError(f"changed since the run started (its SHA-256 differs from provenance.json's {key}){why}",
                         path=path, field="RUN_DIR", fix=fix)
