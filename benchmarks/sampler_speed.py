"""Episodes per second of the data layer, cold (first decode) and warm (cache), beside easyfsl 1.5.0.

5-way 5-shot 15-query episodes at 84x84 from a folder of class folders (default: the tinyimagenet-fs
test split, real JPEGs). Each measurement runs in its own process so that its peak memory (RSS) is its
own. Run::

    pip install --no-deps --target benchmarks/.peers easyfsl==1.5.0 pandas python-dateutil tzdata six
    python benchmarks/sampler_speed.py --data ../shared/data/tinyimagenet-fs/test
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

WAYS, SHOTS, QUERIES = 5, 5, 15


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(args) -> dict:
    from torch.utils.data import DataLoader

    from episodes import EpisodeDataset, EpisodeSampler, SplitSpec, normalization, normalize, open_split

    start = time.perf_counter()
    split = open_split(SplitSpec((args.data,)), image_size=args.size, channels=3, min_images=SHOTS + QUERIES,
                       ways=WAYS, cache_dir=args.cache_dir, progress=False)
    opened = time.perf_counter() - start
    sampler = EpisodeSampler(split.class_sizes, WAYS, SHOTS, QUERIES, seed=0)
    loader = DataLoader(EpisodeDataset(split, sampler, args.episodes), batch_size=None, num_workers=args.workers)
    mean, std = normalization(3)
    checksum = 0.0
    for episode in loader:
        if args.normalize:
            checksum += float(normalize(episode.support, mean, std)[0, 0, 0, 0])
            checksum += float(normalize(episode.query, mean, std)[0, 0, 0, 0])
        else:
            checksum += int(episode.support[0, 0, 0, 0])
    total = time.perf_counter() - start
    cache_bytes = sum(p.stat().st_size for p in Path(args.cache_dir).glob("*.npy"))
    return {"seconds": total, "open_seconds": opened, "episodes": args.episodes,
            "episodes_per_s": args.episodes / total, "cache_mb": cache_bytes / 2**20, "peak_rss_mb": peak_rss_mb()}


def run_easyfsl(args) -> dict:
    from torch.utils.data import DataLoader

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peers import import_easyfsl

    easyfsl, TaskSampler = import_easyfsl()
    from easyfsl.datasets import EasySet

    start = time.perf_counter()
    classes = sorted(p for p in Path(args.data).iterdir() if p.is_dir())
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as spec:
        json.dump({"class_names": [c.name for c in classes], "class_roots": [str(c) for c in classes]}, spec)
    dataset = EasySet(spec.name, image_size=args.size, training=False)
    sampler = TaskSampler(dataset, n_way=WAYS, n_shot=SHOTS, n_query=QUERIES, n_tasks=args.episodes)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=args.workers,
                        collate_fn=sampler.episodic_collate_fn)
    checksum = 0.0
    for support, _, query, _, _ in loader:
        checksum += float(support[0, 0, 0, 0]) + float(query[0, 0, 0, 0])
    total = time.perf_counter() - start
    os.unlink(spec.name)
    return {"seconds": total, "episodes": args.episodes, "episodes_per_s": args.episodes / total,
            "peak_rss_mb": peak_rss_mb()}


def measure(kind: str, args, **overrides) -> dict:
    command = [sys.executable, __file__, "--only", kind, "--data", args.data, "--size", str(args.size)]
    for key, value in overrides.items():
        if isinstance(value, bool):
            command += [f"--{key.replace('_', '-')}"] if value else []
        else:
            command += [f"--{key.replace('_', '-')}", str(value)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"{kind} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/tinyimagenet-fs/test")
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--episodes", type=int, default=1000, help="episodes for our sampler")
    parser.add_argument("--peer-episodes", type=int, default=200, help="episodes for easyfsl (it decodes each time)")
    parser.add_argument("--only", choices=["ours", "easyfsl"], help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--normalize", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        fn = run_ours if args.only == "ours" else run_easyfsl
        print(json.dumps(fn(args)))
        return

    cache_dir = tempfile.mkdtemp(prefix="fewshot-bench-cache-")
    rows = []
    cold = measure("ours", args, episodes=args.episodes, cache_dir=cache_dir)
    rows.append(("fewshot cold (decode + cache build, then sample)", cold))
    warm = measure("ours", args, episodes=args.episodes, cache_dir=cache_dir)
    rows.append(("fewshot warm (cache hit), uint8 episodes", warm))
    warm_norm = measure("ours", args, episodes=args.episodes, cache_dir=cache_dir, normalize=True)
    rows.append(("fewshot warm, + normalize to float32", warm_norm))
    warm_w2 = measure("ours", args, episodes=args.episodes, cache_dir=cache_dir, workers=2)
    rows.append(("fewshot warm, DataLoader 2 workers", warm_w2))
    peer0 = measure("easyfsl", args, episodes=args.peer_episodes, workers=0)
    rows.append(("easyfsl 1.5.0 EasySet+TaskSampler, 0 workers", peer0))
    peer2 = measure("easyfsl", args, episodes=args.peer_episodes, workers=2)
    rows.append(("easyfsl 1.5.0 EasySet+TaskSampler, 2 workers", peer2))
    best_peer = max(peer0["episodes_per_s"], peer2["episodes_per_s"])

    print(f"# sampler benchmark: {WAYS}-way {SHOTS}-shot {QUERIES}-query, {args.size}x{args.size}, {args.data}")
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, no GPU used")
    print("| pipeline | episodes | seconds | episodes/s | vs best easyfsl | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in rows:
        print(f"| {name} | {row['episodes']} | {row['seconds']:.2f} | {row['episodes_per_s']:.1f} | "
              f"{row['episodes_per_s'] / best_peer:.1f}x | {row['peak_rss_mb']:.0f} |")
    print(f"\ncache on disk: {cold['cache_mb']:.0f} MB; cold cache build took {cold['open_seconds']:.1f} s")


if __name__ == "__main__":
    main()
