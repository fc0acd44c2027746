"""Copying DALI's per-image outputs into batches: each crop once, straight to its row.

A run (one DALI batch of reads, each an image and its P people) yields crops for many
batches (the plan's shuffle buffer mixes photos). :class:`Batches` keeps the crops waiting
for their batches, in *groups* (the crops of one run for one batch, allocated as they
arrive): on the CPU each crop image / heatmap is copied from DALI's buffers to its group
and the small fields go through one array per run; on the GPU the run goes to one
temporary on DALI's stream and is gathered into each group. A batch is assembled from its
groups when it is handed out (one more copy, but for a batch made by a single run).
Memory: only the crops read and not yet handed out are held, at most about the
shuffle buffer plus the runs in flight (:func:`.plan.held_peak`); a batch allocated whole
at its first crop would hold, for a 20,000-image COCO-like epoch, tens of batches open.
"""
from __future__ import annotations

import numpy as np
import torch

from .graph import Outputs
from .plan import ImageEpoch

# the Outputs fields that become batch tensors, one row per crop
CROP_FIELDS = Outputs._fields
_BIG_FIELDS = ("image", "heatmap")


class Batches:
    """The batches of one epoch being filled. The crops of a run's reads go to many
    batches (the shuffle buffer mixes photos): the crops of a run for one batch are copied
    from DALI's output into a group allocated for them; :meth:`take` assembles a batch
    from its groups once its runs are done, :meth:`clear` frees the rest. ``held`` /
    ``peak``: crops held (in groups, waiting for their batch) now / at most this epoch
    (the plan bounds it: :func:`.plan.held_peak`)."""

    def __init__(self, plan: ImageEpoch, device: torch.device):
        self.device = device
        self.size = [len(items) for items in plan.batches]  # padding rows included
        sizes = np.array([len(d) for d in plan.reads], np.int64)
        self.offset = np.concatenate([[0], np.cumsum(sizes)])  # read d's first crop id
        ids = [self.offset[items[:, 0]] + items[:, 1] for items in plan.batches]
        dest = [np.stack([np.full(n, b), np.arange(n)], 1) for b, n in enumerate(self.size)]
        ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        order = np.argsort(ids, kind="stable")
        self.ids = ids[order]  # every (crop id, batch b, row k) the plan asks for, by id
        self.dest = (np.concatenate(dest) if dest else np.zeros((0, 2), np.int64))[order]
        self.filling = {}  # b -> [(rows of the batch (n,) int64, field -> (n, ...) tensor)]
        self.count = np.zeros(len(plan.batches), np.int64)
        self.layout = None  # field -> (per-crop shape, torch dtype), from the first run
        self.held = self.peak = 0

    def _group(self, b: int, rows: np.ndarray) -> dict:
        """A new group of batch ``b``: field -> (len(rows), ...) tensor, for its ``rows``."""
        t = {name: torch.empty((len(rows),) + shape, dtype=dtype, device=self.device)
             for name, (shape, dtype) in self.layout.items()}
        self.filling.setdefault(b, []).append((rows, t))
        return t

    def clear(self) -> None:
        """Free the batches still being filled (an abandoned or failed epoch)."""
        self.filling.clear()

    def put(self, outs, first_read: int) -> None:
        """Copy the crops of a run (reads ``first_read``, ...) to their batches."""
        from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

        if self.layout is None:
            self.layout = {name: (tuple(getattr(outs, name)[0].shape()[1:]),
                                  to_torch_type[getattr(outs, name)[0].dtype])
                           for name in CROP_FIELDS}
        d0, d1 = first_read, first_read + len(outs.row)
        lo, hi = np.searchsorted(self.ids, [self.offset[d0], self.offset[d1]])
        ids, dest = self.ids[lo:hi], self.dest[lo:hi]
        sample = np.searchsorted(self.offset, ids, side="right") - 1  # the crop's read
        crop = ids - self.offset[sample]
        sample -= d0
        at = ids - self.offset[d0]  # the crop's place among the run's crops
        groups = [(b, np.flatnonzero(dest[:, 0] == b)) for b in np.unique(dest[:, 0]).tolist()]
        np.add.at(self.count, dest[:, 0], 1)
        self.held += len(ids)
        self.peak = max(self.peak, self.held)
        if self.device.type == "cuda":
            self._put_gpu(outs, at, dest, groups, feed_ndarray)
            return
        # CPU: views of DALI's buffers (valid until the pipeline runs again). The crop
        # images and heatmaps (~0.8 MB a crop in float32) are copied once each to their
        # group; the small fields go through one array per run and field, one assignment
        # per group (Python per group, not per crop and field).
        made = [{name: t.numpy() for name, t in self._group(b, dest[sel, 1]).items()}
                for b, sel in groups]
        place = np.empty(len(dest), np.int64)  # each crop's place in its group
        which = np.empty(len(dest), np.int64)  # ... and the group
        for g, (_, sel) in enumerate(groups):
            place[sel], which[sel] = np.arange(len(sel)), g
        for name in _BIG_FIELDS:
            src = [np.asarray(t) for t in getattr(outs, name)]
            for g, k, i, j in zip(which.tolist(), place.tolist(), sample.tolist(),
                                  crop.tolist()):
                made[g][name][k] = src[i][j]
        for name in CROP_FIELDS:
            if name not in _BIG_FIELDS:
                run = np.concatenate([np.asarray(t) for t in getattr(outs, name)])[at]
                for g, (_, sel) in enumerate(groups):
                    made[g][name][:] = run[sel]

    def _put_gpu(self, outs, at, dest, groups, feed_ndarray) -> None:
        """The run's crops, field by field, into one temporary on DALI's stream, then
        gathered into each batch they go to (a few launches per batch, not per crop)."""
        stream = torch.cuda.current_stream(self.device)
        counts = [int(t.shape()[0]) for t in outs.row]
        start = np.concatenate([[0], np.cumsum(counts)])
        at = torch.from_numpy(at).to(self.device)
        made = [self._group(b, dest[sel, 1]) for b, sel in groups]
        groups = [torch.from_numpy(sel).to(self.device) for _, sel in groups]
        for name, (shape, dtype) in self.layout.items():
            tmp = torch.empty((int(start[-1]),) + shape, dtype=dtype, device=self.device)
            for i, t in enumerate(getattr(outs, name)):
                feed_ndarray(t, tmp[start[i]:start[i + 1]], cuda_stream=stream)
            picked = tmp.index_select(0, at)
            for t, sel in zip(made, groups):
                torch.index_select(picked, 0, sel, out=t[name])

    def take(self, b: int) -> dict:
        """field -> (rows, ...) tensor: batch ``b`` (validation: padding rows included),
        every one of its crops copied in."""
        if self.count[b] != self.size[b]:
            raise RuntimeError(f"loader: batch {b} has {self.count[b]} of its "
                               f"{self.size[b]} crops (a bug in runs_needed)")
        self.held -= self.size[b]
        parts = self.filling.pop(b)
        rows, t = parts[0]
        if len(parts) == 1 and (rows == np.arange(self.size[b])).all():
            return t  # made by one run, in order: no copy
        out = {name: torch.empty((self.size[b],) + shape, dtype=dtype, device=self.device)
               for name, (shape, dtype) in self.layout.items()}
        for rows, t in parts:
            if self.device.type == "cpu":
                # NumPy, one row at a time (a memcpy each): torch's index_copy_ costs ~10x
                # the CPU time on a crop image (0.7-1.0 ms against 0.08), which doubled
                # the loader's CPU time per crop
                for name, v in t.items():
                    dst, src = out[name].numpy(), v.numpy()
                    for k, r in enumerate(rows.tolist()):
                        dst[r] = src[k]
            else:
                at = torch.from_numpy(rows).to(self.device)
                for name, v in t.items():
                    out[name].index_copy_(0, at, v)
        return out
