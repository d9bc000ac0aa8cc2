"""Fault tolerance: kill and resume a real training process, signals, NaN, disk problems, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from conftest import make_image_folder
from fewshot.model.checkpoint import load_checkpoint, save_checkpoint
from fewshot.config import config_from_dict
from fewshot.errors import FewshotError
from fewshot.heads.protonet import ProtoNet
from fewshot.training.train import train

EPISODES = 150


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faultdata")
    make_image_folder(root / "train", classes=8, per_class=10, size=16, seed=1)
    make_image_folder(root / "val", classes=4, per_class=10, size=16, seed=2)
    return root


def config_dict(root: Path, **train) -> dict:
    return {
        "data": {"root": str(root), "split": {"train": "train", "val": "val"}, "image_size": 16, "channels": 3,
                 "augment": "standard"},
        "model": {"backbone": "conv4", "head": "protonet", "backbone_options": {"width": 8}},
        "train": {"ways": 3, "shots": 2, "queries": 3, "episodes": EPISODES, "lr": 0.003, "val_every": 40,
                  "val_episodes": 10, "log_every": 5, "checkpoint_every": 3, "step_size": 50,
                  "device": "cpu", **train},
        "eval": {"ways": 3, "shots": 1, "queries": 3, "episodes": 10},
        "seed": 5,
    }


def write_config(tmp_path: Path, root: Path, **train) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_dict(root, **train)))
    return path


def fewshot_process(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "fewshot", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def run_to_end(*args: str) -> subprocess.CompletedProcess:
    process = fewshot_process(*args)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def saved_episode(run_dir: Path) -> int:
    try:
        return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["episode"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return 0


def wait_for_checkpoint(process: subprocess.Popen, run_dir: Path, least: int) -> None:
    deadline = time.time() + 300
    while saved_episode(run_dir) < least:
        assert process.poll() is None, "training ended before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.05)


def metrics_without_time(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def tensors_of(value, path=""):
    """Every tensor of a nested checkpoint, by its path (model, optimizer state, RNG states...)."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from tensors_of(item, f"{path}/{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from tensors_of(item, f"{path}/{index}")


def assert_same_run(a: Path, b: Path) -> None:
    first, second = load_checkpoint(a / "checkpoints" / "last.pt"), load_checkpoint(b / "checkpoints" / "last.pt")
    assert first["episode"] == second["episode"] == EPISODES
    ours, theirs = dict(tensors_of(first)), dict(tensors_of(second))
    assert ours.keys() == theirs.keys() and "/rng/torch" in ours and any(k.startswith("/optimizer/") for k in ours)
    for key, value in ours.items():
        assert torch.equal(value, theirs[key]), key
    for key in ("config", "best", "stale", "window", "format"):
        assert first[key] == second[key], key
    assert metrics_without_time(a) == metrics_without_time(b)


@pytest.fixture(scope="module")
def reference_run(data_root, tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("reference")
    config = write_config(tmp, data_root)
    run_to_end("train", str(config), "--out", str(tmp / "run"), "--no-progress")
    return config, tmp / "run"


def test_sigkill_then_resume_is_exact(reference_run, tmp_path):
    config, reference = reference_run
    run_dir = tmp_path / "run"
    process = fewshot_process("train", str(config), "--out", str(run_dir), "--no-progress")
    wait_for_checkpoint(process, run_dir, 20)
    process.kill()
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert saved_episode(run_dir) < EPISODES
    run_to_end("train", str(config), "--out", str(run_dir), "--resume", "--no-progress")
    assert_same_run(reference, run_dir)


def test_sigterm_saves_and_says_how_to_resume(reference_run, tmp_path):
    config, reference = reference_run
    run_dir = tmp_path / "run"
    process = fewshot_process("train", str(config), "--out", str(run_dir), "--no-progress")
    wait_for_checkpoint(process, run_dir, 10)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "stopped by SIGTERM after episode" in out and "--resume" in out
    stopped_at = int(out.split("after episode ")[1].split(";")[0])
    assert saved_episode(run_dir) == stopped_at < EPISODES
    run_to_end("train", str(config), "--out", str(run_dir), "--resume", "--no-progress")
    assert_same_run(reference, run_dir)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_root, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = ProtoNet.loss

    def poisoned(self, logits, labels):
        calls["n"] += 1
        loss = original(self, logits, labels)
        return loss * float("nan") if calls["n"] == 8 else loss

    monkeypatch.setattr(ProtoNet, "loss", poisoned)
    config = config_from_dict(config_dict(data_root, checkpoint_every=3, val_every=0))
    with pytest.raises(FewshotError, match=r"loss became nan at episode 8 .*last good checkpoint is .*last.pt"):
        train(config, tmp_path / "run", progress=False)
    kept = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert kept["episode"] == 6
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_full_disk_reported_before_training(data_root, tmp_path, monkeypatch):
    import fewshot.training.run_directory as train_module

    usage = SimpleNamespace(total=10**9, used=10**9 - 2**20, free=2**20)
    monkeypatch.setattr(train_module.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(FewshotError, match="only 1 MB free .* checkpoints need about"):
        train(config_from_dict(config_dict(data_root)), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_failed_write_never_corrupts_a_checkpoint(tmp_path, monkeypatch):
    import fewshot.model.checkpoint as checkpoint_module

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "config": {}, "episode": 7})

    def disk_full(obj, handle):
        handle.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full)
    with pytest.raises(FewshotError, match="cannot write .*last.pt: No space left on device"):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "config": {}, "episode": 8})
    monkeypatch.undo()
    kept = torch.load(path, weights_only=True)
    assert kept["episode"] == 7 and torch.equal(kept["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_unwritable_run_dir(data_root, tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(FewshotError, match="cannot be created or written"):
        train(config_from_dict(config_dict(data_root)), tmp_path / "a_file" / "run", progress=False)


def test_resume_refuses_changed_image_size(data_root, tmp_path):
    config = config_from_dict(config_dict(data_root, episodes=6, val_every=0))
    train(config, tmp_path / "run", progress=False)
    changed = config_from_dict({**config_dict(data_root, episodes=6, val_every=0),
                                "data": {**config_dict(data_root)["data"], "image_size": 20}})
    with pytest.raises(FewshotError, match="data.image_size changed from 16 to 20"):
        train(changed, tmp_path / "run", resume=True, progress=False)


def test_metrics_log_drops_a_cut_line_and_skips_logged_episodes(tmp_path):
    from fewshot.training.run_directory import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "episode": 5, "loss": 1.0}\n{"kind": "train", "epi')
    log = MetricsLog(path)
    log.write({"kind": "train", "episode": 5, "loss": 9.0})
    log.write({"kind": "train", "episode": 10, "loss": 0.5})
    log.close()
    assert [json.loads(line)["loss"] for line in path.read_text().splitlines()] == [1.0, 0.5]


def test_two_process_gloo_data_parallel(data_root, tmp_path):
    config = write_config(tmp_path, data_root, episodes=12, val_every=6, checkpoint_every=0)
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "fewshot",
               "train", str(config), "--out", str(run_dir), "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["episodes"] == 12
    assert summary["rank_first_episodes"] == [[0, 2, 4, 6], [1, 3, 5, 7]], "each rank draws its own episodes"
    assert summary["parameter_spread_between_ranks"] == 0.0, "ranks end with identical weights"
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    assert sum(1 for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"val"' in line) == 2
    more = subprocess.run(command + ["--resume", "--set", "train.episodes=16"], capture_output=True, text=True,
                          timeout=600, env=env)
    assert more.returncode == 0, more.stderr[-3000:]
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["episodes"] == 16 and resumed["rank_first_episodes"] == [[24, 26, 28, 30], [25, 27, 29, 31]]
    alone = subprocess.run([sys.executable, "-m", "fewshot", "train", str(config), "--out", str(run_dir), "--resume",
                            "--set", "train.episodes=20", "--no-progress"], capture_output=True, text=True,
                           timeout=600, env=env)
    assert alone.returncode == 2 and "ran with 2 processes and is resumed with 1" in alone.stderr, alone.stderr[-2000:]
    assert alone.stderr.strip().count("\n") == 0 and "Traceback" not in alone.stderr


def test_training_time_adds_up_across_resumes(data_root, tmp_path):
    config = config_from_dict(config_dict(data_root, episodes=6, val_every=0))
    train(config, tmp_path / "run", progress=False)
    first = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["seconds"]
    more = config_from_dict(config_dict(data_root, episodes=9, val_every=0))
    summary = train(more, tmp_path / "run", resume=True, progress=False)
    assert first > 0 and summary["minutes"] * 60 > first


def test_a_fresh_run_draws_its_own_validation_episodes_and_writes_no_nan(data_root, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stale = '{"source": "x", "index": 0, "classes": ["a", "b"], "support": [[0], [0]], "query": [[1], [1]]}\n'
    (run_dir / "val_episodes.jsonl").write_text(stale)  # left by an earlier 2-way run stopped before a checkpoint
    (run_dir / "metrics.jsonl").write_text("")
    config = config_dict(data_root, episodes=4, val_every=2)
    config["train"]["val_episodes"] = 1  # one episode: its interval is undefined (was NaN in metrics.jsonl)
    train(config_from_dict(config), run_dir, progress=False)
    episodes = [json.loads(line) for line in (run_dir / "val_episodes.jsonl").read_text().splitlines()]
    assert episodes and all(len(e["classes"]) == config["eval"]["ways"] for e in episodes)

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    for name in ("metrics.jsonl", "summary.json"):
        for line in (run_dir / name).read_text().splitlines() if name.endswith("l") else [(run_dir / name).read_text()]:
            json.loads(line, parse_constant=refuse)
    assert any(json.loads(line).get("ci95", 0) is None for line in (run_dir / "metrics.jsonl").read_text().splitlines())


def test_pretrain_batches_keep_their_epoch_whatever_the_world_size():
    from fewshot.training.pretrain import global_batch

    per_epoch = 10
    for world in (1, 2, 3, 4):
        per_step = per_epoch // world
        for step in range(4 * per_step):
            batches = [global_batch(step, world, rank, per_step, per_epoch) for rank in range(world)]
            assert {b // per_epoch for b in batches} == {step // per_step}, (world, step, batches)
        seen = [global_batch(s, world, r, per_step, per_epoch) for s in range(2 * per_step) for r in range(world)]
        assert len(seen) == len(set(seen)), "a batch trained twice"


def test_sigterm_stops_the_demo_as_it_stops_train(tmp_path):
    run_dir = tmp_path / "demo"
    process = fewshot_process("demo", "--out", str(run_dir), "--no-progress", "--set", "train.episodes=100000",
                              "--set", "train.checkpoint_every=2", "--set", "train.val_every=100000")
    wait_for_checkpoint(process, run_dir, 2)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "stopped by SIGTERM after episode" in out and "--resume" in out, out
    assert "[3/4]" not in out and "demo done" not in out, "a half-trained model is neither evaluated nor 'done'"
    stopped_at = int(out.split("after episode ")[1].split(";")[0])
    assert saved_episode(run_dir) == stopped_at < 100000
