"""Epochs and shards: which index rows each batch of an epoch holds, per rank.

Training shuffles with a generator seeded by (seed, epoch), gives rank r every
num_shards-th sample of that permutation, and drops or fills (by wrapping around) the last
partial batch; validation keeps the dataset order, gives each rank a disjoint stride, and
yields every instance exactly once (the padded tail of the last batch is cut off).
"""
from __future__ import annotations

import math
from typing import List, Tuple

import numpy as np


def epoch_schedule(n: int, batch_size: int, *, train: bool, seed: int, epoch: int,
                   shard_id: int = 0, num_shards: int = 1,
                   drop_last: bool = True) -> Tuple[List[np.ndarray], List[int]]:
    """Batches of row indices for one epoch of one shard, and each batch's valid count.

    Every batch has exactly ``batch_size`` indices (DALI's batch size is fixed); validation
    pads the last one by repeating its last row and reports fewer valid rows.
    """
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id {shard_id} not in [0, {num_shards})")
    if train:
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        per_rank = n // num_shards if drop_last else math.ceil(n / num_shards)
        shard = perm[shard_id::num_shards]
        if len(shard) < per_rank:  # fill: wrap around the permutation
            shard = np.concatenate([shard, perm[: per_rank - len(shard)]])
        shard = shard[:per_rank]
        nb = len(shard) // batch_size if drop_last else math.ceil(len(shard) / batch_size)
        if nb and not drop_last and len(shard) % batch_size:
            shard = np.resize(shard, nb * batch_size)  # np.resize repeats from the start
        batches = [shard[i * batch_size:(i + 1) * batch_size] for i in range(nb)]
        return batches, [batch_size] * nb
    shard = np.arange(n)[shard_id::num_shards]
    batches, valid = [], []
    for start in range(0, len(shard), batch_size):
        b = shard[start:start + batch_size]
        valid.append(len(b))
        batches.append(np.concatenate([b, np.full(batch_size - len(b), b[-1])]))
    return batches, valid


def occlusion_probs(cfg, epoch: int) -> Tuple[float, float]:
    """(information dropping, NODA) probability of training ``epoch``: the configured
    ``occlusion.prob`` / ``noda.prob`` from their ``start_epoch`` on, 0 before."""
    occ, noda = cfg.occlusion, cfg.noda
    return (occ.prob if occ.method != "none" and epoch >= occ.start_epoch else 0.0,
            noda.prob if epoch >= noda.start_epoch else 0.0)
