"""``fewshot pretrain``: supervised pretraining on the base classes."""

from __future__ import annotations

import argparse

from .runs import add_run_arguments, run_training


NAME = "pretrain"
PARSER = dict(
    help="supervised pretraining on all base classes (Baseline / Baseline++ / RFS)",
    description="Train the backbone with a linear or cosine classifier over every training class, on shuffled "
                "batches (pretrain.* keys: epochs, batch_size, lr, classifier, mixup, cutmix, label_smoothing), "
                "validating episodically after each epoch. Same run directory, --resume, SIGTERM handling and "
                "torchrun support as fewshot train; the run directory works with fewshot eval, and its "
                "checkpoints/best.pt as model.weights for fewshot train.",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, "pretrain")


def run(args: argparse.Namespace) -> int:
    run_training(args, "pretrain")
    return 0
