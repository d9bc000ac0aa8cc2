"""Adapting in bfloat16 on the CPU (#35 item 4): the time of one adaptation (5 classes x 5 images, the default
recipe's Lite0 top, 40 steps) in fp32 and bf16, alternated in one process, and the paired accuracy of the two
adapted models on the same 5-way 5-shot episodes (10 queries per class). Run::

    python benchmarks/adapt_precision.py --data ../shared/data/crossdomain/gtsrb --episodes 8
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder of class folders")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--recipe", default="default")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from fewshot import FewShotClassifier
    from fewshot.inference.adaptation import AdaptSettings, adapt_model
    from fewshot.inference.inputs import prepare_images

    clf = FewShotClassifier(args.recipe)
    base = clf.model_.eval()
    folders = sorted(p for p in Path(args.data).iterdir() if p.is_dir())
    rng = np.random.default_rng(0)
    times = {"fp32": [], "bf16": []}
    right = {"fp32": [], "bf16": []}
    for episode in range(args.episodes):
        chosen = [folders[i] for i in rng.choice(len(folders), 5, replace=False)]
        files = [sorted(f.iterdir()) for f in chosen]
        picks = [[f[i] for i in rng.choice(len(f), 15, replace=False)] for f in files]
        support = torch.stack([torch.from_numpy(image.pixels).permute(2, 0, 1)
                               for p in picks for image in prepare_images(p[:5], clf.image_size, clf.channels)])
        labels = torch.arange(5).repeat_interleave(5)
        queries = [q for p in picks for q in p[5:]]
        truth = np.repeat(np.arange(5), 10)
        for precision in ("fp32", "bf16") if episode % 2 == 0 else ("bf16", "fp32"):
            start = time.perf_counter()
            adapted = adapt_model(base, support, labels, 5, replace(AdaptSettings(), precision=precision))
            times[precision].append(time.perf_counter() - start)
            fitted = FewShotClassifier.from_model(adapted, clf.config_, adapt="none")
            fitted.progress = False
            fitted.fit({str(i): p[:5] for i, p in enumerate(picks)})
            answers = fitted.predict(queries)
            right[precision].append(float(np.mean(np.array(answers) == truth.astype(str))))
    diff = np.array(right["bf16"]) - np.array(right["fp32"])
    half = 196 * diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    print(f"fp32: {np.median(times['fp32']):.1f} s per adaptation (median of {len(times['fp32'])}), accuracy "
          f"{100 * np.mean(right['fp32']):.1f} %")
    print(f"bf16: {np.median(times['bf16']):.1f} s per adaptation, accuracy {100 * np.mean(right['bf16']):.1f} % "
          f"(paired difference {100 * diff.mean():+.1f} ± {half:.1f} points); speed-up "
          f"{np.median(times['fp32']) / np.median(times['bf16']):.2f}x")


if __name__ == "__main__":
    main()
