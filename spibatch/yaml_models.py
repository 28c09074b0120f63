"""Generic YAML + pydantic helpers for every settings file (pipeline, site, bench).

:class:`Section` is the base of every model (unknown keys refused, values checked on
assignment, non-finite floats and booleans-for-numbers refused); :func:`read_yaml_mapping`
reads a file's top-level mapping and the line of every key; :func:`error_line` turns the
first pydantic error into one :class:`~spibatch.errors.InputError` line (file, line, key,
expected, found, where every key is documented); :func:`load_model` does both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from spibatch.errors import InputError

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """A settings section: unknown keys are errors, values are checked on assignment, floats must be
    finite, and a boolean is not a number (YAML's ``true`` is refused where a count is expected)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            kinds = _plain_types(cls.model_fields[info.field_name].annotation)
            if bool not in kinds and kinds & {int, float}:
                raise ValueError("a number, not true/false")
        return value


def _plain_types(annotation: Any) -> set:
    """The classes an annotation admits, through Optional, Union and Annotated (``float | None`` -> {float, None})."""
    args = get_args(annotation)
    if not args:
        return {annotation}
    if get_origin(annotation) is Annotated:
        return _plain_types(args[0])
    return set().union(*(_plain_types(a) for a in args))


MAX_YAML_VALUES = 100_000       # a settings file holds a few hundred; more means aliases expanding (billion laughs)
MAX_YAML_DEPTH = 100
MAX_YAML_BYTES = 16 * 2 ** 20


_LOADER = None
_DUMPER = None


def settings_loader():
    """PyYAML's safe loader with YAML 1.2's numbers: ``0o10`` eight, ``0x10`` sixteen, ``1:30`` and ``1:30:00``
    text (YAML 1.1: the sexagesimal 90 and 5400, which turned a Slurm walltime into seconds); a leading zero
    (``010``, ``0189``) makes text too, which a count reads as ten (YAML 1.1: octal 8, which made
    ``iterations: 010`` eight without a word) and a name keeps as written; ``0b11`` is text; booleans and the rest
    as YAML 1.1."""
    global _LOADER
    if _LOADER is None:
        import re

        import yaml

        int_tag, float_tag = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"

        class SettingsLoader(yaml.SafeLoader):
            pass

        SettingsLoader.yaml_implicit_resolvers = {
            first: [(tag, rx) for tag, rx in resolvers if tag not in (int_tag, float_tag)]
            for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
        SettingsLoader.add_implicit_resolver(int_tag, re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                                             list("-+0123456789"))
        SettingsLoader.add_implicit_resolver(float_tag, re.compile(
            r"^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))

        def integer(loader, node):
            text = loader.construct_scalar(node).replace("_", "")
            sign, digits = (-1, text[1:]) if text[:1] == "-" else (1, text.lstrip("+"))
            base = {"0o": 8, "0x": 16}.get(digits[:2], 10)
            return sign * int(digits[2:] if base != 10 else digits, base)

        SettingsLoader.add_constructor(int_tag, integer)
        _LOADER = SettingsLoader
    return _LOADER


def settings_dumper():
    """PyYAML's safe dumper that quotes every text that YAML 1.1 or :func:`settings_loader` would read as anything
    but text (``0o17``, ``1:30:00``), so a resolved file (a run's config.yaml, site.yaml) reads back the same with
    either."""
    global _DUMPER
    if _DUMPER is None:
        import yaml

        class SettingsDumper(yaml.SafeDumper):
            pass

        resolvers = {first: list(found) for first, found in yaml.SafeDumper.yaml_implicit_resolvers.items()}
        for first, found in settings_loader().yaml_implicit_resolvers.items():
            resolvers.setdefault(first, []).extend(found)
        SettingsDumper.yaml_implicit_resolvers = resolvers
        _DUMPER = SettingsDumper
    return _DUMPER


def dump_settings(data: dict) -> str:
    """``data`` as YAML text, keys in their order, read back the same by :func:`settings_loader` and YAML 1.1."""
    import yaml

    return yaml.dump(data, Dumper=settings_dumper(), sort_keys=False)


def _key_value(node, loader) -> Any:
    """A mapping key's value as ``loader`` (:func:`settings_loader`'s) builds it (``0x1`` -> 1, ``~`` -> None;
    text if it cannot be built), for telling two spellings of one key apart."""
    try:
        value = loader.construct_object(node)
        hash(value)
        return value
    except Exception:   # noqa: BLE001 -- a tag that cannot be built is refused when the file is loaded
        return node.value


def _load_yaml_with_lines(text: str, path: Path) -> tuple[Any, dict[tuple, int]]:
    """Parse YAML; return the data and a map from key path to 1-based line number.  InputError for text
    that is not YAML, nests deeper than MAX_YAML_DEPTH or expands (through aliases) past MAX_YAML_VALUES."""
    import yaml

    try:
        root = yaml.compose(text, Loader=settings_loader())
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, path, f"not valid YAML ({getattr(exc, 'problem', exc)})",
                          "fix the YAML syntax (indentation, colons, quotes)") from None
    except RecursionError:
        raise InputError(f"nested more than {MAX_YAML_DEPTH} levels deep", path=path, field="YAML",
                         fix="a settings file is a few levels of keys: check the brackets") from None
    lines: dict[tuple, int] = {}
    seen_values = [0]
    builder = settings_loader()("")

    def walk(node: Any, prefix: tuple) -> None:
        seen_values[0] += 1
        if seen_values[0] > MAX_YAML_VALUES or len(prefix) > MAX_YAML_DEPTH:
            too = "expands to more than {:,} values (YAML aliases?)".format(MAX_YAML_VALUES) \
                if seen_values[0] > MAX_YAML_VALUES else f"nests more than {MAX_YAML_DEPTH} levels deep"
            raise InputError(too, path=path, field=f"line {node.start_mark.line + 1}",
                             fix="write the values out; a settings file holds a few hundred at most")
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise InputError("a key that is a list or a mapping", path=path,
                                     field=f"line {key_node.start_mark.line + 1}", fix="keys are plain names")
                key = key_node.value
                same = {key, _key_value(key_node, builder)}   # `1` and `'1'` (one name to us), `0x1` and `1`, `~` and `null`
                if same & seen:
                    raise InputError(f"key '{key}' appears twice", path=path,
                                     field=f"line {key_node.start_mark.line + 1}: {'.'.join(map(str, prefix + (key,)))}",
                                     fix="keep one of them")
                seen |= same
                lines[prefix + (key,)] = key_node.start_mark.line + 1
                walk(value_node, prefix + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[prefix + (i,)] = item.start_mark.line + 1
                walk(item, prefix + (i,))

    if root is not None:
        walk(root, ())
    try:
        data = yaml.load(text, Loader=settings_loader())
    except yaml.YAMLError as exc:   # composed, but not constructible: a tag such as !!python/object (never run)
        raise _yaml_error(exc, path, f"{getattr(exc, 'problem', None) or exc}".splitlines()[0],
                          "settings are plain values: remove the !!tag") from None
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:   # !!int "abc", 5000-digit integers
        raise InputError(f"a value cannot be read ({' '.join(str(exc).split())[:100]})", path=path, field="YAML",
                         fix="settings are plain values: numbers of at most 20 digits (2^64), no !!tags") from None
    _check_numbers(data, path, lines, ())
    return data, lines


MAX_INTEGER = 2 ** 64    # a larger integer is no count or size (1e309 overflows every float estimate); seeds may be


def _check_numbers(node: Any, path: Path, lines: dict, prefix: tuple) -> None:
    """InputError at the first integer beyond MAX_INTEGER (values already bounded by MAX_YAML_VALUES)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INTEGER and key != "seed":
            where = prefix + (key,)
            raise InputError(f"{len(str(abs(value)))}-digit integer", path=path,
                             field=f"line {lines.get(where, '?')}: {'.'.join(map(str, where))}",
                             fix="give a number of at most 20 digits (2^64)")
        _check_numbers(value, path, lines, prefix + (key,))


def _yaml_error(exc, path: Path, problem: str, fix: str) -> InputError:
    """The one line for a YAML parser's error, at the line it marks."""
    mark = getattr(exc, "problem_mark", None)
    return InputError(problem, path=path, field=f"line {mark.line + 1}" if mark else "YAML", fix=fix)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def error_line(exc: ValidationError, data: Any, lines: dict[tuple, int], path: Path,
               model: type[BaseModel], reference: str = "`spibatch schema` describes every key") -> InputError:
    """The first validation error as one InputError line: file, line, key, expected, found.

    reference: where the user reads about every key (ends each fix).
    """
    def where_in(error) -> tuple:   # the error's place in the YAML: pydantic's names of union members left out,
        out, node = [], data          # keys the YAML holds kept (a key of the user's may look like one: `a[0]`)
        for x in error["loc"]:
            if isinstance(node, dict) and x in node or isinstance(node, list) and isinstance(x, int) \
                    and 0 <= x < len(node):
                out.append(x)
                node = node[x]
            elif not (isinstance(x, str) and (x.startswith(("function-", "constrained-")) or x in _UNION_TAGS
                                              or "[" in x)):
                out.append(x)        # a key the YAML lacks (a missing one)
                node = None
        return tuple(out)

    first = where_in(exc.errors()[0])   # of a union's errors on that key, the deepest: `[a.h5, 5]`'s item 1
    err = max((e for e in exc.errors() if where_in(e)[:len(first)] == first), key=lambda e: len(where_in(e)))
    loc = where_in(err)
    key = ".".join(str(x) for x in loc) or "(top level)"
    line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
    where = f"line {line}: {key}" if line else key
    more = len(exc.errors()) - 1
    tail = f" ({more} more error{'s' if more > 1 else ''} after this one)" if more else ""
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        return InputError(f"unknown key (expected one of: {', '.join(allowed)}){tail}", path=path, field=where,
                          fix=f"remove it or correct its spelling; {reference}")
    if err["type"] == "missing":
        return InputError(f"required key is missing{tail}", path=path, field=where, fix=f"add it; {reference}")
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:   # a rule across sections (the model's own validator): its message says what to change
        return InputError(f"{msg}{tail}", path=path, field=where, fix=reference)
    found = f"; found {_describe(err['input'])}"
    return InputError(f"expected: {msg}{found}{tail}", path=path, field=where, fix=f"correct the value; {reference}")


_UNION_TAGS = {"float", "int", "str", "bool", "path", "none", "list", "dict"}   # pydantic's names of a union's members


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys the section at ``loc`` accepts (best effort, for the error message)."""
    import typing

    parts = list(loc)
    while parts:
        field = model.model_fields.get(str(parts.pop(0)))
        if field is None:
            return []
        anns = [field.annotation, *typing.get_args(field.annotation)]
        mappings = [a for a in anns if typing.get_origin(a) is dict]   # names to sections (bench workloads)
        args = anns + [x for a in mappings for x in typing.get_args(a)]
        keyed = bool(mappings)
        candidates = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return []
        model = candidates[0]
        if keyed and parts:
            parts.pop(0)                 # the name, not a key of the section
    return list(model.model_fields)


def read_yaml_mapping(path: Path, *, field: str | None = None, missing_fix: str, top_fix: str,
                      holds: str = "sections", pipe: bool = True) -> tuple[dict, dict[tuple, int]]:
    """A YAML file's top-level mapping and the line of every key path; InputError (one line) when the
    file is missing or unreadable, not YAML, or not a mapping.  An empty file is an empty mapping.  ``pipe``:
    whether a pipe (``--site <(envsubst < t.yaml)``) may stand for the file (not where paths in it are relative
    to its folder, or its fingerprint is recorded)."""
    try:
        if path.is_dir() or path.is_char_device() or path.is_block_device():   # /dev/zero: read until OOM
            raise InputError("is a directory" if path.is_dir() else "a device, not a file", path=path, field=field,
                             fix="give the pipeline or site YAML file")
        if not pipe and not path.is_file() and path.exists():
            raise InputError("not a regular file (a pipe or socket): the paths in it are relative to its folder, and "
                             "the run records its fingerprint", path=path, field=field,
                             fix="write it to a file first and give that file")
        raw = _read_capped(path, field)
        if len(raw) > MAX_YAML_BYTES:
            raise InputError(f"more than {MAX_YAML_BYTES:,} bytes; a settings file is at most that",
                             path=path, field=field, fix="give the pipeline or site YAML file, not a data file")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise InputError("file not found", path=path, field=field, fix=missing_fix) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read ({exc.__class__.__name__})", path=path, field=field,
                         fix="give a readable UTF-8 YAML file") from None
    data, lines = _load_yaml_with_lines(text, path)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise InputError(f"expected a mapping of {holds} at the top level; found {type(data).__name__}",
                         path=path, field="line 1", fix=top_fix)
    return data, lines


def _read_capped(path: Path, field: str | None) -> bytes:
    """At most MAX_YAML_BYTES + 1 bytes of ``path``; a pipe that nothing writes to (or closes) within
    :data:`PIPE_WAIT_S` is one InputError, not a wait for ever (its reader is left behind, a daemon thread)."""
    if path.is_file() or not path.exists():
        with open(path, "rb") as fh:
            return fh.read(MAX_YAML_BYTES + 1)
    import threading

    got: dict = {}

    def read() -> None:
        try:
            with open(path, "rb") as fh:   # (blocks until a writer opens the pipe)
                got["raw"] = fh.read(MAX_YAML_BYTES + 1)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            got["error"] = exc

    reader = threading.Thread(target=read, name="spibatch-yaml-pipe", daemon=True)
    reader.start()
    reader.join(PIPE_WAIT_S)
    if reader.is_alive():
        raise InputError(f"a pipe that nothing wrote to and closed within {PIPE_WAIT_S:.0f} s", path=path,
                         field=field, fix="give a YAML file, or a pipe whose writer runs (`--site <(cat t.yaml)`)")
    if "error" in got:
        raise got["error"]
    return got["raw"]


PIPE_WAIT_S = 10.0


def load_model(path: Path, model: type[M], *, missing_fix: str, top_fix: str, field: str | None = None,
               reference: str = "`spibatch schema` describes every key", holds: str = "sections",
               pipe: bool = True) -> M:
    """Read ``path`` and validate it as ``model``; InputError (one line) on any mistake."""
    data, lines = read_yaml_mapping(path, field=field, missing_fix=missing_fix, top_fix=top_fix, holds=holds,
                                    pipe=pipe)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error_line(exc, data, lines, path, model, reference=reference) from None
