"""Configuration files: defaults < YAML file < ``key=value`` overrides; the resolved config is saved as YAML.

Every config dataclass that takes overrides (``CutConfig``, ``ExtractConfig``, ``TrainConfig``) runs its input
through :func:`check_keys` and :func:`coerce_fields` in ``from_dict``, so a wrong key or a value of the wrong
type is a one-line ``ValueError`` before any model is built (not a crash minutes later inside numpy or tqdm).

This module is a leaf: it imports no other ``cuts3d`` module, so any config module may import it at module level.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Sequence, Union

import yaml

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_NULL = ("null", "none", "~", "")


def check_keys(cls: type, d: dict[str, Any], what: str, hint: str = "") -> None:
    """Reject keys of ``d`` that are not fields of dataclass ``cls``, naming the closest valid ones and all of them."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known, key=str)
    if unknown:
        close = sorted({m for k in unknown for m in difflib.get_close_matches(str(k), known, n=3, cutoff=0.6)})
        guess = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown {what} {unknown}{guess}; valid: {sorted(known)}{hint}")


class _Mismatch(Exception):
    """Internal: a value does not fit a type; the message says what was expected (e.g. 'a number')."""


def _type_name(tp: Any) -> str:
    """Readable name of a type annotation, for error messages (``int``, ``a number``, ``one of ...``)."""
    origin = typing.get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0]).removeprefix('a ').removeprefix('an ')}s"
        if origin is tuple and args:
            return f"a list of {len(args)} values ({', '.join(_type_name(a) for a in args)})"
        return "a list"
    if origin is dict or tp is dict:
        return "a mapping, e.g. {key: value}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` converted to annotation ``tp``, or :class:`_Mismatch`.

    Strings are parsed (overrides from the shell and YAML 1.1 scalars such as ``1e-5`` arrive as strings); other
    types must already fit, except that an int is accepted for a float and a scalar for a variable-length list.
    """
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NULL):
            return None
        raise _Mismatch("null")
    if origin in (Union, types.UnionType):
        members = typing.get_args(tp)
        # Exact members first, so that "none" stays a string for ``str | None`` (weights="none" means random
        # weights) while it becomes None for ``int | None``.
        ordered = sorted(members, key=lambda m: m is type(None))
        for member in ordered:
            try:
                return _coerce(value, member)
            except _Mismatch:
                continue
        raise _Mismatch(_type_name(tp))
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and not (isinstance(value, bool) and not any(isinstance(c, bool) for c in choices)):
            return value
        raise _Mismatch(_type_name(tp))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise _Mismatch(_type_name(tp))
    if tp is int:
        if isinstance(value, bool):
            raise _Mismatch(_type_name(tp))
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)  # 480.0 from a YAML file written by another tool
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                pass
        raise _Mismatch(_type_name(tp))
    if tp is float:
        if isinstance(value, bool):
            raise _Mismatch(_type_name(tp))
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())  # "1e-5" (not a float in YAML 1.1), "nan", "inf": ranges are checked later
            except ValueError:
                pass
        raise _Mismatch(_type_name(tp))
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # a folder named 2024, a shard "1" parsed as a number by YAML
        raise _Mismatch(_type_name(tp))
    if origin in (tuple, list) or tp in (tuple, list):
        args = typing.get_args(tp)
        variadic = origin is list or (len(args) == 2 and args[1] is Ellipsis)
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            if not variadic or value is None:
                raise _Mismatch(_type_name(tp))
            value = [value]  # min_sizes=800 means (800,)
        try:
            if variadic:
                elem = args[0] if args else Any
                items = [_coerce(v, elem) for v in value]
            else:
                if len(value) != len(args):
                    raise _Mismatch(_type_name(tp))
                items = [_coerce(v, a) for v, a in zip(value, args)]
        except _Mismatch:
            raise _Mismatch(_type_name(tp)) from None  # name the whole list's type, not one element's
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return value
        raise _Mismatch(_type_name(tp))
    if dataclasses.is_dataclass(tp):
        return value  # nested configs (ExtractConfig.cut) are checked by their own from_dict
    return value


def coerce_fields(cls: type, values: dict[str, Any], what: str) -> dict[str, Any]:
    """``values`` with every field of dataclass ``cls`` converted to its annotated type.

    Accepted: bool from true/false/yes/no/on/off/1/0; int and float parsed from strings (a float field also takes
    an int; ``nan``/``inf`` parse, ranges are the dataclass's job); ``X | None`` from null/none (a ``str | None``
    keeps the string "none"); lists and tuples element-wise (a scalar is a one-element list when the length is
    variable); ``Literal`` values must be one of the choices; ``dict`` fields must be mappings.

    Args:
        cls: the config dataclass (its annotations may be strings: resolved with ``typing.get_type_hints``).
        values: field name -> raw value (from YAML or ``key=value``); unknown keys are left for :func:`check_keys`.
        what: name used in messages, e.g. ``"CutConfig"``.

    Raises:
        ValueError: one line naming the field, the value given and what it must be, e.g.
            ``CutConfig: tau_knn='abc' is not a number; e.g. tau_knn=0.115``.
    """
    hints = typing.get_type_hints(cls)
    defaults = {
        f.name: f.default if f.default is not dataclasses.MISSING else None for f in dataclasses.fields(cls)
    }
    out = dict(values)
    for key, value in values.items():
        if key not in hints:
            continue
        try:
            out[key] = _coerce(value, hints[key])
        except _Mismatch as err:
            example = defaults.get(key)
            hint = f"; e.g. {key}={_yaml_scalar(example)}" if example is not None else ""
            raise ValueError(f"{what}: {key}={value!r} is not {err}{hint}") from None
    return out


def _yaml_scalar(value: Any) -> str:
    """A default value as it would be typed on the command line (``true``, ``0.115``, ``cuts3d``)."""
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def load_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping; one-line errors for a missing, unreadable or malformed file.

    Raises:
        FileNotFoundError: ``path`` does not exist (or is a folder).
        ValueError: not readable, not valid YAML, not UTF-8, or not a mapping; the message names the file.
    """
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"config file {path} is a folder; pass a YAML file of {what} to --config")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist; pass an existing YAML file of {what} to --config")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise ValueError(f"cannot read config file {path} ({err.strerror or err}); check its permissions") from None
    except UnicodeDecodeError:
        raise ValueError(f"config file {path} is not UTF-8 text; pass a YAML file of {what}") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ValueError(f"config file {path} is not valid YAML ({problem}{at}); fix the file") from None
    except RecursionError:
        raise ValueError(f"config file {path} is nested too deeply; pass a flat YAML mapping of {what}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of {what}, got {type(loaded).__name__}")
    return loaded


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["tau_knn=0.1", "crf=false"]`` -> ``{"tau_knn": 0.1, "crf": False}`` (values parsed as YAML).

    A value that is not valid YAML (``depth=a: b``) stays the raw string; the config's ``coerce_fields`` decides
    whether it fits the field.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not of the form key=value (e.g. tau_knn=0.1)")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except (yaml.YAMLError, RecursionError):
            out[key.strip()] = value
    return out


def save_config(config: Any, path: str | Path) -> Path:
    """Write a resolved config (anything with ``to_dict()``) as YAML."""
    path = Path(path)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path


def settings_help(parser: Any, load_classes: Any, title: str) -> None:
    """Append every ``key=value`` setting and its default to ``parser``'s ``--help`` text.

    ``load_classes`` is called only when the help is printed (it imports the config dataclasses, which pull in
    torch), so building the parser stays cheap. It returns ``[(prefix, dataclass), ...]``; a prefix such as
    ``"cut."`` names a nested section.
    """
    plain = type(parser).format_help

    def format_help() -> str:
        lines = ["", f"{title} (key=value; the defaults below, then --config files, then these):"]
        for prefix, cls in load_classes():
            for f in dataclasses.fields(cls):
                if f.default is not dataclasses.MISSING:
                    default = f.default
                elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                    default = f.default_factory()  # type: ignore[misc]
                else:
                    default = "(required)"
                if dataclasses.is_dataclass(default):
                    continue  # a nested section, listed with its own prefix
                lines.append(f"  {prefix}{f.name}={_yaml_scalar(default) if default != '(required)' else default}")
        return plain(parser) + "\n".join(lines) + "\n"

    parser.format_help = format_help
