"""fewshot: few-shot image classification and meta-learning on top of the ``episodes`` data layer."""

__version__ = "0.1.0"
