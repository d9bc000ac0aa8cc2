"""Run configuration: YAML files over defaults kept in code, validated on load.

Every key has a default below. A YAML file and ``--set a.b=c`` overrides (values parsed as YAML) are
merged over the defaults; an unknown key or a value of the wrong type is a :class:`FewshotError`
naming the key (with the closest valid name). Relative paths are relative to the working directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from .errors import FewshotError

PHASES = ("train", "val", "test")


@dataclass
class PerPhase:
    """One optional value per phase (train / val / test)."""

    train: str | None = None
    val: str | None = None
    test: str | None = None


@dataclass
class DataConfig:
    root: list[str] = field(default_factory=list)  # one or several roots, merged
    split: PerPhase = field(default_factory=PerPhase)  # subfolder of each root per phase
    classes: PerPhase = field(default_factory=PerPhase)  # class-list file per phase
    csv: PerPhase = field(default_factory=PerPhase)  # miniImageNet CSV per phase (needs images)
    images: str | None = None  # folder of the CSV's images
    image_size: int = 84
    channels: int = 3  # 1 (grayscale) or 3 (RGB)
    augment: str | list[str] = "none"  # preset (none, flip, standard, strong) or list of operations
    cache_dir: str | None = None  # decoded-image cache; default $FEWSHOT_CACHE_DIR or ~/.cache/fewshot
    skip_corrupt: bool = False
    workers: int = 0  # DataLoader workers for training episodes


@dataclass
class ModelConfig:
    backbone: str = "resnet50"
    weights: str = "none"  # none | imagenet | PATH to a state dict or checkpoint
    head: str = "protonet"
    backbone_options: dict = field(default_factory=dict)
    head_options: dict = field(default_factory=dict)


@dataclass
class TrainConfig:
    ways: int = 5
    shots: int = 5
    queries: int = 15
    episodes: int = 10000
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    schedule: str = "step"  # constant | step | cosine
    step_size: int = 2000  # step schedule: episodes between decays
    gamma: float = 0.5  # step schedule: decay factor
    warmup: int = 0  # episodes of linear warm-up
    grad_clip: float | None = None  # max gradient norm
    amp: bool = True  # bfloat16 autocast on CUDA (ignored on CPU)
    val_every: int = 500  # episodes between validations (0: never)
    val_episodes: int = 200
    patience: int | None = None  # validations without improvement before stopping early
    log_every: int = 50
    checkpoint_every: int = 0  # episodes between checkpoints/last.pt (0: only at validations and the end)
    checkpoint_minutes: float = 10.0  # and at least this often (0: never by time)
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class EvalConfig:
    ways: int = 5
    shots: int = 5
    queries: int = 15
    episodes: int = 600
    batch_size: int = 256  # images per embedding batch


@dataclass
class PretrainConfig:
    """Supervised pretraining on all base classes (``fewshot pretrain``)."""

    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "sgd"  # adam | sgd
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    classifier: str = "linear"  # linear (Baseline, RFS) | cosine (Baseline++)
    cosine_scale: float = 10.0
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Beta(alpha, alpha) of mixup; 0 = off
    cutmix: float = 0.0  # Beta(alpha, alpha) of cutmix; 0 = off
    val_episodes: int = 200  # episodic validation (eval.ways/shots/queries) after each epoch


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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
        return _build(kind, value, key)
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if kind in (int, bool, str) and isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise FewshotError(f"config key '{key}' must be {_type_name(kind)}, got {value!r}")


def _build(cls: type, values: Any, prefix: str = "") -> Any:
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
    config = _build(Config, _normalize_numbers(raw))
    check_config(config)
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
            raise FewshotError(f"config file {file} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise FewshotError(f"config file {file} must hold a mapping of sections (data, model, train, eval)")
    return config_from_dict(raw, overrides)


def check_config(config: Config) -> None:
    """Value checks that types alone cannot express."""
    if config.data.channels not in (1, 3):
        raise FewshotError(f"data.channels must be 1 or 3, got {config.data.channels}")
    if config.data.image_size < 8:
        raise FewshotError(f"data.image_size must be at least 8 pixels, got {config.data.image_size}")
    for section in ("train", "eval"):
        part = getattr(config, section)
        for key, least in (("ways", 2), ("shots", 1), ("queries", 1), ("episodes", 1)):
            if getattr(part, key) < least:
                raise FewshotError(f"{section}.{key} must be at least {least}, got {getattr(part, key)}")
    from episodes.images import AUGMENTATION_OPS, PRESETS

    augment = config.data.augment
    names = [augment] if isinstance(augment, str) else augment
    unknown = [n for n in names if n not in PRESETS and n not in AUGMENTATION_OPS]
    if unknown or (not isinstance(augment, str) and any(n in PRESETS and n not in AUGMENTATION_OPS for n in names)):
        raise FewshotError(f"data.augment: '{(unknown or names)[0]}' is not a preset ({', '.join(PRESETS)}) or a list "
                           f"of operations ({', '.join(AUGMENTATION_OPS)})")
    choices = {"train.optimizer": ("adam", "sgd"), "train.schedule": ("constant", "step", "cosine"),
               "pretrain.optimizer": ("adam", "sgd"), "pretrain.classifier": ("linear", "cosine")}
    for key, allowed in choices.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in allowed:
            raise FewshotError(f"{key} must be one of {', '.join(allowed)}, got '{value}'")
    if config.train.lr <= 0:
        raise FewshotError(f"train.lr must be positive, got {config.train.lr}")


def dump_config(config: Config) -> str:
    """The full resolved config as YAML."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
