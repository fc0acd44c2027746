"""Randomness as data: every random number of a training sample, from (seed, epoch, sample).

Each training sample's draws come from its own generator,
``np.random.default_rng([seed, epoch, row])`` (``row``: the sample's row in the dataset
index), in this fixed order:

    uniform  (NUM_UNIFORM - 1,) geometry: flip, rotation?, half body, which half, shift x, y
    normal   (NUM_NORMAL,)    geometry: scale, rotation angle
    occlusion (n_occlusion,)  the information-dropping kernel's draws; [0] becomes its gate
    noda     (n_noda,)        the NODA kernel's draws; [0] becomes its gate
    uniform  (1,)             geometry: shift? (mmpose recipe), appended as the last uniform

and the NODA pool person from a second stream, ``default_rng([seed, epoch, row, 1])``. So
the augmentation of a sample depends on nothing but (seed, epoch, row): not on the batch it
lands in, the number of pipelines or workers, or how long the process has run; a run resumed
at epoch e sees exactly the crops the uninterrupted run saw. The DALI loader and the classic
reference loader (:mod:`dali_pose.tools.reference`) use the same draws, so their training
crops agree sample by sample.

A *gate* is the kernel's yes/no (1.0 / 0.0), decided here from a uniform draw and the
probability scheduled for the epoch: the probability is data, so changing it between
epochs recompiles and rebuilds nothing.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .geometry import NUM_NORMAL, NUM_UNIFORM

POOL_STREAM = 1  # the generator stream of the NODA pool pick


class SampleDraws(NamedTuple):
    """The draws of one sample (float32 arrays; lengths as in the module docstring)."""

    uniform: np.ndarray
    normal: np.ndarray
    occlusion: np.ndarray
    noda: np.ndarray


def gate(u: float, prob: float) -> float:
    """1.0 when the uniform draw ``u`` falls below ``prob``, else 0.0 (a kernel's gate)."""
    return 1.0 if u < prob else 0.0


def sample_draws(seed: int, epoch: int, row: int, n_occlusion: int = 0, n_noda: int = 0,
                 occlusion_prob: float = 0.0, noda_prob: float = 0.0) -> SampleDraws:
    """The draws of training sample ``row`` in ``epoch`` (see the module docstring).

    ``n_occlusion`` / ``n_noda``: the kernels' ``num_draws`` (0 where the kernel is not in
    the graph); their first draw is replaced by the gate for ``occlusion_prob`` /
    ``noda_prob``.
    """
    rng = np.random.default_rng([seed, epoch, row])
    uniform = np.empty(NUM_UNIFORM, np.float32)
    uniform[:-1] = rng.random(NUM_UNIFORM - 1, dtype=np.float32)
    normal = rng.standard_normal(NUM_NORMAL, dtype=np.float32)
    occlusion = rng.random(n_occlusion, dtype=np.float32)
    noda = rng.random(n_noda, dtype=np.float32)
    # drawn last so that the draws before it are those of the six-uniform layout
    uniform[-1] = rng.random(dtype=np.float32)
    if n_occlusion:
        occlusion[0] = gate(occlusion[0], occlusion_prob)
    if n_noda:
        noda[0] = gate(noda[0], noda_prob)
    return SampleDraws(uniform, normal, occlusion, noda)


def pool_pick(seed: int, epoch: int, row: int, pool_size: int) -> int:
    """The NODA pool person pasted into training sample ``row`` in ``epoch``."""
    return int(np.random.default_rng([seed, epoch, row, POOL_STREAM]).integers(pool_size))
