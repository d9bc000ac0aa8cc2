"""The configuration's schema: one dataclass per section (data, model, train, eval, pretrain), every key with its
default, and each numeric range or choice declared on its field (``ranged``, ``choice``), where the checks and the
CLI's help read them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from episodes import MetaDatasetConfig



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
