"""``build_loader``: DALI pipelines behind the interface of a torch DataLoader.

The caller never imports DALI. Each batch is a dict of torch tensors (N = batch size,
K joints, crop H x W, heatmaps h x w):

    image          (N, 3, H, W) float32 ImageNet-normalised (float16 with
                   loader.image_dtype: float16; uint8 0..255 intensities with uint8:
                   normalise on your device with dali_pose.normalize.normalize_images)
    image_flipped  (N, 3, H, W) validation with loader.flip_test: the horizontal mirror
    heatmap        (N, C, h, w) float32 (the codec's channels: K, or 3K for combined)
    target_weight  (N, K) float32: 0 for unlabelled joints and joints off the map
    keypoints      (N, K, 3) float32: x, y in crop px (pixel centres on integers), visibility
    matrix         (N, 2, 3) float32: source-image px -> crop px (OpenCV convention)
    center, scale  (N, 2) float32: the crop's box in source px (after augmentation)
    image_id, instance_id (N,) int64; row (N,) int64: the sample's row in the dataset index
    flipped (N,) bool; occluded (N, K) float32

Epochs and shards: :mod:`.schedule`. With ``loader.decode_per_image`` (the default; not
with NODA) each image is decoded once per epoch for all its people and their crops are
mixed by a seeded shuffle buffer (:func:`.schedule.image_epoch`); otherwise each person
decodes their own image (:func:`.schedule.epoch_schedule`). Either way every person comes
once per epoch, ranks hold disjoint people and the same number of batches, and ``len()``
is exact. Augmentation: every random draw of a training sample is a pure function of
(loader.seed, epoch, sample) (:mod:`dali_pose.draws`), so an epoch's batches do not depend
on what ran before it, nor on whether images are decoded per image or per person (the crops
are the same bit for bit). Occlusion and NODA switch on at ``occlusion.start_epoch`` /
``noda.start_epoch`` with their configured probabilities, or as :meth:`PoseLoader.set_prob`
says; the probability reaches the kernels as data, so changing it rebuilds nothing.
"""
from __future__ import annotations

import ctypes
from typing import Optional

import numpy as np
import torch

from ..datasets import DatasetError, PoseIndex, load_index
from ..errors import NoGpuError
from .graph import Outputs, graph_spec, make_pipeline
from .schedule import (ImageEpoch, epoch_schedule, image_epoch, image_groups,
                       occlusion_probs, person_epoch, runs, runs_needed)
from .sources import BatchSource, PoolSource, upload_pool


# the Outputs fields that become batch tensors, one row per crop
_CROP_FIELDS = ("image", "heatmap", "target_weight", "keypoints", "matrix", "crop_box",
                "flipped", "row", "occluded")
_BIG_FIELDS = ("image", "heatmap")


class _Batches:
    """The batches being filled (per-image decoding). The crops of a run's decodes go to
    many batches (the shuffle buffer mixes photos): each crop is copied once, from DALI's
    output straight to its row of its batch, whose tensors are allocated when its first
    crop arrives; :meth:`take` hands a batch out once its runs are done. ``held`` /
    ``peak``: crops waiting for their batch now / at most this epoch (the plan bounds it:
    about the shuffle buffer plus two runs' crops)."""

    def __init__(self, plan: ImageEpoch, device: torch.device):
        self.device = device
        self.valid = plan.valid
        sizes = np.array([len(d) for d in plan.decodes], np.int64)
        self.offset = np.concatenate([[0], np.cumsum(sizes)])  # decode d's first crop id
        ids = [self.offset[items[:v, 0]] + items[:v, 1]
               for items, v in zip(plan.batches, plan.valid)]
        dest = [np.stack([np.full(v, b), np.arange(v)], 1)
                for b, v in enumerate(plan.valid)]
        ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        order = np.argsort(ids, kind="stable")
        self.ids = ids[order]  # every (crop id, batch b, row k) the plan asks for, by id
        self.dest = (np.concatenate(dest) if dest else np.zeros((0, 2), np.int64))[order]
        self.filling = {}  # b -> field -> tensor
        self.count = np.zeros(len(plan.batches), np.int64)
        self.layout = None  # field -> (per-crop shape, torch dtype), from the first run
        self.held = self.peak = 0

    def _batch(self, b: int) -> dict:
        t = self.filling.get(b)
        if t is None:
            t = self.filling[b] = {
                name: torch.empty((int(self.valid[b]),) + shape, dtype=dtype,
                                  device=self.device)
                for name, (shape, dtype) in self.layout.items()}
        return t

    def put(self, outs, first_decode: int) -> None:
        """Copy the crops of a run (decodes ``first_decode``, ...) to their batches."""
        from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

        if self.layout is None:
            self.layout = {name: (tuple(getattr(outs, name)[0].shape()[1:]),
                                  to_torch_type[getattr(outs, name)[0].dtype])
                           for name in _CROP_FIELDS}
        d0, d1 = first_decode, first_decode + len(outs.row)
        lo, hi = np.searchsorted(self.ids, [self.offset[d0], self.offset[d1]])
        ids, dest = self.ids[lo:hi], self.dest[lo:hi]
        sample = np.searchsorted(self.offset, ids, side="right") - 1  # the crop's decode
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
        # images and heatmaps (~0.8 MB a crop in float32) are copied once each, straight to
        # their rows; the small fields go through one array per run and field, scattered
        # to each batch in one assignment (Python per batch, not per crop and field).
        batches = {b: {name: t.numpy() for name, t in self._batch(b).items()}
                   for b, _ in groups}
        for name in _BIG_FIELDS:
            src = [np.asarray(t) for t in getattr(outs, name)]
            for (b, k), i, j in zip(dest.tolist(), sample.tolist(), crop.tolist()):
                batches[b][name][k] = src[i][j]
        for name in _CROP_FIELDS:
            if name not in _BIG_FIELDS:
                run = np.concatenate([np.asarray(t) for t in getattr(outs, name)])[at]
                for b, sel in groups:
                    batches[b][name][dest[sel, 1]] = run[sel]

    def _put_gpu(self, outs, at, dest, groups, feed_ndarray) -> None:
        """The run's crops, field by field, into one temporary on DALI's stream, then
        gathered into each batch they go to (a few launches per batch, not per crop)."""
        stream = torch.cuda.current_stream(self.device)
        counts = [int(t.shape()[0]) for t in outs.row]
        start = np.concatenate([[0], np.cumsum(counts)])
        at = torch.from_numpy(at).to(self.device)
        rows = torch.from_numpy(dest[:, 1]).to(self.device)
        groups = [(b, torch.from_numpy(sel).to(self.device)) for b, sel in groups]
        for name, (shape, dtype) in self.layout.items():
            tmp = torch.empty((int(start[-1]),) + shape, dtype=dtype, device=self.device)
            for i, t in enumerate(getattr(outs, name)):
                feed_ndarray(t, tmp[start[i]:start[i + 1]], cuda_stream=stream)
            picked = tmp.index_select(0, at)
            for b, sel in groups:
                self._batch(b)[name].index_copy_(0, rows.index_select(0, sel),
                                                 picked.index_select(0, sel))

    def take(self, b: int) -> dict:
        """field -> (valid, ...) tensor: batch ``b``, every one of its crops copied in."""
        if self.count[b] != self.valid[b]:
            raise RuntimeError(f"loader: batch {b} has {self.count[b]} of its "
                               f"{self.valid[b]} crops (a bug in runs_needed)")
        self.held -= int(self.valid[b])
        t = self._batch(b)
        del self.filling[b]
        return t


class PoseLoader:
    """Iterable of batch dicts (see the module docstring). ``len()`` = batches per epoch.

    Several DALI pipelines ("lanes") take runs of decodes in turn: DALI runs a CPU numba
    operator's samples one after another on one thread, so one lane cannot fill the cores.
    A bad image ends the epoch with a ``DatasetError`` naming it (or is skipped,
    ``data.on_bad_image``); the next ``iter()`` starts a clean epoch on fresh pipelines. A
    new ``iter()`` while an earlier one is unfinished ends the earlier one (its next
    ``next()`` stops).
    """

    def __init__(self, cfg, split: str, index: PoseIndex, device: str, shard_id: int,
                 num_shards: int, device_id: Optional[int] = None, log=print):
        self.cfg, self.split, self.index = cfg, split, index
        self.info = index.info
        self.train = split == "train"
        self.device = device
        self.shard_id, self.num_shards = shard_id, num_shards
        self.batch_size = cfg.loader.batch_size
        self.epoch = 0
        self._prob = {}  # set_prob overrides
        self._generation = 0  # which iter() owns the pipelines
        self._dirty = False  # the pipelines hold what an unfinished epoch prefetched
        self._failed = False  # ... and an epoch failed: they are rebuilt
        self._plan_of = (None, None)  # (epoch, its plan)
        self._filling = None  # the last iteration's batches being filled (per image)
        gpu = device == "gpu"
        if gpu:
            self._torch_device = torch.device(
                "cuda", torch.cuda.current_device() if device_id is None else device_id)
        else:
            self._torch_device = torch.device("cpu")
        self.spec = graph_spec(cfg, self.info, train=self.train, gpu=gpu)
        # the rows of each image, in index order (val: det boxes of one image share it)
        self._groups = image_groups(np.asarray(index.image_paths)) if self.spec.per_image \
            else None
        self._check_sizes()
        pool = pool_data = None
        if self.spec.noda is not None:
            from .pool import load_pool

            pool = load_pool(cfg.noda.pool)
            if pool.kps.shape[1] != self.info.num_joints:
                raise DatasetError(f"NODA pool {cfg.noda.pool} has {pool.kps.shape[1]} joints, "
                                   f"the dataset {self.info.num_joints}")
            pool_data = upload_pool(pool, self._torch_device)  # one copy for all lanes
        self._lanes = []
        for _ in range(cfg.loader.pipelines):
            source = BatchSource(index, train=self.train, seed=cfg.loader.seed,
                                 n_occlusion=self.spec.n_occlusion,
                                 n_noda=self.spec.noda.num_draws if pool else 0,
                                 on_bad_image=cfg.data.on_bad_image, log=log)
            pool_source = None if pool is None else PoolSource(source, pool,
                                                               pool_data=pool_data)
            self._lanes.append([source, pool_source, self._pipeline(source, pool_source)])

    def _pipeline(self, source, pool_source):
        c = self.cfg.loader
        return make_pipeline(self.spec, source, pool_source, batch_size=self.batch_size,
                             num_threads=max(1, c.num_threads // c.pipelines),
                             device_id=self._torch_device.index if self.device == "gpu"
                             else None, prefetch=c.prefetch, seed=c.seed)

    def _check_sizes(self) -> None:
        n, what = len(self.index), f"{self.split} split ({self.index.source})"
        if self.num_shards > n:
            raise DatasetError(f"{what}: {n} people for {self.num_shards} ranks: every rank "
                               f"needs at least one")
        if self._groups is not None and self.num_shards > len(self._groups):
            raise DatasetError(f"{what}: {len(self._groups)} images for {self.num_shards} "
                               f"ranks: every rank needs at least one (or decode per "
                               f"person: loader.decode_per_image: false)")
        per_rank = n // self.num_shards
        if self.train and self.cfg.loader.drop_last and (
                per_rank < self.batch_size or not self._plan().batches):
            raise DatasetError(f"{what}: {n} people give {per_rank} per rank, fewer than one "
                               f"batch of loader.batch_size={self.batch_size} "
                               f"(loader.drop_last drops it): no training step")

    def _plan(self) -> ImageEpoch:
        """This epoch's plan for this rank (cached: ``len()`` and ``iter()`` share it)."""
        if self._plan_of[0] == self.epoch:
            return self._plan_of[1]
        c = self.cfg.loader
        kw = dict(train=self.train, seed=c.seed, epoch=self.epoch, shard_id=self.shard_id,
                  num_shards=self.num_shards, drop_last=c.drop_last)
        if self._groups is not None:
            plan = image_epoch(self._groups, self.batch_size, buffer=c.shuffle_buffer, **kw)
        else:
            plan = person_epoch(*epoch_schedule(len(self.index), self.batch_size, **kw))
        self._plan_of = (self.epoch, plan)
        return plan

    def __len__(self) -> int:
        return len(self._plan().batches)

    @property
    def skipped_images(self) -> dict:
        """path -> why, for the images skipped so far (``data.on_bad_image: skip``)."""
        return {p: m for source, _, _ in self._lanes for p, m in source.bad.items()}

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle and augmentation of ``epoch`` for the next iteration (like
        DistributedSampler)."""
        self.epoch = int(epoch)

    def set_prob(self, occlusion: Optional[float] = None, noda: Optional[float] = None):
        """Override the scheduled occlusion / NODA probability from the next epoch on
        (None: back to the schedule of the config)."""
        for key, p in (("occlusion", occlusion), ("noda", noda)):
            if p is not None and not 0.0 <= p <= 1.0:
                raise ValueError(f"set_prob: {key} probability {p} is not in [0, 1]")
            self._prob[key] = p

    def prob(self, epoch: Optional[int] = None):
        """(occlusion, NODA) probability of ``epoch`` (default: the next one)."""
        scheduled = occlusion_probs(self.cfg, self.epoch if epoch is None else epoch)
        return tuple(s if self._prob.get(k) is None else self._prob[k]
                     for k, s in zip(("occlusion", "noda"), scheduled))

    def __iter__(self):
        self._generation += 1
        generation = self._generation
        if self._dirty:  # an earlier iteration was abandoned part-way, or failed
            self._drain()
        plan = self._plan()
        occlusion, noda = self.prob()
        n_lanes = len(self._lanes)
        all_runs = runs(plan, self.batch_size)
        for lane, (source, pool_source, _) in enumerate(self._lanes):
            source.start(all_runs[lane::n_lanes], self.epoch, occlusion, noda)
            if pool_source is not None:
                pool_source.start()
        self._dirty = True
        # One decode per person: run b is batch b, copied as it is. Per image: each crop of
        # a run goes to its batch; a batch is handed out once its runs are done.
        filling = None if self._groups is None else _Batches(plan, self._torch_device)
        self._filling = filling
        need = runs_needed(plan, self.batch_size)
        done = 0
        try:
            for b, n_valid in enumerate(plan.valid):
                if generation != self._generation:  # a newer iter() took the pipelines over
                    return
                if filling is None:
                    yield self._to_torch(self._direct(self._run(b), n_valid))
                    continue
                while done < need[b]:
                    filling.put(self._run(done), done * self.batch_size)
                    done += 1
                yield self._to_torch(filling.take(b))
        finally:  # an abandoned or failed epoch: free the batches it was filling
            if filling is not None:
                filling.filling.clear()
        if generation == self._generation:
            self._drain()
            if self.train:  # without set_epoch, the next epoch still gets a new shuffle
                self.epoch += 1

    def _run(self, k: int) -> Outputs:
        """The outputs of run ``k`` of the epoch (its lane's next); a failure ends the
        epoch with a ``DatasetError`` naming the run's files."""
        n_lanes = len(self._lanes)
        source, _, pipe = self._lanes[k % n_lanes]
        try:
            return Outputs(*pipe.run())
        except DatasetError:
            self._failed = True
            raise
        except Exception as e:  # DALI's own failure: name the files of the run
            self._failed = True
            rows = [d[0] for d in source.runs[k // n_lanes]]
            files = sorted({str(self.index.image_paths[r]) for r in rows})
            more = " ..." if len(files) > 8 else ""
            raise DatasetError(f"DALI failed on a batch of {self.split} images "
                               f"({'; '.join(files[:8])}{more}): "
                               f"{str(e).strip().splitlines()[0]}") from e

    def _drain(self) -> None:
        """End the epoch in every pipeline: run it into its source's StopIteration (what it
        prefetched) and reset it; a pipeline that failed is built anew."""
        for lane in self._lanes:
            source, pool_source, pipe = lane
            source.finish()
            if pool_source is not None:
                pool_source.finish()
            try:
                while True:
                    pipe.run()
            except StopIteration:
                pipe.reset()
            except Exception:  # a bad file among the prefetched batches
                self._failed = True
            if self._failed:
                lane[2] = self._pipeline(source, pool_source)
        self._failed = self._dirty = False

    def _direct(self, outs: Outputs, n_valid: int) -> dict:
        """field -> (n_valid, ...) tensor of a run of one-person decodes: one copy from
        DALI's buffers."""
        from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type
        from nvidia.dali.tensors import TensorListGPU

        out = {}
        for name in _CROP_FIELDS:
            tl = getattr(outs, name)
            shape = tuple(tl[0].shape())  # (1, ...) each: one crop per decode
            t = torch.empty((len(tl),) + shape, dtype=to_torch_type[tl[0].dtype],
                            device=self._torch_device)
            if isinstance(tl, TensorListGPU):  # as DALI's own torch iterator does
                feed_ndarray(tl.as_tensor(), t,
                             cuda_stream=torch.cuda.current_stream(self._torch_device))
            else:  # sample by sample into t: as_tensor() would first copy a sparse list
                tl.copy_to_external(ctypes.c_void_p(t.data_ptr()))
            out[name] = t.reshape((len(tl),) + shape[1:])[:n_valid]
        return out

    def _to_torch(self, t: dict) -> dict:
        """The batch dict of the crops ``t`` (field -> tensor, one row per crop); the crops
        of skipped images (row -1) left out."""
        rows = t["row"].cpu().numpy()
        if (rows < 0).any():  # -1: a skipped image's crop
            keep = torch.from_numpy(np.flatnonzero(rows >= 0)).to(self._torch_device)
            t = {k: v.index_select(0, keep) for k, v in t.items()}
            rows = rows[rows >= 0]
        ids = self.index
        batch = {
            "image": t["image"],
            "heatmap": t["heatmap"],
            "target_weight": t["target_weight"],
            "keypoints": t["keypoints"],
            "matrix": t["matrix"],
            "center": t["crop_box"][:, 0:2].contiguous(),
            "scale": t["crop_box"][:, 2:4].contiguous(),
            "row": t["row"],
            "image_id": torch.from_numpy(ids.image_id[rows]).to(self._torch_device),
            "instance_id": torch.from_numpy(ids.instance_id[rows]).to(self._torch_device),
            "flipped": t["flipped"].bool(),
            "occluded": t["occluded"],
        }
        if not self.train and self.cfg.loader.flip_test:
            # The UDP flip is the exact mirror x -> (W-1) - x of the crop's pixel grid.
            batch["image_flipped"] = torch.flip(batch["image"], dims=[3])
        return batch


def build_loader(cfg, split: str, *, device: Optional[str] = None, shard_id: int = 0,
                 num_shards: int = 1, index: Optional[PoseIndex] = None,
                 device_id: Optional[int] = None, log=print) -> PoseLoader:
    """A drop-in DataLoader for ``split`` ('train' or 'val').

    ``device`` overrides ``cfg.loader.device`` ('gpu' needs CUDA; 'cpu' runs DALI's CPU
    backend); ``device_id`` picks the GPU (default: torch's current device). ``index`` lets
    a caller pass a prebuilt dataset index. ``log`` receives the lines that report what the
    index left out and which images were skipped (None: quiet, e.g. on ranks > 0).
    """
    device = device or cfg.loader.device
    if device not in ("gpu", "cpu"):
        raise ValueError(f"device must be 'gpu' or 'cpu', got {device!r}")
    if device == "gpu" and not torch.cuda.is_available():
        raise NoGpuError()
    if index is None:
        index = load_index(cfg, split, log)
    return PoseLoader(cfg, split, index, device, shard_id, num_shards, device_id, log)
