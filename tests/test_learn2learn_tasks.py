"""learn2learn task pipelines as our episodes, evaluated by our evaluator with its intervals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_image_folder
from episodes import EpisodesError, EpisodeSampler, SplitSpec, episodes_from_taskset, open_split, task_to_episode
from fewshot.config import config_from_dict
from fewshot.evaluation.episodic import evaluate, evaluate_episodes
from fewshot.model.network import build_model


def test_task_is_split_into_support_and_queries_per_label():
    images = torch.arange(12, dtype=torch.uint8).reshape(12, 1, 1, 1)
    labels = torch.tensor([7, 3, 7, 3, 9, 9, 7, 3, 9, 7, 3, 9])
    episode = task_to_episode(images, labels, shots=1)
    assert episode.class_names == ["7", "3", "9"]
    assert episode.support.flatten().tolist() == [0, 1, 4]
    assert episode.support_labels.tolist() == [0, 1, 2]
    assert episode.query.flatten().tolist() == [2, 6, 9, 3, 7, 10, 5, 8, 11]
    assert episode.query_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    floats = task_to_episode(images.float() / 255, labels, shots=2, to_uint8=True)
    assert floats.support.dtype == torch.uint8 and floats.support.flatten().tolist() == [0, 2, 1, 3, 4, 5]


def test_uneven_or_too_small_tasks_are_clear_errors():
    images = torch.zeros(5, 1, 2, 2)
    with pytest.raises(EpisodesError, match="same number of images"):
        task_to_episode(images, torch.tensor([0, 0, 0, 1, 1]), shots=1)
    with pytest.raises(EpisodesError, match="more than shots=2"):
        task_to_episode(images[:4], torch.tensor([0, 0, 1, 1]), shots=2)


class SplitTasks:
    """A learn2learn-style task set (``sample()`` -> images, labels) over our split's episodes."""

    def __init__(self, split, sampler):
        self.split, self.sampler, self.next = split, sampler, 0

    def sample(self):
        drawn = self.sampler.sample(self.next)
        self.next += 1
        images = torch.cat([self.split.images(c, np.concatenate([s, q]))
                            for c, s, q in zip(drawn.classes, drawn.support, drawn.query)])
        labels = torch.from_numpy(np.repeat(drawn.classes, self.sampler.shots + self.sampler.queries))
        return images, labels


def test_evaluating_taskset_episodes_equals_evaluating_the_same_episodes_of_the_split(tmp_path):
    make_image_folder(tmp_path / "data", classes=6, per_class=12, size=16, seed=2)
    split = open_split(SplitSpec((str(tmp_path / "data"),)), image_size=16, channels=3,
                       cache_dir=tmp_path / "cache", progress=False)
    config = config_from_dict({}, ["model.backbone=conv4", "model.backbone_options.width=8", "model.head=protonet"])
    torch.manual_seed(0)
    model = build_model(config.model, 3, 16)
    tasks = SplitTasks(split, EpisodeSampler(split.class_sizes, 4, 2, 3, seed=9))
    ours = evaluate_episodes(model, episodes_from_taskset(tasks, shots=2, count=30), progress=False)
    reference = evaluate(model, split, 4, 2, 3, episodes=30, seed=9, fast=False, progress=False)
    assert (ours.ways, ours.shots, ours.queries) == (4, 2, 3)
    assert np.array_equal(ours.accuracies, reference.accuracies)
    assert ours.ci95 == pytest.approx(reference.ci95)


def test_a_real_learn2learn_taskdataset_evaluates_with_our_evaluator():
    l2l = pytest.importorskip("learn2learn", reason="learn2learn is optional and not installed (build it with "
                                                    "benchmarks/build_learn2learn.sh)")
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(8 * 10, 3, 16, 16, generator=generator)
    labels = torch.arange(8).repeat_interleave(10)
    dataset = l2l.data.MetaDataset(torch.utils.data.TensorDataset(images, labels))
    transforms = [l2l.data.transforms.NWays(dataset, 5), l2l.data.transforms.KShots(dataset, 1 + 4),
                  l2l.data.transforms.LoadData(dataset), l2l.data.transforms.RemapLabels(dataset)]
    taskset = l2l.data.TaskDataset(dataset, task_transforms=transforms, num_tasks=20)
    config = config_from_dict({}, ["model.backbone=conv4", "model.backbone_options.width=8", "model.head=protonet"])
    model = build_model(config.model, 3, 16)
    result = evaluate_episodes(model, episodes_from_taskset(taskset, shots=1, count=20, to_uint8=True),
                               progress=False)
    assert (result.ways, result.shots, result.queries) == (5, 1, 4) and len(result.accuracies) == 20
    assert 0 <= result.accuracy <= 100 and result.ci95 >= 0
