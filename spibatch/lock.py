"""The one-writer lock of a run folder: ``lock`` holds the owner's pid, host, start time and command.

Taken atomically (``O_CREAT | O_EXCL``) before anything is written into a folder and released when the
owner is done.  A second writer is refused with one line naming the owner.  A lock whose owner is gone
(same host, its pid no longer runs: it was killed) is stale: reported, and taken over only by a resume,
with a warning -- never silently broken.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

from spibatch import layout
from spibatch.errors import InputError

log = logging.getLogger("spibatch")


def utc_now() -> str:
    """Now, UTC, ISO 8601 to the second with a Z (as provenance.json and the stage markers write it)."""
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_lock(folder: Path) -> dict | None:
    """The lock's record (pid, host, started, command), or None when the folder is not locked."""
    try:
        return json.loads((Path(folder) / layout.LOCK).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"pid": None, "host": None, "started": None, "command": "(unreadable lock)"}


def lock_is_stale(record: dict) -> bool:
    """Whether a lock's owner is known to be gone (same host, its pid no longer runs)."""
    pid = record.get("pid")
    return record.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid)


def take_lock(folder: Path, command: list[str], field_name: str = "--out", *, take_over_stale: bool = False) -> Path:
    """Make this process the folder's one writer: create ``lock`` atomically (O_EXCL) with our pid and host.

    InputError (one line, nothing written) when another process holds it, naming the owner.  A lock whose
    owner is gone (same host, its pid no longer runs: it was killed) is refused with that said -- or, with
    ``take_over_stale`` (a resume), taken over with a warning naming the old owner; never silently.
    """
    path = Path(folder) / layout.LOCK
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": utc_now(), "command": list(command)}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        owner = read_lock(folder) or {}
        who = f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('started')}"
        if lock_is_stale(owner) and take_over_stale:
            log.warning("taking over the lock of %s, which no longer runs (it was killed)", who)
            path.unlink(missing_ok=True)
            return take_lock(folder, command, field_name)
        if lock_is_stale(owner):
            raise InputError(f"locked by {who}, which no longer runs (a stale lock: that process was killed)",
                             path=folder, field=field_name, fix=f"make sure nothing writes into it, then delete "
                             f"{path} and try again") from None
        raise InputError(f"another process writes into this run folder ({who})", path=folder, field=field_name,
                         fix="wait for it to finish, or stop it first") from None
    except OSError as exc:
        raise InputError(f"cannot create its lock ({exc.strerror})", path=folder, field=field_name,
                         fix="choose a writable location") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
    return path


def release_lock(folder: Path) -> None:
    """Remove the folder's lock if this process holds it."""
    record = read_lock(folder)
    if record is not None and record.get("pid") == os.getpid() and record.get("host") == socket.gethostname():
        (Path(folder) / layout.LOCK).unlink(missing_ok=True)
