"""Checkpoints that lose nothing: written atomically, read as data.

A training checkpoint (``OUT_DIR/last.pt`` after every epoch, ``best.pt`` whenever the
validation metric improves) is a ``torch.save`` of a dict of plain types and tensors:

    model       the model's state dict (unwrapped from DDP / torch.compile)
    optimizer   optimizer.state_dict()
    scheduler   the learning-rate schedule's state_dict()
    scaler      the float16 gradient scaler's state_dict()
    epoch       epochs completed; training continues with epoch ``epoch``
    best        {"metric": name, "value": best value so far, "epoch": its epoch} (or None)
    config      the resolved config (``config.to_dict``)
    loader      what the loader needs to continue: {"epoch": the next epoch} (its shuffle
                and augmentation are functions of (loader.seed, epoch, sample))
    torch_rng   torch's CPU generator state (and ``cuda_rng`` on a GPU)

so it loads with ``torch.load(..., weights_only=True)``: a checkpoint is data, never code.
Writing (:func:`dali_pose.models.weights.save_atomic`) goes to a temporary file in the same
directory, flushed and fsync'd, then ``os.replace``d over the old one (and the directory
fsync'd): a crash at any moment leaves either the old or the new checkpoint, never a torn
one.
"""
from __future__ import annotations

import os
from typing import Optional

from ..models.weights import WeightsError, read_weights_file, save_atomic  # noqa: F401

TRAINING_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "config")


def read_training_checkpoint(path: str) -> dict:
    """The dict of a training checkpoint (``last.pt`` / ``best.pt``); a missing, truncated,
    corrupt or foreign file is a one-line ``WeightsError`` naming ``path``."""
    ckpt = read_weights_file(path, "checkpoint")
    missing = [k for k in TRAINING_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise WeightsError(f"{path}: not a dali_pose training checkpoint (no "
                           f"{', '.join(repr(k) for k in missing)}; train.py writes last.pt "
                           f"and best.pt in out_dir)")
    return ckpt


def resume_path(resume: Optional[str], out_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` names: 'auto' is ``out_dir/last.pt`` when it exists (a
    fresh start otherwise), any other value a path that must exist."""
    if resume is None:
        return None
    if resume == "auto":
        path = os.path.join(out_dir, "last.pt")
        return path if os.path.exists(path) else None
    if not os.path.exists(resume):
        raise WeightsError(f"--resume {resume}: no such checkpoint")
    return resume
