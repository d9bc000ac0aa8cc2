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

from episodes import EpisodesError, MetaDatasetConfig

from .errors import FewshotError

PHASES = ("train", "val", "test")


@dataclass
class PerPhase:
    """One optional value per phase (train / val / test)."""

    train: str | None = None
    val: str | None = None
    test: str | None = None


def ranged(default: Any, low: float | None = None, high: float | None = None, *, above: float | None = None,
           below: float | None = None) -> Any:
    """A config field with a declared range: ``low <= value <= high``, ``value > above``, ``value < below``.

    ``None`` values (for optional keys) are not checked. :func:`check_config` enforces every range and
    names the key in its error.
    """
    return field(default=default, metadata={"range": (low, high, above, below)})


def choice(default: str, *options: str) -> Any:
    """A config field whose value must be one of ``options``."""
    return field(default=default, metadata={"choices": (default, *options)})


SEED_LIMIT = 2**63 - 1
DEFAULT_IMAGE_SIZE = 84  # for backbones without a native input size


@dataclass
class SourceConfig:
    """One dataset of ``data.sources``: the data keys of a single dataset, a name and a weight (episodes are
    drawn from source ``s`` with probability ``weight_s / sum of weights``)."""

    name: str | None = None  # default: the last folder of the first root (or the CSV's name)
    root: list[str] = field(default_factory=list)
    split: PerPhase = field(default_factory=PerPhase)
    classes: PerPhase = field(default_factory=PerPhase)
    csv: PerPhase = field(default_factory=PerPhase)
    images: str | None = None
    weight: float = ranged(1.0, 0)


@dataclass
class DataConfig:
    root: list[str] = field(default_factory=list)  # one or several roots, merged
    split: PerPhase = field(default_factory=PerPhase)  # subfolder of each root per phase
    classes: PerPhase = field(default_factory=PerPhase)  # class-list file per phase
    csv: PerPhase = field(default_factory=PerPhase)  # miniImageNet CSV per phase (needs images)
    images: str | None = None  # folder of the CSV's images
    image_size: int | None = ranged(None, 8, 4096)  # None: the backbone's native size (pretrained), else 84
    channels: int = ranged(3, 1, 3)  # 1 (grayscale) or 3 (RGB); 2 is refused in check_config
    augment: str | list[str] = "none"  # preset (none, flip, standard, strong) or list of operations
    cache_dir: str | None = None  # decoded-image cache; default $FEWSHOT_CACHE_DIR or ~/.cache/fewshot
    skip_corrupt: bool = False
    workers: int = ranged(0, 0, 64)  # DataLoader workers for training episodes
    protocol: str = choice("fixed", "metadataset")  # fixed N-way K-shot episodes, or Meta-Dataset's variable ones
    query_sampling: str = "balanced"  # balanced, or dirichlet:A (query class proportions ~ Dirichlet(A), fixed total)
    sources: list[SourceConfig] = field(default_factory=list)  # several datasets, one per episode (instead of root)


@dataclass
class ModelConfig:
    backbone: str = "resnet50"
    weights: str = "none"  # none | imagenet | PATH to a state dict or checkpoint
    head: str = "protonet"
    backbone_options: dict = field(default_factory=dict)
    head_options: dict = field(default_factory=dict)
    transform: str = "none"  # feature transform before the head: none, l2n, cl2n, power_cl2n (fewshot/model/transforms.py)
    tta: str = "none"  # test-time augmentation of embeddings: none, flip
    # calibration: {shots per class: temperature} for the probabilities of a fitted classifier (softmax of
    # temperature * logits), interpolated in log(shots); {} keeps the head's own scale (fewshot/inference/calibration.py)
    temperature: dict = field(default_factory=dict)
    # adapting the backbone's top to each support set (fewshot/inference/adaptation.py): none, top (always), auto (when the
    # support's held-out images show it helps); adapt_steps: training steps per adapted part
    adapt: str = choice("none", "top", "auto")
    adapt_steps: int = ranged(40, 1, 1000)


@dataclass
class TrainConfig:
    ways: int = ranged(5, 2)
    shots: int = ranged(5, 1)
    queries: int = ranged(15, 1)
    episodes: int = ranged(10000, 1)
    optimizer: str = choice("adam", "sgd")
    lr: float = ranged(1e-3, above=0)
    weight_decay: float = ranged(0.0, 0)
    momentum: float = ranged(0.9, 0, below=1)  # sgd only
    schedule: str = choice("step", "constant", "cosine")
    step_size: int = ranged(2000, 1)  # step schedule: episodes between decays
    gamma: float = ranged(0.5, above=0, high=1)  # step schedule: decay factor
    warmup: int = ranged(0, 0)  # episodes of linear warm-up
    grad_clip: float | None = ranged(None, above=0)  # max gradient norm
    amp: bool = True  # bfloat16 autocast on CUDA (ignored on CPU)
    val_every: int = ranged(500, 0)  # episodes between validations (0: never)
    val_episodes: int = ranged(200, 1)
    patience: int | None = ranged(None, 1)  # validations without improvement before stopping early
    log_every: int = ranged(50, 1)
    checkpoint_every: int = ranged(0, 0)  # episodes between checkpoints/last.pt (0: only at validations and the end)
    checkpoint_minutes: float = ranged(10.0, 0)  # and at least this often (0: never by time)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    loggers: list[str] = field(default_factory=list)  # mirrors of metrics.jsonl: tensorboard (fewshot/training/loggers.py)


@dataclass
class EvalConfig:
    ways: int = ranged(5, 2)
    shots: int = ranged(5, 1)
    queries: int = ranged(15, 1)
    episodes: int = ranged(600, 1)
    batch_size: int = ranged(256, 1)  # images per embedding batch
    runtime: str = "auto"  # how validation embeds with the frozen backbone: auto, eager, jit, onnxruntime (embedding.py)
    open_set: int = ranged(0, 0)  # validation adds this many unseen classes per episode and reports AUROC (0: off)
    unknown_score: str = "auto"  # the unknown score of that AUROC (fewshot.inference.open_set.SCORE_CHOICES, resolve_score)


@dataclass
class PretrainConfig:
    """Supervised pretraining on all base classes (``fewshot pretrain``)."""

    epochs: int = ranged(20, 1)
    batch_size: int = ranged(64, 1)
    optimizer: str = choice("sgd", "adam")
    lr: float = ranged(0.05, above=0)
    momentum: float = ranged(0.9, 0, below=1)
    weight_decay: float = ranged(5e-4, 0)
    warmup_epochs: int = ranged(1, 0)
    classifier: str = choice("linear", "cosine")  # linear (Baseline, RFS) | cosine (Baseline++)
    cosine_scale: float = ranged(10.0, above=0)
    label_smoothing: float = ranged(0.0, 0, below=1)
    mixup: float = ranged(0.0, 0)  # Beta(alpha, alpha) of mixup; 0 = off
    cutmix: float = ranged(0.0, 0)  # Beta(alpha, alpha) of cutmix; 0 = off
    val_episodes: int = ranged(200, 1)  # episodic validation (eval.ways/shots/queries) after each epoch


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    metadataset: MetaDatasetConfig = field(default_factory=MetaDatasetConfig)  # limits of data.protocol: metadataset
    seed: int = ranged(0, 0, SEED_LIMIT)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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
    try:
        config = _build(Config, _normalize_numbers(raw))
    except EpisodesError as exc:  # a section built by the episodes layer (metadataset) checks its own values
        raise FewshotError(str(exc)) from None
    check_config(config)
    if config.data.image_size is None:
        from .backbones import native_size

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


def check_config(config: Config) -> None:
    """Declared ranges and choices, then the checks that ranges alone cannot express."""
    check_declared(config)
    from .declared import names
    from .model.transforms import TRANSFORMS, TTA

    for key, value, allowed in (("model.transform", config.model.transform, TRANSFORMS),
                                ("model.tta", config.model.tta, TTA),
                                ("eval.runtime", config.eval.runtime, names("fewshot.inference.embedding", "RUNTIMES")),
                                ("eval.unknown_score", config.eval.unknown_score,
                                 names("fewshot.inference.open_set", "SCORE_CHOICES"))):
        if value not in allowed:
            raise FewshotError(f"{key} must be one of {', '.join(allowed)}, got '{value}'")
    check_temperature(config.model.temperature)
    query_concentration(config.data)
    from .training.loggers import check_loggers

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


def dump_config(config: Config) -> str:
    """The full resolved config as YAML."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


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
