"""One-image prediction after ``fit``: the cost of ``predict_proba`` against embedding that image alone, with the
classifier fitted once (the fitted-classifier contract) and, for comparison, refitted per prediction (what
``predict_proba`` did before: the probe's 100 steps on every call). Optionally the ONNX export of the same
classifier: seconds, graph nodes against the backbone's own graph, and agreement with ``predict_proba``.

Support sets of 25 and 2,000 images (5 classes) are made with ``set_examples``: the images are never embedded
here, so the features are random non-negative vectors of the model's embedding size (a prediction's cost does
not depend on their values). Run::

    python benchmarks/fitted_predict.py --recipe default --sizes 25 2000 --export
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def median_seconds(call, repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def classifier_with(recipe: str, count: int, classes: int = 5):
    from fewshot import FewShotClassifier
    from fewshot.inference.examples import ClassExamples

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = FewShotClassifier(recipe)
    size, channels = clf.image_size, clf.channels
    generator = torch.Generator().manual_seed(0)
    probe = clf.embed(torch.zeros(1, channels, size, size, dtype=torch.uint8))
    examples = {}
    for c in range(classes):
        n = count // classes
        images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=generator)
        features = torch.rand(n, probe.shape[1], generator=generator) + c * 0.05
        examples[f"class{c}"] = ClassExamples(images, features, [f"{c}-{i}.png" for i in range(n)],
                                              [f"{c}-{i}" for i in range(n)])
    return clf.set_examples(examples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--sizes", nargs="+", type=int, default=[25, 2000])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--export", action="store_true", help="also export ONNX (at the first size) and count nodes")
    args = parser.parse_args()
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")),
                      platform.processor())
    print(f"# python benchmarks/fitted_predict.py {' '.join(sys.argv[1:])}; {model_name}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print("| recipe | support images | embed 1 image (ms) | predict_proba, fitted once (ms) | ratio | "
          "predict_proba, refitted per call (ms) | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for count in args.sizes:
        clf = classifier_with(args.recipe, count)
        image = np.random.default_rng(1).integers(0, 256, (clf.image_size, clf.image_size, 3)).astype(np.uint8)
        tensor = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()
        clf.fitted_  # noqa: B018 - fit once, as after fit()
        embed = median_seconds(lambda: clf.embed(tensor), args.repeats)
        fitted = median_seconds(lambda: clf.predict_proba(image), args.repeats)
        _, features, labels = clf.support()
        model = clf.model_

        def refitted():
            with torch.inference_mode():
                query = clf.embed(tensor)
                return model.head.probabilities(model.classify(features, labels, query, 5))

        refit = median_seconds(refitted, max(3, args.repeats // 3))
        print(f"| {args.recipe} | {count} | {embed * 1000:.1f} | {fitted * 1000:.1f} | {fitted / embed:.2f} | "
              f"{refit * 1000:.1f} | {refit / embed:.2f} |", flush=True)
    if args.export:
        import onnx
        import onnxruntime

        clf = classifier_with(args.recipe, args.sizes[0])
        with tempfile.TemporaryDirectory() as work:
            started = time.perf_counter()
            path = clf.export(Path(work) / "model.onnx", "onnx")
            seconds = time.perf_counter() - started
            nodes = onnx.load(str(path)).graph.node
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            images = np.random.default_rng(2).integers(0, 256, (4, clf.image_size, clf.image_size, 3)).astype(np.uint8)
            difference = np.abs(session.run(None, {"images": images})[0] - clf.predict_proba(list(images))).max()
        ops = sorted({n.op_type for n in nodes})
        print(f"\nONNX export of '{args.recipe}' with {args.sizes[0]} support images: {seconds:.1f} s, "
              f"{len(nodes)} nodes, Loop in graph: {'Loop' in ops}, largest difference to predict_proba "
              f"{difference:.2e}")


if __name__ == "__main__":
    main()
