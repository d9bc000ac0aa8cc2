"""Does an export keep the word of ``predict``? A recipe fitted on a support set, exported as float ONNX and INT8 ONNX;
the same query images through ``FewShotClassifier.predict_proba`` and through each file in onnxruntime (decoded
photos at their own size, one per call, as an application feeds them): agreement of the top answers with
``predict``, accuracy, milliseconds per image, and how the file was quantized (its metadata). Run::

    python benchmarks/export_agreement.py --recipe default --data ../shared/data/tinyimagenet-fs/test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--data", default="../shared/data/tinyimagenet-fs/test")
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--queries", type=int, default=32, help="per class")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import onnx
    import onnxruntime
    from PIL import Image

    from fewshot import FewShotClassifier

    folders = sorted(p for p in Path(args.data).iterdir() if p.is_dir())[:args.classes]
    support = {p.name: sorted(p.iterdir())[:args.shots] for p in folders}
    queries = [f for p in folders for f in sorted(p.iterdir())[args.shots:args.shots + args.queries]]
    truth = np.array([f.parent.name for f in queries])
    clf = FewShotClassifier(args.recipe).fit(support)
    reference = np.array(clf.classes_)[clf.predict_proba(queries).argmax(1)]
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    flags = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile") if f" {f}" in cpu]
    print(f"{args.recipe}, {len(queries)} queries, CPU flags {' '.join(flags)}, {time.strftime('%Y-%m-%d')}")
    print("| path | agreement with predict | accuracy | ms / image | quantization |")
    print("|---|---:|---:|---:|---|")
    print(f"| predict_proba | 100.0 % | {100 * (reference == truth).mean():.1f} % | - | - |")
    pixels = [np.asarray(Image.open(f).convert("RGB"))[None] for f in queries]
    with tempfile.TemporaryDirectory() as work:
        for fmt in ("onnx", "onnx-int8"):
            path = clf.export(Path(work) / f"{fmt}.onnx", fmt)
            meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            session.run(None, {name: pixels[0]})
            start = time.perf_counter()
            answers = np.array([json.loads(meta["class_names"])[int(session.run(None, {name: p})[0].argmax())]
                                for p in pixels])
            ms = 1000 * (time.perf_counter() - start) / len(pixels)
            print(f"| {fmt} | {100 * (answers == reference).mean():.1f} % | {100 * (answers == truth).mean():.1f} % | "
                  f"{ms:.1f} | {meta.get('quantization', 'none')} {meta.get('int8_weights', '')} |", flush=True)


if __name__ == "__main__":
    main()
