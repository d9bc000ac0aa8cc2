"""What every ONNX graph made here shares: the opset, silencing the exporters, the antialiased-resize symbolic the
TorchScript-based exporter lacks, that exporter itself (:func:`traced_graph`), and the small helpers around a graph
(:func:`set_metadata`, an onnxruntime :func:`session`, :func:`check_images` for calibration). Used by the user-facing export
(:mod:`fewshot.inference.export.onnx`) and by the onnxruntime embedding runtime (:mod:`fewshot.inference.embedding`)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Any, Iterator

import torch
from torch import nn

from ...errors import ExportError

OPSET = 18  # the first opset whose Resize has ``antialias``


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters' and the quantizer's warnings, progress lines and log messages."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript", "onnx_ir", "onnxruntime", "")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def traced_graph(module: nn.Module, example: torch.Tensor, names: tuple[str, ...], dynamic_axes: dict,
                 antialias: bool = True) -> bytes:
    """``module(example)`` as a serialized ONNX model by the TorchScript-based exporter (opset :data:`OPSET`, no
    autograd), one input and the outputs named ``names`` (input first); ``antialias``: export ``F.interpolate(...,
    antialias=True)`` with :func:`antialiased_resize` (else that operation fails to export)."""
    buffer = io.BytesIO()
    if antialias:
        torch.onnx.register_custom_op_symbolic("aten::_upsample_bilinear2d_aa", antialiased_resize, OPSET)
    try:
        with torch.no_grad():
            torch.onnx.export(module, (example,), buffer, dynamo=False, input_names=[names[0]],
                              output_names=list(names[1:]), opset_version=OPSET, dynamic_axes=dynamic_axes)
    finally:
        if antialias:
            torch.onnx.unregister_custom_op_symbolic("aten::_upsample_bilinear2d_aa", OPSET)
    return buffer.getvalue()


def antialiased_resize(g: Any, images: Any, output_size: Any, align_corners: Any, *scales: Any) -> Any:
    """TorchScript-exporter symbolic of ``F.interpolate(images (B, C, H, W), size, mode="bilinear",
    antialias=True)`` (which that exporter lacks): ONNX ``Resize`` with ``antialias=1`` and, as torch, the
    filter's weights renormalized at the borders (``exclude_outside=1``)."""
    from torch.onnx import symbolic_helper

    size = symbolic_helper._get_const(output_size, "is", "output_size")
    corners = symbolic_helper._get_const(align_corners, "b", "align_corners")

    def constant(values: list, dtype: torch.dtype) -> Any:
        return g.op("Constant", value_t=torch.tensor(values, dtype=dtype))

    leading = g.op("Slice", g.op("Shape", images), constant([0], torch.int64), constant([2], torch.int64))
    sizes = g.op("Concat", leading, constant(list(size), torch.int64), axis_i=0)
    return g.op("Resize", images, constant([], torch.float32), constant([], torch.float32), sizes, mode_s="linear",
                coordinate_transformation_mode_s="align_corners" if corners else "pytorch_half_pixel",
                antialias_i=1, exclude_outside_i=1)


def set_metadata(proto: Any, metadata: dict[str, str]) -> None:
    """Replace the model's ``metadata_props`` with ``metadata``."""
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "fewshot"


def session(onnxruntime: Any, model: bytes | str) -> Any:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def check_images(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Calibration images as the graph's input: uint8 ``(N, C, S, S)`` -> ``(N, S, S, 3)``."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3) or \
            tuple(images.shape[2:]) != (image_size, image_size):
        raise ExportError(f"calibration images must be uint8 (N, C, {image_size}, {image_size}), got "
                          f"{images.dtype} {list(images.shape)}")
    images = images.detach().cpu()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images.permute(0, 2, 3, 1).contiguous()
