"""The one-writer lock of a run folder: ``lock`` holds the owner's pid, host, start time, command and token.

Taken atomically before anything is written into a folder (the record is written to a file of its own, then
hard-linked as ``lock``: a second writer sees no lock or a whole one, never an empty one) and released when the
owner is done.  A second writer is refused with one line naming the owner.  A lock whose owner is gone
(same host, its pid no longer runs: it was killed) is stale: reported, and taken over only by a resume,
with a warning -- never silently broken; two resumes taking over at once are serialised (``flock`` on the
folder) and only one of them wins.  Before the new owner writes anything, what the killed owner left
running (its MPI job, Parsl's processes: found by the token they inherited, :mod:`spibatch.owners`) is
stopped (:func:`stop_left_running`), so that no second writer ever writes beside the new one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from pathlib import Path

from spibatch import layout, owners
from spibatch.errors import InputError

log = logging.getLogger("spibatch")


def utc_now() -> str:
    """Now, UTC, ISO 8601 to the second with a Z (as provenance.json and the stage markers write it)."""
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _alive(pid: int) -> bool:
    return owners.alive(pid)


UNREADABLE = "(unreadable lock)"


def read_lock(folder: Path) -> dict | None:
    """The lock's record (pid, host, started, command, token), or None when the folder is not locked; a lock that
    cannot be read or holds no such record (edited, a folder) reads as ``{"command": UNREADABLE, ...}``."""
    try:
        record = json.loads((Path(folder) / layout.LOCK).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError):
        record = None
    if not isinstance(record, dict) or not _is_record(record):
        return {"pid": None, "host": None, "started": None, "command": UNREADABLE}
    return record


def _is_record(record: dict) -> bool:
    """Whether a lock's JSON is a record spibatch wrote: a whole-number pid and a host's name (an edited lock,
    ``{"pid": "x"}``, read as a live owner, and the command said to wait for it forever)."""
    pid, host = record.get("pid"), record.get("host")
    return isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 and isinstance(host, str) and bool(host)


def lock_is_stale(record: dict) -> bool:
    """Whether a lock's owner is known to be gone (same host, its pid no longer runs)."""
    pid = record.get("pid")
    return record.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid)


def describe_owner(record: dict) -> str:
    if record.get("command") == UNREADABLE:
        return "a lock file that cannot be read: not spibatch's record"
    return f"pid {record.get('pid')} on {record.get('host')} since {record.get('started')}"


@contextlib.contextmanager
def _serialised(folder: Path):
    """Hold an exclusive ``flock`` on the folder while the body runs (best effort: where the file system
    has no flock on folders, the body runs unserialised)."""
    import fcntl

    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)   # releases the flock


def _create_lock(path: Path, record: dict) -> None:
    """Create ``path`` holding ``record`` (JSON) atomically, whole or not at all: FileExistsError when it exists.

    The record goes to a file of its own first, hard-linked under the final name (``link`` fails when the name
    exists); where the file system has no hard links, ``O_EXCL`` and a write (a reader may then see it empty)."""
    text = json.dumps(record) + "\n"
    # not ``.part``: a resume's cleanup of killed writers' files must not take another process's record
    part = path.with_name(f".{path.name}.{os.getpid()}.{record.get('token', '')}.new")
    try:
        part.write_text(text, encoding="utf-8")
        try:
            os.link(part, path)
            return
        except FileExistsError:
            raise
        except OSError:
            pass   # no hard links here
    finally:
        part.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def take_lock(folder: Path, command: list[str], field_name: str = "--out", *, take_over_stale: bool = False,
              earlier: list[dict] | None = None) -> dict:
    """Make this process the folder's one writer: create ``lock`` atomically (O_EXCL); returns its record.

    InputError (one line, nothing written) when another process holds it, naming the owner.  A lock whose
    owner is gone (same host, its pid no longer runs: it was killed) is refused with that said -- or, with
    ``take_over_stale`` (a resume), taken over with a warning naming the old owner; the record returned then
    holds the old one under ``took_over`` (for :func:`stop_left_running`, and for :func:`release_lock` to put
    it back when the resume is refused).
    """
    path = Path(folder) / layout.LOCK
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": utc_now(), "command": list(command),
              "token": owners.new_token()}
    if earlier:   # killed owners whose processes may still run: known to the next resume if this one is killed too
        record["earlier"] = earlier
    try:
        _create_lock(path, record)
    except FileExistsError:
        owner = read_lock(folder) or {}
        if lock_is_stale(owner) and take_over_stale:
            return _take_over(Path(folder), owner, command, field_name)
        if lock_is_stale(owner):
            raise InputError(f"locked by {describe_owner(owner)}, which no longer runs (a stale lock: that process was "
                             "killed)", path=folder, field=field_name, fix=f"make sure nothing writes into it, then "
                             f"delete {path} and try again (or resume the run: that takes the lock over)") from None
        if owner.get("command") == UNREADABLE:
            raise InputError(f"its lock cannot be read ({describe_owner(owner)})", path=folder, field=field_name,
                             fix=f"make sure no spibatch command writes into the run, then delete {path} and try "
                                 "again") from None
        raise InputError(f"another process writes into this run folder ({describe_owner(owner)})", path=folder,
                         field=field_name, fix="wait for it to finish, or stop it first") from None
    except OSError as exc:
        raise InputError(f"cannot create its lock ({exc.strerror})", path=folder, field=field_name,
                         fix="choose a writable location") from None
    return record


def _take_over(folder: Path, owner: dict, command: list[str], field_name: str) -> dict:
    """Replace the stale lock of ``owner`` by ours (see :func:`take_lock`), one taker at a time."""
    with _serialised(folder):
        current = read_lock(folder)
        if current != owner and current is not None and lock_is_stale(current):
            owner = current              # the lock changed hands to one that is gone too: take that one over
        elif current != owner:           # another resume took it over first, or its owner released it
            return take_lock(folder, command, field_name)   # (never back here: no second flock of our own)
        log.warning("taking over the lock of %s, which no longer runs (it was killed)", describe_owner(owner))
        (folder / layout.LOCK).unlink(missing_ok=True)
        record = take_lock(folder, command, field_name, earlier=_owners_of(owner))
    record["took_over"] = owner
    return record


MAX_EARLIER = 20   # killed owners a lock remembers (a resume killed right after its takeover, again and again)


def _owners_of(owner: dict) -> list[dict]:
    """``owner`` (pid, host, token) and the earlier killed owners its lock remembered, most recent first."""
    earlier = owner.get("earlier")
    earlier = [e for e in earlier if isinstance(e, dict)] if isinstance(earlier, list) else []
    return ([{k: owner.get(k) for k in ("pid", "host", "token")}] + earlier)[:MAX_EARLIER]


def stop_left_running(folder: Path, owner: dict, field_name: str = "--resume") -> None:
    """Stop what the killed ``owner`` of a stale lock -- and the killed owners before it that its lock remembers (a
    resume killed before it had stopped them) -- started and left running on this host (MPI jobs, Parsl's
    processes: :mod:`spibatch.owners`); InputError when some cannot be stopped."""
    for each in _owners_of(owner):
        if each.get("host") not in (None, socket.gethostname()):
            continue
        pid = each.get("pid")
        if not isinstance(pid, int) or _alive(pid):   # a killed owner's pid is gone: a lock naming a live (or no)
            log.warning("not stopping by the token of %s, which a lock of %s names as a killed owner: that process "  # pid
                        "runs (a lock file edited to name another run's token?)", describe_owner(each), folder)
            continue
        _stop_owner(folder, each, field_name)


def _stop_owner(folder: Path, owner: dict, field_name: str) -> None:
    token = owner.get("token")
    if token is not None and not owners.token_of(token, owner.get("pid")):
        raise InputError(f"the lock's token {str(token)[:40]!r} is not one its owner ({describe_owner(owner)}) made: not "
                         "stopping anything by it", path=folder, field=field_name,
                         fix=f"the lock file was changed: check {Path(folder) / layout.LOCK}, delete it if nothing "
                             "writes into the run, and try again")
    left = owners.stop_tagged(token, f"that the killed owner ({describe_owner(owner)}) left running")
    if left:
        raise InputError(f"processes started by the killed owner ({describe_owner(owner)}) still run and could not be "
                         f"stopped: pids {' '.join(map(str, left))}", path=folder, field=field_name,
                         fix=f"stop them (kill -9 {' '.join(map(str, left))}), then try again")


def release_lock(folder: Path, restore: dict | None = None) -> None:
    """Remove the folder's lock if this process holds it; with ``restore`` (a stale lock this process took
    over, for a resume that was then refused), put that record back, so the folder is as it was."""
    record = read_lock(folder)
    if record is not None and record.get("pid") == os.getpid() and record.get("host") == socket.gethostname():
        (Path(folder) / layout.LOCK).unlink(missing_ok=True)
        if restore is not None:
            with contextlib.suppress(OSError):
                _create_lock(Path(folder) / layout.LOCK, restore)
