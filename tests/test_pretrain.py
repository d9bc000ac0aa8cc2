"""Supervised pretraining stage: learns the base classes, saves a backbone that train and eval accept."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_image_folder
from fewshot.model.checkpoint import load_checkpoint
from fewshot.cli import main
from fewshot.config import config_from_dict
from fewshot.training.pretrain import mix_batch, pretrain
from fewshot.training.train import train


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pdata")
    make_image_folder(root / "train", classes=6, per_class=12, size=20, seed=1)
    make_image_folder(root / "val", classes=4, per_class=10, size=20, seed=2)
    make_image_folder(root / "test", classes=5, per_class=10, size=20, seed=3)
    return root


def config(root, **pretrain_options):
    return config_from_dict({
        "data": {"root": str(root), "split": {"train": "train", "val": "val", "test": "test"}, "image_size": 20,
                 "augment": "flip"},
        "model": {"backbone": "conv4", "head": "protonet", "backbone_options": {"width": 16}},
        "pretrain": {"epochs": 4, "batch_size": 16, "lr": 0.05, "val_episodes": 20, **pretrain_options},
        "eval": {"ways": 4, "shots": 1, "queries": 4},
        "train": {"ways": 3, "shots": 1, "queries": 2, "episodes": 6, "val_every": 0},
    })


@pytest.mark.parametrize("options", [{"classifier": "linear"},
                                     {"classifier": "cosine", "mixup": 0.4, "cutmix": 1.0, "label_smoothing": 0.1}])
def test_pretrain_learns_base_classes_and_feeds_train_and_eval(data_root, tmp_path, options, capsys):
    run_dir = tmp_path / "pre"
    summary = pretrain(config(data_root, **options), run_dir, progress=False)
    assert summary["classes"] == 6 and summary["best_validation"]["accuracy"] > 25.0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert len(losses) == 4 and losses[-1] < losses[0]
    saved = load_checkpoint(run_dir)
    assert saved["stage"] == "pretrain" and any(k.startswith("backbone.") for k in saved["model"])
    assert main(["eval", str(run_dir), "--ways", "4", "--shots", "1", "--queries", "4", "--episodes", "30",
                 "--no-progress"]) == 0
    assert "4-way 1-shot" in capsys.readouterr().out
    # episodic training starts from the pretrained backbone
    follow = config(data_root)
    follow.model.weights = str(run_dir / "checkpoints" / "best.pt")
    train(follow, tmp_path / "episodic", progress=False)
    assert (tmp_path / "episodic" / "checkpoints" / "last.pt").exists()


def test_mixup_and_cutmix_mix_images_and_targets():
    generator = torch.Generator().manual_seed(0)
    images = torch.arange(4 * 3 * 8 * 8, dtype=torch.float32).reshape(4, 3, 8, 8)
    labels = torch.tensor([0, 1, 2, 3])
    same, targets = mix_batch(images, labels, 4, 0.0, 0.0, generator)
    assert same is images and torch.equal(targets, torch.eye(4))
    for mixup, cutmix in ((0.4, 0.0), (0.0, 1.0)):
        mixed, soft = mix_batch(images, labels, 4, mixup, cutmix, generator)
        assert mixed.shape == images.shape and not torch.equal(mixed, images)
        assert torch.allclose(soft.sum(1), torch.ones(4)) and (soft.max(1).values < 1).any()
