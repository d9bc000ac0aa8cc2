"""The method zoo reproduced side by side: one protocol, one budget, the same seeds and the same 600 test episodes
for every method.

Meta-trainable heads are trained with ``fewshot train`` from their config (``configs/<method>-omniglot.yaml``, or
``protonet-omniglot.yaml`` with the head swapped) for ``--train-episodes`` episodes of the evaluated shape; the
heads that are evaluation-time only (transductive ones, Baseline++, the linear probe) run on the ProtoNet run's
backbone (``fewshot eval RUN --head H``). Every row is evaluated by ``fewshot eval`` on ``--episodes`` test
episodes of seed 0 (15 queries per class) and appended to ``benchmarks/results/methods.jsonl``; the table is
printed in Markdown with the published Omniglot numbers where the paper reports them. The CPU budget is stated
with the table: the configs hold the full budgets for a GPU rerun. Run::

    python benchmarks/methods.py --ways 5 --shots 1 --train-episodes 2000
    python benchmarks/methods.py --methods protonet matching --ways 20 --shots 5 --device cuda --train-episodes 20000
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
OMNIGLOT = "../shared/data/omniglot"
DATA = ["--set", f"data.root=[{OMNIGLOT}/images_background, {OMNIGLOT}/images_evaluation]",
        *[item for phase in ("train", "val", "test")
          for item in ("--set", f"data.classes.{phase}={OMNIGLOT}/splits/vinyals/{phase}.txt")]]
TRAINED = {  # method -> (config, extra overrides)
    "protonet": ("protonet-omniglot.yaml", []),
    "matching": ("matching-omniglot.yaml", []),
    "r2d2": ("r2d2-omniglot.yaml", []),
    "metaoptnet": ("metaoptnet-omniglot.yaml", []),
    "feat": ("feat-omniglot.yaml", []),
    "relation": ("relation-omniglot.yaml", []),
    "dn4": ("protonet-omniglot.yaml", ["model.head=dn4", "model.backbone_options={pooled_blocks: 2}"]),
    "frn": ("protonet-omniglot.yaml", ["model.head=frn", "model.backbone_options={pooled_blocks: 2}"]),
}
ON_PROTONET = ["linear_probe", "baseline_pp", "bd_cspn", "laplacianshot", "pt_map", "tim", "alpha_tim"]
PUBLISHED = {  # Omniglot, Conv4, (ways, shots) -> accuracy, from each paper
    "protonet": {(5, 1): 98.8, (5, 5): 99.7, (20, 1): 96.0, (20, 5): 98.9},
    "relation": {(5, 1): 99.6, (5, 5): 99.8, (20, 1): 97.6, (20, 5): 99.1},
    "matching": {(5, 1): 98.1, (5, 5): 98.9, (20, 1): 93.8, (20, 5): 98.5},
    "r2d2": {(5, 1): 98.6, (5, 5): 99.7, (20, 1): 94.7, (20, 5): 98.9},
}


def fewshot(*args: str) -> str:
    """Run a fewshot command; its error's last line is raised as a RuntimeError (the row is skipped)."""
    print("$ fewshot " + " ".join(args), flush=True)
    done = subprocess.run([sys.executable, "-m", "fewshot", *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        lines = done.stderr.strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit status {done.returncode}")
    return done.stdout


def train(method: str, args, runs: Path) -> Path:
    config, extra = TRAINED[method]
    run_dir = runs / f"{method}-{args.ways}w{args.shots}s"
    if (run_dir / "checkpoints" / "best.pt").exists():
        return run_dir
    sets = [*DATA, *[item for o in extra for item in ("--set", o)],
            *[item for o in (f"train.ways={args.train_ways or args.ways}", f"train.shots={args.shots}",
                             f"train.queries={min(15, 20 - args.shots)}",  # Omniglot has 20 drawings a class
                             f"train.episodes={args.train_episodes}", f"train.val_every={args.train_episodes // 2}",
                             "train.val_episodes=100", f"train.step_size={max(1, args.train_episodes // 2)}")
              for item in ("--set", o)]]
    fewshot("train", f"configs/{config}", *sets, "--out", str(run_dir), "--device", args.device, "--no-progress")
    return run_dir


def evaluate(run_dir: Path, head: str | None, args) -> dict:
    """``fewshot eval`` of the run (its own head), or of ``head`` on the run's backbone weights."""
    out = run_dir / f"eval-{head or 'own'}-{args.ways}w{args.shots}s.json"
    if head:
        model = ["--backbone", "conv4", "--weights", str(run_dir / "checkpoints" / "best.pt"), "--head", head,
                 "--image-size", "28", "--channels", "1", "--data", f"{OMNIGLOT}/images_background",
                 "--data", f"{OMNIGLOT}/images_evaluation", "--classes", f"{OMNIGLOT}/splits/vinyals/test.txt"]
    else:
        model = [str(run_dir), "--split", "test"]
    fewshot("eval", *model, "--ways", str(args.ways), "--shots", str(args.shots), "--queries", "15",
            "--episodes", str(args.episodes), "--seed", "0", "--json", str(out), "--no-progress")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=[*TRAINED, *ON_PROTONET])
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--train-ways", type=int, help="training ways (default: --ways)")
    parser.add_argument("--train-episodes", type=int, default=2000)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--runs", default="runs/methods")
    parser.add_argument("--json", default="benchmarks/results/methods.jsonl")
    args = parser.parse_args()
    runs = ROOT / args.runs
    print(f"# python benchmarks/methods.py {' '.join(sys.argv[1:])}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    rows = []
    for method in args.methods:
        started = time.time()
        try:
            run_dir = train(method if method in TRAINED else "protonet", args, runs)
            found = evaluate(run_dir, None if method in TRAINED else method, args)
        except RuntimeError as exc:
            print(f"{method}: skipped ({exc})", flush=True)
            continue
        rows.append((method, found, time.time() - started))
        with open(ROOT / args.json, "a") as log:
            log.write(json.dumps({"method": method, "ways": args.ways, "shots": args.shots,
                                  "train_episodes": args.train_episodes, "accuracy": found["accuracy"],
                                  "ci95": found["ci95"], "episodes": found["episodes"], "minutes": rows[-1][2] / 60,
                                  "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}) + "\n")
    print(f"| method | Omniglot {args.ways}-way {args.shots}-shot | published | trained on |")
    print("|---|---:|---:|---|")
    for method, found, _ in rows:
        published = PUBLISHED.get(method, {}).get((args.ways, args.shots))
        print(f"| {method} | {found['accuracy']:.2f} ± {found['ci95']:.2f} | {published or '-'} | "
              f"{'its own run' if method in TRAINED else 'the protonet run'} |")


if __name__ == "__main__":
    main()
