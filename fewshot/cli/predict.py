"""``fewshot predict``: classify new images from a support folder."""

from __future__ import annotations

import argparse
import sys

from .. import json_io
from . import common
from .common import add_model_arguments, add_open_set_arguments


NAME = "predict"
PARSER = dict(
    help="classify images of new classes from a few support images per class",
    description="SUPPORT holds one subfolder per new class with a few images each. For each query image "
                "(or each image of a query folder) print the predicted class and every class's probability; "
                "with --unknown auto, 'unknown' for images that look like none of the classes.",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--support", required=True, metavar="DIR", help="folder of class subfolders of images")
    parser.add_argument("--query", required=True, nargs="+", metavar="PATH", help="query images or folders")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--explain", metavar="OUT_DIR",
                         help="also write a Grad-CAM heatmap over each query as OUT_DIR/<query>.gradcam.png")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_open_set_arguments(parser, answers=True)


def run(args: argparse.Namespace) -> int:
    from ..atomic import check_output

    explain_dir = check_output(args.explain, "--explain", folder=True) if args.explain else None
    files = common.check_inputs(args)
    classifier = common.classifier_from_args(args)
    if explain_dir:
        from ..model.capabilities import require

        require(classifier.model_, "explain", classifier.image_size)
    classifier.fit(args.support)
    threshold = unknown_threshold(classifier, args)
    results = (classifier.explain(files, explain_dir, threshold, args.unknown_name) if explain_dir
               else classifier.details(files, threshold, args.unknown_name))
    if explain_dir:
        print(f"Grad-CAM heatmaps: {len(results)} PNG files in {explain_dir}", file=sys.stderr)
    if args.json:
        print(json_io.dumps(results, indent=1))
        return 0
    for item in results:
        ranked = sorted(item["probabilities"].items(), key=lambda kv: -kv[1])
        unknown = (f"; unknown score {item['unknown_score']:.4g} {'>' if item['unknown'] else '<='} {threshold:.4g}"
                   if threshold is not None else "")
        print(f"{item['query']}: {item['predicted']}  (" + ", ".join(f"{k} {v:.3f}" for k, v in ranked)
              + unknown + ")")
    return 0


def unknown_threshold(classifier, args: argparse.Namespace) -> float | None:
    """The ``--unknown`` threshold (None without it); for ``auto``, says on stderr how it was chosen."""
    if args.unknown is None:
        return None
    threshold = classifier.unknown_threshold(args.unknown, args.recall, args.unknown_name)
    if args.unknown == "auto":
        print(classifier.open_set_estimate(args.recall).summary(), file=sys.stderr)
    return threshold
