"""One embedding path for frozen weights. Everything that embeds images with a model it does not train (evaluation
with a non-adapting head, predict, estimate, the Python API, serve, export calibration) asks :func:`embedder` for an
:class:`Embedder` and calls it; what runs underneath is the *runtime*:

* ``eager``: :meth:`FewShotModel.embed` as written (channels_last, autocast per ``precision``). The only runtime on
  CUDA and in bfloat16, where the others have nothing to add.
* ``jit``: the same network traced and frozen (``torch.jit.freeze``: batch norm folded into the convolutions,
  weights as constants); needs nothing beyond torch.
* ``onnxruntime``: the same network exported to ONNX (TorchScript-based exporter, about a second) and run by
  onnxruntime with its graph optimisations and one intra-op thread per torch thread (the ``onnx`` extra).
* ``auto`` (the default): ``eager`` on CUDA or in bfloat16; on the CPU, ``onnxruntime`` when it is installed and
  ``jit`` too once :data:`RACE_AFTER` images have been asked for (evaluation, a busy server), the faster of the two
  timed on the first chunk of each batch shape (which wins flips with the model, the image size and the batch),
  else ``jit``. The conversion is made once the embedder has been asked for :data:`CONVERT_AFTER` images in all (about
  where its cost is repaid), so a one-image prediction in a fresh process is not slowed by a conversion it cannot
  repay, while evaluation, estimate and a server convert at once or after a few requests.

A runtime that cannot convert a model falls back to the next (``onnxruntime`` -> ``jit`` -> ``eager``) with one
warning. Every runtime's outputs equal eager's within :data:`TOLERANCE` in float32 (``tests/test_embedding.py``);
``benchmarks/embed_speed.py`` measures them side by side.
"""

from __future__ import annotations

import importlib.util
import threading
import time
import warnings
import weakref
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import FewshotError
from ..model.network import FewShotModel
from ..runtime import autocast

RUNTIMES = ("auto", "eager", "jit", "onnxruntime")
FALLBACK = {"onnxruntime": "jit", "jit": "eager"}
CONVERT_AFTER = 32  # images: a conversion costs about as much as embedding this many eagerly (benchmarks/embed_speed.py)
RACE_AFTER = 1000  # images asked for before ``auto`` also converts to jit and races it against onnxruntime
TOLERANCE = 1e-4  # largest difference from eager in float32, each runtime
# On the CPU a batch is embedded in chunks of about this many pixels: per image, EfficientNet-Lite0 at 224 px is 1.4x
# (onnxruntime) to 2x (PyTorch) slower in batches of 32 than one at a time (its activations leave the caches), while
# ResNet-50 at 84 px wants batches of 16 or more (benchmarks/RESULTS.md, "Embedding at the CPU's limit").
CHUNK_PIXELS = 32 * 84 * 84


class EmbeddingNetwork(nn.Module):
    """``forward(images)``: uint8 ``(B, C, S, S)`` -> float32 ``(B, E)`` embeddings (``(B, D, h, w)`` maps for a
    feature-map head): :meth:`FewShotModel.embed` (normalization, backbone, TTA) as one module to trace."""

    def __init__(self, model: FewShotModel):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed(images).float()


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise FewshotError(f"runtime must be one of {', '.join(RUNTIMES)}, got '{runtime}'")
    return runtime


def onnxruntime_installed() -> bool:
    """Whether the ``onnx`` extra (onnx and onnxruntime) is installed, without importing it."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def resolve_runtime(runtime: str, device: torch.device | str, precision: str = "auto") -> str:
    """The runtime ``auto`` stands for on ``device`` at ``precision`` (others are returned as they are, except that
    ``jit`` and ``onnxruntime`` need float32 on the CPU: elsewhere they are ``eager``)."""
    device = torch.device(device)
    if device.type != "cpu" or precision == "bf16":
        return "eager"
    if runtime == "auto":
        return "onnxruntime" if onnxruntime_installed() else "jit"
    return runtime


def traced(model: FewShotModel, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ``jit`` runtime: :class:`EmbeddingNetwork` traced on ``example`` and frozen."""
    from .export.onnx_graph import quiet

    with quiet(), torch.inference_mode(False), torch.no_grad():
        frozen = torch.jit.freeze(torch.jit.trace(EmbeddingNetwork(model).eval(), example, check_trace=False))

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return frozen(images)

    return run


def onnx_session(model: FewShotModel, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ``onnxruntime`` runtime: :class:`EmbeddingNetwork` exported with a dynamic batch and run in an
    onnxruntime session (all graph optimisations, ``torch.get_num_threads()`` intra-op threads). The graph is kept
    on disk for the next process (:mod:`.graph_cache`)."""
    import onnxruntime

    from .graph_cache import cached_graph, graph_key
    from .export.onnx_graph import OPSET, quiet, traced_graph

    def make() -> bytes:
        return traced_graph(EmbeddingNetwork(model).eval(), example, ("images", "features"),
                            {"images": {0: "batch"}, "features": {0: "batch"}})

    description = (f"EmbeddingNetwork {example.dtype} opset {OPSET} dynamic batch; tta {model.tta}; mean {model.mean}; "
                   f"std {model.std}; feature map {model.head.feature_map}")
    with quiet(), torch.inference_mode(False):
        if getattr(model, "adapted_to_support", False):  # one support set's copy: never asked for again
            data = make()
        else:
            data = cached_graph(graph_key(model, tuple(example.shape[1:]), description), make)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def run(images: torch.Tensor) -> torch.Tensor:
        features = session.run(None, {"images": np.ascontiguousarray(images.numpy())})[0]
        return torch.from_numpy(features)

    return run


CONVERTERS = {"jit": traced, "onnxruntime": onnx_session}


def seconds(run: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> float:
    """The best of two timed calls of ``run(images)`` after one warm-up call."""
    run(images)
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        run(images)
        best = min(best, time.perf_counter() - start)
    return best


def chunk_size(images: torch.Tensor) -> int:
    """Images per call on the CPU for ``(B, C, H, W)`` images: :data:`CHUNK_PIXELS` worth, 1 to 64."""
    return max(1, min(64, CHUNK_PIXELS // max(1, images.shape[-1] * images.shape[-2])))


def weights_version(model: nn.Module) -> tuple:
    """Changes whenever any parameter or buffer of ``model`` does: each tensor's storage and in-place version
    counter (``load_state_dict`` copies in place and bumps the counter; assigning a new tensor changes the storage)."""
    return tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))


class Embedder:
    """``embedder(images)``: uint8 ``(B, C, S, S)`` -> float32 ``(B, E)`` (or maps ``(B, D, h, w)``) on ``device``,
    by the runtime :func:`resolve_runtime` picks. Float input (already normalized) is embedded eagerly. Holds
    converted copies of the weights, made again when the weights change (:func:`weights_version`). Thread-safe."""

    def __init__(self, model: FewShotModel, runtime: str = "auto", device: torch.device | str = "cpu",
                 precision: str = "auto"):
        self.model, self.device, self.precision = model, torch.device(device), precision
        autocast(self.device, precision)  # a precision that does not exist is refused here, whatever the runtime
        self.tune = check_runtime(runtime) == "auto"
        self.convert_after = CONVERT_AFTER if self.tune else 0
        self.target = resolve_runtime(runtime, self.device, precision)
        self.converted: dict[tuple[int, ...], dict[str, Callable[[torch.Tensor], torch.Tensor]]] = {}
        self.picked: dict[tuple[int, ...], tuple[str, bool]] = {}  # chunk shape -> (fastest runtime, one by one?)
        self.raced: set[tuple[int, ...]] = set()  # image shapes for which jit was converted to race onnxruntime
        self.version: tuple = ()  # weights_version of the model the converted copies were made from
        self.asked, self.last, self.lock = 0, "eager", threading.Lock()

    @property
    def runtime(self) -> str:
        """The runtime of the latest call: ``eager`` until a conversion is made."""
        return self.last

    def expect(self, count: int) -> None:
        """The caller is about to embed ``count`` images in several calls: counted now, so that a batch worth a
        conversion converts before its first chunk instead of running its first :data:`CONVERT_AFTER` eagerly
        (one image alone is still not worth one)."""
        with self.lock:
            if count >= self.convert_after:
                self.asked = max(self.asked, self.convert_after)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with self.lock:
            self.asked += len(images)
            runs = self.fast(images) if images.dtype == torch.uint8 else None
        step = len(images) if self.device.type != "cpu" else chunk_size(images)
        chunks = [images[i:i + step] for i in range(0, len(images), step)]
        if not runs:
            self.last = "eager"
            return torch.cat([self.eager(chunk) for chunk in chunks])
        chunks = [chunk.cpu() for chunk in chunks]
        return torch.cat([self.pick(runs, chunk)(chunk) for chunk in chunks]).to(self.device)

    def eager(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(self.device, self.precision):
            return self.model.embed(images.to(self.device)).float()

    def pick(self, runs: dict[str, Callable[[torch.Tensor], torch.Tensor]], chunk: torch.Tensor
             ) -> Callable[[torch.Tensor], torch.Tensor]:
        """The converted runtime for a chunk of this shape: the only one, or the faster of two, timed on the first
        chunk of each shape (which is faster flips with the batch: EfficientNets at 84 px run 1.6x faster in ``jit``
        than in onnxruntime in batches of 32, and the other way round one image at a time)."""
        key = tuple(chunk.shape)
        with self.lock:
            if key not in self.picked:
                self.picked[key] = self.fastest(runs, chunk)
            self.last, one_by_one = self.picked[key]
        run = runs[self.last]
        if one_by_one:
            return lambda images: torch.cat([run(images[i:i + 1]) for i in range(len(images))])
        return run

    def fastest(self, runs: dict[str, Callable[[torch.Tensor], torch.Tensor]], chunk: torch.Tensor
                ) -> tuple[str, bool]:
        """(the runtime, whether to feed it one image at a time) that embeds ``chunk`` fastest, timed. Under
        ``auto`` each runtime is also timed one image at a time: onnxruntime ran EfficientNet-Lite0 at 224 px 1.5x
        faster per image one by one than in chunks of 4 on an AVX-512 CPU (benchmarks/RESULTS.md, #36), while
        ResNets at 84 px want chunks. Ties keep the chunk."""
        options = [(name, False) for name in runs]
        if self.tune and len(chunk) > 1:
            options += [(name, True) for name in runs]
        if len(options) == 1:
            return options[0]
        cost = {option: seconds(runs[option[0]], chunk[:1]) * len(chunk) if option[1]
                else seconds(runs[option[0]], chunk) for option in options}
        return min(options, key=cost.__getitem__)

    def fast(self, images: torch.Tensor) -> dict[str, Callable[[torch.Tensor], torch.Tensor]] | None:
        """The converted networks for this image shape (converting now if it is time), or None for eager. Converted
        copies made before the model's weights changed (``load_state_dict``, an optimizer step, a replaced tensor)
        are dropped first: they would embed with the old weights."""
        shape = tuple(images.shape[1:])
        if self.target == "eager" or self.model.training or self.asked < self.convert_after:
            return None
        version = weights_version(self.model)
        if version != self.version:
            self.converted, self.picked, self.raced, self.version = {}, {}, set(), version
        if shape not in self.converted:
            self.converted[shape] = self.convert(images[:2].cpu())
        if self.converted[shape]:
            self.add_rival(shape, images[:2].cpu())
        return self.converted[shape]

    def convert(self, example: torch.Tensor) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """The network converted to :attr:`target`, or to the next runtime that converts."""
        runs = {}
        while self.target != "eager" and not runs:
            try:
                runs[self.target] = CONVERTERS[self.target](self.model, example)
            except Exception as exc:  # noqa: BLE001 - any converter failure: the next runtime, said once
                from .export.onnx_graph import first_line

                fallback = FALLBACK[self.target]
                warnings.warn(f"embedding with {fallback} instead of {self.target}: the model could not be converted "
                              f"({first_line(exc)})", RuntimeWarning, stacklevel=4)
                self.target = fallback
        return runs

    def add_rival(self, shape: tuple[int, ...], example: torch.Tensor) -> None:
        """Under ``auto``, once :data:`RACE_AFTER` images have been asked for: ``jit`` beside onnxruntime for this
        image shape, so that :meth:`pick` keeps the faster per chunk shape (EfficientNets at 84 px in batches of 32
        can run faster in ``jit``). Not before: a second conversion and jit's slow first calls cost about a second,
        more than a 100-image call takes in onnxruntime."""
        runs = self.converted[shape]
        if not (self.tune and self.target == "onnxruntime" and shape not in self.raced and self.asked >= RACE_AFTER):
            return
        self.raced.add(shape)
        try:
            runs["jit"] = CONVERTERS["jit"](self.model, example)
        except Exception:  # noqa: BLE001 - jit cannot trace this model: onnxruntime alone
            return
        self.picked = {key: value for key, value in self.picked.items() if key[1:] != shape}


def embedder(model: FewShotModel, runtime: str = "auto", device: torch.device | str = "cpu",
             precision: str = "auto") -> Embedder:
    """The one embedding function for frozen weights (see the module docstring): a new :class:`Embedder`. ``model``
    must stay in eval mode with unchanged weights while the embedder is used."""
    return Embedder(model, runtime, device, precision)


SHARED: "weakref.WeakKeyDictionary[FewShotModel, dict[tuple, Embedder]]" = weakref.WeakKeyDictionary()
SHARED_LOCK = threading.Lock()


def shared_embedder(model: FewShotModel, runtime: str = "auto", device: torch.device | str = "cpu",
                    precision: str = "auto") -> Embedder:
    """The :class:`Embedder` of a model whose weights never change again (a fitted classifier's, the server's): one
    per model, runtime, device and precision in the process, so its conversion is made once and shared by every
    classifier around the same model."""
    key = (check_runtime(runtime), str(torch.device(device)), precision)
    with SHARED_LOCK:
        found = SHARED.setdefault(model, {})
        if key not in found:
            found[key] = Embedder(model, runtime, device, precision)
        return found[key]
