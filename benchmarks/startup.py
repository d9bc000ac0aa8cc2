"""Start-up cost of the CLI, each command in a fresh process: CPU seconds (user + system, the process and its
children) and wall seconds, best of ``--repeats``.

Rows: ``fewshot --help``, ``fewshot recipes``, an argument error, a missing support folder, and a cold one-image
``fewshot predict`` with the default and fast recipes (2 classes x 5 support images, generated 64x64 photos-like
noise: content does not change the cost). The predict rows are compared with their floor, a script that does
only what any prediction must: import torch, build the recipe's model with its weights, decode and embed the 11
images (``floor`` rows). Run alone on an idle machine::

    python benchmarks/startup.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

FLOOR = """
import sys, time
from pathlib import Path
import torch
from fewshot.model.loading import load_model
from fewshot.inference.inputs import prepare_images, as_batch
model, config = load_model(None, recipe=sys.argv[1])
model.eval()
files = sorted(Path(sys.argv[2]).rglob("*.png")) + [Path(sys.argv[3])]
images = as_batch(prepare_images(files, config.data.image_size, config.data.channels))
with torch.inference_mode():
    model.embed(images)
"""


def run(command: list[str], repeats: int) -> dict:
    """Best CPU and wall seconds of ``command`` over ``repeats`` runs, and its exit status."""
    best_cpu, best_wall, code = float("inf"), float("inf"), None
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        code = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        best_cpu, best_wall = min(best_cpu, cpu), min(best_wall, wall)
    return {"cpu_s": round(best_cpu, 3), "wall_s": round(best_wall, 3), "exit": code}


def support_folder(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / "support" / name).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "support" / name / f"{i}.png")
    query = root / "query.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(query)
    return root / "support", query


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="benchmarks/results/startup.jsonl")
    args = parser.parse_args()
    fewshot = [sys.executable, "-m", "fewshot"]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        support, query = support_folder(Path(tmp))
        commands = {
            "fewshot --help": fewshot + ["--help"],
            "fewshot recipes": fewshot + ["recipes"],
            "argument error (predict --shots 0)": fewshot + ["predict", "--shots", "0"],
            "missing support folder": fewshot + ["predict", "--support", f"{tmp}/missing", "--query", str(query)],
        }
        for recipe in ("default", "fast"):
            commands[f"cold predict, {recipe}"] = fewshot + ["predict", recipe, "--support", str(support), "--query",
                                                            str(query), "--no-progress"]
            commands[f"floor, {recipe}"] = [sys.executable, "-c", FLOOR, recipe, str(support), str(query)]
        for name, command in commands.items():
            rows[name] = run(command, args.repeats)
            print(f"{name}: {rows[name]['cpu_s']:.2f} CPU-s, {rows[name]['wall_s']:.2f} s wall, exit {rows[name]['exit']}",
                  flush=True)
    for recipe in ("default", "fast"):
        ratio = rows[f"cold predict, {recipe}"]["cpu_s"] / rows[f"floor, {recipe}"]["cpu_s"]
        print(f"cold predict / floor, {recipe}: {ratio:.2f}x CPU")
    with open(args.json, "a") as handle:
        handle.write(json.dumps({"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "rows": rows}) + "\n")


if __name__ == "__main__":
    main()
