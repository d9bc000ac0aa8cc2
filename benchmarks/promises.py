"""Do the numbers fewshot prints about ONE user's support set hold for that set? Checked over many random support
sets of real images, per support set, through the calls a user makes.

For every row (a model x ways x shots), ``--supports`` random support sets are drawn, cycling through the
datasets (tinyimagenet-fs test, the four crossdomain domains, Omniglot's evaluation alphabets). Each support set
is given to ``FewShotClassifier.set_examples`` (images at the model's size with their embeddings: every image of a
dataset is embedded once per model, as the classifier itself would embed it), then ``estimate()`` and the ``auto``
threshold run exactly as ``fewshot estimate`` / ``predict --unknown auto`` / the page run them, and the promises
are checked on new images:

* accuracy: does the estimate's 95% interval contain the accuracy on new images of the support's classes? Pearson
  correlation of estimate and truth over the supports.
* known kept: new images of the support's classes at or below the ``auto`` threshold, against the promise (within
  5 points? inside its interval?).
* unknown rejected: images of classes outside the support above the threshold, against the promise (inside its
  interval?).
* probabilities: expected calibration error (10 equal-width bins) on each support's new images, averaged over the
  supports, and pooled over all of them; for the classifier's calibration (``support``) and the recipe's table alone.

Rows print as a Markdown table and are appended to ``benchmarks/results/promises.jsonl``. Run::

    python benchmarks/promises.py --models default,fast,transductive,lite0-protonet,run:/tmp/runs/conv4 \\
        --ways 5,10 --shots 1,5,10 --supports 48
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from records import append_record  # noqa: E402

SHARED = HERE.parent.parent / "shared" / "data"
DATASETS = {"tinyimagenet": SHARED / "tinyimagenet-fs" / "test", "gtsrb": SHARED / "crossdomain" / "gtsrb",
            "chars74k": SHARED / "crossdomain" / "chars74k", "fruits": SHARED / "crossdomain" / "fruits",
            "yalefaces": SHARED / "crossdomain" / "yalefaces", "omniglot": SHARED / "omniglot" / "images_evaluation"}
MODELS = {"lite0-protonet": dict(backbone="efficientnet_lite0", head="protonet", weights="imagenet")}


@dataclass
class Pool:
    """One dataset at one model's size: images ``(N, C, S, S)`` uint8, embeddings ``(N, E)``, labels ``(N,)``."""

    images: torch.Tensor
    features: torch.Tensor
    labels: np.ndarray
    files: list[str]


def classes_of(name: str, per_class: int, max_classes: int, rng: np.random.Generator) -> list[tuple[str, list[Path]]]:
    """(class name, up to ``per_class`` files) for up to ``max_classes`` classes of a dataset (Omniglot: characters
    of its evaluation alphabets)."""
    root = DATASETS[name]
    if name.startswith("omniglot"):
        folders = sorted(c for a in sorted(root.iterdir()) for c in sorted(a.iterdir()))
    else:
        folders = sorted(p for p in root.iterdir() if p.is_dir())
    folders = [folders[i] for i in sorted(rng.permutation(len(folders))[:max_classes])]
    found = []
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.is_file())
        found.append((f"{folder.parent.name}/{folder.name}", [files[i] for i in rng.permutation(len(files))[:per_class]]))
    return found


def build_pool(clf, name: str, args, cache: Path) -> Pool:
    """Every image of ``name`` used by the benchmark at ``clf``'s size and embedded by ``clf`` (cached on disk)."""
    from fewshot.inference.inputs import as_batch, prepare_images

    classes = classes_of(name, args.per_class, args.max_classes, np.random.default_rng(0))
    files = [str(f) for _, fs in classes for f in fs]
    labels = np.concatenate([[i] * len(fs) for i, (_, fs) in enumerate(classes)])
    images = as_batch(prepare_images(files, clf.image_size, clf.channels))
    key = hashlib.sha1(("\n".join(files) + clf.source + str(clf.image_size)).encode()).hexdigest()[:16]
    path = cache / f"{key}.pt"
    if path.exists():
        features = torch.load(path)
    else:
        clf.progress = True
        features = clf.embed(images)
        clf.progress = False
        torch.save(features, path)
    return Pool(images, features, labels, files)


def draw(pool: Pool, ways: int, shots: int, rng: np.random.Generator, max_known: int, max_unknown: int):
    """(support rows per class, known test rows, their labels 0..ways-1, unknown test rows) of one support set."""
    sizes = np.bincount(pool.labels)
    eligible = np.flatnonzero(sizes >= shots + 2)
    chosen = rng.choice(eligible, ways, replace=False)
    support, known, truth = [], [], []
    for i, c in enumerate(chosen):
        rows = rng.permutation(np.flatnonzero(pool.labels == c))
        support.append(rows[:shots])
        known += list(rows[shots:shots + max_known])
        truth += [i] * len(rows[shots:shots + max_known])
    others = np.flatnonzero(~np.isin(pool.labels, chosen))
    unknown = rng.choice(others, min(max_unknown, len(others)), replace=False)
    return support, np.array(known), np.array(truth), unknown


def ece(probabilities: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error, 10 equal-width bins of the top probability (the plug-in estimate: with a
    hundred images it is about 0.05 even for a perfectly calibrated classifier; see :func:`debiased_ece`)."""
    confidence, predicted = probabilities.max(1), probabilities.argmax(1)
    right = predicted == truth
    edges = np.minimum((confidence * bins).astype(int), bins - 1)
    return float(sum(abs(right[edges == b].mean() - confidence[edges == b].mean()) * (edges == b).mean()
                     for b in range(bins) if (edges == b).any()))


def ece_floor(probabilities: np.ndarray, draws: int = 20, seed: int = 0) -> float:
    """The plug-in ECE a perfectly calibrated classifier would show on these images: each image right with
    probability equal to its top probability, averaged over ``draws`` draws (what :func:`ece` reads as error
    that is only the count of images)."""
    rng = np.random.default_rng(seed)
    confidence = probabilities.max(1)
    fake = np.zeros_like(probabilities)
    fake[:, 0] = confidence
    fake[:, 1:] = ((1 - confidence) / (probabilities.shape[1] - 1))[:, None]
    return float(np.mean([ece(fake, np.where(rng.random(len(confidence)) < confidence, 0, 1)) for _ in range(draws)]))


def debiased_ece(probabilities: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    """The L2 calibration error with each bin's sampling variance subtracted (Kumar, Liang & Ma 2019,
    "Verified uncertainty calibration"): sqrt(max(0, sum_b w_b ((acc_b - conf_b)^2 - acc_b (1 - acc_b) /
    (n_b - 1)))). Near 0 for a calibrated classifier however few the images."""
    confidence, right = probabilities.max(1), (probabilities.argmax(1) == truth).astype(float)
    edges = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = edges == b
        if inside.sum() < 2:
            continue
        accuracy = right[inside].mean()
        gap = (accuracy - confidence[inside].mean()) ** 2 - accuracy * (1 - accuracy) / (inside.sum() - 1)
        total += inside.mean() * gap
    return float(np.sqrt(max(total, 0.0)))


def check_support(clf, pool: Pool, support, known, truth, unknown) -> dict:
    """Fit on one support set, ask for every promise, measure each on the new images."""
    from fewshot.inference.examples import ClassExamples

    examples = {f"c{i}": ClassExamples(pool.images[rows], pool.features[rows], [pool.files[r] for r in rows],
                                       [pool.files[r] for r in rows]) for i, rows in enumerate(support)}
    clf.set_examples(examples)
    clf.calibration = "support"
    shots = len(support[0])
    found = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probabilities, known_scores = clf.scores_for(pool.features[known])
        found["factor"] = clf.fitted_.info["factor"]
        found["accuracy"] = 100 * float((probabilities.argmax(1).numpy() == truth).mean())
        found["ece"] = ece(probabilities.numpy(), truth)
        found["debiased_ece"] = debiased_ece(probabilities.numpy(), truth)
        found["ece_floor"] = ece_floor(probabilities.numpy())
        found["confidence"] = np.column_stack([probabilities.numpy().max(1), probabilities.numpy().argmax(1) == truth])
        if shots >= 2:
            estimate = clf.estimate()
            found.update(estimate=estimate.accuracy, low=estimate.low, high=estimate.high, images=estimate.images)
            open_set = estimate.open_set
            if open_set is not None:
                _, unknown_scores = clf.scores_for(pool.features[unknown])
                found.update(kept=100 * float((known_scores <= open_set.threshold).double().mean()),
                             kept_promise=open_set.known_kept, kept_low=open_set.known_kept_low,
                             kept_high=open_set.known_kept_high,
                             rejected=100 * float((unknown_scores > open_set.threshold).double().mean()),
                             rejected_promise=open_set.unknown_rejected, rejected_low=open_set.unknown_rejected_low,
                             rejected_high=open_set.unknown_rejected_high, auroc=open_set.auroc)
        clf.calibration = "table"
        table = clf.scores_for(pool.features[known])[0].numpy()
        found["ece_table"] = ece(table, truth)
        found["debiased_ece_table"] = debiased_ece(table, truth)
        found["confidence_table"] = np.column_stack([table.max(1), table.argmax(1) == truth])
    return found


def summarize_row(results: list[dict]) -> dict:
    def share(condition) -> float:
        values = [condition(r) for r in results if "estimate" in r]
        return 100 * float(np.mean(values)) if values else float("nan")

    def pooled(key: str) -> float:
        stacked = np.concatenate([r[key] for r in results])
        confidence, right = stacked[:, 0], stacked[:, 1]
        edges = np.minimum((confidence * 10).astype(int), 9)
        return float(sum(abs(right[edges == b].mean() - confidence[edges == b].mean()) * (edges == b).mean()
                         for b in range(10) if (edges == b).any()))

    with_open = [r for r in results if "kept" in r]
    estimates = [r for r in results if "estimate" in r]
    row = {"supports": len(results), "accuracy": float(np.mean([r["accuracy"] for r in results])),
           **{key: float(np.mean([r[key] for r in results]))
              for key in ("ece", "ece_table", "debiased_ece", "debiased_ece_table", "ece_floor")},
           "pooled_ece": pooled("confidence"), "pooled_ece_table": pooled("confidence_table"),
           "factor": float(np.median([r["factor"] for r in results]))}
    if estimates:
        row.update(coverage=share(lambda r: r["low"] <= r["accuracy"] <= r["high"]),
                   estimate=float(np.mean([r["estimate"] for r in estimates])),
                   correlation=float(np.corrcoef([r["estimate"] for r in estimates],
                                                 [r["accuracy"] for r in estimates])[0, 1]))
    if with_open:
        row.update(kept=float(np.mean([r["kept"] for r in with_open])),
                   kept_within_5=100 * float(np.mean([abs(r["kept"] - r["kept_promise"]) <= 5 for r in with_open])),
                   kept_inside=100 * float(np.mean([r["kept_low"] <= r["kept"] <= r["kept_high"] for r in with_open])),
                   rejected=float(np.mean([r["rejected"] for r in with_open])),
                   rejected_promise=float(np.mean([r["rejected_promise"] for r in with_open])),
                   rejected_inside=100 * float(np.mean([r["rejected_low"] <= r["rejected"] <= r["rejected_high"]
                                                         for r in with_open])),
                   rejected_error=float(np.mean([abs(r["rejected"] - r["rejected_promise"]) for r in with_open])))
    return row


def model_for(name: str):
    from fewshot import FewShotClassifier

    if name.startswith("run:"):
        return FewShotClassifier(name[4:])
    if name in MODELS:
        return FewShotClassifier(**MODELS[name])
    return FewShotClassifier(name)


HEADER = ("| model | ways | shots | supports | accuracy | estimate | interval covers | r(est, truth) | kept "
          "| kept within 5 of promise | kept inside interval | rejected (promised) | rejected inside interval "
          "| ECE per support (table) [if calibrated] | debiased ECE per support (table) | pooled ECE (table) |")


def format_row(model: str, ways: int, shots: int, row: dict) -> str:
    def number(key: str, digits: int = 1) -> str:
        value = row.get(key)
        return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"

    return (f"| {model} | {ways} | {shots} | {row['supports']} | {number('accuracy')} | {number('estimate')} | "
            f"{number('coverage', 0)} % | {number('correlation', 2)} | {number('kept')} | {number('kept_within_5', 0)} % | "
            f"{number('kept_inside', 0)} % | {number('rejected')} ({number('rejected_promise')}) | "
            f"{number('rejected_inside', 0)} % | {number('ece', 3)} ({number('ece_table', 3)}) "
            f"[{number('ece_floor', 3)}] | "
            f"{number('debiased_ece', 3)} ({number('debiased_ece_table', 3)}) | "
            f"{number('pooled_ece', 3)} ({number('pooled_ece_table', 3)}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="default,fast,transductive,lite0-protonet",
                        help="comma-separated recipes, lite0-protonet (efficientnet_lite0 + protonet, temperature "
                             "1) or run:DIR (a trained run or checkpoint)")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--ways", default="5,10")
    parser.add_argument("--shots", default="1,5,10")
    parser.add_argument("--supports", type=int, default=48, help="random support sets per row")
    parser.add_argument("--per-class", type=int, default=40, help="images per class read from each dataset")
    parser.add_argument("--max-classes", type=int, default=60, help="classes read from each dataset")
    parser.add_argument("--known", type=int, default=30, help="new images per support class, at most")
    parser.add_argument("--unknown", type=int, default=300, help="images of other classes per support set")
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/fewshot-benchmarks/promises"))
    parser.add_argument("--out", default=str(HERE / "results" / "promises.jsonl"))
    parser.add_argument("--per-support", metavar="JSONL", help="also write every support set's measurements here")
    args = parser.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    datasets = args.datasets.split(",")
    torch.manual_seed(0)
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    for model in args.models.split(","):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf = model_for(model)
        pools = {name: build_pool(clf, name, args, cache) for name in datasets}
        for ways in map(int, args.ways.split(",")):
            for shots in map(int, args.shots.split(",")):
                rng = np.random.default_rng(1000 * ways + shots)
                started = time.perf_counter()
                results = []
                for index in range(args.supports):
                    pool = pools[datasets[index % len(datasets)]]
                    results.append(check_support(clf, pool, *draw(pool, ways, shots, rng, args.known, args.unknown)))
                row = summarize_row(results)
                if args.per_support:
                    for found in results:
                        append_record(Path(args.per_support), {"model": model, "ways": ways, "shots": shots, **{
                            k: v for k, v in found.items() if not k.startswith("confidence")}})
                print(format_row(model, ways, shots, row), flush=True)
                append_record(Path(args.out), {"model": model, "ways": ways, "shots": shots, **row,
                                               "datasets": datasets, "seconds": time.perf_counter() - started,
                                               "machine": platform.processor() or platform.machine(),
                                               "date": time.strftime("%Y-%m-%d")})


if __name__ == "__main__":
    main()
