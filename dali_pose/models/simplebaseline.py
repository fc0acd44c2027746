"""SimpleBaseline (Xiao et al., "Simple Baselines for Human Pose Estimation and Tracking",
ECCV 2018) with the official ``PoseResNet``'s module names: a ResNet backbone with
torchvision's names (``conv1``, ``bn1``, ``layer1`` .. ``layer4``), so ImageNet files of
torchvision load into it, then three 4x4 stride-2 transposed convolutions of 256 channels
without bias, each with BN + ReLU (``deconv_layers``), and a 1x1 conv head (``final_layer``):
(N, 3, H, W) -> (N, channels, H/4, W/4). R-50 at 256x192 with 17 joints: 34.0 M parameters.

The residual blocks are the ones HRNet uses (:class:`.hrnet.Bottleneck`); torchvision is not
needed (its PyPI wheels pin their own torch build).
"""
from __future__ import annotations

import torch
from torch import nn

from .hrnet import BN_MOMENTUM, Bottleneck, make_layer

DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
DECONV_CHANNELS = 256
DECONV_LAYERS = 3


class PoseResNet(nn.Module):
    HEAD = ("deconv_layers", "final_layer")  # not backbone: ImageNet files leave it alone

    def __init__(self, channels: int, depth: int = 50):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"model.depth: {depth} is not one of {sorted(DEPTHS)}")
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), DEPTHS[depth])):
            setattr(self, f"layer{i + 1}", make_layer(Bottleneck, inplanes, planes, n,
                                                      stride=1 if i == 0 else 2))
            inplanes = planes * Bottleneck.expansion
        layers = []
        for _ in range(DECONV_LAYERS):
            layers += [nn.ConvTranspose2d(inplanes, DECONV_CHANNELS, 4, 2, 1, 0, bias=False),
                       nn.BatchNorm2d(DECONV_CHANNELS, momentum=BN_MOMENTUM),
                       nn.ReLU(inplace=True)]
            inplanes = DECONV_CHANNELS
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(DECONV_CHANNELS, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.final_layer(self.deconv_layers(x))


def build_simplebaseline(model_cfg, channels: int) -> PoseResNet:
    """The SimpleBaseline of ``model_cfg`` (``model.depth``) with ``channels`` outputs."""
    return PoseResNet(channels, depth=model_cfg.depth)
