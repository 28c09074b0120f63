"""The command line's own checks: options turned into config values with one-line errors that name the file
and the option, and click's usage errors (a missing argument, an unknown option, a value out of range)
as one line too, instead of a usage box."""

from __future__ import annotations

import math
import sys
from typing import Any, Callable

from spibatch.errors import InputError


def from_options(make: Callable[[], Any], path, options: dict[str, str] | None = None, command: str = "") -> Any:
    """``make()`` (a config model built from options); its pydantic ValidationError as one InputError naming
    ``path`` (the file the options are about) and the option (``options``: config key -> option name)."""
    from pydantic import ValidationError

    try:
        return make()
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][-1]) if err["loc"] else ""
        option = (options or {}).get(key, "--" + key.replace("_", "-"))
        message = err["msg"].removeprefix("Value error, ")
        raise InputError(f"expected: {message}; found {err.get('input')!r}", path=path, field=option,
                         fix=f"correct the value (`spibatch {command} --help`)".replace("  ", " ")) from None


def positive_length(value: float | None, path, option: str) -> float | None:
    """``value`` (metres), or one InputError unless None or a density voxel's length (``DENSITY_VOXEL_M``)."""
    from spibatch.estimates import DENSITY_VOXEL_M

    low, high = DENSITY_VOXEL_M
    if value is not None and not (math.isfinite(value) and low <= value <= high):
        raise InputError(f"expected a length in metres within {low:g} .. {high:g}, found {value!r}", path=path,
                         field=option, fix="give the voxel edge in metres, e.g. 1.76e-9")
    return value


def _click_exceptions(name: str) -> tuple[type, ...]:
    """Click's exception class ``name``, from typer's vendored copy (typer >= 0.20) and from click itself."""
    import importlib

    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if cls is not None:
            found.append(cls)
    return tuple(found)


def repeated_option(app, argv: list[str]) -> tuple[str, str, str] | None:
    """(first spelling, second spelling, command) of the first option of ``argv``'s command given twice that is
    not a list (bench's --site may repeat; a flag and its --no- twin count as one option; ``-ovalue`` as ``-o``);
    None otherwise."""
    import typer.main

    at = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), None)
    commands = getattr(typer.main.get_command(app), "commands", {})
    command = commands.get(argv[at]) if at is not None else None
    if command is None:
        return None
    single = {name: param.name for param in command.params if getattr(param, "param_type_name", "") == "option"
              and not getattr(param, "multiple", False) and not getattr(param, "count", False)
              for name in (*param.opts, *param.secondary_opts)}
    seen: dict[str, str] = {}
    for arg in argv[at + 1:]:
        if arg == "--":
            break
        spelled = arg.split("=", 1)[0] if arg.startswith("--") else arg[:2]
        if spelled in single:
            if single[spelled] in seen:
                return seen[single[spelled]], spelled, argv[at]
            seen[single[spelled]] = spelled
    return None


def run_app(app) -> None:
    """Run the typer ``app``; a usage error (click's) becomes one InputError line (exit 2) naming the option."""
    empty = [i for i, arg in enumerate(sys.argv[1:], 1) if not arg.strip()]
    if empty:   # `spibatch init "$DIR"` with DIR unset would write into the working folder
        raise InputError(f"argument {empty[0]} of the command line is empty",
                         fix="give a value there (an unset shell variable?)")
    bare = next((arg for arg in sys.argv[1:] if arg.startswith("--") and "=" in arg
                 and not arg.split("=", 1)[1].strip()), None)
    if bare:    # --out="$OUT" with OUT unset: click reads the working folder
        raise InputError(f"{bare.split('=', 1)[0]} is given an empty value", fix="give a value there (an unset "
                         "shell variable?)")
    twice = repeated_option(app, sys.argv[1:])
    if twice:   # click keeps the last: `--out a --out b` wrote b alone, `--adu-per-photon 25 --adu-per-photon 1` used 1
        raise InputError(f"{twice[1]} given twice (as {twice[0]} earlier)", field=f"spibatch {twice[2]}",
                         fix="give each option once")
    try:
        code = app(standalone_mode=False)
    except _click_exceptions("NoArgsIsHelpError") as exc:   # `spibatch` alone: the help, as before
        exc.show()
        sys.exit(exc.exit_code)
    except _click_exceptions("UsageError") as exc:
        command = exc.ctx.info_name if exc.ctx is not None and exc.ctx.parent is not None else ""
        message = " ".join(exc.format_message().split()).rstrip(".")
        raise InputError(message, field=f"spibatch {command}".strip(),
                         fix=f"see `spibatch {command} --help`".replace("  ", " ")) from None
    except _click_exceptions("ClickException") as exc:
        raise InputError(" ".join(exc.format_message().split()), fix="see `spibatch --help`") from None
    except _click_exceptions("Abort"):
        print("Aborted!", file=sys.stderr)
        sys.exit(1)
    if isinstance(code, int) and code:
        sys.exit(code)
