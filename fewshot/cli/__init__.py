"""The ``fewshot`` command line: one module per command (``NAME``, ``PARSER`` options, ``add_arguments(parser)``,
``run(args)``), the flags several share in :mod:`.common`; adding a command is a module and a line in ``COMMANDS``.

User errors (:class:`FewshotError`, :class:`episodes.EpisodesError`) print one line, ``error: ...``,
and exit with status 2; warnings print one line each, ``warning: ...``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..errors import FewshotError
from ..version import __version__
from . import demo, episodes, estimate, export, glyphs, predict, pretrain, recipes, serve, train
from . import eval as evaluate
from .common import one_line_warnings

COMMANDS = [episodes, glyphs, train, pretrain, evaluate, predict, estimate, export, serve, recipes, demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fewshot",
        description="Few-shot image classification: sample episodes, meta-train, evaluate with a 95% "
                    "confidence interval, and classify new classes from a few support images.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for command in COMMANDS:
        sub = commands.add_parser(command.NAME, **command.PARSER)
        command.add_arguments(sub)
        sub.set_defaults(handler=command.run)
    return parser


def is_user_error(exc: BaseException) -> bool:
    """A :class:`FewshotError` or an :class:`episodes.EpisodesError` (checked without importing ``episodes``,
    which loads torch: if it was never imported, nothing raised one)."""
    episodes_module = sys.modules.get("episodes")
    return isinstance(exc, FewshotError) or (episodes_module is not None
                                             and isinstance(exc, episodes_module.EpisodesError))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fewshot`` console script."""
    one_line_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.handler(args) or 0)
    except Exception as exc:  # noqa: BLE001 - user errors print one line; anything else is raised
        if not is_user_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


__all__ = ["COMMANDS", "build_parser", "main"]
