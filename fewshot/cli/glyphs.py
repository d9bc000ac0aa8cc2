"""``fewshot glyphs``: write the generated glyph dataset."""

from __future__ import annotations

import argparse

from .common import NON_NEGATIVE, POSITIVE, int_at_least


NAME = "glyphs"
PARSER = dict(
    help="write a generated few-shot dataset of font glyphs (no download)",
    description="Write an Omniglot-like dataset: each class is one character drawn from the fonts that "
                "matplotlib installs, under random font, rotation, scale, shift and noise; classes are split "
                "into disjoint train / val / test subfolders.",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT_DIR", help="folder to write (train/, val/, test/ inside)")
    parser.add_argument("--train-classes", type=NON_NEGATIVE, default=110, help="classes in train/ (default 110)")
    parser.add_argument("--val-classes", type=NON_NEGATIVE, default=25, help="classes in val/ (default 25)")
    parser.add_argument("--test-classes", type=NON_NEGATIVE, default=45, help="classes in test/ (default 45)")
    parser.add_argument("--per-class", type=POSITIVE, default=20, help="images per class (default 20)")
    parser.add_argument("--size", type=int_at_least(8), default=28, help="image side in pixels (default 28)")
    parser.add_argument("--seed", type=NON_NEGATIVE, default=0, help="random seed (default 0)")


def run(args: argparse.Namespace) -> int:
    """Write the generated glyph dataset (train / val / test class folders)."""
    from episodes.synthetic import make_glyph_dataset

    root = make_glyph_dataset(args.out, classes=(args.train_classes, args.val_classes, args.test_classes),
                              per_class=args.per_class, size=args.size, seed=args.seed)
    print(f"wrote {sum((args.train_classes, args.val_classes, args.test_classes))} glyph classes to {root} "
          "(subfolders train, val, test)")
    return 0
