"""The learning-rate schedule of the HRNet / mmpose recipes, stepped once per iteration.

``lr(it) = lr * warmup(it) * lr_factor ** (number of lr_steps <= epoch(it))`` with
``epoch(it) = it // iters_per_epoch`` and a linear warm-up over the first ``warmup_iters``
iterations from ``warmup_ratio * lr`` (mmpose's ``LinearLR(start_factor=0.001, end=500)``
followed by ``MultiStepLR(milestones=[170, 200], gamma=0.1)``). One ``LambdaLR``: its state
is the iteration count, so a resumed run continues exactly where it stopped.
"""
from __future__ import annotations

import bisect

import torch


def lr_factor(it: int, iters_per_epoch: int, steps, factor: float, warmup_iters: int,
              warmup_ratio: float) -> float:
    """The multiplier of the base learning rate at iteration ``it`` (0-based)."""
    epoch = it // max(1, iters_per_epoch)
    f = factor ** bisect.bisect_right(list(steps), epoch)
    if it < warmup_iters:
        f *= warmup_ratio + (1.0 - warmup_ratio) * it / warmup_iters
    return f


def build_scheduler(optimizer, train_cfg, iters_per_epoch: int):
    """The schedule of ``train_cfg`` (``lr_steps`` in epochs, ``lr_factor``,
    ``warmup_iters``, ``warmup_ratio``) for ``iters_per_epoch`` steps per epoch."""
    t = train_cfg
    steps = tuple(t.lr_steps)

    def fn(it):
        return lr_factor(it, iters_per_epoch, steps, t.lr_factor, t.warmup_iters,
                         t.warmup_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
