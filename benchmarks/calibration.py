"""Calibration of the recipes' probabilities: the temperature table each recipe carries, and the expected
calibration error (ECE) before and after it.

Every recipe is run as a practitioner uses it: fitted once on a support set (:meth:`FewShotModel.fit`, the
inductive form for a transductive head), each query classified on its own. For each number of shots, the
temperature that minimises the negative log-likelihood is fitted on 5-way episodes of the *val* classes; the
ECE (15 equal-width bins of the top probability) is measured on 600 episodes of the *test* classes with
temperature 1 (the head's own scale) and with the fitted table (interpolated in log shots, as
:func:`fewshot.inference.calibration.temperature_for` does). Embeddings come from ``benchmarks/accuracy.py``'s cache.
Run::

    python benchmarks/calibration.py --data ../shared/data/tinyimagenet-fs --per-class 60
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from accuracy import BACKBONES, embeddings, subset  # noqa: E402

FITTED_SHOTS = (1, 2, 5, 10)
TESTED_SHOTS = (1, 2, 3, 5, 10)


def split_features(folder: Path, per_class: int, members: list[str], work: Path, classes: int | None = None):
    """(features of every image ``(N, E)``, class sizes) of a split (``classes`` of its classes, spread over the
    sorted list, when given), ensemble members normalized and joined."""
    from episodes import SplitSpec, open_split

    root = subset(folder, per_class, work, classes)
    parts = []
    for member in members:
        split = open_split(SplitSpec((str(root),)), image_size=BACKBONES[member][1], channels=3, progress=False)
        parts.append(embeddings(member, split, 64)[0])
    features = parts[0] if len(parts) == 1 else torch.cat([F.normalize(p, dim=-1) for p in parts], dim=1)
    return features, split.class_sizes


def episode_logits(recipe_name: str, features: torch.Tensor, sizes: list[int], shots: int, episodes: int,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Uncalibrated logits ``(episodes, 75, 5)`` of the recipe's fitted classifier and the true labels."""
    from episodes import EpisodeSampler
    from fewshot.backbones.conv4 import Conv4
    from fewshot.evaluation.embedded import episode_slots
    from fewshot.heads import build_head
    from fewshot.model.network import FewShotModel
    from fewshot.model.recipes import get_recipe

    recipe = get_recipe(recipe_name)
    dim = features.shape[1]
    model = FewShotModel(Conv4(in_channels=3), build_head(recipe.head, dim, (dim,), **recipe.head_options), 3,
                         recipe.transform)  # the backbone is never called: features are precomputed
    sampler = EpisodeSampler(sizes, 5, shots, 15, seed)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    support, query = map(torch.from_numpy, episode_slots([sampler.sample(i) for i in range(episodes)], offsets))
    labels = torch.arange(5).repeat_interleave(shots)
    with torch.inference_mode():
        logits = torch.cat([model.fitted_logits(model.fit(features[support[i:i + 50]], labels, 5),
                                                features[query[i:i + 50]]) for i in range(0, episodes, 50)])
    return logits, torch.arange(5).repeat_interleave(15).expand(episodes, -1)


def best_temperature(logits: torch.Tensor, truth: torch.Tensor) -> float:
    """The temperature minimising the mean negative log-likelihood (golden-section search in log space)."""
    def nll(log_t: float) -> float:
        return F.cross_entropy((logits * np.exp(log_t)).flatten(0, 1), truth.flatten()).item()

    low, high = np.log(0.05), np.log(500.0)
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        low, high = (low, b) if nll(a) < nll(b) else (a, high)
    return float(np.exp((low + high) / 2))


def expected_calibration_error(probabilities: torch.Tensor, truth: torch.Tensor, bins: int = 15) -> float:
    confidence, predicted = probabilities.flatten(0, 1).max(-1)
    correct = (predicted == truth.flatten()).float()
    edges = torch.linspace(0, 1, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            error += inside.float().mean().item() * abs(correct[inside].mean().item() - confidence[inside].mean().item())
    return error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/tinyimagenet-fs", help="folder with val/ and test/")
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--recipes", nargs="+", default=["default", "fast", "transductive"])
    args = parser.parse_args()
    from fewshot.inference.calibration import temperature_for
    from fewshot.model.recipes import get_recipe

    torch.set_num_threads(os.cpu_count() or 1)
    print(f"# python benchmarks/calibration.py {' '.join(sys.argv[1:])}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    print("| recipe | shots | accuracy | mean top probability, T=1 | ECE, T=1 | T (table) | mean top probability | ECE |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as work:
        for name in args.recipes:
            backbone = get_recipe(name).backbone
            members = [{"efficientnet_lite0": "lite0", "efficientnet_lite2": "lite2"}[m]
                       for m in backbone.removeprefix("ensemble:").split("+")]
            val = split_features(Path(args.data) / "val", args.per_class, members, Path(work) / f"{name}-val")
            test = split_features(Path(args.data) / "test", args.per_class, members, Path(work) / f"{name}-test")
            table = {k: round(best_temperature(*episode_logits(name, *val, k, args.episodes, 1)), 2)
                     for k in FITTED_SHOTS}
            print(f"{name}: fitted on val: model.temperature = {table}", flush=True)
            for shots in TESTED_SHOTS:
                logits, truth = episode_logits(name, *test, shots, args.episodes, 0)
                accuracy = (logits.argmax(-1) == truth).float().mean().item() * 100
                before = logits.softmax(-1)
                t = temperature_for(table, shots)
                after = (logits * t).softmax(-1)
                print(f"| {name} | {shots} | {accuracy:.2f} | {before.amax(-1).mean():.3f} | "
                      f"{expected_calibration_error(before, truth):.3f} | {t:.2f} | {after.amax(-1).mean():.3f} | "
                      f"{expected_calibration_error(after, truth):.3f} |", flush=True)


if __name__ == "__main__":
    main()
