"""A ``RunConfig`` as plain data: typed checks, config files, ``--set`` overrides (torch-free).

A config is a nested mapping mirroring :class:`~cigl_bayes.config.RunConfig`: top-level fields
(``method``, ``seed``, ...) and one mapping per section (``{"optim": {"lr": 0.05}}``). Every value
is checked against its dataclass field's type before the dataclasses validate their ranges, so a
typo or a wrong type fails with one line naming the field (and the nearest valid names).
Values given as text (``--set optim.lr=1e-3``) are read as YAML scalars (ints, floats, bools,
``null``, ``[lists]``); unlike PyYAML's YAML 1.1, ``1e-3`` is a float. PyYAML loads lazily.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import fields, is_dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .config import RunConfig, recipe

#: Scientific notation without a dot (``1e-3``), which PyYAML's YAML 1.1 reads as a string.
_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


@lru_cache(maxsize=None)
def schema() -> dict[str, Any]:
    """``{"method": str, ..., "optim": {"lr": float, ...}, ...}``: every field's resolved type."""
    def resolve(cls: type) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        return {f.name: resolve(hints[f.name]) if is_dataclass(hints[f.name]) else hints[f.name] for f in fields(cls)}

    return resolve(RunConfig)


def field_names() -> list[str]:
    """Every settable name: top-level fields and ``section.field``."""
    names: list[str] = []
    for key, hint in schema().items():
        if isinstance(hint, dict):
            names.extend(f"{key}.{name}" for name in hint)
        else:
            names.append(key)
    return names


def fields_help() -> str:
    """The fields, generated from the dataclasses: ``method, seed, ...; data.{dataset, batch_size, ...}; ...``."""
    top = [k for k, v in schema().items() if not isinstance(v, dict)]
    sections = [f"{k}.{{{', '.join(v)}}}" for k, v in schema().items() if isinstance(v, dict)]
    return "; ".join([", ".join(top), *sections])


def type_name(hint: Any) -> str:
    """``float | None`` -> ``"a number or null"``."""
    if _is_union(hint):
        return " or ".join(type_name(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f"a list of {type_name(typing.get_args(hint)[0]).split()[-1]}s"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}.get(hint, str(hint))


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _unknown(name: str, valid: Iterable[str], where: str, top: bool = False) -> ValueError:
    """The error for an unknown ``name``: the close names (and ``section.name`` if ``name`` is a
    field of a section, given at the top level), then all valid ones."""
    valid = list(valid)
    close = difflib.get_close_matches(name, valid, n=3)
    if top:
        close += [f"{s}.{name}" for s, v in schema().items() if isinstance(v, dict) and name in v]
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return ValueError(f"unknown {where} {name!r}; {hint}valid: {', '.join(valid)}")


def coerce(value: Any, hint: Any, name: str) -> Any:
    """``value`` as the type ``hint`` of field ``name`` (an int is a valid float; a list a tuple),
    or ``ValueError`` naming the field and the expected type."""
    if _is_union(hint):
        for option in typing.get_args(hint):
            try:
                return coerce(value, option, name)
            except ValueError:
                pass
    elif hint is type(None):
        if value is None:
            return None
    elif typing.get_origin(hint) is tuple and isinstance(value, (list, tuple)):
        return tuple(coerce(v, typing.get_args(hint)[0], name) for v in value)
    elif hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif hint in (bool, int, str) and type(value) is hint:
        return value
    raise ValueError(f"{name} must be {type_name(hint)}, got {value!r} ({_kind(value)})")


def _kind(value: Any) -> str:
    return {bool: "true/false", int: "integer", float: "number", str: "string", list: "list", dict: "mapping",
            type(None): "null"}.get(type(value), type(value).__name__)


def check(values: Mapping[str, Any], where: str = "config") -> dict[str, Any]:
    """A nested mapping with known names only and values of their fields' types (coerced);
    partial mappings are fine (missing fields keep their defaults)."""
    if not isinstance(values, Mapping):
        raise ValueError(f"{where} must be a mapping of sections and fields, e.g. {{optim: {{lr: 0.05}}}}; got {_kind(values)}")
    out: dict[str, Any] = {}
    for key, value in values.items():
        key = str(key)
        if key not in schema():
            raise _unknown(key, schema(), f"field or section in {where}", top=True)
        hint = schema()[key]
        if isinstance(hint, dict):
            if not isinstance(value, Mapping):
                raise ValueError(f"section {key!r} in {where} must be a mapping of its fields ({', '.join(hint)}), got {value!r}")
            section = {}
            for name, item in value.items():
                if str(name) not in hint:
                    raise _unknown(str(name), hint, f"field of section {key!r} in {where}")
                section[str(name)] = coerce(item, hint[str(name)], f"{key}.{name}")
            out[key] = section
        else:
            out[key] = coerce(value, hint, key)
    return out


def config_from_dict(values: Mapping[str, Any]) -> RunConfig:
    """``RunConfig`` from a (possibly partial) nested mapping: names and types checked, then the
    dataclasses' own validation."""
    checked = check(values)
    hints = typing.get_type_hints(RunConfig)
    sections = {name: hints[name] for name, hint in schema().items() if isinstance(hint, dict)}
    return RunConfig(**{k: sections[k](**v) if k in sections else v for k, v in checked.items()})


def plain(config: RunConfig) -> dict[str, Any]:
    """``config.to_dict()`` with tuples as lists: JSON / YAML data."""
    def convert(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return [convert(v) for v in value] if isinstance(value, (list, tuple)) else value

    return convert(config.to_dict())


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override``'s entries replacing its own, section by section."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in base.items()}
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = dict(value) if isinstance(value, Mapping) else value
    return out


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"optim.lr": 0.1, "seed": 1}`` -> ``{"optim": {"lr": 0.1}, "seed": 1}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        section, dot, name = key.partition(".")
        if dot:
            out.setdefault(section, {})[name] = value
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------------------- text: YAML scalars, files


def _yaml():
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is a dependency
        raise ValueError("reading YAML needs PyYAML: pip install 'pyyaml>=6' (or give a .json config)") from None
    return yaml


@lru_cache(maxsize=None)
def _loader() -> type:
    """PyYAML's safe loader, reading ``1e-3`` as a float (as YAML 1.2 and JSON do)."""
    yaml = _yaml()

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789"))
    return Loader


def parse_scalar(text: str) -> Any:
    """``"0.05"`` -> 0.05, ``"true"`` -> True, ``"null"`` -> None, ``"[0.01, 0.1]"`` -> [0.01, 0.1], ``"cigl"`` -> "cigl"."""
    yaml = _yaml()
    try:
        return yaml.load(text, Loader=_loader()) if text.strip() else ""
    except yaml.YAMLError:
        return text  # e.g. "a: b: c"; the field's type check then names what was expected


def parse_sets(items: Iterable[str]) -> dict[str, Any]:
    """``["optim.lr=0.05", "seed=3"]`` -> ``{"optim": {"lr": 0.05}, "seed": 3}``, names and types checked."""
    flat: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"bad --set {item!r}: expected section.field=value, e.g. --set optim.lr=0.05")
        section, dot, name = key.partition(".")
        if section not in schema():
            raise _unknown(section, schema(), "section or field in --set", top=True)
        if isinstance(schema()[section], dict) != bool(dot):
            form = f"{section}.FIELD (fields: {', '.join(schema()[section])})" if isinstance(schema()[section], dict) else section
            raise ValueError(f"bad --set {item!r}: write {form}=value")
        flat[key] = parse_scalar(text)
    return check(nest(flat), "--set")


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The checked nested mapping in a YAML or JSON file (``.json``: JSON; else YAML, a superset)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ValueError(f"config file {path} not found") from None
    except IsADirectoryError:
        raise ValueError(f"--config {path} is a folder; give a .yaml or .json file (e.g. OUT/config.yaml of a run)") from None
    if path.suffix.lower() == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"config file {path} is not valid JSON: {error}") from None
    else:
        yaml = _yaml()
        try:
            values = yaml.load(text, Loader=_loader())
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ValueError(f"config file {path} is not valid YAML{where}: {problem}") from None
    return check(values if values is not None else {}, f"config file {path}")


def dump_yaml(config: RunConfig) -> str:
    """``config`` as YAML text that ``load_config_file`` reads back to the same config."""
    return _yaml().safe_dump(plain(config), sort_keys=False, default_flow_style=False)


def write_config(config: RunConfig, path: str | os.PathLike) -> Path:
    """Write ``config`` atomically as YAML (``--config PATH`` reproduces it)."""
    from .atomic import write_text_atomic

    return write_text_atomic(path, dump_yaml(config))


# ---------------------------------------------------------------------------- the layers of a run's config


def layered_config(file: Mapping[str, Any] | None = None, flags: Mapping[str, Any] | None = None,
                   sets: Mapping[str, Any] | None = None, default_dataset: str = "digits") -> RunConfig:
    """The dataset recipe, then ``file``, then ``flags``, then ``sets`` (each a checked nested
    mapping; later layers win). The recipe is that of the dataset and model the layers name."""
    layers = [dict(layer or {}) for layer in (file, flags, sets)]

    def chosen(section: str, name: str, default: Any) -> Any:
        for layer in reversed(layers):
            if name in layer.get(section, {}):
                return layer[section][name]
        return default

    merged = plain(recipe(chosen("data", "dataset", default_dataset), chosen("model", "name", None)))
    for layer in layers:
        merged = merge(merged, layer)
    return config_from_dict(merged)
