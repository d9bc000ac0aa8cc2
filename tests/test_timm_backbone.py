"""timm models as backbones, offline: randomly initialised small ViT and CNN through eval, predict and export,
a local-weights round trip, ViT patch-token maps for map heads, and the one-line offline error."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("timm", reason="optional extra not installed: pip install 'fewshot[timm]'")

from conftest import make_image_folder  # noqa: E402
from fewshot.backbones import build_backbone, native_size  # noqa: E402
from fewshot.cli import main  # noqa: E402
from fewshot.config import ModelConfig, config_from_dict  # noqa: E402
from fewshot.errors import FewshotError  # noqa: E402
from fewshot.model.network import build_model  # noqa: E402

SMALL = {"timm:vit_tiny_patch16_224": ["--backbone-option", "depth=2"], "timm:resnet10t": []}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("timmdata")
    make_image_folder(root / "data", classes=4, per_class=6, size=32, seed=2)
    make_image_folder(root / "support", classes=3, per_class=2, size=32, seed=3)
    return root


def test_timm_configuration_gives_size_and_statistics():
    assert native_size("timm:vit_small_patch14_dinov2.lvd142m") == 518
    size = native_size("timm:resnet10t")
    assert size and config_from_dict({"model": {"backbone": "timm:resnet10t"}}).data.image_size == size
    backbone = build_backbone("timm:resnet10t", 3, "none")
    assert backbone.mean == pytest.approx((0.485, 0.456, 0.406))
    with pytest.raises(FewshotError, match="timm has no model 'no_such_net'"):
        build_backbone("timm:no_such_net", 3, "none")


@pytest.mark.parametrize("name", list(SMALL))
def test_small_timm_models_run_eval_predict_and_export(name, folders, tmp_path, capsys):
    model_args = ["--backbone", name, "--head", "protonet", "--image-size", "64", *SMALL[name]]
    options = ["--head-option", "distance=euclidean"]
    assert main(["eval", *model_args, *options, "--data", str(folders / "data"), "--ways", "3", "--shots", "1",
                 "--queries", "2", "--episodes", "3", "--no-progress"]) == 0
    assert "3-way 1-shot" in capsys.readouterr().out
    query = sorted((folders / "support" / "class00").iterdir())[0]
    assert main(["predict", *model_args, "--support", str(folders / "support"), "--query", str(query), "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)[0]["probabilities"]
    out = tmp_path / "m.pt"
    assert main(["export", *model_args, "--support", str(folders / "support"), "--out", str(out),
                 "--format", "torchscript"]) == 0
    exported = torch.jit.load(str(out))
    from fewshot.inference.query_files import read_images

    probabilities = exported(read_images([query], 64, 3))[0]
    assert probabilities.tolist() == pytest.approx([predicted[k] for k in sorted(predicted)], abs=1e-4)


def test_vit_patch_tokens_are_maps_for_map_heads_and_gradcam(folders, tmp_path):
    from fewshot import FewShotClassifier

    torch.manual_seed(0)
    query = sorted((folders / "support" / "class01").iterdir())[:1]
    for head in ("protonet", "relation"):
        clf = FewShotClassifier(backbone="timm:vit_tiny_patch16_224", head=head, image_size=64,
                                backbone_options={"depth": 2})
        images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
        maps = clf.model_.backbone.forward_features(clf.model_.prepare(images))
        assert maps.shape == (2, 192, 4, 4)  # 64 px / 16 px patches; the class token dropped
        clf.fit(folders / "support")
        plain = clf.details(query)
        explained = clf.explain(query, tmp_path / head)
        assert plain[0]["predicted"] == explained[0]["predicted"]
        assert (tmp_path / head / f"{query[0].stem}.gradcam.png").exists()
        assert clf.heatmaps(query).std() > 0


def test_local_weights_round_trip_and_offline_error(tmp_path, monkeypatch):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet10t", pretrained=False, num_classes=1000)  # with its classifier
    save_file(source.state_dict(), str(tmp_path / "model.safetensors"))
    loaded = build_backbone("timm:resnet10t", 3, str(tmp_path / "model.safetensors"))
    assert torch.equal(loaded.model.conv1[0].weight, source.conv1[0].weight)
    torch.save({k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}, tmp_path / "plain.pt")
    again = build_backbone("timm:resnet10t", 3, str(tmp_path / "plain.pt"))
    assert torch.equal(again.model.conv1[0].weight, source.conv1[0].weight)
    torch.save({"conv1.0.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(FewshotError, match="does not fit backbone 'timm:resnet10t'"):
        build_backbone("timm:resnet10t", 3, str(tmp_path / "wrong.pt"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FewshotError) as info:
        build_backbone("timm:resnet10t", 3, "imagenet")
    message = str(info.value)
    assert "timm:resnet10t" in message and "model.safetensors" in message and "model.weights: PATH" in message
    assert "\n" not in message


def test_vit_keeps_its_final_norm_and_bad_options_are_one_line_errors(tmp_path):
    import timm

    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2)  # timm's own layout and head
    torch.save(source.state_dict(), tmp_path / "vit.pt")
    loaded = build_backbone("timm:vit_tiny_patch16_224", 3, str(tmp_path / "vit.pt"), depth=2)
    assert torch.equal(loaded.model.norm.weight, source.norm.weight)
    with pytest.raises(FewshotError, match="does not take these model.backbone_options"):
        build_backbone("timm:resnet10t", 3, "none", foo=1)
