"""Cross-check of the transductive heads against easyfsl 1.5.0 on identical features and identical episodes.

Both sides get the same tensors: cached EfficientNet-Lite2 ImageNet features of tinyimagenet-fs test (260 px, 60
images per class; ``benchmarks/accuracy.py``'s cache) after the ``power_cl2n`` transform fitted on each episode's
support, 5-way, 15 queries per class, the episodes of ``EpisodeSampler`` seed 0. Every pair runs with matched
hyper-parameters (the columns say which); a row reports both accuracies and the share of queries whose predicted
class is the same. Differences that remain are named in the ``differs`` column: they are the implementations'
own choices, not the inputs. PT-MAP's easyfsl side gets the features after our ``centred`` preprocessing (easyfsl
itself applies a power transform and nothing else), so the comparison is of the transport and update steps.
Run::

    pip install --no-deps --target benchmarks/.peers easyfsl==1.5.0 pandas python-dateutil tzdata six
    python benchmarks/peer_transductive.py --data ../shared/data/tinyimagenet-fs --episodes 600
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from imbalanced import QUERIES, WAYS, episode_rows, lite2_split  # noqa: E402
from peers import import_easyfsl  # noqa: E402

PAIRS = {  # name -> (our head, its options, easyfsl class name, its options, what still differs)
    "protonet": ("protonet", {}, "PrototypicalNetworks", {}, "nothing (same argmax: -d^2 vs -d)"),
    "pt_map": ("pt_map", {"steps": 30, "centring": "separate"}, "PTMAP", {"fine_tuning_steps": 30},
               "Sinkhorn: ours 50 fixed iterations, easyfsl to tolerance 1e-6"),
    "tim": ("tim", {"logits": "cosine", "temperature": 10.0, "lr": 1e-4, "steps": 50, "ce_weight": 1.0}, "TIM", {},
            "nothing"),
    "bd_cspn": ("bd_cspn", {"temperature": 1.0}, "BDCSPN", {},
                "ours classifies the shifted queries, easyfsl the unshifted ones"),
    "laplacianshot": ("laplacianshot", {"rectify": True, "centre": False, "temperature": 1.0, "neighbors": 2,
                                        "lam": 0.7, "iterations": 20}, "LaplacianShot", {},
                      "ours symmetrises the kNN graph; easyfsl's knn=3 keeps 2 neighbours, stops on the bound"),
}


def easyfsl_method(name: str, options: dict) -> nn.Module:
    """easyfsl's class ``name`` on features given as they are (PT-MAP's own power transform switched off)."""
    import_easyfsl()
    from easyfsl import methods

    cls = getattr(methods, name)
    if name == "PTMAP":
        cls = type("PlainPTMAP", (cls,), {"compute_features": lambda self, x: x})
    return cls(backbone=nn.Identity(), **options).eval()


def compare(pair: str, features: torch.Tensor, drawn: list, offsets: np.ndarray) -> dict:
    """Accuracy of both sides (percent, with 95% intervals) and the share of queries predicted alike."""
    from fewshot.heads import build_head
    from fewshot.heads.pt_map import centred
    from fewshot.model.transforms import apply_transform

    head_name, options, peer_name, peer_options, _ = PAIRS[pair]
    ours = build_head(head_name, features.shape[1], (features.shape[1],), **options).eval()
    peer = easyfsl_method(peer_name, peer_options)
    mine, theirs, same = [], [], []
    for d in drawn:
        support_rows, labels, query_rows, truth = episode_rows(d, offsets)
        support, query = apply_transform("power_cl2n", features[support_rows], features[query_rows])
        with torch.no_grad():
            predicted = ours(support, labels, query, WAYS).argmax(-1)
            if pair == "pt_map":  # easyfsl's PT-MAP preprocesses by the power transform only: give it ours
                support, query = (x[0] for x in centred(support[None], query[None], "separate"))
            peer.process_support_set(support, labels)
            peer_predicted = peer(query).argmax(-1)
        mine.append(float((predicted == truth).float().mean()))
        theirs.append(float((peer_predicted == truth).float().mean()))
        same.append(float((predicted == peer_predicted).float().mean()))

    def interval(values: list) -> tuple[float, float]:
        values = np.array(values)
        return 100 * float(values.mean()), 196 * float(values.std(ddof=1)) / np.sqrt(len(values))

    return {"ours": interval(mine), "easyfsl": interval(theirs), "agreement": 100 * float(np.mean(same))}


def settings(options: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in options.items()) or "defaults"


def main() -> None:
    from episodes import DirichletQuerySampler, EpisodeSampler

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/tinyimagenet-fs", help="folder with test/")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--alpha", type=float, help="Dirichlet concentration of the query proportions "
                                                     "(default: balanced queries)")
    parser.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=list(PAIRS))
    parser.add_argument("--json", default="benchmarks/results/peer_transductive.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"# python benchmarks/peer_transductive.py {' '.join(sys.argv[1:])}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    features, sizes, offsets = lite2_split(Path(args.data) / "test")
    print("| method | shots | ours | easyfsl 1.5.0 | same prediction | matched | still differs |")
    print("|---|---:|---:|---:|---:|---|---|")
    with open(args.json, "a") as log:
        for shots in args.shots:
            drawn = [(DirichletQuerySampler(sizes, WAYS, shots, QUERIES, args.alpha, 0) if args.alpha
                      else EpisodeSampler(sizes, WAYS, shots, QUERIES, 0)).sample(i) for i in range(args.episodes)]
            for pair in args.pairs:
                found = compare(pair, features, drawn, offsets)
                (ours, ours_ci), (peer, peer_ci) = found["ours"], found["easyfsl"]
                _, options, _, peer_options, differs = PAIRS[pair]
                print(f"| {pair} | {shots} | {ours:.2f} ± {ours_ci:.2f} | {peer:.2f} ± {peer_ci:.2f} | "
                      f"{found['agreement']:.2f} % | ours {settings(options)}; easyfsl {settings(peer_options)} | "
                      f"{differs} |", flush=True)
                log.write(json.dumps({"pair": pair, "shots": shots, "alpha": args.alpha, "episodes": args.episodes,
                                      **found, "date": time.strftime("%Y-%m-%d"),
                                      "command": " ".join(sys.argv)}) + "\n")


if __name__ == "__main__":
    main()
