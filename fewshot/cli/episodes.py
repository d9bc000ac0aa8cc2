"""``fewshot episodes``: print episodes as JSON lines."""

from __future__ import annotations

import argparse
import sys

from .. import json_io
from ..errors import FewshotError
from .common import (NON_NEGATIVE, POSITIVE, QUERY_SAMPLING_HELP, add_data_arguments, int_at_least, query_sampling,
                     split_spec_from_args)


NAME = "episodes"
PARSER = dict(
    help="print N-way K-shot episodes as JSON lines (freeze and share evaluation episodes)",
    description="Print one JSON object per episode: {index, classes, support, query}, where support and "
                "query hold one list of image paths per class, in label order (with --protocol metadataset "
                "the support lists differ in length). Episode i of a seed is always the same, so the output "
                "can be frozen and shared, or fed to other frameworks.",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--protocol", choices=("fixed", "metadataset"), default="fixed",
                          help="fixed (default): N-way K-shot episodes; metadataset: Meta-Dataset's variable ways "
                               "(5-50), unbalanced shots and queries per episode, all classes of an episode from one "
                               "parent folder where classes have one (e.g. Omniglot's alphabets)")
    parser.add_argument("--ways", type=int_at_least(2), metavar="N", help="classes per episode (fixed protocol)")
    parser.add_argument("--shots", type=POSITIVE, metavar="K", help="support images per class (fixed protocol)")
    parser.add_argument("--queries", type=NON_NEGATIVE, metavar="Q",
                          help="query images per class (fixed protocol; default 15)")
    parser.add_argument("--query-sampling", type=query_sampling, default="balanced", metavar="balanced|dirichlet:A",
                        help=QUERY_SAMPLING_HELP)
    parser.add_argument("--episodes", type=POSITIVE, default=600, metavar="E", help="number of episodes (default 600)")
    parser.add_argument("--seed", type=NON_NEGATIVE, default=0, metavar="S", help="episode seed (default 0)")
    parser.add_argument("--start", type=NON_NEGATIVE, default=0, metavar="I", help="index of the first episode (default 0)")


def run(args: argparse.Namespace) -> int:
    """Print episodes as JSON lines: image paths only, nothing is decoded."""
    from episodes import DirichletQuerySampler, EpisodeSampler, drop_small_classes, resolve_split

    from ..config import parse_query_sampling

    spec = split_spec_from_args(args)
    if args.protocol == "metadataset":
        from episodes.metadataset import MetaDatasetConfig, MetaDatasetSampler, parents_of

        given = [flag for flag, value in (("--ways", args.ways), ("--shots", args.shots), ("--queries", args.queries),
                                          ("--query-sampling", args.query_sampling != "balanced" or None))
                 if value is not None]
        if given:
            raise FewshotError(f"--protocol metadataset draws ways, shots and queries per episode: drop {', '.join(given)}")
        classes = drop_small_classes(resolve_split(spec), 2, None, spec.describe())
        sampler = MetaDatasetSampler([len(c) for c in classes], args.seed, MetaDatasetConfig(),
                                     parents_of([c.name for c in classes]), spec.describe())
    else:
        if args.ways is None or args.shots is None:
            raise FewshotError("give --ways N and --shots K (or --protocol metadataset for variable episodes)")
        queries = 15 if args.queries is None else args.queries
        classes = drop_small_classes(resolve_split(spec), args.shots + queries, args.ways, spec.describe())
        alpha = parse_query_sampling(args.query_sampling, "--query-sampling")
        sizes = [len(c) for c in classes]
        sampler = (EpisodeSampler(sizes, args.ways, args.shots, queries, args.seed) if alpha is None
                   else DirichletQuerySampler(sizes, args.ways, args.shots, queries, alpha, args.seed))
    out = sys.stdout
    for index in range(args.start, args.start + args.episodes):
        drawn = sampler.sample(index)
        record = {
            "index": index,
            "classes": [classes[c].name for c in drawn.classes],
            "support": [[str(classes[c].files[p]) for p in pos] for c, pos in zip(drawn.classes, drawn.support)],
            "query": [[str(classes[c].files[p]) for p in pos] for c, pos in zip(drawn.classes, drawn.query)],
        }
        out.write(json_io.dumps(record) + "\n")
    out.flush()
    return 0
