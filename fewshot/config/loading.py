"""Run configuration: YAML files over defaults kept in code, validated on load.

Every key has a default below. A YAML file and ``--set a.b=c`` overrides (values parsed as YAML) are
merged over the defaults; an unknown key or a value of the wrong type is a :class:`FewshotError`
naming the key (with the closest valid name). Relative paths are relative to the working directory.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from episodes import EpisodesError

from ..errors import FewshotError
from .checks import build_section, check_config
from .schema import Config, DEFAULT_IMAGE_SIZE


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-3"`` -> (``["train", "lr"]``, 0.001); the value is parsed as YAML."""
    if "=" not in text:
        raise FewshotError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise FewshotError(f"--set {key}: cannot parse '{raw}' as YAML ({str(exc).splitlines()[0]})") from None
    return [part for part in key.strip().split(".") if part], _yaml_number(value)


_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _yaml_number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string; read it as the number a user means."""
    if isinstance(value, str) and _SCIENTIFIC.match(value.strip()):
        return float(value)
    return value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Set each ``a.b=c`` override in a nested dict (creating sections as needed)."""
    for text in overrides:
        path, value = parse_override(text)
        if not path:
            raise FewshotError(f"--set expects key=value, got '{text}'")
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise FewshotError(f"--set {text}: '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return raw


def _normalize_numbers(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {k: _normalize_numbers(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_normalize_numbers(v) for v in raw]
    return _yaml_number(raw)


def config_from_dict(raw: dict | None, overrides: list[str] | None = None) -> Config:
    """Validate a plain dict (plus overrides) into a :class:`Config`."""
    raw = apply_overrides(dict(raw or {}), list(overrides or []))
    try:
        config = build_section(Config, _normalize_numbers(raw))
    except EpisodesError as exc:  # a section built by the episodes layer (metadataset) checks its own values
        raise FewshotError(str(exc)) from None
    check_config(config)
    if config.data.image_size is None:
        from ..backbones import native_size

        config.data.image_size = native_size(config.model.backbone) or DEFAULT_IMAGE_SIZE
    return config


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config file (or only defaults when ``path`` is None) and apply overrides."""
    raw: dict = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise FewshotError(f"config file {file} does not exist")
        try:
            raw = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise FewshotError(f"config file {file} is not valid YAML: {yaml_problem(exc)}") from None
        if not isinstance(raw, dict):
            raise FewshotError(f"config file {file} must hold a mapping of sections (data, model, train, eval, "
                               "pretrain, seed)")
    return config_from_dict(raw, overrides)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """``"line 3, column 7: mapping values are not allowed here"`` from a PyYAML error."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def dump_config(config: Config) -> str:
    """The full resolved config as YAML."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
