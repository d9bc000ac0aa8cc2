"""A batch of images through ``FewShotClassifier.predict_proba`` against the same classifier's ONNX export run by
onnxruntime, side by side in one process, first call included (#36: ``--runtime auto`` must not be the slowest
choice for a batch).

Each row builds its classifier afresh (a new model, so no conversion in memory is shared with another row), fits it
on the support set, then times ``predict_proba`` of ``--images`` image paths twice. The graph cache
(:mod:`fewshot.inference.graph_cache`) starts empty; the ``auto`` row is run twice, the second finding the graph the first
kept on disk, as a later process does. The export row times
``onnxruntime.InferenceSession(path).run`` on the same images decoded to uint8 (what an application does), the
session created inside the timing. Run::

    python benchmarks/batch_predict.py --recipe fast --support ../shared/data/tinyimagenet-fs/test --images 100
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def support_and_queries(folder: Path, classes: int, shots: int, images: int) -> tuple[dict, list[Path]]:
    names = sorted(p for p in folder.iterdir() if p.is_dir())[:classes]
    support = {p.name: sorted(p.iterdir())[:shots] for p in names}
    queries = [f for p in names for f in sorted(p.iterdir())[shots:shots + images // classes + 1]][:images]
    return support, queries


def time_classifier(recipe: str, runtime: str, support: dict, queries: list[Path]) -> tuple[float, float]:
    from fewshot import FewShotClassifier

    clf = FewShotClassifier(recipe, runtime=runtime).fit(support)
    clf.predict_proba(queries[:1])  # the fitted state made (and the calibration's splits run) outside the timing
    times = []
    for _ in range(2):
        start = time.perf_counter()
        clf.predict_proba(queries)
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def time_export(recipe: str, support: dict, queries: list[Path]) -> tuple[float, float]:
    import onnxruntime
    from PIL import Image

    from fewshot import FewShotClassifier

    with tempfile.TemporaryDirectory() as work:
        path = FewShotClassifier(recipe).fit(support).export(Path(work) / "model.onnx")
        times = []
        for _ in range(2):
            start = time.perf_counter()
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            for i in range(0, len(queries), 32):
                for file in queries[i:i + 32]:  # the graph takes one size per batch: one image per call
                    pixels = np.asarray(Image.open(file).convert("RGB"))[None]
                    session.run(None, {name: pixels})
            times.append(time.perf_counter() - start)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--support", default="../shared/data/tinyimagenet-fs/test")
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--runtimes", default="auto,onnxruntime,jit,eager")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    support, queries = support_and_queries(Path(args.support), args.classes, args.shots, args.images)
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    print(f"{args.recipe}, {len(queries)} images, {platform.machine()} {model}, {time.strftime('%Y-%m-%d')}")
    print("| path | first call s | images/s | second call s | images/s |")
    print("|---|---:|---:|---:|---:|")
    os.environ["FEWSHOT_CACHE_DIR"] = tempfile.mkdtemp()  # the graph cache starts empty
    rows = {}
    for r in args.runtimes.split(","):
        label = f"predict_proba, runtime {r}" + (", graph cache empty" if r == "auto" else "")
        rows[label] = lambda r=r: time_classifier(args.recipe, r, support, queries)
        if r == "auto":  # the converted graph the row above kept on disk, as the next process finds it
            rows["predict_proba, runtime auto, graph kept on disk"] = lambda: time_classifier(args.recipe, "auto",
                                                                                               support, queries)
    rows["ONNX export in onnxruntime"] = lambda: time_export(args.recipe, support, queries)
    for name, run in rows.items():
        first, second = run()
        print(f"| {name} | {first:.2f} | {len(queries) / first:.1f} | {second:.2f} | {len(queries) / second:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
