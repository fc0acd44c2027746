"""A compact HRNet (Sun et al., "Deep High-Resolution Representation Learning for Human Pose
Estimation", CVPR 2019) for top-down heatmap regression; ``hrnet_w32(num_joints)`` is the
standard W32 pose topology (~28.5 M parameters with 17 joints).

    stem: two 3x3 stride-2 convs (64 ch, 1/4 resolution)
    stage 1: 4 bottleneck blocks (64 -> 256 ch)
    stage 2: 1 module,  2 branches (32, 64),            4 basic blocks per branch
    stage 3: 4 modules, 3 branches (32, 64, 128),       4 basic blocks per branch
    stage 4: 3 modules, 4 branches (32, 64, 128, 256), 4 basic blocks per branch;
             the last module outputs the highest-resolution branch only
    head: 1x1 conv to K heatmaps at 1/4 of the input size

Between stages a transition adapts the existing branches' widths and adds a branch by a
stride-2 conv of the lowest-resolution one. Each module ends with fuse layers: every output
branch sums all branches, brought to its resolution by a 1x1 conv + nearest upsampling
(lower resolutions) or a chain of stride-2 3x3 convs (higher resolutions).

``dali_pose.build_model(cfg)`` builds the configured variant (``model.width`` etc.);
``python -m dali_pose.tools.bench --train-step`` measures how many samples per second a W32
training step consumes.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

BN_MOMENTUM = 0.1


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
              nn.BatchNorm2d(cout, momentum=BN_MOMENTUM)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.body = nn.Sequential(_conv_bn(cin, planes, 3, stride),
                                  _conv_bn(planes, cout, 3, 1, relu=False))
        self.short = (None if stride == 1 and cin == cout
                      else _conv_bn(cin, cout, 1, stride, relu=False))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        s = x if self.short is None else self.short(x)
        return self.relu(self.body(x) + s)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.body = nn.Sequential(_conv_bn(cin, planes, 1), _conv_bn(planes, planes, 3, stride),
                                  _conv_bn(planes, cout, 1, relu=False))
        self.short = (None if stride == 1 and cin == cout
                      else _conv_bn(cin, cout, 1, stride, relu=False))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        s = x if self.short is None else self.short(x)
        return self.relu(self.body(x) + s)


def _blocks(block, cin: int, planes: int, n: int) -> nn.Sequential:
    layers = [block(cin, planes)]
    layers += [block(planes * block.expansion, planes) for _ in range(n - 1)]
    return nn.Sequential(*layers)


class HRModule(nn.Module):
    """Parallel branches of basic blocks, then the exchange (fuse) across resolutions."""

    def __init__(self, widths: Sequence[int], num_blocks: int, multi_scale_output: bool = True):
        super().__init__()
        n = len(widths)
        self.branches = nn.ModuleList(_blocks(BasicBlock, c, c, num_blocks) for c in widths)
        n_out = n if multi_scale_output else 1
        self.fuse = nn.ModuleList()
        for i in range(n_out):
            row = nn.ModuleList()
            for j in range(n):
                if j == i:
                    row.append(nn.Identity())
                elif j > i:  # lower resolution: 1x1 conv to width i, upsample 2^(j-i)
                    row.append(nn.Sequential(
                        _conv_bn(widths[j], widths[i], 1, relu=False),
                        nn.Upsample(scale_factor=2 ** (j - i), mode="nearest")))
                else:  # higher resolution: (i - j) stride-2 3x3 convs
                    steps = [_conv_bn(widths[j], widths[j], 3, 2) for _ in range(i - j - 1)]
                    steps.append(_conv_bn(widths[j], widths[i], 3, 2, relu=False))
                    row.append(nn.Sequential(*steps))
            self.fuse.append(row)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        xs = [b(x) for b, x in zip(self.branches, xs)]
        out = []
        for row in self.fuse:
            y = row[0](xs[0])
            for j in range(1, len(xs)):
                y = y + row[j](xs[j])
            out.append(self.relu(y))
        return out


class Transition(nn.Module):
    """From the previous stage's branches to the next stage's (one branch more)."""

    def __init__(self, prev: Sequence[int], new: Sequence[int]):
        super().__init__()
        self.layers = nn.ModuleList()
        for i, c in enumerate(new):
            if i < len(prev):
                self.layers.append(nn.Identity() if prev[i] == c else _conv_bn(prev[i], c, 3))
            else:
                steps = [_conv_bn(prev[-1], prev[-1], 3, 2)
                         for _ in range(i - len(prev))]
                steps.append(_conv_bn(prev[-1], c, 3, 2))
                self.layers.append(nn.Sequential(*steps))
        self.n_prev = len(prev)

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        return [layer(xs[min(i, self.n_prev - 1)]) for i, layer in enumerate(self.layers)]


class HRNet(nn.Module):
    def __init__(self, num_joints: int, width: int = 32, num_blocks: int = 4,
                 modules_per_stage=(1, 4, 3), stem_width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, stem_width, 3, 2),
                                  _conv_bn(stem_width, stem_width, 3, 2))
        self.layer1 = _blocks(Bottleneck, stem_width, stem_width, 4)
        prev = [stem_width * Bottleneck.expansion]
        stages, transitions = [], []
        for s, n_mod in enumerate(modules_per_stage):
            widths = [width * 2 ** b for b in range(s + 2)]
            transitions.append(Transition(prev, widths))
            last = s == len(modules_per_stage) - 1
            stages.append(nn.Sequential(*[
                HRModule(widths, num_blocks, multi_scale_output=not (last and m == n_mod - 1))
                for m in range(n_mod)]))
            prev = widths
        self.transitions = nn.ModuleList(transitions)
        self.stages = nn.ModuleList(stages)
        self.head = nn.Conv2d(width, num_joints, 1)
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.normal_(mod.weight, std=0.001)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.BatchNorm2d):
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = [self.layer1(self.stem(x))]
        for transition, stage in zip(self.transitions, self.stages):
            xs = transition(xs)
            for module in stage:
                xs = module(xs)
        return self.head(xs[0])


def hrnet_w32(num_joints: int = 17) -> HRNet:
    """HRNet-W32: heatmaps (N, K, H/4, W/4) for input (N, 3, H, W)."""
    return HRNet(num_joints, width=32)


def build_hrnet(model_cfg, channels: int) -> HRNet:
    """The HRNet of ``model_cfg`` (a ``ModelConfig``) with ``channels`` output maps:
    output (N, C, H/4, W/4) for input (N, 3, H, W)."""
    return HRNet(channels, width=model_cfg.width, num_blocks=model_cfg.num_blocks,
                 modules_per_stage=tuple(model_cfg.stage_modules),
                 stem_width=model_cfg.stem_width)
