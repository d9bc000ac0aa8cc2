"""Few-shot open-set recognition: how well each unknown score separates queries of the support classes from
queries of classes the classifier was never shown, per recipe, with closed-set accuracy alongside.

Protocol (PEELER / SnaTCHer): each episode draws 10 classes of the test split; the first 5 are known (``--shots``
support images each), the other 5 unknown; 15 queries of every class (75 known + 75 unknown). The recipe's
classifier is fitted on the known support set as a practitioner's is (:meth:`FewShotModel.fit`, the inductive
form of a transductive head, its calibration temperature); each candidate score of :mod:`fewshot.inference.open_set` ranks
the 150 queries. Reported: AUROC (known vs unknown) averaged over episodes with its 95% interval, and the
closed-set accuracy on the known queries. Embeddings come from ``benchmarks/accuracy.py``'s cache. Run::

    python benchmarks/open_set.py --data ../shared/data/tinyimagenet-fs --episodes 600
    python benchmarks/open_set.py --data ../shared/data/omniglot --split images_evaluation --per-class 20 \
        --classes 200 --recipes default   # characters ImageNet never saw
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from calibration import split_features  # noqa: E402

KNOWN, UNKNOWN, QUERIES = 5, 5, 15


def recipe_model(name: str, dim: int):
    from fewshot.backbones.conv4 import Conv4
    from fewshot.heads import build_head
    from fewshot.model.network import FewShotModel
    from fewshot.model.recipes import get_recipe

    recipe = get_recipe(name)
    model = FewShotModel(Conv4(in_channels=3), build_head(recipe.head, dim, (dim,), **recipe.head_options), 3,
                         recipe.transform)  # the backbone is never called: features are precomputed
    return model, recipe


def episode_scores(model, recipe, features: torch.Tensor, support: torch.Tensor, query: torch.Tensor, shots: int,
                   scores: list[str]) -> tuple[dict[str, float], float]:
    """AUROC per score and the closed-set accuracy of one episode (support ``(5*shots,)`` and query
    ``(10*15,)`` rows of ``features``; the first 75 queries are known)."""
    from fewshot.inference.calibration import temperature_for
    from fewshot.inference.open_set import auroc, fit_scores, unknown_scores
    from fewshot.model.transforms import transform_features

    labels = torch.arange(KNOWN).repeat_interleave(shots)
    fitted = model.fit(features[support], labels, KNOWN, temperature_for(recipe.temperature, shots))
    logits = model.fitted_logits(fitted, features[query]) * fitted.temperature
    known = KNOWN * QUERIES
    accuracy = float((logits[:known].argmax(-1) == torch.arange(KNOWN).repeat_interleave(QUERIES)).float().mean())
    transformed_support = transform_features(model.transform, fitted.transform, features[support].float())
    transformed_query = transform_features(model.transform, fitted.transform, features[query].float())
    areas = {}
    for score in scores:
        state = fit_scores(transformed_support, labels, KNOWN, score)
        values = unknown_scores(score, state, transformed_query, logits)
        areas[score] = auroc(values[:known], values[known:])
    return areas, accuracy


def run(name: str, features: torch.Tensor, sizes: list[int], shots: int, episodes: int, scores: list[str]) -> dict:
    from episodes import EpisodeSampler
    from fewshot.evaluation.embedded import episode_slots

    model, recipe = recipe_model(name, features.shape[1])
    sampler = EpisodeSampler(sizes, KNOWN + UNKNOWN, shots, QUERIES, seed=0)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    areas = {score: [] for score in scores}
    accuracies = []
    with torch.inference_mode():
        for index in range(episodes):
            support, query = map(torch.from_numpy, episode_slots([sampler.sample(index)], offsets))
            support = support[0, :KNOWN * shots]  # the unknown classes' support images are never shown
            found, accuracy = episode_scores(model, recipe, features, support, query[0], shots, scores)
            for score, area in found.items():
                areas[score].append(area)
            accuracies.append(accuracy)
    summary = {"recipe": name, "shots": shots, "episodes": episodes,
               "accuracy": 100 * float(np.mean(accuracies)),
               "accuracy_ci95": 196 * float(np.std(accuracies)) / np.sqrt(episodes)}
    for score, values in areas.items():
        summary[score] = 100 * float(np.mean(values))
        summary[f"{score}_ci95"] = 196 * float(np.std(values)) / np.sqrt(episodes)
    return summary


def main() -> None:
    from fewshot.inference.open_set import SCORES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/tinyimagenet-fs", help="folder with test/")
    parser.add_argument("--split", default="test")
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--classes", type=int, help="use this many classes of the split, spread over its sorted list")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--recipes", nargs="+", default=["default", "fast", "transductive"])
    parser.add_argument("--scores", nargs="+", default=list(SCORES), choices=SCORES)
    parser.add_argument("--json", default="benchmarks/results/open_set.jsonl")
    args = parser.parse_args()
    from fewshot.model.recipes import get_recipe

    torch.set_num_threads(os.cpu_count() or 1)
    print(f"# python benchmarks/open_set.py {' '.join(sys.argv[1:])}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    print("| recipe | shots | closed-set accuracy | " + " | ".join(f"AUROC {s}" for s in args.scores) + " |")
    print("|---|---:|---:|" + "---:|" * len(args.scores))
    with tempfile.TemporaryDirectory() as work, open(args.json, "a") as log:
        for name in args.recipes:
            backbone = get_recipe(name).backbone
            members = [{"efficientnet_lite0": "lite0", "efficientnet_lite2": "lite2"}[m]
                       for m in backbone.removeprefix("ensemble:").split("+")]
            features, sizes = split_features(Path(args.data) / args.split, args.per_class, members,
                                             Path(work) / name, args.classes)
            for shots in args.shots:
                row = run(name, features, sizes, shots, args.episodes, args.scores)
                print(f"| {name} | {shots} | {row['accuracy']:.2f} ± {row['accuracy_ci95']:.2f} | " + " | ".join(
                    f"{row[s]:.2f} ± {row[s + '_ci95']:.2f}" for s in args.scores) + " |", flush=True)
                log.write(json.dumps({**row, "data": f"{args.data}/{args.split}", "date": time.strftime("%Y-%m-%d"),
                                      "command": " ".join(sys.argv)}) + "\n")


if __name__ == "__main__":
    main()
