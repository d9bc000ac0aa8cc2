"""Adapting an ImageNet backbone to the task: P>M>F's middle stage and its test-time stage, on this CPU.

``meta-train``: episodic meta-training (ProtoNet on power transform + CL2N features, or Meta-Baseline's cosine
ProtoNet with a learned temperature: ``--meta-head meta_baseline``) of ImageNet EfficientNet-Lite0
on the tinyimagenet-fs base classes, then both the meta-trained and the frozen backbone evaluated on the
same test episodes. ``finetune``: test-time fine-tuning of the last stage with a fixed learning rate, and
with the rate chosen per task on pseudo-episodes cut from the support set (``lr_candidates``), against
the frozen backbone's prototypes on the same episodes. Every evaluation is ``fewshot eval`` (the CLI a
user runs); each row is appended to ``benchmarks/results/adaptation.jsonl`` and printed. Run::

    python benchmarks/adaptation.py meta-train --data ../shared/data/tinyimagenet-fs --episodes 300
    python benchmarks/adaptation.py meta-train --meta-head meta_baseline --episodes 300
    python benchmarks/adaptation.py finetune --data ../shared/data/tinyimagenet-fs --episodes 40

Both run at 84 px instead of Lite0's native 224 px, so that training and per-episode fine-tuning fit a
2-core CPU; the comparison within each experiment is at one resolution.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from records import append_record  # noqa: E402

FEWSHOT = [sys.executable, "-m", "fewshot"]
FROZEN = ["--backbone", "efficientnet_lite0", "--weights", "imagenet", "--image-size", "84"]


def run(command: list[str]) -> float:
    """Run a fewshot command; its wall-clock seconds."""
    print("$", " ".join(command[2:]), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def evaluate(label: str, model: list[str], data: str, shots: int, episodes: int, work: Path, note: str) -> None:
    out = work / f"{label}-{shots}.json"
    seconds = run([*FEWSHOT, "eval", *model, "--data", data, "--split", "test", "--ways", "5", "--shots", str(shots),
                   "--queries", "15", "--episodes", str(episodes), "--seed", "0", "--json", str(out),
                   "--no-progress"])
    result = json.loads(out.read_text())
    record = {"experiment": label, "shots": shots, "accuracy": result["accuracy"], "ci95": result["ci95"],
              "episodes": episodes, "seconds": seconds, "note": note,
              "command": " ".join(["python benchmarks/adaptation.py", *sys.argv[1:]]),
              "machine": f"{os.cpu_count()} cores {platform.machine()}, CPU", "date": time.strftime("%Y-%m-%d")}
    append_record(HERE / "results" / "adaptation.jsonl", record)
    print(f"{label} 5-way {shots}-shot: {result['accuracy']:.2f} ± {result['ci95']:.2f} ({seconds:.0f} s)", flush=True)


META_HEADS = {  # --meta-head -> (fewshot train overrides, fewshot eval flags of the same head on the frozen backbone)
    "protonet_power": (["model.transform=power_cl2n"], ["--head", "protonet", "--transform", "power_cl2n"]),
    # Meta-Baseline's meta-stage (Chen et al. 2021): cosine prototypes with a learned temperature, no transform
    "meta_baseline": (["model.head_options={distance: cosine, temperature: 10.0}"],
                      ["--head", "protonet", "--head-option", "distance=cosine"]),
}


def meta_train(args: argparse.Namespace, work: Path) -> None:
    run_dir = work / "meta-trained"
    overrides, frozen_head = META_HEADS[args.meta_head]
    started = time.perf_counter()
    run([*FEWSHOT, "train", "--data", args.data, *FROZEN, "--head", "protonet", "--out", str(run_dir),
         *[item for o in overrides for item in ("--set", o)], "--set", f"train.episodes={args.episodes}",
         "--set", "train.ways=5", "--set", "train.shots=5", "--set", "train.queries=10",
         "--set", f"train.lr={args.lr}", "--set", "train.schedule=cosine",
         "--set", f"train.val_every={max(1, args.episodes // 3)}", "--set", "train.val_episodes=100",
         "--no-progress"])
    minutes = (time.perf_counter() - started) / 60
    note = f"{args.episodes} episodes 5-way 5-shot 10-query, Adam {args.lr} cosine, {minutes:.0f} min"
    for shots in (1, 5):
        evaluate(f"frozen lite0 84px, {args.meta_head}", [*FROZEN, *frozen_head], args.data, shots,
                 args.eval_episodes, work, "no training")
        evaluate(f"meta-trained lite0 84px, {args.meta_head}", [str(run_dir)], args.data, shots,
                 args.eval_episodes, work, note)


def finetune(args: argparse.Namespace, work: Path) -> None:
    fixed = ["--head", "finetune", "--head-option", f"steps={args.steps}", "--head-option", "backbone_lr=1e-4"]
    searched = [*fixed, "--head-option", "lr_candidates=[0, 1e-4, 1e-3]"]
    for shots in args.shots:
        evaluate("frozen lite0 84px, protonet", [*FROZEN, "--head", "protonet"], args.data, shots, args.episodes,
                 work, "no training")
        evaluate("frozen lite0 84px, protonet+power_cl2n", [*FROZEN, "--head", "protonet", "--transform",
                                                            "power_cl2n"], args.data, shots, args.episodes, work,
                 "no training")
        evaluate(f"finetune lite0 84px, backbone lr 1e-4, {args.steps} steps", [*FROZEN, *fixed], args.data, shots,
                 args.episodes, work, "last stage + classifier, flips")
        evaluate(f"finetune lite0 84px, lr chosen per task, {args.steps} steps", [*FROZEN, *searched], args.data,
                 shots, args.episodes, work, "candidates 0, 1e-4, 1e-3 on pseudo-episodes of the support")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=("meta-train", "finetune"))
    parser.add_argument("--data", default="../shared/data/tinyimagenet-fs", help="folder with train/ val/ test/")
    parser.add_argument("--episodes", type=int, default=300,
                        help="meta-train: training episodes; finetune: test episodes per row")
    parser.add_argument("--eval-episodes", type=int, default=600, help="meta-train: test episodes per row")
    parser.add_argument("--lr", type=float, default=1e-4, help="meta-train: Adam learning rate")
    parser.add_argument("--meta-head", choices=list(META_HEADS), default="protonet_power",
                        help="meta-train: ProtoNet on power_cl2n features (P>M>F's stage), or Meta-Baseline's "
                             "cosine ProtoNet with a learned temperature")
    parser.add_argument("--steps", type=int, default=20, help="finetune: fine-tuning steps per episode")
    parser.add_argument("--shots", type=int, nargs="+", default=[1],
                        help="finetune: shot counts (default 1; 5-shot costs about 5x per episode)")
    args = parser.parse_args()
    (HERE / "results").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        (meta_train if args.experiment == "meta-train" else finetune)(args, Path(work))


if __name__ == "__main__":
    main()
