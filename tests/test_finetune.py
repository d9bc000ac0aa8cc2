"""The fine-tuning head: BatchNorm statistics frozen, backbone restored between episodes, and it learns."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import make_image_folder
from episodes import SplitSpec, open_split
from fewshot.config import ModelConfig, config_from_dict
from fewshot.errors import FewshotError
from fewshot.evaluation.episodic import evaluate
from fewshot.model.network import build_model
from fewshot.training.train import train


def bn_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k}


@pytest.fixture
def model_and_episode(tmp_path):
    make_image_folder(tmp_path / "d", classes=5, per_class=8, size=20)
    split = open_split(SplitSpec((str(tmp_path / "d"),)), image_size=20, channels=3)
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="conv4", head="finetune", backbone_options={"width": 8},
                                    head_options={"steps": 15, "blocks": 2, "backbone_lr": 1e-2}), 3, 20)
    from episodes import EpisodeSampler

    episode = split.episode(EpisodeSampler(split.class_sizes, 5, 2, 3, seed=0).sample(0))
    return model, episode, split


def test_batchnorm_statistics_frozen_and_backbone_restored(model_and_episode):
    model, episode, _ = model_and_episode
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    changed = {}
    original_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        out = original_step(self, *args, **kwargs)
        changed["weights_moved"] = any(not torch.equal(v, before[k]) for k, v in model.backbone.state_dict().items()
                                       if "running" not in k and "num_batches" not in k)
        changed["bn_moved"] = any(not torch.equal(v, before[k]) for k, v in bn_buffers(model.backbone).items())
        return out

    torch.optim.AdamW.step = spy
    try:
        with torch.inference_mode():
            logits = model(episode.support, episode.support_labels, episode.query, 5)
    finally:
        torch.optim.AdamW.step = original_step
    assert logits.shape == (15, 5)
    assert changed["weights_moved"], "the last blocks were fine-tuned"
    assert not changed["bn_moved"], "running means and variances stay frozen"
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} restored after the episode"


def test_bn_train_option_lets_statistics_move(model_and_episode):
    model, episode, _ = model_and_episode
    model.head.bn = "train"
    seen = {}
    original_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        seen["bn"] = bn_buffers(model.backbone)
        return original_step(self, *args, **kwargs)

    before = bn_buffers(model.backbone)
    torch.optim.AdamW.step = spy
    try:
        model(episode.support, episode.support_labels, episode.query, 5)
    finally:
        torch.optim.AdamW.step = original_step
    assert any(not torch.equal(seen["bn"][k], before[k]) for k in before)
    assert all(torch.equal(v, before[k]) for k, v in bn_buffers(model.backbone).items())


def test_finetune_evaluates_and_learns_the_support(model_and_episode):
    model, _, split = model_and_episode
    result = evaluate(model, split, 5, 2, 3, episodes=6, seed=0, progress=False)
    assert result.accuracy > 40.0, result.summary()
    model.head.steps = 0
    untuned = evaluate(model, split, 5, 2, 3, episodes=6, seed=0, progress=False)
    assert result.accuracy >= untuned.accuracy


def test_gradual_unfreezing_reaches_all_blocks(model_and_episode):
    model, episode, _ = model_and_episode
    model.head.unfreeze_every = 5
    model.head.blocks = 3
    trainable_per_step = []
    original_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):  # which stages take gradients at each optimizer step
        trainable_per_step.append([all(p.requires_grad for p in stage.parameters())
                                   for stage in model.backbone.stages()])
        return original_step(self, *args, **kwargs)

    torch.optim.AdamW.step = spy
    try:
        logits = model(episode.support, episode.support_labels, episode.query, 5)
    finally:
        torch.optim.AdamW.step = original_step
    assert torch.isfinite(logits).all()
    stages = len(model.backbone.stages())
    assert trainable_per_step[0] == [False] * (stages - 1) + [True], "one stage unfrozen at first"
    assert trainable_per_step[5] == [False] * (stages - 2) + [True, True], "one more after unfreeze_every steps"
    assert trainable_per_step[-1][-3:] == [True, True, True] and sum(trainable_per_step[-1]) == 3, \
        "all `blocks` stages, and only those, train by the end"


def test_finetune_is_not_meta_trained(tmp_path):
    make_image_folder(tmp_path / "d", classes=4, per_class=6, size=16)
    config = config_from_dict({"data": {"root": str(tmp_path / "d"), "image_size": 16},
                               "model": {"backbone": "conv4", "head": "finetune"}})
    with pytest.raises(FewshotError, match="not meta-trained"):
        train(config, tmp_path / "run", progress=False)


def test_pseudo_episodes_are_cut_from_the_support_alone(model_and_episode):
    model, episode, _ = model_and_episode  # 5-way 2-shot
    head = model.head
    head.pseudo_views = 3
    support, labels = episode.support, episode.support_labels
    pseudo_support, pseudo_labels, pseudo_query, query_labels = head.pseudo_episode(support, labels, 5)
    assert len(pseudo_support) == 5 and torch.equal(torch.bincount(pseudo_labels, minlength=5), torch.ones(5).long())
    assert len(pseudo_query) == 5 * 4 and torch.equal(torch.bincount(query_labels), torch.full((5,), 4))
    held_out = pseudo_query[:5]  # the held-out originals come first, then their augmented views
    for image, label in zip(held_out, query_labels[:5]):
        assert any(torch.equal(image, s) for s, l in zip(support, labels) if l == label)
        assert not any(torch.equal(image, s) for s in pseudo_support)
    # 1-shot: every support image stays in the pseudo-support; the pseudo-queries are its augmented views
    one_shot = torch.tensor([labels.tolist().index(c) for c in range(5)])
    s1, l1, q1, ql1 = head.pseudo_episode(support[one_shot], labels[one_shot], 5)
    assert torch.equal(s1, support[one_shot]) and len(q1) == 15 and torch.equal(ql1, labels[one_shot].repeat(3))
    again = head.pseudo_episode(support[one_shot], labels[one_shot], 5)[2]
    assert torch.equal(again, q1), "deterministic for a given support set"


def test_learning_rate_chosen_per_task_on_the_pseudo_episode(model_and_episode, monkeypatch):
    model, episode, _ = model_and_episode
    model.head.lr_candidates = [0.0, 1e-2, 1e9]
    used = []
    original = type(model.head)._finetuned

    def spy(self, backbone, support, labels, ways, prepare, augment, lr):
        used.append((len(support), lr))
        return original(self, backbone, support, labels, ways, prepare, augment, lr)

    monkeypatch.setattr(type(model.head), "_finetuned", spy)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    with torch.inference_mode():
        logits = model(episode.support, episode.support_labels, episode.query, 5)
    assert logits.shape == (15, 5) and torch.isfinite(logits).all()
    # three candidates on the 5-image pseudo-support, then the chosen rate on all 10 support images
    assert [n for n, _ in used] == [5, 5, 5, 10] and [lr for _, lr in used[:3]] == [0.0, 1e-2, 1e9]
    assert used[-1][1] == model.head.last_backbone_lr != 1e9, "a rate that wrecks the network is never chosen"
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} restored after the search"
    with pytest.raises(FewshotError, match="lr_candidates must be a non-empty list"):
        build_model(ModelConfig(backbone="conv4", head="finetune", head_options={"lr_candidates": []}), 3, 20)
