"""ResNet-50 from torchvision, the default backbone (2048-d embedding)."""

from .torchvision_resnet import TorchvisionResNet


class ResNet50(TorchvisionResNet):
    """``weights``: ``none`` (random), ``imagenet`` (IMAGENET1K_V2) or a local state-dict path."""

    def __init__(self, in_channels: int = 3, weights: str = "none"):
        super().__init__("resnet50", "ResNet50_Weights.IMAGENET1K_V2", "resnet50", in_channels, weights)
