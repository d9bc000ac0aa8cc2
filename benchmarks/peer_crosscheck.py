"""Cross-check our evaluator against easyfsl 1.5.0 on identical episodes and identical weights.

1. ``fewshot episodes`` writes the test episodes (image paths per class) as JSON lines;
2. our ``protonet`` head is evaluated with ``fewshot eval`` at the same seed (same episodes: checked);
3. easyfsl's ``PrototypicalNetworks`` wraps the very same backbone module and classifies each episode
   from the JSON file, its images decoded and normalized exactly as ours are.
The two mean accuracies must agree to 0.1 points. Run::

    pip install --no-deps --target benchmarks/.peers easyfsl==1.5.0 pandas python-dateutil tzdata six
    python benchmarks/peer_crosscheck.py RUN_DIR_OR_CHECKPOINT --data DIR [--data DIR2] [--classes FILE | --split S]
    python benchmarks/peer_crosscheck.py --backbone resnet18 --image-size 84 \
        --data ../shared/data/tinyimagenet-fs --split test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--data", action="append", required=True)
    parser.add_argument("--split")
    parser.add_argument("--classes")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from peers import import_easyfsl

    import_easyfsl()
    from easyfsl.methods import PrototypicalNetworks

    from episodes import decode_image
    from fewshot.model.checkpoint import load_checkpoint, model_from_checkpoint
    from fewshot.config import config_from_dict
    from fewshot.model.network import build_model

    torch.manual_seed(args.seed)
    if args.checkpoint:
        model, config = model_from_checkpoint(load_checkpoint(args.checkpoint))
        model_args = [args.checkpoint]
    else:
        config = config_from_dict({}, [f"model.backbone={args.backbone}", "model.head=protonet",
                                       f"data.image_size={args.image_size}", f"data.channels={args.channels}"])
        model = build_model(config.model, config.data.channels, config.data.image_size)
        weights = Path(tempfile.mkdtemp()) / "backbone.pt"
        torch.save(model.backbone.state_dict(), weights)
        model_args = ["--backbone", args.backbone, "--weights", str(weights), "--head", "protonet",
                      "--image-size", str(args.image_size), "--channels", str(args.channels)]
    model.eval()
    size, channels = config.data.image_size, config.data.channels
    data_args = [flag for d in args.data for flag in ("--data", d)]
    data_args += ["--split", args.split] if args.split else []
    data_args += ["--classes", args.classes] if args.classes else []
    shape = ["--ways", str(args.ways), "--shots", str(args.shots), "--queries", str(args.queries),
             "--episodes", str(args.episodes), "--seed", str(args.seed)]

    work = Path(tempfile.mkdtemp())
    cli = [sys.executable, "-m", "fewshot"]
    with open(work / "episodes.jsonl", "w") as handle:
        subprocess.run(cli + ["episodes", *data_args, *shape], check=True, stdout=handle)
    started = time.perf_counter()
    subprocess.run(cli + ["eval", *model_args, *data_args, *shape, "--json", str(work / "ours.json"),
                          "--no-progress"], check=True)
    ours = json.loads((work / "ours.json").read_text())
    ours_seconds = time.perf_counter() - started

    peer = PrototypicalNetworks(model.backbone).eval()
    mean, std = model.mean, model.std
    from episodes import normalize

    from episodes.splits import parse_rotation

    def load(paths_per_class, class_names):
        """Decode an episode part; a class named .../rotDDD is rotated DDD degrees counter-clockwise."""
        pixels = []
        for paths, name in zip(paths_per_class, class_names):
            turns = parse_rotation(name)[1] // 90
            pixels += [np.rot90(decode_image(p, size, channels), k=turns, axes=(0, 1)).transpose(2, 0, 1)
                       for p in paths]
        return normalize(torch.from_numpy(np.ascontiguousarray(np.stack(pixels))), mean, std)

    accuracies = []
    started = time.perf_counter()
    with torch.no_grad():
        for line in (work / "episodes.jsonl").read_text().splitlines():
            episode = json.loads(line)
            support = load(episode["support"], episode["classes"])
            query = load(episode["query"], episode["classes"])
            support_labels = torch.arange(args.ways).repeat_interleave(args.shots)
            query_labels = torch.arange(args.ways).repeat_interleave(args.queries)
            peer.process_support_set(support, support_labels)
            accuracies.append((peer(query).argmax(1) == query_labels).float().mean().item())
    peer_seconds = time.perf_counter() - started
    peer_accuracy = 100 * float(np.mean(accuracies))
    per_episode_gap = np.abs(np.array(ours["per_episode"]) - 100 * np.array(accuracies)).max()  # both in percent
    print(f"# peer cross-check, {time.strftime('%Y-%m-%d')}: {' '.join(data_args)} {' '.join(shape)}; model "
          f"{args.checkpoint or args.backbone + ' (seeded random init)'}")
    print("| evaluator | accuracy ± 95% CI | seconds |")
    print("|---|---:|---:|")
    print(f"| fewshot eval (protonet head) | {ours['accuracy']:.2f} ± {ours['ci95']:.2f} | {ours_seconds:.1f} |")
    print(f"| easyfsl 1.5.0 PrototypicalNetworks | {peer_accuracy:.2f} | {peer_seconds:.1f} |")
    print(f"\ndifference {abs(ours['accuracy'] - peer_accuracy):.3f} points; largest per-episode difference "
          f"{per_episode_gap:.2f} points")
    if abs(ours["accuracy"] - peer_accuracy) > 0.1:
        raise SystemExit("cross-check FAILED: accuracies differ by more than 0.1 points")


if __name__ == "__main__":
    main()
