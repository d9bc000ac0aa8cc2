"""``fewshot predict``: classify new images from a support folder."""

from __future__ import annotations

import argparse
import sys


from .. import json_io
from . import common
from .common import add_model_arguments


NAME = "predict"
PARSER = dict(
    help="classify images of new classes from a few support images per class",
    description="SUPPORT holds one subfolder per new class with a few images each. For each query image "
                "(or each image of a query folder) print the predicted class and every class's probability.",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--support", required=True, metavar="DIR", help="folder of class subfolders of images")
    parser.add_argument("--query", required=True, nargs="+", metavar="PATH", help="query images or folders")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--explain", metavar="OUT_DIR",
                         help="also write a Grad-CAM heatmap over each query as OUT_DIR/<query>.gradcam.png")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..atomic import check_output

    explain_dir = check_output(args.explain, "--explain", folder=True) if args.explain else None
    files = common.check_inputs(args)
    classifier = common.classifier_from_args(args)
    if explain_dir:
        from ..capabilities import require

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
