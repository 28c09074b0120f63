"""Run folders: creation, provenance, the one-owner lock, status, resume checks.

``runs/<name>-<UTC timestamp>/`` (or ``--out``) holds the resolved config, ``provenance.json``
(versions, host, git revision, command line, fingerprints of every input file, start/end time
and status), ``log.txt`` and the stages' outputs (names: :mod:`spibatch.layout`).  Result files
are written atomically (:mod:`spibatch.io.atomic`).  :func:`open_run` is the one context manager
every command runs its stages in: it creates (or reopens) the folder, takes its lock, records the
inputs, and on the way out marks the status (completed, failed, interrupted), writes the report
and releases the lock.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from spibatch import __version__, layout, owners
from spibatch.errors import InputError
from spibatch.interrupts import chained_interrupt, replaced_interrupt
from spibatch.io.atomic import DiskFull, remove_partial_files, say_how_to_go_on, write_text
from spibatch.io.fingerprint import (ENDS_BYTES, FULL_HASH_LIMIT, input_fingerprint,  # noqa: F401  (re-exported)
                                     same_fingerprint, sha256_file)
from spibatch.lock import read_lock, release_lock, stop_left_running, take_lock, utc_now  # noqa: F401
from spibatch.run_checks import (check_unchanged, config_digest, enclosing_run,  # noqa: F401  (re-exported)
                                 read_provenance)

log = logging.getLogger("spibatch")

# Distributions whose versions go into provenance.json (absent ones are recorded as null).
TRACKED_DISTRIBUTIONS = ("numpy", "scipy", "h5py", "pydantic", "PyYAML", "gemmi", "xraydb", "finufft",
                         "mrcfile", "matplotlib", "typer", "rich", "mpi4py", "cupy", "parsl")


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version(), "spibatch": __version__}
    for dist in TRACKED_DISTRIBUTIONS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def git_revision(where: Path) -> str | None:
    """``<sha>[-dirty]`` of the git checkout holding ``where``, or None outside one."""
    try:
        sha = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


@dataclass
class RunDir:
    """A run folder, its provenance record and (while a process writes into it) its lock."""

    path: Path
    command: list[str]
    inputs: dict[str, str] = field(default_factory=dict)   # path -> input_fingerprint (sha256)
    started: str = field(default_factory=utc_now)
    extra: dict = field(default_factory=dict)              # more provenance keys (mpi_ranks, resumed, ...)
    outputs: dict = field(default_factory=dict)            # what the stages wrote (name -> path)
    lock: dict = field(default_factory=dict)               # the lock's record while this process owns the folder
    _log_handler: logging.Handler | None = None

    @property
    def layout(self) -> layout.RunLayout:
        return layout.RunLayout(self.path)

    def file(self, name: str) -> Path:
        """Path of a file called ``name`` at the top of the run folder."""
        return self.path / name

    def add_inputs(self, *paths: str | os.PathLike) -> None:
        """Record the fingerprint of input files (in provenance.json; see input_fingerprint for large ones)."""
        for p in paths:
            p = Path(p).resolve()
            self.inputs[str(p)] = input_fingerprint(p)
        self.write_provenance("running")

    def write_provenance(self, status: str, error: str | None = None, outputs: dict | None = None) -> None:
        record = {
            "status": status,
            "command": self.command,
            "started": self.started,
            "finished": None if status == "running" else utc_now(),
            "host": socket.gethostname(),
            "platform": platform.platform(),
            "cwd": os.getcwd(),
            "git_revision": git_revision(Path(__file__).resolve().parent),
            "versions": _versions(),
            "inputs": self.inputs,
            **self.extra,
        }
        if outputs is not None:
            record["outputs"] = {k: str(v) for k, v in outputs.items()}
        if error:
            record["error"] = error
        write_text(self.layout.provenance, json.dumps(record, indent=2) + "\n")

    def finish(self, status: str = "completed", error: str | None = None, outputs: dict | None = None) -> None:
        """Write the final provenance and detach the log file.  A run that failed or was interrupted on a full
        disk may find no room for its status: logged, not raised (the error that ended it is the news)."""
        try:
            self.write_provenance(status, error, outputs)
        except DiskFull as exc:
            if status == "completed":
                raise
            log.warning("could not record status %s in %s: %s", status, exc.path, exc.problem)
        finally:
            if self._log_handler is not None:
                stop_logging(self._log_handler)
                self._log_handler = None


# ------------------------------------------------------------------ creating and reopening

def new_run_path(name: str, runs_dir: Path) -> Path:
    """``runs_dir/<name>-<YYYYmmddTHHMMSSZ>``, with ``-2``, ``-3``... if that exists already."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = runs_dir / f"{name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


# what a new run writes first (before provenance.json): a folder holding only these and its lock is a new run's
# owner killed in its first moments, taken over
STARTUP_FILES = {layout.LOCK, layout.CONFIG, layout.LOG}


SHELL_UNSAFE = re.compile(r"[\s$`\"'\\;|&<>()*?\[\]#%{},]")   # '#': sbatch cuts #SBATCH lines there; '%': a pattern;
                                                            # '{' '}': Parsl's str.format of its launch lines, bash's
                                                            # brace expansion (',')


def check_shell_safe(path: Path, field: str) -> Path:
    """``path`` may hold a run that Parsl's workers and the sites' batch scripts run in: no whitespace or shell
    character (Parsl does not quote its submit scripts' paths: a space hung the run; a ``$(...)`` in a Slurm
    script's heredoc would run; sbatch reads ``#SBATCH --output=/runs/r#1/...`` as ``/runs/r``, and fills in
    ``%j``-like patterns)."""
    found = SHELL_UNSAFE.search(str(path))
    if found:
        raise InputError(f"its path holds {found.group()!r}, which Parsl's workers and batch scripts do not quote",
                         path=path, field=field, fix="choose a folder whose path has no spaces, quotes or shell "
                         "characters ($ ` ; | & < > ( ) * ? [ ] # % { } ,)")
    return path


RUN_MADE = "\x00run\x00"   # in a resume hint: the run folder open_run makes (no path holds a NUL)


def _writer_of(path: Path) -> str:
    """`` (pid N on HOST writes into it now)`` when a live process holds the folder's lock, else ""."""
    from spibatch.lock import describe_owner, lock_is_stale

    owner = read_lock(path)
    if not isinstance(owner, dict) or owner.get("pid") is None or lock_is_stale(owner):
        return ""
    return f" ({describe_owner(owner)} writes into it now)"


def check_new_run_path(path: Path, field: str = "--out") -> Path:
    """``path`` may become a new run folder: InputError (nothing created) if it holds a run, lies inside one, is a
    file, or is a folder holding anything else (or its name holds a line break)."""
    from spibatch.io.files import check_one_line

    check_one_line(path, field)
    inside = enclosing_run(path, itself=False)
    if inside is not None:   # a run inside a run: its outputs would be taken for the earlier run's (report, resume)
        raise InputError(f"lies inside the earlier run folder {inside}", path=path, field=field,
                         fix="choose a folder outside every run folder")
    if (path / layout.PROVENANCE).exists():
        raise InputError(f"this directory already holds a run{_writer_of(path)}", path=path, field=field,
                         fix="choose a new --out directory, or leave --out out to get runs/<name>-<time>/")
    if path.exists() and not path.is_dir():
        raise InputError("exists and is not a directory", path=path, field=field, fix="choose a directory path")
    if path.is_dir():
        held = sorted(p.name for p in path.iterdir()     # (another writer's lock record on its way in: the lock
                      if not (p.name.startswith(f".{layout.LOCK}.") and p.name.endswith(".new")))   # decides)
        started = layout.LOCK in held and all(n in STARTUP_FILES or (n.startswith(".") and n.endswith(".part"))
                                              for n in held)              # a new run killed at its start
        if layout.PROVENANCE in held:   # another process made its run here a moment ago
            raise InputError("this directory already holds a run", path=path, field=field,
                             fix="choose a new --out directory, or leave --out out to get runs/<name>-<time>/")
        if held and not started:
            shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
            raise InputError(f"is not empty ({shown}): a new run would overwrite or mix with what is there",
                             path=path, field=field, fix="choose a new or empty --out directory")
    return path


def create_run_dir(name: str, runs_dir: Path, out: Path | None = None, *,
                   config_text: str | None = None, command: list[str] | None = None) -> RunDir:
    """Create the run folder, take its lock, write ``config.yaml`` and start ``provenance.json`` and ``log.txt``.

    ``out`` (from ``--out``) is used as it is; it may exist but must not hold an earlier run (a
    ``provenance.json``): nothing earlier is overwritten.
    """
    field = "--out" if out is not None else "output.runs_dir (--runs-dir)"
    path = check_new_run_path(Path(out) if out is not None else new_run_path(name, Path(runs_dir)), field)
    command = list(command if command is not None else sys.argv)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the run directory ({exc.strerror})", path=path, field=field,
                         fix="choose a writable location") from None
    # a stale lock in a folder without provenance.json is a new run's owner killed in its first moments: taken over
    lock = take_lock(path, command, take_over_stale=not (path / layout.PROVENANCE).exists())
    if (path / layout.PROVENANCE).exists():   # another process made a run here between our check and our lock
        release_lock(path)
        check_new_run_path(path)
    run = RunDir(path=path.resolve(), command=command, lock=lock)
    try:
        if config_text is not None:
            write_text(run.layout.config, config_text)
            run.extra["config_sha256"] = config_digest(config_text)
        _attach_log(run)
        run.write_provenance("running")
    except BaseException:
        release_lock(path)
        raise
    log.info("run directory %s", run.path)
    return run


class _LogFile(logging.FileHandler):
    """A log file that never prints logging's "--- Logging error ---" traceback: when the disk is full the
    record is lost (the run's error line says what happened)."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass

    def _open(self):
        """Append, never through a symbolic link (one put in a run folder would take the log lines elsewhere)."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        return os.fdopen(os.open(self.baseFilename, flags, 0o666), "a", encoding=self.encoding, errors=self.errors)


def log_to(path: str | os.PathLike) -> logging.Handler:
    """Append the "spibatch" logger's INFO records to ``path`` (time, level, message); returns the handler."""
    handler = _LogFile(path, encoding="utf-8")  # appends
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    logger = logging.getLogger("spibatch")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def stop_logging(handler: logging.Handler) -> None:
    logging.getLogger("spibatch").removeHandler(handler)
    try:
        handler.close()
    except OSError:   # its last flush found the disk full: those records are lost
        pass


def _attach_log(run: RunDir) -> None:
    run._log_handler = log_to(run.layout.log)


def reopen_run_dir(path: str | os.PathLike, command: list[str] | None = None,
                   unchanged: tuple[str | os.PathLike, ...] = (), check=None, stop_old=None,
                   field: str = "--resume") -> RunDir:
    """Reopen an earlier run folder to continue it (``--resume``, ``spibatch resume``).

    Order: read provenance.json, take the lock (a killed owner's stale lock is taken over), check that the
    recorded inputs in ``unchanged`` are unchanged and run ``check()`` (e.g. the checkpoint's settings and
    data) -- any refusal raises InputError with nothing written and nothing stopped (a stale lock taken over
    is put back); then, when the lock was a killed owner's, stop what that owner left running on this host
    and call ``stop_old()`` (the pipeline: cancel its scheduler jobs); only then are the resumption's time and
    command line appended to ``resumed`` in provenance.json and log.txt reopened.  ``field``: how the command
    named the folder (``--resume``, ``RUN_DIR``), in every refusal.
    """
    path = Path(path)
    record = read_provenance(path, field)     # the folder's own files too: no links, no pipes
    command = list(command if command is not None else sys.argv)
    lock = take_lock(path, command, field_name=field, take_over_stale=True)
    try:
        check_unchanged(record, tuple(unchanged), field)
        if check is not None:
            check()
        if lock.get("took_over"):   # its owner was killed: stop what it left running before we write
            stop_left_running(path, lock["took_over"])
        # what any earlier owner left naming the folder (its lock deleted by hand, or owners it forgot): this process
        # holds the lock now, so no other owner's process may write here
        left = owners.stop_naming(path, "that an earlier owner of the run left running")
        if left:
            raise InputError(f"processes an earlier owner started still run and could not be stopped: pids "
                             f"{' '.join(map(str, left))}", path=path, field=field,
                             fix=f"stop them (kill -9 {' '.join(map(str, left))}), then try again")
        if lock.get("took_over") and stop_old is not None:
            stop_old()
    except BaseException:
        release_lock(path, restore=lock.get("took_over"))
        raise
    try:
        keep = {k: record[k] for k in record if k not in ("status", "command", "started", "finished", "host",
                                                           "platform", "cwd", "git_revision", "versions",
                                                           "inputs", "outputs", "error")}
        resumed = list(keep.pop("resumed", [])) + [{"at": utc_now(), "command": command,
                                                    "previous_status": record.get("status")}]
        run = RunDir(path=path.resolve(), command=record.get("command", command),
                     inputs=dict(record.get("inputs", {})), started=record.get("started", utc_now()),
                     extra=keep | {"resumed": resumed}, lock=lock)
        _attach_log(run)
        for part in remove_partial_files(path):   # a killed writer's temporary files (provenance.json's, ...)
            log.info("removed %s, which a killed run was writing", part)
        run.write_provenance("running")
    except BaseException:
        release_lock(path)
        raise
    log.info("resuming in run directory %s", run.path)
    return run


# ------------------------------------------------------------------ the one context manager

@contextmanager
def open_run(*, name: str = "spibatch", runs_dir: Path = Path("runs"), out: Path | None = None,
             resume: Path | None = None, config_text: str | None = None, command: list[str] | None = None,
             inputs: tuple = (), unchanged: tuple | None = None, check=None, stop_old=None,
             extra: dict | None = None, resume_hint: str | None = None, report: bool = True,
             field: str = "--resume"):
    """Create (or, with ``resume``, reopen) a run folder, own it, record its inputs; yield the :class:`RunDir`.

    The body fills ``run.outputs``.  On the way out the status is written -- ``completed``, ``failed`` (the
    error's first line) or ``interrupted`` (Ctrl-C or SIGTERM; the KeyboardInterrupt carries how to resume,
    ``resume_hint``, its :data:`RUN_MADE` the folder made, as ``resume_hint``) --, the report is written (a failure there never fails the run; not
    on a full disk), and the lock is released.
    ``unchanged``: the inputs a resume must find unchanged (default: ``inputs``); ``check``: called after the
    lock is taken and before anything is written when resuming; ``stop_old``: called then too, when the lock
    was a killed owner's (see :func:`reopen_run_dir`).  While the body runs, the processes it starts inherit
    this owner's token; what still runs at the end is stopped (:mod:`spibatch.owners`).  ``field``: how a
    refusal names the folder (``--out`` or ``output.runs_dir`` for a new one; ``--resume`` or ``RUN_DIR``).
    """
    if resume is not None:
        run = reopen_run_dir(resume, command=command, unchanged=tuple(inputs if unchanged is None else unchanged),
                             check=check, stop_old=stop_old, field=field)
    else:
        run = create_run_dir(name, runs_dir, out, config_text=config_text, command=command)
    try:
        with owners.Tagging(run.lock.get("token") or owners.new_token()):   # what we start, we stop (owners)
            yield from _body(run, inputs, extra, resume_hint, report)
    finally:
        release_lock(run.path)


def _body(run: RunDir, inputs: tuple, extra: dict | None, resume_hint: str | None, report: bool):
    """open_run's body: record the inputs, yield the run, mark the status, write the report."""
    report_now, completed = report, False
    try:
        run.extra.update(extra or {})
        run.add_inputs(*inputs)
        yield run
    except BaseException as exc:
        stop = None if isinstance(exc, SystemExit) else chained_interrupt(exc)
        if stop is not None:   # a signal (also one a library wrapped in its own error)
            how = f"interrupted ({stop.args[0]})" if stop.args else "interrupted (Ctrl-C)"
            hint = (resume_hint or f"spibatch resume {RUN_MADE}").replace(RUN_MADE, shlex.quote(str(run.path)))   # the folder
            stop.resume_hint = hint   # the command's last line says it (spibatch.interrupts)
            if run._log_handler is not None:   # log.txt says it too (the terminal hears it once, from the command)
                run._log_handler.handle(log.makeRecord(log.name, logging.WARNING, __file__, 0,
                                                       "%s; continue with: %s", (how, hint), None))
            if replaced_interrupt(exc) and run._log_handler is not None:   # the error does not hold the signal: keep it
                run._log_handler.handle(log.makeRecord(log.name, logging.WARNING, __file__, 0, "the signal surfaced "
                                                       "as this error", (), (type(exc), exc, exc.__traceback__)))
            run.finish("interrupted", error=how)
            if stop is exc:
                raise
            raise stop from None   # (its chain holds the library's error, or log.txt does)
        say_how_to_go_on(exc, (resume_hint or f"spibatch resume {RUN_MADE}").replace(RUN_MADE,
                                                                                      shlex.quote(str(run.path))))
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        run.finish("failed", error=f"{exc.__class__.__name__}: {first}")
        report_now = report and not isinstance(exc, DiskFull)   # no room for it: not another error line
        raise
    else:
        run.finish("completed", outputs=run.outputs)
        completed = True
    finally:
        if report_now:
            write_report_quietly(run.path, completed=completed)


def write_report_quietly(run_path: Path, completed: bool = False) -> Path | None:
    """report.html + PNGs into a run folder; a failure here is logged, never raised (the results are on disk).
    A signal while a ``completed`` run's report is written: the command's last line says the results are whole
    and how to write the report (``spibatch report RUN``), and so does log.txt."""
    try:
        from spibatch.monitor.report import write_report

        path = write_report(run_path)
        log.info("report: %s", path)
        return path
    except BaseException as exc:  # noqa: BLE001 - the report is a view of results already written
        stop = None if isinstance(exc, SystemExit) else chained_interrupt(exc)
        if stop is not None:   # a signal (also one matplotlib wrapped): the results are whole, only their view is not
            if completed and getattr(stop, "resume_hint", None) is None:
                stop.resume_hint = f"spibatch report {shlex.quote(str(run_path))} (the results are complete; " \
                                   "only the report was not written)"
                log.warning("interrupted while the report was written; the results are complete: `spibatch report "
                            "%s` writes it", run_path)
            if stop is exc:
                raise
            raise stop from None
        if not isinstance(exc, Exception):
            raise
        log.warning("could not write the report into %s: %s: %s", run_path, exc.__class__.__name__, exc)
        return None
