"""A recipe's temperature table fitted on several domains: ImageNet classes (tinyimagenet-fs *val*) and handwritten
characters (Omniglot's *background* alphabets), neither of which ``benchmarks/promises.py`` evaluates on (it uses
tinyimagenet-fs test, Omniglot's evaluation alphabets and four domains no table has seen).

For each number of shots, ``--episodes`` 5-way episodes (15 queries per class) per domain are classified through
the classifier's own calls (``FewShotClassifier.logits_for`` on embeddings made by ``embed``), and the temperature
minimising the negative log-likelihood pooled over the domains (each weighted equally) is printed, with each
domain's own best temperature beside it. Run::

    python benchmarks/temperature_mix.py --models default,fast,transductive
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from promises import SHARED, build_pool, model_for  # noqa: E402

FIT_DATASETS = {"tinyimagenet-val": SHARED / "tinyimagenet-fs" / "val",
                "omniglot-background": SHARED / "omniglot" / "images_background"}
SHOTS = (1, 2, 5, 10)


def episode_logits(clf, pool, shots: int, episodes: int, rng: np.random.Generator):
    """Uncalibrated logits ``(episodes * 5 * Q, 5)`` of 5-way episodes drawn from ``pool`` and their labels (``Q``
    = 15 queries per class, or as many as Omniglot's 20 drawings leave)."""
    logits, truth = [], []
    sizes = np.bincount(pool.labels)
    queries = min(15, int(np.sort(sizes)[-5]) - shots)
    eligible = np.flatnonzero(sizes >= shots + queries)
    for _ in range(episodes):
        chosen = rng.choice(eligible, 5, replace=False)
        support, query = [], []
        for c in chosen:
            rows = rng.permutation(np.flatnonzero(pool.labels == c))
            support.append(rows[:shots])
            query.append(rows[shots:shots + queries])
        labels = torch.arange(5).repeat_interleave(shots)
        logits.append(clf.logits_for(None, (None, pool.features[np.concatenate(support)], labels),
                                     pool.features[np.concatenate(query)]))
        truth.append(torch.arange(5).repeat_interleave(queries))
    return torch.cat(logits), torch.cat(truth)


def nll(logits: torch.Tensor, truth: torch.Tensor, temperature: float) -> float:
    return float(torch.nn.functional.cross_entropy(logits.double() * temperature, truth))


def best(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The temperature minimising the mean of the parts' mean negative log-likelihoods (golden section in log t)."""
    low, high = np.log(0.01), np.log(1000.0)
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(80):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        value_a = np.mean([nll(lg, t, np.exp(a)) for lg, t in parts])
        value_b = np.mean([nll(lg, t, np.exp(b)) for lg, t in parts])
        low, high = (low, b) if value_a < value_b else (a, high)
    return float(np.exp((low + high) / 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="default,fast,transductive")
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--max-classes", type=int, default=60)
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/fewshot-benchmarks/promises"))
    args = parser.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    import promises

    promises.DATASETS.update(FIT_DATASETS)
    for model in args.models.split(","):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf = model_for(model)
        pools = {name: build_pool(clf, name, args, cache) for name in FIT_DATASETS}
        table, per_domain = {}, {}
        for shots in SHOTS:
            parts = {name: episode_logits(clf, pool, shots, args.episodes, np.random.default_rng(shots))
                     for name, pool in pools.items()}
            table[shots] = round(best(list(parts.values())), 2)
            per_domain[shots] = {name: round(best([part]), 2) for name, part in parts.items()}
        print(f"{model}: mixed table {table}; per domain {per_domain}", flush=True)


if __name__ == "__main__":
    main()
