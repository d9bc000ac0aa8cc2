"""What the server says about its model: the key its cached embeddings are stored under (:func:`model_key`), which
export formats this server can write (:func:`can_export`) and what INT8 means for speed on this CPU
(:func:`int8_note`)."""

from __future__ import annotations

import functools
import hashlib
import json

from ..inference.classifier import FewShotClassifier
from ..runtime import cpu_flags, has_int8_dot_product


def model_key(classifier: FewShotClassifier) -> str:
    """Names the embeddings a model makes: a hash of its config, test-time settings and weights."""
    digest = hashlib.sha256(json.dumps(classifier.config_.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(classifier.model_.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def can_export(format: str) -> bool:  # noqa: A002
    """ONNX formats need the fewshot[onnx] extra on the server."""
    import importlib.util

    if format == "torchscript":
        return True
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime", "onnxscript"))


@functools.lru_cache(maxsize=1)
def int8_note() -> str:
    """What INT8 ONNX means for speed on this machine (measured in benchmarks/RESULTS.md): with VNNI the export uses
    signed weights, 1.3-1.7x faster than float ONNX on an AVX-512 VNNI CPU; without, unsigned ones (signed products
    saturate there), about 6-10x slower than float."""
    if not cpu_flags():
        return "Whether it runs faster than ONNX depends on the CPU (8-bit VNNI instructions help)."
    if has_int8_dot_product():
        return ("This server's CPU has VNNI (8-bit) instructions: INT8 is made with signed weights for such CPUs, "
                "1.3x (the default recipe) to 1.7x (EfficientNet-Lite0) faster than ONNX in our measurements, with "
                "99 % of answers the same; on a CPU without VNNI that file loses accuracy.")
    return ("This server's CPU has no VNNI (8-bit) instructions: INT8 runs slower than ONNX here (6-10x "
            "measured on such CPUs); choose it for size, not speed.")
