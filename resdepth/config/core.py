"""Typed configuration: nested dataclasses are the schema, YAML fills them, ``a.b=v`` overrides win.

Every field carries a one-line doc (``opt(default, "doc")``). Unknown keys and wrong types fail at
start-up with the key, the value and what was expected; a section's ``check()`` adds the values out
of range (``model_channels=0``, an empty ``run.dir``). Every problem is collected and reported at
once, so a user fixes a config in one round.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from resdepth.utils.errors import UserError

CONFIG_DIR_ENV = "RESDEPTH_CONFIG_DIR"


class ConfigError(UserError):
    """A config that cannot be used; the message lists every problem found."""


def opt(default: Any, doc: str) -> Any:
    """A dataclass field with a default and a one-line doc (shown in --help and the README)."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: copy.deepcopy(d),
                                 metadata={"doc": doc})
    return dataclasses.field(default=default, metadata={"doc": doc})


def config_dir() -> Path:
    """The directory holding experiment YAML files (``configs/`` at the repository root)."""
    env = os.environ.get(CONFIG_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "configs"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list[{_type_name(args[0])}]" if args else "list"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


# YAML 1.1 (PyYAML) reads ``2e-3`` (no dot) as a string; a float field takes it as the number it is
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any, tp: Any, key: str, errors: list[str]) -> Any:
    """Check ``value`` against ``tp``; returns the value (ints widened to float) or records an error."""
    origin = typing.get_origin(tp)
    bad = f"{key}: value {value!r} is not of the expected type {_type_name(tp)}"
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            errors.append(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
            return None
        return _build(tp, value, key + ".", errors)
    if origin is Literal:
        if value not in typing.get_args(tp):
            errors.append(bad)
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            trial: list[str] = []
            out = _coerce(value, arg, key, trial)
            if not trial:
                return out
        errors.append(bad)
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            errors.append(bad)
            return value
        (item_tp,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]", errors) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            errors.append(bad)
        return value
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(bad)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str) and (value.lower() in ("inf", "+inf", "-inf", "nan")
                                           or _EXPONENT_FLOAT.fullmatch(value)):
                return float(value)
            errors.append(bad)
            return value
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(bad)
        return value
    if tp is str:
        if not isinstance(value, str):
            errors.append(bad)
        return value
    raise TypeError(f"config schema type {tp!r} at {key} is not supported")


def _build(cls: type, data: dict, prefix: str, errors: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    errors_before = len(errors)
    for name, value in data.items():
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
            errors.append(f"{prefix}{name}: unknown key{hint} "
                          f"(valid keys under {prefix or 'the top level'}: {', '.join(fields)})")
            continue
        kwargs[name] = _coerce(value, hints[name], prefix + name, errors)
    for name, f in fields.items():
        if name not in kwargs and dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], {}, prefix + name + ".", errors)
    obj = cls(**kwargs)
    # range checks only on a section whose types are right (a check may compare numbers)
    if hasattr(obj, "check") and len(errors) == errors_before:
        for key, problem in obj.check():
            errors.append(f"{prefix}{key}: {problem}")
    return obj


def from_dict(cls: type, data: dict) -> Any:
    """Build ``cls`` from a nested mapping, collecting every unknown key and wrong type."""
    errors: list[str] = []
    cfg = _build(cls, data, "", errors)
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    return cfg


def to_dict(cfg: Any) -> dict:
    """The config as plain nested dicts and lists."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML text (what is saved into every run directory)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def config_hash(cfg: Any, ignore: tuple[str, ...] = ()) -> str:
    """A short stable hash of the config, leaving out the sections or dotted keys in ``ignore``."""
    d = to_dict(cfg)
    for key in ignore:
        *parents, leaf = key.split(".")
        node = d
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    text = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        nxt = d.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{dotted}: {p} is a value, not a section")
        d = nxt
    d[parts[-1]] = value


def load_experiment(name: str, _chain: tuple[Path, ...] = ()) -> dict:
    """Read ``configs/NAME.yaml`` (or a YAML path); ``base: OTHER`` inherits from another experiment."""
    path = Path(str(name))
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = config_dir() / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in config_dir().glob("*.yaml"))
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"experiment={name}: no file {path}{hint} (known: {', '.join(known)})")
    if path.resolve() in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise ConfigError(f"{path}: base: inherits from itself ({cycle})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{where}: YAML syntax error: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = data.pop("base", None)
    if not base:
        return data
    return _merge(load_experiment(base, (*_chain, path.resolve())), data)


def parse_overrides(args: list[str]) -> dict:
    """``experiment=NAME`` and ``a.b.c=value`` arguments to one nested mapping (values parsed as YAML)."""
    data: dict = {}
    overrides: list[tuple[str, Any]] = []
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"argument {arg!r} is not of the form key=value")
        key, raw = arg.split("=", 1)
        if key == "experiment":
            data = _merge(data, load_experiment(raw))
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        overrides.append((key, value))
    for key, value in overrides:
        _set_dotted(data, key, value)
    return data


def load_config(cls: type, args: list[str]) -> Any:
    """The resolved config for ``cls`` from ``experiment=NAME`` and ``key=value`` arguments."""
    return from_dict(cls, parse_overrides(args))


def iter_fields(cls: type, prefix: str = ""):
    """Yield (dotted key, type name, default, doc) for every leaf field, for reference docs."""
    hints = typing.get_type_hints(cls)
    default = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from iter_fields(tp, prefix + f.name + ".")
            continue
        value = getattr(default, f.name)
        if isinstance(value, float) and math.isinf(value):
            value = "inf" if value > 0 else "-inf"
        yield prefix + f.name, _type_name(tp), value, f.metadata.get("doc", "")
