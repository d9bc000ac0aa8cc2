"""Checking a configuration: values converted to their declared types (:func:`build_section`), declared ranges and
choices, and the rules across keys (:func:`check_config`), each failure a one-line error naming the key."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Union

from ..errors import FewshotError
from .schema import PHASES, Config, DataConfig, SourceConfig


def range_text(low, high, above, below) -> str:
    """``"at least 1"``, ``"between 0 and 1"``, ``"greater than 0"``..., for error and help messages."""
    parts = []
    if low is not None and high is not None:
        return f"between {low} and {high}"
    if low is not None:
        parts.append(f"at least {low}")
    if above is not None:
        parts.append(f"greater than {above}")
    if high is not None:
        parts.append(f"at most {high}")
    if below is not None:
        parts.append(f"less than {below}")
    return " and ".join(parts)


def in_range(value: float, low, high, above, below) -> bool:
    return not ((low is not None and value < low) or (high is not None and value > high)
                or (above is not None and value <= above) or (below is not None and value >= below)
                or value != value)  # NaN


def check_declared(obj: Any, prefix: str = "") -> None:
    """Every declared range and choice of a config dataclass (recursively), as one-line errors."""
    for item in dataclasses.fields(obj):
        value, key = getattr(obj, item.name), f"{prefix}{item.name}"
        if dataclasses.is_dataclass(value):
            check_declared(value, key + ".")
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for number, entry in enumerate(value):
                check_declared(entry, f"{key}[{number}].")
        elif "range" in item.metadata and value is not None and not in_range(value, *item.metadata["range"]):
            raise FewshotError(f"{key} must be {range_text(*item.metadata['range'])}, got {value}")
        elif "choices" in item.metadata and value not in item.metadata["choices"]:
            raise FewshotError(f"{key} must be one of {', '.join(item.metadata['choices'])}, got '{value}'")


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", str(kind).replace("typing.", ""))


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``kind``; return it converted (int -> float, str -> [str])."""
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except FewshotError as exc:
                errors.append(str(exc))
        raise FewshotError(errors[0] if errors else f"config key '{key}' has a wrong type")
    if origin is list:
        (item,) = typing.get_args(kind)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise FewshotError(f"config key '{key}' must be a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if kind is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise FewshotError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(kind):
        return build_section(kind, value, key)
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if kind in (int, bool, str) and isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise FewshotError(f"config key '{key}' must be {_type_name(kind)}, got {value!r}")


def build_section(cls: type, values: Any, prefix: str = "") -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise FewshotError(f"config key '{prefix or '<top>'}' must be a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close else \
                f" (valid keys: {', '.join(names)})"
            raise FewshotError(f"unknown config key '{full}'{hint}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def check_config(config: Config) -> None:
    """Declared ranges and choices, then the checks that ranges alone cannot express."""
    check_declared(config)
    from ..declared import names
    from ..model.transforms import TRANSFORMS, TTA

    for key, value, allowed in (("model.transform", config.model.transform, TRANSFORMS),
                                ("model.tta", config.model.tta, TTA),
                                ("eval.runtime", config.eval.runtime, names("fewshot.inference.embedding", "RUNTIMES")),
                                ("eval.unknown_score", config.eval.unknown_score,
                                 names("fewshot.inference.open_set", "SCORE_CHOICES"))):
        if value not in allowed:
            raise FewshotError(f"{key} must be one of {', '.join(allowed)}, got '{value}'")
    check_temperature(config.model.temperature)
    query_concentration(config.data)
    from ..training.loggers import check_loggers

    check_loggers(config.train.loggers)
    check_sources(config.data)
    if config.data.channels not in (1, 3):
        raise FewshotError(f"data.channels must be 1 or 3, got {config.data.channels}")
    from episodes.images import AUGMENTATION_OPS, PRESETS

    augment = config.data.augment
    names = [augment] if isinstance(augment, str) else augment
    unknown = [n for n in names if n not in PRESETS and n not in AUGMENTATION_OPS]
    if unknown or (not isinstance(augment, str) and any(n in PRESETS and n not in AUGMENTATION_OPS for n in names)):
        raise FewshotError(f"data.augment: '{(unknown or names)[0]}' is not a preset ({', '.join(PRESETS)}) or a list "
                           f"of operations ({', '.join(AUGMENTATION_OPS)})")


def check_temperature(table: dict) -> None:
    """``model.temperature``: whole numbers of shots >= 1 mapped to temperatures > 0."""
    for shots, value in table.items():
        if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1 or isinstance(value, bool) \
                or not isinstance(value, (int, float)) or not value > 0:
            raise FewshotError(f"model.temperature maps shots per class (whole numbers >= 1) to temperatures > 0, "
                               f"e.g. {{1: 7.2, 5: 12.4}}; got {shots!r}: {value!r}")


def source_name(source: SourceConfig) -> str:
    """A source's name: its ``name``, else the last folder of its first root, else its first CSV's stem."""
    if source.name:
        return source.name
    if source.root:
        return Path(source.root[0].rstrip("/\\")).name or source.root[0]
    csv = next((v for v in (source.csv.train, source.csv.val, source.csv.test) if v), None)
    return Path(csv).stem if csv else "source"


def check_sources(data: DataConfig) -> None:
    """``data.sources`` replaces the single-dataset keys; every source names data; names are distinct; the
    weights sum to a positive number (the ranges already refused negative ones)."""
    if not data.sources:
        return
    single = [key for key in ("root", "images") if getattr(data, key)] + [
        f"{key}.{phase}" for key in ("split", "classes", "csv") for phase in PHASES
        if getattr(getattr(data, key), phase)]
    if single:
        raise FewshotError(f"data.{single[0]} and data.sources are alternatives: move each dataset's keys into its "
                           "entry of data.sources")
    names = []
    for number, source in enumerate(data.sources):
        if not source.root and not any(getattr(source.csv, phase) for phase in PHASES):
            raise FewshotError(f"data.sources[{number}] names no data: set its root (or csv and images)")
        names.append(source_name(source))
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise FewshotError(f"two data.sources are named '{repeated[0]}': give them distinct 'name' keys")
    if sum(source.weight for source in data.sources) <= 0:
        raise FewshotError("data.sources weights sum to 0: give at least one source a positive weight")


def parse_query_sampling(sampling: str, key: str = "data.query_sampling") -> float | None:
    """The Dirichlet concentration of ``dirichlet:A``, None for ``balanced``; a one-line error naming ``key``."""
    if sampling == "balanced":
        return None
    kind, _, value = str(sampling).partition(":")
    try:
        alpha = float(value)
    except ValueError:
        alpha = float("nan")
    if kind != "dirichlet" or not alpha > 0 or alpha == float("inf"):
        raise FewshotError(f"{key} must be balanced or dirichlet:A with a concentration A > 0 (e.g. dirichlet:2, "
                           f"Veilleux et al.'s setting), got '{sampling}'")
    return alpha


def query_concentration(data: DataConfig) -> float | None:
    """The Dirichlet concentration of ``data.query_sampling``, None for ``balanced``, checked against the
    protocol."""
    alpha = parse_query_sampling(data.query_sampling)
    if alpha is not None and data.protocol != "fixed":
        raise FewshotError("data.query_sampling: dirichlet works with data.protocol: fixed (N-way K-shot episodes)")
    return alpha
