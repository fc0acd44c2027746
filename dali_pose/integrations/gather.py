"""Validation predictions of every rank to rank 0, each instance exactly once.

Each rank predicts its shard (:func:`dali_pose.evaluation.inference.predict` with a shard's
loader keeps only the ``batch["valid"]`` rows, so padding never counts);
:func:`gather_predictions` sends the predicted rows to rank 0 and merges them there
(:func:`dali_pose.evaluation.inference.merge`: an instance predicted twice is an error).
Works with any initialised ``torch.distributed`` process group (gloo or NCCL: the rows
travel as Python objects) and without one (a single process).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch.distributed as dist

from ..evaluation.inference import Predictions, merge


def gather_predictions(preds: Predictions, dst: int = 0) -> Optional[Predictions]:
    """All ranks' ``preds`` merged on rank ``dst`` (None on the others). Only the rows each
    rank predicted travel (``done``), not the NaN rest of the index."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return merge([preds])
    rows = np.flatnonzero(preds.done)
    mine = (rows, preds.keypoints[rows])
    parts = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(mine, parts, dst=dst)
    if dist.get_rank() != dst:
        return None
    shards = []
    for r, kps in parts:
        keypoints = np.full_like(preds.keypoints, np.nan)
        keypoints[r] = kps
        done = np.zeros(len(preds.done), bool)
        done[r] = True
        shards.append(Predictions(preds.index, keypoints, done))
    return merge(shards)
