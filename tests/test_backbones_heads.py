"""Backbones (shapes at several sizes, weights loading and its errors) and heads (maths, 1-shot)."""

from __future__ import annotations

import os
from urllib.error import URLError

import pytest
import torch
import torch.nn.functional as F

from fewshot.backbones import BACKBONES, build_backbone
from fewshot.config import ModelConfig
from fewshot.errors import FewshotError
from fewshot.heads import HEADS, build_head, class_means
from fewshot.model.network import build_model


@pytest.mark.parametrize("name, expected", [("conv4", {28: 64, 84: 1600}), ("resnet12", {28: 640, 84: 640}),
                                            ("resnet18", {28: 512, 84: 512}), ("resnet50", {28: 2048, 84: 2048})])
def test_backbone_shapes_any_size(name, expected):
    backbone = build_backbone(name, in_channels=3).eval()
    for size, dim in expected.items():
        with torch.no_grad():
            x = torch.randn(2, 3, size, size)
            assert backbone(x).shape == (2, dim)
            assert backbone.forward_features(x).dim() == 4
    gray = build_backbone(name, in_channels=1).eval()
    with torch.no_grad():
        assert gray(torch.randn(1, 1, 28, 28)).shape == (1, expected[28])


def test_relation_embedding_keeps_a_map():
    backbone = build_backbone("conv4", 1, pooled_blocks=2).eval()
    with torch.no_grad():
        assert backbone.forward_features(torch.randn(1, 1, 28, 28)).shape == (1, 64, 7, 7)


def test_weights_from_file_strict(tmp_path):
    source = build_backbone("conv4", 3, width=8)
    path = tmp_path / "conv4.pt"
    torch.save(source.state_dict(), path)
    loaded = build_backbone("conv4", 3, weights=str(path), width=8)
    for a, b in zip(source.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(FewshotError, match="does not fit backbone 'conv4'"):
        build_backbone("conv4", 3, weights=str(path), width=16)
    with pytest.raises(FewshotError, match="does not exist"):
        build_backbone("conv4", 3, weights=str(tmp_path / "missing.pt"))
    with pytest.raises(FewshotError, match="unknown model.backbone_options option 'widht'"):
        build_backbone("conv4", 3, widht=8)
    with pytest.raises(FewshotError, match="unknown backbone 'vgg'"):
        build_backbone("vgg")


def test_imagenet_weights_from_torchvision_cache(tmp_path, monkeypatch):
    from torchvision.models import ResNet18_Weights

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    reference = build_backbone("resnet18", 3)
    torch.manual_seed(0)
    full = __import__("torchvision").models.resnet18()
    target = tmp_path / "checkpoints" / os.path.basename(ResNet18_Weights.IMAGENET1K_V1.url)
    target.parent.mkdir(parents=True)
    torch.save(full.state_dict(), target)
    loaded = build_backbone("resnet18", 3, weights="imagenet")
    assert torch.equal(loaded.stem[0].weight, full.conv1.weight)
    assert torch.equal(loaded.layers[3][1].conv2.weight, full.layer4[1].conv2.weight)
    assert not torch.equal(reference.stem[0].weight, full.conv1.weight)
    gray = build_backbone("resnet18", 1, weights="imagenet")
    assert torch.allclose(gray.stem[0].weight[:, 0], full.conv1.weight.sum(dim=1))


def test_imagenet_weights_offline_error(tmp_path, monkeypatch):
    from torchvision.models import ResNet50_Weights

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline, raising=False)
    with pytest.raises(FewshotError) as info:
        build_backbone("resnet50", 3, weights="imagenet")
    message = str(info.value)
    assert ResNet50_Weights.IMAGENET1K_V2.url in message
    assert str(tmp_path / "checkpoints" / os.path.basename(ResNet50_Weights.IMAGENET1K_V2.url)) in message
    with pytest.raises(FewshotError, match="has no ImageNet weights"):
        build_backbone("conv4", 3, weights="imagenet")


def test_class_means_unbalanced():
    features = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    means = class_means(features, torch.tensor([0, 0, 1]), 2)
    assert torch.equal(means, torch.tensor([[2.0, 0.0], [0.0, 2.0]]))


def test_protonet_logits_are_negative_squared_distances():
    head = build_head("protonet", 4, (4,))
    support = torch.randn(6, 4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    query = torch.randn(5, 4)
    prototypes = class_means(support, labels, 3)
    expected = -((query[:, None, :] - prototypes[None]) ** 2).sum(-1)
    assert torch.allclose(head(support, labels, query, 3), expected, atol=1e-5)
    cosine = build_head("protonet", 4, (4,), distance="cosine", temperature=5.0)
    expected_cos = 5.0 * F.normalize(query, dim=-1) @ F.normalize(prototypes, dim=-1).T
    assert torch.allclose(cosine(support, labels, query, 3), expected_cos, atol=1e-5)
    assert any(p.requires_grad for p in cosine.parameters()), "cosine temperature is learnable"


def _separable(ways, shots, queries, dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(ways, dim, generator=generator) * 3
    support = centers.repeat_interleave(shots, 0) + 0.3 * torch.randn(ways * shots, dim, generator=generator)
    query = centers.repeat_interleave(queries, 0) + 0.3 * torch.randn(ways * queries, dim, generator=generator)
    return support, torch.arange(ways).repeat_interleave(shots), query, torch.arange(ways).repeat_interleave(queries)


@pytest.mark.parametrize("name", ["protonet", "linear_probe"])
def test_vector_heads_work_at_one_shot(name):
    head = build_head(name, 16, (16,))
    support, labels, query, query_labels = _separable(5, 1, 10)
    logits = head(support, labels, query, 5)
    assert logits.shape == (50, 5)
    assert (logits.argmax(1) == query_labels).float().mean() > 0.95


def test_linear_probe_deterministic_inference_and_differentiable():
    head = build_head("linear_probe", 16, (16,), steps=50)
    support, labels, query, _ = _separable(4, 2, 3)
    first = head(support, labels, query, 4)
    assert torch.equal(first, head(support, labels, query, 4))
    with torch.inference_mode():
        assert torch.allclose(head(support, labels, query, 4), first)
    support.requires_grad_(True)
    head(support, labels, query, 4).sum().backward()
    assert support.grad is not None and support.grad.abs().sum() > 0
    weight = head.fit(support.detach(), labels, 4)["weight"]
    loss_zero = F.cross_entropy(torch.zeros(8, 4), labels)
    fitted = F.cross_entropy(F.normalize(support.detach(), dim=-1) @ weight, labels)
    assert fitted < loss_zero * 0.5


def test_relation_head_shapes_and_loss():
    head = build_head("relation", 64 * 49, (64, 7, 7))
    support = torch.randn(5, 64, 7, 7)
    query = torch.randn(8, 64, 7, 7)
    logits = head(support, torch.arange(5), query, 5)
    assert logits.shape == (8, 5)
    labels = torch.randint(0, 5, (8,))
    expected = F.mse_loss(torch.sigmoid(logits), F.one_hot(labels, 5).float())
    assert torch.allclose(head.loss(logits, labels), expected)
    tiny = build_head("relation", 16, (16, 1, 1))  # 1x1 maps: no pooling, still works
    assert tiny(torch.randn(3, 16, 1, 1), torch.arange(3), torch.randn(4, 16, 1, 1), 3).shape == (4, 3)


def test_registries_build_every_pair():
    for backbone in ("conv4", "resnet12"):
        for head in HEADS:
            options = {"pooled_blocks": 2} if (backbone, head) == ("conv4", "relation") else {}
            model = build_model(ModelConfig(backbone=backbone, head=head, backbone_options=options,
                                            head_options=dict(HEADS[head].quick_options)), 1, 28)
            logits = model(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), torch.tensor([0, 1]),
                           torch.zeros(3, 1, 28, 28, dtype=torch.uint8), 2)
            assert logits.shape == (3, 2)
    assert set(BACKBONES) == {"resnet50", "resnet18", "resnet12", "conv4", "efficientnet_lite0", "efficientnet_lite1",
                              "efficientnet_lite2"}
    with pytest.raises(FewshotError, match="unknown head"):
        build_model(ModelConfig(backbone="conv4", head="maml2"), 1, 28)


def test_relation_split_first_convolution_equals_scoring_concatenated_pairs():
    torch.manual_seed(0)
    head = build_head("relation", 16 * 25, (16, 5, 5)).eval()
    support, query = torch.randn(6, 16, 5, 5), torch.randn(4, 16, 5, 5)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    prototypes = class_means(support, labels, 3)
    pairs = torch.cat([prototypes.unsqueeze(0).expand(4, -1, -1, -1, -1),
                       query.unsqueeze(1).expand(-1, 3, -1, -1, -1)], dim=2).reshape(12, 32, 5, 5)
    direct = head.scorer(head.blocks(pairs).mean(dim=(2, 3), keepdim=True)).reshape(4, 3)
    assert torch.allclose(head(support, labels, query, 3), direct, atol=1e-5)


def test_relation_scorer_starts_with_every_hidden_unit_alive():
    torch.manual_seed(0)
    head = build_head("relation", 16 * 25, (16, 5, 5))
    pairs = torch.randn(200, 64, 1, 1)  # pooled relation features of 200 pairs
    hidden = head.scorer[1](head.scorer[0](pairs))  # before the ReLU
    assert (hidden > 0).all(), "Sung et al.'s init (biases 1): no hidden unit starts dead"
    scores = head.scorer(pairs).flatten()
    assert scores.std() > 0
