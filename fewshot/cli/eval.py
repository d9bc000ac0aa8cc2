"""``fewshot eval``: accuracy ± 95% interval over episodes."""

from __future__ import annotations

import argparse

from episodes import SplitSpec

from .. import json_io
from ..config import query_concentration
from ..errors import FewshotError
from . import common
from .common import (NON_NEGATIVE, POSITIVE, add_data_arguments, add_model_arguments, config_checkpoint, fraction,
                     int_at_least, model_source, print_per_class, split_spec_from_args, write_outputs)


NAME = "eval"
PARSER = dict(
    help="evaluate on episodes: accuracy ± 95%% confidence interval",
    description="Mean accuracy over episodes with its 95% interval (1.96 * std / sqrt(episodes)). Without data "
                "flags, a checkpoint is evaluated on its config's test split. With a frozen backbone each "
                "image is embedded once and reused across episodes.",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_data_arguments(parser)
    parser.add_argument("--ways", type=int_at_least(2), metavar="N",
                          help="classes per episode (default: the checkpoint config's eval.ways, else 5)")
    parser.add_argument("--shots", type=POSITIVE, metavar="K",
                          help="support images per class (default: the checkpoint config's eval.shots, else 5)")
    parser.add_argument("--queries", type=POSITIVE, metavar="Q",
                          help="query images per class (default: the checkpoint config's eval.queries, else 15)")
    parser.add_argument("--episodes", type=POSITIVE, metavar="E",
                          help="episodes, per source with data.sources (default: the checkpoint config's "
                               "eval.episodes, else 600)")
    parser.add_argument("--protocol", choices=("fixed", "metadataset"),
                          help="fixed: N-way K-shot episodes (--ways/--shots/--queries); metadataset: Meta-Dataset's "
                               "variable ways and unbalanced shots (limits from the config's metadataset section). "
                               "Default: the config's data.protocol, else fixed")
    parser.add_argument("--query-sampling", type=common.query_sampling, metavar="balanced|dirichlet:A",
                        help=common.QUERY_SAMPLING_HELP + " (default: the config's data.query_sampling, else balanced)")
    parser.add_argument("--seed", type=NON_NEGATIVE, default=0,
                          help="episode seed (default 0); same seed, same episodes")
    parser.add_argument("--json", metavar="OUT", help="write accuracy, ci95, per-episode accuracies... as JSON")
    parser.add_argument("--batch-size", type=POSITIVE, default=256, help="images per embedding batch (default 256)")
    parser.add_argument("--plain", action="store_true",
                          help="embed every episode from its images instead of embedding each image once")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                          help="auto (default): bfloat16 autocast on CUDA, float32 on the CPU; bf16: bfloat16 "
                               "autocast on the CPU too (about 2x faster on CPUs with AVX512-BF16/AMX, accuracy "
                               "may move by a fraction of the interval); fp32: no autocast anywhere")
    parser.add_argument("--refine", choices=("none", "soft_kmeans", "self_training"), default="none",
                          help="transductive refinement with the episode's unlabelled queries: soft k-means of the "
                               "prototypes (Ren et al. 2018) or self-training on confident pseudo-labels")
    parser.add_argument("--refine-steps", type=POSITIVE, default=1, help="soft k-means steps (default 1)")
    parser.add_argument("--threshold", type=fraction, default=0.9,
                          help="self-training: smallest probability for a pseudo-label (default 0.9)")
    parser.add_argument("--per-class", action="store_true",
                          help="per-class precision, recall and F1, and a confusion-matrix PNG")
    parser.add_argument("--confusion", metavar="PNG",
                          help="where the confusion matrix PNG goes (implies --per-class; default confusion.png "
                               "with --per-class)")
    parser.add_argument("--cache-dir", help="decoded-image cache folder (default $FEWSHOT_CACHE_DIR or "
                                              "~/.cache/fewshot)")
    parser.add_argument("--skip-corrupt", action="store_true", help="leave corrupt images out with a warning")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_scored_arguments(parser)
    from ..declared import constant, names

    group = parser.add_argument_group("open set ('none of these')")
    group.add_argument("--open-set", type=POSITIVE, metavar="U",
                       help="add U unseen classes to every episode (disjoint from its N, same queries per class, no "
                            "support images) and report, with 95%% intervals, the closed-set accuracy and the AUROC of "
                            "the unknown score separating unseen from known queries (PEELER / SnaTCHer protocol; "
                            "each query scored on its own, a transductive head by its inductive form)")
    default = constant("fewshot.inference.open_set", "DEFAULT_SCORE")
    group.add_argument("--unknown-score", choices=names("fewshot.inference.open_set", "SCORE_CHOICES"), default=default,
                       help=f"the unknown score with --open-set (default: {default}: energy, the best in "
                            "benchmarks/open_set.py, or distance where the head's logits are log-probabilities)")


def add_scored_arguments(parser: argparse.ArgumentParser) -> None:
    """``--support`` / ``--test``: one fitted classifier scored on a labelled folder (:func:`run_scored`)."""
    group = parser.add_argument_group("one classifier on a labelled test folder (instead of episodes)")
    group.add_argument("--support", metavar="DIR",
                       help="score ONE classifier instead of drawing episodes: fit it on this folder of class "
                            "subfolders (as predict does) and classify every image of --test")
    group.add_argument("--test", metavar="DIR",
                       help="with --support: labelled test images, one subfolder per class (named like the support's "
                            "classes); prints the accuracy with its 95%% interval, per-class precision / recall / F1 "
                            "(and --confusion, --json)")


def eval_split_spec(args: argparse.Namespace, config) -> SplitSpec:
    """The split to evaluate. ``--data`` (or ``--csv``) names it outright; phase flags without ``--data``
    (``--split``, ``--classes``, ``--csv``, ``--images``) apply to the checkpoint's own data roots; no flag at
    all is the checkpoint config's test split. ``--split train|val|test`` is that phase of the config when
    the config defines it (a class list, a CSV or a subfolder), else a subfolder of the roots."""
    from ..evaluation.data import phase_spec

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


def eval_sources(args: argparse.Namespace, config) -> list:
    """The sources to evaluate: with ``data.sources`` in the config and no data flag, each source's test split
    (or ``--split train|val|test``); else the one split of :func:`eval_split_spec`."""
    from ..evaluation.data import Source, phase_sources

    if config.data.sources and not (args.data or args.csv or args.classes):
        phase = args.split or "test"
        if phase not in ("train", "val", "test"):
            raise FewshotError(f"--split {phase}: with data.sources give train, val or test (or --data DIR)")
        return phase_sources(config.data, phase)
    return [Source("", eval_split_spec(args, config))]


def run(args: argparse.Namespace) -> int:
    from ..atomic import atomic_write_text, check_output
    from ..evaluation.data import open_source
    from ..evaluation.episode_sets import draw_episodes
    from ..evaluation.episodic import evaluate_sources
    from ..runtime import resolve_device

    if args.support or args.test:
        return run_scored(args)
    args.per_class = args.per_class or bool(args.confusion)
    json_path = check_output(args.json, "--json") if args.json else None
    confusion_path = check_output(args.confusion or "confusion.png", "--confusion") if args.per_class else None
    device = resolve_device(args.device or "auto")
    model, config = common.model_from_args(args)
    model.to(device)
    if args.cache_dir:
        config.data.cache_dir = args.cache_dir
    config.data.skip_corrupt = args.skip_corrupt
    config.data.protocol = args.protocol or config.data.protocol
    config.data.query_sampling = args.query_sampling or config.data.query_sampling
    query_concentration(config.data)
    if args.open_set:
        check_open_set_flags(args, config, model)
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
    if args.open_set:
        return run_open_set(args, model, config, opened, shape, episodes_count, device, json_path)
    sets = draw_episodes(config, opened, shape, episodes_count, args.seed, model.head)
    result = evaluate_sources(model, sets, seed=args.seed, device=device, batch_size=args.batch_size,
                              progress=not args.no_progress, fast=False if args.plain else None,
                              precision=args.precision, refine=args.refine, refine_steps=args.refine_steps,
                              threshold=args.threshold, per_class=args.per_class, runtime=args.runtime)
    source = model_source(args, config)
    where = sources[0].spec.describe() if len(sources) == 1 else f"{len(sources)} test sources"
    described = {"backbone": config.model.backbone, "head": config.model.head, "protocol": config.data.protocol,
                 "data": [s.spec.describe() for s in sources] if len(sources) > 1 else where,
                 "checkpoint": config_checkpoint(args)}
    sampling = config.data.query_sampling
    if sampling != "balanced":
        described["query_sampling"] = sampling
    print(f"{source} on {where}: " + result.summary().replace(f"mean over {len(sources)} sources: ", "mean ")
          + (f" [refined: {args.refine}]" if args.refine != "none" else "")
          + (f" [queries per class: {sampling}]" if sampling != "balanced" else ""))
    outputs = []
    if args.per_class:
        outputs.append(("--confusion", lambda: print_per_class(result.extra["per_class"], str(confusion_path))))
    if json_path:
        outputs.append(("--json", lambda: atomic_write_text(json_path, json_io.dumps(result.to_json() | described,
                                                                                  indent=1))))
    return write_outputs(outputs)


def check_open_set_flags(args: argparse.Namespace, config, model) -> None:
    """Before any data is opened: ``--open-set`` runs N-way K-shot episodes of one split without refinement or
    per-class report, with a head that can score unknowns."""
    from ..model.capabilities import require

    require(model, "open_set")
    clash = next((flag for flag, used in (("--protocol metadataset", config.data.protocol == "metadataset"),
                                          ("--refine", args.refine != "none"), ("--per-class", args.per_class),
                                          ("--plain", args.plain), ("--precision bf16", args.precision == "bf16"),
                                          ("--query-sampling", config.data.query_sampling != "balanced"))
                  if used), None)
    if clash:
        raise FewshotError(f"--open-set scores N-way K-shot episodes of fitted classifiers: drop {clash}")


def run_scored(args: argparse.Namespace) -> int:
    """``fewshot eval --support DIR --test DIR``: one classifier fitted on the support folder, scored on every test
    image (:meth:`fewshot.FewShotClassifier.score`)."""
    from ..atomic import atomic_write_text, check_output
    from ..plots import plot_confusion

    if not (args.support and args.test):
        raise FewshotError("--support and --test go together: the classifier is fitted on --support and scored on "
                           "--test")
    if args.data or args.open_set:
        raise FewshotError(f"{'--data' if args.data else '--open-set'} draws episodes; --support/--test score one "
                           "classifier: drop one of them")
    json_path = check_output(args.json, "--json") if args.json else None
    confusion = check_output(args.confusion, "--confusion") if args.confusion else None
    classifier = common.classifier_from_args(args).fit(args.support)
    result = classifier.score(args.test)
    print(f"{classifier.source} fitted on {args.support}, tested on {args.test}: {result.summary()}")
    print_per_class(result.report, None)
    outputs = []
    if confusion:
        outputs.append(("--confusion", lambda: plot_confusion(result.report, confusion, "test confusion (fraction "
                                                              "of each true class)")))
    if json_path:
        outputs.append(("--json", lambda: atomic_write_text(json_path, json_io.dumps(result.to_json(), indent=1))))
    return write_outputs(outputs)


def run_open_set(args: argparse.Namespace, model, config, opened: list, shape: tuple, episodes: int, device,
                 json_path) -> int:
    """``fewshot eval --open-set U``: :func:`fewshot.evaluation.open_set.evaluate_open_set` on the one split."""
    from ..atomic import atomic_write_text
    from ..evaluation.open_set import evaluate_open_set, open_set_summary

    if len(opened) > 1:
        raise FewshotError("--open-set evaluates one split: add --data DIR (or evaluate one source at a time)")
    source, split = opened[0]
    result = evaluate_open_set(model, split, *shape, episodes, args.open_set, args.seed, device, args.batch_size,
                               not args.no_progress, args.runtime, args.unknown_score, config.model.temperature)
    where = source.spec.describe()
    print(f"{model_source(args, config)} on {where}: closed-set {result.summary()}")
    print(open_set_summary(result))
    described = {"backbone": config.model.backbone, "head": config.model.head, "protocol": "open-set",
                 "data": where, "checkpoint": config_checkpoint(args)}
    outputs = [("--json", lambda: atomic_write_text(json_path, json_io.dumps(result.to_json() | described,
                                                                              indent=1)))] if json_path else []
    return write_outputs(outputs)
