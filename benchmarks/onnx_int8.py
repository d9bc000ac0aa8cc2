"""ONNX float32 and INT8 exports against the PyTorch model: accuracy, agreement, latency and file size.

EfficientNet-Lite0 with its ImageNet weights at 224 px, ``power_cl2n`` transform, ``protonet`` head. On the
tinyimagenet-fs test split, for each of ``--classes`` classes (sorted, default 20) the first ``--shots``
images (sorted file names, default 5) are the support set and the next ``--queries`` (default 30) are held
out. The support set is exported with :func:`fewshot.inference.export.onnx.export_onnx` as float32 ONNX and as INT8
ONNX (static quantization calibrated on the support images). Then, on the held-out queries:

- PyTorch: the queries prepared as ``fewshot predict`` does (PIL decode, bilinear resize to 224, uint8), then
  ``model.embed`` / ``model.classify``;
- ONNX float32 and INT8 (onnxruntime, CPU, intra-op threads = ``os.cpu_count()``): the decoded queries at
  their original size (64x64 RGB uint8 ``(B, H, W, 3)``), so the resize to 224 in the graph is exercised.

Reported per runtime: accuracy, argmax agreement with PyTorch and with ONNX float32, mean latency per image
at batch 1 and batch 32 (after warm-up; PyTorch's excludes its PIL resize, ONNX's includes the in-graph
resize), file size. Prints a markdown table and appends one JSON record per runtime to
``benchmarks/results/onnx_int8.jsonl``. Run::

    pip install -e '.[onnx,pretrained]'
    python benchmarks/onnx_int8.py --data ../shared/data/tinyimagenet-fs/test
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results" / "onnx_int8.jsonl"
IMAGE_EXTENSIONS = {".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp"}


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def decoded(path: Path) -> np.ndarray:
    """An image as an application has it: RGB uint8 ``(H, W, 3)`` at its original size."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def batches(images: list[np.ndarray], size: int) -> list[np.ndarray]:
    """``(B, H, W, 3)`` batches of up to ``size`` consecutive images of one shape."""
    out, current = [], []
    for image in images:
        if current and (len(current) == size or image.shape != current[0].shape):
            out.append(np.stack(current))
            current = []
        current.append(image)
    if current:
        out.append(np.stack(current))
    return out


def latency_ms(run: Callable[[], object], images_per_call: int, warmup: int, min_calls: int,
               min_seconds: float) -> float:
    """Mean milliseconds per image of ``run()`` after ``warmup`` calls, over at least ``min_calls`` calls and
    ``min_seconds`` seconds."""
    for _ in range(warmup):
        run()
    calls, started = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - started < min_seconds:
        run()
        calls += 1
    return 1000 * (time.perf_counter() - started) / (calls * images_per_call)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/tinyimagenet-fs/test", help="folder of class folders")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--queries", type=int, default=30, help="held-out images per class")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--transform", default="power_cl2n")
    parser.add_argument("--head", default="protonet")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads (torch and onnxruntime)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--min-calls", type=int, default=10)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--out-dir", help="where to keep the .onnx files (default: a temporary folder)")
    parser.add_argument("--results", default=str(RESULTS), help="JSON lines file to append to")
    parser.add_argument("--no-record", action="store_true", help="print the table only")
    args = parser.parse_args()

    import onnxruntime
    import torch

    from episodes import decode_image
    from fewshot.config import ModelConfig
    from fewshot.model.network import build_model
    from fewshot.inference.export.onnx import export_onnx
    from records import append_record

    torch.set_num_threads(args.threads)
    folders = sorted(p for p in Path(args.data).iterdir() if p.is_dir())[: args.classes]
    names = [folder.name for folder in folders]
    support_files, query_files, query_labels = [], [], []
    for label, folder in enumerate(folders):
        files = image_files(folder)
        if len(files) < args.shots + args.queries:
            sys.exit(f"{folder} has {len(files)} images, fewer than --shots + --queries = {args.shots + args.queries}")
        support_files += files[: args.shots]
        query_files += files[args.shots: args.shots + args.queries]
        query_labels += [label] * args.queries
    truth = np.array(query_labels)
    print(f"{len(names)} classes x {args.shots} support + {args.queries} held-out images from {args.data}", flush=True)

    model = build_model(ModelConfig(backbone=args.backbone, weights=args.weights, head=args.head,
                                    transform=args.transform), 3, args.size).eval()
    support = torch.from_numpy(np.stack([decode_image(f, args.size, 3).transpose(2, 0, 1) for f in support_files]))
    labels = torch.tensor([i for i in range(len(names)) for _ in range(args.shots)])
    with torch.inference_mode():
        features = model.embed(support).float()

    out_dir = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="onnx_int8."))
    paths, export_seconds = {}, {}
    for runtime, quantize in (("onnx-float32", False), ("onnx-int8", True)):
        started = time.perf_counter()
        paths[runtime] = export_onnx(model, model.fit(features, labels, len(names)), names, args.size, 3,
                                     out_dir / f"{args.backbone}-{runtime}.onnx", quantize=quantize,
                                     calibration_images=support)
        export_seconds[runtime] = time.perf_counter() - started
        print(f"exported {paths[runtime]} in {export_seconds[runtime]:.0f} s", flush=True)

    originals = [decoded(f) for f in query_files]  # 64x64 for tinyimagenet-fs: resized to 224 in the graph
    prepared = torch.from_numpy(np.stack([decode_image(f, args.size, 3).transpose(2, 0, 1) for f in query_files]))

    def torch_run(images: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            logits = model.classify(features, labels, model.embed(images), len(names))
            return model.head.probabilities(logits).numpy()

    probabilities = {"pytorch": np.concatenate([torch_run(prepared[i:i + 32]) for i in range(0, len(prepared), 32)])}
    runners: dict[str, Callable] = {}
    quantization = {"pytorch": "none"}
    for runtime, path in paths.items():
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        quantization[runtime] = session.get_modelmeta().custom_metadata_map.get("quantization", "?")
        runners[runtime] = lambda images, session=session: session.run(None, {"images": images})[0]
        probabilities[runtime] = np.concatenate([runners[runtime](batch) for batch in batches(originals, 32)])

    one_torch, many_torch = prepared[:1], prepared[:32]
    one_image, many_images = originals[0][None], batches(originals, 32)[0]
    latency = {"pytorch": [latency_ms(lambda: torch_run(one_torch), 1, args.warmup, args.min_calls, args.min_seconds),
                           latency_ms(lambda: torch_run(many_torch), len(many_torch), args.warmup, args.min_calls,
                                      args.min_seconds)]}
    for runtime, run in runners.items():
        latency[runtime] = [latency_ms(lambda run=run: run(one_image), 1, args.warmup, args.min_calls,
                                       args.min_seconds),
                            latency_ms(lambda run=run: run(many_images), len(many_images), args.warmup,
                                       args.min_calls, args.min_seconds)]
    sizes = {"pytorch": None, **{runtime: path.stat().st_size / 2**20 for runtime, path in paths.items()}}

    predicted = {runtime: p.argmax(1) for runtime, p in probabilities.items()}
    date = time.strftime("%Y-%m-%d")
    machine = f"{os.cpu_count()} cores {platform.processor() or platform.machine()}, CPU, {args.threads} threads"
    command = " ".join(["python benchmarks/onnx_int8.py", *sys.argv[1:]])
    print(f"\n# {args.backbone} ({args.weights}) {args.size} px, {args.transform} + {args.head}; {len(names)}-way "
          f"{args.shots}-shot, {len(truth)} held-out queries at {originals[0].shape[1]}x{originals[0].shape[0]} px; "
          f"{date}, {machine}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}\n")
    print("| runtime | quantization | accuracy % | agreement with PyTorch % | agreement with ONNX float32 % | "
          "ms/image batch 1 | ms/image batch 32 | file MB |")
    print("|---|---|---|---|---|---|---|---|")
    for runtime in ("pytorch", "onnx-float32", "onnx-int8"):
        record = {
            "runtime": runtime, "quantization": quantization[runtime],
            "accuracy": 100 * float((predicted[runtime] == truth).mean()),
            "agreement_pytorch": 100 * float((predicted[runtime] == predicted["pytorch"]).mean()),
            "agreement_float32": 100 * float((predicted[runtime] == predicted["onnx-float32"]).mean()),
            "max_abs_diff_float32": float(np.abs(probabilities[runtime] - probabilities["onnx-float32"]).max()),
            "ms_per_image_batch1": latency[runtime][0], "ms_per_image_batch32": latency[runtime][1],
            "file_mb": sizes[runtime], "export_seconds": export_seconds.get(runtime),
            "backbone": args.backbone, "weights": args.weights, "image_size": args.size, "transform": args.transform,
            "head": args.head, "dataset": f"{args.data}, first {args.classes} classes", "classes": len(names),
            "shots": args.shots, "queries_per_class": args.queries,
            "query_size": f"{originals[0].shape[1]}x{originals[0].shape[0]}",
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "command": command, "date": date, "machine": machine,
        }
        size = "" if record["file_mb"] is None else f"{record['file_mb']:.1f}"
        print(f"| {runtime} | {record['quantization']} | {record['accuracy']:.1f} | "
              f"{record['agreement_pytorch']:.1f} | {record['agreement_float32']:.1f} | "
              f"{record['ms_per_image_batch1']:.1f} | {record['ms_per_image_batch32']:.1f} | {size} |")
        if not args.no_record:
            Path(args.results).parent.mkdir(parents=True, exist_ok=True)
            append_record(Path(args.results), record)
    if not args.no_record:
        print(f"\nappended 3 records to {args.results}")
    if not args.out_dir:
        for path in paths.values():
            path.unlink()
        out_dir.rmdir()


if __name__ == "__main__":
    main()
