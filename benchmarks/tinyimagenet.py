"""tinyimagenet-fs 5-way 1-shot and 5-shot (600 test episodes, 15 queries): meta-trained from scratch,
pretraining stage, and ImageNet-pretrained EfficientNet-Lite0 with each head and refinement.

Results are appended to ``benchmarks/results/tinyimagenet.jsonl``; the table is printed in Markdown.
Tiny-ImageNet classes are ImageNet classes: rows with ImageNet weights have seen the test classes. Run::

    python benchmarks/tinyimagenet.py                     # every row
    python benchmarks/tinyimagenet.py --rows effnet-protonet effnet-linear_probe
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from records import append_record, latest_records  # noqa: E402
ROOT = HERE.parent
DATA = "../shared/data/tinyimagenet-fs"
EFFNET = ["--backbone", "efficientnet_lite0", "--weights", "imagenet", "--image-size", "64"]

# name: (description, training command or None, eval model arguments, extra eval arguments, episodes)
ROWS = {
    "protonet-scratch": ("ProtoNet, Conv4 from scratch (episodic)",
                         ["train", "configs/protonet-tinyimagenet.yaml", "--set", f"data.root={DATA}",
                          "--set", "train.episodes=1500",
                          "--set", "train.ways=5", "--set", "train.queries=10", "--set", "train.step_size=500"],
                         None, [], 600),
    "relation-scratch": ("Relation net, Conv4 from scratch (episodic)",
                         ["train", "configs/relation-tinyimagenet.yaml", "--set", f"data.root={DATA}",
                          "--set", "train.episodes=1500",
                          "--set", "train.step_size=500"], None, [], 600),
    "pretrain-protonet": ("Conv4 pretrained on the 64 base classes (linear classifier), prototypes",
                          ["pretrain", "configs/pretrain-tinyimagenet.yaml", "--set", f"data.root={DATA}", "--set",
                           "pretrain.epochs=3"],
                          None, [], 600),
    "effnet-protonet": ("EfficientNet-Lite0 ImageNet weights, protonet, no meta-training*", None,
                        EFFNET + ["--head", "protonet"], [], 600),
    "effnet-linear_probe": ("EfficientNet-Lite0 ImageNet weights, linear_probe*", None,
                            EFFNET + ["--head", "linear_probe"], [], 600),
    "effnet-soft_kmeans": ("EfficientNet-Lite0 ImageNet weights, protonet + soft k-means*", None,
                           EFFNET + ["--head", "protonet"], ["--refine", "soft_kmeans"], 600),
    "effnet-self_training": ("EfficientNet-Lite0 ImageNet weights, protonet + self-training*", None,
                             EFFNET + ["--head", "protonet"], ["--refine", "self_training"], 600),
    "effnet-finetune": ("EfficientNet-Lite0 ImageNet weights, finetune (last block, 30 steps)*", None,
                        EFFNET + ["--head", "finetune", "--head-option", "steps=30"], [], 100),
}


def fewshot(*args: str) -> None:
    print("$ fewshot " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "fewshot", *args], check=True, cwd=ROOT)


def run_row(name: str, runs: Path, results: Path, device: str) -> None:
    description, training, model_args, extra, episodes = ROWS[name]
    minutes = 0.0
    command = ""
    if training:
        run_dir = runs / f"tinyimagenet-{name}"
        if not (run_dir / "summary.json").exists():
            fewshot(*training, "--out", str(run_dir), "--no-progress", "--device", device)
        minutes = json.loads((run_dir / "summary.json").read_text())["minutes"]
        model_args = [str(run_dir)]
        command = "fewshot " + " ".join(training)
    for shots in (1, 5):
        out = runs / f"tinyimagenet-{name}-{shots}shot.json"
        fewshot("eval", *model_args, "--data", DATA, "--split", "test", "--ways", "5", "--shots", str(shots),
                "--queries", "15", "--episodes", str(episodes), "--seed", "0", "--json", str(out), "--no-progress",
                "--device", device, *extra)
        result = json.loads(out.read_text())
        record = {"row": name, "description": description, "shots": shots, "accuracy": result["accuracy"],
                  "ci95": result["ci95"], "episodes": result["episodes"], "train_minutes": minutes,
                  "train_command": command,
                  "eval_command": "fewshot eval " + " ".join(model_args if not training else ["RUN_DIR"]) +
                                  f" --data {DATA} --split test --ways 5 --shots {shots} --episodes {episodes} "
                                  + " ".join(extra),
                  "eval_seconds": result["seconds"], "machine": f"{os.cpu_count()} cores {platform.machine()}, "
                                                                f"device {device}",
                  "date": time.strftime("%Y-%m-%d")}
        append_record(results, record)


def print_table(results: Path) -> None:
    latest = latest_records(results, lambda record: (record["row"], record["shots"]))
    print("| method | 5-way 1-shot | 5-way 5-shot | test episodes | training minutes |")
    print("|---|---:|---:|---:|---:|")
    for name in ROWS:
        one, five = latest.get((name, 1)), latest.get((name, 5))
        if not one and not five:
            continue
        cell = lambda r: f"{r['accuracy']:.2f} ± {r['ci95']:.2f}" if r else "not run"  # noqa: E731
        any_row = one or five
        print(f"| {any_row['description']} | {cell(one)} | {cell(five)} | {any_row['episodes']} | "
              f"{any_row['train_minutes']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--runs", default=str(ROOT / "runs"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    results = HERE / "results" / "tinyimagenet.jsonl"
    results.parent.mkdir(exist_ok=True)
    if not args.table_only:
        for name in args.rows:
            run_row(name, Path(args.runs), results, args.device)
    print_table(results)


if __name__ == "__main__":
    main()
