"""What several commands share: flag groups (model, data), argument types, the model and
classifier the flags name, input checks before a model loads, output writing and per-class printing."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Callable

from episodes import SplitSpec

from ..errors import FewshotError


def one_line_warnings() -> None:
    """Warnings print one line each, ``warning: ...``, with no source line."""
    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show


def int_at_least(least: int):
    """An argparse type: an integer >= ``least`` (the error names the value and the bound)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    parse.__name__ = f"integer >= {least}"
    return parse


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def query_sampling(text: str) -> str:
    """``--query-sampling``: ``balanced`` or ``dirichlet:A``."""
    from ..config import parse_query_sampling

    try:
        parse_query_sampling(text, "--query-sampling")
    except FewshotError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--query-sampling ")) from None
    return text


QUERY_SAMPLING_HELP = ("balanced (default): the same number of queries per class; dirichlet:A: the episode's "
                       "ways*queries queries spread over its classes by proportions from a symmetric Dirichlet with "
                       "concentration A (Veilleux et al. 2021 use A=2; small A: a few classes take most queries), the "
                       "realistic setting for transductive heads; reproducible by seed")


def open_fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1."""
    value = fraction(text)
    if value in (0.0, 1.0):
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {value}")
    return value


def positive_number(text: str) -> float:
    """An argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


POSITIVE, NON_NEGATIVE = int_at_least(1), int_at_least(0)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that name a split: ``--data``, ``--split``, ``--classes``, ``--csv``, ``--images``."""
    group = parser.add_argument_group("data")
    group.add_argument("--data", action="append", metavar="DIR", required=False, default=None,
                       help="root folder of class folders; repeat to merge roots (e.g. Omniglot's "
                            "images_background and images_evaluation)")
    group.add_argument("--split", metavar="NAME", help="use the subfolder NAME of each root (train / val / test)")
    group.add_argument("--classes", metavar="FILE",
                       help="class-list file: one class path per line, relative to the roots; a trailing "
                            "/rotDDD rotates that class's images by DDD degrees (Vinyals Omniglot lists)")
    group.add_argument("--csv", metavar="FILE",
                       help="miniImageNet-style CSV split (filename,label rows); needs --images")
    group.add_argument("--images", metavar="DIR", help="folder holding the images named in --csv")


def split_spec_from_args(args: argparse.Namespace) -> SplitSpec:
    """A :class:`SplitSpec` from the data flags."""
    if not args.data and not args.csv:
        raise FewshotError("give the data: --data DIR (repeatable), or --csv FILE --images DIR")
    return SplitSpec(tuple(args.data or ()), split=args.split, classes=args.classes, csv=args.csv, images=args.images)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """A model from a checkpoint / run directory, or built from a backbone and head without training."""
    from ..declared import names
    from ..model.recipes import RECIPES

    backbones, heads = names("fewshot.backbones", "BACKBONES"), names("fewshot.heads", "HEADS")
    transforms, tta = names("fewshot.model.transforms", "TRANSFORMS"), names("fewshot.model.transforms", "TTA")

    group = parser.add_argument_group("model (a checkpoint, a recipe, or a backbone and head)")
    group.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT_OR_RUN_DIR",
                       help="checkpoint file, or run directory (its checkpoints/best.pt); with no model argument at "
                            "all, the 'default' recipe")
    group.add_argument("--recipe", help=f"a pretrained recipe, no training: {', '.join(RECIPES)} (fewshot recipes "
                                        "lists them with their measured accuracy)")
    group.add_argument("--backbone", help=f"backbone when no checkpoint is given: {', '.join(backbones)}; with a "
                                          "checkpoint, checked against it")
    group.add_argument("--weights", default="none",
                       help="backbone weights without a checkpoint: none (default), imagenet, or a state-dict file")
    group.add_argument("--head", help=f"head when no checkpoint is given: {', '.join(heads)}")
    group.add_argument("--image-size", type=int_at_least(8), metavar="PX",
                       help="image side in pixels (default: the checkpoint's, else the backbone's native size, "
                            "else 84)")
    group.add_argument("--channels", type=int, choices=(1, 3), help="1 (grayscale) or 3 (RGB; default)")
    group.add_argument("--head-option", action="append", default=[], metavar="KEY=VALUE",
                       help="head option without a checkpoint, e.g. distance=cosine (repeatable)")
    group.add_argument("--backbone-option", action="append", default=[], metavar="KEY=VALUE",
                       help="backbone option without a checkpoint, e.g. depth=2 for a timm model (repeatable)")
    group.add_argument("--transform", choices=transforms,
                       help="feature transform before the head (overrides the checkpoint's or recipe's): none, l2n, "
                            "cl2n (centre on the support mean, L2-normalize), power_cl2n (square root first)")
    group.add_argument("--tta", choices=tta,
                       help="test-time augmentation (overrides the checkpoint's or recipe's): none, or flip (average "
                            "each embedding with its mirror image's)")
    group.add_argument("--adapt", choices=names("fewshot.inference.adaptation", "ADAPT_CHOICES"),
                       help="adapt the backbone's top layers to the support set (overrides the recipe's; the shared "
                            "model is never changed): none, top (always), or auto (only when the support's held-out "
                            "images show that it helps, measured in three folds). Adds seconds to a minute of CPU "
                            "per support set; gains most on classes unlike ImageNet's (benchmarks/RESULTS.md)")
    group.add_argument("--device", help="auto (default: CUDA if available, else CPU), cpu, cuda or cuda:N")
    group.add_argument("--runtime", choices=names("fewshot.inference.embedding", "RUNTIMES"), default="auto",
                       help="how the frozen backbone embeds images: auto (default: on the CPU the faster of "
                            "onnxruntime, when the onnx extra is installed, and a frozen TorchScript trace, timed on "
                            "this machine; PyTorch as written on CUDA), eager, jit or onnxruntime; all give the same "
                            "embeddings within 1e-4")


def unknown_threshold(text: str) -> str | float:
    """``--unknown``: ``auto`` or a number."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a score threshold (a number), got '{text}'") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite threshold, got '{text}'")
    return value


def add_open_set_arguments(parser: argparse.ArgumentParser, answers: bool = False, estimates: bool = False) -> None:
    """"None of these" flags: the score (every command with a classifier), the ``auto`` threshold's known-class
    recall, and for commands that answer (``answers``) ``--unknown`` and ``--unknown-name``."""
    from ..declared import constant, names

    group = parser.add_argument_group("'none of these' (open set)")
    if answers:
        group.add_argument("--unknown", type=unknown_threshold, metavar="auto|THRESHOLD",
                           help="answer UNKNOWN_NAME for an image that looks like none of the classes: 'auto' "
                                "chooses the threshold from the support images (each class held out in turn as the "
                                "unknown, keeping --recall of the known images), a number is a score threshold; "
                                "without it every image gets one of the classes")
        group.add_argument("--unknown-name", default=constant("fewshot.inference.open_set", "UNKNOWN_NAME"), metavar="NAME",
                           help="the answer for an image past the threshold (default: %(default)s)")
    default = constant("fewshot.inference.open_set", "DEFAULT_SCORE")
    group.add_argument("--unknown-score", choices=names("fewshot.inference.open_set", "SCORE_CHOICES"), default=default,
                       help=f"how 'none of these' is measured (default: {default}: energy, the best in "
                            "benchmarks/open_set.py, or distance for a head whose logits are log-probabilities, "
                            "where energy is constant): msp (1 - top probability), energy (-logsumexp of the logits), "
                            "distance (to the nearest class mean), knn (to the nearest support image), mahalanobis "
                            "(shrunk pooled covariance)")
    group.add_argument("--recall", type=open_fraction, default=constant("fewshot.inference.open_set", "DEFAULT_RECALL"),
                       help="the fraction of the known classes' images the auto threshold keeps (default: "
                            "%(default)s)")
    if estimates:
        group.add_argument("--no-open-set", action="store_true",
                           help="skip the 'none of these' estimate (each class held out in turn as the unknown)")


def model_from_args(args: argparse.Namespace):
    """(model, config) from the model flags (see :func:`fewshot.model.loading.load_model`)."""
    from ..model.loading import load_model
    from ..model.recipes import RECIPES

    if args.checkpoint in RECIPES and not os.path.exists(args.checkpoint) and not args.recipe:
        args.checkpoint, args.recipe = None, args.checkpoint  # `fewshot predict fast ...` names the recipe
    if not args.checkpoint and not args.recipe and not (args.backbone or args.head):
        args.recipe = "default"  # so the output names it
    model, config = load_model(args.checkpoint, recipe=args.recipe, backbone=args.backbone, head=args.head,
                               weights=args.weights, image_size=args.image_size, channels=args.channels,
                               head_options=args.head_option, backbone_options=args.backbone_option,
                               transform=args.transform, tta=args.tta)
    if getattr(args, "adapt", None):
        model.adapt = config.model.adapt = args.adapt
    if model.adapt != "none":
        from ..inference.adaptation import can_adapt

        problem = can_adapt(model)
        if problem:
            raise FewshotError(f"--adapt {model.adapt}: {problem}")
    return model, config


def write_outputs(outputs: list[tuple[str, Callable[[], object]]]) -> int:
    """Write every output, each on its own: one that fails is reported and the others are still written.
    Returns the exit status (2 if any failed)."""
    status = 0
    for flag, write in outputs:
        try:
            write()
        except (FewshotError, OSError) as exc:
            print(f"error: {flag}: {exc}", file=sys.stderr)
            status = 2
    return status


def config_checkpoint(args: argparse.Namespace) -> str | None:
    """The checkpoint file the model came from (a run directory resolved to its best.pt), or None."""
    from ..model.checkpoint import resolve_checkpoint

    return str(resolve_checkpoint(args.checkpoint)) if args.checkpoint else None


def model_source(args: argparse.Namespace, config) -> str:
    """``runs/x/checkpoints/best.pt`` or ``resnet50 (imagenet) + protonet``, for result lines."""
    if args.checkpoint:
        return config_checkpoint(args)
    if args.recipe:
        return f"recipe '{args.recipe}' ({config.model.backbone} + {config.model.transform} + {config.model.head})"
    return f"{config.model.backbone} ({args.weights}) + {config.model.head}"


def print_per_class(report: dict, png: str | None) -> None:
    """Per-class precision / recall / F1 table, and the confusion-matrix PNG (unless ``png`` is None)."""
    from ..plots import MAX_CONFUSION_CLASSES, plot_confusion

    rows = sorted(report["classes"], key=lambda row: row["f1"])
    width = max(len(row["class"]) for row in rows)
    print(f"{'class':<{width}}  precision  recall     F1  queries")
    shown = rows if len(rows) <= 40 else rows[:20] + rows[-20:]
    for row in shown:
        if len(rows) > 40 and row is rows[-20]:
            print(f"... {len(rows) - 40} classes in the middle (all in --json) ...")
        print(f"{row['class']:<{width}}  {row['precision']:9.1f}  {row['recall']:6.1f}  {row['f1']:5.1f}  "
              f"{row['queries']:7d}")
    if png is None:
        return
    if plot_confusion(report, png):
        print(f"confusion matrix: {png}")
    else:
        print(f"confusion matrix PNG skipped: {len(rows)} classes (more than {MAX_CONFUSION_CLASSES}); "
              "the full matrix is in --json")


def classifier_from_args(args: argparse.Namespace):
    """A :class:`fewshot.FewShotClassifier` around the model the flags name (:func:`model_from_args`), with
    progress bars on stderr unless ``--no-progress``."""
    from ..inference.classifier import FewShotClassifier

    model, config = model_from_args(args)
    classifier = FewShotClassifier.from_model(model, config, model_source(args, config), device=args.device or "auto",
                                              runtime=args.runtime,
                                              **({"unknown_score": args.unknown_score}
                                                 if getattr(args, "unknown_score", None) else {}))
    classifier.progress = not getattr(args, "no_progress", False)
    from episodes import default_cache_dir

    classifier.cache_dir = default_cache_dir() / "open-set"  # --unknown auto: one estimate per support set
    return classifier


def check_inputs(args: argparse.Namespace) -> list | None:
    """Before any model loads: the support folder (listed, not decoded) and the query paths; returns the
    query files (None when the command has no queries)."""
    from ..paths import expand_queries, folder_classes

    folder_classes(Path(args.support).expanduser())
    return expand_queries(args.query) if getattr(args, "query", None) else None
