"""Grad-CAM on real photos: for each recipe, how many heatmaps are flat (the same value everywhere, what the
default recipe drew before the ensemble's members were explained one by one), their spread, and their cost
against a prediction of the same images.

Support: ``--shots`` images of ``--ways`` classes of a folder of class folders; queries: the next
``--queries`` images of each class. Run::

    python benchmarks/heatmaps.py --data ../shared/data/tinyimagenet-fs/test --ways 5 --shots 5 --queries 4
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/tinyimagenet-fs/test")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--recipes", nargs="+", default=["default", "fast", "transductive"])
    args = parser.parse_args()
    from episodes.discovery import is_image_file
    from fewshot import FewShotClassifier

    classes = sorted(p for p in Path(args.data).iterdir() if p.is_dir())[:: max(1, 20 // args.ways)][: args.ways]
    files = {c.name: sorted(f for f in c.iterdir() if is_image_file(f.name)) for c in classes}
    support = {name: paths[: args.shots] for name, paths in files.items()}
    queries = [p for paths in files.values() for p in paths[args.shots: args.shots + args.queries]]
    print(f"# python benchmarks/heatmaps.py {' '.join(sys.argv[1:])}; {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d')}")
    print("| recipe | queries | flat heatmaps | mean std of a heatmap | predicted right | predict ms/image | "
          "heatmap ms/image | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    truth = [p.parent.name for p in queries]
    for recipe in args.recipes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf = FewShotClassifier(recipe).fit(support)
        clf.predict(queries[:1])  # warm-up
        started = time.perf_counter()
        predicted = clf.predict(queries)
        predict = (time.perf_counter() - started) / len(queries)
        started = time.perf_counter()
        maps = clf.heatmaps(queries)
        explain = (time.perf_counter() - started) / len(queries)
        spread = maps.reshape(len(maps), -1).std(axis=1)
        right = np.mean([p == t for p, t in zip(predicted, truth)]) * 100
        print(f"| {recipe} | {len(queries)} | {(spread < 1e-6).sum()} | {spread.mean():.3f} | {right:.0f} % | "
              f"{predict * 1000:.0f} | {explain * 1000:.0f} | {explain / predict:.1f} |", flush=True)


if __name__ == "__main__":
    main()
