"""``fewshot train``: episodic meta-training."""

from __future__ import annotations

import argparse

from .runs import add_run_arguments, run_training


NAME = "train"
PARSER = dict(
    help="meta-train on episodes (a YAML config, or --data DIR and model flags)",
    description="Episodic meta-training from a YAML config, or from flags alone (fewshot train --data DIR "
                "--backbone conv4 --head protonet). The run directory receives config.yaml (the full resolved "
                "config), metrics.jsonl, checkpoints/last.pt and best.pt, curves.png and summary.json.",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, "train")


def run(args: argparse.Namespace) -> int:
    run_training(args, "train")
    return 0
