"""Realistic query sets (#28): Dirichlet-sampled class proportions (Veilleux et al. 2021), reproducible by seed,
through the sampler, ``fewshot episodes``, ``fewshot eval``, saved validation episodes and episode tensors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import make_image_folder
from episodes import DirichletQuerySampler, EpisodesError, query_counts
from episodes.sampler import dirichlet_counts
from fewshot.cli import main
from fewshot.config import config_from_dict
from fewshot.errors import FewshotError


def test_dirichlet_counts_keep_the_total_respect_capacity_and_follow_the_concentration():
    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = dirichlet_counts(rng, 5, 75, 2.0, np.full(5, 30))
        assert counts.sum() == 75 and counts.max() <= 30 and counts.min() >= 0
    spread = lambda alpha: np.mean([dirichlet_counts(rng, 5, 75, alpha, np.full(5, 75)).std()  # noqa: E731
                                    for _ in range(300)])
    assert spread(0.5) > spread(2.0) > spread(50.0) and spread(1000.0) < 1.0  # large A: nearly balanced
    capped = dirichlet_counts(np.random.default_rng(1), 3, 30, 0.1, np.array([10, 10, 10]))
    assert capped.tolist() == [10, 10, 10], "overflow goes to the classes with room"


def test_the_sampler_is_reproducible_and_never_shares_an_image():
    sampler = DirichletQuerySampler([20] * 10, 5, 2, 6, alpha=2.0, seed=3)
    first, again = sampler.sample(7), DirichletQuerySampler([20] * 10, 5, 2, 6, alpha=2.0, seed=3).sample(7)
    assert [q.tolist() for q in first.query] == [q.tolist() for q in again.query]
    assert query_counts(first).sum() == 30 and len(set(query_counts(first))) > 1
    for support, query in zip(first.support, first.query):
        assert len(support) == 2 and not set(support) & set(query)
    with pytest.raises(EpisodesError, match="concentration"):
        DirichletQuerySampler([20] * 10, 5, 2, 6, alpha=0.0)


def test_episodes_and_eval_commands_take_dirichlet_queries(tmp_path, capsys):
    data = tmp_path / "data"
    make_image_folder(data, classes=8, per_class=20, size=16, noise=10.0)
    assert main(["episodes", "--data", str(data), "--ways", "4", "--shots", "1", "--queries", "5", "--episodes", "3",
                 "--query-sampling", "dirichlet:1"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(sum(len(q) for q in r["query"]) == 20 for r in records)
    assert any(len({len(q) for q in r["query"]}) > 1 for r in records)
    out = tmp_path / "eval.json"
    model = ["--backbone", "conv4", "--head", "pt_map", "--image-size", "16", "--backbone-option", "width=8",
             "--data", str(data), "--ways", "4", "--shots", "1", "--queries", "5", "--episodes", "10", "--no-progress"]
    assert main(["eval", *model, "--query-sampling", "dirichlet:2", "--json", str(out)]) == 0
    assert "[queries per class: dirichlet:2]" in capsys.readouterr().out
    found = json.loads(out.read_text())
    assert found["query_sampling"] == "dirichlet:2" and found["shapes"]["queries"]["max"] > 5
    with pytest.raises(SystemExit):
        main(["eval", *model, "--query-sampling", "dirichlet:-1"])
    assert main(["eval", *model, "--query-sampling", "dirichlet:2", "--open-set", "2"]) == 2


def test_imbalanced_validation_episodes_are_saved_read_back_and_gathered(tmp_path):
    from fewshot.evaluation.data import episode_sampler, open_source, phase_sources
    from fewshot.evaluation.episode_sets import load_episodes, save_episodes

    root = tmp_path / "fs"
    make_image_folder(root / "val", classes=5, per_class=12, size=16, seed=2)
    raw = {"data": {"root": str(root), "split": {"val": "val"}, "image_size": 16, "query_sampling": "dirichlet:1"},
           "model": {"backbone": "conv4", "head": "protonet"}, "eval": {"ways": 3, "shots": 2, "queries": 4}}
    config = config_from_dict(raw)
    opened = [(s, open_source(config, s, (3, 2, 4), False)) for s in phase_sources(config.data, "val")]
    split = opened[0][1]
    drawn = [episode_sampler(config, split, (3, 2, 4), 0).sample(i) for i in range(4)]
    save_episodes(tmp_path / "val.jsonl", [("", split, drawn)])
    loaded = load_episodes(tmp_path / "val.jsonl", opened)[0][2]
    assert [query_counts(d).tolist() for d in loaded] == [query_counts(d).tolist() for d in drawn]
    episode = split.episode(drawn[0])
    counts = torch.as_tensor(query_counts(drawn[0]))
    assert len(episode.query) == 12 and torch.equal(episode.query_labels, torch.arange(3).repeat_interleave(counts))
    raw["data"]["query_sampling"] = "skewed"
    with pytest.raises(FewshotError, match="data.query_sampling must be balanced or dirichlet:A"):
        config_from_dict(raw)
