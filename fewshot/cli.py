"""The ``fewshot`` command line: ``episodes``, ``glyphs``, ``train``, ``eval``, ``predict``, ``demo``.

User errors (:class:`FewshotError`, :class:`episodes.EpisodesError`) print one line, ``error: ...``,
and exit with status 2; warnings print one line each, ``warning: ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Sequence

from episodes import EpisodesError, EpisodeSampler, SplitSpec, drop_small_classes, resolve_split

from .errors import FewshotError


def _one_line_warnings() -> None:
    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show


def add_data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The flags that name a split: ``--data``, ``--split``, ``--classes``, ``--csv``, ``--images``."""
    group = parser.add_argument_group("data")
    group.add_argument("--data", action="append", metavar="DIR", required=False, default=None,
                       help="root folder of class folders; repeat to merge roots (e.g. Omniglot's "
                            "images_background and images_evaluation)" + (" [required unless --csv]" if required else ""))
    group.add_argument("--split", metavar="NAME", help="use the subfolder NAME of each root (train / val / test)")
    group.add_argument("--classes", metavar="FILE",
                       help="class-list file: one class path per line, relative to the roots; a trailing "
                            "/rotDDD rotates that class's images by DDD degrees (Vinyals Omniglot lists)")
    group.add_argument("--csv", metavar="FILE", help="miniImageNet-style CSV split (filename,label rows); needs --images")
    group.add_argument("--images", metavar="DIR", help="folder holding the images named in --csv")


def split_spec_from_args(args: argparse.Namespace) -> SplitSpec:
    """A :class:`SplitSpec` from the data flags."""
    if not args.data and not args.csv:
        raise FewshotError("give the data: --data DIR (repeatable), or --csv FILE --images DIR")
    return SplitSpec(tuple(args.data or ()), split=args.split, classes=args.classes, csv=args.csv, images=args.images)


def cmd_episodes(args: argparse.Namespace) -> int:
    """Print episodes as JSON lines: image paths only, nothing is decoded."""
    spec = split_spec_from_args(args)
    classes = drop_small_classes(resolve_split(spec), args.shots + args.queries, args.ways, spec.describe())
    sampler = EpisodeSampler([len(c) for c in classes], args.ways, args.shots, args.queries, args.seed)
    out = sys.stdout
    for index in range(args.start, args.start + args.episodes):
        drawn = sampler.sample(index)
        record = {
            "index": index,
            "classes": [classes[c].name for c in drawn.classes],
            "support": [[str(classes[c].files[p]) for p in pos] for c, pos in zip(drawn.classes, drawn.support)],
            "query": [[str(classes[c].files[p]) for p in pos] for c, pos in zip(drawn.classes, drawn.query)],
        }
        out.write(json.dumps(record) + "\n")
    out.flush()
    return 0


def cmd_glyphs(args: argparse.Namespace) -> int:
    """Write the generated glyph dataset (train / val / test class folders)."""
    from episodes.synthetic import make_glyph_dataset

    root = make_glyph_dataset(args.out, classes=(args.train_classes, args.val_classes, args.test_classes),
                              per_class=args.per_class, size=args.size, seed=args.seed)
    print(f"wrote {sum((args.train_classes, args.val_classes, args.test_classes))} glyph classes to {root} "
          "(subfolders train, val, test)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fewshot",
        description="Few-shot image classification: sample episodes, meta-train, evaluate with a 95%% "
                    "confidence interval, and classify new classes from a few support images.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('fewshot').__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    episodes = commands.add_parser(
        "episodes", help="print N-way K-shot episodes as JSON lines (freeze and share evaluation episodes)",
        description="Print one JSON object per episode: {index, classes, support, query}, where support and "
                    "query hold one list of image paths per class, in label order. Episode i of a seed is "
                    "always the same, so the output can be frozen and shared, or fed to other frameworks.",
    )
    add_data_arguments(episodes)
    episodes.add_argument("--ways", type=int, required=True, metavar="N", help="classes per episode")
    episodes.add_argument("--shots", type=int, required=True, metavar="K", help="support images per class")
    episodes.add_argument("--queries", type=int, default=15, metavar="Q", help="query images per class (default 15)")
    episodes.add_argument("--episodes", type=int, default=600, metavar="E", help="number of episodes (default 600)")
    episodes.add_argument("--seed", type=int, default=0, metavar="S", help="episode seed (default 0)")
    episodes.add_argument("--start", type=int, default=0, metavar="I", help="index of the first episode (default 0)")
    episodes.set_defaults(handler=cmd_episodes)

    glyphs = commands.add_parser(
        "glyphs", help="write a generated few-shot dataset of font glyphs (no download)",
        description="Write an Omniglot-like dataset: each class is one character drawn from the fonts that "
                    "matplotlib installs, under random font, rotation, scale, shift and noise; classes are split "
                    "into disjoint train / val / test subfolders.",
    )
    glyphs.add_argument("out", metavar="OUT_DIR", help="folder to write (train/, val/, test/ inside)")
    glyphs.add_argument("--train-classes", type=int, default=80, help="classes in train/ (default 80)")
    glyphs.add_argument("--val-classes", type=int, default=20, help="classes in val/ (default 20)")
    glyphs.add_argument("--test-classes", type=int, default=40, help="classes in test/ (default 40)")
    glyphs.add_argument("--per-class", type=int, default=20, help="images per class (default 20)")
    glyphs.add_argument("--size", type=int, default=28, help="image side in pixels (default 28)")
    glyphs.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    glyphs.set_defaults(handler=cmd_glyphs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fewshot`` console script."""
    _one_line_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (FewshotError, EpisodesError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
