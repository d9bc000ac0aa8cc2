"""Sharp edges (#36): each test fails when its edge comes back."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_image_folder
from fewshot import FewShotClassifier
from fewshot.cli import main
from fewshot.errors import FewshotError

MODEL = ["--backbone", "conv4", "--head", "protonet", "--image-size", "16", "--backbone-option", "width=8",
         "--no-progress"]


def test_an_unknown_model_name_lists_the_recipes():
    with pytest.raises(FewshotError, match=r"a model is a recipe \(default, transductive, fast"):
        FewShotClassifier("nosuchrecipe")


def test_predict_unknown_auto_reuses_its_threshold_across_processes(tmp_path, capsys, monkeypatch):
    import fewshot.classifier as classifier_module

    root = tmp_path / "support"
    make_image_folder(root, classes=4, per_class=6, size=16, noise=4.0)
    query = sorted((root / "class00").iterdir())[0]
    runs = []
    original = classifier_module.estimate_open_set
    monkeypatch.setattr(classifier_module, "estimate_open_set", lambda *a, **k: runs.append(1) or original(*a, **k))
    answers = []
    for _ in range(2):  # two CLI calls: two classifiers, as two processes would build them
        torch.manual_seed(0)
        assert main(["predict", *MODEL, "--support", str(root), "--query", str(query), "--unknown", "auto",
                     "--unknown-score", "distance", "--json"]) == 0
        answers.append(json.loads(capsys.readouterr().out)[0])
    assert len(runs) == 1, "the second call read the stored estimate"
    assert answers[0]["unknown_threshold"] == answers[1]["unknown_threshold"]
    make_image_folder(tmp_path / "more", classes=1, per_class=1, size=16, noise=4.0, seed=3)
    (tmp_path / "more" / "class00" / next((tmp_path / "more" / "class00").iterdir()).name).rename(
        root / "class00" / "extra.png")  # the support set changes: a new estimate
    torch.manual_seed(0)
    assert main(["predict", *MODEL, "--support", str(root), "--query", str(query), "--unknown", "auto",
                 "--unknown-score", "distance", "--json"]) == 0
    assert len(runs) == 2
