"""The one embedding path for frozen weights: every runtime equals eager within the stated tolerance, ``auto``
converts once it pays, falls back when an extra is missing or a conversion fails, and every caller goes through it."""

from __future__ import annotations

import warnings

import pytest
import torch

from conftest import make_image_folder
from episodes import SplitSpec, open_split
from fewshot.inference import embedding
from fewshot.inference.classifier import FewShotClassifier
from fewshot.config import config_from_dict
from fewshot.inference.embedding import CONVERT_AFTER, TOLERANCE, Embedder, embedder, resolve_runtime, shared_embedder
from fewshot.errors import FewshotError
from fewshot.evaluation.episodic import evaluate
from fewshot.model.network import build_model

onnxruntime = pytest.importorskip("onnxruntime")


def tiny_model(backbone: str = "conv4", head: str = "protonet", size: int = 16, tta: str = "none", **backbone_options):
    options = [f"model.backbone_options.{k}={v}" for k, v in backbone_options.items()]
    config = config_from_dict({}, [f"model.backbone={backbone}", f"model.head={head}", f"model.tta={tta}",
                                   f"data.image_size={size}", "data.channels=3", *options])
    torch.manual_seed(0)
    return build_model(config.model, 3, size).eval()


def images(count: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


CASES = {
    "conv4": lambda: tiny_model(width=8),
    "conv4 + flip": lambda: tiny_model(tta="flip", width=8),
    "resnet12 feature maps (relation)": lambda: tiny_model("resnet12", "relation", 16, channels="[4,4,8,8]"),
    "ensemble with resizing members": lambda: tiny_model("ensemble:conv4+resnet12", size=20),
}


@pytest.mark.parametrize("runtime", ["jit", "onnxruntime"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_runtime_embeds_as_eager_does(case, runtime):
    model = CASES[case]()
    size = 20 if "ensemble" in case else 16
    eager, fast = embedder(model, "eager"), embedder(model, runtime)
    for count in (1, 3, 7):  # batch sizes other than the two images the conversion traces with
        batch = images(count, size, seed=count)
        expected, got = eager(batch), fast(batch)
        assert fast.runtime == runtime and got.dtype == torch.float32 and got.shape == expected.shape
        assert got.shape[0] == count and expected.abs().max() > 0.01
        torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=0)


def test_auto_converts_once_the_conversion_pays(monkeypatch):
    model = tiny_model(width=8)
    converted = []
    original = embedding.CONVERTERS["onnxruntime"]
    monkeypatch.setitem(embedding.CONVERTERS, "onnxruntime",
                        lambda m, example: (converted.append(example.shape), original(m, example))[1])
    auto = embedder(model)
    assert auto.target == "onnxruntime" and auto.runtime == "eager"
    first = auto(images(1))  # one image in a fresh process: no conversion it cannot repay
    assert not converted and auto.runtime == "eager"
    batch = images(CONVERT_AFTER)
    torch.testing.assert_close(auto(batch), embedder(model, "eager")(batch), atol=TOLERANCE, rtol=0)
    assert auto.runtime in ("onnxruntime", "jit") and len(converted) == 1  # the faster of the two on this chunk
    auto(images(5))
    assert len(converted) == 1  # converted once per image shape
    torch.testing.assert_close(auto(images(1)), first, atol=TOLERANCE, rtol=0)


def test_auto_falls_back_when_the_extra_is_missing_or_a_conversion_fails(monkeypatch):
    assert resolve_runtime("auto", "cpu") == "onnxruntime"
    assert resolve_runtime("auto", "cpu", "bf16") == "eager" and resolve_runtime("jit", "cuda") == "eager"
    monkeypatch.setattr(embedding, "onnxruntime_installed", lambda: False)
    assert resolve_runtime("auto", "cpu") == "jit"
    monkeypatch.undo()

    def refuse(model, example):
        raise RuntimeError("this backbone has an operator ONNX lacks")

    monkeypatch.setitem(embedding.CONVERTERS, "onnxruntime", refuse)
    model = tiny_model(width=8)
    fast = embedder(model, "onnxruntime")
    batch = images(4)
    with pytest.warns(RuntimeWarning, match="embedding with jit instead of onnxruntime.*operator ONNX lacks"):
        got = fast(batch)
    assert fast.runtime == "jit"
    torch.testing.assert_close(got, embedder(model, "eager")(batch), atol=TOLERANCE, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        fast(batch)


def test_float_input_training_mode_and_bad_names_run_eagerly_or_fail_clearly():
    model = tiny_model(width=8)
    fast = embedder(model, "jit")
    normalized = model.prepare(images(3))  # float, already normalized
    torch.testing.assert_close(fast(normalized), embedder(model, "eager")(normalized))
    assert fast.runtime == "eager"
    model.train()
    fast(images(3))
    assert fast.runtime == "eager"  # a model being trained is never converted
    with pytest.raises(FewshotError, match="runtime must be one of auto, eager, jit, onnxruntime, got 'tensorrt'"):
        Embedder(model, "tensorrt")


def test_classifiers_around_one_model_share_one_conversion_and_predict_alike(tmp_path):
    root = tmp_path / "support"
    make_image_folder(root, classes=3, per_class=12, size=16)
    eager = FewShotClassifier(backbone="conv4", head="protonet", image_size=16, runtime="eager").fit(root)
    fast = FewShotClassifier.from_model(eager.model_, eager.config_, runtime="onnxruntime").fit(root)
    other = FewShotClassifier.from_model(eager.model_, eager.config_, runtime="onnxruntime")
    assert shared_embedder(fast.model_, "onnxruntime") is shared_embedder(other.model_, "onnxruntime")
    assert shared_embedder(fast.model_, "onnxruntime").runtime == "onnxruntime"
    queries = sorted(root.rglob("*.png"))[:5]
    torch.testing.assert_close(torch.as_tensor(fast.predict_proba(queries)),
                               torch.as_tensor(eager.predict_proba(queries)), atol=1e-5, rtol=0)
    with pytest.raises(FewshotError, match="runtime must be one of"):
        FewShotClassifier(backbone="conv4", head="protonet", image_size=16, runtime="fastest")


def test_evaluation_gives_the_same_accuracy_with_every_runtime(tmp_path):
    root = tmp_path / "data"
    make_image_folder(root, classes=6, per_class=20, size=16, seed=3)
    split = open_split(SplitSpec((str(root),)), image_size=16, channels=3, cache_dir=root / ".cache", progress=False)
    model = tiny_model(width=8)
    results = {runtime: evaluate(model, split, 3, 2, 4, 20, progress=False, runtime=runtime).accuracies
               for runtime in ("eager", "jit", "onnxruntime", "auto")}
    for runtime in ("jit", "onnxruntime", "auto"):
        assert (results[runtime] == results["eager"]).all(), runtime


def test_the_cli_and_the_config_choose_the_runtime(tmp_path, capsys):
    from fewshot.cli import main

    root = tmp_path / "support"
    make_image_folder(root, classes=2, per_class=4, size=16)
    query = sorted(root.rglob("*.png"))[0]
    common = ["--backbone", "conv4", "--head", "protonet", "--image-size", "16", "--support", str(root), "--query", str(query)]
    assert main(["predict", "--runtime", "jit", *common]) == 0
    jit_line = capsys.readouterr().out
    assert main(["predict", "--runtime", "eager", *common]) == 0
    assert capsys.readouterr().out == jit_line
    with pytest.raises(SystemExit):
        main(["predict", "--runtime", "tensorrt", *common])
    assert "invalid choice: 'tensorrt'" in capsys.readouterr().err
    with pytest.raises(FewshotError, match="eval.runtime must be one of auto, eager, jit, onnxruntime, got 'gpu'"):
        config_from_dict({}, ["eval.runtime=gpu"])


@pytest.mark.parametrize("runtime", ["eager", "onnxruntime"])
def test_large_batches_are_embedded_in_cache_sized_chunks(monkeypatch, runtime):
    model = tiny_model(width=8)
    batch = images(7)
    whole = embedder(model, runtime)(batch)
    monkeypatch.setattr(embedding, "CHUNK_PIXELS", 16 * 16 * 2)  # two 16-px images per call
    calls = []  # the images in each call of the network that runs: eager's model.embed, or the onnxruntime session
    if runtime == "eager":
        original = model.embed
        monkeypatch.setattr(model, "embed", lambda x: (calls.append(len(x)), original(x))[1])
    else:
        convert = embedding.CONVERTERS[runtime]

        def counted(m, example):
            run = convert(m, example)
            return lambda x: (calls.append(len(x)), run(x))[1]

        monkeypatch.setitem(embedding.CONVERTERS, runtime, counted)
    chunked = embedder(model, runtime)
    torch.testing.assert_close(chunked(batch), whole, atol=TOLERANCE, rtol=0)
    assert calls == [2, 2, 2, 1] and chunked.runtime == runtime
    assert embedding.chunk_size(images(1, 16)) == 2 and embedding.chunk_size(images(1, 4)) == 32


@pytest.mark.parametrize("faster", ["jit", "onnxruntime"])
def test_auto_keeps_the_faster_of_onnxruntime_and_jit_on_this_machine(monkeypatch, faster):
    model = tiny_model(width=8)
    timings = {}
    original = embedding.seconds

    def timed(run, batch):
        measured = original(run, batch)
        kind = "jit" if isinstance(getattr(run, "__closure__", None), tuple) and any(
            isinstance(c.cell_contents, torch.jit.ScriptModule) for c in run.__closure__) else "onnxruntime"
        timings[kind] = measured
        return 0.0 if kind == faster else 1.0

    monkeypatch.setattr(embedding, "seconds", timed)
    monkeypatch.setattr(embedding, "RACE_AFTER", 2 * CONVERT_AFTER)
    auto = embedder(model)
    batch = images(CONVERT_AFTER)
    auto(batch)  # a batch of its own: onnxruntime alone (a second conversion would not be repaid)
    assert auto.runtime == "onnxruntime" and set(timings) == {"onnxruntime"}
    timings.clear()
    torch.testing.assert_close(auto(batch), embedder(model, "eager")(batch), atol=TOLERANCE, rtol=0)
    assert auto.runtime == faster and set(timings) == {"jit", "onnxruntime"}  # RACE_AFTER reached: jit races
    timings.clear()
    auto(images(5))  # a new chunk shape is timed again; a known one is not
    auto(images(5))
    assert set(timings) == {"jit", "onnxruntime"} and auto.runtime == faster and len(auto.picked) == 2
    explicit = embedder(model, "onnxruntime")
    explicit(batch)
    assert explicit.runtime == "onnxruntime"  # a runtime named explicitly is not raced


@pytest.mark.parametrize("runtime", ["jit", "onnxruntime"])
def test_a_converted_embedder_follows_new_weights(runtime):
    model = tiny_model(width=8)
    shared = shared_embedder(model, runtime)
    batch = images(4)
    before = shared(batch)
    assert shared.runtime == runtime
    torch.manual_seed(1)
    new = {name: torch.randn_like(p) for name, p in model.named_parameters()}  # buffers (BN statistics) kept
    model.load_state_dict(model.state_dict() | new)  # copies into the same tensors, in place
    after = shared(batch)
    expected = Embedder(model, "eager")(batch)
    assert (after - before).abs().max() > 0.01, "the new weights change the embeddings"
    torch.testing.assert_close(after, expected, atol=TOLERANCE, rtol=1e-5)  # random weights: outputs in the hundreds
    assert shared.runtime == runtime, "converted again, not left eager"


def test_a_classifier_holding_a_batch_converts_before_its_first_chunk(tmp_path, monkeypatch):
    root = tmp_path / "support"
    make_image_folder(root, classes=2, per_class=2, size=16)
    clf = FewShotClassifier(backbone="conv4", head="protonet", image_size=16, backbone_options={"width": 8},
                            batch_size=8, calibration="table").fit(root)  # 4 images: eager, no conversion yet
    shared = shared_embedder(clf.model_, "auto")
    seen = []
    original = Embedder.__call__
    monkeypatch.setattr(Embedder, "__call__", lambda self, batch: (original(self, batch), seen.append(self.runtime))[0])
    one = images(1)
    clf.predict_proba(one.permute(0, 2, 3, 1).numpy()[0])
    assert seen == ["eager"], "one image alone is not worth a conversion"
    batch = [image.permute(1, 2, 0).numpy() for image in images(CONVERT_AFTER)]
    clf.predict_proba(batch)
    assert seen[1:] and all(runtime != "eager" for runtime in seen[1:]), seen  # every chunk, the first included
    assert shared.runtime != "eager"


def test_auto_feeds_one_image_at_a_time_where_that_is_faster(monkeypatch):
    model = tiny_model(width=8)
    original = embedding.seconds
    sizes = []

    def timed(run, batch):  # one image at a time is made to look 10x cheaper per image than a chunk
        sizes.append(len(batch))
        original(run, batch)
        return 0.01 if len(batch) == 1 else 1.0

    monkeypatch.setattr(embedding, "seconds", timed)
    monkeypatch.setattr(embedding, "CHUNK_PIXELS", 16 * 16 * 4)  # chunks of four 16-px images
    auto = embedder(model)
    batch = images(CONVERT_AFTER)
    torch.testing.assert_close(auto(batch), embedder(model, "eager")(batch), atol=TOLERANCE, rtol=0)
    assert 1 in sizes and 4 in sizes, "both ways were timed"
    assert all(one_by_one for _, one_by_one in auto.picked.values())
    calls = []
    run = next(iter(auto.converted.values()))[auto.runtime]
    auto.converted[next(iter(auto.converted))][auto.runtime] = lambda x: (calls.append(len(x)), run(x))[1]
    auto(images(8))
    assert calls == [1] * 8


def test_lite_embedding_graph_has_no_shape_arithmetic_and_same_padding_is_exact():
    """TensorFlow "same" padding is fixed when the graph is made (the image size is): no Shape/Gather per
    convolution, and an even padding is the convolution's own (no Pad step); onnxruntime ran Lite0 at 224 px 2.5x
    faster per image so (benchmarks/RESULTS.md, #36 item 1)."""
    pytest.importorskip("onnxruntime")
    import collections

    import onnx
    import torch.nn.functional as F

    from fewshot.backbones.efficientnet_lite import SameConv2d
    from fewshot.inference.embedding import EmbeddingNetwork
    from fewshot.inference.export.onnx_graph import traced_graph

    torch.manual_seed(0)
    for stride, kernel, size in ((1, 3, 9), (2, 3, 8), (2, 5, 9), (2, 5, 8)):
        conv = SameConv2d(2, 3, kernel, stride, bias=False)
        x = torch.randn(1, 2, size, size)
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        padded = F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
        torch.testing.assert_close(conv(x), F.conv2d(padded, conv.weight, None, stride))
    model = tiny_model("efficientnet_lite0", size=64)
    example = images(2, 64)
    graph = onnx.load_from_string(traced_graph(EmbeddingNetwork(model), example, ("images", "features"),
                                               {"images": {0: "batch"}, "features": {0: "batch"}}))
    ops = collections.Counter(node.op_type for node in graph.graph.node)
    assert ops["Shape"] == 0 and ops["Gather"] == 0, ops
    assert ops["Pad"] == 5, ops  # the five stride-2 convolutions pad unevenly (one more pixel bottom/right)
    session = embedder(model, "onnxruntime")
    torch.testing.assert_close(session(example), embedder(model, "eager")(example), atol=TOLERANCE, rtol=0)


def test_a_converted_graph_is_kept_on_disk_for_the_next_process(monkeypatch, isolated_cache):
    pytest.importorskip("onnxruntime")
    import fewshot.inference.export.onnx_graph as onnx_graph
    from fewshot.inference import graph_cache

    made = []
    original = onnx_graph.traced_graph
    monkeypatch.setattr(onnx_graph, "traced_graph", lambda *a, **k: (made.append(1), original(*a, **k))[1])
    batch = images(4)
    first = embedder(tiny_model(width=8), "onnxruntime")(batch)
    kept = list((isolated_cache / "graphs").glob("*.onnx"))
    assert len(made) == 1 and len(kept) == 1
    again = embedder(tiny_model(width=8), "onnxruntime")  # same weights, new model object: as a new process
    torch.testing.assert_close(again(batch), first)
    assert len(made) == 1  # read from disk, not converted
    other = tiny_model(width=8)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)  # other weights: another graph
    embedder(other, "onnxruntime")(batch)
    assert len(made) == 2 and len(list((isolated_cache / "graphs").glob("*.onnx"))) == 2
    graph_cache.keep_newest(isolated_cache / "graphs", 1)
    assert len(list((isolated_cache / "graphs").glob("*.onnx"))) == 1
    monkeypatch.setenv("FEWSHOT_GRAPH_CACHE", "0")
    embedder(tiny_model(width=4), "onnxruntime")(batch)
    assert len(made) == 3 and len(list((isolated_cache / "graphs").glob("*.onnx"))) == 1
    monkeypatch.setenv("FEWSHOT_GRAPH_CACHE", "1")
    monkeypatch.setenv("FEWSHOT_CACHE_DIR", "/proc/no-cache-here")  # cannot be written: made in memory, no error
    torch.testing.assert_close(embedder(tiny_model(width=4), "onnxruntime")(batch),
                               embedder(tiny_model(width=4), "eager")(batch), atol=TOLERANCE, rtol=0)
