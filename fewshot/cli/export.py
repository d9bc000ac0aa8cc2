"""``fewshot export``: a standalone classifier (ONNX, INT8 ONNX, TorchScript)."""

from __future__ import annotations

import argparse
import sys

from . import common
from .common import add_model_arguments


NAME = "export"
PARSER = dict(
    help="export a model with a support folder's classes built in (ONNX, INT8 ONNX, TorchScript)",
    description="Write a standalone classifier of the support folder's classes. onnx (needs "
                "fewshot[onnx]): onnxruntime alone runs it; input decoded RGB uint8 (B, H, W, 3) of any size, "
                "resize and normalization in the graph; output class probabilities; class names in the "
                "metadata (the default). onnx-int8: the same, quantized to 8 bits (calibrated on the support "
                "images). torchscript: torch.jit.load alone runs it; input (B, C, H, W) uint8 at the model's size; class "
                "names in the archive's class_names.json.",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--support", required=True, metavar="DIR", help="folder of class subfolders of images")
    parser.add_argument("--format", choices=("onnx", "onnx-int8", "torchscript"), default="onnx",
                        help="onnx (default, as in the Python API and the server), onnx-int8 or torchscript")
    parser.add_argument("--out", required=True, metavar="FILE", help="file to write (.onnx, or .pt for torchscript)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..atomic import check_output

    from ..model.capabilities import require

    out = check_output(args.out, "--out")
    common.check_inputs(args)
    classifier = common.classifier_from_args(args)
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
