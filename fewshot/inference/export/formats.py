"""One entry for every export format: a model with its fitted classifier built in, written as TorchScript
(:mod:`fewshot.inference.export.torchscript`) or ONNX / INT8 ONNX (:mod:`fewshot.inference.export.onnx`); what
:meth:`fewshot.FewShotClassifier.export` and the server's export worker call."""

from __future__ import annotations

from pathlib import Path

import torch

from ...model.network import FewShotModel, FittedClassifier


def export_fitted(model: FewShotModel, fitted: FittedClassifier, images: torch.Tensor, names: list[str], config,
                  path: Path, format: str, threshold: dict | None = None) -> Path:  # noqa: A002
    """Write ``model`` with its ``fitted`` classifier built in (what :meth:`FewShotClassifier.export` and the
    server's export worker run): ``images`` ``(N, C, S, S)`` uint8 support images are the TorchScript trace's
    example and the INT8 calibration set; ``threshold``: :meth:`FewShotClassifier.threshold_record`."""
    size, channels = config.data.image_size, config.data.channels
    if format == "torchscript":
        from .torchscript import export_torchscript

        return export_torchscript(model, fitted, images, names, path, size, channels, threshold)
    from .onnx import export_onnx

    return export_onnx(model, fitted, names, size, channels, path, quantize=format == "onnx-int8",
                       calibration_images=images, threshold=threshold)


EXPORT_FORMATS = ("onnx", "onnx-int8", "torchscript")


__all__ = ["EXPORT_FORMATS", "export_fitted"]
