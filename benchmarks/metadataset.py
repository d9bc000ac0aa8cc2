"""Meta-Dataset-style episodes on two real sources: ProtoNet Conv4 trained on tinyimagenet-fs train and Omniglot
train (Vinyals list) together with the variable sampler, against single-source training with the same budget
(same number of episodes), each evaluated per source on the test splits (Meta-Dataset's default sampler,
the same episodes for every model, so differences are paired). Then the ``default`` recipe under the variable
protocol on both sources (a subset of each test split: the ensemble is too slow on this CPU for the full ones).

    python benchmarks/metadataset.py --shared ../shared/data               # every row
    python benchmarks/metadataset.py --shared ../shared/data --rows multi,recipe --episodes 200

Each row is appended to ``benchmarks/results/metadataset.jsonl``; the Markdown table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from fewshot.config import config_from_dict  # noqa: E402
from fewshot.evaluation.data import open_source, phase_sources  # noqa: E402
from fewshot.evaluation.episode_sets import draw_episodes  # noqa: E402
from fewshot.evaluation.episodic import evaluate_sources  # noqa: E402
from fewshot.model.loading import load_model  # noqa: E402
from fewshot.training.train import train  # noqa: E402

ROWS = ("multi", "tiny", "omniglot", "recipe")


def sources(shared: Path, which: tuple[str, ...] = ("tiny", "omniglot")) -> list[dict]:
    omniglot, tiny = shared / "omniglot", shared / "tinyimagenet-fs"
    lists = omniglot / "splits" / "vinyals"
    entries = {
        "tiny": {"name": "tinyimagenet", "root": [str(tiny)],
                 "split": {"train": "train", "val": "val", "test": "test"}},
        "omniglot": {"name": "omniglot", "root": [str(omniglot / "images_background"),
                                                  str(omniglot / "images_evaluation")],
                     "classes": {"train": str(lists / "train.txt"), "val": str(lists / "val.txt"),
                                 "test": str(lists / "test.txt")}},
    }
    return [entries[name] for name in which]


def base_config(shared: Path, which: tuple[str, ...], args) -> dict:
    return {"data": {"protocol": "metadataset", "image_size": args.image_size, "channels": 3,
                     "sources": sources(shared, which), "cache_dir": args.cache_dir},
            "model": {"backbone": "conv4", "head": "protonet"},
            "train": {"episodes": args.episodes, "lr": 1e-3, "val_every": 0, "log_every": 25,
                      "checkpoint_minutes": 0, "device": "cpu"},
            "seed": 0}


def test_sets(shared: Path, args, opened_cache: dict) -> list:
    """The test episodes of both sources (the same for every model)."""
    if "sets" not in opened_cache:
        config = config_from_dict(base_config(shared, ("tiny", "omniglot"), args))
        opened = [(s, open_source(config, s, (5, 1, 1), progress=False)) for s in phase_sources(config.data, "test")]
        opened_cache["sets"] = draw_episodes(config, opened, (5, 1, 1), args.eval_episodes, seed=1)
    return opened_cache["sets"]


def record(row: str, result, extra: dict) -> dict:
    per_source = {name: {"accuracy": r.accuracy, "ci95": r.ci95, "episodes": len(r.accuracies),
                         "per_episode": [float(a) for a in r.accuracies]} for name, r in result.results.items()}
    return {"row": row, "mean": result.accuracy, "mean_ci95": result.ci95, "sources": per_source,
            "machine": f"{platform.node()} {os.cpu_count()} CPUs, torch {torch.__version__}",
            "date": time.strftime("%Y-%m-%d %H:%M"), **extra}


def run_training_row(row: str, shared: Path, args, cache: dict) -> dict:
    which = {"multi": ("tiny", "omniglot"), "tiny": ("tiny",), "omniglot": ("omniglot",)}[row]
    config = config_from_dict(base_config(shared, which, args))
    run_dir = Path(args.runs) / f"{row}-{args.episodes}"
    start = time.perf_counter()
    if not (run_dir / "summary.json").exists():
        train(config, run_dir, progress=False, log=print)
    train_seconds = time.perf_counter() - start
    model, _ = load_model(run_dir)
    start = time.perf_counter()
    result = evaluate_sources(model, test_sets(shared, args, cache), seed=1, progress=False)
    return record(row, result, {"trained_on": list(which), "train_episodes": args.episodes,
                                "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - start,
                                "image_size": args.image_size})


def subset_folder(target: Path, classes: list[tuple[str, list[Path]]]) -> Path:
    """A folder of symlinked class folders (name -> files), for an evaluation on part of a split."""
    for name, files in classes:
        folder = target / name
        folder.mkdir(parents=True, exist_ok=True)
        for file in files:
            link = folder / file.name
            if not link.exists():
                link.symlink_to(file.resolve())
    return target


def run_recipe_row(shared: Path, args) -> dict:
    """The default recipe on a subset of each test split: tinyimagenet-fs test, 20 classes x the first
    ``--recipe-images`` images; Omniglot test, the unrotated characters of the first ``--recipe-alphabets``
    alphabets of the Vinyals test list (every drawing)."""
    work = Path(tempfile.mkdtemp(prefix="md-recipe-"))
    tiny_test = shared / "tinyimagenet-fs" / "test"
    tiny = subset_folder(work / "tinyimagenet", [(c.name, sorted(c.iterdir())[:args.recipe_images])
                                                 for c in sorted(tiny_test.iterdir()) if c.is_dir()])
    lines = (shared / "omniglot" / "splits" / "vinyals" / "test.txt").read_text().split()
    alphabets = sorted({line.split("/")[0] for line in lines})[:args.recipe_alphabets]
    characters = sorted({line.rsplit("/", 1)[0] for line in lines if line.split("/")[0] in alphabets})
    roots = [shared / "omniglot" / "images_background", shared / "omniglot" / "images_evaluation"]
    omniglot = subset_folder(work / "omniglot", [
        (character, sorted(next(r / character for r in roots if (r / character).is_dir()).iterdir()))
        for character in characters])
    model, config = load_model(recipe="default")
    config.data.protocol = "metadataset"
    config.data.cache_dir = args.cache_dir
    raw = config.to_dict()
    raw["data"]["root"] = []
    raw["data"]["sources"] = [{"name": "tinyimagenet", "root": [str(tiny)]}, {"name": "omniglot", "root": [str(omniglot)]}]
    recipe_config = config_from_dict(raw)
    opened = [(s, open_source(recipe_config, s, (5, 1, 1), progress=False))
              for s in phase_sources(recipe_config.data, "train")]  # the whole subset folders
    sets = draw_episodes(recipe_config, opened, (5, 1, 1), args.recipe_episodes, seed=1, head=model.head)
    start = time.perf_counter()
    result = evaluate_sources(model, sets, seed=1, progress=False)
    return record("recipe", result, {"recipe": "default", "eval_seconds": time.perf_counter() - start,
                                     "subset": {"tinyimagenet": f"20 test classes x {args.recipe_images} images",
                                                "omniglot": f"{len(characters)} test characters of {len(alphabets)} "
                                                            "alphabets, unrotated, 20 drawings"}})


def paired(a: dict, b: dict, source: str) -> str:
    """Difference of two rows on one source over the same episodes, with its paired 95% interval."""
    diff = 100 * (np.array(a["sources"][source]["per_episode"]) - np.array(b["sources"][source]["per_episode"]))
    return f"{diff.mean():+.2f} ± {1.96 * diff.std(ddof=1) / math.sqrt(len(diff)):.2f}"


def table(records: dict) -> str:
    lines = ["| trained on | episodes | tinyimagenet-fs test | Omniglot test | mean over sources | train min |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in ("multi", "tiny", "omniglot", "recipe"):
        if row not in records:
            continue
        r = records[row]
        cells = [f"{r['sources'][s]['accuracy']:.2f} ± {r['sources'][s]['ci95']:.2f}" for s in ("tinyimagenet", "omniglot")]
        label = {"multi": "both (weights 1:1)", "tiny": "tinyimagenet-fs only", "omniglot": "Omniglot only",
                 "recipe": "`default` recipe, no training (test subsets)"}[row]
        minutes = f"{r['train_seconds'] / 60:.1f}" if "train_seconds" in r else "-"
        lines.append(f"| {label} | {r.get('train_episodes', '-')} | {cells[0]} | {cells[1]} | "
                     f"{r['mean']:.2f} ± {r['mean_ci95']:.2f} | {minutes} |")
    if "multi" in records:
        for single, source in (("tiny", "tinyimagenet"), ("omniglot", "omniglot"), ("tiny", "omniglot"),
                               ("omniglot", "tinyimagenet")):
            if single in records:
                lines.append(f"\nmulti - {single}-only on {source}: {paired(records['multi'], records[single], source)} "
                             "(paired over the same test episodes)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared" / "data",
                        help="folder holding omniglot/ and tinyimagenet-fs/")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows among {', '.join(ROWS)}")
    parser.add_argument("--episodes", type=int, default=300, help="training episodes per model (the budget)")
    parser.add_argument("--eval-episodes", type=int, default=600, help="test episodes per source")
    parser.add_argument("--image-size", type=int, default=32, help="image side for Conv4 (both sources)")
    parser.add_argument("--recipe-episodes", type=int, default=100, help="test episodes per source for the recipe")
    parser.add_argument("--recipe-images", type=int, default=40, help="tinyimagenet-fs images per class (recipe)")
    parser.add_argument("--recipe-alphabets", type=int, default=3, help="Omniglot test alphabets (recipe)")
    parser.add_argument("--runs", default="/tmp/fewshot-bench/metadataset", help="run directories")
    parser.add_argument("--cache-dir", default=None, help="decoded-image cache")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "metadataset.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    records, cache = {}, {}
    for row in args.rows.split(","):
        start = time.perf_counter()
        result = run_recipe_row(args.shared, args) if row == "recipe" else run_training_row(row, args.shared, args,
                                                                                             cache)
        records[row] = result
        with open(args.out, "a") as handle:
            handle.write(json.dumps(result) + "\n")
        print(f"{row}: mean {result['mean']:.2f} ± {result['mean_ci95']:.2f} "
              + ", ".join(f"{s} {v['accuracy']:.2f} ± {v['ci95']:.2f}" for s, v in result["sources"].items())
              + f" ({time.perf_counter() - start:.0f} s)", flush=True)
    print(table(records))


if __name__ == "__main__":
    main()
