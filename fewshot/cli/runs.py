"""What ``train`` and ``pretrain`` share: their flags, config and run directory, and the run itself."""

from __future__ import annotations

import argparse
import json
import os
import shlex
from typing import Sequence

from .common import int_at_least


def data_overrides(data: str) -> list[str]:
    """``--data DIR`` as config overrides: ``train/ val/ test/`` subfolders become the phases when present,
    else every class folder under DIR is a training class."""
    from pathlib import Path

    root = Path(data).expanduser()
    overrides = [f"data.root={json.dumps(str(root))}"]
    for phase in ("train", "val", "test"):
        if (root / phase).is_dir():
            overrides.append(f"data.split.{phase}={phase}")
    return overrides


def config_and_run_dir(args: argparse.Namespace):
    """The validated config of train / pretrain (YAML, if any, then the model and data flags, then --set and
    --device) and the run directory."""
    from ..config import load_config
    from ..training.train import default_run_dir

    flags = data_overrides(args.data) if args.data else []
    for flag, key in (("backbone", "model.backbone"), ("weights", "model.weights"), ("head", "model.head"),
                      ("image_size", "data.image_size"), ("channels", "data.channels")):
        if getattr(args, flag) is not None:
            flags.append(f"{key}={getattr(args, flag)}")
    config = load_config(args.config, flags + args.set)
    if getattr(args, "logger", None):
        from ..training.loggers import check_loggers

        config.train.loggers = sorted(set(config.train.loggers) | set(args.logger))
        check_loggers(config.train.loggers)
    if args.device:
        config.train.device = args.device
    return config, args.out or default_run_dir(args.config)


def resume_command(argv: Sequence[str], run_dir) -> str:
    """The command line that resumes this run: the same arguments, ``--out RUN_DIR`` and ``--resume``."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--out":
            skip = True
        elif not item.startswith("--out=") and item != "--resume":
            kept.append(item)
    return shlex.join(["fewshot", *kept, "--out", str(run_dir), "--resume"])


def run_training(args: argparse.Namespace, command: str) -> None:
    """``fewshot train`` / ``fewshot pretrain``: run, then print how it ended (rank 0 only)."""
    if command == "train":
        from ..training.train import train as run
    else:
        from ..training.pretrain import pretrain as run

    config, run_dir = config_and_run_dir(args)
    summary = run(config, run_dir, resume=args.resume, progress=not args.no_progress)
    if os.environ.get("RANK", "0") != "0":
        return
    if summary["interrupted"]:
        done = f"episode {summary['episodes']}" if command == "train" else f"batch {summary['steps']}"
        print(stopped_line(summary["interrupted"], done, run_dir, resume_command(args.argv, run_dir)))
    elif command == "train":
        line = f"trained {summary['episodes']} episodes in {summary['minutes']:.1f} min"
        print(f"{line}{best_validation_text(summary, 'at episode')}; run directory {run_dir}")
    else:
        line = f"pretrained {summary['epochs']} epochs on {summary['classes']} classes in {summary['minutes']:.1f} min"
        print(f"{line}{best_validation_text(summary, 'after epoch')}; run directory {run_dir} (use it with fewshot "
              "eval, or as model.weights for fewshot train)")


def stopped_line(signal_name: str, done: str, run_dir, resume: str) -> str:
    """What a run stopped by a signal prints (``fewshot train``, ``pretrain`` and ``demo`` alike)."""
    return (f"stopped by {signal_name} after {done}; checkpoint saved in {run_dir}/checkpoints/last.pt; "
            f"resume with: {resume}")


def best_validation_text(summary: dict, when: str) -> str:
    """``"; best validation 98.50 ± 0.45 % at episode 2000"``, or nothing when the run never validated."""
    best = summary["best_validation"]
    return (f"; best validation {best['accuracy']:.2f} ± {best['ci95']:.2f} % {when} "
            f"{best.get('epoch', best['episode'])}") if best else ""


def add_run_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags of the training commands: config, data and model without YAML, overrides, run directory."""
    from ..declared import capability, names

    parser.add_argument("config", metavar="CONFIG", nargs="?",
                        help="YAML config (see configs/); unknown keys are errors. Optional: --data and the model "
                             "flags below are enough")
    parser.add_argument("--data", metavar="DIR",
                        help="dataset folder (sets data.root): its train/ val/ test/ subfolders are the phases when "
                             "present, else every class folder under it is a training class")
    heads = [name for name in names("fewshot.heads", "HEADS")
             if command != "train" or capability("fewshot.heads", "HEADS", name, "meta_trainable")]
    backbones = names("fewshot.backbones", "BACKBONES")
    parser.add_argument("--backbone", help=f"model.backbone: {', '.join(backbones)} (default resnet50)")
    parser.add_argument("--weights", help="model.weights: none (default), imagenet, or a state-dict / checkpoint file")
    parser.add_argument("--head", help=f"model.head: {', '.join(heads)} (default protonet)")
    parser.add_argument("--image-size", type=int_at_least(8), metavar="PX",
                        help="data.image_size (default: the backbone's native size, e.g. 260 for efficientnet_lite2, "
                             "else 84)")
    parser.add_argument("--channels", type=int, choices=(1, 3), help="data.channels: 1 or 3 (default 3)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key; the value is parsed as YAML, e.g. --set train.lr=1e-3 "
                             "--set 'data.root=[dir_a, dir_b]' (repeatable; applied after the flags above)")
    parser.add_argument("--out", metavar="RUN_DIR",
                        help="run directory, new or empty (default runs/<config>-<date>-<time>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from checkpoints/last.pt, exactly where it stopped")
    parser.add_argument("--device", help="override train.device: auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--logger", action="append", default=[], choices=names("fewshot.training.loggers", "LOGGERS"),
                        help="also log the metrics to tensorboard (RUN_DIR/tensorboard; needs pip install "
                             "'fewshot[tensorboard]'); added to train.loggers; metrics.jsonl stays the record")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
