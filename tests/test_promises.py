"""The numbers fewshot prints about one support set hold for that set (#34): the ``auto`` threshold of a
temperature-1 model keeps and rejects new images at the rates it promises, within their intervals; a score that
cannot work for a head is refused or replaced; every printed promise carries an interval; the per-support
calibration recovers a known temperature; the intervals' building blocks give their reference values."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from fewshot import FewShotClassifier
from fewshot.inference.calibration import support_factor
from fewshot.inference.examples import ClassExamples
from fewshot.cli import main
from fewshot.errors import CapabilityError
from fewshot.inference.open_set_estimate import REJECTION_WIDENING, binomial_tail, kept_interval, rejected_interval, student_t, threshold_rank

from conftest import make_image_folder

TINY = dict(backbone="conv4", head="protonet", image_size=16, backbone_options={"width": 8})


def clusters(rng: np.random.Generator, classes: int, per_class: int, dim: int = 16, spread: float = 1.0):
    """Gaussian classes: centres ``(classes, dim)`` drawn with sd ``spread``, images around them with sd 1."""
    centres = rng.normal(0, spread, (classes, dim))
    features = centres[:, None, :] + rng.normal(0, 1, (classes, per_class, dim))
    return torch.tensor(features, dtype=torch.float32)


def synthetic_classifier(features: torch.Tensor, table: dict | None = None) -> FewShotClassifier:
    """A temperature-1 model (no recipe table, unless ``table`` is given) holding the given embeddings
    ``(classes, n, E)`` as its examples."""
    torch.manual_seed(0)
    clf = FewShotClassifier(**TINY)
    assert not clf.config_.model.temperature
    clf.config_.model.temperature = table or {}
    examples = {}
    for c, block in enumerate(features):
        images = torch.randint(0, 256, (len(block), 3, 16, 16), dtype=torch.uint8)
        names = [f"c{c}-{i}" for i in range(len(block))]
        examples[f"class{c}"] = ClassExamples(images, block, names, names)
    return clf.set_examples(examples)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_temperature_1_models_auto_threshold_keeps_and_rejects_new_images_as_promised(seed):
    rng = np.random.default_rng(seed)
    everything = clusters(rng, 6 + 30, 60)  # 6 known classes, 30 unseen ones, from one distribution of classes
    clf = synthetic_classifier(everything[:6, :8])  # 8 images per known class
    found = clf.open_set_estimate()
    probabilities, known = clf.scores_for(everything[:6, 8:].reshape(-1, everything.shape[-1]))
    _, unknown = clf.scores_for(everything[6:].reshape(-1, everything.shape[-1]))
    kept = 100 * float((known <= found.threshold).double().mean())
    rejected = 100 * float((unknown > found.threshold).double().mean())
    assert found.known_kept == 95 and found.known_kept_low <= kept <= found.known_kept_high == 100
    assert abs(kept - 95) <= 5, (kept, found.summary())
    assert 10 < found.unknown_rejected < 90, "the example must be neither trivial nor hopeless"
    assert found.unknown_rejected_low <= rejected <= found.unknown_rejected_high, (rejected, found.summary())
    assert found.unknown_rejected_high - found.unknown_rejected_low < 90, "an interval that says something"
    assert clf.fitted_.temperature != 1.0 and "fitted on" in clf.fitted_.info["calibration"]


def test_the_thresholds_folds_score_on_the_fitted_classifiers_scale():
    # a table whose temperature jumps tenfold between 7 and 8 shots: the splits (7 images per class) would score on
    # another scale than the fitted classifier (8) unless they take its temperature
    rng = np.random.default_rng(0)
    everything = clusters(rng, 6 + 30, 60)
    clf = synthetic_classifier(everything[:6, :8], table={7: 1.0, 8: 10.0})
    found = clf.open_set_estimate()
    _, known = clf.scores_for(everything[:6, 8:].reshape(-1, everything.shape[-1]))
    kept = 100 * float((known <= found.threshold).double().mean())
    assert abs(kept - 95) <= 5, (kept, found.summary())


def test_energy_is_refused_for_a_head_with_normalized_logits_and_auto_picks_distance(tmp_path):
    with pytest.raises(CapabilityError, match="energy score .* same for every image"):
        FewShotClassifier(**{**TINY, "head": "matching"}, unknown_score="energy")
    clf = FewShotClassifier(**{**TINY, "head": "matching"})
    assert clf.unknown_score == "distance"
    with pytest.raises(CapabilityError):
        clf.unknown_score = "energy"
    assert FewShotClassifier(**TINY).unknown_score == "energy"  # the rule is the head's declaration, not a list
    root = tmp_path / "support"
    make_image_folder(root, classes=4, per_class=6, size=16, noise=4.0)
    torch.manual_seed(0)
    _, scores = FewShotClassifier(**{**TINY, "head": "matching"}).fit(root).predict_proba(
        sorted((root / "class00").iterdir()) + sorted((root / "class01").iterdir()), return_unknown_score=True)
    assert np.ptp(scores) > 1e-4, "the score chosen for matching is not constant"


def test_every_printed_promise_carries_an_interval(tmp_path, capsys):
    root = tmp_path / "support"
    make_image_folder(root, classes=4, per_class=6, size=16, noise=4.0)
    torch.manual_seed(0)
    clf = FewShotClassifier(**TINY, unknown_score="distance").fit(root)
    found = clf.estimate(repeats=12)
    text = found.open_set.summary()
    assert re.search(r"keeps 95 % \(\d+-100 %\) of new images of your classes", text), text
    assert re.search(r"answers 'unknown' for \d+ % \(\d+-\d+ %\) of images of classes you did not add", text), text
    assert re.search(r"AUROC [\d.]+ % \(95% interval [\d.]+-[\d.]+ %", text)
    record = json.loads(json.dumps(found.to_json()))["open_set"]
    for key in ("known_kept", "unknown_rejected"):
        assert record[f"{key}_low"] <= record[key] <= record[f"{key}_high"]
    assert "known_kept_by_construction" not in record
    assert main(["estimate", "--backbone", "conv4", "--head", "protonet", "--image-size", "16", "--backbone-option",
                 "width=8", "--support", str(root), "--repeats", "8", "--unknown-score", "distance",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"estimated accuracy [\d.]+ % \(95% interval [\d.]+-[\d.]+ %", out), out
    assert re.search(r"keeps 95 % \(\d+-100 %\).*'unknown' for \d+ % \(\d+-\d+ %\)", out), out


def test_the_support_calibration_recovers_a_known_temperature_and_stays_finite_when_all_is_right():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 5, generator=generator) * 2
    labels = torch.multinomial((3.0 * logits).softmax(-1), 1, generator=generator).flatten()
    assert support_factor(logits, labels, 1.5, width=5.0) == pytest.approx(2.0, rel=0.08)  # 1.5 x 2 = 3
    right = logits.argmax(1)  # every held-out prediction right: the likelihood alone would go to infinity
    factor = support_factor(logits[:40], right[:40], 1.0)
    assert 1.0 < factor < math.exp(4 * 0.5) + 1e-6


def test_interval_building_blocks_give_their_reference_values():
    # the highest of 19 scores keeps Beta(19, 1): its CDF is x^19, so the 2.5 % point is 0.025^(1/19)
    assert kept_interval(19, 19)[0] == pytest.approx(0.025 ** (1 / 19), abs=2e-3)
    assert kept_interval(50, 99) == pytest.approx((0.402, 0.598), abs=3e-3)  # Beta(50, 50): mean 0.5, sd 0.0498
    # 25 images: the highest keeps >= 90 % with probability 1 - 0.9^25 = 0.928 >= 0.9, the 24th only 0.729
    assert threshold_rank(0.95, 25) == 25
    # recall 0.8 over 20 images: split-conformal's rank is 17, but only rank 18 keeps >= 75 % on 9 supports in 10
    assert binomial_tail(20, 0.75, 17) > 0.1 >= binomial_tail(20, 0.75, 18) and threshold_rank(0.8, 20) == 18
    assert threshold_rank(0.95, 1000) == min(k for k in range(951, 1001) if binomial_tail(1000, 0.9, k) <= 0.1)
    assert binomial_tail(25, 0.9, 25) == pytest.approx(0.9 ** 25) and binomial_tail(4, 0.5, 2) == pytest.approx(11 / 16)
    for freedom, exact in ((2, 4.303), (4, 2.776), (9, 2.262), (11, 2.201), (30, 2.042)):
        assert student_t(freedom) == pytest.approx(exact, rel=0.002)
    low, high = rejected_interval(torch.tensor([0.2, 0.4, 0.6, 0.4, 0.4], dtype=torch.float64), 1000)
    half = REJECTION_WIDENING * 2.776 * float(torch.tensor([0.2, 0.4, 0.6, 0.4, 0.4]).std()) / math.sqrt(5)
    assert (low, high) == pytest.approx((0.4 - half, 0.4 + half), abs=0.01)  # the spread between classes rules
