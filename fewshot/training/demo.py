"""``fewshot demo``: the whole product on an embedded default, in a few minutes on a CPU.

1. generate an Omniglot-like glyph dataset (fonts that matplotlib installs; no download);
2. meta-train a Conv4 prototypical network on the train classes, validating on the val classes;
3. evaluate on the unseen test classes, 5-way 1-shot and 5-shot, with 95% intervals;
4. ``predict``: label a few new images of test classes from a support folder of 5 images per class.
"""

from __future__ import annotations

import shutil
import time
from importlib import resources
from pathlib import Path
from typing import Callable

import yaml

from episodes import default_cache_dir
from episodes.synthetic import make_glyph_dataset

from ..config import config_from_dict
from ..evaluation.data import open_phase, phase_spec
from ..evaluation.episodic import evaluate
from .train import train


def demo_config_dict() -> dict:
    """The demo's YAML config, shipped inside the package (``configs/demo.yaml`` in the repository)."""
    return yaml.safe_load(resources.files("fewshot").joinpath("configs/demo.yaml").read_text())


def run_demo(run_dir: str | Path | None = None, overrides: list[str] | None = None, progress: bool = True,
             log: Callable[[str], None] = print) -> dict:
    """Run the four demo steps; return the test results (accuracy and interval per shot count), or, when a signal
    stopped the training, ``{"interrupted": signal name, "train": summary, "run_dir": ...}`` without evaluating."""
    started = time.perf_counter()
    data_root = make_glyph_dataset(default_cache_dir() / "demo-glyphs")
    log(f"[1/4] glyph dataset: {data_root} (train / val / test classes are disjoint)")
    raw = demo_config_dict()
    raw.setdefault("data", {})["root"] = [str(data_root)]
    config = config_from_dict(raw, overrides)
    run_dir = Path(run_dir) if run_dir else Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    log(f"[2/4] meta-training {config.model.backbone} + {config.model.head}, {config.train.ways}-way "
        f"{config.train.shots}-shot, {config.train.episodes} episodes -> {run_dir}")
    summary = train(config, run_dir, progress=progress, log=log)
    if summary["interrupted"]:  # SIGTERM / SIGINT: last.pt is saved; a half-trained model is not evaluated
        return {"interrupted": summary["interrupted"], "train": summary, "run_dir": str(run_dir)}
    from ..model.checkpoint import load_checkpoint, model_from_checkpoint

    model, _ = model_from_checkpoint(load_checkpoint(run_dir))
    log(f"[3/4] evaluating on {config.eval.episodes} episodes of unseen test classes")
    results = {}
    for shots in (1, 5):
        split = open_phase(config, phase_spec(config.data, "test"), config.eval.ways, shots, config.eval.queries,
                           progress)
        result = evaluate(model, split, config.eval.ways, shots, config.eval.queries, config.eval.episodes,
                          seed=config.seed, progress=progress)
        results[f"{shots}-shot"] = {"accuracy": result.accuracy, "ci95": result.ci95}
        log(f"      test {result.summary()}  (chance {100 / config.eval.ways:.0f} %)")

    support_dir = run_dir / "demo-support"
    query_dir = run_dir / "demo-queries"
    shutil.rmtree(support_dir, ignore_errors=True)
    shutil.rmtree(query_dir, ignore_errors=True)
    query_dir.mkdir(parents=True)
    classes = sorted((data_root / "test").iterdir())[:5]
    truth = {}
    for class_dir in classes:
        files = sorted(class_dir.iterdir())
        (support_dir / class_dir.name).mkdir(parents=True)
        for file in files[:5]:
            shutil.copy(file, support_dir / class_dir.name / file.name)
        query = query_dir / f"{class_dir.name}-{files[-1].name}"
        shutil.copy(files[-1], query)
        truth[str(query)] = class_dir.name
    log(f"[4/4] predict: {len(classes)} new classes, 5 support images each ({support_dir})")
    from ..inference.classifier import FewShotClassifier

    predictions = FewShotClassifier.from_model(model, config, "the demo run").fit(support_dir).details(query_dir)
    correct = 0
    for item in predictions:
        ok = item["predicted"] == truth[item["query"]]
        correct += ok
        verdict = "correct" if ok else f"wrong, true {truth[item['query']]}"
        log(f"      {Path(item['query']).name}: {item['predicted']} "
            f"(p={item['probabilities'][item['predicted']]:.2f}) {verdict}")
    log(f"demo done in {(time.perf_counter() - started) / 60:.1f} min; {correct}/{len(predictions)} predictions "
        f"correct; run directory {run_dir} (config.yaml, metrics.jsonl, curves.png, checkpoints/)")
    return {"test": results, "predict_correct": correct, "train": summary}
