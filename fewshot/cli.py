"""The ``fewshot`` command line: ``episodes``, ``glyphs``, ``train``, ``eval``, ``predict``, ``export``, ``serve``,
``demo``.

User errors (:class:`FewshotError`, :class:`episodes.EpisodesError`) print one line, ``error: ...``,
and exit with status 2; warnings print one line each, ``warning: ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

from episodes import EpisodesError, EpisodeSampler, SplitSpec, drop_small_classes, resolve_split

from . import json_io
from .errors import FewshotError
from .version import __version__


def _one_line_warnings() -> None:
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


def cmd_episodes(args: argparse.Namespace) -> int:
    """Print episodes as JSON lines: image paths only, nothing is decoded."""
    spec = split_spec_from_args(args)
    if args.protocol == "metadataset":
        from episodes.metadataset import MetaDatasetConfig, MetaDatasetSampler, parents_of

        given = [flag for flag, value in (("--ways", args.ways), ("--shots", args.shots), ("--queries", args.queries))
                 if value is not None]
        if given:
            raise FewshotError(f"--protocol metadataset draws ways, shots and queries per episode: drop {', '.join(given)}")
        classes = drop_small_classes(resolve_split(spec), 2, None, spec.describe())
        sampler = MetaDatasetSampler([len(c) for c in classes], args.seed, MetaDatasetConfig(),
                                     parents_of([c.name for c in classes]), spec.describe())
    else:
        if args.ways is None or args.shots is None:
            raise FewshotError("give --ways N and --shots K (or --protocol metadataset for variable episodes)")
        queries = 15 if args.queries is None else args.queries
        classes = drop_small_classes(resolve_split(spec), args.shots + queries, args.ways, spec.describe())
        sampler = EpisodeSampler([len(c) for c in classes], args.ways, args.shots, queries, args.seed)
    out = sys.stdout
    for index in range(args.start, args.start + args.episodes):
        drawn = sampler.sample(index)
        record = {
            "index": index,
            "classes": [classes[c].name for c in drawn.classes],
            "support": [[str(classes[c].files[p]) for p in pos] for c, pos in zip(drawn.classes, drawn.support)],
            "query": [[str(classes[c].files[p]) for p in pos] for c, pos in zip(drawn.classes, drawn.query)],
        }
        out.write(json_io.dumps(record) + "\n")
    out.flush()
    return 0


def cmd_glyphs(args: argparse.Namespace) -> int:
    """Write the generated glyph dataset (train / val / test class folders)."""
    from episodes.synthetic import make_glyph_dataset

    root = make_glyph_dataset(args.out, classes=(args.train_classes, args.val_classes, args.test_classes),
                              per_class=args.per_class, size=args.size, seed=args.seed)
    print(f"wrote {sum((args.train_classes, args.val_classes, args.test_classes))} glyph classes to {root} "
          "(subfolders train, val, test)")
    return 0


def data_overrides(data: str) -> list[str]:
    """``--data DIR`` as config overrides: ``train/ val/ test/`` subfolders become the phases when present,
    else every class folder under DIR is a training class."""
    from pathlib import Path

    root = Path(data).expanduser()
    overrides = [f"data.root={json.dumps(str(root))}"]
    for phase in ("train", "val", "test"):
        if (root / phase).is_dir():
            overrides.append(f"data.split.{phase}={phase}")
    return overrides


def config_and_run_dir(args: argparse.Namespace):
    """The validated config of train / pretrain (YAML, if any, then the model and data flags, then --set and
    --device) and the run directory."""
    from .config import load_config
    from .train import default_run_dir

    flags = data_overrides(args.data) if args.data else []
    for flag, key in (("backbone", "model.backbone"), ("weights", "model.weights"), ("head", "model.head"),
                      ("image_size", "data.image_size"), ("channels", "data.channels")):
        if getattr(args, flag) is not None:
            flags.append(f"{key}={getattr(args, flag)}")
    config = load_config(args.config, flags + args.set)
    if args.device:
        config.train.device = args.device
    return config, args.out or default_run_dir(args.config)


def resume_command(argv: Sequence[str], run_dir) -> str:
    """The command line that resumes this run: the same arguments, ``--out RUN_DIR`` and ``--resume``."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--out":
            skip = True
        elif not item.startswith("--out=") and item != "--resume":
            kept.append(item)
    return shlex.join(["fewshot", *kept, "--out", str(run_dir), "--resume"])


def run_training(args: argparse.Namespace, command: str) -> None:
    """``fewshot train`` / ``fewshot pretrain``: run, then print how it ended (rank 0 only)."""
    if command == "train":
        from .train import train as run
    else:
        from .pretrain import pretrain as run

    config, run_dir = config_and_run_dir(args)
    summary = run(config, run_dir, resume=args.resume, progress=not args.no_progress)
    if os.environ.get("RANK", "0") != "0":
        return
    if summary["interrupted"]:
        done = f"episode {summary['episodes']}" if command == "train" else f"batch {summary['steps']}"
        print(f"stopped by {summary['interrupted']} after {done}; checkpoint saved in {run_dir}/checkpoints/last.pt; "
              f"resume with: {resume_command(args.argv, run_dir)}")
    elif command == "train":
        line = f"trained {summary['episodes']} episodes in {summary['minutes']:.1f} min"
        print(f"{line}{best_validation_text(summary, 'at episode')}; run directory {run_dir}")
    else:
        line = f"pretrained {summary['epochs']} epochs on {summary['classes']} classes in {summary['minutes']:.1f} min"
        print(f"{line}{best_validation_text(summary, 'after epoch')}; run directory {run_dir} (use it with fewshot "
              "eval, or as model.weights for fewshot train)")


def cmd_train(args: argparse.Namespace) -> int:
    run_training(args, "train")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    run_training(args, "pretrain")
    return 0


def best_validation_text(summary: dict, when: str) -> str:
    """``"; best validation 98.50 ± 0.45 % at episode 2000"``, or nothing when the run never validated."""
    best = summary["best_validation"]
    return (f"; best validation {best['accuracy']:.2f} ± {best['ci95']:.2f} % {when} "
            f"{best.get('epoch', best['episode'])}") if best else ""


def add_run_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags of the training commands: config, data and model without YAML, overrides, run directory."""
    from .backbones import BACKBONES
    from .heads import head_names

    parser.add_argument("config", metavar="CONFIG", nargs="?",
                        help="YAML config (see configs/); unknown keys are errors. Optional: --data and the model "
                             "flags below are enough")
    parser.add_argument("--data", metavar="DIR",
                        help="dataset folder (sets data.root): its train/ val/ test/ subfolders are the phases when "
                             "present, else every class folder under it is a training class")
    heads = head_names("meta_trainable") if command == "train" else head_names()
    parser.add_argument("--backbone", help=f"model.backbone: {', '.join(BACKBONES)} (default resnet50)")
    parser.add_argument("--weights", help="model.weights: none (default), imagenet, or a state-dict / checkpoint file")
    parser.add_argument("--head", help=f"model.head: {', '.join(heads)} (default protonet)")
    parser.add_argument("--image-size", type=int_at_least(8), metavar="PX",
                        help="data.image_size (default: the backbone's native size, e.g. 260 for efficientnet_lite2, "
                             "else 84)")
    parser.add_argument("--channels", type=int, choices=(1, 3), help="data.channels: 1 or 3 (default 3)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key; the value is parsed as YAML, e.g. --set train.lr=1e-3 "
                             "--set 'data.root=[dir_a, dir_b]' (repeatable; applied after the flags above)")
    parser.add_argument("--out", metavar="RUN_DIR",
                        help="run directory, new or empty (default runs/<config>-<date>-<time>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from checkpoints/last.pt, exactly where it stopped")
    parser.add_argument("--device", help="override train.device: auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """A model from a checkpoint / run directory, or built from a backbone and head without training."""
    from .backbones import BACKBONES
    from .heads import HEADS
    from .recipes import RECIPES
    from .transforms import TRANSFORMS, TTA

    group = parser.add_argument_group("model (a checkpoint, a recipe, or a backbone and head)")
    group.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT_OR_RUN_DIR",
                       help="checkpoint file, or run directory (its checkpoints/best.pt); with no model argument at "
                            "all, the 'default' recipe")
    group.add_argument("--recipe", help=f"a pretrained recipe, no training: {', '.join(RECIPES)} (fewshot recipes "
                                        "lists them with their measured accuracy)")
    group.add_argument("--backbone", help=f"backbone when no checkpoint is given: {', '.join(BACKBONES)}; with a "
                                          "checkpoint, checked against it")
    group.add_argument("--weights", default="none",
                       help="backbone weights without a checkpoint: none (default), imagenet, or a state-dict file")
    group.add_argument("--head", help=f"head when no checkpoint is given: {', '.join(HEADS)}")
    group.add_argument("--image-size", type=int_at_least(8), metavar="PX",
                       help="image side in pixels (default: the checkpoint's, else the backbone's native size, "
                            "else 84)")
    group.add_argument("--channels", type=int, choices=(1, 3), help="1 (grayscale) or 3 (RGB; default)")
    group.add_argument("--head-option", action="append", default=[], metavar="KEY=VALUE",
                       help="head option without a checkpoint, e.g. distance=cosine (repeatable)")
    group.add_argument("--backbone-option", action="append", default=[], metavar="KEY=VALUE",
                       help="backbone option without a checkpoint, e.g. depth=2 for a timm model (repeatable)")
    group.add_argument("--transform", choices=list(TRANSFORMS),
                       help="feature transform before the head (overrides the checkpoint's or recipe's): none, l2n, "
                            "cl2n (centre on the support mean, L2-normalize), power_cl2n (square root first)")
    group.add_argument("--tta", choices=list(TTA),
                       help="test-time augmentation (overrides the checkpoint's or recipe's): none, or flip (average "
                            "each embedding with its mirror image's)")
    group.add_argument("--device", help="auto (default: CUDA if available, else CPU), cpu, cuda or cuda:N")


def model_from_args(args: argparse.Namespace):
    """(model, config) from the model flags (see :func:`fewshot.loading.load_model`)."""
    from .loading import load_model
    from .recipes import RECIPES

    if args.checkpoint in RECIPES and not os.path.exists(args.checkpoint) and not args.recipe:
        args.checkpoint, args.recipe = None, args.checkpoint  # `fewshot predict fast ...` names the recipe
    if not args.checkpoint and not args.recipe and not (args.backbone or args.head):
        args.recipe = "default"  # so the output names it
    return load_model(args.checkpoint, recipe=args.recipe, backbone=args.backbone, head=args.head,
                      weights=args.weights, image_size=args.image_size, channels=args.channels,
                      head_options=args.head_option, backbone_options=args.backbone_option,
                      transform=args.transform, tta=args.tta)


def eval_split_spec(args: argparse.Namespace, config) -> SplitSpec:
    """The split to evaluate. ``--data`` (or ``--csv``) names it outright; phase flags without ``--data``
    (``--split``, ``--classes``, ``--csv``, ``--images``) apply to the checkpoint's own data roots; no flag at
    all is the checkpoint config's test split. ``--split train|val|test`` is that phase of the config when
    the config defines it (a class list, a CSV or a subfolder), else a subfolder of the roots."""
    from .data import phase_spec

    data = config.data
    if args.data:
        return split_spec_from_args(args)
    if args.csv:
        return SplitSpec(tuple(data.root), csv=args.csv, images=args.images or data.images)
    if not args.checkpoint and not data.root:
        raise FewshotError("give the data: --data DIR (repeatable), or --csv FILE --images DIR")
    if args.split:
        if args.split in ("train", "val", "test") and phase_spec(data, args.split, required=False) is not None:
            spec = phase_spec(data, args.split)
            return SplitSpec(spec.roots, spec.split, spec.classes, spec.csv, args.images or spec.images)
        return SplitSpec(tuple(data.root), split=args.split)
    if args.classes:
        return SplitSpec(tuple(data.root), classes=args.classes)
    spec = phase_spec(data, "test")
    return SplitSpec(spec.roots, spec.split, spec.classes, spec.csv, args.images or spec.images)


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


def eval_sources(args: argparse.Namespace, config) -> list:
    """The sources to evaluate: with ``data.sources`` in the config and no data flag, each source's test split
    (or ``--split train|val|test``); else the one split of :func:`eval_split_spec`."""
    from .data import Source, phase_sources

    if config.data.sources and not (args.data or args.csv or args.classes):
        phase = args.split or "test"
        if phase not in ("train", "val", "test"):
            raise FewshotError(f"--split {phase}: with data.sources give train, val or test (or --data DIR)")
        return phase_sources(config.data, phase)
    return [Source("", eval_split_spec(args, config))]


def cmd_eval(args: argparse.Namespace) -> int:
    from .atomic import atomic_write_text, check_output
    from .data import open_source
    from .episode_sets import draw_episodes
    from .evaluate import evaluate_sources
    from .runtime import resolve_device

    if args.confusion:
        args.per_class = True
    json_path = check_output(args.json, "--json") if args.json else None
    confusion_path = check_output(args.confusion or "confusion.png", "--confusion") if args.per_class else None
    device = resolve_device(args.device or "auto")
    model, config = model_from_args(args)
    model.to(device)
    if args.cache_dir:
        config.data.cache_dir = args.cache_dir
    config.data.skip_corrupt = args.skip_corrupt
    config.data.protocol = args.protocol or config.data.protocol
    if config.data.protocol == "metadataset":
        given = [flag for flag, value in (("--ways", args.ways), ("--shots", args.shots), ("--queries", args.queries))
                 if value]
        if given:
            raise FewshotError(f"Meta-Dataset episodes draw ways, shots and queries per episode: drop {given[0]} "
                               "(or use --protocol fixed)")
    shape = (args.ways or config.eval.ways, args.shots or config.eval.shots, args.queries or config.eval.queries)
    episodes_count = args.episodes or config.eval.episodes
    sources = eval_sources(args, config)
    if args.per_class and len(sources) > 1:
        raise FewshotError("--per-class reports one split: add --data DIR (or evaluate one source at a time)")
    opened = [(source, open_source(config, source, shape, progress=not args.no_progress)) for source in sources]
    sets = draw_episodes(config, opened, shape, episodes_count, args.seed, model.head)
    result = evaluate_sources(model, sets, seed=args.seed, device=device, batch_size=args.batch_size,
                              progress=not args.no_progress, fast=False if args.plain else None,
                              precision=args.precision, refine=args.refine, refine_steps=args.refine_steps,
                              threshold=args.threshold, per_class=args.per_class)
    source = model_source(args, config)
    where = sources[0].spec.describe() if len(sources) == 1 else f"{len(sources)} test sources"
    described = {"backbone": config.model.backbone, "head": config.model.head, "protocol": config.data.protocol,
                 "data": [s.spec.describe() for s in sources] if len(sources) > 1 else where,
                 "checkpoint": config_checkpoint(args)}
    print(f"{source} on {where}: " + result.summary().replace(f"mean over {len(sources)} sources: ", "mean ")
          + (f" [refined: {args.refine}]" if args.refine != "none" else ""))
    outputs = []
    if args.per_class:
        outputs.append(("--confusion", lambda: print_per_class(result.extra["per_class"], str(confusion_path))))
    if json_path:
        outputs.append(("--json", lambda: atomic_write_text(json_path, json_io.dumps(result.to_json() | described,
                                                                                  indent=1))))
    return write_outputs(outputs)


def config_checkpoint(args: argparse.Namespace) -> str | None:
    """The checkpoint file the model came from (a run directory resolved to its best.pt), or None."""
    from .checkpoint import resolve_checkpoint

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
    from .plots import MAX_CONFUSION_CLASSES, plot_confusion

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
    from .classifier import FewShotClassifier

    model, config = model_from_args(args)
    classifier = FewShotClassifier.from_model(model, config, model_source(args, config), device=args.device or "auto")
    classifier.progress = not getattr(args, "no_progress", False)
    return classifier


def check_inputs(args: argparse.Namespace) -> list | None:
    """Before any model loads: the support folder (listed, not decoded) and the query paths; returns the
    query files (None when the command has no queries)."""
    from .classifier import folder_classes
    from .predict import expand_queries

    folder_classes(Path(args.support).expanduser())
    return expand_queries(args.query) if getattr(args, "query", None) else None


def cmd_predict(args: argparse.Namespace) -> int:
    from .atomic import check_output

    explain_dir = check_output(args.explain, "--explain", folder=True) if args.explain else None
    files = check_inputs(args)
    classifier = classifier_from_args(args)
    if explain_dir:
        from .capabilities import require

        require(classifier.model_, "explain", classifier.image_size)
    classifier.fit(args.support)
    results = classifier.explain(files, explain_dir) if explain_dir else classifier.details(files)
    if explain_dir:
        print(f"Grad-CAM heatmaps: {len(results)} PNG files in {explain_dir}", file=sys.stderr)
    if args.json:
        print(json_io.dumps(results, indent=1))
        return 0
    for item in results:
        ranked = sorted(item["probabilities"].items(), key=lambda kv: -kv[1])
        print(f"{item['query']}: {item['predicted']}  (" + ", ".join(f"{k} {v:.3f}" for k, v in ranked) + ")")
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from .atomic import atomic_write_text, check_output
    from .plots import plot_confusion

    json_out = check_output(args.json, "--json") if args.json else None
    confusion = check_output(args.confusion, "--confusion") if args.confusion else None
    check_inputs(args)
    classifier = classifier_from_args(args).fit(args.support)
    estimate = classifier.estimate(repeats=args.repeats, holdout=args.holdout, seed=args.seed,
                                   progress=classifier.progress)
    print(f"{estimate.summary()} with {classifier.source} on {args.support}")
    print("support images per class in each split: " + ", ".join(f"{k} {v}" for k, v in estimate.shots.items()))
    print_per_class(estimate.report, None)

    def write_confusion():
        if plot_confusion(estimate.report, confusion, "estimated confusion (fraction of each true class)"):
            print(f"confusion matrix: {confusion}")
        else:
            print("confusion matrix PNG skipped: too many classes to draw; the full matrix is in --json")

    outputs = [("--confusion", write_confusion)] if confusion else []
    if json_out:
        outputs.append(("--json", lambda: atomic_write_text(json_out, json_io.dumps(estimate.to_json(), indent=1))))
    return write_outputs(outputs)


def default_data_dir() -> str:
    """Where ``fewshot serve`` keeps projects by default: $FEWSHOT_DATA_DIR, else $XDG_DATA_HOME/fewshot/serve
    (~/.local/share/fewshot/serve)."""
    if os.environ.get("FEWSHOT_DATA_DIR"):
        return os.environ["FEWSHOT_DATA_DIR"]
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "fewshot", "serve")


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve.server import serve
    from .serve.uploads import Limits

    limits = Limits(max_file_bytes=int(args.max_file_mb * 1024 * 1024), max_pixels=args.max_pixels,
                    max_files_per_request=args.max_files, max_images_per_project=args.max_images,
                    max_request_bytes=int(args.max_request_mb * 1024 * 1024),
                    max_inflight_bytes=int(args.max_inflight_mb * 1024 * 1024))
    serve(lambda: classifier_from_args(args), args.data_dir or default_data_dir(), host=args.host, port=args.port,
          token=args.token, limits=limits, log_level="info" if args.access_log else "warning",
          cache_mb=args.cache_mb, max_jobs=args.max_jobs)
    return 0


def positive_number(text: str) -> float:
    """An argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def cmd_export(args: argparse.Namespace) -> int:
    from .atomic import check_output

    from .capabilities import require

    out = check_output(args.out, "--out")
    check_inputs(args)
    classifier = classifier_from_args(args)
    require(classifier.model_, "export")  # before the support images are read and embedded
    classifier.fit(args.support)
    if classifier.progress:
        print(f"exporting {args.format} ...", file=sys.stderr, flush=True)
    path = classifier.export(out, args.format)
    size, channels = classifier.image_size, classifier.channels
    described = {"torchscript": f"TorchScript: input uint8 (B, {channels}, {size}, {size}), output class probabilities; "
                                "class names in its class_names.json",
                 "onnx": "ONNX: input uint8 (B, H, W, 3) RGB of any size, output class probabilities; class names "
                         "in its metadata (class_names)",
                 "onnx-int8": "INT8-quantized ONNX: input uint8 (B, H, W, 3) RGB of any size, output class "
                              "probabilities; class names in its metadata (class_names)"}[args.format]
    print(f"exported {path}: {described}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    """List the recipes: what each bundles and what it measured."""
    from .heads import HEADS
    from .recipes import RECIPES

    for name, recipe in RECIPES.items():
        head = HEADS[recipe.head]
        kind = "transductive" if head.transductive else "inductive"
        print(f"{name}  ({kind}): {recipe.description}")
        if head.transductive:
            print(f"    fewshot eval uses {recipe.head} over each episode's queries; predict, the Python API, serve "
                  f"and estimate classify images one at a time with its inductive form: {head.inductive_form}; "
                  "not exportable")
        print(f"    {' '.join('--set ' + shlex.quote(item) for item in recipe.overrides())}")
        for benchmark, line in recipe.measured.items():
            print(f"    {benchmark}: {line}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, args.set, progress=not args.no_progress)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fewshot",
        description="Few-shot image classification: sample episodes, meta-train, evaluate with a 95% "
                    "confidence interval, and classify new classes from a few support images.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    episodes = commands.add_parser(
        "episodes", help="print N-way K-shot episodes as JSON lines (freeze and share evaluation episodes)",
        description="Print one JSON object per episode: {index, classes, support, query}, where support and "
                    "query hold one list of image paths per class, in label order (with --protocol metadataset "
                    "the support lists differ in length). Episode i of a seed is always the same, so the output "
                    "can be frozen and shared, or fed to other frameworks.",
    )
    add_data_arguments(episodes)
    episodes.add_argument("--protocol", choices=("fixed", "metadataset"), default="fixed",
                          help="fixed (default): N-way K-shot episodes; metadataset: Meta-Dataset's variable ways "
                               "(5-50), unbalanced shots and queries per episode, all classes of an episode from one "
                               "parent folder where classes have one (e.g. Omniglot's alphabets)")
    episodes.add_argument("--ways", type=int_at_least(2), metavar="N", help="classes per episode (fixed protocol)")
    episodes.add_argument("--shots", type=POSITIVE, metavar="K", help="support images per class (fixed protocol)")
    episodes.add_argument("--queries", type=NON_NEGATIVE, metavar="Q",
                          help="query images per class (fixed protocol; default 15)")
    episodes.add_argument("--episodes", type=POSITIVE, default=600, metavar="E", help="number of episodes (default 600)")
    episodes.add_argument("--seed", type=NON_NEGATIVE, default=0, metavar="S", help="episode seed (default 0)")
    episodes.add_argument("--start", type=NON_NEGATIVE, default=0, metavar="I", help="index of the first episode (default 0)")
    episodes.set_defaults(handler=cmd_episodes)

    glyphs = commands.add_parser(
        "glyphs", help="write a generated few-shot dataset of font glyphs (no download)",
        description="Write an Omniglot-like dataset: each class is one character drawn from the fonts that "
                    "matplotlib installs, under random font, rotation, scale, shift and noise; classes are split "
                    "into disjoint train / val / test subfolders.",
    )
    glyphs.add_argument("out", metavar="OUT_DIR", help="folder to write (train/, val/, test/ inside)")
    glyphs.add_argument("--train-classes", type=NON_NEGATIVE, default=110, help="classes in train/ (default 110)")
    glyphs.add_argument("--val-classes", type=NON_NEGATIVE, default=25, help="classes in val/ (default 25)")
    glyphs.add_argument("--test-classes", type=NON_NEGATIVE, default=45, help="classes in test/ (default 45)")
    glyphs.add_argument("--per-class", type=POSITIVE, default=20, help="images per class (default 20)")
    glyphs.add_argument("--size", type=int_at_least(8), default=28, help="image side in pixels (default 28)")
    glyphs.add_argument("--seed", type=NON_NEGATIVE, default=0, help="random seed (default 0)")
    glyphs.set_defaults(handler=cmd_glyphs)

    train = commands.add_parser(
        "train", help="meta-train on episodes (a YAML config, or --data DIR and model flags)",
        description="Episodic meta-training from a YAML config, or from flags alone (fewshot train --data DIR "
                    "--backbone conv4 --head protonet). The run directory receives config.yaml (the full resolved "
                    "config), metrics.jsonl, checkpoints/last.pt and best.pt, curves.png and summary.json.",
    )
    add_run_arguments(train, "train")
    train.set_defaults(handler=cmd_train)

    pretrain = commands.add_parser(
        "pretrain", help="supervised pretraining on all base classes (Baseline / Baseline++ / RFS)",
        description="Train the backbone with a linear or cosine classifier over every training class, on shuffled "
                    "batches (pretrain.* keys: epochs, batch_size, lr, classifier, mixup, cutmix, label_smoothing), "
                    "validating episodically after each epoch. Same run directory, --resume, SIGTERM handling and "
                    "torchrun support as fewshot train; the run directory works with fewshot eval, and its "
                    "checkpoints/best.pt as model.weights for fewshot train.",
    )
    add_run_arguments(pretrain, "pretrain")
    pretrain.set_defaults(handler=cmd_pretrain)

    evaluate = commands.add_parser(
        "eval", help="evaluate on episodes: accuracy ± 95%% confidence interval",
        description="Mean accuracy over episodes with its 95% interval (1.96 * std / sqrt(episodes)). Without data "
                    "flags, a checkpoint is evaluated on its config's test split. With a frozen backbone each "
                    "image is embedded once and reused across episodes.",
    )
    add_model_arguments(evaluate)
    add_data_arguments(evaluate)
    evaluate.add_argument("--ways", type=int_at_least(2), metavar="N",
                          help="classes per episode (default: the checkpoint config's eval.ways, else 5)")
    evaluate.add_argument("--shots", type=POSITIVE, metavar="K",
                          help="support images per class (default: the checkpoint config's eval.shots, else 5)")
    evaluate.add_argument("--queries", type=POSITIVE, metavar="Q",
                          help="query images per class (default: the checkpoint config's eval.queries, else 15)")
    evaluate.add_argument("--episodes", type=POSITIVE, metavar="E",
                          help="episodes, per source with data.sources (default: the checkpoint config's "
                               "eval.episodes, else 600)")
    evaluate.add_argument("--protocol", choices=("fixed", "metadataset"),
                          help="fixed: N-way K-shot episodes (--ways/--shots/--queries); metadataset: Meta-Dataset's "
                               "variable ways and unbalanced shots (limits from the config's metadataset section). "
                               "Default: the config's data.protocol, else fixed")
    evaluate.add_argument("--seed", type=NON_NEGATIVE, default=0,
                          help="episode seed (default 0); same seed, same episodes")
    evaluate.add_argument("--json", metavar="OUT", help="write accuracy, ci95, per-episode accuracies... as JSON")
    evaluate.add_argument("--batch-size", type=POSITIVE, default=256, help="images per embedding batch (default 256)")
    evaluate.add_argument("--plain", action="store_true",
                          help="embed every episode from its images instead of embedding each image once")
    evaluate.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                          help="auto (default): bfloat16 autocast on CUDA, float32 on the CPU; bf16: bfloat16 "
                               "autocast on the CPU too (about 2x faster on CPUs with AVX512-BF16/AMX, accuracy "
                               "may move by a fraction of the interval); fp32: no autocast anywhere")
    evaluate.add_argument("--refine", choices=("none", "soft_kmeans", "self_training"), default="none",
                          help="transductive refinement with the episode's unlabelled queries: soft k-means of the "
                               "prototypes (Ren et al. 2018) or self-training on confident pseudo-labels")
    evaluate.add_argument("--refine-steps", type=POSITIVE, default=1, help="soft k-means steps (default 1)")
    evaluate.add_argument("--threshold", type=fraction, default=0.9,
                          help="self-training: smallest probability for a pseudo-label (default 0.9)")
    evaluate.add_argument("--per-class", action="store_true",
                          help="per-class precision, recall and F1, and a confusion-matrix PNG")
    evaluate.add_argument("--confusion", metavar="PNG",
                          help="where the confusion matrix PNG goes (implies --per-class; default confusion.png "
                               "with --per-class)")
    evaluate.add_argument("--cache-dir", help="decoded-image cache folder (default $FEWSHOT_CACHE_DIR or "
                                              "~/.cache/fewshot)")
    evaluate.add_argument("--skip-corrupt", action="store_true", help="leave corrupt images out with a warning")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bars")
    evaluate.set_defaults(handler=cmd_eval)

    predict = commands.add_parser(
        "predict", help="classify images of new classes from a few support images per class",
        description="SUPPORT holds one subfolder per new class with a few images each. For each query image "
                    "(or each image of a query folder) print the predicted class and every class's probability.",
    )
    add_model_arguments(predict)
    predict.add_argument("--support", required=True, metavar="DIR", help="folder of class subfolders of images")
    predict.add_argument("--query", required=True, nargs="+", metavar="PATH", help="query images or folders")
    predict.add_argument("--json", action="store_true", help="print JSON instead of text")
    predict.add_argument("--explain", metavar="OUT_DIR",
                         help="also write a Grad-CAM heatmap over each query as OUT_DIR/<query>.gradcam.png")
    predict.add_argument("--no-progress", action="store_true", help="no progress bars")
    predict.set_defaults(handler=cmd_predict)

    estimate = commands.add_parser(
        "estimate", help="how accurate will predict be on my classes? cross-validated on the support images",
        description="Episodic cross-validation on your own labelled images: REPEATS random splits hold out a "
                    "fraction of every class's images and classify them with the rest as support. Prints the mean "
                    "accuracy with a 95%% interval over the held-out images, per-class precision / recall / F1, "
                    "and warns about classes with too few images. Every class needs at least 2 images.",
    )
    add_model_arguments(estimate)
    estimate.add_argument("--support", required=True, metavar="DIR", help="folder of class subfolders of images")
    estimate.add_argument("--repeats", type=int_at_least(1), default=50, help="random splits (default 50)")
    estimate.add_argument("--holdout", type=fraction, default=0.2,
                          help="fraction of each class held out per split, at least one image (default 0.2)")
    estimate.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the splits (default 0)")
    estimate.add_argument("--confusion", metavar="PNG", help="write the confusion matrix as a PNG")
    estimate.add_argument("--json", metavar="OUT", help="write the estimate, per-class scores and matrix as JSON")
    estimate.add_argument("--no-progress", action="store_true", help="no progress bars")
    estimate.set_defaults(handler=cmd_estimate)

    export = commands.add_parser(
        "export", help="export a model with a support folder's classes built in (ONNX, INT8 ONNX, TorchScript)",
        description="Write a standalone classifier of the support folder's classes. onnx (needs "
                    "fewshot[onnx]): onnxruntime alone runs it; input decoded RGB uint8 (B, H, W, 3) of any size, "
                    "resize and normalization in the graph; output class probabilities; class names in the "
                    "metadata (the default). onnx-int8: the same, quantized to 8 bits (calibrated on the support "
                    "images). torchscript: torch.jit.load alone runs it; input (B, C, H, W) uint8 at the model's size; class "
                    "names in the archive's class_names.json.",
    )
    add_model_arguments(export)
    export.add_argument("--support", required=True, metavar="DIR", help="folder of class subfolders of images")
    export.add_argument("--format", choices=("onnx", "onnx-int8", "torchscript"), default="onnx",
                        help="onnx (default, as in the Python API and the server), onnx-int8 or torchscript")
    export.add_argument("--out", required=True, metavar="FILE", help="file to write (.onnx, or .pt for torchscript)")
    export.add_argument("--no-progress", action="store_true", help="no progress bars")
    export.set_defaults(handler=cmd_export)

    serve = commands.add_parser(
        "serve", help="a web page and HTTP API: name classes, drop a few images in each, classify new ones",
        description="Serve the web page at / (add classes, drag images in or use the webcam, see the estimated "
                    "accuracy with its interval and confusion matrix, drop a new image to see its class, "
                    "probabilities and heatmap, export), the JSON API at /api/v1 and its docs at /docs. Projects, "
                    "images and their embeddings persist in --data-dir (SQLite + files). The model is named like "
                    "for predict (default: the 'default' recipe). Needs pip install 'fewshot[serve]'.",
    )
    add_model_arguments(serve)
    serve.add_argument("--data-dir", metavar="DIR",
                       help="folder for projects (default $FEWSHOT_DATA_DIR, else ~/.local/share/fewshot/serve)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only); any other needs --token")
    serve.add_argument("--port", type=int_at_least(1), default=8000, help="port (default 8000)")
    serve.add_argument("--token", help="access token every API request must carry (Authorization: Bearer TOKEN; the "
                                       "page asks for it); default $FEWSHOT_TOKEN; required unless the host is "
                                       "loopback")
    serve.add_argument("--max-file-mb", type=positive_number, default=20, help="largest upload file in MB (default 20)")
    serve.add_argument("--max-pixels", type=POSITIVE, default=40_000_000,
                       help="most pixels per image, checked before decoding (default 40000000)")
    serve.add_argument("--max-files", type=POSITIVE, default=100, help="most files per request (default 100)")
    serve.add_argument("--max-images", type=POSITIVE, default=5000, help="most images per project (default 5000)")
    serve.add_argument("--max-request-mb", type=positive_number, default=200,
                       help="largest request body in MB, all its files together (default 200); bounds the memory one "
                            "request can take")
    serve.add_argument("--max-inflight-mb", type=positive_number, default=400,
                       help="most request bytes being received at once, all clients together (default 400); past "
                            "it a request is answered 429 with Retry-After")
    serve.add_argument("--cache-mb", type=positive_number, default=2048,
                       help="memory for the projects' decoded images and embeddings, all projects together (default "
                            "2048); the least recently used projects are dropped first and rebuilt from disk")
    serve.add_argument("--max-jobs", type=POSITIVE, default=1,
                       help="heavy jobs (estimates, exports) running at once (default 1); past it a request is "
                            "answered 429 with Retry-After. Predictions always go first")
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(handler=cmd_serve)

    recipes = commands.add_parser(
        "recipes", help="list the pretrained recipes (no training) with their measured accuracy",
        description="A recipe bundles backbone, weights, resolution, test-time augmentation, feature transform and "
                    "head. 'default' is the most accurate inductive one (any shots, a single query works) and is "
                    "used by predict and eval when no model is given; 'transductive' also uses the episode's "
                    "unlabelled queries.",
    )
    recipes.set_defaults(handler=cmd_recipes)

    demo = commands.add_parser(
        "demo", help="generate a glyph dataset, meta-train, evaluate with intervals and predict (a few minutes)",
        description="The whole product on an embedded default: generates glyph classes from installed fonts (no "
                    "download), meta-trains a Conv4 prototypical network for about a minute, evaluates on unseen "
                    "classes with 95% intervals and classifies a few new images with predict.",
    )
    demo.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/demo-<date>-<time>)")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a key of the demo config (configs/demo.yaml), e.g. --set train.episodes=100")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fewshot`` console script."""
    _one_line_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.handler(args) or 0)
    except (FewshotError, EpisodesError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
