"""Pose networks: ``build_model(cfg)`` is the one factory ``train.py``, ``evaluate.py`` and
users call; the losses are each codec's (:mod:`.losses`)."""
from __future__ import annotations

from ..codecs import build_codec
from ..datasets import DATASETS
from .hrnet import build_hrnet


def build_model(cfg, num_joints=None):
    """The network of ``cfg.model`` (``cfg``: a ``Config``; or a ``ModelConfig`` with
    ``num_joints``): output channels = the codec's channels for the dataset's joints
    (K heatmaps, or 3K for ``model.target: combined``, in the order of the loader's
    targets)."""
    model_cfg = getattr(cfg, "model", cfg)
    if num_joints is None:
        num_joints = DATASETS[cfg.data.format].num_joints
    return build_hrnet(model_cfg, build_codec(model_cfg).channels(num_joints))


def describe_model(cfg) -> str:
    """The model a config asks for, in one line (for messages)."""
    m = cfg.model
    return (f"HRNet model.width={m.width}, stem_width={m.stem_width}, "
            f"num_blocks={m.num_blocks}, stage_modules={list(m.stage_modules)}, "
            f"target={m.target}, data.format={cfg.data.format}")
