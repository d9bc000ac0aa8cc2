"""INT8 ONNX: static quantization calibrated on the support images (signed weights where the CPU has 8-bit VNNI,
unsigned elsewhere), the retry without onnxruntime's bias scale adjustment, and the dynamic fallback with the note it
leaves in the file's metadata."""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import ExportError
from ...runtime import has_int8_dot_product
from .onnx_graph import first_line, quiet
from .onnx_graph import check_images, session, set_metadata


# Static INT8 quantizes convolutions, linear layers, activations and pooling; matrix products, distances,
# normalizations and softmax (the transform and most heads) keep float32 precision.
QUANTIZED_OPS = ["Conv", "Gemm", "Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool"]


DYNAMIC_OPS = ["Conv", "Gemm"]  # dynamic quantization: weights of the convolutions and linear layers


def calibration_reader(images: np.ndarray, batch: int = 1) -> Any:
    """An onnxruntime ``CalibrationDataReader`` giving ``images`` uint8 ``(N, S, S, 3)`` in batches of ``batch``. One
    image at a time: the calibration graph outputs every activation of a batch at once, so the default recipe peaked at
    3.7 GB with batches of 8 and 1.5 GB with single images, in the same time and with the same ranges (min / max)."""
    from onnxruntime.quantization import CalibrationDataReader

    class CalibrationImages(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([images[i:i + batch] for i in range(0, len(images), batch)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            pixels = next(self.batches, None)
            return None if pixels is None else {"images": pixels}

    return CalibrationImages()


def quantize_statically(source: Path, target: Path, images: np.ndarray) -> str:
    """Quantize the float model ``source`` to ``target`` (QDQ, per-channel weights, activations calibrated on
    ``images``); returns which weights: signed (U8S8) where the CPU has VNNI, whose 8-bit dot products do not
    saturate (1.7x faster than float there, measured), else unsigned (U8U8: signed products saturate without VNNI,
    costing 5 points; unsigned ones keep the accuracy but run slower than float)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    signed = has_int8_dot_product()
    options = dict(quant_format=QuantFormat.QDQ, op_types_to_quantize=QUANTIZED_OPS, per_channel=True,
                   activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8 if signed else QuantType.QUInt8)
    try:
        quantize_static(str(source), str(target), calibration_reader(images), **options)
    except ValueError:  # onnxruntime's int32-bias weight-scale adjustment fails on the ensemble's concatenated
        # members (an array compared as a scalar): without that adjustment the static path works
        quantize_static(str(source), str(target), calibration_reader(images), **options,
                        extra_options={"QDQDisableWeightAdjustForInt32Bias": True})
    return "signed (U8S8, for CPUs with VNNI)" if signed else "unsigned (U8U8)"


def dynamic_fallback(failures: list[str]) -> str:
    """Warn that an INT8 export fell back to dynamic quantization, and why; the same line goes into the file."""
    note = (f"INT8 export fell back to dynamic quantization ({'; '.join(failures) or 'no calibration images'}): "
            "the file is about 3.7x smaller but runs slower than float ONNX and agrees with it less often "
            "(benchmarks/RESULTS.md, INT8); export float ONNX for speed")
    warnings.warn(note, UserWarning, stacklevel=4)
    return note


def quantized(onnx: Any, onnxruntime: Any, data: bytes, target: Path, metadata: dict[str, str],
              calibration_images: torch.Tensor | None) -> bytes:
    """The INT8 version of the float model ``data`` with ``metadata`` (and ``quantization``) set.

    The float and quantized models pass through temporary files beside ``target``, always removed."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    stem = target.parent / f".{target.name}.{os.getpid()}"
    float_path, prepared_path, int8_path = (Path(f"{stem}.{part}.tmp") for part in ("float", "prepared", "int8"))
    failures = []
    try:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            float_path.write_bytes(data)
        except OSError as exc:
            raise ExportError(f"cannot write {target}: {exc.strerror or exc} (check free space and permissions)") \
                from None
        with quiet():
            source = float_path
            try:
                quant_pre_process(str(float_path), str(prepared_path), skip_symbolic_shape=True)
                source = prepared_path
            except Exception:  # noqa: BLE001 - pre-processing only helps; quantize the exported graph
                pass
            method = None
            if calibration_images is not None and len(calibration_images):
                images = check_images(calibration_images, int(metadata["image_size"])).numpy()
                try:
                    metadata = {**metadata, "int8_weights": quantize_statically(source, int8_path, images)}
                    method = "static"
                except Exception as exc:  # noqa: BLE001 - fall back to dynamic quantization
                    failures.append(f"static: {first_line(exc)}")
            if method is None:
                try:
                    quantize_dynamic(str(source), str(int8_path), op_types_to_quantize=DYNAMIC_OPS, per_channel=True,
                                     weight_type=QuantType.QInt8)
                    method = "dynamic"
                except Exception as exc:  # noqa: BLE001
                    failures.append(f"dynamic: {first_line(exc)}")
                    raise ExportError(f"cannot quantize the model to INT8: {'; '.join(failures)}") from None
        if method == "dynamic":  # said, never silent: the file is smaller but not faster, and answers differ more
            metadata = {**metadata, "quantization_note": dynamic_fallback(failures)}
        proto = onnx.load(str(int8_path))
        set_metadata(proto, {**metadata, "quantization": method})
        result = proto.SerializeToString()
        try:
            with quiet():
                runner = session(onnxruntime, result)
                probe = np.zeros((1, int(metadata["image_size"]), int(metadata["image_size"]), 3), np.uint8)
                runner.run(None, {"images": probe})
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"onnxruntime cannot run the INT8 model: {first_line(exc)}") from None
        return result
    finally:
        for temporary in (float_path, prepared_path, int8_path):
            with contextlib.suppress(OSError):
                temporary.unlink()
