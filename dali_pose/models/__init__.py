"""Pose networks: ``build_model(cfg)`` is the one factory ``train.py``, ``evaluate.py`` and
users call. Networks carry the official module names (:mod:`.hrnet`, :mod:`.simplebaseline`),
so published weights load in their own layouts (:mod:`.weights`); the losses are each
codec's (:mod:`.losses`)."""
from __future__ import annotations

from torch import nn

from ..codecs import build_codec
from ..datasets import DATASETS
from ..errors import ConfigError
from .hrnet import build_hrnet
from .simplebaseline import build_simplebaseline
from .weights import load_backbone, load_pose_weights


def build_model(cfg, num_joints=None, log=None):
    """The network of ``cfg.model`` (``cfg``: a ``Config``; or a ``ModelConfig`` with
    ``num_joints``), output channels = the codec's channels for the dataset's joints (K
    heatmaps, or 3K for ``model.target: combined``, in the order of the loader's targets),
    with ``model.weights`` (a whole pose model) or else ``model.pretrained`` (an ImageNet
    backbone) applied. ``log`` (e.g. ``print``) receives a line per weight file loaded."""
    model_cfg = getattr(cfg, "model", cfg)
    out = [v // 4 for v in model_cfg.input_size]  # both archs upsample to a quarter
    if list(model_cfg.heatmap_size) != out:  # else a traceback in the loss at the first step
        raise ConfigError(f"config key 'model.heatmap_size': {list(model_cfg.heatmap_size)} "
                          f"is not what the {model_cfg.arch} network outputs for "
                          f"model.input_size {list(model_cfg.input_size)}: set it to {out} "
                          f"(a quarter of the input)")
    if num_joints is None:
        num_joints = DATASETS[cfg.data.format].num_joints
    channels = build_codec(model_cfg).channels(num_joints)
    build = build_hrnet if model_cfg.arch == "hrnet" else build_simplebaseline
    model = build(model_cfg, channels)
    init_normal(model if model_cfg.init == "normal" else model.final_layer)
    if model_cfg.pretrained and not model_cfg.weights:  # a whole model supersedes it
        report = load_backbone(model, model_cfg.pretrained)
        if log:
            log(f"model.pretrained {report}")
    if model_cfg.weights:
        layout = load_pose_weights(model, model_cfg.weights, describe_model(cfg))
        if log:
            log(f"model.weights {model_cfg.weights}: loaded ({layout})")
    return model


def init_normal(model: nn.Module) -> None:
    """The official HRNet / SimpleBaseline initialisation: (transposed) convolutions
    ~ N(0, 0.001) with zero bias, BatchNorm 1 and 0. ``model.init: normal`` applies it to
    the whole network; ``kaiming`` keeps PyTorch's Kaiming-uniform initialisation in the
    backbone and applies it to the head only (near-zero heatmaps at the start)."""
    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(mod.weight, std=0.001)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
        elif isinstance(mod, nn.BatchNorm2d):
            nn.init.ones_(mod.weight)
            nn.init.zeros_(mod.bias)


def describe_model(cfg) -> str:
    """The model a config asks for, in one line (for messages)."""
    m = getattr(cfg, "model", cfg)
    if m.arch == "simplebaseline":
        what = f"SimpleBaseline model.depth={m.depth}"
    else:
        what = (f"HRNet model.width={m.width}, stem_width={m.stem_width}, "
                f"num_blocks={m.num_blocks}, stage_modules={list(m.stage_modules)}")
    fmt = f", data.format={cfg.data.format}" if hasattr(cfg, "data") else ""
    return f"{what}, target={m.target}{fmt}"
