"""``fewshot estimate``: cross-validated accuracy on the user's own images."""

from __future__ import annotations

import argparse

from .. import json_io
from ..declared import constant
from . import common
from .common import add_model_arguments, add_open_set_arguments, fraction, int_at_least, print_per_class, write_outputs


NAME = "estimate"
PARSER = dict(
    help="how accurate will predict be on my classes? cross-validated on the support images",
    description="Episodic cross-validation on your own labelled images: REPEATS random splits hold out a "
                "fraction of every class's images and classify them with the rest as support. Prints the mean "
                "accuracy with a 95%% interval over the held-out images, per-class precision / recall / F1, "
                "and warns about classes with too few images. Every class needs at least 2 images. With 3 or more "
                "classes it also holds each class out in turn as an unseen one: how well 'none of these' works "
                "(AUROC with a 95%% interval) and the threshold predict --unknown auto uses.",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--support", required=True, metavar="DIR", help="folder of class subfolders of images")
    parser.add_argument("--repeats", type=int_at_least(1), default=50, help="random splits (default 50)")
    parser.add_argument("--holdout", type=fraction, default=constant("fewshot.inference.estimate", "DEFAULT_HOLDOUT"),
                        help="fraction of each class held out per split, at least one image (default %(default)s)")
    parser.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the splits (default 0)")
    parser.add_argument("--confusion", metavar="PNG", help="write the confusion matrix as a PNG")
    parser.add_argument("--json", metavar="OUT", help="write the estimate, per-class scores and matrix as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_open_set_arguments(parser, estimates=True)


def run(args: argparse.Namespace) -> int:
    from ..atomic import atomic_write_text, check_output
    from ..plots import plot_confusion

    json_out = check_output(args.json, "--json") if args.json else None
    confusion = check_output(args.confusion, "--confusion") if args.confusion else None
    common.check_inputs(args)
    classifier = common.classifier_from_args(args).fit(args.support)
    estimate = classifier.estimate(repeats=args.repeats, holdout=args.holdout, seed=args.seed,
                                   progress=classifier.progress, open_set=not args.no_open_set, recall=args.recall)
    print(f"{estimate.summary()} with {classifier.source} on {args.support}")
    print("support images per class in each split: " + ", ".join(f"{k} {v}" for k, v in estimate.shots.items()))
    print_per_class(estimate.report, None)
    if estimate.open_set is not None:
        print(estimate.open_set.summary())
    elif estimate.open_set_refused:
        print(f"no 'none of these' estimate: {estimate.open_set_refused}")

    def write_confusion():
        if plot_confusion(estimate.report, confusion, "estimated confusion (fraction of each true class)"):
            print(f"confusion matrix: {confusion}")
        else:
            print("confusion matrix PNG skipped: too many classes to draw; the full matrix is in --json")

    outputs = [("--confusion", write_confusion)] if confusion else []
    if json_out:
        outputs.append(("--json", lambda: atomic_write_text(json_out, json_io.dumps(estimate.to_json(), indent=1))))
    return write_outputs(outputs)
