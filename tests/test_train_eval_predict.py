"""Training, evaluation and prediction end to end on tiny generated data and tiny backbones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import make_image_folder
from fewshot.model.checkpoint import load_checkpoint, model_from_checkpoint
from fewshot.cli import main
from fewshot.config import config_from_dict
from fewshot.evaluation.data import open_phase, phase_spec
from fewshot.evaluation.episodic import confidence_interval, evaluate
from fewshot.training.train import train

HEAD_SETTINGS = {
    "protonet": {},
    "relation": {"backbone_options": {"width": 16, "pooled_blocks": 2}},
    "linear_probe": {"head_options": {"steps": 30}},
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """train/ 10 classes, val/ 4, test/ 6 (disjoint templates), 12 RGB images each, 20x20."""
    root = tmp_path_factory.mktemp("fsdata")
    make_image_folder(root / "train", classes=10, per_class=12, size=20, seed=1)
    make_image_folder(root / "val", classes=4, per_class=12, size=20, seed=2)
    make_image_folder(root / "test", classes=6, per_class=12, size=20, seed=3)
    return root


def tiny_config(root: Path, head: str = "protonet", **train) -> dict:
    settings = HEAD_SETTINGS[head]
    return {
        "data": {"root": str(root), "split": {"train": "train", "val": "val", "test": "test"}, "image_size": 20,
                 "channels": 3},
        "model": {"backbone": "conv4", "head": head,
                  "backbone_options": settings.get("backbone_options", {"width": 16}),
                  "head_options": settings.get("head_options", {})},
        "train": {"ways": 4, "shots": 2, "queries": 4, "episodes": 60, "lr": 0.002, "val_every": 30,
                  "val_episodes": 20, "log_every": 10, "step_size": 1000, **train},
        "eval": {"ways": 4, "shots": 1, "queries": 5, "episodes": 100},
        "seed": 0,
    }


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("head", ["protonet", "relation", "linear_probe"])
def test_training_lowers_loss_and_beats_chance_on_unseen_classes(dataset, tmp_path, head):
    config = config_from_dict(tiny_config(dataset, head))
    run_dir = tmp_path / "run"
    summary = train(config, run_dir, progress=False, log=lambda *_: None)
    assert summary["episodes"] == 60
    losses = [r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"]
    assert len(losses) == 6 and losses[-1] < losses[0], losses
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "summary.json", "checkpoints/best.pt",
                 "checkpoints/last.pt"):
        assert (run_dir / name).is_file(), name
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["head"] == head
    model, saved = model_from_checkpoint(load_checkpoint(run_dir))
    test = open_phase(saved, phase_spec(saved.data, "test"), 4, 1, 5, progress=False)
    result = evaluate(model, test, 4, 1, 5, episodes=100, seed=1, progress=False)
    assert result.accuracy > 25.0 + 20.0, f"{head}: {result.summary()} (chance 25 %)"


def test_training_is_repeatable_on_cpu(dataset, tmp_path):
    config = config_from_dict(tiny_config(dataset, episodes=20, val_every=0))
    train(config, tmp_path / "a", progress=False, log=lambda *_: None)
    train(config, tmp_path / "b", progress=False, log=lambda *_: None)
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_metrics(tmp_path / "a")) == strip(read_metrics(tmp_path / "b"))


def test_schedules_and_sgd(dataset, tmp_path):
    from fewshot.training.train import lr_factor

    config = config_from_dict(tiny_config(dataset, episodes=100, schedule="cosine", warmup=10, optimizer="sgd",
                                          lr=0.01, grad_clip=1.0, val_every=0))
    assert lr_factor(config, 0) == pytest.approx(0.1) and lr_factor(config, 9) == pytest.approx(1.0)
    assert lr_factor(config, 55) == pytest.approx(0.5, abs=0.02) and lr_factor(config, 100) == pytest.approx(0.0)
    step = config_from_dict(tiny_config(dataset, step_size=10, gamma=0.5))
    assert lr_factor(step, 25) == pytest.approx(0.25)
    config.train.episodes = 20
    train(config, tmp_path / "run", progress=False, log=lambda *_: None)
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert lrs[0] > lrs[-1]


def test_early_stopping(dataset, tmp_path):
    config = config_from_dict(tiny_config(dataset, episodes=400, val_every=5, patience=2, lr=1e-6))
    summary = train(config, tmp_path / "run", progress=False, log=lambda *_: None)
    assert summary["stopped_early"] and summary["episodes"] < 400


def test_fast_and_plain_evaluation_agree(dataset):
    config = config_from_dict(tiny_config(dataset))
    from fewshot.model.network import build_model

    torch.manual_seed(0)
    model = build_model(config.model, 3, 20)
    split = open_phase(config, phase_spec(config.data, "test"), 5, 2, 3, progress=False)
    fast = evaluate(model, split, 5, 2, 3, episodes=40, seed=4, fast=True, progress=False)
    plain = evaluate(model, split, 5, 2, 3, episodes=40, seed=4, fast=False, progress=False)
    assert np.array_equal(fast.accuracies, plain.accuracies)


def test_confidence_interval_formula():
    # by hand: mean 0.7, squared deviations 0.04 + 0 + 0.04 + 0.01 + 0.01 = 0.10, sample variance 0.10 / 4 = 0.025,
    # std 0.158114, half-width 1.96 * 0.158114 / sqrt(5) = 0.138593
    assert confidence_interval(np.array([0.5, 0.7, 0.9, 0.6, 0.8])) == pytest.approx(0.138593, abs=1e-6)
    assert np.isnan(confidence_interval(np.array([0.5])))


@pytest.fixture(scope="module")
def trained_run(dataset, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    train(config_from_dict(tiny_config(dataset)), run_dir, progress=False, log=lambda *_: None)
    return run_dir


def test_eval_cli_json(trained_run, dataset, tmp_path, capsys):
    out = tmp_path / "result.json"
    assert main(["eval", str(trained_run), "--data", str(dataset), "--split", "test", "--ways", "3", "--shots", "2",
                 "--queries", "4", "--episodes", "50", "--json", str(out), "--no-progress"]) == 0
    assert "3-way 2-shot:" in capsys.readouterr().out
    result = json.loads(out.read_text())
    for key in ("accuracy", "ci95", "episodes", "ways", "shots", "queries", "seconds", "per_episode"):
        assert key in result
    assert (result["ways"], result["shots"], result["queries"], result["episodes"]) == (3, 2, 4, 50)
    assert len(result["per_episode"]) == 50
    assert result["accuracy"] == pytest.approx(np.mean(result["per_episode"]))  # both in percent
    assert 0 < result["ci95"] < 20
    # no data flags: the checkpoint's own test split; same seed gives the same episodes
    out2 = tmp_path / "again.json"
    assert main(["eval", str(trained_run), "--ways", "3", "--shots", "2", "--queries", "4", "--episodes", "50",
                 "--json", str(out2), "--no-progress", "--plain"]) == 0
    assert json.loads(out2.read_text())["per_episode"] == result["per_episode"]


def test_eval_without_checkpoint(dataset, tmp_path, capsys):
    assert main(["eval", "--backbone", "conv4", "--head", "protonet", "--image-size", "20", "--data", str(dataset),
                 "--split", "test", "--ways", "5", "--shots", "1", "--queries", "5", "--episodes", "30",
                 "--no-progress"]) == 0
    assert "5-way 1-shot:" in capsys.readouterr().out


def _support_and_queries(dataset: Path, tmp_path: Path) -> tuple[Path, list[Path], list[str]]:
    support = tmp_path / "support"
    queries, truth = [], []
    for class_dir in sorted((dataset / "test").iterdir())[:4]:
        files = sorted(class_dir.iterdir())
        (support / class_dir.name).mkdir(parents=True)
        for file in files[:5]:
            (support / class_dir.name / file.name).write_bytes(file.read_bytes())
        queries.append(files[-1])
        truth.append(class_dir.name)
    return support, queries, truth


def test_predict_labels_queries_from_support(trained_run, dataset, tmp_path, capsys):
    support, queries, truth = _support_and_queries(dataset, tmp_path)
    assert main(["predict", str(trained_run), "--support", str(support), "--query", *map(str, queries),
                 "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["predicted"] for r in results] == truth
    for result in results:
        assert set(result["probabilities"]) == set(truth)
        assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert main(["predict", str(trained_run), "--support", str(support), "--query", str(queries[0])]) == 0
    assert capsys.readouterr().out.startswith(f"{queries[0]}: {truth[0]}  (")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fewshot", *args], capture_output=True, text=True, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, text: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], result.stderr


def test_bad_inputs_are_one_line_errors(trained_run, dataset, tmp_path):
    support, queries, _ = _support_and_queries(dataset, tmp_path)
    (support / "empty_class").mkdir()
    assert_one_line_error(run_cli("predict", str(trained_run), "--support", str(support), "--query", str(queries[0])),
                          "support class 'empty_class'")
    (support / "empty_class").rmdir()
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    assert_one_line_error(run_cli("predict", str(trained_run), "--support", str(support), "--query", str(not_image)),
                          "cannot decode image")
    assert_one_line_error(run_cli("predict", str(trained_run), "--support", str(tmp_path / "nope"), "--query",
                                  str(queries[0])), "does not exist")
    # checkpoint that does not match the requested backbone / head
    assert_one_line_error(run_cli("eval", str(trained_run), "--backbone", "resnet12", "--data", str(dataset),
                                  "--split", "test"), "trained with backbone 'conv4', not 'resnet12'")
    assert_one_line_error(run_cli("eval", str(trained_run), "--head", "relation"), "trained with head 'protonet'")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    assert_one_line_error(run_cli("eval", str(broken)), "cannot read checkpoint")
    assert "weights_only" not in run_cli("eval", str(broken)).stderr
    torch.save({"something": 1}, tmp_path / "other.pt")
    assert_one_line_error(run_cli("eval", str(tmp_path / "other.pt")), "is not a fewshot checkpoint")
    # shots + queries the data cannot satisfy (12 images per class)
    assert_one_line_error(run_cli("eval", str(trained_run), "--shots", "10", "--queries", "5"),
                          "need 4 classes with at least 15 images")
    assert_one_line_error(run_cli("eval", str(trained_run), "--ways", "7"), "7-way episodes need 7 classes")


def test_train_cli_errors_leave_nothing_behind(dataset, tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config(dataset)))
    run_dir = tmp_path / "run"
    assert_one_line_error(run_cli("train", str(config_file), "--out", str(run_dir), "--set", "train.lrr=1"),
                          "unknown config key 'train.lrr' (did you mean 'train.lr'?)")
    assert_one_line_error(run_cli("train", str(config_file), "--out", str(run_dir), "--set", "model.weights=/x.pt"),
                          "weights file /x.pt does not exist")
    assert not (run_dir / "checkpoints" / "last.pt").exists()
    (tmp_path / "bad.yaml").write_text("model:\n  backbone: conv4\n  haed: protonet\n")
    assert_one_line_error(run_cli("train", str(tmp_path / "bad.yaml")), "unknown config key 'model.haed'")


def test_train_cli_run_dir_and_resume(dataset, tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config(dataset, episodes=20, val_every=10)))
    run_dir = tmp_path / "run"
    done = run_cli("train", str(config_file), "--out", str(run_dir), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "trained 20 episodes" in done.stdout
    assert_one_line_error(run_cli("train", str(config_file), "--out", str(run_dir)), "already holds a run")
    assert_one_line_error(run_cli("train", str(config_file), "--out", str(run_dir), "--resume", "--set",
                                  "model.head=linear_probe"), "model.head changed from 'protonet' to 'linear_probe'")
    more = run_cli("train", str(config_file), "--out", str(run_dir), "--resume", "--set", "train.episodes=30",
                   "--no-progress")
    assert more.returncode == 0, more.stderr
    assert "resuming with changed settings: train.episodes" in more.stdout
    assert load_checkpoint(run_dir)["episode"] == 30 or load_checkpoint(run_dir / "checkpoints" / "last.pt")[
        "episode"] == 30


def test_demo_runs_and_reports_interval(tmp_path):
    result = run_cli("demo", "--out", str(tmp_path / "demo"), "--no-progress", "--set", "train.episodes=40",
                     "--set", "train.val_every=20", "--set", "train.val_episodes=20", "--set", "eval.episodes=60",
                     "--set", "train.ways=10")
    assert result.returncode == 0, result.stderr
    assert "test 5-way 1-shot:" in result.stdout and "test 5-way 5-shot:" in result.stdout and "±" in result.stdout
    assert "[4/4] predict" in result.stdout and "predictions correct" in result.stdout
    accuracy = float(result.stdout.split("test 5-way 5-shot: ")[1].split(" ")[0])
    assert accuracy > 40.0, result.stdout
