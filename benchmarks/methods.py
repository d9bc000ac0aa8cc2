"""The method zoo reproduced side by side: one protocol, one budget, the same seeds and the same 600 test episodes
for every method.

Meta-trainable heads are trained with ``fewshot train`` from their config (``configs/<method>-<dataset>.yaml``)
for ``--train-episodes`` episodes of the evaluated shape (Omniglot: at most 20 - shots queries, its classes have
20 drawings); the heads that are evaluation-time only (transductive ones, Baseline++'s cosine classifier, the
linear probe) run on the ProtoNet run's backbone (``fewshot eval RUN --head H``). On tinyimagenet-fs the pretrained
methods come too: Baseline (``linear_probe`` after a linear-classifier ``fewshot pretrain``), Baseline++
(``baseline_pp`` after a cosine-classifier pretrain) and Meta-Baseline (the linear pretrain, then the cosine
ProtoNet meta-stage of ``configs/meta-baseline-tinyimagenet.yaml``). Every row is evaluated by ``fewshot eval``
on ``--episodes`` test episodes of seed 0 (15 queries per class) and appended to
``benchmarks/results/methods.jsonl``; the table is printed in Markdown with the published Omniglot numbers where
the paper reports them. Runs are kept in ``--runs`` and reused (a run with a best checkpoint is not retrained),
so ``--train-ways 5 --ways 20`` tests the 5-way runs on 20-way episodes. The CPU budget is stated with the
table: the configs hold the full budgets for a GPU rerun. Run::

    python benchmarks/methods.py --ways 5 --shots 1 5 --train-episodes 3000
    python benchmarks/methods.py --ways 20 --train-ways 5 --shots 1 5 --train-episodes 3000
    python benchmarks/methods.py --dataset tinyimagenet --shots 1 5 --train-shots 5 --train-episodes 300
    python benchmarks/methods.py --dataset tinyimagenet --set model.backbone=resnet12 --device cuda \
        --train-episodes 20000 --pretrain-epochs 90 --runs runs/methods-resnet12
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
ROOT = HERE.parent
TRAINED = {  # method -> (config, extra overrides); {data} is the dataset's name in configs/<method>-<data>.yaml
    "protonet": ("protonet-{data}.yaml", []),
    "matching": ("matching-{data}.yaml", []),
    "r2d2": ("r2d2-{data}.yaml", []),
    "metaoptnet": ("metaoptnet-{data}.yaml", []),
    "feat": ("feat-{data}.yaml", []),
    "relation": ("relation-{data}.yaml", []),
    "dn4": ("dn4-{data}.yaml", []),
    "frn": ("frn-{data}.yaml", []),
}
OMNIGLOT_TRAINED = {  # Omniglot has no dn4/frn config: ProtoNet's with the head and the pooling swapped
    "dn4": ("protonet-omniglot.yaml", ["model.head=dn4", "model.backbone_options={pooled_blocks: 2}"]),
    "frn": ("protonet-omniglot.yaml", ["model.head=frn", "model.backbone_options={pooled_blocks: 2}"]),
}
ON_PROTONET = ["linear_probe", "baseline_pp", "bd_cspn", "laplacianshot", "pt_map", "tim", "alpha_tim"]
PRETRAINED = {  # method -> (pretrain classifier, head evaluated on the pretrained backbone; None: meta-stage)
    "baseline": ("linear", "linear_probe"),
    "baseline++": ("cosine", "baseline_pp"),
    "meta-baseline": ("linear", None),
}
PUBLISHED = {  # Omniglot, Conv4, (ways, shots) -> accuracy, from each paper
    "protonet": {(5, 1): 98.8, (5, 5): 99.7, (20, 1): 96.0, (20, 5): 98.9},
    "relation": {(5, 1): 99.6, (5, 5): 99.8, (20, 1): 97.6, (20, 5): 99.1},
    "matching": {(5, 1): 98.1, (5, 5): 98.9, (20, 1): 93.8, (20, 5): 98.5},
    "r2d2": {(5, 1): 98.6, (5, 5): 99.7, (20, 1): 94.7, (20, 5): 98.9},
}


def data_overrides(args) -> list[str]:
    """``--set`` overrides pointing a config at the real data (the configs hold placeholders)."""
    if args.dataset == "omniglot":
        root = args.data
        return [f"data.root=[{root}/images_background, {root}/images_evaluation]",
                *[f"data.classes.{phase}={root}/splits/vinyals/{phase}.txt" for phase in ("train", "val", "test")]]
    return [f"data.root={args.data}", f"data.image_size={args.image_size}"]


def eval_data(args) -> list[str]:
    """``fewshot eval`` flags for the test classes, when a head is evaluated on a run's backbone weights."""
    if args.dataset == "omniglot":
        return ["--image-size", "28", "--channels", "1", "--data", f"{args.data}/images_background",
                "--data", f"{args.data}/images_evaluation", "--classes", f"{args.data}/splits/vinyals/test.txt"]
    return ["--image-size", str(args.image_size), "--channels", "3", "--data", args.data, "--split", "test"]


def fewshot(*args: str) -> str:
    """Run a fewshot command; its error's last line is raised as a RuntimeError (the row is skipped)."""
    print("$ fewshot " + " ".join(args), flush=True)
    done = subprocess.run([sys.executable, "-m", "fewshot", *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        lines = done.stderr.strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit status {done.returncode}")
    return done.stdout


def sets(overrides: list[str]) -> list[str]:
    return [item for o in overrides for item in ("--set", o)]


def train(method: str, args, runs: Path, shots: int, weights: str = "none") -> Path:
    """``fewshot train`` of ``method`` from its config for the budget (kept when the run has a best checkpoint)."""
    run_dir = runs / f"{method}-{args.train_ways or args.ways}w{shots}s"
    if (run_dir / "checkpoints" / "best.pt").exists():
        return run_dir
    if weights != "none":  # Meta-Baseline's meta-stage from a pretrained backbone
        config, extra = "meta-baseline-tinyimagenet.yaml", []
    else:
        config, extra = {**TRAINED, **(OMNIGLOT_TRAINED if args.dataset == "omniglot" else {})}[method]
    budget = [f"train.ways={args.train_ways or args.ways}", f"train.shots={shots}",
              *([f"train.queries={min(15, 20 - shots)}"] if args.dataset == "omniglot" else []),
              f"train.episodes={args.train_episodes}",
              f"train.val_every={max(1, args.train_episodes // 2)}", "train.val_episodes=100",
              f"model.weights={weights}"]
    budget += [] if weights != "none" else [f"train.step_size={max(1, args.train_episodes // 2)}"]
    fewshot("train", f"configs/{config.format(data=args.dataset)}", *sets([*data_overrides(args), *extra, *budget, *args.set]),
            "--out", str(run_dir), "--device", args.device, "--no-progress")
    return run_dir


def pretrain(classifier: str, args, runs: Path) -> Path:
    """``fewshot pretrain`` (configs/pretrain-tinyimagenet.yaml) with a linear or cosine classifier."""
    run_dir = runs / f"pretrain-{classifier}"
    if not (run_dir / "checkpoints" / "best.pt").exists():
        fewshot("pretrain", "configs/pretrain-tinyimagenet.yaml",
                *sets([*data_overrides(args), f"pretrain.classifier={classifier}",
                       f"pretrain.epochs={args.pretrain_epochs}", "pretrain.val_episodes=100", *args.set]),
                "--out", str(run_dir), "--device", args.device, "--no-progress")
    return run_dir


def evaluate(run_dir: Path, head: str | None, args, shots: int) -> dict:
    """``fewshot eval`` of the run (its own head), or of ``head`` on the run's backbone weights."""
    out = run_dir / f"eval-{head or 'own'}-{args.ways}w{shots}s.json"
    if head:
        from fewshot.config import load_config

        backbone = load_config(run_dir / "config.yaml").model.backbone
        model = ["--backbone", backbone, "--weights", str(run_dir / "checkpoints" / "best.pt"), "--head", head,
                 *eval_data(args)]
    else:
        model = [str(run_dir), "--split", "test"]
    fewshot("eval", *model, "--ways", str(args.ways), "--shots", str(shots), "--queries", "15",
            "--episodes", str(args.episodes), "--seed", "0", "--json", str(out), "--no-progress")
    return json.loads(out.read_text())


def row(method: str, args, runs: Path, shots: int) -> tuple[dict, str]:
    """Evaluate one method at ``shots`` (training what it needs first); its result and what it was trained on."""
    train_shots = args.train_shots or shots
    if method in PRETRAINED:
        classifier, head = PRETRAINED[method]
        backbone = pretrain(classifier, args, runs)
        if head:
            return evaluate(backbone, head, args, shots), f"{classifier} pretraining"
        run_dir = train(method, args, runs, train_shots, str(backbone / "checkpoints" / "best.pt"))
        return evaluate(run_dir, None, args, shots), f"linear pretraining + meta-stage {train_shots}-shot"
    if method in TRAINED:
        return evaluate(train(method, args, runs, train_shots), None, args, shots), f"its own {train_shots}-shot run"
    run_dir = train("protonet", args, runs, train_shots)
    return evaluate(run_dir, method, args, shots), f"the protonet {train_shots}-shot run"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("omniglot", "tinyimagenet"), default="omniglot")
    parser.add_argument("--data", help="the dataset's folder (default ../shared/data/omniglot or tinyimagenet-fs)")
    parser.add_argument("--methods", nargs="+", help="default: every trained and evaluation-time head (and, on "
                        f"tinyimagenet, the pretrained methods {', '.join(PRETRAINED)})")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, nargs="+", default=[1], help="test shots (one row per method each)")
    parser.add_argument("--train-ways", type=int, help="training ways (default: --ways)")
    parser.add_argument("--train-shots", type=int, help="training shots (default: each test shots trains its own)")
    parser.add_argument("--train-episodes", type=int, default=2000)
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=84, help="tinyimagenet image size (default 84)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra override for every training run, e.g. model.backbone=resnet12")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--runs", default="runs/methods")
    parser.add_argument("--json", default="benchmarks/results/methods.jsonl")
    args = parser.parse_args()
    args.data = args.data or f"../shared/data/{'omniglot' if args.dataset == 'omniglot' else 'tinyimagenet-fs'}"
    methods = args.methods or [*TRAINED, *ON_PROTONET, *(PRETRAINED if args.dataset == "tinyimagenet" else [])]
    runs = ROOT / args.runs
    print(f"# python benchmarks/methods.py {' '.join(sys.argv[1:])}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    rows = []
    for shots in args.shots:
        for method in methods:
            started = time.time()
            try:
                found, trained_on = row(method, args, runs, shots)
            except RuntimeError as exc:
                print(f"{method} {shots}-shot: skipped ({exc})", flush=True)
                continue
            rows.append((method, shots, found, trained_on))
            with open(ROOT / args.json, "a") as log:
                log.write(json.dumps({
                    "method": method, "dataset": args.dataset, "ways": args.ways, "shots": shots,
                    "train_episodes": args.train_episodes, "trained_on": trained_on, "accuracy": found["accuracy"],
                    "ci95": found["ci95"], "episodes": found["episodes"], "minutes": (time.time() - started) / 60,
                    "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}) + "\n")
    print(f"| method | shots | {args.dataset} {args.ways}-way | published | trained on |")
    print("|---|---:|---:|---:|---|")
    for method, shots, found, trained_on in rows:
        published = PUBLISHED.get(method, {}).get((args.ways, shots)) if args.dataset == "omniglot" else None
        print(f"| {method} | {shots} | {found['accuracy']:.2f} ± {found['ci95']:.2f} | {published or '-'} | "
              f"{trained_on} |")


if __name__ == "__main__":
    main()
