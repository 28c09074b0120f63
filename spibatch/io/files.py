"""An input path that must be a readable regular file: one InputError saying which of missing, a dangling link,
a directory, a device or pipe, unreadable it is (a device named as a volume said "file not found")."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from spibatch.errors import InputError


LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"   # what str.splitlines() splits at


def check_one_line(path, field: str | None = None) -> Path:
    """An output's ``path`` as a Path, or one InputError when its name holds a line break: the lines that name it
    (``next:``, the log, EMC.log's header) would split, and the commands given it next refuse it as an input."""
    control = next((c for c in str(path) if c in LINE_BREAKS), None)
    if control is not None:
        raise InputError(f"the name holds the line break {control!r}", path=ascii(str(path)), field=field,
                         fix="choose a name of one line (letters, digits, spaces and punctuation)")
    return Path(path)


def require_file(path, field: str | None = None, fix: str = "check the path") -> Path:
    """``path`` as a Path, or one InputError naming it and ``field``: a name that is not UTF-8 or holds a line break, missing (a dangling link, a link loop), a directory, not a regular file, or not readable."""
    path = Path(path)
    try:
        os.fsdecode(os.fsencode(path)).encode("utf-8")
    except UnicodeError:   # (a byte that is not UTF-8): the results, the plots and the report could not name it
        raise InputError("the file name is not valid UTF-8: the results could not record it", path=ascii(str(path)),
                         field=field, fix="rename the file (or link it under a UTF-8 name)") from None
    control = next((c for c in str(path) if c in LINE_BREAKS), None)
    if control is not None:   # a newline in a photons file's name split EMC.log's header, which readers parse
        raise InputError(f"the file name holds the line break {control!r}", path=ascii(str(path)),
                         field=field, fix="rename the file (one line: letters, digits, spaces and punctuation)")
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError("file not found" + (" (a dangling symbolic link)" if path.is_symlink() else ""), path=path,
                         field=field, fix=fix) from None
    except OSError as exc:   # ELOOP, ENOTDIR, EACCES on a parent
        raise InputError(f"cannot be opened ({os.strerror(exc.errno) if exc.errno else exc.__class__.__name__})",
                         path=path, field=field, fix=fix) from None
    if stat.S_ISDIR(mode):
        raise InputError("is a directory, not a file", path=path, field=field, fix=fix)
    if not stat.S_ISREG(mode):
        raise InputError("not a regular file (a device, socket or pipe)", path=path, field=field, fix=fix)
    if not os.access(path, os.R_OK):
        raise InputError("not readable (permission denied)", path=path, field=field,
                         fix="make it readable (chmod) or copy it somewhere readable")
    return path
