"""User-facing errors and warnings of the data layer.

Every problem a user can cause (a wrong path, an empty class, a corrupt image...) raises an
:class:`EpisodesError` whose message is one line saying what is wrong and what to do. Command-line
front ends print that line and exit non-zero instead of showing a traceback.
"""

from __future__ import annotations


class EpisodesError(Exception):
    """A problem with the user's data or arguments, explained in one line."""


class CorruptImageError(EpisodesError):
    """An image file that cannot be decoded."""


class EpisodesWarning(UserWarning):
    """Something was left out of the data (a small class, a skipped corrupt image)."""


def preview(items: list, limit: int = 3) -> str:
    """Join the first ``limit`` items for a message, saying how many more there are."""
    shown = ", ".join(str(item) for item in items[:limit])
    if len(items) > limit:
        shown += f" (and {len(items) - limit} more)"
    return shown
