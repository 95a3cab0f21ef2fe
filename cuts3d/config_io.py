"""Configuration files: defaults < YAML file < ``key=value`` overrides; the resolved config is saved as YAML."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import yaml


def check_keys(cls: type, d: dict[str, Any], what: str, hint: str = "") -> None:
    """Reject keys of ``d`` that are not fields of dataclass ``cls``, naming the valid ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; valid: {sorted(known)}{hint}")


def load_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping; clear errors for a missing file or another type."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist; pass an existing YAML file of {what} to --config")
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of {what}, got {type(loaded).__name__}")
    return loaded


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["tau_knn=0.1", "crf=false"]`` -> ``{"tau_knn": 0.1, "crf": False}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key=value (e.g. tau_knn=0.1)")
        out[key.strip()] = yaml.safe_load(value)
    return out


def load_cut_config(path: str | Path | None = None, overrides: Sequence[str] = ()):
    """CutConfig from an optional YAML file (a mapping of CutConfig fields) and overrides."""
    from cuts3d.cuts.config import CutConfig

    values: dict[str, Any] = CutConfig().to_dict()
    if path is not None:
        values.update(load_yaml_mapping(path, "CutConfig fields"))
    values.update(parse_overrides(overrides))
    return CutConfig.from_dict(values)


def save_config(config, path: str | Path) -> Path:
    """Write a resolved config (anything with ``to_dict()``) as YAML."""
    path = Path(path)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path
