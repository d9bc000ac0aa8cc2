"""Where the time goes, before optimising: one 5-way 5-shot 15-query episode pipeline cut into its parts.

Evaluation, per episode as easyfsl does it: decode 100 JPEGs, embed them (contiguous float32, no_grad),
classify. Ours: decode each image once into the cache, embed each used image once (channels-last,
inference_mode), classify all episodes. Training: one protonet step cut into data, forward, backward and
optimizer, in both memory formats. Run::

    python benchmarks/profile_speed.py --data ../shared/data/tinyimagenet-fs/test --backbone resnet50
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import QUERIES, SHOTS, WAYS, build_our_model  # noqa: E402


def timed(fn, repeat: int = 3) -> float:
    """Best of ``repeat`` wall-clock seconds (after one untimed call)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/tinyimagenet-fs/test")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=84)
    args = parser.parse_args()

    from episodes import EpisodeSampler, SplitSpec, decode_image, normalization, normalize, open_split
    from fewshot.heads import build_head

    torch.manual_seed(0)
    model = build_our_model(args.backbone, "none", args.size)
    split = open_split(SplitSpec((args.data,)), image_size=args.size, channels=3, progress=False)
    drawn = EpisodeSampler(split.class_sizes, WAYS, SHOTS, QUERIES).sample(0)
    files = [f for c, s, q in zip(drawn.classes, drawn.support, drawn.query) for f in split.paths(c, [*s, *q])]
    mean, std = normalization(3)
    episode = split.episode(drawn)  # the same 100 images, already decoded in the split's cache
    batch = normalize(torch.cat([episode.support, episode.query]), mean, std)
    rows = []
    decode = timed(lambda: [decode_image(f, args.size, 3) for f in files])
    rows.append(("decode 100 images (PIL, resize)", decode))
    backbone = model.backbone.eval()
    for name, fmt in (("contiguous", torch.contiguous_format), ("channels-last", torch.channels_last)):
        backbone.to(memory_format=fmt)
        embed = partial(backbone, batch.contiguous(memory_format=fmt))
        with torch.no_grad():
            rows.append((f"embed 100 images, {name}, no_grad", timed(embed)))
        with torch.inference_mode():
            rows.append((f"embed 100 images, {name}, inference_mode", timed(embed)))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                rows.append((f"embed 100 images, {name}, inference_mode, bf16 autocast", timed(embed)))
    head = build_head("protonet", 8, (8,))
    support, query = torch.randn(1000, 25, 2048), torch.randn(1000, 75, 2048)
    labels = torch.arange(WAYS).repeat_interleave(SHOTS)
    with torch.inference_mode():
        rows.append(("classify 1000 episodes one at a time (2048-d)",
                     timed(lambda: [head(s, labels, q, WAYS).argmax(1) for s, q in zip(support, query)], 1)))
        rows.append(("classify 1000 episodes batched (2048-d)",
                     timed(lambda: head.forward_episodes(support, labels, query, WAYS).argmax(-1), 1)))
    sampler = EpisodeSampler(split.class_sizes, WAYS, SHOTS, QUERIES)
    rows.append(("draw 1000 episodes' indices", timed(lambda: [sampler.sample(i) for i in range(1000)], 1)))

    backbone.train()
    optimizer = torch.optim.Adam(backbone.parameters(), lr=1e-3)
    query_labels = torch.arange(WAYS).repeat_interleave(QUERIES)
    for name, fmt in (("contiguous", torch.contiguous_format), ("channels-last", torch.channels_last)):
        backbone.to(memory_format=fmt)
        x = batch.contiguous(memory_format=fmt)
        parts = {"data": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        for step in range(3):
            marks = [time.perf_counter()]
            split.episode(sampler.sample(step))
            marks.append(time.perf_counter())
            features = backbone(x)
            loss = F.cross_entropy(head(features[:25], labels, features[25:], WAYS), query_labels)
            marks.append(time.perf_counter())
            optimizer.zero_grad()
            loss.backward()
            marks.append(time.perf_counter())
            optimizer.step()
            marks.append(time.perf_counter())
            if step:
                for key, a, b in zip(parts, marks, marks[1:]):
                    parts[key] += (b - a) / 2
        for key, value in parts.items():
            rows.append((f"train step {name}: {key}", value))

    print(f"# profile: {args.backbone}, {args.size}x{args.size}, {WAYS}-way {SHOTS}-shot {QUERIES}-query, "
          f"{time.strftime('%Y-%m-%d')}, {torch.get_num_threads()} threads")
    print("| part | seconds |")
    print("|---|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.4f} |")


if __name__ == "__main__":
    main()
