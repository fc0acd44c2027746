"""Training losses for the loader's targets (the HRNet / mmpose definitions).

``pose_loss(output, batch, model_cfg)`` takes the model output (N, C, h, w) and a batch of
:func:`dali_pose.build_loader` (``heatmap`` (N, C, h, w), ``target_weight`` (N, K)) and
returns a scalar tensor:

* ``target: gaussian`` -- HRNet's ``JointsMSELoss(use_target_weight=True)``:
  ``0.5 * mean_j MSE(w_j * pred_j, w_j * gt_j)``, the MSE a mean over batch and pixels.
* ``target: combined`` -- UDP's combined classification + offset target, as mmpose's
  ``CombinedTargetMSELoss(use_target_weight=True)``: per joint, ``0.5 * MSE`` of the
  weighted disk maps plus ``0.5 * MSE`` of each offset map, both multiplied by the target
  disk (offsets only count inside it); summed over the three and averaged over joints.
"""
from __future__ import annotations

import torch


def pose_loss(output: torch.Tensor, batch: dict, model_cfg) -> torch.Tensor:
    gt = batch["heatmap"].to(output.dtype)
    w = batch["target_weight"].to(output.dtype)
    if output.shape != gt.shape:
        raise ValueError(f"pose_loss: model output {tuple(output.shape)} and target "
                         f"{tuple(gt.shape)} differ (model.heatmap_size must be the model's "
                         f"output size, input_size / 4 for HRNet)")
    n, k = w.shape
    if model_cfg.target == "combined":
        out = output.reshape(n, k, 3, *output.shape[2:])
        gt = gt.reshape(n, k, 3, *gt.shape[2:])
        disk = gt[:, :, 0]
        wk = w[:, :, None, None]
        loss = ((wk * (out[:, :, 0] - disk)) ** 2).mean(dim=(0, 2, 3)).sum()
        for c in (1, 2):
            loss = loss + ((wk * disk * (out[:, :, c] - gt[:, :, c])) ** 2).mean(dim=(0, 2, 3)).sum()
        return 0.5 * loss / k
    return 0.5 * ((w[:, :, None, None] * (output - gt)) ** 2).mean()
