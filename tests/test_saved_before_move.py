"""A training checkpoint and a saved classifier written by the release before the package moved into subpackages
(#37; ``tests/data/before_move/README.md`` says how) load with today's code and predict what they predicted then."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fewshot import FewShotClassifier

DATA = Path(__file__).parent / "data" / "before_move"


def test_checkpoint_and_saved_classifier_from_before_the_move_predict_the_same():
    expected = json.loads((DATA / "expected.json").read_text())
    queries = [str(q) for q in sorted((DATA / "queries").glob("*.png"))]
    fitted = FewShotClassifier(str(DATA / "checkpoint.pt")).fit(str(DATA / "support"))
    assert fitted.classes_ == expected["classes"]
    np.testing.assert_allclose(fitted.predict_proba(queries), expected["checkpoint"], atol=1e-5)
    loaded = FewShotClassifier.load(str(DATA / "classifier.pt"))
    assert loaded.classes_ == expected["classes"]
    np.testing.assert_allclose(loaded.predict_proba(queries), expected["classifier"], atol=1e-5)
