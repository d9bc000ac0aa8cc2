"""ONNX export (fewshot.inference.export.onnx): float32 and INT8 files, run by onnxruntime without torch, compared with
the PyTorch model; errors leave no file behind."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from conftest import class_template  # noqa: E402
from fewshot.config import ModelConfig  # noqa: E402
from fewshot.errors import CapabilityError, ExportError  # noqa: E402
from fewshot.model.network import FewShotModel, build_model  # noqa: E402
from fewshot.inference.export.onnx import GREY_WEIGHTS, export_onnx  # noqa: E402

SAME_SIZE_ATOL = 1e-4  # ONNX vs model.classify probabilities, images at image_size (no resize)
RESIZED_ATOL = 1e-4  # ONNX vs the model on the same resize done by F.interpolate in torch
PIL_RESIZE_AGREEMENT = 0.9  # argmax agreement of ONNX (resize in the graph) with the model on PIL-resized images
INT8_AGREEMENT = 0.9  # argmax agreement of the INT8 file with the float32 file on separable classes
SIZE = 16
NAMES = ["ant", "bee", "cat", "dog"]


def clustered_images(classes: int, per_class: int, size: int | tuple[int, int], seed: int = 0,
                     noise: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``(classes*per_class, H, W, 3)`` RGB images, class templates plus noise, and their labels."""
    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in range(classes):
        template = class_template(500 + c, max(height, width) + 4, 3)[:height, :width]
        for _ in range(per_class):
            images.append(np.clip(template + rng.normal(0, noise, template.shape), 0, 255).astype(np.uint8))
            labels.append(c)
    return np.stack(images), np.array(labels)


def chw(images: np.ndarray, channels: int = 3) -> torch.Tensor:
    """``(B, H, W, 3)`` uint8 -> ``(B, C, H, W)`` uint8 (channel 0 when ``channels`` is 1: grey images)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2)[:, :channels].contiguous()


def torch_probabilities(model: FewShotModel, support: torch.Tensor, labels: torch.Tensor,
                        images: torch.Tensor, ways: int) -> np.ndarray:
    """The PyTorch model's probabilities ``(B, ways)`` for ``images`` (uint8, or normalized float)."""
    with torch.inference_mode():
        logits = model.classify(support, labels, model.embed(images), ways)
        return model.head.probabilities(logits).numpy()


def normalized(model: FewShotModel, pixels: torch.Tensor) -> torch.Tensor:
    """float 0-255 ``(B, C, H, W)`` -> what ``model.prepare`` makes of uint8 images."""
    mean = torch.tensor(model.mean).view(1, -1, 1, 1)
    std = torch.tensor(model.std).view(1, -1, 1, 1)
    return (pixels / 255.0 - mean) / std


def run(path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})[0]


def metadata(path) -> dict[str, str]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.get_modelmeta().custom_metadata_map


def make_exported(tmp_path, channels: int = 3, tta: str = "none", name: str = "model.onnx", **export_options):
    """A tiny Conv4 + ProtoNet (cl2n transform: unit-norm embeddings, so probabilities are neither saturated
    nor uniform) exported with a support set of 4 classes x 3 images: (path, model, support features, labels,
    support images CHW)."""
    torch.manual_seed(0)
    config = ModelConfig(backbone="conv4", head="protonet", backbone_options={"width": 16}, transform="cl2n", tta=tta)
    model = build_model(config, channels, SIZE).eval()
    support_hwc, labels = clustered_images(len(NAMES), 3, SIZE, seed=1)
    support = chw(support_hwc, channels)
    labels = torch.from_numpy(labels)
    with torch.inference_mode():
        features = model.embed(support)
    path = export_onnx(model, model.fit(features, labels, len(NAMES)), NAMES, SIZE, channels, tmp_path / name,
                       calibration_images=support, **export_options)
    return path, model, features, labels, support


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return make_exported(tmp_path_factory.mktemp("onnx"))


FRESH_PROCESS = textwrap.dedent("""
    import sys
    sys.modules["torch"] = None  # the application has no torch
    import json
    import numpy as np
    import onnxruntime
    session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    names = json.loads(session.get_modelmeta().custom_metadata_map["class_names"])
    images = np.load(sys.argv[2])
    probabilities = session.run(None, {"images": images})[0]
    print(json.dumps({"names": names, "probabilities": probabilities.tolist(), "dtype": str(probabilities.dtype)}))
""")


def test_float_onnx_runs_without_torch_and_matches_pytorch(exported, tmp_path):
    path, model, features, labels, _ = exported
    queries, _ = clustered_images(len(NAMES), 2, SIZE, seed=2)
    np.save(tmp_path / "queries.npy", queries)
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(path), str(tmp_path / "queries.npy")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    got = np.array(loaded["probabilities"])
    expected = torch_probabilities(model, features, labels, chw(queries), len(NAMES))
    assert loaded["names"] == NAMES and loaded["dtype"] == "float32"
    assert got.shape == (len(queries), len(NAMES))
    assert np.array_equal(got.argmax(1), expected.argmax(1))
    assert np.abs(got - expected).max() < SAME_SIZE_ATOL
    assert 0.3 < expected.max() < 0.99  # the comparison is not between saturated or uniform rows


@pytest.mark.parametrize("size", [(32, 32), (24, 40), (10, 13)], ids=["2x", "non-square", "enlarged"])
def test_other_image_sizes_are_resized_in_the_graph(exported, size):
    path, model, features, labels, _ = exported
    queries, _ = clustered_images(len(NAMES), 2, size, seed=3)
    got = run(path, queries)
    pixels = F.interpolate(chw(queries).float(), size=(SIZE, SIZE), mode="bilinear", align_corners=False,
                           antialias=True)
    expected = torch_probabilities(model, features, labels, normalized(model, pixels), len(NAMES))
    assert np.abs(got - expected).max() < RESIZED_ATOL
    assert np.array_equal(got.argmax(1), expected.argmax(1))
    one = run(path, queries[:1])  # batch of one
    assert np.abs(one - got[:1]).max() < RESIZED_ATOL
    meta = metadata(path)
    assert json.loads(meta["class_names"]) == NAMES
    assert meta["image_size"] == str(SIZE) and meta["channels"] == "3" and meta["quantization"] == "none"
    assert meta["input"] == "uint8 (B, H, W, 3) RGB, any size" and "probabilities" in meta["output"]
    assert meta["fewshot_version"] == __import__("fewshot").__version__
    assert "antialiased" in meta["resize"]


def test_graph_resize_is_close_to_the_pil_resize_of_predict(exported):
    """The CLI resizes with PIL (rounded to uint8); the graph resizes in float: same predictions."""
    from PIL import Image

    path, model, features, labels, _ = exported
    queries, _ = clustered_images(len(NAMES), 5, 48, seed=4)
    got = run(path, queries)
    pil = np.stack([np.asarray(Image.fromarray(q).resize((SIZE, SIZE), Image.BILINEAR)) for q in queries])
    expected = torch_probabilities(model, features, labels, chw(pil), len(NAMES))
    assert (got.argmax(1) == expected.argmax(1)).mean() >= PIL_RESIZE_AGREEMENT


def test_one_channel_model_takes_rgb(tmp_path):
    path, model, features, labels, _ = make_exported(tmp_path, channels=1, tta="flip")
    grey, _ = clustered_images(len(NAMES), 2, SIZE, seed=5)
    grey = np.repeat(grey[..., :1], 3, axis=3)  # R = G = B
    got = run(path, grey)
    expected = torch_probabilities(model, features, labels, chw(grey, 1), len(NAMES))
    assert np.array_equal(got.argmax(1), expected.argmax(1))
    assert np.abs(got - expected).max() < SAME_SIZE_ATOL
    colour, _ = clustered_images(len(NAMES), 2, SIZE, seed=6)  # RGB -> grey with PIL's L weights, in the graph
    pixels = (chw(colour).float() * torch.tensor(GREY_WEIGHTS).view(1, 3, 1, 1)).sum(1, keepdim=True)
    expected = torch_probabilities(model, features, labels, normalized(model, pixels), len(NAMES))
    assert np.abs(run(path, colour) - expected).max() < SAME_SIZE_ATOL
    assert metadata(path)["channels"] == "1"


def test_torchscript_exporter_fallback_keeps_the_antialiased_resize(tmp_path, monkeypatch):
    def fails(*args, **kwargs):
        raise RuntimeError("torch.export cannot trace this model")

    monkeypatch.setattr(torch.export, "export", fails)
    path, model, features, labels, _ = make_exported(tmp_path)
    assert "antialiased" in metadata(path)["resize"]
    queries, _ = clustered_images(len(NAMES), 2, (40, 24), seed=10)
    pixels = F.interpolate(chw(queries).float(), size=(SIZE, SIZE), mode="bilinear", align_corners=False,
                           antialias=True)
    expected = torch_probabilities(model, features, labels, normalized(model, pixels), len(NAMES))
    assert np.abs(run(path, queries) - expected).max() < RESIZED_ATOL


def test_efficientnet_lite_linear_probe_power_cl2n(tmp_path):
    size = 32
    torch.manual_seed(0)
    config = ModelConfig(backbone="efficientnet_lite0", weights="none", head="linear_probe",
                         head_options={"steps": 10}, transform="power_cl2n")
    model = build_model(config, 3, size).eval()
    assert model.head.exportable
    support_hwc, labels = clustered_images(3, 2, size, seed=7)
    labels = torch.from_numpy(labels)
    with torch.inference_mode():
        features = model.embed(chw(support_hwc))
    path = export_onnx(model, model.fit(features, labels, 3), NAMES[:3], size, 3, tmp_path / "effnet.onnx")
    queries, _ = clustered_images(3, 2, size, seed=8)
    got = run(path, queries)
    expected = torch_probabilities(model, features, labels, chw(queries), 3)
    assert np.array_equal(got.argmax(1), expected.argmax(1))
    assert np.abs(got - expected).max() < SAME_SIZE_ATOL


def test_int8_keeps_metadata_and_agrees_with_float(exported, tmp_path):
    float_path, model, features, labels, support = exported
    path = export_onnx(model, model.fit(features, labels, len(NAMES)), NAMES, SIZE, 3, tmp_path / "int8.onnx", quantize=True,
                       calibration_images=support)
    meta = metadata(path)
    assert meta["quantization"] == "static" and json.loads(meta["class_names"]) == NAMES
    assert meta["image_size"] == str(SIZE) and meta["fewshot_version"]
    queries, truth = clustered_images(len(NAMES), 25, SIZE, seed=9)
    float_probabilities, int8_probabilities = run(float_path, queries), run(path, queries)
    assert int8_probabilities.shape == float_probabilities.shape and int8_probabilities.dtype == np.float32
    assert (float_probabilities.argmax(1) == truth).mean() >= 0.9  # the classes are separable
    assert (int8_probabilities.argmax(1) == float_probabilities.argmax(1)).mean() >= INT8_AGREEMENT
    assert path.stat().st_size < float_path.stat().st_size
    assert run(path, clustered_images(1, 1, (40, 24))[0]).shape == (1, len(NAMES))  # resize in the INT8 graph
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx"]  # no temporary files left


@pytest.mark.parametrize("vnni", [True, False])
def test_int8_weights_follow_the_cpu_that_exports(exported, tmp_path, monkeypatch, vnni):
    import warnings

    import fewshot.inference.export.onnx
    import fewshot.inference.export.onnx_int8

    float_path, model, features, labels, support = exported
    monkeypatch.setattr(fewshot.inference.export.onnx, "has_int8_dot_product", lambda: vnni)
    monkeypatch.setattr(fewshot.inference.export.onnx_int8, "has_int8_dot_product", lambda: vnni)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = export_onnx(model, model.fit(features, labels, len(NAMES)), NAMES, SIZE, 3, tmp_path / "int8.onnx",
                           quantize=True, calibration_images=support)
    meta = metadata(path)
    assert meta["quantization"] == "static"
    assert meta["int8_weights"] == ("signed (U8S8, for CPUs with VNNI)" if vnni else "unsigned (U8U8)")
    slower = [w for w in caught if "INT8 runs slower than float ONNX on this CPU" in str(w.message)]
    assert len(slower) == (0 if vnni else 1)
    queries, _ = clustered_images(len(NAMES), 25, SIZE, seed=9)
    assert (run(path, queries).argmax(1) == run(float_path, queries).argmax(1)).mean() >= INT8_AGREEMENT


def test_int8_falls_back_to_dynamic_quantization(exported, tmp_path, monkeypatch):
    import onnxruntime.quantization

    def fails(*args, **kwargs):
        raise RuntimeError("calibration failed")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_static", fails)
    _, model, features, labels, support = exported
    with pytest.warns(UserWarning, match="fell back to dynamic quantization \\(static: RuntimeError: calibration "
                                         "failed\\).*slower than float ONNX"):
        path = export_onnx(model, model.fit(features, labels, len(NAMES)), NAMES, SIZE, 3, tmp_path / "int8.onnx",
                           quantize=True, calibration_images=support)
    assert metadata(path)["quantization"] == "dynamic"
    assert "fell back to dynamic quantization" in metadata(path)["quantization_note"], "the file says so too"
    assert run(path, clustered_images(2, 1, SIZE)[0]).shape == (2, len(NAMES))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx"]


def test_non_exportable_head_is_refused(tmp_path):
    model = build_model(ModelConfig(backbone="conv4", head="pt_map", backbone_options={"width": 8}), 3, SIZE)
    assert not model.head.exportable
    fitted = model.fit(torch.rand(2, model.head.embedding_dim), torch.tensor([0, 1]), 2)
    with pytest.raises(CapabilityError, match="head 'pt_map' is transductive.*cannot be exported.*protonet"):
        export_onnx(model, fitted, NAMES[:2], SIZE, 3, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_missing_onnxruntime_says_what_to_install(exported, tmp_path, monkeypatch):
    _, model, features, labels, _ = exported
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ExportError, match=r"pip install 'fewshot\[onnx\]'") as error:
        export_onnx(model, model.fit(features, labels, len(NAMES)), NAMES, SIZE, 3, tmp_path / "m.onnx")
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_path_leaves_no_file(exported, tmp_path):
    _, model, features, labels, _ = exported
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ExportError, match="cannot write"):
        export_onnx(model, model.fit(features, labels, len(NAMES)), NAMES, SIZE, 3, tmp_path / "a_file" / "m.onnx")
    with pytest.raises(ExportError, match="is a folder"):
        export_onnx(model, model.fit(features, labels, len(NAMES)), NAMES, SIZE, 3, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


@pytest.mark.parametrize("failure", ["quantization", "disk full"])
def test_failed_export_keeps_the_old_file_and_no_temporaries(exported, tmp_path, monkeypatch, failure):
    import fewshot.atomic
    import onnxruntime.quantization

    def fails(*args, **kwargs):
        raise RuntimeError("quantizer bug")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if failure == "quantization":
        monkeypatch.setattr(onnxruntime.quantization, "quantize_static", fails)
        monkeypatch.setattr(onnxruntime.quantization, "quantize_dynamic", fails)
    else:
        monkeypatch.setattr(fewshot.atomic.os, "fsync", disk_full)  # after the temporary file is written
    _, model, features, labels, support = exported
    (tmp_path / "m.onnx").write_bytes(b"previous")
    with pytest.raises(ExportError, match="cannot quantize" if failure == "quantization" else "No space left"):
        export_onnx(model, model.fit(features, labels, len(NAMES)), NAMES, SIZE, 3, tmp_path / "m.onnx", quantize=True,
                    calibration_images=support)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert (tmp_path / "m.onnx").read_bytes() == b"previous"


def test_int8_retries_static_quantization_without_the_bias_scale_adjustment(exported, tmp_path, monkeypatch):
    """onnxruntime's int32-bias weight-scale adjustment raised ValueError on the default recipe's ensemble graph,
    which silently fell back to dynamic quantization (8-23x slower): the static path is retried without it."""
    import onnxruntime.quantization

    original, calls = onnxruntime.quantization.quantize_static, []

    def adjustment_fails_once(*args, **kwargs):
        calls.append(kwargs.get("extra_options"))
        if len(calls) == 1:
            raise ValueError("The truth value of an array with more than one element is ambiguous.")
        return original(*args, **kwargs)

    monkeypatch.setattr(onnxruntime.quantization, "quantize_static", adjustment_fails_once)
    _, model, features, labels, support = exported
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback warning: static worked
        path = export_onnx(model, model.fit(features, labels, len(NAMES)), NAMES, SIZE, 3, tmp_path / "int8.onnx",
                           quantize=True, calibration_images=support)
    assert metadata(path)["quantization"] == "static"
    assert calls == [None, {"QDQDisableWeightAdjustForInt32Bias": True}]
