"""Inference: a classifier fitted once on a user's support set, and everything it answers.

Holds :mod:`.classifier` (``FewShotClassifier``: fit, predict, estimate, score, save/load, export), the machinery
behind it (:mod:`.examples` and :mod:`.inputs`: turning folders, images and arrays into examples and model input;
:mod:`.embedding`: embedding through the fastest runtime, :mod:`.graph_cache`; :mod:`.calibration` and
:mod:`.open_set`: temperatures and "none of these"; :mod:`.estimate` and :mod:`.open_set_estimate`: honest numbers
from the user's own images; :mod:`.adaptation` and :mod:`.support_adaptation`: adapting the backbone to the
support set; :mod:`.refine`, :mod:`.explain`, :mod:`.scoring`, :mod:`.query_files`) and :mod:`.export`
(TorchScript and ONNX files for applications without this framework).

May import: the ground modules, ``fewshot.config``, ``fewshot.backbones``, ``fewshot.heads``, ``fewshot.model`` and
``fewshot.evaluation`` (an estimate is an episodic evaluation of the user's images); never ``training``, ``cli``
or ``serve``. Nothing is re-exported here (``from fewshot import FewShotClassifier`` is the public face).
"""
