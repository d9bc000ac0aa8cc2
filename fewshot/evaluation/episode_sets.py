"""Drawn episodes per source, and fixed validation episodes saved once in the run directory.

Validation must score every checkpoint on the same tasks, or model selection follows the noise of the
draw. The episodes are drawn the first time a run validates and written to ``val_episodes.jsonl`` (one JSON
line per episode: source, index, class names, support and query positions within each class); a resumed
run reads them back, so the tasks stay the same even if the sampler or its settings change later.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from episodes import EpisodeIndices, FewShotSplit, VariableEpisodeIndices

from ..atomic import atomic_write_text
from ..config import Config
from ..errors import FewshotError
from .data import Shape, Source, check_head_ways, episode_sampler

Drawn = EpisodeIndices | VariableEpisodeIndices
SourceEpisodes = list[tuple[str, FewShotSplit, list]]
"""``[(source name, split, drawn episodes)]``; the name is '' for a config with a single dataset."""


def draw_episodes(config: Config, opened: list[tuple[Source, FewShotSplit]], shape: Shape, episodes: int,
                  seed: int, head=None) -> SourceEpisodes:
    """``episodes`` episodes of each source (``0..episodes-1`` of ``seed``), by the config's protocol; with
    ``head``, first check that it can take episodes of that many ways."""
    drawn = []
    for source, split in opened:
        sampler = episode_sampler(config, split, shape, seed, source.name or source.spec.describe())
        if head is not None:
            check_head_ways(head, sampler, source.name or source.spec.describe())
        drawn.append((source.name, split, [sampler.sample(i) for i in range(episodes)]))
    return drawn


def episode_record(source: str, split: FewShotSplit, drawn: Drawn) -> dict:
    return {"source": source, "index": int(drawn.index), "classes": [split.class_names[c] for c in drawn.classes],
            "support": [[int(p) for p in positions] for positions in drawn.support],
            "query": [[int(p) for p in positions] for positions in drawn.query]}


def save_episodes(path: Path, sets: SourceEpisodes) -> None:
    """Write the episodes as JSON lines, atomically."""
    lines = [json.dumps(episode_record(name, split, d)) for name, split, drawn in sets for d in drawn]
    atomic_write_text(path, "\n".join(lines) + "\n")


def load_episodes(path: Path, opened: list[tuple[Source, FewShotSplit]]) -> SourceEpisodes:
    """Read episodes saved by :func:`save_episodes` against today's splits; a class or image position the split
    no longer has is a one-line error (delete the file to draw new episodes)."""
    splits = {source.name: split for source, split in opened}
    found: dict[str, list] = {name: [] for name in splits}
    advice = f"delete {path} to draw new validation episodes (model selection then starts afresh)"
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            name, classes = record["source"], record["classes"]
            support, query = record["support"], record["query"]
        except (ValueError, KeyError, TypeError):
            raise FewshotError(f"{path} line {number} is not a saved episode: {advice}") from None
        if name not in splits:
            raise FewshotError(f"{path} names source '{name}', which the config no longer has: {advice}")
        split = splits[name]
        ids = {class_name: i for i, class_name in enumerate(split.class_names)}
        missing = [c for c in classes if c not in ids]
        if missing:
            raise FewshotError(f"{path}: class '{missing[0]}' is no longer in the val split of "
                               f"{name or 'the data'}: {advice}")
        class_ids = np.array([ids[c] for c in classes])
        positions = [np.asarray(p, dtype=np.int64) for p in support] + [np.asarray(p, dtype=np.int64) for p in query]
        if any(len(p) and (p.min() < 0 or p.max() >= split.class_sizes[c])
               for p, c in zip(positions, np.concatenate([class_ids, class_ids]))):
            raise FewshotError(f"{path} line {number}: a class of the val split now has fewer images: {advice}")
        support_arrays = tuple(np.asarray(p, dtype=np.int64) for p in support)
        query_arrays = tuple(np.asarray(p, dtype=np.int64) for p in query)
        same_queries = len({len(q) for q in query_arrays}) == 1
        query_array = np.stack(query_arrays) if same_queries else query_arrays
        if len({len(s) for s in support_arrays}) == 1 and same_queries:  # one shape: the batched path can take it
            found[name].append(EpisodeIndices(record["index"], class_ids, np.stack(support_arrays), query_array))
        else:
            found[name].append(VariableEpisodeIndices(record["index"], class_ids, support_arrays, query_array))
    return [(name, splits[name], drawn) for name, drawn in found.items() if drawn]


def validation_episodes(config: Config, opened: list[tuple[Source, FewShotSplit]], shape: Shape, episodes: int,
                        seed: int, path: Path | None) -> SourceEpisodes:
    """The run's validation episodes: read from ``path`` when it exists, else drawn and saved there."""
    if path is not None and path.exists():
        return load_episodes(path, opened)
    sets = draw_episodes(config, opened, shape, episodes, seed)
    if path is not None:
        save_episodes(path, sets)
    return sets
