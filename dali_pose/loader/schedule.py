"""Epochs and shards: which index rows each batch of an epoch holds, per rank.

Training shuffles with a generator seeded by (seed, epoch), gives rank r every
num_shards-th sample of that permutation, and drops or fills (by wrapping around) the last
partial batch; validation keeps the dataset order, gives each rank a disjoint stride, and
yields every instance exactly once (the padded tail of the last batch is cut off).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ImageEpoch:
    """One epoch of one shard when each image is decoded once for all its people.

    ``decodes[d]``: the index rows whose crops decode sample ``d`` (one image) yields, in
    order; ``batches[b]``: (batch_size, 2) int64 ``(d, j)`` pairs, crop ``j`` of decode ``d``,
    in the batch's order; ``valid[b]``: how many of them count (validation pads its last
    batch). ``batch_rows(b)`` gives the rows.
    """

    decodes: List[np.ndarray]
    batches: List[np.ndarray]
    valid: List[int]

    def batch_rows(self, b: int) -> np.ndarray:
        return np.array([self.decodes[d][j] for d, j in self.batches[b]], np.int64)


def image_groups(image_keys: np.ndarray) -> List[np.ndarray]:
    """The rows of each image (images in order of first appearance, rows ascending)."""
    _, first, inverse = np.unique(image_keys, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # images by first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    groups: List[list] = [[] for _ in order]
    for row, g in enumerate(rank[inverse.reshape(-1)]):
        groups[g].append(row)
    return [np.array(g, np.int64) for g in groups]


def image_epoch(groups: List[np.ndarray], batch_size: int, *, train: bool, seed: int,
                epoch: int, shard_id: int = 0, num_shards: int = 1, drop_last: bool = True,
                buffer: int = 512) -> ImageEpoch:
    """The epoch's decodes and batches when each image is decoded once for its people.

    Training: the images are shuffled with a generator seeded by (seed, epoch) and dealt to
    the ranks in that order, each to the rank with the fewest people so far (disjoint
    shards of nearly equal size); every rank makes the same number of batches (the smallest
    rank's whole batches with ``drop_last``; otherwise the largest rank's, the others
    decoding their first images again). A rank's crops enter a shuffle buffer in decode
    order; whenever it holds ``buffer`` crops a batch is drawn from it uniformly without
    replacement (generator seeded by (seed, epoch, shard, 1)), until the epoch has its
    batches: a pure function of (seed, epoch, shard). Validation: each rank takes every
    num_shards-th image; crops go out in decode order, the last batch padded.
    """
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id {shard_id} not in [0, {num_shards})")
    if not train:
        mine = groups[shard_id::num_shards]
        items = [(d, j) for d, g in enumerate(mine) for j in range(len(g))]
        batches, valid = [], []
        for s in range(0, len(items), batch_size):
            chunk = items[s:s + batch_size]
            valid.append(len(chunk))
            chunk += [chunk[-1]] * (batch_size - len(chunk))
            batches.append(np.array(chunk, np.int64))
        return ImageEpoch(list(mine), batches, valid)
    perm = np.random.default_rng([seed, epoch]).permutation(len(groups))
    loads = np.zeros(num_shards, np.int64)
    mine = []
    for g in perm:
        r = int(np.argmin(loads))
        loads[r] += len(groups[g])
        if r == shard_id:
            mine.append(groups[g])
    if drop_last:
        n_batches = int(loads.min()) // batch_size
    else:
        n_batches = -(-int(loads.max()) // batch_size)
    rng = np.random.default_rng([seed, epoch, shard_id, 1])
    decodes, pool, batches = [], [], []
    while len(batches) < n_batches:
        if not mine:
            break
        for g in mine:  # again from the first image when filling (drop_last: false)
            decodes.append(g)
            pool.extend((len(decodes) - 1, j) for j in range(len(g)))
            while len(pool) >= max(buffer, batch_size) and len(batches) < n_batches:
                batches.append(_draw(pool, batch_size, rng))
            if len(batches) == n_batches:
                break
        else:
            while len(pool) >= batch_size and len(batches) < n_batches:
                batches.append(_draw(pool, batch_size, rng))
    return ImageEpoch(decodes, batches, [batch_size] * len(batches))


def _draw(pool: list, batch_size: int, rng) -> np.ndarray:
    """``batch_size`` items of ``pool`` uniformly without replacement, removed from it."""
    take = set(rng.choice(len(pool), batch_size, replace=False).tolist())
    batch = [pool[i] for i in sorted(take)]
    pool[:] = [p for i, p in enumerate(pool) if i not in take]
    rng.shuffle(batch)
    return np.array(batch, np.int64)
