"""Reward registry: built-ins by name, third-party plugins by entry point, one-offs by import path or file.

`get(name, **options)` resolves, in this order:
1. a built-in (`correctness`, `format`, `remote`, `clip`, `image_reward`). Built-ins register themselves with
   the `@register(name)` decorator when their module is imported; `BUILTIN_MODULES` says which module to
   import for which name, so `import rewards` never imports math-verify, torch, open_clip or torchvision;
2. an entry point in the group `unigrpo.rewards` (what `pip install your-plugin` provides);
3. `package.module:attr` (an importable module) or `path/to/file.py:attr` (a file, loaded by path).

What a name resolves to is a *factory*; `options` are passed to it by the same rule for every source:
a class is instantiated with `**options`; a function is the reward itself and receives `options` as
keyword arguments on every call (`functools.partial`). Options the factory does not accept are an error
naming the valid ones. An unknown name is an error listing everything available.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

from rewards.secrets import shown_options

ENTRY_POINT_GROUP = "unigrpo.rewards"

BUILTIN_MODULES: dict[str, str] = {
    "correctness": "rewards.correctness",
    "format": "rewards.format",
    "remote": "rewards.remote",
    "clip": "rewards.clip",
    "image_reward": "rewards.image_reward",
}
"""Built-in name -> module whose import registers it (lazy, so heavy dependencies load only when used)."""

_REGISTERED: dict[str, Callable[..., Any]] = {}


def register(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Class/function decorator: make `name` resolve to the decorated factory."""

    def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
        previous = _REGISTERED.get(name)
        if previous is not None and _qualname(previous) != _qualname(factory):
            raise ValueError(
                f"reward name {name!r} is already registered to {_qualname(previous)}; "
                f"cannot register {_qualname(factory)} under the same name"
            )
        _REGISTERED[name] = factory
        return factory

    return decorate


def available() -> dict[str, str]:
    """Every resolvable name -> where it comes from (`built-in` or `entry point <dist>: <module:attr>`)."""
    names = {name: "built-in" for name in BUILTIN_MODULES}
    names.update({name: "registered" for name in _REGISTERED if name not in names})
    for entry in _entry_points():
        names.setdefault(entry.name, f"entry point {_dist_name(entry)}: {entry.value}")
    return names


def check(name: str) -> None:
    """Raise `ValueError` if `name` resolves to nothing, without constructing the reward (for config checks).
    Built-ins are not imported; one-offs are imported/loaded."""
    if name in BUILTIN_MODULES or name in _REGISTERED:
        return
    _resolve_factory(name)


def resolve(name: str, options: dict[str, Any] | None = None) -> Callable[..., Any]:
    """The factory `name` resolves to, with `options` checked against its signature; nothing is built."""
    factory, label = _resolve_factory(name)
    _check_options(inspect.signature(factory), dict(options or {}), label, skip_first=not isinstance(factory, type))
    return factory


def canonical_name(name: str) -> str:
    """`name` with a one-off file path made absolute (so another process or directory resolves the same file)."""
    one_off_file = _file_spec(name)
    return name if one_off_file is None else f"{one_off_file[0]}:{one_off_file[1]}"


def get(name: str, **options: Any) -> Callable[..., Any]:
    """The reward called `name`, built with `options` (see the module docstring for how names resolve)."""
    one_off_file = _file_spec(name)
    if one_off_file is not None:
        return FileReward(*one_off_file, options)
    factory, label = _resolve_factory(name)
    return _build(factory, options, label)


def isolation_of(reward: Any) -> str:
    """How the reward wants to be run by `RewardService`: its `isolation` attribute, default `process`."""
    isolation = getattr(reward, "isolation", "process")
    if isolation not in ("process", "thread"):
        raise ValueError(f"reward {reward!r}: isolation={isolation!r}; expected 'process' or 'thread'")
    return isolation


# ---------------------------------------------------------------------------------------------- resolving
def _resolve_factory(name: str) -> tuple[Callable[..., Any], str]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"reward name: got {name!r}; expected a non-empty string")
    entry_matches = [entry for entry in _entry_points() if entry.name == name]
    if name in BUILTIN_MODULES or name in _REGISTERED:
        if entry_matches:
            sources = ", ".join(f"{_dist_name(e)} ({e.value})" for e in entry_matches)
            raise ValueError(
                f"reward {name!r} is ambiguous: it is a built-in and also an entry point in group "
                f"{ENTRY_POINT_GROUP!r} from {sources}; rename the plugin's entry point"
            )
        return _builtin_factory(name), f"built-in reward {name!r}"
    if entry_matches:
        if len(entry_matches) > 1:
            sources = ", ".join(f"{_dist_name(e)} ({e.value})" for e in entry_matches)
            raise ValueError(f"reward {name!r} is provided by several entry points: {sources}; uninstall one")
        entry = entry_matches[0]
        label = f"entry point {name!r} ({_dist_name(entry)}: {entry.value})"
        try:
            return entry.load(), label
        except Exception as exc:
            raise ValueError(f"{label} failed to load: {type(exc).__name__}: {exc}") from exc
    if ":" in name:
        one_off_file = _file_spec(name)
        label = f"reward file {one_off_file[0]}:{one_off_file[1]}" if one_off_file else f"reward {name!r}"
        return load_plugin(name), label
    listing = ", ".join(f"{n} ({source})" for n, source in sorted(available().items()))
    raise ValueError(
        f"unknown reward {name!r}; available: {listing}; "
        "or give 'package.module:function' / 'path/to/file.py:function'"
    )


def load_plugin(name: str, *, what: str = "reward") -> Callable[..., Any]:
    """The callable a plugin name points at: `package.module:attr` (imported) or `path/to/file.py:attr` (the
    file executed once per process, cached in `sys.modules`). Shared by every registry that takes plugins
    (rewards here; estimators, KL estimators and masking schedules in `rl`); `what` names the kind in errors."""
    one_off_file = _file_spec(name)
    if one_off_file is not None:
        return _load_file_attr(*one_off_file, what=what)
    module_name, _, attr = name.rpartition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(
            f"{what} {name!r}: cannot import module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    return _get_attr(module, attr, f"module {module_name!r}", what)


def _load_file_attr(path: str, attr: str, *, what: str) -> Callable[..., Any]:
    if not os.path.isfile(path):
        raise ValueError(f"{what} file not found: {path}; expected 'path/to/file.py:function'")
    digest = hashlib.sha1(path.encode()).hexdigest()[:12]
    module_name = f"_unigrpo_plugin_file_{digest}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # classes defined in the file pickle by reference in-process
        try:
            spec.loader.exec_module(module)
        except BaseException as exc:
            del sys.modules[module_name]
            raise ValueError(f"{what} file {path} failed to load: {type(exc).__name__}: {exc}") from exc
    return _get_attr(module, attr, f"{what} file {path}", what)


def _file_spec(name: str) -> tuple[str, str] | None:
    """(absolute path, attribute) for a `path/to/file.py:attr` name, else None."""
    if ":" not in name:
        return None
    target, _, attr = name.rpartition(":")
    if target.endswith(".py") or "/" in target or os.sep in target:
        return os.path.abspath(target), attr
    return None


def _builtin_factory(name: str) -> Callable[..., Any]:
    if name not in _REGISTERED:
        module = BUILTIN_MODULES[name]
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise ValueError(
                f"built-in reward {name!r} needs module {module}, which failed to import: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if name not in _REGISTERED:
            raise ValueError(f"module {module} imported but did not @register({name!r})")
    return _REGISTERED[name]


def _get_attr(module: Any, attr: str, where: str, what: str) -> Callable[..., Any]:
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            callables = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
            raise ValueError(f"{where} has no attribute {attr!r}; callables there: {', '.join(callables)}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{where}: {attr!r} is a {type(obj).__name__}, not a callable {what}")
    return obj


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _dist_name(entry: importlib.metadata.EntryPoint) -> str:
    dist = getattr(entry, "dist", None)
    return dist.metadata["Name"] if dist is not None else "unknown distribution"


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


# ---------------------------------------------------------------------------------------------- building
def _build(factory: Callable[..., Any], options: dict[str, Any], label: str) -> Callable[..., Any]:
    if isinstance(factory, type):
        _check_options(inspect.signature(factory), options, label, skip_first=False)
        try:
            return factory(**options)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{label}: bad options {shown_options(options)!r}: {exc}") from exc
    if not options:
        return factory
    _check_options(inspect.signature(factory), options, label, skip_first=True)
    return functools.partial(factory, **options)


def _check_options(signature: inspect.Signature, options: dict[str, Any], label: str, *, skip_first: bool) -> None:
    params = list(signature.parameters.values())
    if skip_first and params:
        params = params[1:]  # the samples argument of a function reward
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    valid = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"{label}: unknown option(s) {', '.join(unknown)}; valid options: {', '.join(valid) or 'none'}")
    missing = [p.name for p in params if p.default is p.empty and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
               and p.name not in options]
    if missing and not skip_first:
        raise ValueError(f"{label}: missing required option(s) {', '.join(missing)}")


class FileReward:
    """A reward loaded from `path/to/file.py:attr`. Pickles as (path, attr, options) and reloads the file on
    the other side, so one-off files work in worker processes and Ray actors that can't import them."""

    def __init__(self, path: str, attr: str, options: dict[str, Any] | None = None):
        self.path = os.path.abspath(path)
        self.attr = attr
        self.options = dict(options or {})
        factory = self.load_factory(self.path, attr)
        self._reward = _build(factory, self.options, f"reward file {self.path}:{attr}")
        self.isolation = getattr(self._reward, "isolation", "process")

    @staticmethod
    def load_factory(path: str, attr: str) -> Callable[..., Any]:
        """Execute the file once per process (cached in `sys.modules`) and return its `attr`."""
        return _load_file_attr(os.path.abspath(path), attr, what="reward")

    def __call__(self, samples):
        return self._reward(samples)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_reward":
            raise AttributeError(name)
        return getattr(self._reward, name)  # e.g. score_detailed, close

    def __reduce__(self):
        return (FileReward, (self.path, self.attr, self.options))

    def __repr__(self) -> str:
        return f"FileReward({self.path}:{self.attr}, options={self.options!r})"
