"""HRNet (Sun et al., "Deep High-Resolution Representation Learning for Human Pose
Estimation", CVPR 2019) for top-down heatmap regression, with the official code's module
names, so that its state dicts (and mmpose's, under ``backbone.`` / ``head.``) load as they
are (:mod:`.weights`).

    stem: conv1, bn1, conv2, bn2 (two 3x3 stride-2 convs: 1/4 resolution)
    layer1: 4 Bottlenecks (stem width -> 4x stem width channels)
    transition1, stage2: 2 branches (W, 2W), 1 module
    transition2, stage3: 3 branches (W, 2W, 4W), 4 modules
    transition3, stage4: 4 branches (W .. 8W), 3 modules; the last module outputs the
                         highest-resolution branch only
    final_layer: 1x1 conv to the codec's channels, at 1/4 of the input size

Each module is ``branches`` of basic blocks followed by ``fuse_layers``: every output
branch sums all branches brought to its resolution by a 1x1 conv + BN + nearest upsampling
(lower resolutions) or a chain of stride-2 3x3 convs (higher resolutions). A transition
adapts the existing branches' widths (Identity where they already fit, the official code's
None) and adds a branch by stride-2 convs of the lowest-resolution one. HRNet-W32 has
28,536,113 parameters with 17 joints, as the official model.

``model.width`` (W), ``stem_width``, ``num_blocks`` and ``stage_modules`` shrink it for the
synthetic demo; the official W32 / W48 are the defaults with ``model.width`` 32 / 48.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

BN_MOMENTUM = 0.1


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def _downsample(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                         nn.BatchNorm2d(cout, momentum=BN_MOMENTUM))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """The ResNet v1.5 bottleneck (stride on the 3x3 conv), as HRNet's layer1, torchvision's
    and the SimpleBaseline ResNets."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def make_layer(block, inplanes: int, planes: int, blocks: int, stride: int = 1):
    """``blocks`` blocks, the first with the projection shortcut ``downsample`` when the
    shape changes (the official ``_make_layer``)."""
    cout = planes * block.expansion
    down = _downsample(inplanes, cout, stride) if stride != 1 or inplanes != cout else None
    layers = [block(inplanes, planes, stride, down)]
    layers += [block(cout, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _conv_bn_relu(cin: int, cout: int, stride: int, relu: bool = True) -> nn.Sequential:
    layers = [conv3x3(cin, cout, stride), nn.BatchNorm2d(cout, momentum=BN_MOMENTUM)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel branches of basic blocks, then the exchange (fuse) across resolutions."""

    def __init__(self, widths: Sequence[int], num_blocks: int, multi_scale_output: bool = True):
        super().__init__()
        n = len(widths)
        self.branches = nn.ModuleList(make_layer(BasicBlock, c, c, num_blocks) for c in widths)
        self.fuse_layers = nn.ModuleList()
        for i in range(n if multi_scale_output else 1):
            row = nn.ModuleList()
            for j in range(n):
                if j > i:  # lower resolution: 1x1 conv to width i, upsample 2^(j-i)
                    row.append(nn.Sequential(
                        nn.Conv2d(widths[j], widths[i], 1, 1, 0, bias=False),
                        nn.BatchNorm2d(widths[i], momentum=BN_MOMENTUM),
                        nn.Upsample(scale_factor=2 ** (j - i), mode="nearest")))
                elif j == i:
                    row.append(nn.Identity())
                else:  # higher resolution: (i - j) stride-2 3x3 convs, the last without ReLU
                    row.append(nn.Sequential(*[
                        _conv_bn_relu(widths[j], widths[i] if k == i - j - 1 else widths[j],
                                      2, relu=k < i - j - 1) for k in range(i - j)]))
            self.fuse_layers.append(row)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        xs = [b(x) for b, x in zip(self.branches, xs)]
        out = []
        for row in self.fuse_layers:
            y = row[0](xs[0])
            for j in range(1, len(xs)):
                y = y + row[j](xs[j])
            out.append(self.relu(y))
        return out


def _transition(prev: Sequence[int], new: Sequence[int]) -> nn.ModuleList:
    """From the previous stage's branches to the next stage's (one branch more)."""
    layers = nn.ModuleList()
    for i, c in enumerate(new):
        if i < len(prev):
            layers.append(nn.Identity() if prev[i] == c else _conv_bn_relu(prev[i], c, 1))
        else:
            layers.append(nn.Sequential(*[
                _conv_bn_relu(prev[-1], c if k == i - len(prev) else prev[-1], 2)
                for k in range(i + 1 - len(prev))]))
    return layers


class PoseHighResolutionNet(nn.Module):
    """HRNet for heatmaps: (N, 3, H, W) -> (N, channels, H/4, W/4)."""

    HEAD = ("final_layer",)  # not backbone: ImageNet files leave it alone

    def __init__(self, channels: int, width: int = 32, num_blocks: int = 4,
                 stage_modules: Sequence[int] = (1, 4, 3), stem_width: int = 64):
        super().__init__()
        self.conv1 = conv3x3(3, stem_width, 2)
        self.bn1 = nn.BatchNorm2d(stem_width, momentum=BN_MOMENTUM)
        self.conv2 = conv3x3(stem_width, stem_width, 2)
        self.bn2 = nn.BatchNorm2d(stem_width, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_layer(Bottleneck, stem_width, stem_width, 4)
        prev = [stem_width * Bottleneck.expansion]
        self.num_stages = len(stage_modules)
        for s, n_mod in enumerate(stage_modules):
            widths = [width * 2 ** b for b in range(s + 2)]
            last = s == len(stage_modules) - 1
            setattr(self, f"transition{s + 1}", _transition(prev, widths))
            setattr(self, f"stage{s + 2}", nn.Sequential(*[
                HighResolutionModule(widths, num_blocks,
                                     multi_scale_output=not (last and m == n_mod - 1))
                for m in range(n_mod)]))
            prev = widths
        self.final_layer = nn.Conv2d(width, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        xs = [self.layer1(x)]
        for s in range(self.num_stages):
            transition = getattr(self, f"transition{s + 1}")
            xs = [t(xs[min(i, len(xs) - 1)]) for i, t in enumerate(transition)]
            xs = getattr(self, f"stage{s + 2}")(xs)
        return self.final_layer(xs[0])


def hrnet_w32(num_joints: int = 17) -> PoseHighResolutionNet:
    """HRNet-W32: heatmaps (N, K, H/4, W/4) for input (N, 3, H, W)."""
    return PoseHighResolutionNet(num_joints, width=32)


def build_hrnet(model_cfg, channels: int) -> PoseHighResolutionNet:
    """The HRNet of ``model_cfg`` (a ``ModelConfig``) with ``channels`` output maps:
    output (N, C, H/4, W/4) for input (N, 3, H, W)."""
    return PoseHighResolutionNet(channels, width=model_cfg.width,
                                 num_blocks=model_cfg.num_blocks,
                                 stage_modules=tuple(model_cfg.stage_modules),
                                 stem_width=model_cfg.stem_width)
