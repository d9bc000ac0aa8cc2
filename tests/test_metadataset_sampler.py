"""Meta-Dataset's variable-episode sampler against its rules, over many episodes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from episodes import EpisodesError
from episodes.metadataset import MetaDatasetConfig, MetaDatasetSampler, class_parent, parents_of


def check_rules(episode, sizes: np.ndarray, cfg: MetaDatasetConfig, available: int) -> None:
    ways = len(episode.classes)
    assert cfg.min_ways <= ways <= min(cfg.max_ways, available)
    assert len(set(episode.classes.tolist())) == ways
    n = sizes[episode.classes]
    q = episode.query.shape[1]
    assert q == min(cfg.max_queries, int((n // 2).min())) and q >= 1
    shots = episode.shots
    assert (shots >= 1).all() and (shots <= n - q).all()
    assert shots.sum() <= cfg.max_support_size
    assert shots.sum() <= (np.minimum(cfg.max_support_per_class, n - q) + 1).sum()
    for c, s, qq in zip(episode.classes, episode.support, episode.query):
        assert len(set(s.tolist()) | set(qq.tolist())) == len(s) + len(qq)  # support and query never share
        assert s.min() >= 0 and max(s.max(), qq.max()) < sizes[c]


def test_rules_hold_over_many_episodes():
    rng = np.random.default_rng(0)
    sizes = rng.integers(2, 600, size=120)  # from 2 images (one query, one support) to 600
    cfg = MetaDatasetConfig()
    sampler = MetaDatasetSampler(sizes, seed=3)
    ways, totals, unbalanced = [], [], 0
    for index in range(2000):
        episode = sampler.sample(index)
        check_rules(episode, sizes, cfg, len(sizes))
        ways.append(len(episode.classes))
        totals.append(int(episode.shots.sum()))
        unbalanced += len(set(episode.shots.tolist())) > 1
    ways = np.array(ways)
    # ways uniform on 5..50: every value seen, mean near 27.5, each about 1/46 of the episodes
    assert set(ways.tolist()) == set(range(5, 51))
    assert abs(ways.mean() - 27.5) < 1.0
    assert np.bincount(ways)[5:].max() < 2000 / 46 * 1.8
    assert 450 < max(totals) <= 500  # near the cap with big classes (flooring each share loses < 1 image)
    assert unbalanced > 1900  # support sets are unbalanced, as in Meta-Dataset


def test_small_split_caps_ways_and_queries():
    sizes = np.array([6, 4, 20, 9, 3, 7])
    sampler = MetaDatasetSampler(sizes, seed=0)
    for index in range(300):
        episode = sampler.sample(index)
        check_rules(episode, sizes, MetaDatasetConfig(), len(sizes))
        assert episode.query.shape[1] <= int((sizes[episode.classes] // 2).min())


def test_hierarchy_keeps_each_episode_in_one_parent():
    names = [f"alphabet{a}/character{c:02d}" for a, count in enumerate([3, 12, 25, 8]) for c in range(count)]
    names += ["alphabet1/character00/rot090", "alphabet1/character00/rot180"]
    parents = parents_of(names)
    assert class_parent("alphabet1/character00/rot090") == "alphabet1" and class_parent("flat") is None
    sizes = np.full(len(names), 20)
    sampler = MetaDatasetSampler(sizes, seed=1, parents=parents)
    seen_parents = set()
    for index in range(500):
        episode = sampler.sample(index)
        chosen = {parents[c] for c in episode.classes}
        assert len(chosen) == 1
        seen_parents |= chosen
        group_size = sum(1 for p in parents if p == next(iter(chosen)))
        assert len(episode.classes) <= group_size
    assert len(seen_parents) == 3  # the 3-class alphabet is too small for 5 ways and never drawn
    flat = MetaDatasetSampler(sizes, seed=1, parents=parents, config=MetaDatasetConfig(hierarchy=False))
    assert any(len({parents[c] for c in flat.sample(i).classes}) > 1 for i in range(20))
    assert parents_of(["a", "b/c"]) is None  # a class without a parent: no hierarchy


def test_deterministic_per_seed_and_index_in_any_order_or_process():
    sizes = np.arange(2, 80)
    one, two = MetaDatasetSampler(sizes, seed=7), MetaDatasetSampler(sizes, seed=7)
    forward = [one.sample(i) for i in range(50)]
    backward = [two.sample(i) for i in reversed(range(50))][::-1]
    copied = pickle.loads(pickle.dumps(one))  # what a DataLoader worker or another rank holds
    for a, b, i in zip(forward, backward, range(50)):
        c = copied.sample(i)
        assert np.array_equal(a.classes, b.classes) and np.array_equal(a.classes, c.classes)
        assert all(np.array_equal(x, y) for x, y in zip(a.support, c.support)) and np.array_equal(a.query, c.query)
    other = MetaDatasetSampler(sizes, seed=8).sample(0)
    assert not np.array_equal(other.classes[:5], forward[0].classes[:5]) or len(other.classes) != len(forward[0].classes)


@pytest.mark.parametrize("sizes, parents, config, message", [
    ([10, 10, 10, 10], None, MetaDatasetConfig(), "4 classes"),
    ([10, 1, 10, 10, 10, 10], None, MetaDatasetConfig(), "fewer than 2 images"),
    ([10] * 8, [0, 0, 0, 0, 1, 1, 1, 1], MetaDatasetConfig(), "no parent folder holds min_ways=5"),
])
def test_bad_specs_are_one_line_errors(sizes, parents, config, message):
    with pytest.raises(EpisodesError, match=message) as caught:
        MetaDatasetSampler(sizes, parents=parents, config=config)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("kwargs, key", [({"min_ways": 1}, "min_ways"), ({"max_ways": 3}, "max_ways"),
                                         ({"max_support_size": 10}, "max_support_size"),
                                         ({"max_queries": 0}, "max_queries")])
def test_config_values_are_checked(kwargs, key):
    with pytest.raises(EpisodesError, match=key):
        MetaDatasetConfig(**kwargs)


def test_cli_prints_variable_episodes(tmp_path, capsys):
    import json

    from conftest import make_image_folder
    from fewshot.cli import main

    make_image_folder(tmp_path / "data", classes=12, per_class=9, nested=True)
    assert main(["episodes", "--data", str(tmp_path / "data"), "--protocol", "metadataset", "--episodes", "30"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 30
    for record in records:
        ways = len(record["classes"])
        assert 5 <= ways <= 6 and len(record["support"]) == ways == len(record["query"])
        assert len({name.split("/")[0] for name in record["classes"]}) == 1  # one alphabet per episode
        assert len({len(q) for q in record["query"]}) == 1 and len(record["query"][0]) == 4  # min(10, 9 // 2)
        assert all(1 <= len(s) <= 5 for s in record["support"])
    assert len({tuple(len(s) for s in r["support"]) for r in records}) > 5  # shots vary
    assert main(["episodes", "--data", str(tmp_path / "data"), "--protocol", "metadataset", "--ways", "5"]) == 2
    assert "drop --ways" in capsys.readouterr().err
