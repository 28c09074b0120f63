"""The exceptions the CLI prints as one line: bad user input, and a stage that failed.

Every mistake a user can make (a missing file, a wrong dataset shape, an
unknown config key, negative photon counts, ...) is raised as
:class:`InputError`; the CLI prints it as a single line and exits with
status 2.  The message names the file, the field and the fix.  A stage of
``spibatch run`` that fails for another reason (its job exits non-zero, a
task raises) is :class:`StageFailed`: one line naming the stage, the cause,
where the details are and how to continue; exit status 1.
"""

from __future__ import annotations

import os


class InputError(Exception):
    """Bad input: ``<file>: <field>: <problem>; <fix>`` on one line.

    Parameters
    ----------
    problem : what is wrong, e.g. ``"expected shape (4096,), found (4095,)"``
    path : the offending file (or None when there is none)
    field : the dataset, config key or column (or None)
    fix : what the user should do about it (or None)
    """

    exit_code = 2

    def __init__(self, problem: str, *, path: str | os.PathLike | None = None,
                 field: str | None = None, fix: str | None = None):
        self.problem = problem
        self.path = None if path is None else os.fspath(path)
        self.field = field
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [p for p in (self.path, self.field) if p]
        head = ": ".join(parts + [self.problem])
        line = f"{head}; {self.fix}" if self.fix else head
        return " ".join(line.split())  # one line, whatever the pieces held


class StageFailed(Exception):
    """A stage of a run failed, not for bad input: ``the <stage> ... failed: <cause>; <where>; <how to go on>``."""

    exit_code = 1
