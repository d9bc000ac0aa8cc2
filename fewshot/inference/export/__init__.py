"""Export: a model with its fitted classifier built in, as one file an application runs without this framework.

Holds :mod:`.formats` (the one entry for every format), :mod:`.torchscript` (the exported module and TorchScript
files), :mod:`.onnx` (ONNX and INT8 ONNX) and :mod:`.onnx_graph` (what every ONNX graph made here shares, used by
the embedding runtime too).

May import: the ground modules, ``fewshot.config``, ``fewshot.model`` and the inference modules below the
classifier (calibration, open set); never the classifier itself, ``training``, ``cli`` or ``serve``.
"""
