"""Does batching variable (Meta-Dataset) episodes by padding pay in evaluation? Times, on one split:
embedding every image the episodes use once, then classifying the episodes one by one (what
``fewshot.evaluation.episodic`` does), against one padded and masked batched call per chunk of episodes (ProtoNet).

    python benchmarks/variable_eval_cost.py --data ../shared/data/tinyimagenet-fs --split test --episodes 600

The backbone is a randomly initialised Conv4 (only the times matter); the padded path's predictions are
checked against the per-episode ones.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from episodes import MetaDatasetConfig, MetaDatasetSampler, SplitSpec, open_split, parents_of  # noqa: E402
from fewshot.config import ModelConfig  # noqa: E402
from fewshot.inference.embedding import embedder  # noqa: E402
from fewshot.evaluation.embedded import class_offsets, embed_slots  # noqa: E402
from fewshot.model.network import build_model  # noqa: E402


def padded_protonet(features: torch.Tensor, support: list, query: list, shots: list) -> list:
    """Predictions of ProtoNet for a chunk of episodes in one batched call.

    ``support[e]``: ``(S_e,)`` rows of ``features`` ``(N, D)``; ``shots[e]``: ``(W_e,)``; ``query[e]``: ``(Q_e,)``.
    Pads to ``(E, S, D)``, ``(E, Q, D)`` and ``(E, W)`` classes; a padded class gets an infinite distance.
    """
    count, ways = len(support), max(len(s) for s in shots)
    most_support, most_query = max(len(s) for s in support), max(len(q) for q in query)
    rows = torch.zeros(count, most_support, dtype=torch.long)
    onehot = torch.zeros(count, ways, most_support)
    query_rows = torch.zeros(count, most_query, dtype=torch.long)
    for e, (s, q, k) in enumerate(zip(support, query, shots)):
        rows[e, :len(s)] = torch.as_tensor(s)
        labels = torch.repeat_interleave(torch.arange(len(k)), torch.as_tensor(k))
        onehot[e, labels, torch.arange(len(s))] = 1.0
        query_rows[e, :len(q)] = torch.as_tensor(q)
    prototypes = torch.bmm(onehot, features[rows]) / onehot.sum(-1, keepdim=True).clamp_min(1)  # (E, W, D)
    distances = torch.cdist(features[query_rows], prototypes).pow(2)  # (E, Q, W)
    present = rearrange(onehot.sum(-1) > 0, "e w -> e 1 w")
    guesses = distances.masked_fill(~present, float("inf")).argmin(-1)
    return [guesses[e, :len(q)] for e, q in enumerate(query)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", required=True)
    parser.add_argument("--split")
    parser.add_argument("--classes")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=10)
    parser.add_argument("--cache-dir")
    args = parser.parse_args()
    split = open_split(SplitSpec(tuple(args.data), split=args.split, classes=args.classes), image_size=args.image_size,
                       channels=3, min_images=2, cache_dir=args.cache_dir, progress=False)
    sampler = MetaDatasetSampler(split.class_sizes, 1, MetaDatasetConfig(), parents_of(split.class_names))
    drawn = [sampler.sample(i) for i in range(args.episodes)]
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="conv4", head="protonet"), 3, args.image_size).eval()
    offsets = class_offsets(split)
    support_slots = [np.concatenate([offsets[c] + s for c, s in zip(d.classes, d.support)]) for d in drawn]
    query_slots = [(offsets[d.classes][:, None] + d.query).ravel() for d in drawn]
    slots = np.unique(np.concatenate(support_slots + query_slots))
    with torch.inference_mode():
        start = time.perf_counter()
        features = embed_slots(embedder(model, "auto", "cpu", "fp32"), split, slots, offsets, 256, False)
        embed_seconds = time.perf_counter() - start
        support = [np.searchsorted(slots, s) for s in support_slots]
        query = [np.searchsorted(slots, q) for q in query_slots]
        shots = [[len(s) for s in d.support] for d in drawn]
        start = time.perf_counter()
        one_by_one = []
        for s, q, k, d in zip(support, query, shots, drawn):
            labels = torch.repeat_interleave(torch.arange(len(k)), torch.as_tensor(k))
            one_by_one.append(model.classify(features[torch.as_tensor(s)], labels, features[torch.as_tensor(q)],
                                             len(k)).argmax(1))
        loop_seconds = time.perf_counter() - start
        start = time.perf_counter()
        padded = []
        for first in range(0, len(drawn), args.chunk):
            part = slice(first, first + args.chunk)
            padded += padded_protonet(features, support[part], query[part], shots[part])
        padded_seconds = time.perf_counter() - start
    agree = np.mean([(a == b).float().mean().item() for a, b in zip(one_by_one, padded)])
    images = int(sum(len(s) + len(q) for s, q in zip(support, query)))
    print(f"{args.episodes} episodes, {images} support+query images, {len(slots)} distinct, image size "
          f"{args.image_size}: embedding {embed_seconds:.1f} s; head one episode at a time {loop_seconds:.2f} s "
          f"({100 * loop_seconds / (embed_seconds + loop_seconds):.1f} % of the evaluation); padded chunks of "
          f"{args.chunk}: {padded_seconds:.2f} s ({loop_seconds / padded_seconds:.2f}x the loop's speed); "
          f"predictions agree on {100 * agree:.2f} % of queries")


if __name__ == "__main__":
    main()
