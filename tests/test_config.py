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
        load_config(path)
