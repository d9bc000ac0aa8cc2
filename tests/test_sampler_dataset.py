"""Episode sampling, episode tensors, augmentation, and bad-input handling of splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import make_image_folder
from episodes import (EpisodeDataset, EpisodeSampler, EpisodesError, EpisodesWarning, SplitSpec, open_split,
                      train_augmentation)


def test_episode_is_a_function_of_seed_and_index():
    sampler = EpisodeSampler([12] * 30, ways=5, shots=2, queries=3, seed=7)
    forward = [sampler.sample(i) for i in range(20)]
    backward = [sampler.sample(i) for i in reversed(range(20))][::-1]
    for a, b in zip(forward, backward):
        assert np.array_equal(a.classes, b.classes) and np.array_equal(a.support, b.support)
        assert np.array_equal(a.query, b.query)
    other_seed = EpisodeSampler([12] * 30, ways=5, shots=2, queries=3, seed=8).sample(0)
    assert not np.array_equal(other_seed.classes, forward[0].classes) or not np.array_equal(
        other_seed.support, forward[0].support)


def test_support_and_query_disjoint_and_classes_distinct():
    sampler = EpisodeSampler([7] * 10, ways=10, shots=3, queries=4, seed=0)
    for i in range(50):
        drawn = sampler.sample(i)
        assert len(set(drawn.classes.tolist())) == 10
        for s, q in zip(drawn.support, drawn.query):
            assert not set(s.tolist()) & set(q.tolist())
            assert len(set(s.tolist()) | set(q.tolist())) == 7


def test_label_order_is_random():
    sampler = EpisodeSampler([5] * 5, ways=5, shots=1, queries=1, seed=0)
    orders = {tuple(sampler.sample(i).classes.tolist()) for i in range(30)}
    assert len(orders) > 10


def test_episode_tensors(image_folder):
    split = open_split(SplitSpec((str(image_folder),)), image_size=12, channels=3, min_images=5)
    episode = split.episode(EpisodeSampler(split.class_sizes, 4, 2, 3, seed=1).sample(0))
    assert episode.support.shape == (8, 3, 12, 12) and episode.support.dtype == torch.uint8
    assert episode.query.shape == (12, 3, 12, 12)
    assert episode.support_labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert episode.query_labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert len(set(episode.class_names)) == 4 and set(episode.class_names) <= set(split.class_names)


def test_same_episodes_with_any_worker_count(image_folder):
    split = open_split(SplitSpec((str(image_folder),)), image_size=12, channels=3)
    sampler = EpisodeSampler(split.class_sizes, 3, 2, 2, seed=3)
    augment = train_augmentation("standard", 12, 3)
    dataset = EpisodeDataset(split, sampler, 6, transform=augment)
    single = list(DataLoader(dataset, batch_size=None, num_workers=0))
    multi = list(DataLoader(dataset, batch_size=None, num_workers=2))
    shuffled = [dataset[i] for i in (5, 3, 1, 0, 2, 4)]
    shuffled.sort(key=lambda e: e.index)
    for a, b, c in zip(single, multi, shuffled):
        assert a.class_names == b.class_names == c.class_names
        assert torch.equal(a.support, b.support) and torch.equal(a.support, c.support)
        assert torch.equal(a.query, b.query)


def test_augmentation_changes_images_keeps_labels(image_folder):
    split = open_split(SplitSpec((str(image_folder),)), image_size=16, channels=3)
    sampler = EpisodeSampler(split.class_sizes, 3, 2, 2, seed=0)
    plain = EpisodeDataset(split, sampler, 4)[1]
    for preset in ("flip", "standard", "strong", "rotate", "crop", "jitter", "erase", "noise", ["noise", "flip"]):
        augmented = EpisodeDataset(split, sampler, 4, transform=train_augmentation(preset, 16, 3))[1]
        assert augmented.support.shape == plain.support.shape and augmented.support.dtype == torch.uint8
        assert torch.equal(augmented.support_labels, plain.support_labels)
        assert augmented.class_names == plain.class_names
        assert not torch.equal(torch.cat([augmented.support, augmented.query]), torch.cat([plain.support, plain.query]))


def test_grayscale_and_rgb_explicit(tmp_path):
    make_image_folder(tmp_path / "bits", classes=2, per_class=3, mode="1", size=20)
    make_image_folder(tmp_path / "gray", classes=2, per_class=3, mode="L", ext="jpg", size=20)
    bits = open_split(SplitSpec((str(tmp_path / "bits"),)), image_size=10, channels=1)
    assert bits.pixels.shape == (6, 1, 10, 10)
    gray_as_rgb = open_split(SplitSpec((str(tmp_path / "gray"),)), image_size=10, channels=3)
    assert gray_as_rgb.pixels.shape == (6, 3, 10, 10)
    pixels = np.asarray(gray_as_rgb.pixels)
    assert np.array_equal(pixels[:, 0], pixels[:, 1]) and np.array_equal(pixels[:, 1], pixels[:, 2])


def test_small_classes_left_out_with_one_warning(image_folder):
    for extra in list((image_folder / "class01").iterdir())[3:]:
        extra.unlink()
    for extra in list((image_folder / "class04").iterdir())[2:]:
        extra.unlink()
    with pytest.warns(EpisodesWarning, match=r"left out 2 classes .*class01 \(3\), class04 \(2\)") as record:
        split = open_split(SplitSpec((str(image_folder),)), image_size=8, channels=3, min_images=5, ways=4)
    assert len(record) == 1
    assert "class01" not in split.class_names and len(split) == 4


def test_too_few_classes_after_filtering(image_folder):
    for name in ("class00", "class01", "class02"):
        for extra in list((image_folder / name).iterdir())[2:]:
            extra.unlink()
    with pytest.warns(EpisodesWarning):
        with pytest.raises(EpisodesError, match="5-way episodes need 5 classes with at least 4 images.*only 3 of 6"):
            open_split(SplitSpec((str(image_folder),)), image_size=8, channels=3, min_images=4, ways=5)


def test_ways_larger_than_classes():
    with pytest.raises(EpisodesError, match="ways=8 but only 6 classes"):
        EpisodeSampler([10] * 6, ways=8, shots=1, queries=1)


def test_corrupt_image_named_or_skipped(image_folder):
    bad = image_folder / "class02" / "img004.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(EpisodesError, match=r"cannot decode image .*class02/img004.png.*--skip-corrupt"):
        open_split(SplitSpec((str(image_folder),)), image_size=8, channels=3, workers=1)
    with pytest.warns(EpisodesWarning, match="skipped 1 corrupt images: img004.png"):
        split = open_split(SplitSpec((str(image_folder),)), image_size=8, channels=3, skip_corrupt=True, workers=1)
    assert split.class_sizes[2] == 9
    assert bad not in split.paths(2, range(9))


def test_rotated_classes_in_episodes(tmp_path):
    make_image_folder(tmp_path / "omni", classes=2, nested=True, mode="L", per_class=6)
    listing = tmp_path / "list.txt"
    listing.write_text("alpha0/char00/rot000\nalpha0/char00/rot270\nalpha1/char01/rot000\nalpha1/char01/rot180\n")
    split = open_split(SplitSpec((str(tmp_path / "omni"),), classes=str(listing)), image_size=16, channels=1)
    sampler = EpisodeSampler(split.class_sizes, 4, 2, 3, seed=0)
    for index in range(5):
        drawn = sampler.sample(index)
        episode = split.episode(drawn)
        for label, class_id in enumerate(drawn.classes):
            expected_support = split.images(class_id, drawn.support[label])
            expected_query = split.images(class_id, drawn.query[label])
            assert torch.equal(episode.support[label * 2:label * 2 + 2], expected_support)
            assert torch.equal(episode.query[label * 3:label * 3 + 3], expected_query)
            upright = np.asarray(split.pixels)[split.class_rows[class_id][drawn.support[label]]]
            turns = split.rotations[class_id] // 90
            assert np.array_equal(np.rot90(upright, k=turns, axes=(2, 3)), expected_support.numpy())


def test_dataset_over_an_index_sequence(image_folder):
    split = open_split(SplitSpec((str(image_folder),)), image_size=8, channels=3)
    sampler = EpisodeSampler(split.class_sizes, 3, 1, 1, seed=2)
    every = EpisodeDataset(split, sampler, 10)
    odd = EpisodeDataset(split, sampler, range(1, 10, 2))
    assert len(odd) == 5 and [e.index for e in odd] == [1, 3, 5, 7, 9]
    assert all(torch.equal(odd[i].support, every[2 * i + 1].support) for i in range(5))
    with pytest.raises(IndexError):
        odd[5]


@pytest.mark.parametrize("operation", ["flip", "rotate", "crop", "jitter", "erase", "noise"])
def test_each_augmentation_changes_images_and_keeps_shape(operation):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (16, 3, 20, 20), dtype=torch.uint8, generator=generator)
    transform = train_augmentation([operation], 20, 3)
    out = torch.stack([transform(image) for image in images])
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert not torch.equal(out, images)
    gray = torch.randint(0, 256, (4, 1, 20, 20), dtype=torch.uint8, generator=generator)
    assert train_augmentation([operation], 20, 1)(gray[0]).shape == (1, 20, 20)


def test_unknown_augmentation_is_a_config_error():
    from fewshot.config import load_config
    from fewshot.errors import FewshotError

    assert load_config(None, ["data.augment=[flip, noise]"]).data.augment == ["flip", "noise"]
    with pytest.raises(FewshotError, match="data.augment: 'blur' is not a preset"):
        load_config(None, ["data.augment=blur"])
