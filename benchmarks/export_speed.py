"""Export cost of a recipe: seconds and peak memory of ``fewshot export`` against embedding its support set, and the
exported files' speed. Each measurement in its own process (so its peak RSS is its own):

- ``embed``: ``FewShotClassifier(recipe)`` (imports, weights: ``load_s``), then ``.fit(support)`` (the support set
  embedded: ``embed_s``)
- ``export FORMAT``: the same, then ``classifier.export(path, format)``: ``export_s``
- the exported file classifying 32 support images in batches of 1 and 32 (ONNX by onnxruntime with default session
  options, TorchScript by ``torch.jit.load``), ms per image (the files of one run, on the same images)

Goal (#25): export seconds <= 2 x the support set's embedding + 15 s, peak RSS < 1.5 GB. Run::

    python benchmarks/export_speed.py --support ../shared/data/tinyimagenet-fs/test --classes 5 --shots 5
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = """
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
start = time.perf_counter()
from fewshot import FewShotClassifier
recipe, support, fmt, out = sys.argv[1:5]
classifier = FewShotClassifier(recipe)
loaded = time.perf_counter()
classifier.fit(support)
fitted = time.perf_counter()
if fmt != "none":
    classifier.export(out, format=fmt)
done = time.perf_counter()
print(json.dumps({"load_s": loaded - start, "embed_s": fitted - loaded, "export_s": done - fitted,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def support_subset(source: Path, classes: int, shots: int, target: Path) -> list[Path]:
    files = []
    for folder in sorted(p for p in source.iterdir() if p.is_dir())[:classes]:
        (target / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:shots]:
            shutil.copy(image, target / folder.name / image.name)
            files.append(target / folder.name / image.name)
    return files


def file_speed(path: Path, fmt: str, files: list[Path], size: int) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    decoded = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    if fmt == "torchscript":
        module = torch.jit.load(str(path))
        pixels = torch.stack([torch.from_numpy(np.asarray(Image.fromarray(d).resize((size, size), Image.BILINEAR)))
                              .permute(2, 0, 1) for d in decoded])
        run = lambda batch: module(batch)  # noqa: E731
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        pixels = np.stack(decoded)
        run = lambda batch: session.run(None, {"images": batch})  # noqa: E731
    speeds = {}
    for batch in (1, 32):
        chunks = [pixels[i:i + batch] for i in range(0, 32, batch)]
        run(chunks[0])
        start = time.perf_counter()
        for chunk in chunks:
            run(chunk)
        speeds[f"ms_per_image_batch{batch}"] = round((time.perf_counter() - start) / 32 * 1000, 2)
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--support", required=True, help="folder of class folders (the first --classes are used)")
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--formats", nargs="+", default=["onnx", "onnx-int8", "torchscript"])
    parser.add_argument("--json", default="benchmarks/results/export_speed.jsonl")
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = support_subset(Path(args.support), args.classes, args.shots, Path(tmp) / "support")
        for fmt in ["none", *args.formats]:
            out = Path(tmp) / f"model.{fmt}"
            found = subprocess.run([sys.executable, "-c", WORKER, args.recipe, str(Path(tmp) / "support"), fmt,
                                    str(out)], capture_output=True, text=True, check=True)
            row = json.loads(found.stdout.strip().splitlines()[-1])
            if fmt != "none":
                row.update(file_speed(out, fmt, (files * 32)[:32], 260 if args.recipe == "default" else 224))
                row["file_mb"] = round(out.stat().st_size / 2**20, 1)
            rows["embed" if fmt == "none" else f"export {fmt}"] = row
            print(("embed" if fmt == "none" else f"export {fmt}"), json.dumps(row), flush=True)
    embed = rows["embed"]["embed_s"]
    for fmt in args.formats:
        row = rows[f"export {fmt}"]
        budget = 2 * embed + 15
        print(f"{fmt}: export {row['export_s']:.1f} s (budget 2 x {embed:.1f} + 15 = {budget:.1f} s), peak RSS "
              f"{row['peak_rss_mb']:.0f} MB (budget 1536 MB)")
    with open(args.json, "a") as handle:
        handle.write(json.dumps({"date": time.strftime("%Y-%m-%d"), "recipe": args.recipe, "support":
                                 f"{args.classes}x{args.shots}", "peak_rss_parent_mb":
                                 resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rows": rows}) + "\n")


if __name__ == "__main__":
    main()
