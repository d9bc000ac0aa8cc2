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
}


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
    """(embeddings of every image, seconds per image, embedding dim) of one backbone configuration."""
    from fewshot.config import ModelConfig
    from fewshot.evaluate import embed_split
    from fewshot.model import build_model

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


def evaluate_method(method: str, features: torch.Tensor, dim: int, split, shots: int, episodes: int):
    from fewshot.backbones.conv4 import Conv4
    from fewshot.evaluate import evaluate
    from fewshot.heads import build_head
    from fewshot.model import FewShotModel

    head, options, transform, refine = METHODS[method]
    # the backbone is never called: every episode is classified from the precomputed embeddings
    model = FewShotModel(Conv4(in_channels=3), build_head(head, dim, (dim,), **options), 3, transform)
    return evaluate(model, split, 5, shots, 15, episodes, seed=0, progress=False, refine=refine, features=features)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/tinyimagenet-fs/test", help="folder of class folders")
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--classes", type=int, help="use this many classes, spread over the sorted list")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES),
                        help=f"{', '.join(BACKBONES)}, or ensemble:A+B of two of them")
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
            root = subset(Path(args.data), args.per_class, Path(work), args.classes)
            cache: dict[str, tuple[torch.Tensor, float, int]] = {}
            split = None
            for name in args.backbones:
                parts = name.removeprefix("ensemble:").split("+")
                for part in parts:
                    if part not in cache:
                        size = BACKBONES[part][1]
                        split = open_split(SplitSpec((str(root),)), image_size=size, channels=3, progress=False)
                        cache[part] = embeddings(part, split, args.batch_size)
                        print(f"{part}: {cache[part][1] * 1000:.0f} ms per image", flush=True)
                if len(parts) > 1:
                    features = torch.cat([F.normalize(cache[p][0], dim=-1) for p in parts], dim=1)
                    seconds, dim = sum(cache[p][1] for p in parts), features.shape[1]
                else:
                    features, seconds, dim = cache[parts[0]]
                for method in args.methods:
                    for shots in (1, 5):
                        result = evaluate_method(method, features, dim, split, shots, args.episodes)
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
