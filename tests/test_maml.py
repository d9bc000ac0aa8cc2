"""MAML, first-order MAML and ANIL: the inner loop against a hand-written reference, BatchNorm handling,
training and evaluation through the CLI, and (when learn2learn is importable) against learn2learn."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from conftest import make_image_folder
from fewshot.backbones import build_backbone
from fewshot.cli import main
from fewshot.errors import FewshotError
from fewshot.heads import build_head

WAYS, SHOTS, QUERIES = 3, 2, 4


def mlp_backbone() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Tanh())


def task(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    support = torch.randn(WAYS * SHOTS, 3, 2, 2, generator=generator)
    query = torch.randn(WAYS * QUERIES, 3, 2, 2, generator=generator)
    return (support, torch.arange(WAYS).repeat_interleave(SHOTS), query,
            torch.arange(WAYS).repeat_interleave(QUERIES))


def reference_maml(backbone: nn.Module, classifier: nn.Linear, support, support_labels, query, query_labels,
                   steps: int, lr: float, first_order: bool):
    """MAML written out for the 2-layer network: returns the query loss and the adapted weights."""
    weights = [backbone[1].weight, backbone[1].bias, classifier.weight[:WAYS], classifier.bias[:WAYS]]

    def net(w, x):
        return F.linear(torch.tanh(F.linear(x.flatten(1), w[0], w[1])), w[2], w[3])

    for _ in range(steps):
        grads = torch.autograd.grad(F.cross_entropy(net(weights, support), support_labels), weights,
                                    create_graph=not first_order)
        weights = [w - lr * g for w, g in zip(weights, grads)]
    return F.cross_entropy(net(weights, query), query_labels), weights


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_inner_loop_and_meta_gradient_match_a_hand_written_reference(first_order):
    backbone = mlp_backbone()
    head = build_head("maml", 6, (6,), inner_steps=3, inner_lr=0.3, first_order=first_order, max_ways=WAYS).train()
    support, support_labels, query, query_labels = task()
    logits = head.adapt(backbone, support, support_labels, query, WAYS)
    loss = F.cross_entropy(logits, query_labels)
    ours = torch.autograd.grad(loss, [backbone[1].weight, head.classifier.weight])

    reference_backbone = copy.deepcopy(backbone)
    reference_classifier = copy.deepcopy(head.classifier)
    expected_loss, adapted = reference_maml(reference_backbone, reference_classifier, support, support_labels, query,
                                            query_labels, 3, 0.3, first_order)
    expected = torch.autograd.grad(expected_loss, [reference_backbone[1].weight, reference_classifier.weight])
    torch.testing.assert_close(loss, expected_loss)
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b)
    weights = head.adapted_weights(backbone, {}, support, support_labels, WAYS)
    torch.testing.assert_close(weights["backbone.1.weight"].detach(), adapted[0].detach())


def test_first_and_second_order_meta_gradients_differ():
    support, support_labels, query, query_labels = task()
    grads = []
    for first_order in (False, True):
        backbone = mlp_backbone()
        torch.manual_seed(3)
        head = build_head("maml", 6, (6,), inner_steps=2, inner_lr=0.5, first_order=first_order, max_ways=WAYS)
        loss = F.cross_entropy(head.adapt(backbone, support, support_labels, query, WAYS), query_labels)
        grads.append(torch.autograd.grad(loss, backbone[1].weight)[0])
    assert not torch.allclose(grads[0], grads[1])


def test_anil_adapts_only_the_classifier():
    support, support_labels, query, query_labels = task()
    backbone = mlp_backbone()
    torch.manual_seed(3)
    anil = build_head("anil", 6, (6,), inner_steps=2, inner_lr=0.5, max_ways=WAYS)
    reference = copy.deepcopy(anil.classifier)
    logits = anil.adapt(backbone, support, support_labels, query, WAYS)
    # the reference: the backbone stays, only the classifier takes the two steps
    features_s, features_q = backbone(support), backbone(query)
    weights = [reference.weight[:WAYS], reference.bias[:WAYS]]
    for _ in range(2):
        grads = torch.autograd.grad(F.cross_entropy(F.linear(features_s, *weights), support_labels), weights,
                                    create_graph=True)
        weights = [w - 0.5 * g for w, g in zip(weights, grads)]
    torch.testing.assert_close(logits, F.linear(features_q, *weights))
    loss = F.cross_entropy(logits, query_labels)
    assert torch.autograd.grad(loss, backbone[1].weight)[0].abs().sum() > 0  # the backbone is meta-trained


def test_batchnorm_uses_batch_statistics_and_running_statistics_never_move():
    torch.manual_seed(0)
    backbone = build_backbone("conv4", 3, "none", width=8)
    head = build_head("maml", 8, (8,), inner_steps=1, inner_lr=0.1, max_ways=WAYS)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    support = torch.randn(WAYS * SHOTS, 3, 16, 16)
    query = torch.randn(WAYS * QUERIES, 3, 16, 16)
    labels = torch.arange(WAYS).repeat_interleave(SHOTS)
    head.eval()
    backbone.eval()
    eval_mode = head.adapt(backbone, support, labels, query, WAYS)
    backbone.train()
    train_mode = head.adapt(backbone, support, labels, query, WAYS)
    torch.testing.assert_close(eval_mode, train_mode)  # batch statistics whatever the module's mode
    assert backbone.training  # the mode is restored
    backbone.eval()
    head.adapt(backbone, support, labels, query, WAYS)
    assert not any(m.training for m in backbone.modules())
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_maml_rejects_more_ways_than_outputs_and_bad_options():
    head = build_head("maml", 6, (6,), max_ways=3)
    support, support_labels, query, _ = task()
    with pytest.raises(FewshotError, match="max_ways=4"):
        head.adapt(mlp_backbone(), support, support_labels, query, 4)
    with pytest.raises(FewshotError, match="inner_steps"):
        build_head("maml", 6, (6,), inner_steps=-1)


@pytest.fixture(scope="module")
def glyphs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mamldata")
    make_image_folder(root / "train", classes=8, per_class=10, size=16, seed=1)
    make_image_folder(root / "test", classes=5, per_class=10, size=16, seed=3)
    return root


@pytest.mark.parametrize("head", ["maml", "anil"])
def test_maml_and_anil_train_and_evaluate_through_the_cli(glyphs, tmp_path, head, capsys):
    run = tmp_path / "run"
    config = tmp_path / "maml.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"root": str(glyphs), "split": {"train": "train", "test": "test"}, "image_size": 16},
        "model": {"backbone": "conv4", "backbone_options": {"width": 8}, "head": head,
                  "head_options": {"inner_steps": 1, "inner_lr": 0.4, "eval_steps": 3}},
        "train": {"ways": 3, "shots": 1, "queries": 3, "episodes": 40, "lr": 0.003, "val_every": 0, "log_every": 10},
        "eval": {"ways": 3, "shots": 1, "queries": 3}}))
    args = ["train", str(config), "--out", str(run), "--no-progress", "--set", "model.head_options.first_order=true"]
    assert main(args) == 0
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--episodes", "60", "--json", str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["accuracy"] > 100 / 3 + 10  # well above chance on unseen classes
    assert "3-way 1-shot" in capsys.readouterr().out


def test_learn2learn_maml_gives_the_same_adapted_weights_and_query_loss():
    l2l = pytest.importorskip("learn2learn", reason="learn2learn is optional and not installed (build it with "
                                                    "benchmarks/build_learn2learn.sh)")
    support, support_labels, query, query_labels = task()
    backbone = mlp_backbone()
    head = build_head("maml", 6, (6,), inner_steps=3, inner_lr=0.3, max_ways=WAYS).train()
    logits = head.adapt(backbone, support, support_labels, query, WAYS)
    ours_loss = F.cross_entropy(logits, query_labels)
    ours_weights = {k: w.detach() for k, w in head.adapted_weights(backbone, {}, support, support_labels,
                                                                    WAYS).items()}

    network = nn.Sequential(copy.deepcopy(backbone), nn.Linear(6, WAYS))
    with torch.no_grad():
        network[1].weight.copy_(head.classifier.weight[:WAYS])
        network[1].bias.copy_(head.classifier.bias[:WAYS])
    learner = l2l.algorithms.MAML(network, lr=0.3, first_order=False).clone()
    for _ in range(3):
        learner.adapt(F.cross_entropy(learner(support), support_labels))
    their_loss = F.cross_entropy(learner(query), query_labels)
    torch.testing.assert_close(ours_loss, their_loss)
    torch.testing.assert_close(ours_weights["backbone.1.weight"], learner.module[0][1].weight.detach())
    torch.testing.assert_close(ours_weights["classifier.weight"][:WAYS], learner.module[1].weight.detach())
    ours_grad = torch.autograd.grad(ours_loss, backbone[1].weight)[0]
    their_grad = torch.autograd.grad(their_loss, network[0][1].weight)[0]
    torch.testing.assert_close(ours_grad, their_grad)


def test_second_order_maml_trains_under_two_process_torchrun(glyphs, tmp_path):
    config = tmp_path / "maml-ddp.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"root": str(glyphs), "split": {"train": "train"}, "image_size": 16},
        "model": {"backbone": "conv4", "backbone_options": {"width": 4}, "head": "maml",
                  "head_options": {"inner_steps": 2, "inner_lr": 0.4, "max_ways": 3}},
        "train": {"ways": 3, "shots": 1, "queries": 2, "episodes": 4, "val_every": 0, "log_every": 2,
                  "device": "cpu"}}))
    run_dir = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "fewshot",
               "train", str(config), "--out", str(run_dir), "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["rank_first_episodes"] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert summary["parameter_spread_between_ranks"] == 0.0
