"""Omniglot (Vinyals split, 28x28, Conv4) against the published table: train, then evaluate 5-way and
20-way on 1000 test episodes with 15 queries per class.

Each row trains one model with ``fewshot train`` (config + overrides below) and evaluates it with
``fewshot eval``; results are appended to ``benchmarks/results/omniglot.jsonl`` and the table is
printed in Markdown. Run every row, or some::

    python benchmarks/omniglot.py                       # all rows, several hours on a 2-core CPU
    python benchmarks/omniglot.py --rows protonet-1shot --device cuda
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
PUBLISHED = {("protonet", 5, 1): 98.8, ("protonet", 5, 5): 99.7, ("protonet", 20, 1): 96.0, ("protonet", 20, 5): 98.9,
             ("relation", 5, 1): 99.6, ("relation", 5, 5): 99.8, ("relation", 20, 1): 97.6, ("relation", 20, 5): 99.1,
             ("maml", 5, 1): 98.7, ("maml", 5, 5): 99.9}

ROWS = {
    "protonet-1shot": ("protonet-omniglot.yaml", 1, ["train.shots=1", "train.episodes=9000", "eval.shots=1"]),
    "protonet-5shot": ("protonet-omniglot.yaml", 5, ["train.shots=5", "train.episodes=4000", "train.step_size=1000",
                                                     "eval.shots=5"]),
    "relation-1shot": ("relation-omniglot.yaml", 1, ["train.shots=1", "train.queries=19", "train.episodes=6000",
                                                     "train.step_size=1500", "eval.shots=1"]),
    "relation-5shot": ("relation-omniglot.yaml", 5, ["train.shots=5", "train.queries=15", "train.episodes=3000",
                                                     "train.step_size=1500", "eval.shots=5"]),
    # MAML's classifier has 5 outputs (the paper's 5-way model): evaluated 5-way only.
    "maml-1shot": ("maml-omniglot.yaml", 1, ["train.queries=5", "train.episodes=16000", "train.step_size=5000",
                                             "train.val_every=2000"], (5,)),
}


OMNIGLOT = "../shared/data/omniglot"  # the configs name placeholder paths; the real ones are passed here
DATA_SETS = ["--set", f"data.root=[{OMNIGLOT}/images_background, {OMNIGLOT}/images_evaluation]",
             *[item for phase in ("train", "val", "test")
               for item in ("--set", f"data.classes.{phase}={OMNIGLOT}/splits/vinyals/{phase}.txt")]]


def fewshot(*args: str) -> None:
    command = [sys.executable, "-m", "fewshot", *args]
    print("$ fewshot " + " ".join(args), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def run_row(name: str, device: str, runs: Path, results: Path) -> None:
    config, shots, overrides, *ways_evaluated = ROWS[name]
    run_dir = runs / f"omniglot-{name}"
    sets = [item for override in overrides for item in ("--set", override)]
    started = time.perf_counter()
    budget = int(next(o.split("=")[1] for o in overrides if o.startswith("train.episodes=")))
    finished = run_dir / "summary.json"
    if not finished.exists() or json.loads(finished.read_text())["episodes"] < budget:
        # A row whose budget was raised resumes its run from the last checkpoint (exact resume).
        resume = ["--resume"] if (run_dir / "checkpoints" / "last.pt").exists() else []
        fewshot("train", f"configs/{config}", *DATA_SETS, *sets, "--set", f"train.device={device}", "--out",
                str(run_dir), "--no-progress", *resume)
    summary = json.loads((run_dir / "summary.json").read_text())
    head = config.split("-")[0]
    for ways in (ways_evaluated[0] if ways_evaluated else (5, 20)):
        out = run_dir / f"test-{ways}way-{shots}shot.json"
        fewshot("eval", str(run_dir), "--ways", str(ways), "--shots", str(shots), "--queries", "15",
                "--episodes", "1000", "--seed", "0", "--json", str(out), "--device", device, "--no-progress")
        result = json.loads(out.read_text())
        record = {"row": name, "head": head, "ways": ways, "shots": shots, "accuracy": result["accuracy"],
                  "ci95": result["ci95"], "published": PUBLISHED[(head, ways, shots)],
                  "train_episodes": summary["episodes"], "train_minutes": summary["minutes"],
                  "command": f"fewshot train configs/{config} " + " ".join(f"--set {o}" for o in overrides),
                  "machine": f"{os.cpu_count()} cores {platform.machine()}, device {device}",
                  "date": time.strftime("%Y-%m-%d"), "wall_minutes": (time.perf_counter() - started) / 60}
        append_record(results, record)


def print_table(results: Path) -> None:
    latest = latest_records(results, lambda record: (record["head"], record["ways"], record["shots"]))
    print("| method | setting | ours (± 95% CI) | published | diff | train episodes | train minutes | machine |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for key in sorted(latest):
        r = latest[key]
        print(f"| {r['head']} | {r['ways']}-way {r['shots']}-shot | {r['accuracy']:.2f} ± {r['ci95']:.2f} | "
              f"{r['published']} | {r['accuracy'] - r['published']:+.2f} | {r['train_episodes']} | "
              f"{r['train_minutes']:.0f} | {r['machine']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--runs", default=str(ROOT / "runs"), help="where run directories go (not committed)")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    results = HERE / "results" / "omniglot.jsonl"
    results.parent.mkdir(exist_ok=True)
    if not args.table_only:
        for name in args.rows:
            run_row(name, args.device, Path(args.runs), results)
    print_table(results)


if __name__ == "__main__":
    main()
