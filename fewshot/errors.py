"""User-facing errors of the model side (config, checkpoints, CLI arguments).

Like :class:`episodes.EpisodesError`, a :class:`FewshotError` carries one line that says what is wrong
and what to do; the CLI prints it and exits with status 2, without a traceback.
"""


class FewshotError(Exception):
    """A problem the user can fix, explained in one line."""
