"""The model: what a few-shot classifier is made of and how it is named, built, saved and read back.

Holds :mod:`.network` (``FewShotModel``: backbone + transform + head, embedding through one inference path,
``build_model``), :mod:`.transforms` (feature transforms between backbone and head), :mod:`.recipes` (named,
measured choices of backbone, head and settings), :mod:`.capabilities` (one rule per capability, declared on the
head and backbone), :mod:`.checkpoint` (training checkpoints and rebuilding a model from a saved state) and
:mod:`.loading` (the model a user names: checkpoint, run directory, recipe, or backbone and head).

May import: the ground modules (``fewshot.errors``, ``atomic``, ``safe_io``, ``runtime``, ...), ``fewshot.config``,
``fewshot.backbones``, ``fewshot.heads`` and ``episodes``; never ``training``, ``evaluation``, ``inference``, ``cli``
or ``serve``. Nothing is re-exported here: import from the module that holds the name.
"""
