"""The learning-rate schedules, stepped once per iteration, and the optimiser.

``train.lr_schedule: steps`` (the HRNet / mmpose recipes): ``lr(it) = lr * warmup(it) *
lr_factor ** (number of lr_steps <= epoch(it))`` with ``epoch(it) = it // iters_per_epoch``
and a linear warm-up over the first ``warmup_iters`` iterations from ``warmup_ratio * lr``
(mmpose's ``LinearLR(start_factor=0.001, end=500)`` followed by
``MultiStepLR(milestones=[170, 200], gamma=0.1)``).

``train.lr_schedule: cosine``: the same warm-up, then ``lr * (1 + cos(pi * it / total)) / 2``
over the run's ``total = epochs * iters_per_epoch`` iterations, down to 0 at the end
(mmpose's ``CosineAnnealingLR`` by iteration with ``eta_min=0``).

One ``LambdaLR`` either way: its state is the iteration count, so a resumed run continues
exactly where it stopped.
"""
from __future__ import annotations

import bisect
import math

import torch


def lr_factor(it: int, iters_per_epoch: int, steps, factor: float, warmup_iters: int,
              warmup_ratio: float) -> float:
    """The multiplier of the base learning rate at iteration ``it`` (0-based), steps."""
    epoch = it // max(1, iters_per_epoch)
    f = factor ** bisect.bisect_right(list(steps), epoch)
    return f * _warmup(it, warmup_iters, warmup_ratio)


def cosine_factor(it: int, total_iters: int, warmup_iters: int, warmup_ratio: float) -> float:
    """The multiplier of the base learning rate at iteration ``it`` (0-based), cosine."""
    progress = min(it, total_iters) / max(1, total_iters)
    return 0.5 * (1.0 + math.cos(math.pi * progress)) * _warmup(it, warmup_iters, warmup_ratio)


def _warmup(it: int, warmup_iters: int, warmup_ratio: float) -> float:
    if it < warmup_iters:
        return warmup_ratio + (1.0 - warmup_ratio) * it / warmup_iters
    return 1.0


def build_scheduler(optimizer, train_cfg, iters_per_epoch: int):
    """The schedule of ``train_cfg`` (``lr_schedule``; ``lr_steps`` in epochs,
    ``lr_factor``, ``warmup_iters``, ``warmup_ratio``, ``epochs``) for ``iters_per_epoch``
    steps per epoch."""
    t = train_cfg
    if t.lr_schedule == "cosine":
        total = t.epochs * iters_per_epoch

        def fn(it):
            return cosine_factor(it, total, t.warmup_iters, t.warmup_ratio)
    else:
        steps = tuple(t.lr_steps)

        def fn(it):
            return lr_factor(it, iters_per_epoch, steps, t.lr_factor, t.warmup_iters,
                             t.warmup_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def build_optimizer(params, train_cfg, lr: float):
    """``train.optimizer``: Adam (HRNet's recipe) or AdamW, at learning rate ``lr``, with
    ``train.weight_decay`` (Adam adds it to the gradient, AdamW decouples it)."""
    cls = torch.optim.AdamW if train_cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, weight_decay=train_cfg.weight_decay)
