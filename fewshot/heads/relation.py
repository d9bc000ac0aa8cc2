"""Relation networks (Sung et al. 2018): a learned module scores each (prototype, query) pair."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Head, class_means


class RelationNet(Head):
    """Scores concatenated ``(prototype map, query map)`` pairs with two conv blocks and two linear
    layers; trained with the paper's mean-squared error on sigmoid scores against one-hot targets.

    A prototype is the mean of a class's support feature maps. Blocks max-pool only while the map is
    at least 2 pixels wide, so the module fits any backbone and input size.
    """

    feature_map = True
    needs_training = True  # the relation module compares; untrained, it guesses
    quick_backbone_options = {"pooled_blocks": 2}

    def __init__(self, embedding_dim: int, feature_shape: tuple[int, ...], hidden_channels: int = 64,
                 hidden_units: int = 8, loss: str = "mse"):
        super().__init__(embedding_dim, feature_shape)
        channels, height, width = feature_shape
        blocks = []
        in_channels = 2 * channels
        for _ in range(2):
            pool = min(height, width) >= 2
            blocks += [nn.Conv2d(in_channels, hidden_channels, 3, padding=1), nn.BatchNorm2d(hidden_channels),
                       nn.ReLU(inplace=True)]
            if pool:
                blocks.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            in_channels = hidden_channels
        self.blocks = nn.Sequential(*blocks)
        self.scorer = nn.Sequential(nn.Flatten(), nn.Linear(hidden_channels, hidden_units), nn.ReLU(inplace=True),
                                    nn.Linear(hidden_units, 1))
        self.loss_name = loss
        self.init_scorer()

    def init_scorer(self) -> None:
        """Sung et al.'s initialisation of the scoring layers: weights N(0, 0.01), biases 1. The hidden
        units then start alive; with PyTorch's default all of them can die, and the module outputs one
        constant score for every pair (chance accuracy, seen on tinyimagenet-fs from scratch)."""
        for layer in self.scorer:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.ones_(layer.bias)

    def fit(self, support, support_labels, ways):
        """``{"prototypes": (ways, D, h, w)}``: the class means of the support feature maps."""
        return {"prototypes": class_means(support, support_labels, ways)}

    def classify(self, state, query):
        prototypes = state["prototypes"]  # (ways, D, h, w)
        ways = prototypes.shape[0]
        # The first convolution is linear in its input, so on a concatenated (prototype, query) pair it is
        # conv(prototype; W[:, :D]) + conv(query; W[:, D:]) + b: computed once per prototype and once per
        # query instead of once per pair (Q*ways pairs), which is most of the module's cost.
        first = self.blocks[0]
        channels = prototypes.shape[1]
        from_prototypes = F.conv2d(prototypes, first.weight[:, :channels], first.bias, padding=first.padding)
        from_queries = F.conv2d(query, first.weight[:, channels:], None, padding=first.padding)
        # expand/reshape with -1 rather than Python ints, so a traced (exported) model takes any batch size
        pairs = from_queries.unsqueeze(1) + from_prototypes.unsqueeze(0)  # (Q, ways, hidden, h, w)
        pairs = pairs.reshape(-1, *pairs.shape[2:])  # (Q*ways, hidden, h, w)
        pooled = self.blocks[1:](pairs).mean(dim=(2, 3), keepdim=True)
        return self.scorer(pooled).reshape(-1, ways)

    def loss(self, logits, labels):
        if self.loss_name == "ce":
            return F.cross_entropy(logits, labels)
        return F.mse_loss(torch.sigmoid(logits), F.one_hot(labels, logits.shape[1]).to(logits.dtype))
