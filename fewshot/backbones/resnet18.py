"""ResNet-18 from torchvision (512-d embedding)."""

from .torchvision_resnet import TorchvisionResNet


class ResNet18(TorchvisionResNet):
    """``weights``: ``none`` (random), ``imagenet`` (IMAGENET1K_V1) or a local state-dict path."""

    def __init__(self, in_channels: int = 3, weights: str = "none"):
        super().__init__("resnet18", "ResNet18_Weights.IMAGENET1K_V1", "resnet18", in_channels, weights)
