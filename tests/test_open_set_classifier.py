"""'None of these' in FewShotClassifier, the CLI and the estimate (#27): the leave-one-class-out estimate and its
``auto`` threshold on generated classes where unseen ones are separable and where they are not (it must say so),
the refusal with two classes, heads that cannot score, and ``unknown=None`` leaving every prediction as it was."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image_folder
from fewshot import FewShotClassifier
from fewshot.cli import main
from fewshot.errors import CapabilityError, FewshotError, SupportSetError

TINY = dict(backbone="conv4", head="protonet", image_size=16, backbone_options={"width": 8})


def tiny(**options) -> FewShotClassifier:
    torch.manual_seed(0)
    return FewShotClassifier(**{**TINY, **options})


@pytest.fixture
def separable(tmp_path) -> Path:
    """5 classes of 8 images, each a fixed pattern with little noise: an unseen pattern is far from all of them."""
    root = tmp_path / "separable"
    make_image_folder(root, classes=5, per_class=8, size=16, noise=4.0)
    return root


def unseen_images(tmp_path: Path, count: int = 6) -> list[Path]:
    """Images of a pattern none of the support classes has (another seed of the same generator)."""
    root = tmp_path / "unseen"
    make_image_folder(root, classes=1, per_class=count, size=16, noise=4.0, seed=7)
    return sorted((root / "class00").iterdir())


def noise_folder(root: Path, classes: int = 4, per_class: int = 8) -> Path:
    """Classes that are all the same kind of noise: nothing tells one, or an unseen one, apart."""
    rng = np.random.default_rng(3)
    for c in range(classes):
        (root / f"noise{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)).save(root / f"noise{c}" / f"{i}.png")
    return root


def test_separable_unknowns_get_a_high_auroc_and_the_auto_threshold_answers_unknown(separable, tmp_path):
    # distance: the random tiny network's logits are all near 0, so the default energy score (which reads their
    # scale) separates less here than with a real model's calibrated logits (benchmarks/open_set.py)
    clf = tiny(unknown_score="distance").fit(separable)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # separable: no warning
        found = clf.estimate()
    open_set = found.open_set
    assert open_set is not None and open_set.score == "distance" and open_set.folds == 50
    assert open_set.auroc > 90 and 80 < open_set.low < open_set.auroc <= open_set.high <= 100
    assert open_set.known_kept >= 90 and open_set.unknown_rejected > 50
    assert open_set.known_images == 40 and open_set.unknown_images == 40
    assert clf.unknown_threshold("auto") == open_set.threshold  # the default estimate is remembered and reused
    assert clf.open_set_estimate() is open_set
    known = [sorted((separable / name).iterdir())[0] for name in clf.classes_]
    answers = clf.predict(known + unseen_images(tmp_path), unknown="auto")
    assert answers[:5] == clf.classes_, "images the classifier learned from are kept"
    assert answers[5:].count("unknown") >= 4, answers
    assert "AUROC" in open_set.summary() and json.loads(json.dumps(found.to_json()))["open_set"]["auroc"] == 100


def test_unseparable_unknowns_are_said_to_be_guesses(tmp_path):
    clf = tiny().fit(noise_folder(tmp_path / "noise"))
    with pytest.warns(UserWarning, match="do not tell an unseen class apart"):
        found = clf.open_set_estimate(repeats=20)
    assert found.low <= 50 and found.warnings


def test_two_classes_are_refused_with_the_reason_and_a_number_still_works(separable, tmp_path):
    clf = tiny().fit({name: sorted((separable / name).iterdir()) for name in ("class00", "class01")})
    found = clf.estimate(repeats=5)
    assert found.open_set is None and "at least 3 classes" in found.open_set_refused
    assert json.loads(json.dumps(found.to_json()))["open_set"] == {"refused": found.open_set_refused}
    with pytest.raises(SupportSetError, match="at least 3 classes.*score threshold"):
        clf.predict(unseen_images(tmp_path), unknown="auto")
    assert clf.predict(unseen_images(tmp_path), unknown=-1.0) == ["unknown"] * 6  # every score is above -1
    assert clf.estimate(repeats=5, open_set=False).open_set_refused == ""


def test_unknown_none_leaves_every_prediction_as_it_was(separable, tmp_path):
    clf = tiny().fit(separable)
    queries = unseen_images(tmp_path) + [sorted((separable / "class02").iterdir())[1]]
    before = clf.predict_proba(queries)
    probabilities, scores = clf.predict_proba(queries, return_unknown_score=True)
    assert np.array_equal(probabilities, before) and scores.shape == (7,)
    assert clf.predict(queries, unknown=None) == clf.predict(queries)
    details = clf.details(queries)
    assert all("unknown" not in d for d in details)
    assert np.array_equal(np.array([list(d["probabilities"].values()) for d in details], dtype=np.float32), before)
    assert [d["unknown_score"] for d in details] == pytest.approx(scores.tolist())


def test_bad_unknown_arguments_are_one_line_errors(separable):
    clf = tiny().fit(separable)
    for bad in ("sometimes", float("nan"), True):
        with pytest.raises(FewshotError, match="unknown must be 'auto' or a score threshold \(a number\), or left out"):
            clf.predict(sorted((separable / "class00").iterdir())[:1], unknown=bad)
    with pytest.raises(FewshotError, match="not a class"):
        clf.predict(sorted((separable / "class00").iterdir())[:1], unknown=0.5, unknown_name="class03")
    with pytest.raises(FewshotError, match="recall"):
        clf.unknown_threshold("auto", recall=1.0)
    with pytest.raises(FewshotError, match="unknown score must be one of"):
        tiny(unknown_score="entropy")


def test_every_score_gives_an_estimate_and_survives_save_and_load(separable, tmp_path):
    for score in ("msp", "distance", "knn", "mahalanobis"):
        clf = tiny(unknown_score=score).fit(separable)
        assert clf.open_set_estimate(repeats=10).score == score
    saved = clf.save(tmp_path / "clf.pt")
    loaded = FewShotClassifier.load(saved)
    assert loaded.unknown_score == "mahalanobis"
    queries = unseen_images(tmp_path)
    assert np.allclose(loaded.predict_proba(queries, return_unknown_score=True)[1],
                       clf.predict_proba(queries, return_unknown_score=True)[1], rtol=1e-4)
    clf.unknown_score = "distance"  # a new score forgets what was fitted for the old one
    assert clf.open_set_estimate(repeats=10).score == "distance"


def test_a_head_that_adapts_the_backbone_cannot_say_none_of_these(separable):
    clf = tiny(head="finetune", head_options={"steps": 1}).fit(separable)
    with pytest.raises(CapabilityError, match="adapts the network"):
        clf.predict(sorted((separable / "class00").iterdir())[:1], unknown="auto")
    assert "unknown_score" not in clf.details(sorted((separable / "class00").iterdir())[:1])[0]
    assert "adapts the network" in clf.estimate(repeats=2).open_set_refused


def test_predict_and_estimate_commands(separable, tmp_path, capsys):
    model = ["--backbone", "conv4", "--head", "protonet", "--image-size", "16", "--backbone-option", "width=8",
             "--no-progress"]
    unseen = unseen_images(tmp_path)
    torch.manual_seed(0)
    assert main(["predict", *model, "--support", str(separable), "--query", str(unseen[0]), "--unknown", "auto",
                 "--unknown-name", "none of these", "--unknown-score", "distance", "--json"]) == 0
    captured = capsys.readouterr()
    answer = json.loads(captured.out)[0]
    assert answer["predicted"] == "none of these" and answer["unknown"] is True
    assert answer["unknown_score"] > answer["unknown_threshold"]
    assert answer["closest"] == max(answer["probabilities"], key=answer["probabilities"].get)
    assert answer["closest_probability"] == answer["probabilities"][answer["closest"]]
    assert "'none of these': AUROC" in captured.err
    at_32 = [("32" if flag == "16" else flag) for flag in model]  # Conv4's maps at 16 px are 1x1: no heatmap
    assert main(["predict", *at_32, "--support", str(separable), "--query", str(unseen[0]), "--unknown=-1e9",
                 "--explain", str(tmp_path / "heat"), "--json"]) == 0  # the heatmaps' pass keeps the answer
    explained = json.loads(capsys.readouterr().out)[0]
    assert explained["predicted"] == "unknown" and explained["unknown_threshold"] == -1e9
    assert len(list((tmp_path / "heat").glob("*.png"))) == 1
    out = tmp_path / "estimate.json"
    assert main(["estimate", *model, "--support", str(separable), "--repeats", "10", "--recall", "0.9",
                 "--unknown-score", "mahalanobis", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "'none of these': AUROC" in printed
    written = json.loads(out.read_text())["open_set"]
    assert written["score"] == "mahalanobis" and written["recall"] == 0.9
    assert f"AUROC {written['auroc']:.1f} %" in printed and written["known_kept"] == 90, "the file says what was printed"
    with pytest.raises(SystemExit):
        main(["predict", *model, "--support", str(separable), "--query", str(unseen[0]), "--recall", "1"])


@pytest.mark.parametrize("score", ["energy", "mahalanobis"])
def test_onnx_export_outputs_the_unknown_score_and_carries_the_threshold(separable, tmp_path, score):
    ort = pytest.importorskip("onnxruntime", reason="needs the fewshot[onnx] extra")
    clf = tiny(unknown_score=score).fit(separable)
    path = clf.export(tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probabilities", "unknown_score"]
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["unknown_score"] == score
    assert float(meta["unknown_threshold"]) == pytest.approx(clf.unknown_threshold("auto"))
    assert float(meta["unknown_recall"]) == 0.95
    queries = unseen_images(tmp_path)[:3]
    pixels = np.stack([np.asarray(Image.open(q).convert("RGB")) for q in queries])
    probabilities, scores = session.run(None, {"images": pixels})
    expected_probabilities, expected_scores = clf.predict_proba(queries, return_unknown_score=True)
    assert np.allclose(probabilities, expected_probabilities, atol=1e-4)
    assert np.allclose(scores, expected_scores, rtol=1e-3, atol=1e-4)
    two = tiny().fit({name: sorted((separable / name).iterdir()) for name in ("class00", "class01")})
    refused = ort.InferenceSession(str(two.export(tmp_path / "two.onnx")), providers=["CPUExecutionProvider"])
    assert "at least 3 classes" in refused.get_modelmeta().custom_metadata_map["unknown_threshold_refused"]


def test_eval_open_set_reports_closed_set_accuracy_and_auroc_with_intervals(tmp_path, capsys):
    data = tmp_path / "data"
    make_image_folder(data, classes=8, per_class=8, size=16, noise=4.0)
    model = ["--backbone", "conv4", "--head", "protonet", "--image-size", "16", "--backbone-option", "width=8",
             "--data", str(data), "--ways", "3", "--shots", "1", "--queries", "3", "--episodes", "12", "--no-progress"]
    out = tmp_path / "open.json"
    torch.manual_seed(0)
    assert main(["eval", *model, "--open-set", "4", "--unknown-score", "distance", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "closed-set 3-way 1-shot" in printed and "unseen vs known AUROC" in printed
    found = json.loads(out.read_text())
    assert found["protocol"] == "open-set" and found["episodes"] == 12 and found["ci95"] is not None
    open_set = found["open_set"]
    assert open_set["unknown_ways"] == 4 and len(open_set["per_episode_auroc"]) == 12
    assert open_set["auroc"] > 80 and open_set["auroc_ci95"] >= 0  # tight, distinct patterns: unseen ones stand out
    assert open_set["auroc"] == pytest.approx(np.mean(open_set["per_episode_auroc"]))
    assert main(["eval", *model, "--open-set", "6"]) == 2  # 3 + 6 classes > 8
    assert "needs 3 known + 6 unseen classes" in capsys.readouterr().err
    assert main(["eval", *model, "--open-set", "2", "--refine", "soft_kmeans"]) == 2
    assert "drop --refine" in capsys.readouterr().err
    maml = ["--backbone", "conv4", "--head", "finetune", "--image-size", "16", "--backbone-option", "width=8",
            "--head-option", "steps=1", *model[8:]]
    assert main(["eval", *maml, "--open-set", "2"]) == 2
    assert "adapts the network" in capsys.readouterr().err


def test_validation_reports_the_open_set_auroc_and_checks_it_before_training(tmp_path):
    from fewshot.config import config_from_dict
    from fewshot.training.train import train

    root = tmp_path / "fs"
    make_image_folder(root / "train", classes=6, per_class=8, size=16, seed=1)
    make_image_folder(root / "val", classes=4, per_class=8, size=16, seed=2, noise=4.0)
    raw = {"data": {"root": str(root), "split": {"train": "train", "val": "val"}, "image_size": 16},
           "model": {"backbone": "conv4", "head": "protonet", "backbone_options": {"width": 8}},
           "train": {"ways": 3, "shots": 1, "queries": 2, "episodes": 4, "val_every": 2, "val_episodes": 6,
                     "log_every": 2},
           "eval": {"ways": 2, "shots": 1, "queries": 3, "open_set": 2, "unknown_score": "distance"}, "seed": 0}
    train(config_from_dict(raw), tmp_path / "run", progress=False, log=lambda *_: None)
    validations = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
                   if json.loads(line)["kind"] == "val"]
    assert len(validations) == 2 and all(v["auroc"] > 60 and v["auroc_ci95"] >= 0 for v in validations), [
        (v["auroc"], v["auroc_ci95"]) for v in validations]
    raw["eval"]["open_set"] = 3  # 2 known + 3 unseen > the 4 val classes: refused before any training step
    with pytest.raises(FewshotError, match="validation episodes need 2 known \\+ 3 unseen classes"):
        train(config_from_dict(raw), tmp_path / "run2", progress=False, log=lambda *_: None)
    assert not (tmp_path / "run2" / "metrics.jsonl").exists()
    raw["eval"].update(open_set=2, unknown_score="entropy")
    with pytest.raises(FewshotError, match="eval.unknown_score must be one of"):
        config_from_dict(raw)
