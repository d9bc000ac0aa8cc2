"""fewshot: few-shot image classification and meta-learning on top of the ``episodes`` data layer."""

from .version import __version__

__all__ = ["FewShotClassifier", "__version__"]


def __getattr__(name: str):
    """``from fewshot import FewShotClassifier`` without importing torch for every ``import fewshot``."""
    if name == "FewShotClassifier":
        from .inference.classifier import FewShotClassifier

        return FewShotClassifier
    raise AttributeError(f"module 'fewshot' has no attribute {name!r}")
