"""Speed against easyfsl 1.5.0 in one run and one table: episodic evaluation end to end, training steps,
the episode sampler, and the peak memory of each.

Both frameworks get the same images (5-way 5-shot 15-query episodes at 84x84 from a folder of class
folders, default the tinyimagenet-fs test split), the same backbone weights (seeded random init saved
once: no pretrained weights offline) and the same episodes (ours, fed to easyfsl through a batch
sampler and its own ``episodic_collate_fn``). easyfsl reads every image through a dataset that decodes
it exactly as we do, so both see identical pixels and must give identical accuracies on shared episodes.

- evaluation, end to end: ours opens the split with an empty cache (decode), embeds each used image
  once and classifies all episodes; easyfsl runs its own ``evaluate`` loop (decode, embed, classify per
  episode) on the first ``--peer-episodes`` of the same episodes; its per-episode cost is constant, so
  its time for all episodes is extrapolated linearly and said so.
- training: ``fewshot train`` (protonet head, Adam) against easyfsl's ``PrototypicalNetworks`` in the
  training loop of its tutorial, steps per second after ``--warmup`` steps.
- sampler: ``benchmarks/sampler_speed.py``'s measurements.
Each measurement runs in its own process so that its peak RSS is its own. Run::

    pip install --no-deps --target benchmarks/.peers easyfsl==1.5.0 pandas python-dateutil tzdata six
    python benchmarks/speed.py --data ../shared/data/tinyimagenet-fs/test
    python benchmarks/speed.py --only-rows eval-conv4 train-conv4      # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
WAYS, SHOTS, QUERIES = 5, 5, 15
BACKBONES = ("resnet50", "conv4")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gpu_peak_mb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def build_our_model(backbone: str, weights: str, size: int):
    from fewshot.config import config_from_dict
    from fewshot.model.network import build_model

    config = config_from_dict({}, [f"model.backbone={backbone}", f"model.weights={weights}", "model.head=protonet",
                                   f"data.image_size={size}", "data.channels=3"])
    return build_model(config.model, 3, size)


def our_episodes(data: str, size: int, count: int, cache_dir: str) -> list[tuple[list[str], list[list[str]]]]:
    """The first ``count`` evaluation episodes (seed 0) as (class names, files per class, support first)."""
    from episodes import EpisodeSampler, SplitSpec, open_split

    split = open_split(SplitSpec((data,)), image_size=size, channels=3, min_images=SHOTS + QUERIES, ways=WAYS,
                       cache_dir=cache_dir, progress=False)
    sampler = EpisodeSampler(split.class_sizes, WAYS, SHOTS, QUERIES, seed=0)
    episodes = []
    for index in range(count):
        drawn = sampler.sample(index)
        files = [[str(p) for p in split.paths(c, list(s) + list(q))]
                 for c, s, q in zip(drawn.classes, drawn.support, drawn.query)]
        episodes.append(([split.class_names[c] for c in drawn.classes], files))
    return episodes


def easyfsl_loader(args, episodes):
    """easyfsl's episodic DataLoader over ``episodes``: a FewShotDataset that decodes each image when it
    is asked for (as easyfsl's datasets do) with our decoder, and easyfsl's own collate function."""
    import torch
    from torch.utils.data import DataLoader

    from peers import import_easyfsl

    _, TaskSampler = import_easyfsl()
    from easyfsl.datasets import FewShotDataset

    from episodes import decode_image, normalization, normalize

    mean, std = normalization(3)
    files = sorted({f for _, per_class in episodes for class_files in per_class for f in class_files})
    position = {f: i for i, f in enumerate(files)}
    label_of = {f: name for names, per_class in episodes for name, fs in zip(names, per_class) for f in fs}
    names = sorted(set(label_of.values()))
    labels = [names.index(label_of[f]) for f in files]

    class DecodedFolder(FewShotDataset):
        def __getitem__(self, item):
            pixels = torch.from_numpy(decode_image(files[item], args.size, 3)).permute(2, 0, 1)
            return normalize(pixels[None], mean, std)[0], labels[item]

        def __len__(self):
            return len(files)

        def get_labels(self):
            return labels

    dataset = DecodedFolder()
    collate = TaskSampler(dataset, n_way=WAYS, n_shot=SHOTS, n_query=QUERIES, n_tasks=len(episodes))
    batches = [[position[f] for class_files in per_class for f in class_files] for _, per_class in episodes]
    return DataLoader(dataset, batch_sampler=batches, num_workers=args.workers,
                      collate_fn=collate.episodic_collate_fn)


def run_eval_ours(args) -> dict:
    import torch

    from episodes import SplitSpec, open_split
    from fewshot.evaluation.episodic import evaluate

    model = build_our_model(args.backbone, args.weights, args.size)
    start = time.perf_counter()
    split = open_split(SplitSpec((args.data,)), image_size=args.size, channels=3, min_images=SHOTS + QUERIES,
                       ways=WAYS, cache_dir=args.cache_dir, progress=False)
    opened = time.perf_counter() - start
    result = evaluate(model, split, WAYS, SHOTS, QUERIES, args.episodes, seed=0, device=torch.device("cpu"),
                      progress=False, precision=args.precision)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "decode_seconds": opened, "episodes": args.episodes, "accuracy": result.accuracy,
            "ci95": result.ci95, "shared_accuracy": 100 * float(result.accuracies[:args.peer_episodes].mean()),
            "peak_rss_mb": peak_rss_mb(), "gpu_peak_mb": gpu_peak_mb()}


def easyfsl_protonet(args):
    """easyfsl's ``PrototypicalNetworks`` around our backbone with the shared weights, in the default
    (contiguous) memory format an easyfsl user has."""
    import torch

    from peers import import_easyfsl

    import_easyfsl()
    from easyfsl.methods import PrototypicalNetworks

    torch.manual_seed(0)
    backbone = build_our_model(args.backbone, args.weights, args.size).backbone
    return PrototypicalNetworks(backbone.to(memory_format=torch.contiguous_format))


def run_eval_easyfsl(args) -> dict:
    model = easyfsl_protonet(args)  # also puts easyfsl on the import path
    from easyfsl.utils import evaluate

    loader = easyfsl_loader(args, our_episodes(args.data, args.size, args.peer_episodes, args.cache_dir))
    start = time.perf_counter()  # easyfsl's pipeline from here: decode, embed and classify every episode
    accuracy = evaluate(model, loader, device="cpu", use_tqdm=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "episodes": args.peer_episodes, "shared_accuracy": 100 * accuracy,
            "peak_rss_mb": peak_rss_mb(), "gpu_peak_mb": gpu_peak_mb()}


def run_train_ours(args) -> dict:
    from fewshot.config import config_from_dict
    from fewshot.training.train import train

    data = Path(args.data).resolve()
    run_dir = Path(tempfile.mkdtemp(prefix="fewshot-speed-run-")) / "run"
    config = config_from_dict({}, [f"data.root={data.parent}", f"data.split.train={data.name}",
                                   f"data.image_size={args.size}", "data.channels=3",
                                   f"data.cache_dir={args.cache_dir}",
                                   f"model.backbone={args.backbone}", f"model.weights={args.weights}",
                                   "model.head=protonet", f"train.ways={WAYS}", f"train.shots={SHOTS}",
                                   f"train.queries={QUERIES}", f"train.episodes={args.warmup + args.steps}",
                                   "train.optimizer=adam", "train.lr=0.001", "train.val_every=0", "train.log_every=1",
                                   "train.device=cpu"])
    train(config, run_dir, progress=False, log=lambda *_: None)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    seconds = {r["episode"]: r["seconds"] for r in records if r["kind"] == "train"}
    timed = seconds[args.warmup + args.steps] - seconds[args.warmup]
    return {"seconds": timed, "steps": args.steps, "steps_per_s": args.steps / timed,
            "images_per_s": args.steps * WAYS * (SHOTS + QUERIES) / timed, "peak_rss_mb": peak_rss_mb(),
            "gpu_peak_mb": gpu_peak_mb()}


def run_train_easyfsl(args) -> dict:
    import torch
    import torch.nn.functional as F

    model = easyfsl_protonet(args).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    loader = easyfsl_loader(args, our_episodes(args.data, args.size, args.warmup + args.steps, args.cache_dir))
    started = None
    for step, (support, support_labels, query, query_labels, _) in enumerate(loader):
        if step == args.warmup:
            started = time.perf_counter()
        optimizer.zero_grad()
        model.process_support_set(support, support_labels)
        loss = F.cross_entropy(model(query), query_labels)
        loss.backward()
        optimizer.step()
    timed = time.perf_counter() - started
    return {"seconds": timed, "steps": args.steps, "steps_per_s": args.steps / timed,
            "images_per_s": args.steps * WAYS * (SHOTS + QUERIES) / timed, "peak_rss_mb": peak_rss_mb(),
            "gpu_peak_mb": gpu_peak_mb()}


RUNNERS = {"eval-ours": run_eval_ours, "eval-easyfsl": run_eval_easyfsl, "train-ours": run_train_ours,
           "train-easyfsl": run_train_easyfsl}


def measure(kind: str, args, **settings) -> dict:
    """Run one measurement in a fresh process; its result is the last line it prints."""
    options = {"data": args.data, "size": args.size, "episodes": args.episodes, "peer_episodes": args.peer_episodes,
               "steps": args.steps, "warmup": args.warmup, **settings}
    command = [sys.executable, __file__, "--measure", kind]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    print("  measuring", kind, json.dumps(settings), file=sys.stderr, flush=True)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"{kind} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_sampler(args, cache_dir: str) -> list[tuple[str, dict]]:
    command = [sys.executable, str(HERE / "sampler_speed.py"), "--data", args.data, "--size", str(args.size)]
    rows = []
    for name, extra in (("fewshot cold", ["--only", "ours", "--episodes", str(args.episodes),
                                          "--cache-dir", tempfile.mkdtemp(prefix="fewshot-speed-cold-")]),
                        ("fewshot warm", ["--only", "ours", "--episodes", str(args.episodes), "--cache-dir",
                                          cache_dir]),
                        ("easyfsl", ["--only", "easyfsl", "--episodes", str(args.peer_episodes)])):
        print("  measuring sampler", name, file=sys.stderr, flush=True)
        out = subprocess.run(command + extra, capture_output=True, text=True, check=True).stdout
        rows.append((name, json.loads(out.strip().splitlines()[-1])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/tinyimagenet-fs/test", help="folder of class folders")
    parser.add_argument("--size", type=int, default=84, help="image side in pixels (default 84)")
    parser.add_argument("--episodes", type=int, default=1000, help="evaluation episodes for us (default 1000)")
    parser.add_argument("--peer-episodes", type=int, default=50,
                        help="evaluation episodes for easyfsl, the first of ours (default 50; it decodes and embeds "
                             "every episode, so its time is extrapolated linearly to --episodes)")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="training steps before the timing starts (default 2)")
    parser.add_argument("--only-rows", nargs="+", metavar="ROW",
                        help="eval-resnet50 eval-conv4 train-resnet50 train-conv4 sampler (default: all)")
    parser.add_argument("--measure", choices=list(RUNNERS), help=argparse.SUPPRESS)
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(RUNNERS[args.measure](args)))
        return

    import torch

    rows = args.only_rows or [f"eval-{b}" for b in BACKBONES] + [f"train-{b}" for b in BACKBONES] + ["sampler"]
    work = Path(tempfile.mkdtemp(prefix="fewshot-speed-"))
    warm_cache = str(work / "warm-cache")
    weights = {}
    for backbone in BACKBONES:
        torch.manual_seed(0)
        weights[backbone] = str(work / f"{backbone}.pt")
        torch.save(build_our_model(backbone, "none", args.size).backbone.state_dict(), weights[backbone])
    # The episode lists handed to easyfsl come from our split: build its cache here, outside every measurement.
    our_episodes(args.data, args.size, 1, warm_cache)
    per_episode = f"{args.episodes} episodes ({args.peer_episodes} for easyfsl, extrapolated)"
    table = []
    for row in rows:
        kind, _, backbone = row.partition("-")
        if kind == "eval":
            common = {"backbone": backbone, "weights": weights[backbone]}
            ours = measure("eval-ours", args, cache_dir=str(work / f"cold-{backbone}"), **common)
            peer = measure("eval-easyfsl", args, cache_dir=warm_cache, **common)
            peer_total = peer["seconds"] * args.episodes / args.peer_episodes
            table.append((f"eval {backbone}, {per_episode}, end to end", "fewshot fp32, cold cache", ours["seconds"],
                          peer_total, ours, peer))
            if backbone == "resnet50":
                bf16 = measure("eval-ours", args, cache_dir=str(work / "cold-bf16"), precision="bf16", **common)
                table.append((f"eval {backbone}, {per_episode}, end to end", "fewshot --precision bf16, cold cache",
                              bf16["seconds"], peer_total, bf16, peer))
        elif kind == "train":
            common = {"backbone": backbone, "weights": weights[backbone], "cache_dir": warm_cache}
            ours = measure("train-ours", args, **common)
            peer = measure("train-easyfsl", args, **common)
            table.append((f"train {backbone} protonet, seconds per step ({args.steps} steps)", "fewshot train",
                          1 / ours["steps_per_s"], 1 / peer["steps_per_s"], ours, peer))
        else:
            (_, cold), (_, warm), (_, peer) = measure_sampler(args, warm_cache)
            for name, ours in (("fewshot cold cache", cold), ("fewshot warm cache", warm)):
                table.append((f"sampler, seconds per episode ({args.episodes} episodes)", name,
                              ours["seconds"] / ours["episodes"], peer["seconds"] / peer["episodes"], ours, peer))

    print(f"# speed: {WAYS}-way {SHOTS}-shot {QUERIES}-query, {args.size}x{args.size}, {args.data}")
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{'GPU ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU used'}")
    print("| measurement | ours | ours s | easyfsl 1.5.0 s | speed-up | accuracy ours / easyfsl (shared episodes) "
          "| peak RSS MB ours / easyfsl |")
    print("|---|---|---:|---:|---:|---|---:|")
    for what, name, ours_s, peer_s, ours, peer in table:
        accuracy = (f"{ours['shared_accuracy']:.2f} / {peer['shared_accuracy']:.2f}" if "shared_accuracy" in ours
                    else "")
        print(f"| {what} | {name} | {ours_s:.3g} | {peer_s:.3g} | {peer_s / ours_s:.1f}x | {accuracy} | "
              f"{ours['peak_rss_mb']:.0f} / {peer['peak_rss_mb']:.0f} |")
    for what, name, _, _, ours, _ in table:
        if "decode_seconds" in ours:
            print(f"\n{what}, {name}: decode {ours['decode_seconds']:.1f} s of {ours['seconds']:.1f} s; "
                  f"all {ours['episodes']} episodes {ours['accuracy']:.2f} ± {ours['ci95']:.2f}")


if __name__ == "__main__":
    main()
