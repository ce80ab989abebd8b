"""Frozen-dataclass config trees: YAML in, dotted `--set` overrides, complete validation, YAML out.

Every package owns the dataclasses of its own config section (`rl.config.AlgoConfig`,
`rewards.config.RewardsConfig`, ...); `jobs.config` composes them into one tree. This module is the
generic machinery and knows nothing about any section:

- `build(cls, raw)` turns nested dicts into the dataclass tree, checking every key and value against
  the type annotations (int, float, bool, str, Literal, Optional, nested dataclasses, list, tuple,
  dict[str, X]). Cross-field checks live in each dataclass's `__post_init__`, which raises
  `ValueError("<field>: <what is wrong>; <what is right>")`.
- All problems are collected and raised as ONE `ConfigError` whose lines each name the dotted key,
  the bad value and what would be right (valid keys, valid choices, expected type).
- `apply_overrides(raw, ["a.b=1", ...])` edits the raw dict before it is built; values are parsed as
  YAML scalars/flow collections, so `--set algo.mu=4` is an int and `--set model.path=null` is None.
- `field_docs(cls)` reads each field's one-line doc from the source, in either convention the sections
  use: a string literal right after the field, or `# comment` lines above it. `commented_yaml(cfg)`
  prints the tree with every field's doc as a YAML comment (`--print-config`); it loads back unchanged.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import json
import math
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """One or more invalid config entries; `problems` lists them, each naming its dotted key."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        head = f"invalid config{f' ({source})' if source else ''}"
        super().__init__(head + ":\n  " + "\n  ".join(self.problems))


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


_NOT_FINITE = "; expected a finite number"


def _convert(tp: Any, value: Any, key: str, problems: list[str]) -> Any:
    """Convert `value` to annotation `tp`; on failure append a problem and return a sentinel."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        rejected: list[str] = []
        for candidate in non_none:  # first type that accepts the value without problems
            trial: list[str] = []
            out = _convert(candidate, value, key, trial)
            if not trial:
                return out
            if not rejected and trial and all(p.endswith(_NOT_FINITE) for p in trial):
                rejected = trial  # a number of the right type but NaN/inf: say that, not "not a valid ..."
            if not rejected and _same_shape(candidate, value):
                rejected = trial  # a mapping for a section, a list for a list: name the bad item inside it
        problems.extend(rejected or [f"{key}: {value!r} is not a valid {_type_name(tp)}"])
        return _INVALID
    if origin is Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        problems.append(f"{key}: {value!r} is not one of the valid choices {', '.join(map(repr, args))}")
        return _INVALID
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
            return _INVALID
        return _build(tp, value, key, problems)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            problems.append(f"{key}: expected a list, got {value!r}")
            return _INVALID
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                problems.append(f"{key}: expected {len(args)} items, got {len(value)}")
                return _INVALID
            items = [_convert(a, v, f"{key}[{i}]", problems) for i, (a, v) in enumerate(zip(args, value))]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(item_tp, v, f"{key}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a mapping, got {value!r}")
            return _INVALID
        key_tp, val_tp = args if args else (Any, Any)
        return {
            _convert(key_tp, k, f"{key}.{k}", problems): _convert(val_tp, v, f"{key}.{k}", problems)
            for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{key}: expected true or false, got {value!r}")
        return _INVALID
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append(f"{key}: expected an integer, got {value!r}")
        return _INVALID
    if tp is float:
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string; accept what float() reads
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            problems.append(f"{key}: expected a number, got {value!r}")
            return _INVALID
        # NaN/inf would pass every `x > 0`-style check downstream (NaN compares False both ways) and fail
        # late or silently (algo.beta=.nan turns the KL off). No float field means "unbounded", so all are
        # rejected here, the one place values are converted; a field that needs inf must allow it explicitly.
        if not math.isfinite(number):
            problems.append(f"{key}: got {value!r}{_NOT_FINITE}")
            return _INVALID
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        problems.append(f"{key}: expected a string, got {value!r}")
        return _INVALID
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    problems.append(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return _INVALID


def _same_shape(tp: Any, value: Any) -> bool:
    """Whether `value` has the container shape of `tp` (a mapping for a dataclass or dict, a list for a list)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) or origin is dict:
        return isinstance(value, dict)
    return origin in (list, tuple) and isinstance(value, (list, tuple))


class _Invalid:
    def __repr__(self) -> str:
        return "<invalid>"


_INVALID = _Invalid()


def _build(cls: type, raw: dict, prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            problems.append(f"{key}: unknown key; valid keys here: {', '.join(sorted(fields))}")
            continue
        kwargs[name] = _convert(hints[name], value, key, problems)
    if any(v is _INVALID for v in kwargs.values()) or _has_invalid(kwargs):
        return _INVALID
    try:
        return cls(**kwargs)
    except ValueError as exc:  # __post_init__ checks: "<field>: message"
        for line in str(exc).splitlines() or [""]:
            problems.append(f"{prefix}.{line}" if prefix else line)
        return _INVALID
    except TypeError as exc:  # a required field without default was not given
        problems.append(f"{prefix or '<root>'}: {exc}")
        return _INVALID


def _nested_any(obj: Any, leaf: Callable[[Any], bool]) -> bool:
    """`leaf(x)` for `obj` or any value nested in its dicts, lists and tuples."""
    if leaf(obj):
        return True
    if isinstance(obj, dict):
        return any(_nested_any(v, leaf) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_nested_any(v, leaf) for v in obj)
    return False


def _has_invalid(obj: Any) -> bool:
    return _nested_any(obj, lambda value: value is _INVALID)


def build(cls: type, raw: dict | None, *, source: str | None = None) -> Any:
    """Nested dict -> frozen dataclass tree, or one ConfigError listing every problem."""
    problems: list[str] = []
    out = _build(cls, raw or {}, "", problems)
    if problems or out is _INVALID:
        raise ConfigError(problems or ["invalid config"], source)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`"a.b.c=value"` -> (["a", "b", "c"], parsed value). Values are YAML (3 -> int, null -> None)."""
    if "=" not in text:
        raise ConfigError([f"override {text!r}: expected KEY=VALUE, e.g. algo.mu=4"])
    key, _, value_text = text.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError([f"override {text!r}: empty key segment in {key!r}"])
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError([f"override {text!r}: value is not valid YAML ({exc})"]) from None
    return parts, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a deep copy of `raw` with each dotted override applied (unknown keys fail at build)."""
    out = _deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError([f"override {text!r}: {where} is a value ({child!r}), not a section"])
            node = child
        node[parts[-1]] = value
    return out


def _deepcopy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _deepcopy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deepcopy(v) for v in obj]
    return obj


def to_dict(cfg: Any) -> Any:
    """Dataclass tree -> plain YAML-safe data (tuples become lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that records every mapping key given twice (plain YAML silently keeps the last one).

    Checked on the keys written in each mapping, nested ones included; keys a merge (`<<: *anchor`) brings in
    may be overridden, as YAML intends. `duplicates` holds (line, key, first line), 1-based, in file order."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.duplicates: list[tuple[int, Any, int]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    self.duplicates.append((line, key, seen[key]))
                else:
                    seen[key] = line
            except TypeError:  # an unhashable key: SafeLoader's own construction reports it below
                continue
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict:
    """A config file -> its mapping; a ConfigError for a missing file, bad YAML or a key given twice."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file {str(path)!r} does not exist"])
    loader = _UniqueKeyLoader(path.read_text())
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigError([f"{path}:{line}: key {key!r} given twice (first at line {first}); YAML keeps only the "
                           "last, so remove one" for line, key, first in sorted(loader.duplicates, key=lambda d: d[0])])
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections, got {type(data).__name__}"])
    return data


def write_yaml(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config; the file loads back to an equal tree through `build`."""
    from model.atomic_write import write_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


# ---------------------------------------------------------------------------------------------- field docs
@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its doc on one line ('' when it has none), for a dataclass and its dataclass bases.

    The doc is the string literal right after the field, else the `#` comment lines right above it, else
    a comment at the end of the field's line (read from the source: neither survives into the class)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # bases first, so a subclass's own doc wins
        if dataclasses.is_dataclass(klass) and klass is not object:
            docs.update(_own_field_docs(klass))
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls)}


def _own_field_docs(cls: type) -> dict[str, str]:
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    comments = {tok.start[0]: tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}  # line number (1-based) -> "# text"
    body = ast.parse(source).body[0].body
    docs = {}
    for index, node in enumerate(body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        after = body[index + 1] if index + 1 < len(body) else None
        if (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = _one_line(after.value.value)
            continue
        above, line = [], node.lineno - 1
        while line >= 1 and lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line].lstrip("#"))
            line -= 1
        inline = comments.get(node.end_lineno, "") if not above else ""
        docs[node.target.id] = _one_line(" ".join(above) or inline.lstrip("#"))
    return docs


def _one_line(text: str) -> str:
    return " ".join(text.split())


def commented_yaml(cfg: Any) -> str:
    """The dataclass tree as block YAML with each field's doc as a comment (`lr: 1.0e-06  # Learning rate`).

    Loads back (`build`) to an equal tree: values are written by yaml itself, one scalar or flow
    collection per line, and only lists or mappings holding dataclasses are written as blocks."""
    out: list[str] = []
    _emit_fields(cfg, 0, out)
    return "\n".join(out) + "\n"


def _emit_fields(cfg: Any, indent: int, out: list[str], first_prefix: str | None = None) -> None:
    docs = field_docs(type(cfg))
    for i, f in enumerate(dataclasses.fields(cfg)):
        prefix = first_prefix if (i == 0 and first_prefix is not None) else " " * indent
        _emit(f.name, getattr(cfg, f.name), docs[f.name], prefix, indent, out)


def _emit(key: str, value: Any, doc: str, prefix: str, indent: int, out: list[str]) -> None:
    comment = f"  # {doc}" if doc else ""
    if not _holds_dataclass(value):
        out.append(f"{prefix}{key}: {_flow(to_dict(value))}{comment}")
        return
    out.append(f"{prefix}{key}:{comment}")
    _emit_value(value, indent + 2, out)


def _emit_value(value: Any, indent: int, out: list[str]) -> None:
    """A value holding dataclasses, in block style at `indent` (mapping keys and list items carry no doc)."""
    pad = " " * indent
    if dataclasses.is_dataclass(value):
        _emit_fields(value, indent, out)
    elif isinstance(value, dict):
        for k, v in value.items():
            _emit(_flow(k), v, "", pad, indent, out)
    else:  # list or tuple
        for item in value:
            if dataclasses.is_dataclass(item):
                _emit_fields(item, indent + 2, out, first_prefix=pad + "- ")
            elif _holds_dataclass(item):
                out.append(pad + "-")
                _emit_value(item, indent + 2, out)
            else:
                out.append(f"{pad}- {_flow(to_dict(item))}")


def _holds_dataclass(value: Any) -> bool:
    return _nested_any(value, dataclasses.is_dataclass)


def _flow(value: Any) -> str:
    """One value as YAML on one line (a scalar, or a flow collection such as `[0.9, 0.999]`)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), allow_unicode=True)
    text = text.removesuffix("\n").removesuffix("\n...").strip()
    if "\n" in text:  # a string with a line break: YAML folds it over lines; JSON (valid YAML) escapes it
        text = json.dumps(value, ensure_ascii=False)
    return text
