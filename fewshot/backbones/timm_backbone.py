"""Any timm model as a backbone: ``model.backbone: timm:<name>`` (``pip install 'fewshot[timm]'``).

timm's own pretrained configuration gives the input size (the default ``data.image_size``), mean and
std. ``weights: imagenet`` (or ``pretrained``) loads timm's pretrained weights through its cache (the
Hugging Face hub cache, ``$HF_HOME``), downloading them when online; offline with nothing cached it is a
one-line error naming the file to obtain. ``weights: PATH`` loads a local file instead: safetensors, a
state dict, or a fewshot checkpoint; the model's classifier is dropped either way (``num_classes=0``).
Other ``model.backbone_options`` are passed to ``timm.create_model`` (e.g. ``depth``, ``drop_path_rate``).

Feature maps: a CNN's last map as it is; a vision transformer's patch tokens laid out on their grid
``(B, D, h, w)`` (class and register tokens dropped), so heads that need maps and Grad-CAM work with ViTs.
The embedding is always computed from that map (ViTs average the patch tokens after the model's own final
norm; CNNs use timm's own head pooling), so evaluation, prediction and explanations agree.
ViTs are built with ``dynamic_img_size`` and take any input size divisible by their patch size.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import FewshotError
from .base import Backbone, Family, load_weights_file

PREFIX = "timm:"


def _timm():
    try:
        import timm
    except ImportError:
        raise FewshotError("timm backbones need timm: pip install 'fewshot[timm]'") from None
    return timm


def pretrained_config(name: str) -> dict:
    """timm's pretrained configuration of ``name`` (input size, mean, std, where the weights live)."""
    _timm()
    from timm.models import get_pretrained_cfg

    config = get_pretrained_cfg(name)
    if config is None:
        raise FewshotError(f"timm has no model '{name}' (model.backbone: timm:<name>, names as in "
                           "timm.list_models())")
    return config.to_dict()


def native_size(backbone: str) -> int | None:
    """The input side of ``timm:<name>``'s pretrained configuration."""
    size = pretrained_config(backbone.removeprefix(PREFIX)).get("input_size")
    return int(size[-1]) if size else None


class TimmBackbone(Backbone):
    """``(B, C, H, W)`` -> timm's last feature map ``(B, D, h, w)``; the embedding pooled from it."""

    def __init__(self, name: str, in_channels: int = 3, weights: str = "none", **options):
        super().__init__()
        timm = _timm()
        config = pretrained_config(name)
        self.name = name
        self.mean, self.std = tuple(config.get("mean") or ()) or None, tuple(config.get("std") or ()) or None
        kwargs = {"num_classes": 0, "in_chans": in_channels, **options}
        if _is_vit(timm, name):
            # mean of the patch tokens after the model's own (pretrained) final norm: fc_norm off
            kwargs = {"global_pool": "avg", "fc_norm": False, "dynamic_img_size": True, **kwargs}
        pretrained = weights in ("imagenet", "pretrained")
        try:
            self.model = timm.create_model(name, pretrained=pretrained, **kwargs)
        except TypeError as exc:
            raise FewshotError(f"timm model '{name}' does not take these model.backbone_options "
                               f"{sorted(options)}: {str(exc).splitlines()[0][:160]}") from None
        except (OSError, RuntimeError, ValueError) as exc:
            if not pretrained:
                raise FewshotError(f"cannot build timm model '{name}': {str(exc).splitlines()[0][:200]}") from None
            source = config.get("hf_hub_id") or config.get("url") or "timm's weight source"
            cache = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
            raise FewshotError(f"pretrained weights for timm:{name} are not cached and cannot be downloaded "
                               f"({type(exc).__name__}): download model.safetensors from {source} on a machine "
                               f"with internet access and pass it as model.weights: PATH (or fill the cache "
                               f"{cache}; HF_HUB_OFFLINE=1 skips the download attempts)") from None
        self.vit = hasattr(self.model, "num_prefix_tokens") and hasattr(self.model, "patch_embed")
        self.channels_last_output = str(getattr(self.model, "output_fmt", "NCHW")).endswith("NHWC")
        if weights not in ("none", "imagenet", "pretrained"):
            load_weights_file(self, weights, f"timm:{name}")

    def adapt_state_dict(self, state: dict) -> dict:
        """A state dict of the bare timm model (its own key names) gets our ``model.`` prefix; classifier
        weights this headless model does not have are dropped."""
        if not state or any(key.startswith("model.") for key in state):
            return state
        own = self.state_dict()
        return {f"model.{key}": value for key, value in state.items()
                if f"model.{key}" in own or not _is_classifier_key(key)}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(x)
        if not self.vit:  # Swin-like models return (B, h, w, D)
            return features.permute(0, 3, 1, 2) if self.channels_last_output else features
        tokens = features[:, self.model.num_prefix_tokens:]  # (B, h*w, D)
        height, width = _grid(self.model, x.shape[-2:], tokens.shape[1])
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)

    def pool_features(self, features: torch.Tensor) -> torch.Tensor:
        if self.vit:
            return self.model.fc_norm(features.flatten(2).mean(dim=2))  # fc_norm is the identity here
        if self.channels_last_output:
            features = features.permute(0, 2, 3, 1)
        return self.model.forward_head(features, pre_logits=True)

    def stages(self) -> list[nn.Module]:
        blocks = getattr(self.model, "blocks", None) or getattr(self.model, "stages", None) or \
            getattr(self.model, "layers", None)
        return list(blocks) if blocks is not None else list(self.model.children())


VIT_MODULES = ("vision_transformer", "deit", "eva", "vision_transformer_hybrid")


def _is_vit(timm, name: str) -> bool:
    """Transformers with patch tokens: built with dynamic input size and mean pooling of patch tokens."""
    architecture = name.split(".")[0]
    return any(architecture in timm.list_models(module=module) for module in VIT_MODULES)


def _is_classifier_key(key: str) -> bool:
    return key.split(".")[0] in ("head", "fc", "classifier", "last_linear") and not key.startswith("head.norm")


def _grid(model: nn.Module, size: torch.Size, tokens: int) -> tuple[int, int]:
    """Rows and columns of the patch grid for an input of ``size``."""
    patch = model.patch_embed.patch_size
    height, width = math.ceil(size[0] / patch[0]), math.ceil(size[1] / patch[1])
    if height * width != tokens:  # unusual strides: fall back to a square grid
        height = width = int(math.isqrt(tokens))
    return height, width


FAMILY = Family(PREFIX, lambda name, in_channels, weights, options, registry: TimmBackbone(
    name.removeprefix(PREFIX), in_channels, weights, **options),
    lambda name, registry: native_size(name), "timm:<name> for any timm model")
