"""The evaluator's fast path: images embedded once and only when an episode uses them, heads batched
over episodes, and the precision switch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_image_folder
from episodes import SplitSpec, open_split
from fewshot.config import config_from_dict
from fewshot.errors import FewshotError
from fewshot.evaluation.episodic import evaluate
from fewshot.heads import build_head
from fewshot.model.network import build_model
from fewshot.runtime import autocast


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldata")
    make_image_folder(root, classes=8, per_class=30, size=16, seed=5)
    return open_split(SplitSpec((str(root),)), image_size=16, channels=3, cache_dir=root / ".cache", progress=False)


def tiny_model(head: str = "protonet", **head_options):
    config = config_from_dict({}, ["model.backbone=conv4", "model.backbone_options.width=8", f"model.head={head}",
                                   "data.image_size=16", "data.channels=3"]
                              + [f"model.head_options.{k}={v}" for k, v in head_options.items()])
    torch.manual_seed(0)
    return build_model(config.model, 3, 16)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_protonet_batched_over_episodes_equals_one_at_a_time(distance):
    head = build_head("protonet", 12, (12,), distance=distance)
    generator = torch.Generator().manual_seed(1)
    support = torch.randn(7, 4 * 3, 12, generator=generator)  # (E, ways*shots, D)
    query = torch.randn(7, 4 * 5, 12, generator=generator)
    labels = torch.arange(4).repeat_interleave(3)
    batched = head.forward_episodes(support, labels, query, 4)
    assert batched.shape == (7, 20, 4)
    single = torch.stack([head(s, labels, q, 4) for s, q in zip(support, query)])
    torch.testing.assert_close(batched, single)


def test_default_forward_episodes_loops_over_episodes():
    head = build_head("linear_probe", 12, (12,), steps=5)
    support, query = torch.randn(3, 8, 12), torch.randn(3, 6, 12)
    labels = torch.arange(4).repeat_interleave(2)
    batched = head.forward_episodes(support, labels, query, 4)
    torch.testing.assert_close(batched, torch.stack([head(s, labels, q, 4) for s, q in zip(support, query)]))


def test_fast_path_embeds_only_the_images_the_episodes_use(split):
    model = tiny_model()
    embedded = []
    original = model.embed
    model.embed = lambda images: (embedded.append(len(images)), original(images))[1]
    evaluate(model, split, ways=2, shots=1, queries=1, episodes=3, progress=False)
    assert 0 < sum(embedded) <= 3 * 2 * 2  # at most 12 images of the 240, each at most once
    embedded.clear()
    result = evaluate(model, split, ways=5, shots=5, queries=10, episodes=60, progress=False)
    assert sum(embedded) <= sum(split.class_sizes)
    plain = evaluate(model, split, ways=5, shots=5, queries=10, episodes=60, progress=False, fast=False)
    assert np.array_equal(result.accuracies, plain.accuracies)


def test_fast_path_per_class_report_matches_plain_path(split):
    model = tiny_model()
    fast = evaluate(model, split, 4, 2, 3, episodes=25, per_class=True, progress=False)
    plain = evaluate(model, split, 4, 2, 3, episodes=25, per_class=True, progress=False, fast=False)
    assert fast.extra["per_class"]["confusion"] == plain.extra["per_class"]["confusion"]
    assert np.sum(fast.extra["per_class"]["confusion"]) == 25 * 4 * 3


def test_bf16_precision_on_cpu_runs_in_bfloat16_and_stays_close(split):
    model = tiny_model()
    with autocast(torch.device("cpu"), "bf16"):
        assert model.embed(split.images(0, [0, 1])).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "auto"):
        assert model.embed(split.images(0, [0, 1])).dtype == torch.float32
    fp32 = evaluate(model, split, 5, 5, 10, episodes=40, progress=False, precision="fp32")
    bf16 = evaluate(model, split, 5, 5, 10, episodes=40, progress=False, precision="bf16")
    assert abs(fp32.accuracy - bf16.accuracy) < 5.0
    with pytest.raises(FewshotError, match="precision must be one of"):
        evaluate(model, split, 5, 5, 10, episodes=2, progress=False, precision="fp16")
