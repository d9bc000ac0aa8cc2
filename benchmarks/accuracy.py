"""Best accuracy from a handful of images: backbone x feature transform x head, with no training.

Each backbone (with its packaged ImageNet weights, at its native resolution, with or without flip
test-time augmentation) embeds every image of the split once; every method is then evaluated on the same
600 episodes per shot count (5-way, 15 queries per class, seed 0) from those embeddings, so rows differ
only in what they measure. ``ensemble`` rows concatenate the L2-normalized embeddings of two backbones.
Results are appended to ``benchmarks/results/accuracy.jsonl`` and printed as a table. Run::

    python benchmarks/accuracy.py --data ../shared/data/tinyimagenet-fs/test --per-class 60
    python benchmarks/accuracy.py --data ../shared/data/omniglot/images_evaluation --per-class 20 --classes 100

``--per-class N`` uses the first N images of every class (through a folder of symbolic links in a
temporary directory), which bounds the embedding time on a CPU; episodes still draw their support and
queries at random among those N.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from records import append_record, latest_records  # noqa: E402

BACKBONES = {  # name: (backbone, image size, tta)
    "lite0": ("efficientnet_lite0", 224, "none"),
    "lite0-flip": ("efficientnet_lite0", 224, "flip"),
    "lite2": ("efficientnet_lite2", 260, "none"),
    "lite2-flip": ("efficientnet_lite2", 260, "flip"),
}
METHODS = {  # name: (head, head options, transform, refine)
    "protonet": ("protonet", {}, "none", "none"),
    "protonet+l2n": ("protonet", {}, "l2n", "none"),
    "protonet+cl2n": ("protonet", {}, "cl2n", "none"),
    "protonet+power_cl2n": ("protonet", {}, "power_cl2n", "none"),
    "linear_probe+cl2n": ("linear_probe", {}, "cl2n", "none"),
    "linear_probe+power_cl2n": ("linear_probe", {}, "power_cl2n", "none"),
    "soft_kmeans+cl2n": ("protonet", {}, "cl2n", "soft_kmeans"),
    "pt_map+power_cl2n": ("pt_map", {}, "power_cl2n", "none"),
    "tim+cl2n": ("tim", {}, "cl2n", "none"),
    "bd_cspn+power_cl2n": ("bd_cspn", {}, "power_cl2n", "none"),
    # centred on the mean of base-class embeddings (--base) instead of the support set's
    "protonet+power_bl2n": ("protonet", {}, "power_bl2n", "none"),
    "linear_probe+power_bl2n": ("linear_probe", {}, "power_bl2n", "none"),
}
FEATURE_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fewshot-benchmark-features"


def subset(root: Path, per_class: int, work: Path, classes: int | None = None) -> Path:
    """A folder of links to the first ``per_class`` images of every class folder under ``root`` (of every
    ``len / classes``-th class when ``classes`` is given, spread over the sorted list)."""
    from episodes import discover_classes

    found = discover_classes([root])
    step = max(1, len(found) // classes) if classes else 1
    for image_class in found[::step][:classes]:
        folder = work / image_class.name.replace("/", "__")
        folder.mkdir(parents=True, exist_ok=True)
        for file in image_class.files[:per_class]:
            (folder / file.name).symlink_to(file.resolve())
    return work


def embeddings(name: str, split, batch_size: int) -> tuple[torch.Tensor, float, int]:
    """(embeddings of every image, seconds per image, embedding dim) of one backbone configuration, kept in
    ``FEATURE_CACHE`` keyed by the backbone and the exact file list, so later runs skip the embedding."""
    import hashlib

    files = "\n".join(str(Path(f).resolve()) for c in split.classes for f in c.files)
    key = hashlib.sha1(f"{name}\n{files}".encode()).hexdigest()[:20]
    stored = FEATURE_CACHE / f"{name}-{key}.pt"
    if stored.exists():
        features, seconds = torch.load(stored)
        return features, seconds, features.shape[1]
    features, seconds, dim = embed_afresh(name, split, batch_size)
    FEATURE_CACHE.mkdir(parents=True, exist_ok=True)
    torch.save((features, seconds), stored.with_suffix(".part"))
    stored.with_suffix(".part").replace(stored)
    return features, seconds, dim


def embed_afresh(name: str, split, batch_size: int) -> tuple[torch.Tensor, float, int]:
    from fewshot.config import ModelConfig
    from fewshot.evaluation.embedded import embed_split
    from fewshot.model.network import build_model

    backbone, size, tta = BACKBONES[name]
    model = build_model(ModelConfig(backbone=backbone, weights="imagenet", head="protonet"), 3, size)
    started = time.perf_counter()
    plain = embed_split(model, split, batch_size=batch_size, progress=False, precision="fp32")
    if tta == "flip":  # the mean with the mirrored image, as model.tta: flip computes it
        prepare = model.prepare
        model.prepare = lambda images: prepare(images).flip(-1)
        plain = (plain + embed_split(model, split, batch_size=batch_size, progress=False, precision="fp32")) / 2
    seconds = (time.perf_counter() - started) / len(plain)
    return plain, seconds, plain.shape[1]


def base_centred(features: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``power_bl2n``: the power transform, then centring on the base classes' mean, then L2 normalization."""
    from fewshot.model.transforms import power

    return F.normalize(power(features) - power(base).mean(0), dim=-1)


def method_model(method: str, dim: int):
    from fewshot.backbones.conv4 import Conv4
    from fewshot.heads import build_head
    from fewshot.model.network import FewShotModel

    head, options, transform, refine = METHODS[method]
    transform = "none" if transform == "power_bl2n" else transform  # applied beforehand by base_centred
    # the backbone is never called: every episode is classified from the precomputed embeddings
    return FewShotModel(Conv4(in_channels=3), build_head(head, dim, (dim,), **options), 3, transform), refine


def evaluate_method(method: str, features: torch.Tensor, dim: int, split, shots: int, episodes: int):
    from fewshot.evaluation.episodic import evaluate

    model, refine = method_model(method, dim)
    return evaluate(model, split, 5, shots, 15, episodes, seed=0, progress=False, refine=refine, features=features)


def evaluate_averaged(method: str, parts: list[torch.Tensor], split, shots: int, episodes: int):
    """An ensemble by probability averaging: ``method`` on each backbone's embeddings separately, over the
    same episodes as :func:`evaluate_method`, the members' class probabilities averaged."""
    import numpy as np

    from episodes import EpisodeSampler
    from fewshot.evaluation.embedded import episode_slots
    from fewshot.evaluation.episodic import EvalResult

    sampler = EpisodeSampler(split.class_sizes, 5, shots, 15, 0)
    offsets = np.concatenate([[0], np.cumsum(split.class_sizes)[:-1]]).astype(np.int64)
    support_slots, query_slots = map(torch.from_numpy, episode_slots([sampler.sample(i) for i in range(episodes)],
                                                                      offsets))
    support_labels = torch.arange(5).repeat_interleave(shots)
    truth = torch.arange(5).repeat_interleave(15)
    started = time.perf_counter()
    probabilities = torch.zeros(episodes, 75, 5)
    with torch.inference_mode():
        for features in parts:
            model, _ = method_model(method, features.shape[1])
            for first in range(0, episodes, 10):
                rows = slice(first, first + 10)
                logits = model.classify_episodes(features[support_slots[rows]], support_labels,
                                                 features[query_slots[rows]], 5)
                probabilities[rows] += model.head.probabilities(logits) / len(parts)
    accuracies = (probabilities.argmax(-1) == truth).float().mean(1).numpy()
    return EvalResult(accuracies, 5, shots, 15, time.perf_counter() - started, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/tinyimagenet-fs/test", help="folder of class folders")
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--classes", type=int, help="use this many classes, spread over the sorted list")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES),
                        help=f"{', '.join(BACKBONES)}; ensemble:A+B concatenates their normalized embeddings, "
                             "average:A+B averages the probabilities of the method run on each")
    parser.add_argument("--base", help="folder of base-class folders whose mean embedding centres the *_bl2n methods")
    parser.add_argument("--base-per-class", type=int, default=20)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    from episodes import SplitSpec, open_split

    results = HERE / "results" / "accuracy.jsonl"
    results.parent.mkdir(exist_ok=True)
    dataset = f"{Path(args.data).resolve().parent.name}/{Path(args.data).name}, {args.per_class} per class" + (
        f", {args.classes} classes" if args.classes else "")
    if not args.table_only:
        torch.set_num_threads(os.cpu_count() or 1)
        with tempfile.TemporaryDirectory() as work:
            root = subset(Path(args.data), args.per_class, Path(work) / "episodes", args.classes)
            cache: dict[str, tuple[torch.Tensor, float, int]] = {}
            split = None
            base_root = subset(Path(args.base), args.base_per_class, Path(work) / "base") if args.base else None
            base: dict[str, torch.Tensor] = {}
            for name in args.backbones:
                kind, _, members = name.rpartition(":")
                parts = members.split("+")
                for part in parts:
                    if part not in cache:
                        size = BACKBONES[part][1]
                        split = open_split(SplitSpec((str(root),)), image_size=size, channels=3, progress=False)
                        cache[part] = embeddings(part, split, args.batch_size)
                        print(f"{part}: {cache[part][1] * 1000:.0f} ms per image", flush=True)
                        if base_root is not None:
                            base_split = open_split(SplitSpec((str(base_root),)), image_size=size, channels=3,
                                                    progress=False)
                            base[part] = embeddings(part, base_split, args.batch_size)[0]
                join = lambda store: torch.cat([F.normalize(store[p], dim=-1) for p in parts], dim=1)  # noqa: E731
                seconds = sum(cache[p][1] for p in parts)
                features = join({p: cache[p][0] for p in parts}) if kind == "ensemble" else cache[parts[0]][0]
                base_features = (join(base) if kind == "ensemble" else base.get(parts[0])) if base else None
                for method in args.methods:
                    centred = METHODS[method][2] == "power_bl2n"
                    if centred and base_features is None:
                        print(f"{method} needs --base: skipped", flush=True)
                        continue
                    for shots in (1, 5):
                        if kind == "average":
                            members_features = [cache[p][0] if not centred else base_centred(cache[p][0], base[p])
                                                for p in parts]
                            result = evaluate_averaged(method, members_features, split, shots, args.episodes)
                        else:
                            used = base_centred(features, base_features) if centred else features
                            result = evaluate_method(method, used, used.shape[1], split, shots, args.episodes)
                        record = {"dataset": dataset, "backbone": name, "method": method, "shots": shots,
                                  "accuracy": result.accuracy, "ci95": result.ci95, "episodes": args.episodes,
                                  "embed_ms_per_image": 1000 * seconds,
                                  "head_ms_per_episode": 1000 * result.seconds / args.episodes,
                                  "command": " ".join(["python benchmarks/accuracy.py", *sys.argv[1:]]),
                                  "machine": f"{os.cpu_count()} cores {platform.machine()}, CPU",
                                  "date": time.strftime("%Y-%m-%d")}
                        append_record(results, record)
                        print(f"{name} {method} {shots}-shot: {result.summary()}", flush=True)
    latest = latest_records(results, lambda r: (r["dataset"], r["backbone"], r["method"], r["shots"]))
    print("| data | backbone | method | 5-way 1-shot | 5-way 5-shot | embed ms/image | head ms/episode |")
    print("|---|---|---|---:|---:|---:|---:|")
    rows = sorted({key[:3] for key in latest})
    for data, backbone, method in rows:
        one, five = latest.get((data, backbone, method, 1)), latest.get((data, backbone, method, 5))
        cell = lambda r: f"{r['accuracy']:.2f} ± {r['ci95']:.2f}" if r else "-"  # noqa: E731
        some = one or five
        print(f"| {data} | {backbone} | {method} | {cell(one)} | {cell(five)} | {some['embed_ms_per_image']:.0f} | "
              f"{some['head_ms_per_episode']:.1f} |")


if __name__ == "__main__":
    main()
