"""Does ``FewShotClassifier.estimate`` tell a user the truth? Its estimate from five images per class against
the accuracy the same classifier reaches on a large held-out set of the same classes.

Each trial draws ``--ways`` classes of the folder at random and, per class, ``--shots`` support images and
``--held-out`` other images. The classifier is fitted on the support images, ``estimate()`` is computed from
them alone, and the held-out images give the accuracy the user will really see. Rows are appended to
``benchmarks/results/estimate.jsonl``; the summary says how often the truth fell inside the interval. Run::

    python benchmarks/estimate.py --data ../shared/data/tinyimagenet-fs/test --trials 8
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from records import append_record  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/tinyimagenet-fs/test", help="folder of class folders")
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=5, help="labelled images per class the user has")
    parser.add_argument("--held-out", type=int, default=40, help="other images per class, the truth")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    from episodes import discover_classes
    from fewshot import FewShotClassifier

    classes = discover_classes([Path(args.data)])
    rng = np.random.default_rng(0)
    clf = FewShotClassifier(args.recipe)
    inside = 0
    print("| trial | classes | estimate (5 images per class) | held-out accuracy | truth inside the interval |")
    print("|---|---|---:|---:|---|")
    for trial in range(args.trials):
        chosen = rng.choice(len(classes), args.ways, replace=False)
        support, held, truth = {}, [], []
        for index in chosen:
            image_class = classes[index]
            files = [image_class.files[i] for i in rng.permutation(len(image_class.files))]
            support[image_class.name] = files[: args.shots]
            held += files[args.shots: args.shots + args.held_out]
            truth += [image_class.name] * args.held_out
        started = time.perf_counter()
        clf.fit(support)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            estimate = clf.estimate(repeats=args.repeats)
        actual = 100 * float(np.mean(np.asarray(clf.predict(held)) == np.asarray(truth)))
        hit = estimate.low <= actual <= estimate.high
        inside += hit
        names = ", ".join(sorted(support))
        print(f"| {trial} | {names} | {estimate.accuracy:.1f} ({estimate.low:.1f}-{estimate.high:.1f}) | {actual:.1f} | "
              f"{'yes' if hit else 'no'} |", flush=True)
        append_record(HERE / "results" / "estimate.jsonl", {
            "trial": trial, "classes": sorted(support), "recipe": args.recipe, "shots": args.shots,
            "estimate": estimate.accuracy, "low": estimate.low, "high": estimate.high, "held_out_accuracy": actual,
            "held_out_images": len(held), "inside": bool(hit), "seconds": time.perf_counter() - started,
            "command": " ".join(["python benchmarks/estimate.py", *sys.argv[1:]]),
            "machine": f"{os.cpu_count()} cores {platform.machine()}, CPU", "date": time.strftime("%Y-%m-%d")})
    print(f"truth inside the 95% interval in {inside} of {args.trials} trials")


if __name__ == "__main__":
    main()
