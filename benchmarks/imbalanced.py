"""Transductive heads on realistic query sets: accuracy on balanced episodes against episodes whose query class
proportions come from a symmetric Dirichlet (Veilleux et al., NeurIPS 2021, concentration 2), same support sets.

Each candidate runs on the same cached features (``benchmarks/accuracy.py``'s cache: EfficientNet-Lite2 ImageNet
features at 260 px of tinyimagenet-fs test, 60 images per class) with the ``transductive`` recipe's transform
(power + CL2N), 5-way, 75 queries per episode in both settings, the same seeds (balanced and imbalanced episode
``i`` have the same classes: both samplers draw them first from the same per-episode generator). Run::

    python benchmarks/imbalanced.py --data ../shared/data/tinyimagenet-fs --episodes 600
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

WAYS, QUERIES = 5, 15
CANDIDATES = {  # name -> (head, head options, refinement)
    "protonet (inductive)": ("protonet", {}, "none"),
    "soft k-means": ("protonet", {}, "soft_kmeans"),
    "pt_map (joint centring, old default)": ("pt_map", {"centring": "joint"}, "none"),
    "pt_map (separate centring)": ("pt_map", {"centring": "separate"}, "none"),
    "tim (l2 logits)": ("tim", {"logits": "l2"}, "none"),
    "tim (cosine logits)": ("tim", {"logits": "cosine"}, "none"),
    "alpha_tim": ("alpha_tim", {}, "none"),
    "alpha_tim (lr 1e-3, 300 steps)": ("alpha_tim", {"lr": 1e-3, "steps": 300}, "none"),
    "alpha_tim (alpha 5)": ("alpha_tim", {"alpha": 5.0}, "none"),
    "bd_cspn (T=10, old default)": ("bd_cspn", {"temperature": 10.0}, "none"),
    "bd_cspn (T=1)": ("bd_cspn", {"temperature": 1.0}, "none"),
    "laplacianshot": ("laplacianshot", {"temperature": 10.0, "rectify": False, "centre": False}, "none"),
    "laplacianshot (rectified prototypes)": ("laplacianshot", {"temperature": 10.0, "centre": False}, "none"),
    "laplacianshot (T=1)": ("laplacianshot", {"rectify": False, "centre": False}, "none"),
    "laplacianshot (rectified, T=1)": ("laplacianshot", {"rectify": True, "temperature": 1.0, "centre": False}, "none"),
    "laplacianshot (rectified, T=1, centred: defaults)": ("laplacianshot", {}, "none"),
}


def candidate_model(head: str, options: dict, dim: int):
    from fewshot.backbones.conv4 import Conv4
    from fewshot.heads import build_head
    from fewshot.model.network import FewShotModel

    return FewShotModel(Conv4(in_channels=3), build_head(head, dim, (dim,), **options), 3, "power_cl2n").eval()


def lite2_split(folder: Path) -> tuple[torch.Tensor, list[int], np.ndarray]:
    """The cached Lite2 features ``(N, E)`` of 60 images per class of ``folder``, its class sizes, and each
    class's first row."""
    with tempfile.TemporaryDirectory() as work:
        features, sizes = split_features(folder, 60, ["lite2"], Path(work) / "lite2")
    return features, sizes, np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def episode_rows(drawn, offsets: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(support rows, support labels, query rows, query labels) of one drawn episode, ragged queries allowed."""
    support = np.concatenate([offsets[c] + s for c, s in zip(drawn.classes, drawn.support)])
    query = np.concatenate([offsets[c] + q for c, q in zip(drawn.classes, drawn.query)])
    shots = [len(s) for s in drawn.support]
    counts = [len(q) for q in drawn.query]
    return (torch.from_numpy(support), torch.arange(WAYS).repeat_interleave(torch.tensor(shots)),
            torch.from_numpy(query), torch.arange(WAYS).repeat_interleave(torch.tensor(counts)))


def accuracy(model, refine: str, features: torch.Tensor, drawn: list, offsets: np.ndarray) -> tuple[float, float]:
    """Mean accuracy and 95% interval (percent) of ``model`` over ``drawn`` episodes."""
    from fewshot.inference.refine import classify_refined

    found = []
    with torch.inference_mode():
        for d in drawn:
            support, labels, query, truth = episode_rows(d, offsets)
            logits = classify_refined(model, features[support], labels, features[query], WAYS, refine, 1, 0.9)
            found.append(float((logits.argmax(-1) == truth).float().mean()))
    values = np.array(found)
    return 100 * float(values.mean()), 196 * float(values.std(ddof=1)) / np.sqrt(len(values))


def main() -> None:
    from episodes import DirichletQuerySampler, EpisodeSampler

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/tinyimagenet-fs", help="folder with test/ (and val/)")
    parser.add_argument("--split", default="test", help="the split whose classes are drawn (val: to choose "
                        "hyper-parameters without looking at test)")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--alpha", type=float, default=2.0, help="Dirichlet concentration (default 2)")
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--methods", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES),
                        help="the candidates to run (default: all)")
    parser.add_argument("--json", default="benchmarks/results/imbalanced.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"# python benchmarks/imbalanced.py {' '.join(sys.argv[1:])}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    features, sizes, offsets = lite2_split(Path(args.data) / args.split)
    print("| method | shots | balanced | Dirichlet(%g) | change |" % args.alpha)
    print("|---|---:|---:|---:|---:|")
    with open(args.json, "a") as log:
        for shots in args.shots:
            balanced = [EpisodeSampler(sizes, WAYS, shots, QUERIES, 0).sample(i) for i in range(args.episodes)]
            skewed = [DirichletQuerySampler(sizes, WAYS, shots, QUERIES, args.alpha, 0).sample(i)
                      for i in range(args.episodes)]
            for name in args.methods:
                head, options, refine = CANDIDATES[name]
                model = candidate_model(head, options, features.shape[1])
                (even, even_ci), (real, real_ci) = (accuracy(model, refine, features, drawn, offsets)
                                                    for drawn in (balanced, skewed))
                print(f"| {name} | {shots} | {even:.2f} ± {even_ci:.2f} | {real:.2f} ± {real_ci:.2f} | "
                      f"{real - even:+.2f} |", flush=True)
                log.write(json.dumps({"method": name, "split": args.split, "shots": shots, "alpha": args.alpha,
                                      "episodes": args.episodes,
                                      "balanced": even, "balanced_ci95": even_ci, "dirichlet": real,
                                      "dirichlet_ci95": real_ci, "date": time.strftime("%Y-%m-%d"),
                                      "command": " ".join(sys.argv)}) + "\n")


if __name__ == "__main__":
    main()
