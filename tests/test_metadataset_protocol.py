"""Meta-Dataset episodes through the framework: ragged episodes, every head, several sources, saved
validation episodes, determinism across workers and ranks, and bad specs."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import make_image_folder
from episodes import (EpisodeDataset, EpisodeSampler, MetaDatasetConfig, MetaDatasetSampler, SourceMixture,
                      SplitSpec, VariableEpisodeIndices, open_split)
from episodes.errors import EpisodesError
from fewshot.cli import main
from fewshot.config import ModelConfig, config_from_dict
from fewshot.evaluation.data import episode_stream, open_source, phase_sources
from fewshot.evaluation.episode_sets import load_episodes
from fewshot.errors import FewshotError
from fewshot.evaluation.episodic import evaluate_drawn
from fewshot.heads import HEADS
from fewshot.model.network import build_model
from fewshot.training.train import train

SMALL = {"max_ways": 7, "max_support_size": 30, "max_queries": 3}



@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """Two datasets with train / val / test: 'wide' (9/6/6 classes of 12 images) and 'small' (8/6/6 of 7)."""
    root = tmp_path_factory.mktemp("sources")
    for name, per_class, seed in (("wide", 12, 0), ("small", 7, 50)):
        for number, (phase, classes) in enumerate((("train", 9 if name == "wide" else 8), ("val", 6), ("test", 6))):
            make_image_folder(root / name / phase, classes=classes, per_class=per_class, size=16,
                              seed=seed + 10 * number)
    return root


def two_source_config(root: Path, run_dir: Path | None = None, **sections) -> dict:
    config = {"data": {"protocol": "metadataset", "image_size": 16, "sources": [
        {"root": str(root / "wide"), "split": {"train": "train", "val": "val", "test": "test"}, "weight": 2},
        {"root": str(root / "small"), "split": {"train": "train", "val": "val", "test": "test"}}]},
        "model": {"backbone": "conv4", "head": "protonet", "backbone_options": {"width": 8}},
        "train": {"episodes": 6, "val_every": 3, "val_episodes": 4, "log_every": 3, "lr": 0.01},
        "eval": {"episodes": 5}, "metadataset": dict(SMALL)}
    for key, value in sections.items():
        config.setdefault(key, {}).update(value)
    return config


def test_ragged_episode_tensors_follow_the_indices(tmp_path):
    make_image_folder(tmp_path / "d", classes=4, per_class=8, size=8)
    (tmp_path / "list.txt").write_text("class00\nclass01/rot090\nclass02\nclass03/rot180\n")
    split = open_split(SplitSpec((str(tmp_path / "d"),), classes=str(tmp_path / "list.txt")), image_size=8,
                       channels=3, progress=False)
    support = (np.array([2]), np.array([0, 5, 6]), np.array([1, 3]), np.array([4, 7, 0, 1]))
    query = np.array([[0, 1], [1, 2], [0, 2], [2, 3]])
    drawn = VariableEpisodeIndices(7, np.array([3, 1, 0, 2]), support, query)
    episode = split.episode(drawn)
    assert episode.support.shape[0] == 10 and episode.query.shape[0] == 8
    assert episode.support_labels.tolist() == [0, 1, 1, 1, 2, 2, 3, 3, 3, 3]
    assert episode.shots.tolist() == [1, 3, 2, 4] and episode.query_labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    start = 0
    for label, (class_id, positions) in enumerate(zip(drawn.classes, support)):  # rotations applied per class
        assert torch.equal(episode.support[start:start + len(positions)], split.images(class_id, positions))
        assert torch.equal(episode.query[2 * label:2 * label + 2], split.images(class_id, query[label]))
        start += len(positions)
    assert not torch.equal(split.images(1, [0]), split.images(0, [0]))


@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_head_trains_and_evaluates_on_variable_episodes(head, sources):
    import inspect

    cls = HEADS[head]  # each head declares the options that make it quick on tiny data
    backbone_options, head_options = dict(cls.quick_backbone_options), dict(cls.quick_options)
    if "max_ways" in inspect.signature(cls.__init__).parameters:
        head_options["max_ways"] = SMALL["max_ways"]
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="conv4", head=head, backbone_options={"width": 8, **backbone_options},
                                    head_options=head_options), 3, 16)
    split = open_split(SplitSpec((str(sources / "wide" / "train"),)), image_size=16, channels=3, progress=False)
    sampler = MetaDatasetSampler(split.class_sizes, 0, MetaDatasetConfig(**SMALL))
    drawn = [sampler.sample(i) for i in range(4)]
    assert len({tuple(d.shots) for d in drawn}) > 1 and any(len(set(d.shots)) > 1 for d in drawn)  # unbalanced
    if model.head.meta_trainable:
        episode = split.episode(drawn[0])
        model.train()
        logits = model(episode.support, episode.support_labels, episode.query, episode.ways)
        assert logits.shape == (len(episode.query), episode.ways)
        loss = model.head.loss(logits.float(), episode.query_labels)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)
    plain = evaluate_drawn(model, split, drawn, fast=False, progress=False)
    assert plain.ways is None and len(plain.accuracies) == 4 and ((0 <= plain.accuracies) & (plain.accuracies <= 1)).all()
    assert plain.extra["shapes"]["ways"]["min"] >= 5
    if not model.head.adapts_backbone:  # the embed-once path gives the same accuracies
        fast = evaluate_drawn(model, split, drawn, progress=False)
        np.testing.assert_allclose(fast.accuracies, plain.accuracies, atol=1e-6)


def test_two_sources_train_with_saved_validation_episodes_and_evaluate_per_source(sources, tmp_path, capsys):
    run = tmp_path / "run"
    config = config_from_dict(two_source_config(sources))
    summary = train(config, run, progress=False, log=lambda line: None)
    assert summary["episodes"] == 6
    saved = (run / "val_episodes.jsonl").read_text()
    records = [json.loads(line) for line in saved.splitlines()]
    assert [r["source"] for r in records] == ["wide"] * 4 + ["small"] * 4
    assert any(len({len(s) for s in r["support"]}) > 1 for r in records)  # unbalanced validation episodes
    validations = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                   if '"val"' in line]
    assert len(validations) == 2 and set(validations[0]["sources"]) == {"wide", "small"}
    assert math.isclose(validations[0]["accuracy"], np.mean(list(validations[0]["sources"].values())))
    # resume with other sampler limits: validation keeps the saved tasks
    longer = config_from_dict(two_source_config(sources, train={"episodes": 9}, metadataset={"max_ways": 5}))
    train(longer, run, resume=True, progress=False, log=lambda line: None)
    assert (run / "val_episodes.jsonl").read_text() == saved
    # per-source test evaluation of the run, with the mean and its interval
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--episodes", "6", "--no-progress", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    per_source = result["sources"]
    assert set(per_source) == {"wide", "small"} and all(r["episodes"] == 6 for r in per_source.values())
    assert math.isclose(result["accuracy"], np.mean([r["accuracy"] for r in per_source.values()]))
    spread = [np.var(r["per_episode"], ddof=1) / 6 for r in per_source.values()]
    assert math.isclose(result["ci95"], 1.96 * math.sqrt(sum(spread)) / 2, rel_tol=1e-6)
    assert "mean" in capsys.readouterr().out
    assert main(["eval", str(run), "--ways", "3"]) == 2  # variable episodes draw their own ways
    assert "drop --ways" in capsys.readouterr().err


def test_saved_episodes_that_no_longer_fit_the_split_are_refused(sources, tmp_path):
    config = config_from_dict(two_source_config(sources))
    opened = [(s, open_source(config, s, (5, 1, 1), progress=False)) for s in phase_sources(config.data, "val")]
    path = tmp_path / "val_episodes.jsonl"
    path.write_text(json.dumps({"source": "wide", "index": 0, "classes": ["class00", "gone"], "support": [[0], [0]],
                                "query": [[1], [1]]}) + "\n")
    with pytest.raises(FewshotError, match="class 'gone' is no longer in the val split.*delete"):
        load_episodes(path, opened)
    path.write_text(json.dumps({"source": "wide", "index": 0, "classes": ["class00", "class01"],
                                "support": [[0, 40]], "query": [[1], [1]]}) + "\n")
    with pytest.raises(FewshotError, match="fewer images"):
        load_episodes(path, opened)


def test_mixture_draws_sources_by_weight_and_never_a_zero_weight_one():
    samplers = [EpisodeSampler([5] * 6, 2, 1, 1, seed=0) for _ in range(3)]
    mixture = SourceMixture(samplers, [3, 1, 0], ["a", "b", "c"], seed=4)
    counts = np.bincount([mixture.sample(i).source for i in range(4000)], minlength=3)
    assert counts[2] == 0 and abs(counts[0] / 4000 - 0.75) < 3 * math.sqrt(0.75 * 0.25 / 4000)
    for weights, message in (([1, -1, 1], "weight -1"), ([0, 0, 0], "sum to 0"), ([1, float("nan"), 1], "nan"),
                             ([1, 1], "one weight per source")):
        with pytest.raises(EpisodesError, match=message):
            SourceMixture(samplers, weights, ["a", "b", "c"])


def test_two_source_stream_is_the_same_across_workers_ranks_and_copies(sources):
    config = config_from_dict(two_source_config(sources))
    opened = [(s, open_source(config, s, (5, 1, 1), progress=False)) for s in phase_sources(config.data, "train")]
    split, sampler = episode_stream(config, opened, (5, 1, 1), seed=3)

    def stream(indices, workers):
        loader = DataLoader(EpisodeDataset(split, sampler, indices), batch_size=None, num_workers=workers)
        return [(e.source, e.class_names, e.support_labels.tolist(), e.support.sum().item()) for e in loader]

    single = stream(range(8), 0)
    assert {s for s, *_ in single} == {"wide", "small"}
    assert stream(range(8), 2) == single
    world = 2  # rank r of 2 takes episodes r, r+2, ...: together the same episodes
    ranks = [stream(range(r, 8, world), 0) for r in range(world)]
    assert [ranks[i % world][i // world] for i in range(8)] == single
    copy = pickle.loads(pickle.dumps(sampler))
    assert [copy.sample(i).source for i in range(20)] == [sampler.sample(i).source for i in range(20)]


def test_bad_multi_source_specs_are_one_line_errors(sources, tmp_path, capsys):
    few = tmp_path / "few"
    make_image_folder(few / "train", classes=4, per_class=6, size=16)
    nested = tmp_path / "nested"
    make_image_folder(nested / "train", classes=6, per_class=6, size=16, nested=True)  # 2 alphabets of 3
    cases = [
        (two_source_config(sources, data={"sources": [{"root": str(few), "split": {"train": "train"}}]}),
         "need 5 classes"),
        (two_source_config(sources, data={"sources": [{"root": str(nested), "split": {"train": "train"}}]}),
         "metadataset.hierarchy: false"),
        (two_source_config(sources, data={"sources": [{"root": str(few), "weight": 0}]}), "weights sum to 0"),
        (two_source_config(sources, data={"root": str(few)}), "data.root and data.sources are alternatives"),
        (two_source_config(sources, metadataset={"max_ways": 4}), "metadataset.max_ways (4) is below min_ways"),
        (two_source_config(sources, model={"head": "maml", "head_options": {"max_ways": 5}}),
         "head_options.max_ways=7"),
    ]
    import yaml

    for number, (config, message) in enumerate(cases):
        path = tmp_path / f"bad{number}.yaml"
        path.write_text(yaml.safe_dump(config))
        assert main(["train", str(path), "--out", str(tmp_path / f"run{number}"), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1] and err[-1].startswith("error:") and "Traceback" not in "\n".join(err)
        assert not (tmp_path / f"run{number}" / "checkpoints").exists()


def test_zero_weight_sources_are_test_only_and_the_shipped_config_loads(sources):
    config = config_from_dict(two_source_config(sources, data={"sources": [
        {"root": str(sources / "wide"), "split": {"train": "train", "test": "test"}},
        {"root": str(sources / "small"), "split": {"test": "test"}, "weight": 0}]}))
    assert [s.name for s in phase_sources(config.data, "train")] == ["wide"]
    assert [s.name for s in phase_sources(config.data, "test")] == ["wide", "small"]
    assert phase_sources(config.data, "val", required=False) == []
    from fewshot.config import load_config

    shipped = load_config(Path(__file__).parent.parent / "configs" / "metadataset-two-sources.yaml")
    assert shipped.data.protocol == "metadataset" and [s.name for s in shipped.data.sources] == ["omniglot",
                                                                                                  "tinyimagenet"]
