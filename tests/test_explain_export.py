"""predict --explain (Grad-CAM PNGs) and export (TorchScript loaded in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import make_image_folder
from fewshot.cli import main
from fewshot.config import ModelConfig, config_from_dict
from fewshot.inference.explain import grad_cam
from fewshot.model.network import build_model
from fewshot.training.train import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("xdata")
    make_image_folder(root / "train", classes=6, per_class=8, size=24, seed=1)
    make_image_folder(root / "new", classes=3, per_class=6, size=24, seed=7)
    support = root / "support"
    queries = []
    for class_dir in sorted((root / "new").iterdir()):
        files = sorted(class_dir.iterdir())
        (support / class_dir.name).mkdir(parents=True)
        for file in files[:3]:
            (support / class_dir.name / file.name).write_bytes(file.read_bytes())
        queries += files[4:6]
    config = {"data": {"root": str(root / "train"), "image_size": 24},
              "model": {"backbone": "conv4", "head": "protonet", "backbone_options": {"width": 8, "pooled_blocks": 2}},
              "train": {"ways": 3, "shots": 2, "queries": 3, "episodes": 15, "val_every": 0}}
    run_dir = root / "run"
    train(config_from_dict(config), run_dir, progress=False)
    return run_dir, support, queries


def test_grad_cam_matches_its_definition():
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="conv4", head="protonet", backbone_options={"width": 8,
                                                                                         "pooled_blocks": 2}), 3, 24)
    model.eval()
    support = torch.randint(0, 255, (4, 3, 24, 24), dtype=torch.uint8)
    labels = torch.tensor([0, 0, 1, 1])
    query = torch.randint(0, 255, (3, 3, 24, 24), dtype=torch.uint8)
    with torch.inference_mode():
        features = model.embed(support)
    with model.adapted(support, labels, 2) as network:
        heatmaps, probabilities = grad_cam(network, model.prepare(query), model.head.probabilities)
    assert heatmaps.shape == (3, 24, 24) and probabilities.shape == (3, 2)
    for i in range(3):  # weights: spatial mean of d(predicted logit - mean of others)/d(map); centred; ReLU; upsample
        maps = model.backbone.forward_features(model.prepare(query[i:i + 1])).detach().requires_grad_(True)
        logits = model.classify(features, labels, model.backbone.pool_features(maps), 2)
        best = int(logits.argmax())
        (logits[0, best] - logits[0, 1 - best]).backward()
        centred = maps - maps.mean(dim=(2, 3), keepdim=True)  # a channel's map against its own spatial mean
        cam = torch.relu((maps.grad.mean(dim=(2, 3), keepdim=True) * centred).sum(1, keepdim=True))
        cam = torch.nn.functional.interpolate(cam, size=(24, 24), mode="bilinear", align_corners=False)[0, 0]
        expected = cam / cam.max().clamp_min(1e-12)
        assert torch.allclose(heatmaps[i], expected, atol=1e-5)
        assert heatmaps[i].max() == pytest.approx(1.0) and heatmaps[i].std() > 0  # not blank


def test_predict_explain_writes_a_png_per_query(trained, tmp_path, capsys):
    run_dir, support, queries = trained
    out = tmp_path / "cams"
    assert main(["predict", str(run_dir), "--support", str(support), "--query", *map(str, queries),
                 "--explain", str(out)]) == 0
    pngs = sorted(out.glob("*.gradcam.png"))
    assert len(pngs) == len(queries)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert "Grad-CAM heatmaps: 6 PNG files" in capsys.readouterr().err


FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    from PIL import Image
    files = {"class_names.json": "", "meta.json": ""}
    model = torch.jit.load(sys.argv[1], _extra_files=files)
    names, meta = json.loads(files["class_names.json"]), json.loads(files["meta.json"])
    size = meta["image_size"]
    images = []
    for path in sys.argv[2:]:
        image = Image.open(path).convert("RGB" if meta["channels"] == 3 else "L").resize((size, size), Image.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint8)
        pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
        images.append(torch.from_numpy(pixels.transpose(2, 0, 1).copy()))
    probabilities = model(torch.stack(images))
    print(json.dumps({"names": names, "probabilities": probabilities.tolist()}))
""")


@pytest.mark.parametrize("head", ["protonet", "linear_probe", "relation"])
def test_export_loads_in_a_fresh_process_and_matches_predict(trained, tmp_path, capsys, head):
    run_dir, support, queries = trained
    args = [str(run_dir)] if head == "protonet" else ["--backbone", "conv4", "--head", head, "--image-size", "24",
                                                       "--channels", "3"]
    exported = tmp_path / "model.pt"
    assert main(["export", *args, "--support", str(support), "--out", str(exported), "--format", "torchscript"]) == 0
    assert main(["predict", *args, "--support", str(support), "--query", *map(str, queries), "--json"]) == 0
    out = capsys.readouterr().out
    predicted = json.loads(out[out.index("["):])
    script = tmp_path / "app.py"
    script.write_text(FRESH_PROCESS)
    result = subprocess.run([sys.executable, str(script), str(exported), *map(str, queries)], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["names"] == sorted(p.name for p in support.iterdir())
    for row, item in zip(loaded["probabilities"], predicted):
        expected = [item["probabilities"][name] for name in loaded["names"]]
        assert row == pytest.approx(expected, abs=1e-4)


def test_export_refuses_adapting_heads(trained, tmp_path, capsys):
    _, support, _ = trained
    assert main(["export", "--backbone", "conv4", "--head", "finetune", "--image-size", "24", "--support",
                 str(support), "--out", str(tmp_path / "m.pt")]) == 2
    assert "cannot be exported" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()
