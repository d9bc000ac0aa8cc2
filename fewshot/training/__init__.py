"""Training: episodic meta-training and pre-training, with a run directory a researcher can resume and publish.

Holds :mod:`.lifecycle` (the run directory, resuming, signals, the training loop's bookkeeping), :mod:`.train`
(episodic training), :mod:`.pretrain` (supervised pre-training of a backbone), :mod:`.distributed` (torchrun and
DDP), :mod:`.optim` (optimisers and schedules), :mod:`.loggers` (TensorBoard and friends) and :mod:`.demo` (the
whole product on an embedded default: train, evaluate, predict).

May import: everything below it (ground modules, ``config``, ``backbones``, ``heads``, ``model``, ``evaluation``,
``inference``); never ``cli`` or ``serve``.
"""
