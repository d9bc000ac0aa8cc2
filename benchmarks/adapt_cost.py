"""What adapting costs a user (#35 item 4): fitting 5 classes x 5 images and answering the first query, with
``adapt`` none / top / auto, each in a fresh process (CPU seconds, wall seconds, peak memory). The first query
is inside the timing because an adapting classifier adapts (and runs its folds, for the calibration) on first
need. Run::

    python benchmarks/adapt_cost.py --support ../shared/data/crossdomain/gtsrb
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def one(recipe: str, adapt: str, support: str, classes: int, shots: int) -> dict:
    import warnings

    from fewshot import FewShotClassifier

    warnings.simplefilter("ignore")
    folders = sorted(p for p in Path(support).iterdir() if p.is_dir())[:classes]
    chosen = {p.name: sorted(p.iterdir())[:shots] for p in folders}
    query = sorted(folders[0].iterdir())[shots]
    clf = FewShotClassifier(recipe, adapt=adapt)
    wall, cpu = time.perf_counter(), time.process_time()
    clf.fit(chosen)
    clf.predict([query])
    found = {"recipe": recipe, "adapt": adapt, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
             "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             "adapted": clf.model_ is not clf.base_model_}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--support", default="../shared/data/crossdomain/gtsrb")
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--one", nargs=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.recipe, args.one[0], args.support, args.classes, args.shots)))
        return
    print("| adapt | fit + first query, wall s | CPU s | peak memory MB | adapted |")
    print("|---|---:|---:|---:|---|")
    for adapt in ("none", "top", "auto"):
        done = subprocess.run([sys.executable, __file__, "--one", adapt, "--support", args.support, "--recipe",
                               args.recipe, "--classes", str(args.classes), "--shots", str(args.shots)],
                              capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {adapt} | {row['wall_s']:.1f} | {row['cpu_s']:.1f} | {row['peak_mb']:.0f} | {row['adapted']} |",
              flush=True)


if __name__ == "__main__":
    main()
