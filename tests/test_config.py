"""Config: defaults in code, YAML over them, --set overrides parsed as YAML, strict validation."""

from __future__ import annotations

import pytest
import yaml

from fewshot.config import Config, config_from_dict, dump_config, load_config
from fewshot.errors import FewshotError


def test_defaults_and_yaml(tmp_path):
    assert Config().model.backbone == "resnet50" and Config().model.head == "protonet"
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  root: /data/x\n  split: {train: train, test: test}\nmodel:\n  backbone: conv4\n"
                    "train:\n  lr: 1e-3\n  ways: 20\nseed: 3\n")
    config = load_config(path)
    assert config.data.root == ["/data/x"] and config.data.split.train == "train" and config.data.split.val is None
    assert config.train.lr == 0.001 and config.train.ways == 20 and config.seed == 3
    assert config.train.shots == 5  # default kept


def test_set_overrides_parsed_as_yaml(tmp_path):
    config = load_config(None, ["train.lr=1e-3", "data.root=[dir_a, dir_b]", "model.head_options={distance: cosine}",
                                "train.grad_clip=5", "train.patience=null", "data.skip_corrupt=true"])
    assert config.train.lr == 0.001 and config.data.root == ["dir_a", "dir_b"]
    assert config.model.head_options == {"distance": "cosine"} and config.train.grad_clip == 5.0
    assert config.data.skip_corrupt is True


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
    ("trian.lr=1", "unknown config key 'trian'"),
    ("train.episodes=many", "config key 'train.episodes' must be int, got 'many'"),
    ("seed=1.5", "config key 'seed' must be int"),
    ("data.channels=2", "data.channels must be 1 or 3"),
    ("train.optimizer=rmsprop", "train.optimizer must be one of adam, sgd"),
    ("train.lr", "--set expects key=value"),
    ("train.ways=1", "train.ways must be at least 2"),
    ("train.log_every=0", "train.log_every must be at least 1, got 0"),
    ("train.step_size=0", "train.step_size must be at least 1, got 0"),
    ("train.lr=0", "train.lr must be greater than 0"),
    ("train.momentum=1", "train.momentum must be at least 0 and less than 1"),
    ("train.gamma=0", "train.gamma must be greater than 0 and at most 1"),
    ("train.grad_clip=-1", "train.grad_clip must be greater than 0"),
    ("train.patience=0", "train.patience must be at least 1"),
    ("train.val_every=-1", "train.val_every must be at least 0"),
    ("eval.episodes=0", "eval.episodes must be at least 1"),
    ("eval.batch_size=0", "eval.batch_size must be at least 1"),
    ("pretrain.epochs=0", "pretrain.epochs must be at least 1, got 0"),
    ("pretrain.mixup=-1", "pretrain.mixup must be at least 0"),
    ("pretrain.batch_size=0", "pretrain.batch_size must be at least 1"),
    ("pretrain.label_smoothing=1", "pretrain.label_smoothing must be at least 0 and less than 1"),
    ("data.image_size=0", "data.image_size must be between 8 and 4096"),
    ("data.workers=-2", "data.workers must be between 0 and 64"),
    ("seed=-1", "seed must be between 0 and"),
    ("train.schedule=linear", "train.schedule must be one of step, constant, cosine"),
])
def test_bad_values_are_one_line_errors(override, message):
    with pytest.raises(FewshotError) as info:
        load_config(None, [override])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(FewshotError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("data: [unclosed\n")
    with pytest.raises(FewshotError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "colon.yaml").write_text("train:\n  lr: 1\n  ways: 5: 3\n")
    with pytest.raises(FewshotError, match=r"colon.yaml is not valid YAML: line 3, column 10: mapping values"):
        load_config(tmp_path / "colon.yaml")


def test_every_numeric_key_declares_a_range():
    import dataclasses

    def numeric_fields(cls, prefix=""):
        for item in dataclasses.fields(cls):
            kind = item.type if not isinstance(item.type, str) else item.type
            if dataclasses.is_dataclass(item.default_factory if item.default_factory is not dataclasses.MISSING
                                        else None):
                yield from numeric_fields(item.default_factory, f"{prefix}{item.name}.")
            elif any(word in str(kind) for word in ("int", "float")):
                yield f"{prefix}{item.name}", item

    found = dict(numeric_fields(Config))
    assert "train.lr" in found and "pretrain.epochs" in found and "seed" in found
    unranged = [key for key, item in found.items() if "range" not in item.metadata]
    assert not unranged, f"numeric config keys without a declared range: {unranged}"


def test_resolved_config_round_trips():
    config = load_config(None, ["model.backbone=conv4", "data.image_size=28"])
    again = config_from_dict(yaml.safe_load(dump_config(config)))
    assert again == config


def test_shipped_configs_are_valid():
    from pathlib import Path

    configs = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert {"protonet-omniglot.yaml", "relation-omniglot.yaml", "protonet-miniimagenet.yaml",
            "linear-probe-miniimagenet.yaml", "demo.yaml"} <= {c.name for c in configs}
    for path in configs:
        text = path.read_text()
        assert text.lstrip().startswith("#"), f"{path.name} must say in a comment where its data comes from"
        config = load_config(path)
        named = [*config.data.root, config.data.images, *vars(config.data.classes).values(),
                 *vars(config.data.csv).values()]
        outside = [p for p in named if p and (p.startswith(("/", "..")) or "/../" in p)]
        assert not outside, f"{path.name} must name relative placeholder paths a user replaces, not {outside}"
