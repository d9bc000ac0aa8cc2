"""Transductive refinement (soft k-means, self-training) and per-class metrics with the confusion PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import make_image_folder
from fewshot.cli import main
from fewshot.config import ModelConfig
from fewshot.evaluation.episodic import per_class_report
from fewshot.model.network import build_model
from fewshot.inference.refine import classify_refined, self_training, soft_kmeans


def test_soft_kmeans_matches_the_formula():
    support = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    labels = torch.tensor([0, 1])
    query = torch.tensor([[1.0, 0.0], [3.0, 1.0], [5.0, 0.0]])
    assert torch.allclose(soft_kmeans(support, labels, query, 2, steps=0), -torch.cdist(query, support).pow(2))
    z = (-torch.cdist(query, support).pow(2)).softmax(1)
    prototypes = (support + z.T @ query) / (1 + z.sum(0))[:, None]
    assert torch.allclose(soft_kmeans(support, labels, query, 2, steps=1), -torch.cdist(query, prototypes).pow(2))


def test_soft_kmeans_helps_when_the_one_shot_is_atypical():
    generator = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    query = torch.cat([centers[0] + 0.5 * torch.randn(30, 2, generator=generator),
                       centers[1] + 0.5 * torch.randn(30, 2, generator=generator)])
    truth = torch.arange(2).repeat_interleave(30)
    support = torch.tensor([[2.2, 0.0], [3.0, 0.0]])  # class 0's only shot lies towards class 1
    labels = torch.tensor([0, 1])
    plain = (soft_kmeans(support, labels, query, 2, steps=0).argmax(1) == truth).float().mean()
    refined = (soft_kmeans(support, labels, query, 2, steps=3).argmax(1) == truth).float().mean()
    assert refined > plain + 0.05


def test_self_training_adds_only_confident_queries():
    model = build_model(ModelConfig(backbone="conv4", head="protonet"), 1, 28)
    support = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    labels = torch.tensor([0, 1])
    query = torch.tensor([[0.5, 0.0], [5.0, 0.0], [9.0, 0.0]])
    base = model.classify(support, labels, query, 2)
    assert torch.equal(self_training(model, support, labels, query, 2, threshold=1.01), base)
    expected = model.classify(torch.cat([support, query[[0, 2]]]), torch.tensor([0, 1, 0, 1]), query, 2)
    assert torch.allclose(self_training(model, support, labels, query, 2, threshold=0.9), expected)
    assert torch.equal(classify_refined(model, support, labels, query, 2, "none"), base)


def test_per_class_report_values():
    report = per_class_report(["a", "b", "c"], np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 2, 0]))
    assert report["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    a, b, c = report["classes"]
    assert a["precision"] == pytest.approx(50.0) and a["recall"] == pytest.approx(50.0)
    assert b["precision"] == pytest.approx(200 / 3) and b["recall"] == pytest.approx(100.0)
    assert b["f1"] == pytest.approx(80.0) and c["queries"] == 2


def test_eval_cli_refine_and_per_class(tmp_path, capsys):
    make_image_folder(tmp_path / "d", classes=6, per_class=10, size=20)
    common = ["eval", "--backbone", "conv4", "--head", "protonet", "--image-size", "20", "--data", str(tmp_path / "d"),
              "--ways", "4", "--shots", "1", "--queries", "5", "--episodes", "40", "--no-progress"]
    png = tmp_path / "confusion.png"
    assert main(common + ["--per-class", "--confusion", str(png), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "precision  recall" in out and f"confusion matrix: {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((tmp_path / "r.json").read_text())
    confusion = np.array(result["per_class"]["confusion"])
    assert confusion.shape == (6, 6) and confusion.sum() == 40 * 4 * 5
    for method in ("soft_kmeans", "self_training"):
        assert main(common + ["--refine", method, "--json", str(tmp_path / f"{method}.json")]) == 0
        refined = json.loads((tmp_path / f"{method}.json").read_text())
        assert refined["refine"] == method and len(refined["per_episode"]) == 40
    assert "[refined: self_training]" in capsys.readouterr().out
    assert main(["eval", "--backbone", "conv4", "--head", "finetune", "--image-size", "20", "--data",
                 str(tmp_path / "d"), "--ways", "4", "--shots", "1", "--queries", "5", "--episodes", "2",
                 "--refine", "soft_kmeans", "--no-progress"]) == 2
    assert "adapts the backbone per episode" in capsys.readouterr().err
