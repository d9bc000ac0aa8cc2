"""Embedding speed with frozen weights, every runtime side by side in one run: images per second of
``FewShotModel.embed`` (normalization + backbone, uint8 input) for EfficientNet-Lite0, -Lite2 and ResNet-50 at 84 and
224 px and the default recipe's ensemble (Lite0 at 224 + Lite2 at 260, decoded at 260), batch 1 and 32.

Columns (outputs compared with the first, float32 NCHW eager):
- ``eager NCHW``: PyTorch as a plain script would run it (contiguous weights and input)
- ``eager``: ours before this benchmark: channels_last weights and input
- ``jit freeze``: ``torch.jit.freeze(torch.jit.trace(...))`` (channels_last), our ``jit`` runtime
- ``jit +ofi``: the same plus ``torch.jit.optimize_for_inference``
- ``compile``: ``torch.compile`` (inductor, CPU, ``freezing=True``), compile time reported apart
- ``bf16``: eager under bfloat16 autocast (only where the CPU has avx512_bf16 or amx; not float32: its
  difference from float32 is reported, not within 1e-4)
- ``ort default``: onnxruntime on our exported graph with default session options
- ``ort no arena``: our options without the CPU memory arena
- ``ort ours``: our options (intra-op threads = torch threads, inter-op 1, all graph optimisations), as the
  ``onnxruntime`` runtime builds them
- ``shipped``: :func:`fewshot.inference.embedding.embedder` with ``runtime=auto`` after its conversion: what every command runs

Timing: one warm-up call, then the best of ``--repeats`` timed runs of at least ``--min-seconds`` each; ms per image.
Run alone on an idle machine::

    python benchmarks/embed_speed.py                      # all rows, about 20 minutes on 2 cores
    python benchmarks/embed_speed.py --rows lite0-224 --skip compile
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROWS = {  # name: (backbone, weights, image size)
    "lite0-84": ("efficientnet_lite0", "imagenet", 84), "lite0-224": ("efficientnet_lite0", "imagenet", 224),
    "lite2-84": ("efficientnet_lite2", "imagenet", 84), "lite2-224": ("efficientnet_lite2", "imagenet", 224),
    "resnet50-84": ("resnet50", "none", 84), "resnet50-224": ("resnet50", "none", 224),
    "default-ensemble-260": ("ensemble:efficientnet_lite0+efficientnet_lite2", "imagenet", 260),
}
COLUMNS = ("eager NCHW", "eager", "jit freeze", "jit +ofi", "compile", "bf16", "ort default", "ort no arena",
           "ort ours", "shipped")


def build(backbone: str, weights: str, size: int):
    from fewshot.config import config_from_dict
    from fewshot.model.network import build_model

    config = config_from_dict({}, [f"model.backbone={backbone}", f"model.weights={weights}", "model.head=protonet",
                                   f"data.image_size={size}", "data.channels=3"])
    torch.manual_seed(0)
    return build_model(config.model, 3, size).eval()


class PlainNetwork(torch.nn.Module):
    """Normalization + backbone on contiguous (NCHW) tensors: what a plain PyTorch script runs."""

    def __init__(self, model):
        super().__init__()
        self.backbone = copy.deepcopy(model.backbone).to(memory_format=torch.contiguous_format)
        self.mean, self.std = model.mean, model.std

    def forward(self, images):
        from episodes import normalize

        return self.backbone(normalize(images, self.mean, self.std).contiguous()).float()


def timed(run, batch, repeats: int, min_seconds: float) -> float:
    """Best ms per image over ``repeats`` runs of at least ``min_seconds``."""
    run(batch)
    best = float("inf")
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            run(batch)
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        best = min(best, elapsed / calls / len(batch) * 1000)
    return best


def ort_session(model, example, options_kind: str):
    import onnxruntime

    from fewshot.inference.embedding import EmbeddingNetwork
    from fewshot.inference.export.onnx_graph import quiet, traced_graph

    with quiet():
        data = traced_graph(EmbeddingNetwork(model).eval(), example, ("images", "features"),
                            {"images": {0: "batch"}, "features": {0: "batch"}})
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if options_kind != "default":
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_cpu_mem_arena = options_kind != "no arena"
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(None, {"images": images.numpy()})[0])


def runners(model, example, skip: set[str], has_bf16: bool):
    """(column, callable or None, seconds to build) for each column."""
    from fewshot.inference.embedding import CONVERT_AFTER, EmbeddingNetwork, embedder
    from fewshot.inference.export.onnx_graph import quiet

    net = EmbeddingNetwork(model).eval()
    builders = {
        "eager NCHW": lambda: PlainNetwork(model).eval(),
        "eager": lambda: net,
        "jit freeze": lambda: torch.jit.freeze(torch.jit.trace(net, example, check_trace=False)),
        "jit +ofi": lambda: torch.jit.optimize_for_inference(torch.jit.trace(net, example, check_trace=False)),
        "compile": lambda: compiled(net, example),
        "bf16": lambda: (lambda images: bf16(net, images)) if has_bf16 else None,
        "ort default": lambda: ort_session(model, example, "default"),
        "ort no arena": lambda: ort_session(model, example, "no arena"),
        "ort ours": lambda: ort_session(model, example, "ours"),
        "shipped": lambda: shipped(embedder(model, "auto"), example, CONVERT_AFTER),
    }
    for column in COLUMNS:
        if column in skip:
            yield column, None, 0.0
            continue
        start = time.perf_counter()
        with quiet(), torch.no_grad():
            run = builders[column]()
        yield column, run, time.perf_counter() - start


def compiled(net, example):
    import torch._inductor.config as inductor

    torch._dynamo.reset()
    inductor.freezing = True
    run = torch.compile(net)
    run(example)  # compile now, so that the build time holds it
    return run


def bf16(net, images):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return net(images).float()


def shipped(embed, example, convert_after: int):
    embed(example.repeat(1 + convert_after // len(example), 1, 1, 1))  # past the point where auto converts
    assert embed.runtime != "eager", embed.runtime
    return embed


def measure_row(name: str, args, has_bf16: bool) -> dict:
    backbone, weights, size = ROWS[name]
    model = build(backbone, weights, size)
    generator = torch.Generator().manual_seed(0)
    batches = {b: torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=generator)
               for b in args.batches}
    example = batches[max(args.batches)][:2]
    row = {"row": name, "backbone": backbone, "size": size, "build_s": {}, "ms": {}, "max_diff": {}}
    with torch.inference_mode():
        reference = {b: PlainNetwork(model).eval()(x) for b, x in batches.items()}
    for column, run, built in runners(model, example, set(args.skip), has_bf16):
        if run is None:
            continue
        row["build_s"][column] = round(built, 2)
        for b, x in batches.items():
            with torch.inference_mode():
                out = run(x)
                diff = float((out.float() - reference[b]).abs().max())
                ms = timed(run, x, args.repeats, args.min_seconds)
            row["ms"].setdefault(column, {})[str(b)] = round(ms, 3)
            row["max_diff"][column] = max(row["max_diff"].get(column, 0.0), diff)
        print(f"  {name} {column}: " + ", ".join(f"batch {b} {row['ms'][column][str(b)]:.2f} ms/img"
                                                 for b in args.batches) + f" (built in {built:.1f} s)", flush=True)
    return row


def cpu_description() -> dict:
    from fewshot.runtime import cpu_flags

    info = {"machine": platform.machine(), "processor": platform.processor()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        info["model"] = next(line.split(":", 1)[1].strip() for line in text.splitlines()
                             if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info["flags"] = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "f16c")))
    return info


def table(rows: list[dict], batches: list[int]) -> str:
    lines = ["| row | batch | " + " | ".join(COLUMNS) + " | shipped vs best ort |",
             "|" + "---|" * (len(COLUMNS) + 3)]
    for row in rows:
        for b in batches:
            cells = [f"{row['ms'][c][str(b)]:.2f}" if c in row["ms"] else "-" for c in COLUMNS]
            ort = [row["ms"][c][str(b)] for c in ("ort default", "ort no arena", "ort ours") if c in row["ms"]]
            ratio = f"{min(ort) / row['ms']['shipped'][str(b)]:.2f}x" if ort and "shipped" in row["ms"] else "-"
            lines.append(f"| {row['row']} | {b} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--skip", nargs="*", default=[], choices=list(COLUMNS), help="columns to leave out")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", default="benchmarks/results/embed_speed.jsonl")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    import onnxruntime

    cpu = cpu_description()
    has_bf16 = any(flag in cpu.get("flags", []) for flag in ("avx512_bf16", "amx_bf16"))
    header = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "python": sys.version.split()[0],
              "numpy": np.__version__}
    print(json.dumps(header), flush=True)
    rows = [measure_row(name, args, has_bf16) for name in args.rows]
    print(table(rows, args.batches))
    print("max |difference| from eager NCHW per column: " + "; ".join(
        f"{row['row']}: " + ", ".join(f"{c} {d:.1e}" for c, d in row["max_diff"].items()) for row in rows))
    with open(args.json, "a") as handle:
        handle.write(json.dumps({**header, "command": " ".join(sys.argv), "rows": rows}) + "\n")


if __name__ == "__main__":
    main()
