"""Episodic evaluation: the researcher's protocol, and the data that feeds it and training.

Holds :mod:`.episodic` (N-way K-shot episodes, accuracy with its 95% interval, the batched fast path),
:mod:`.open_set` (open-set episodes: AUROC and the "unknown" rate), :mod:`.data` (episode loaders over image
folders and Meta-Dataset sources) and :mod:`.episode_sets` (fixed, reusable sets of episodes).

May import: the ground modules, ``fewshot.config``, ``fewshot.backbones``, ``fewshot.heads``, ``fewshot.model``,
the inference modules of floors 1-4 (inputs, calibration, open set, embedding, adaptation) and ``episodes``;
never the classifier, ``training``, ``cli`` or ``serve``.
"""
