"""Hardening: phase flags, declared ranges, output paths, safe loading, head capabilities, lifecycle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import make_image_folder
from fewshot.model.checkpoint import load_checkpoint
from fewshot.cli import build_parser, main
from fewshot.config import ModelConfig, config_from_dict
from fewshot.errors import FewshotError
from fewshot.heads import HEADS, Head, class_means, register_head
from fewshot.model.network import build_model
from fewshot.training.train import train


@pytest.fixture(scope="module")
def phases(tmp_path_factory) -> Path:
    """train / val / test subfolders with distinct classes."""
    root = tmp_path_factory.mktemp("phases")
    make_image_folder(root / "train", classes=5, per_class=8, size=16, seed=1)
    make_image_folder(root / "val", classes=3, per_class=8, size=16, seed=2)
    make_image_folder(root / "test", classes=4, per_class=8, size=16, seed=3)
    for index, class_dir in enumerate(sorted((root / "val").iterdir())):  # val classes named apart from test's
        class_dir.rename(root / "val" / f"valclass{index}")
    return root


def tiny(root: Path, **train) -> dict:
    return {"data": {"root": str(root), "split": {"train": "train", "val": "val", "test": "test"}, "image_size": 16},
            "model": {"backbone": "conv4", "head": "protonet", "backbone_options": {"width": 8}},
            "train": {"ways": 3, "shots": 1, "queries": 2, "episodes": 6, "val_every": 0, "device": "cpu", **train},
            "eval": {"ways": 3, "shots": 1, "queries": 3, "episodes": 5}}


@pytest.fixture(scope="module")
def run_dir(phases, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hrun") / "run"
    train(config_from_dict(tiny(phases)), out, progress=False)
    return out


def test_eval_phase_flags_apply_to_the_runs_own_data(run_dir, tmp_path, capsys):
    assert main(["eval", str(run_dir), "--split", "val", "--no-progress", "--json", str(tmp_path / "v.json"),
                 "--confusion", str(tmp_path / "v.png")]) == 0
    out = capsys.readouterr().out
    assert f"{run_dir}/checkpoints/best.pt on split 'val'" in out
    saved = json.loads((tmp_path / "v.json").read_text())
    assert saved["data"].startswith("split 'val'")
    assert {row["class"] for row in saved["per_class"]["classes"]} == {"valclass0", "valclass1", "valclass2"}
    listed = tmp_path / "classes.txt"
    listed.write_text("test/class00\ntest/class01\ntest/class02\n")
    assert main(["eval", str(run_dir), "--classes", str(listed), "--no-progress"]) == 0
    assert f"class list {listed}" in capsys.readouterr().out


def test_one_episode_interval_is_null_and_per_episode_in_percent(run_dir, tmp_path, capsys):
    assert main(["eval", str(run_dir), "--episodes", "1", "--json", str(tmp_path / "one.json"), "--no-progress"]) == 0
    text = (tmp_path / "one.json").read_text()
    saved = json.loads(text)
    assert "NaN" not in text and saved["ci95"] is None
    assert saved["per_episode"] == [pytest.approx(saved["accuracy"])] and saved["accuracy"] > 1.0
    out = capsys.readouterr().out
    assert "no interval" in out and "precision" not in out, "no per-class table unless asked for"
    assert not Path("confusion.png").exists()


def test_confusion_alone_writes_the_matrix(run_dir, tmp_path, capsys):
    png = tmp_path / "matrix.png"
    assert main(["eval", str(run_dir), "--confusion", str(png), "--no-progress"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG" and "precision" in capsys.readouterr().out


def test_bad_output_paths_fail_before_work_and_one_failure_spares_the_others(run_dir, tmp_path, capsys,
                                                                            monkeypatch):
    import fewshot.cli.common as cli_module

    called = []  # the model loaders every command goes through: the spy is proven on the path below
    for name in ("model_from_args", "classifier_from_args"):
        original = getattr(cli_module, name)
        monkeypatch.setattr(cli_module, name, lambda *a, _original=original, **k: called.append(1) or _original(*a, **k))
    assert main(["eval", str(run_dir), "--json", str(tmp_path)]) == 2
    assert main(["eval", str(run_dir), "--json", "/proc/nope/out.json"]) == 2
    assert main(["predict", str(run_dir), "--support", "x", "--query", "y", "--explain", "/proc/nope"]) == 2
    assert main(["export", str(run_dir), "--support", "x", "--out", "/proc/nope/m.pt"]) == 2
    missing = tmp_path / "no" / "such" / "dir"
    assert main(["export", str(run_dir), "--support", "x", "--out", str(missing / "x.onnx")]) == 2
    assert not (tmp_path / "no").exists(), "a mistyped output folder is not created"
    err = capsys.readouterr().err
    assert not called and err.count("cannot be written") == 1 and err.count("does not exist") == 3
    assert main(["eval", str(run_dir), "--episodes", "2", "--no-progress"]) == 0 and called, "the spy is on the path"
    monkeypatch.undo()
    import fewshot.plots as plots

    def broken_plot(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plots, "plot_confusion", broken_plot)
    assert main(["eval", str(run_dir), "--per-class", "--confusion", str(tmp_path / "c.png"), "--json",
                 str(tmp_path / "r.json"), "--no-progress"]) == 2
    assert json.loads((tmp_path / "r.json").read_text())["accuracy"] >= 0, "the JSON is written all the same"
    assert "error: --confusion" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["eval", "RUN", "--episodes", "0"], "--episodes: must be at least 1, got 0"),
    (["eval", "RUN", "--episodes", "-5"], "--episodes: must be at least 1"),
    (["eval", "RUN", "--shots", "0"], "--shots: must be at least 1"),
    (["eval", "RUN", "--queries", "0"], "--queries: must be at least 1"),
    (["eval", "RUN", "--ways", "0"], "--ways: must be at least 2"),
    (["eval", "RUN", "--batch-size", "-4"], "--batch-size: must be at least 1"),
    (["eval", "RUN", "--seed", "-1"], "--seed: must be at least 0"),
    (["eval", "RUN", "--refine-steps", "-1"], "--refine-steps: must be at least 1"),
    (["eval", "RUN", "--threshold", "2"], "--threshold: must be between 0 and 1"),
    (["eval", "--backbone", "conv4", "--head", "protonet", "--image-size", "0"], "--image-size: must be at least 8"),
    (["episodes", "--data", "d", "--ways", "2", "--shots", "1", "--episodes", "-3"], "--episodes: must be at least 1"),
    (["episodes", "--data", "d", "--ways", "2", "--shots", "1", "--start", "-5"], "--start: must be at least 0"),
])
def test_flag_ranges(argv, message, run_dir, capsys):
    argv = [str(run_dir) if item == "RUN" else item for item in argv]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("device", ["mps", "meta", "tpu", "cpu:3"])
def test_unsupported_devices_are_one_line_errors(run_dir, device, capsys):
    assert main(["eval", str(run_dir), "--device", device]) == 2
    assert f"device '{device}' is not supported" in capsys.readouterr().err


def test_train_refuses_a_foreign_folder_and_a_shorter_resume(phases, run_dir, tmp_path, capsys):
    with pytest.raises(FewshotError, match="not a run directory"):
        train(config_from_dict(tiny(phases)), phases / "train", progress=False)
    assert not (phases / "train" / "config.yaml").exists()
    with pytest.raises(FewshotError, match=r"already trained 6 episodes, more than train.episodes=4"):
        train(config_from_dict(tiny(phases, episodes=4)), run_dir, resume=True, progress=False)
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["config"]["train"]["episodes"] == 6
    assert "episodes: 6" in (run_dir / "config.yaml").read_text()
    assert main(["train", "--data", str(phases), "--backbone", "conv4", "--out", "/proc/x/run"]) == 2
    assert "cannot be created or written" in capsys.readouterr().err


def test_train_from_flags_alone_writes_the_resolved_config(phases, tmp_path, capsys):
    out = tmp_path / "flags"
    assert main(["train", "--data", str(phases), "--backbone", "conv4", "--head", "protonet", "--image-size", "16",
                 "--set", "model.backbone_options={width: 8}", "--set", "train.episodes=4", "--set", "train.ways=3",
                 "--set", "train.queries=2", "--set", "train.val_every=2", "--set", "train.val_episodes=2",
                 "--set", "eval.ways=3", "--set", "eval.queries=2", "--out", str(out), "--no-progress"]) == 0
    saved = config_from_dict(__import__("yaml").safe_load((out / "config.yaml").read_text()))
    assert saved.data.root == [str(phases)] and saved.data.split.val == "val" and saved.model.backbone == "conv4"
    assert "trained 4 episodes" in capsys.readouterr().out


def test_a_planted_pickle_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": Payload()}, "config": {}}, evil)
    assert main(["eval", str(evil), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "refused to read checkpoint" in err and "system" in err and "weights_only" not in err
    assert len(err.strip().splitlines()) == 1
    assert main(["eval", "--backbone", "conv4", "--head", "protonet", "--weights", str(evil), "--data",
                 str(tmp_path)]) == 2
    assert "refused to read weights file" in capsys.readouterr().err
    assert not marker.exists()


def test_finetune_augments_uint8_before_normalizing(monkeypatch, tmp_path):
    import episodes.images as images

    seen = []
    original = images.apply_per_image

    def spy(transform, batch):
        seen.append(batch.dtype)
        return original(transform, batch)

    monkeypatch.setattr(images, "apply_per_image", spy)
    model = build_model(ModelConfig(backbone="conv4", head="finetune", backbone_options={"width": 8},
                                    head_options={"steps": 3, "augment": "strong"}), 3, 16)
    support = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    inputs = []
    hook = model.backbone.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    logits = model(support, torch.tensor([0, 0, 1, 1]), support[:2], 2)
    hook.remove()
    assert seen == [torch.uint8] * 3 and logits.shape == (2, 2)
    low, high = -0.485 / 0.229 - 1e-4, (1 - 0.406) / 0.225 + 1e-4  # normalized pixel range, ImageNet statistics
    assert all(x.dtype == torch.float32 and x.min() >= low and x.max() <= high for x in inputs)
    assert any(x.min() < -1.0 for x in inputs), "the backbone sees normalized images, not 0-1 floats"


@pytest.mark.parametrize("head, options", [("finetune", {"steps": 5, "augment": "none", "backbone_lr": 0.05,
                                                         "head_lr": 0.05}),
                                           ("maml", {"eval_steps": 3, "inner_lr": 0.5}),
                                           ("anil", {"eval_steps": 3, "inner_lr": 0.5})])
def test_explain_uses_the_adapted_network(head, options, tmp_path):
    from fewshot import FewShotClassifier

    torch.manual_seed(0)
    clf = FewShotClassifier(backbone="conv4", head=head, image_size=32, backbone_options={"width": 8},
                            head_options=options)  # 2x2 maps: at 16 px they are 1x1 and explain is refused
    model = clf.model_
    generator = torch.Generator().manual_seed(1)
    support = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=generator)
    queries = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=generator)
    clf.fit(list(support), ["a", "a", "b", "b", "c", "c"])
    plain = clf.details(list(queries))
    explained = clf.explain(list(queries), tmp_path / "x")
    assert len(list((tmp_path / "x").glob("*.gradcam.png"))) == 4
    for ours, theirs in zip(explained, plain):
        assert list(ours["probabilities"].values()) == pytest.approx(list(theirs["probabilities"].values()),
                                                                     abs=1e-4)
    with torch.no_grad():  # the network before adaptation gives other probabilities
        embedded = model.backbone(model.prepare(queries))
        unadapted = F.softmax(embedded @ torch.zeros(embedded.shape[1], 3), dim=1)
    assert not torch.allclose(unadapted, torch.tensor([list(r["probabilities"].values()) for r in explained]))


class NearestNeighbour(Head):
    """A head defined in this test file alone: logits are minus the distance to the nearest support embedding."""

    def forward(self, support, support_labels, query, ways):
        distances = torch.cdist(query, support)  # (Q, S)
        masked = distances[:, None, :] + 1e9 * (support_labels[None, None, :] != torch.arange(ways)[None, :, None])
        return -masked.min(dim=2).values + 0.0 * class_means(support, support_labels, ways).sum()


def test_a_head_is_one_file_and_one_registry_line(phases, tmp_path, capsys):
    register_head("nearest_neighbour", NearestNeighbour)
    try:
        help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
        assert "nearest_neighbour" in help_text
        assert "nearest_neighbour" in build_parser()._subparsers._group_actions[0].choices["eval"].format_help()
        config = tiny(phases)
        config["model"]["head"] = "nearest_neighbour"
        config["model"]["backbone_options"]["width"] = 4
        # conv4's parameters train through the head (it has none of its own)
        train(config_from_dict(config), tmp_path / "nn", progress=False)
        assert main(["eval", str(tmp_path / "nn"), "--episodes", "4", "--no-progress"]) == 0
        assert main(["predict", str(tmp_path / "nn"), "--support", str(phases / "test"), "--query",
                     str(phases / "val" / "valclass0"), "--json"]) == 0
        out = capsys.readouterr().out
        assert "3-way 1-shot" in out and '"predicted"' in out
    finally:
        HEADS.pop("nearest_neighbour")


def test_heads_declare_capabilities():
    assert not HEADS["finetune"].meta_trainable and HEADS["maml"].meta_trainable
    assert not HEADS["maml"].exportable and HEADS["protonet"].exportable
    assert all(cls.explainable for cls in HEADS.values() if not cls.transductive)
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["eval"].format_help().split())
    for name in ("efficientnet_lite0", "finetune", "maml", "anil", "resnet12"):
        assert name in help_text, name
    assert "(default 600)" not in help_text and "checkpoint config's eval.episodes" in help_text


def test_finetune_options_are_checked():
    with pytest.raises(FewshotError, match="finetune steps must be an integer >= 0"):
        build_model(ModelConfig(backbone="conv4", head="finetune", head_options={"steps": -3}), 3, 16)
    with pytest.raises(FewshotError, match="finetune blocks=9 but the backbone has 4 stages"):
        build_model(ModelConfig(backbone="conv4", head="finetune", head_options={"blocks": 9}), 3, 16)


def test_grey_input_with_imagenet_weights_uses_imagenet_statistics(monkeypatch):
    import fewshot.backbones.torchvision_resnet as tv
    from torchvision.models import resnet18

    monkeypatch.setattr(tv, "imagenet_state_dict", lambda enum, name: resnet18().state_dict())
    model = build_model(ModelConfig(backbone="resnet18", weights="imagenet", head="protonet"), 1, 32)
    assert model.mean == pytest.approx((0.449,), abs=1e-3) and model.std == pytest.approx((0.226,), abs=1e-3)
    plain = build_model(ModelConfig(backbone="resnet18", weights="none", head="protonet"), 1, 32)
    assert plain.mean == (0.5,) and plain.std == (0.5,)


def test_weights_from_another_image_size_warn(run_dir):
    with pytest.warns(UserWarning, match="trained at 16 px and are used at 32 px"):
        build_model(ModelConfig(backbone="conv4", weights=str(run_dir / "checkpoints" / "best.pt"),
                                backbone_options={"width": 8}), 3, 32)


def test_exported_model_checks_its_input(run_dir, phases, tmp_path):
    out = tmp_path / "m.pt"
    assert main(["export", str(run_dir), "--support", str(phases / "test"), "--out", str(out),
                 "--format", "torchscript"]) == 0
    model = torch.jit.load(str(out))
    good = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    probabilities = model(good)
    assert probabilities.shape == (2, 4) and not probabilities.requires_grad
    with pytest.raises(Exception, match=r"(?s)expected uint8 images \(B, 3, 16, 16\).*got another dtype"):
        model(good.float())
    with pytest.raises(Exception, match=r"(?s)resize to 16x16.*got shape \[2, 3, 20, 20\]"):
        model(torch.zeros(2, 3, 20, 20, dtype=torch.uint8))


def pretrain_config(root: Path, **options) -> dict:
    return {"data": {"root": str(root), "split": {"train": "train", "val": "val"}, "image_size": 16,
                     "augment": "flip"},
            "model": {"backbone": "conv4", "head": "protonet", "backbone_options": {"width": 8}},
            "pretrain": {"epochs": 3, "batch_size": 8, "lr": 0.05, "val_episodes": 4, **options},
            "eval": {"ways": 3, "shots": 1, "queries": 3}, "train": {"device": "cpu"}, "seed": 3}


def test_pretrain_sigterm_then_resume_is_exact(phases, tmp_path, monkeypatch):
    from fewshot.training import lifecycle
    from fewshot.training.pretrain import pretrain
    from test_faults import tensors_of

    config = config_from_dict(pretrain_config(phases, mixup=0.4, momentum=0.0))  # momentum 0: plain SGD
    pretrain(config, tmp_path / "whole", progress=False)
    calls = []
    original = lifecycle._update

    def interrupting(job, loss):
        original(job, loss)
        calls.append(1)
        if len(calls) == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(lifecycle, "_update", interrupting)
    stopped = pretrain(config, tmp_path / "cut", progress=False)
    assert stopped["interrupted"] == "SIGTERM" and stopped["steps"] == 7
    monkeypatch.undo()
    resumed = pretrain(config, tmp_path / "cut", resume=True, progress=False)
    assert resumed["steps"] == 15 and not resumed["interrupted"]  # 40 images / 8 = 5 batches x 3 epochs
    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    ours, theirs = dict(tensors_of(a)), dict(tensors_of(b))
    assert ours.keys() == theirs.keys() and any(k.startswith("/classifier/") for k in ours)
    for key, value in ours.items():
        assert torch.equal(value, theirs[key]), key
    rows = lambda run: [{k: v for k, v in json.loads(line).items() if k != "seconds"}  # noqa: E731
                        for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows(tmp_path / "whole") == rows(tmp_path / "cut")


def test_pretrain_under_torchrun_with_efficientnet(phases, tmp_path):
    """Two gloo processes; EfficientNet-Lite0 once kept an unused ImageNet classifier, which stops DDP at the
    second step."""
    config = pretrain_config(phases, epochs=2, batch_size=4, val_episodes=2)
    config["model"] = {"backbone": "efficientnet_lite0", "head": "protonet"}
    config["data"]["image_size"] = 32
    path = tmp_path / "c.yaml"
    path.write_text(__import__("yaml").safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m",
                             "fewshot", "pretrain", str(path), "--out", str(tmp_path / "ddp"), "--no-progress"],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2 * (40 // 4 // 2)


def test_review_fixes_checkpoint_normalization_and_fresh_metrics(phases, tmp_path, monkeypatch):
    import fewshot.backbones.torchvision_resnet as tv
    from fewshot.model.checkpoint import model_from_checkpoint
    from torchvision.models import resnet18

    monkeypatch.setattr(tv, "imagenet_state_dict", lambda enum, name: resnet18().state_dict())
    config = tiny(phases, episodes=2)
    config["model"] = {"backbone": "resnet18", "weights": "imagenet", "head": "protonet"}
    config["data"]["channels"] = 1
    run = tmp_path / "grey"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"kind": "train", "episode": 99, "loss": 7.0}\n')  # a run that died early
    train(config_from_dict(config), run, progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["episode"] for row in rows] == [2], "a new run starts its own log"
    model, _ = model_from_checkpoint(load_checkpoint(run))
    assert model.mean == pytest.approx((0.449,), abs=1e-3), "reloaded with the statistics it was trained with"


def test_review_fixes_large_seed_pretrain_and_refine_checks(phases, tmp_path):
    from fewshot.evaluation.episodic import evaluate
    from fewshot.training.pretrain import pretrain
    from episodes import SplitSpec, open_split

    config = pretrain_config(phases, epochs=1, mixup=0.4)
    config["seed"] = 2**62
    assert pretrain(config_from_dict(config), tmp_path / "seed", progress=False)["steps"] == 5
    model = build_model(ModelConfig(backbone="conv4", head="pt_map", backbone_options={"width": 8}), 3, 16)
    split = open_split(SplitSpec((str(phases / "test"),)), image_size=16, channels=3, progress=False)
    with pytest.raises(FewshotError, match="transductive already"):
        evaluate(model, split, 3, 1, 2, 2, progress=False, refine="soft_kmeans")
