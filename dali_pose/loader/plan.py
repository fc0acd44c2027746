"""The epoch's plan: which index rows each batch of an epoch holds, per rank.

Every DALI sample is one image and its people of the epoch (a *read*: the image file read
and decoded once for them). The plan (:class:`ImageEpoch`, made by :func:`image_epoch`)
lists the reads a rank's pipelines run and which of their crops make each batch: training
deals the images to the ranks (disjoint shares, equal batch counts) and mixes their crops
with a seeded shuffle buffer; validation keeps the dataset order and yields every instance
exactly once. A plan is a pure function
of (seed, epoch, shard); the loader runs its reads in *runs* of ``batch_size`` reads
(one DALI batch each, :func:`runs`). :func:`occlusion_probs` gives the epoch's occlusion
and NODA probabilities.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np


def occlusion_probs(cfg, epoch: int) -> Tuple[float, float]:
    """(information dropping, NODA) probability of training ``epoch``: the configured
    ``occlusion.prob`` / ``noda.prob`` from their ``start_epoch`` on, 0 before."""
    occ, noda = cfg.occlusion, cfg.noda
    return (occ.prob if occ.method != "none" and epoch >= occ.start_epoch else 0.0,
            noda.prob if epoch >= noda.start_epoch else 0.0)


@dataclass(frozen=True)
class ImageEpoch:
    """One epoch of one shard when each image is read once for all its people.

    ``reads[d]``: the index rows whose crops read ``d`` (one image, one DALI sample) yields,
    in order; ``batches[b]``: (batch_size, 2) int64 ``(d, j)`` pairs, crop ``j`` of read ``d``,
    in the batch's order; ``valid[b]``: how many of them count (validation pads its last
    batch). ``batch_rows(b)`` gives the rows.
    """

    reads: List[np.ndarray]
    batches: List[np.ndarray]
    valid: List[int]

    def batch_rows(self, b: int) -> np.ndarray:
        return np.array([self.reads[d][j] for d, j in self.batches[b]], np.int64)


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
    """The epoch's reads and batches when each image is read once for its people.

    Training: the images are shuffled with a generator seeded by (seed, epoch) and dealt to
    the ranks in that order, each to the rank with the fewest people so far (disjoint
    shards of nearly equal size); every rank makes the same number of batches (the smallest
    rank's whole batches with ``drop_last``; otherwise the largest rank's: a rank short of
    them puts its last people into one batch filled up from its first images, read
    again, and goes on from there). A rank's crops enter a shuffle buffer in read order;
    whenever it holds ``buffer`` crops a batch is drawn from it uniformly without
    replacement (generator seeded by (seed, epoch, shard, 1)); once every image is in, the
    buffer is drawn down by whole batches: a pure function of (seed, epoch, shard). So every
    person comes once (drop_last: but for fewer than a batch and an image per rank; else
    all, some twice to fill). Validation: each rank takes every
    num_shards-th image; crops go out in read order; every rank makes as many batches as
    the rank with the most people, its last ones padded (``valid[b]`` < batch_size; the
    padding rows repeat the rank's last crop).
    """
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id {shard_id} not in [0, {num_shards})")
    if not train:
        mine = groups[shard_id::num_shards]
        items = [(d, j) for d, g in enumerate(mine) for j in range(len(g))]
        # every rank yields as many batches as the fullest one (gathers need equal counts)
        most = max(sum(len(g) for g in groups[r::num_shards]) for r in range(num_shards))
        batches, valid = [], []
        for s in range(0, -(-most // batch_size) * batch_size, batch_size):
            chunk = items[s:s + batch_size]
            valid.append(len(chunk))
            # padding rows repeat the rank's last real crop (already read: no extra work)
            chunk += [chunk[-1] if chunk else items[-1]] * (batch_size - len(chunk))
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
    reads, pool, batches = [], [], []
    big = max(buffer, batch_size)

    def read(g):
        reads.append(g)
        pool.extend((len(reads) - 1, j) for j in range(len(g)))

    for g in mine:  # the rank's own people, each once
        if len(batches) == n_batches:
            break
        read(g)
        while len(pool) >= big and len(batches) < n_batches:
            batches.append(_draw(pool, batch_size, rng))
    while len(pool) >= batch_size and len(batches) < n_batches:
        batches.append(_draw(pool, batch_size, rng))
    if len(batches) < n_batches and mine:  # drop_last: false, and this rank is short
        # its last people all go into the next batch, filled with its first images again
        rest, pool[:] = list(pool), []
        cycle = itertools.cycle(mine)
        while len(rest) + len(pool) < batch_size:
            read(next(cycle))
        fill = _draw(pool, batch_size - len(rest), rng)
        batch = np.concatenate([np.array(rest, np.int64).reshape(-1, 2), fill])
        batches.append(batch[rng.permutation(len(batch))])
        while len(batches) < n_batches:
            read(next(cycle))
            while len(pool) >= big and len(batches) < n_batches:
                batches.append(_draw(pool, batch_size, rng))
    return ImageEpoch(reads, batches, [batch_size] * len(batches))


def _draw(pool: list, batch_size: int, rng) -> np.ndarray:
    """``batch_size`` items of ``pool`` uniformly without replacement, removed from it."""
    take = set(rng.choice(len(pool), batch_size, replace=False).tolist())
    batch = [pool[i] for i in sorted(take)]
    pool[:] = [p for i, p in enumerate(pool) if i not in take]
    rng.shuffle(batch)
    return np.array(batch, np.int64)


def runs(plan: ImageEpoch, run_size: int) -> List[List[np.ndarray]]:
    """The plan's reads in runs of ``run_size`` (one DALI batch each; the last may be
    shorter)."""
    return [plan.reads[s:s + run_size] for s in range(0, len(plan.reads), run_size)]


def runs_needed(plan: ImageEpoch, run_size: int) -> np.ndarray:
    """(n_batches,) int64: how many runs must have been read before batch ``b`` can be
    assembled (its valid crops' reads all done); non-decreasing."""
    need = [int(bt[:v, 0].max()) // run_size + 1 if v else 0
            for bt, v in zip(plan.batches, plan.valid)]
    return np.maximum.accumulate(np.array(need, np.int64)) if need else np.zeros(0, np.int64)


def skip_batches(plan: ImageEpoch, k: int) -> ImageEpoch:
    """The plan of batches ``k``.. of ``plan`` (a resumed epoch): only the reads those
    batches take crops from, in their order, so the images that fed only batches before
    ``k`` are not read. A read's crops do not depend on the other reads of its run, so the
    batches are the same as the uninterrupted epoch's, bit for bit."""
    if not 0 <= k <= len(plan.batches):
        raise ValueError(f"skip_batches: batch {k} of an epoch of {len(plan.batches)}")
    rest = plan.batches[k:]
    used = np.unique(np.concatenate([b[:, 0] for b in rest])) if rest else \
        np.zeros(0, np.int64)
    new = np.full(len(plan.reads), -1, np.int64)
    new[used] = np.arange(len(used))
    batches = [np.stack([new[b[:, 0]], b[:, 1]], 1) for b in rest]
    return ImageEpoch([plan.reads[d] for d in used.tolist()], batches, list(plan.valid[k:]))


def held_peak(plan: ImageEpoch, run_size: int) -> Tuple[int, int]:
    """(crops, batches): the most crops read and not yet handed out in a batch, and the
    most batches with a crop read and not yet handed out, over the epoch, when the
    runs of ``run_size`` reads are done one after another and each batch is handed out
    as soon as its runs are. The loader holds the first (:class:`.scatter.Batches` keeps
    crops in groups); a loader allocating each batch whole at its first crop would hold
    the second times ``batch_size`` crops."""
    sizes = np.array([len(d) for d in plan.reads], np.int64)
    per_run = np.add.reduceat(sizes, np.arange(0, len(sizes), run_size)) if len(sizes) \
        else np.zeros(0, np.int64)
    first = np.array([int(bt[:, 0].min()) // run_size for bt in plan.batches], np.int64)
    need = runs_needed(plan, run_size)
    held = peak = done = open_peak = 0
    for b in range(len(plan.batches)):
        while done < need[b]:
            held += int(per_run[done])
            done += 1
        peak = max(peak, held)
        open_peak = max(open_peak, int(((first < done) & (np.arange(len(first)) >= b)).sum()))
        held -= len(plan.batches[b])
    return peak, open_peak
