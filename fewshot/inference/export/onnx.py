"""Export a model with a support set's classes built in as ONNX (float32, or INT8 quantized), for applications
that run it with onnxruntime alone: no torch, no PIL, no image preparation of their own.

The graph has one input, ``images``: uint8 ``(B, H, W, 3)``, decoded RGB pixels as an application has them
(numpy arrays from any decoder), of any batch size and any image size, B, H and W all dynamic. In the
graph the pixels are converted to float; for a 1-channel model they become grey with PIL's ``L`` weights
(0.299 R + 0.587 G + 0.114 B); the image is resized to ``image_size`` x ``image_size`` with bilinear
filtering, antialiased when it is shrunk (ONNX ``Resize`` with ``antialias=1``, opset 18, as
``F.interpolate(..., mode="bilinear", antialias=True)``, the triangle filter of PIL's ``Image.BILINEAR``;
enlarging is plain bilinear in all three); normalized with the model's mean and std; then embedded (averaged with the
mirrored image under ``tta: flip``), transformed and classified against the support embeddings stored in
the file. The output ``probabilities`` is float32 ``(B, classes)``; a classifier with a "none of these" score
(``FewShotClassifier`` always has one) has a second output ``unknown_score``, float32 ``(B,)``, higher = less like
any class, with ``unknown_score`` (its name), ``unknown_threshold`` (the ``auto`` threshold: answer "unknown" above
it), ``unknown_recall`` and ``unknown_auroc`` in the metadata. Unlike ``fewshot predict``, the
resized pixels are not rounded to integers, a difference of less than half a grey level; images already at
``image_size`` give the PyTorch model's probabilities (checked at export, to 1e-4).

The file's ``metadata_props`` carry ``class_names`` (a JSON list, in output order), ``image_size`` (for an
ensemble also ``member_sizes``: each member resizes that input to its own size),
``channels``, ``input``, ``output``, ``resize``, ``quantization`` (``none``, ``static`` or ``dynamic``) and
``fewshot_version``. An application::

    session = onnxruntime.InferenceSession("model.onnx")
    names = json.loads(session.get_modelmeta().custom_metadata_map["class_names"])
    probabilities = session.run(None, {"images": np.stack([np.asarray(Image.open(f).convert("RGB"))])})[0]

(any decoder will do; images of one size per batch, as ``np.stack`` needs). ``onnx-int8`` files are the same graph
quantized by onnxruntime: statically (QDQ, 8-bit per-channel weights and activations, activation ranges
calibrated on the support images; convolutions, linear layers, activations and pooling), for the CPU that
exports it (``int8_weights`` in the metadata says which). Measured in ``benchmarks/onnx_int8.py``: on an AVX2
CPU without VNNI, signed 8-bit weights (U8S8) saturate in its integer multiply-add and cost EfficientNet-Lite0 5
points, while unsigned ones (U8U8) cost 0.3 points but run about 10x slower than float32; on an AVX-512 CPU with
VNNI, U8S8 runs 1.7x faster than float32 and U8U8 6x slower. So U8S8 is made where the CPU has VNNI and U8U8
elsewhere (accuracy first; ``fewshot export`` warns that it is slower than float there); the file is 3.7x smaller
either way. When static quantization fails or no
calibration images are given, the model is quantized dynamically instead (8-bit weights of convolutions
and linear layers, activations quantized at run time; less accurate), as ``quantization`` records. Distances, normalizations, matrix
products and softmax (the feature transform and most heads) stay float32.

The graph is made by torch's dynamo exporter (``torch.export`` with dynamic batch, height and width, then
``torch.onnx.export``, opset 18): the path taken for Conv4 and EfficientNet-Lite backbones with torch 2.14.
If it fails, the TorchScript-based exporter is tried, with a symbolic for the antialiased resize (ONNX
``Resize`` with ``antialias=1``, ``exclude_outside=1``), and, if that fails too, with plain bilinear
resizing; ``resize`` in the metadata says which. While exporting, the head's ``torch.cdist`` is replaced by
its direct formula (torch switches to a matrix-product algorithm above 25 rows, which ``torch.export``
would turn into a limit on the batch size). The graph holds the fitted classifier as constants (the
transform's statistics, the head's state, the temperature) and the head's ``classify``: no fitting loop runs
at inference. Every export is checked in onnxruntime against the PyTorch module
(:data:`VERIFY_ATOL`), at ``image_size`` and at another size and batch, before the file is written.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ...atomic import atomic_write, writable_folder
from ...errors import ExportError, FewshotError
from ...model.capabilities import require
from ...model.network import FewShotModel, FittedClassifier
from ...runtime import has_int8_dot_product
from .onnx_graph import OPSET, check_images, first_line, quiet, session, set_metadata, traced_graph
from .onnx_int8 import quantized
from .torchscript import FittedImageClassifier, ScoredImageClassifier, outputs, unknown_metadata


GREY_WEIGHTS = (0.299, 0.587, 0.114)  # PIL's RGB -> L (ITU-R 601-2 luma)


VERIFY_ATOL = 1e-4  # ONNX vs PyTorch probabilities at export, images at image_size


INPUT_DESCRIPTION = "uint8 (B, H, W, 3) RGB, any size"


OUTPUT_DESCRIPTION = "float32 (B, classes) probabilities, classes in the order of class_names"


MISSING_PACKAGES = "ONNX export needs the onnx extra: pip install 'fewshot[onnx]'"


class ImageClassifier(nn.Module):
    """``forward(images)``: uint8 ``(B, H, W, 3)`` RGB of any size -> probabilities ``(B, classes)``.

    Wraps :class:`fewshot.inference.export.torchscript.FittedImageClassifier` (normalization, backbone, TTA, transform, the fitted
    head's state and ``classify``) with the channel conversion and resize an application would otherwise do
    itself.
    """

    def __init__(self, classifier: FittedImageClassifier, image_size: int, channels: int, antialias: bool = True):
        super().__init__()
        self.classifier, self.image_size, self.channels, self.antialias = classifier, image_size, channels, antialias
        self.register_buffer("grey", torch.tensor(GREY_WEIGHTS).view(1, 3, 1, 1))

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` -> float ``(B, channels, image_size, image_size)``, values 0-255."""
        pixels = images.permute(0, 3, 1, 2).float()
        if self.channels == 1:
            pixels = (pixels * self.grey).sum(dim=1, keepdim=True)
        return F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                             antialias=self.antialias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.resize(images))


class PortableOps(TorchFunctionMode):
    """While exporting: ``torch.cdist`` as its direct formula ``(..., P, R)``, one algorithm for every size."""

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.cdist:
            x1, x2 = args[0], args[1]
            p = args[2] if len(args) > 2 else kwargs.get("p", 2.0)
            difference = (x1.unsqueeze(-2) - x2.unsqueeze(-3)).abs()  # (..., P, R, M)
            if p == 2:
                return difference.pow(2).sum(-1).sqrt()
            if p == float("inf"):
                return difference.amax(-1)
            return difference.pow(p).sum(-1).pow(1.0 / p)
        return func(*args, **kwargs)


class PortableHead(nn.Module):
    """A head whose ``classify`` runs under :class:`PortableOps` (only the head: the mode costs a Python call
    per operation while tracing); ``probabilities`` as the head's."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head, self.ops = head, PortableOps

    def classify(self, state: dict[str, torch.Tensor], query: torch.Tensor) -> torch.Tensor:
        with self.ops():
            return self.head.classify(state, query)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return self.head.probabilities(logits)


def import_onnx() -> tuple[Any, Any]:
    """``(onnx, onnxruntime)``, or :class:`ExportError` saying which extra to install."""
    try:
        import onnx
        import onnxruntime
        import onnxruntime.quantization  # noqa: F401 - needed for INT8, part of the same package
    except ImportError:
        raise ExportError(MISSING_PACKAGES) from None
    return onnx, onnxruntime


def export_onnx(model: FewShotModel, fitted: FittedClassifier, class_names: list[str], image_size: int, channels: int,
                path: str | os.PathLike, quantize: bool = False, calibration_images: torch.Tensor | None = None,
                threshold: dict | None = None) -> Path:
    """Write ``model`` with its ``fitted`` classifier built in to ``path`` as ONNX (atomically); return the path.

    ``fitted``: :meth:`FewShotModel.fit` on the support embeddings, ``fitted.ways == len(class_names)``. The file
    takes uint8 ``(B, H, W, 3)`` RGB images of any size and returns probabilities ``(B, len(class_names))`` (see
    the module docstring). ``quantize``: INT8, calibrated on ``calibration_images`` (uint8 ``(N, channels,
    image_size, image_size)``, the support images; without them, dynamic quantization). Raises
    :class:`ExportError` when the onnx packages are missing, the head cannot be exported, the path cannot be
    written, or the exported graph does not reproduce the model. ``model`` is moved to the CPU (and left
    there); its training mode is restored. ``threshold``: the unknown threshold's record (see
    :func:`fewshot.inference.export.torchscript.unknown_metadata`).
    """
    onnx, onnxruntime = import_onnx()
    require(model, "export")
    if channels not in (1, 3):
        raise ExportError(f"channels must be 1 or 3 for ONNX export, got {channels}")
    target = Path(path).expanduser()
    if target.is_dir():
        raise ExportError(f"cannot write {target}: it is a folder (give a file name)")
    _, problem = writable_folder(target.parent)
    if problem:
        raise ExportError(f"cannot write {target}: {problem}")
    if fitted.ways != len(class_names):
        raise ExportError(f"the fitted classifier has {fitted.ways} classes but {len(class_names)} class names "
                          "were given")
    was_training = model.training
    model = model.cpu().eval()
    try:
        classifier = FittedImageClassifier(model, fitted).eval()
        classifier.head, classifier.ops = PortableHead(model.head), PortableOps
        if fitted.unknown_score:
            classifier = ScoredImageClassifier(classifier).eval()
        names = ("probabilities", "unknown_score") if fitted.unknown_score else ("probabilities",)
        proto, antialias = build_graph(classifier, image_size, channels, names,
                                       f"{type(model.backbone).__name__} + {type(model.head).__name__}")
        module = ImageClassifier(classifier, image_size, channels, antialias).eval()
        resize = f"to {image_size}x{image_size}, bilinear{', antialiased when shrinking' if antialias else ''}"
        metadata = {"class_names": json.dumps(list(class_names)), "image_size": str(image_size),
                    "channels": str(channels), "input": INPUT_DESCRIPTION, "output": OUTPUT_DESCRIPTION,
                    "resize": resize, "quantization": "none", "fewshot_version": fewshot_version(),
                    **member_sizes(model),
                    **{k: v if isinstance(v, str) else json.dumps(v)
                       for k, v in unknown_metadata(fitted, threshold).items()}}
        set_metadata(proto, metadata)
        data = proto.SerializeToString()
        verify(onnxruntime, data, module, image_size, calibration_images)
    finally:
        model.train(was_training)
    if quantize:
        data = quantized(onnx, onnxruntime, data, target, metadata, calibration_images)
        if not has_int8_dot_product():
            warnings.warn("INT8 runs slower than float ONNX on this CPU (it has no VNNI 8-bit instructions; 6-10x "
                          "slower measured): choose it for a 3.7x smaller file, not for speed", UserWarning, stacklevel=2)
    try:
        return atomic_write(target, lambda handle: handle.write(data))
    except FewshotError as exc:  # atomic_write's one-line message, as an ExportError
        raise ExportError(str(exc)) from None


def fewshot_version() -> str:
    from ...version import __version__

    return __version__


def build_graph(classifier: nn.Module, image_size: int, channels: int, names: tuple[str, ...], label: str
                ) -> tuple[Any, bool]:
    """The ONNX ``ModelProto`` of :class:`ImageClassifier` around ``classifier`` (a :class:`FittedImageClassifier`
    whose head is a :class:`PortableHead`, or a :class:`ScoredImageClassifier` around one) with the outputs
    ``names``, and whether its resize is antialiased (``label`` names the model in errors). By the dynamo exporter; when that fails,
    by the TorchScript-based one, antialiased through :func:`antialiased_resize`, else plain bilinear."""
    example = torch.randint(0, 256, (2, image_size + 3, image_size + 5, 3), dtype=torch.uint8,
                            generator=torch.Generator().manual_seed(0))
    failures = []
    with quiet(), torch.no_grad():
        try:
            module = ImageClassifier(classifier, image_size, channels, antialias=True).eval()
            dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("height"), 2: torch.export.Dim("width")}
            program = torch.export.export(module, (example,), dynamic_shapes=(dims,), strict=False)
            exported = torch.onnx.export(program, (example,), dynamo=True, input_names=["images"],
                                         output_names=list(names), opset_version=OPSET, verbose=False,
                                         optimize=True, external_data=False)
            return exported.model_proto, True
        except Exception as exc:  # noqa: BLE001 - any exporter failure: try the other exporter
            failures.append(f"dynamo exporter: {first_line(exc)}")
        for antialias in (True, False):
            try:
                return torchscript_graph(classifier, image_size, channels, antialias, example, names), antialias
            except Exception as exc:  # noqa: BLE001
                failures.append(f"TorchScript exporter{'' if antialias else ' (plain bilinear)'}: {first_line(exc)}")
    raise ExportError(f"cannot export {label} to ONNX: {'; '.join(failures)}")


def torchscript_graph(classifier: nn.Module, image_size: int, channels: int, antialias: bool,
                      example: torch.Tensor, names: tuple[str, ...]) -> Any:
    """The ONNX ``ModelProto`` made by the TorchScript-based exporter."""
    import onnx

    module = ImageClassifier(classifier, image_size, channels, antialias).eval()
    data = traced_graph(module, example, ("images", *names),
                        {"images": {0: "batch", 1: "height", 2: "width"}, **{n: {0: "batch"} for n in names}},
                        antialias)
    return onnx.load_from_string(data)


def member_sizes(model: FewShotModel) -> dict[str, str]:
    """For an ensemble, ``{"member_sizes": JSON {member: px}}``: the graph resizes to ``image_size`` (the largest
    member's), then each member to its own size (EfficientNet-Lite0 runs at 224 inside the default recipe's 260)."""
    sizes = getattr(model.backbone, "member_sizes", None)
    return {"member_sizes": json.dumps(sizes)} if sizes and any(sizes.values()) else {}


def verify(onnxruntime: Any, data: bytes, module: ImageClassifier, image_size: int,
           calibration_images: torch.Tensor | None) -> None:
    """Raise :class:`ExportError` unless onnxruntime reproduces ``module``'s probabilities to
    :data:`VERIFY_ATOL`: on 3 images at ``image_size`` (support images when given, else random) and on one
    batch of another size (which checks the dynamic shapes)."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (3, image_size, image_size, 3), dtype=torch.uint8, generator=generator)
    if calibration_images is not None and len(calibration_images):
        images = check_images(calibration_images[:3], image_size)
    other = torch.randint(0, 256, (2, image_size * 2 + 1, image_size + 3, 3), dtype=torch.uint8, generator=generator)
    try:
        with quiet():
            runner = session(onnxruntime, data)
            for batch in (images, other):
                with torch.no_grad():
                    wanted = [t.numpy() for t in outputs(module(batch))]
                for got, expected in zip(runner.run(None, {"images": batch.numpy()}), wanted):
                    if got.shape != expected.shape or not np.allclose(got, expected, atol=VERIFY_ATOL,
                                                                      rtol=VERIFY_ATOL):
                        difference = np.abs(got - expected).max() if got.shape == expected.shape else got.shape
                        raise ExportError(f"the exported ONNX model does not reproduce the PyTorch model "
                                          f"(largest difference {difference} on {list(batch.shape)} images)")
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime refuses the graph
        raise ExportError(f"onnxruntime cannot run the exported model: {first_line(exc)}") from None
