"""Training loss for the loader's targets: each codec's own (HRNet / mmpose definitions).

``pose_loss(output, batch, cfg)`` takes the model output (N, C, h, w) and a batch of
:func:`dali_pose.build_loader` (``heatmap`` (N, C, h, w), ``target_weight`` (N, K)) and
returns a scalar tensor: ``model.target: gaussian``, HRNet's
``JointsMSELoss(use_target_weight=True)``; ``combined``, mmpose's
``CombinedTargetMSELoss(use_target_weight=True)`` (definitions:
:class:`dali_pose.codecs.UDPGaussian`, :class:`dali_pose.codecs.UDPCombined`).
"""
from __future__ import annotations

import torch

from ..codecs import build_codec


def pose_loss(output: torch.Tensor, batch: dict, cfg) -> torch.Tensor:
    """The loss of ``cfg``'s codec (``cfg``: a ``ModelConfig`` or a whole ``Config``)."""
    gt = batch["heatmap"].to(output.dtype)
    w = batch["target_weight"].to(output.dtype)
    if output.shape != gt.shape:
        raise ValueError(f"pose_loss: model output {tuple(output.shape)} and target "
                         f"{tuple(gt.shape)} differ (model.heatmap_size must be the model's "
                         f"output size, input_size / 4 for HRNet)")
    return build_codec(cfg).loss(output, gt, w)
