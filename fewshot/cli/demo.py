"""``fewshot demo``: the whole pipeline on the glyph dataset."""

from __future__ import annotations

import argparse


NAME = "demo"
PARSER = dict(
    help="generate a glyph dataset, meta-train, evaluate with intervals and predict (a few minutes)",
    description="The whole product on an embedded default: generates glyph classes from installed fonts (no "
                "download), meta-trains a Conv4 prototypical network for about a minute, evaluates on unseen "
                "classes with 95% intervals and classifies a few new images with predict.",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/demo-<date>-<time>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a key of the demo config (configs/demo.yaml), e.g. --set train.episodes=100")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..training.demo import run_demo
    from .runs import stopped_line

    found = run_demo(args.out, args.set, progress=not args.no_progress)
    if found.get("interrupted"):  # as fewshot train says it: the checkpoint and how to go on
        run_dir = found["run_dir"]
        resume = f"fewshot train {run_dir}/config.yaml --out {run_dir} --resume"
        print(stopped_line(found["interrupted"], f"episode {found['train']['episodes']}", run_dir, resume))
    return 0
