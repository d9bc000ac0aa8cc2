"""User-facing errors of the model side (config, checkpoints, CLI arguments).

Like :class:`episodes.EpisodesError`, a :class:`FewshotError` carries one line that says what is wrong
and what to do; the CLI prints it and exits with status 2, without a traceback.
"""


class FewshotError(Exception):
    """A problem the user can fix, explained in one line."""


class NotFittedError(FewshotError):
    """A classifier was asked to predict, estimate, save or export before ``fit``."""


class SupportSetError(FewshotError):
    """The labelled examples cannot be used: an empty class, too few classes or images, mismatched lists."""


class InvalidImageError(FewshotError):
    """An input is not a decodable image (or an array / tensor that cannot be one)."""


class SavedFileError(FewshotError):
    """A saved classifier file is damaged, of another format or version, or unsafe to load."""


class ExportError(FewshotError):
    """An export cannot be made: a missing optional package, or a head that cannot be exported."""


class CapabilityError(FewshotError):
    """The model cannot do what was asked (export, explain, ...); raised by :func:`fewshot.model.capabilities.require`
    with the same message in the CLI, the Python API and the server."""
