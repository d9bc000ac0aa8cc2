"""FewShotClassifier: fit from every support form, predict, add_examples, save / load, estimate, bad input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fewshot
from conftest import make_image_folder
from fewshot import FewShotClassifier
from fewshot.cli import main
from fewshot.errors import (FewshotError, InvalidImageError, NotFittedError, SavedFileError, SupportSetError)

TINY = dict(backbone="conv4", head="protonet", image_size=16, backbone_options={"width": 8})


@pytest.fixture
def support(tmp_path) -> Path:
    root = tmp_path / "support"
    make_image_folder(root, classes=3, per_class=6, size=16)
    return root


def files_of(root: Path) -> dict[str, list[Path]]:
    return {d.name: sorted(d.iterdir()) for d in sorted(root.iterdir())}


def test_importable_from_the_package():
    assert fewshot.FewShotClassifier is FewShotClassifier


def test_every_support_form_gives_the_same_classifier(support):
    files = files_of(support)
    query = files["class01"][0]
    from_folder = FewShotClassifier(**TINY).fit(support)
    from_mapping = FewShotClassifier(**TINY).fit({k: [str(p) for p in v] for k, v in reversed(files.items())})
    images = [Image.open(p) for v in files.values() for p in v]
    labels = [k for k, v in files.items() for _ in v]
    from_lists = FewShotClassifier(**TINY).fit(images, labels)
    assert from_folder.classes_ == from_mapping.classes_ == from_lists.classes_ == ["class00", "class01", "class02"]
    expected = from_folder.predict_proba(query)
    assert expected.shape == (1, 3) and np.allclose(expected.sum(1), 1, atol=1e-5)
    for other in (from_mapping, from_lists):
        assert np.allclose(other.predict_proba(query), expected, atol=1e-5)
    # one image in every form a program holds it: path, PIL, (H, W, 3) array, (C, H, W) uint8 / float tensors
    pixels = np.array(Image.open(query).convert("RGB"))
    forms = [str(query), query, Image.open(query), pixels, torch.from_numpy(pixels).permute(2, 0, 1),
             torch.from_numpy(pixels).permute(2, 0, 1).float() / 255]
    for form in forms:
        assert np.allclose(from_folder.predict_proba(form), expected, atol=1e-4), type(form)
    assert from_folder.predict([query, files["class02"][1]]) == ["class01", "class02"]


def test_images_of_any_size_and_mode_are_prepared_like_the_cli(support, tmp_path, capsys):
    big = tmp_path / "queries"
    big.mkdir()
    source = Image.open(files_of(support)["class00"][2])
    source.resize((53, 37)).convert("RGBA").save(big / "rgba.png")
    source.resize((40, 40)).convert("L").save(big / "gray.png")
    clf = FewShotClassifier(**TINY).fit(support)
    ours = clf.details(sorted(big.iterdir()))
    assert main(["predict", "--backbone", "conv4", "--head", "protonet", "--image-size", "16",
                 "--backbone-option", "width=8", "--support", str(support), "--query", str(big), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert [r["query"] for r in cli] == [r["query"] for r in ours]
    for a, b in zip(cli, ours):
        assert a["predicted"] == b["predicted"]
        assert all(abs(a["probabilities"][k] - b["probabilities"][k]) < 1e-5 for k in a["probabilities"])


def test_add_examples_embeds_only_the_new_images(support, monkeypatch):
    files = files_of(support)
    clf = FewShotClassifier(**TINY).fit({k: v[:3] for k, v in files.items()})
    embedded = []
    original = clf.model_.embed
    monkeypatch.setattr(clf.model_, "embed", lambda images: embedded.append(len(images)) or original(images))
    clf.add_examples("class01", files["class01"][3:])
    assert embedded == [3]
    clf.add_examples("newclass", files["class02"][3:5])
    assert clf.classes_ == ["class00", "class01", "class02", "newclass"]
    whole = FewShotClassifier(**TINY).fit({**{k: v[:3] for k, v in files.items()}, "class01": files["class01"],
                                           "newclass": files["class02"][3:5]})
    query = files["class00"][5]
    assert np.allclose(clf.predict_proba(query), whole.predict_proba(query), atol=1e-5)


def test_save_and_load_round_trip_with_safe_loading(support, tmp_path):
    clf = FewShotClassifier(**TINY).fit(support)
    path = clf.save(tmp_path / "clf.fewshot")
    state = torch.load(path, weights_only=True)  # tensors and plain values only
    assert state["format"] == "fewshot-classifier" and sorted(state["classes"]) == clf.classes_
    loaded = FewShotClassifier.load(path)
    queries = files_of(support)["class02"]
    assert loaded.classes_ == clf.classes_
    assert np.allclose(loaded.predict_proba(queries), clf.predict_proba(queries), atol=1e-6)
    # damaged, other-version and foreign files are one clear SavedFileError each
    (tmp_path / "cut.fewshot").write_bytes(path.read_bytes()[:200])
    with pytest.raises(SavedFileError, match="cut.fewshot"):
        FewShotClassifier.load(tmp_path / "cut.fewshot")
    torch.save({**state, "version": 99}, tmp_path / "future.fewshot")
    with pytest.raises(SavedFileError, match="format 99; this fewshot reads format 1: upgrade fewshot"):
        FewShotClassifier.load(tmp_path / "future.fewshot")
    torch.save({"model": {}, "config": {}}, tmp_path / "ckpt.pt")
    with pytest.raises(SavedFileError, match="training checkpoint"):
        FewShotClassifier.load(tmp_path / "ckpt.pt")
    with pytest.raises(SavedFileError, match="does not exist"):
        FewShotClassifier.load(tmp_path / "missing.fewshot")


def test_bad_input_is_a_clear_fewshot_error(support, tmp_path):
    files = files_of(support)
    clf = FewShotClassifier(**TINY)
    with pytest.raises(NotFittedError, match="call fit"):
        clf.predict(files["class00"][0])
    with pytest.raises(SupportSetError, match="class 'b' has no images"):
        clf.fit({"a": files["class00"], "b": []})
    with pytest.raises(SupportSetError, match="at least two classes"):
        clf.fit({"a": files["class00"]})
    with pytest.raises(SupportSetError, match="3 images but 2 labels"):
        clf.fit(files["class00"][:3], ["a", "b"])
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    with pytest.raises(InvalidImageError, match="notes.png"):
        clf.fit({"a": files["class00"], "b": [not_image]})
    with pytest.raises(InvalidImageError, match="not an image"):
        clf.fit({"a": files["class00"], "b": [42]})
    with pytest.raises(InvalidImageError, match="outside 0..1"):
        clf.fit({"a": files["class00"], "b": [np.full((8, 8, 3), 7.5)]})
    # one image in a class: fine for predict, refused by estimate with the reason
    clf.fit({"a": files["class00"], "b": files["class01"][:1]})
    assert clf.predict(files["class01"][2]) == ["b"]
    with pytest.raises(SupportSetError, match="'b' \\(1\\) has a single image"):
        clf.estimate()
    # the same picture under two classes: a warning that names both files
    with pytest.warns(UserWarning, match="class00.*img000.png.*class 'b'.*img000.png"):
        clf.fit({"a": files["class00"], "b": [files["class00"][0], *files["class01"]]})
    assert all(issubclass(e, FewshotError) for e in (NotFittedError, SupportSetError, InvalidImageError,
                                                     SavedFileError))


def test_estimate_on_separable_classes_with_interval_and_report(support):
    clf = FewShotClassifier(**TINY).fit(support)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 6 images per class: no warning (the open-set part: test_open_set_classifier)
        estimate = clf.estimate(repeats=20, seed=1, open_set=False)
    assert estimate.accuracy > 80 and estimate.low < estimate.accuracy <= estimate.high <= 100
    assert estimate.images == 18 and estimate.shots == {"class00": 5, "class01": 5, "class02": 5}
    assert [row["class"] for row in estimate.report["classes"]] == clf.classes_
    assert np.asarray(estimate.report["confusion"]).sum() == 20 * 3
    assert clf.estimate(repeats=20, seed=1, open_set=False).accuracy == estimate.accuracy, "same seed, same splits"
    assert "estimated accuracy" in estimate.summary() and json.dumps(estimate.to_json())


def test_wilson_interval_stays_honest_at_the_edges():
    from fewshot.inference.estimate import wilson_interval

    low, high = wilson_interval(1.0, 25)
    assert high == 1.0 and 0.86 < low < 0.87  # 25 of 25 right is not proof of 100 %
    low, high = wilson_interval(0.5, 100)
    assert abs((high - low) / 2 - 1.96 * 0.05) < 0.002  # the normal interval when it is fine


def test_estimate_never_classifies_an_image_it_learned_from(support, monkeypatch):
    clf = FewShotClassifier(**TINY).fit(support)
    splits = []
    original = clf.logits_for

    def spy(queries, subset, query_features):
        splits.append((subset[1].clone(), query_features.clone()))
        return original(queries, subset, query_features)

    monkeypatch.setattr(clf, "logits_for", spy)
    clf.estimate(repeats=12, open_set=False)
    assert len(splits) == 12
    for support_features, query_features in splits:
        assert len(support_features) == 15 and len(query_features) == 3  # one of 6 held out per class
        same = (query_features[:, None, :] == support_features[None, :, :]).all(-1)
        assert not same.any(), "a held-out image was in the support"
    # walking through permutations: every image is held out twice in 12 splits
    everything = torch.cat([q for _, q in splits])
    counts = [(everything == f).all(1).sum().item() for f in clf.support()[1]]
    assert counts == [2] * 18


def test_estimate_warns_about_small_classes(support):
    files = files_of(support)
    clf = FewShotClassifier(**TINY).fit({"a": files["class00"][:3], "b": files["class01"]})
    with pytest.warns(UserWarning, match="class 'a' has only 3 images"):
        estimate = clf.estimate(repeats=5)
    assert estimate.warnings and estimate.shots == {"a": 2, "b": 5}


def test_estimate_command(support, tmp_path, capsys):
    model = ["--backbone", "conv4", "--head", "protonet", "--image-size", "16", "--backbone-option", "width=8"]
    out = tmp_path / "estimate.json"
    assert main(["estimate", *model, "--support", str(support), "--repeats", "10", "--confusion",
                 str(tmp_path / "c.png"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "estimated accuracy" in printed and "95% interval" in printed and "precision" in printed
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads(out.read_text())["repeats"] == 10
    one = tmp_path / "one"
    make_image_folder(one, classes=2, per_class=1, size=16)
    assert main(["estimate", *model, "--support", str(one)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "single image" in err
    with pytest.raises(SystemExit):
        main(["estimate", *model, "--support", str(support), "--holdout", "1.5"])


def test_torchscript_export_matches_predict_proba(support, tmp_path):
    clf = FewShotClassifier(**TINY).fit(support)
    path = clf.export(tmp_path / "m.pt", format="torchscript")
    files = {"class_names.json": ""}
    scripted = torch.jit.load(str(path), _extra_files=files)
    assert json.loads(files["class_names.json"]) == clf.classes_
    queries = files_of(support)["class01"]
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)
                          for p in queries])
    assert np.allclose(scripted(pixels).numpy(), clf.predict_proba(queries), atol=1e-5)
    with pytest.raises(FewshotError, match="unknown export format"):
        clf.export(tmp_path / "m.x", format="tflite")


def test_a_query_folder_stands_for_its_images(support):
    clf = FewShotClassifier(**TINY).fit(support)
    folder = support / "class02"
    assert clf.predict(folder) == clf.predict(sorted(folder.iterdir()))
    with pytest.raises(InvalidImageError, match="holds no image files"):
        clf.predict(support)


@pytest.mark.parametrize("format_", ["onnx", "onnx-int8"])
def test_onnx_export_runs_with_onnxruntime_alone_and_matches_predict(support, tmp_path, format_):
    import subprocess
    import sys

    clf = FewShotClassifier(**{**TINY, "backbone_options": {"width": 16}, "transform": "cl2n"}).fit(support)
    path = clf.export(tmp_path / f"m-{format_}.onnx", format=format_)
    queries = files_of(support)["class01"] + files_of(support)["class02"]
    pixels = np.stack([np.array(Image.open(p).convert("RGB")) for p in queries])  # (B, 16, 16, 3): no resize
    np.save(tmp_path / "pixels.npy", pixels)
    code = ("import sys, json; sys.modules['torch'] = None\n"
            "import numpy as np, onnxruntime as ort\n"
            f"s = ort.InferenceSession({str(path)!r})\n"
            "meta = s.get_modelmeta().custom_metadata_map\n"
            f"p = s.run(None, {{'images': np.load({str(tmp_path / 'pixels.npy')!r})}})[0]\n"
            "print(json.dumps({'names': json.loads(meta['class_names']), 'p': p.tolist()}))\n")
    result = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout)
    expected = clf.predict_proba(queries)
    assert result["names"] == clf.classes_
    got = np.asarray(result["p"])
    if format_ == "onnx":
        assert np.abs(got - expected).max() < 1e-4  # float32: the same numbers as predict_proba
    else:
        assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.9  # 8-bit weights and activations


def test_review_fixes_for_unusual_inputs(support, tmp_path):
    files = files_of(support)
    clf = FewShotClassifier(**TINY)
    image = Image.open(files["class00"][0]).convert("RGB")
    pixels = np.array(image)
    # a single image as a mapping value (PIL, array, tensor) is one image, not a list of rows or channels
    clf.fit({"a": image, "b": pixels, "c": torch.from_numpy(pixels).permute(2, 0, 1)})
    assert [len(clf._examples[k].images) for k in "abc"] == [1, 1, 1]
    # 16-bit greyscale PNGs are scaled to 8 bits, not clipped to white
    ramp = (np.linspace(0, 65535, 16 * 16).reshape(16, 16)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    from episodes import decode_image
    assert 100 < decode_image(tmp_path / "deep.png", 16, 1).mean() < 155
    # bfloat16 tensors, and empty PIL images / non-string labels / bad estimate arguments as clear errors
    clf.fit(support)
    bf16 = torch.from_numpy(pixels).permute(2, 0, 1).to(torch.bfloat16) / 255
    assert clf.predict(bf16) == clf.predict(image)
    with pytest.raises(InvalidImageError, match="empty"):
        clf.predict(Image.new("RGB", (0, 0)))
    with pytest.raises(SupportSetError, match="non-empty strings"):
        FewShotClassifier(**TINY).fit(files["class00"][:2], [0, 1])
    with pytest.raises(FewshotError, match="holdout"):
        clf.estimate(holdout="0.2")
    with pytest.raises(FewshotError, match="seed"):
        clf.estimate(seed=-1)
    # building a classifier leaves the caller's random state alone
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    FewShotClassifier(**TINY)
    assert torch.equal(torch.rand(1), expected)


def test_bd_cspn_classifies_a_lone_query_by_its_own_features():
    head_support = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    from fewshot.heads import build_head

    head = build_head("bd_cspn", 2, (2,))
    assert head(head_support, labels, torch.tensor([[0.1, 0.9]]), 2).argmax().item() == 1
    assert head(head_support, labels, torch.tensor([[0.9, 0.1]]), 2).argmax().item() == 0
