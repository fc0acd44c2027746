"""``build_loader``: DALI pipelines behind the interface of a torch DataLoader.

The caller never imports DALI. Each batch is a dict of torch tensors (N = batch size,
K joints, crop H x W, heatmaps h x w):

    image          (N, 3, H, W) float32 (float16 with loader.fp16), ImageNet-normalised
    image_flipped  (N, 3, H, W) validation with loader.flip_test: the horizontal mirror
    heatmap        (N, C, h, w) float32 (the codec's channels: K, or 3K for combined)
    target_weight  (N, K) float32: 0 for unlabelled joints and joints off the map
    keypoints      (N, K, 3) float32: x, y in crop px (pixel centres on integers), visibility
    matrix         (N, 2, 3) float32: source-image px -> crop px (OpenCV convention)
    center, scale  (N, 2) float32: the crop's box in source px (after augmentation)
    image_id, instance_id (N,) int64; row (N,) int64: the sample's row in the dataset index
    flipped (N,) bool; occluded (N, K) float32

Epochs and shards: :func:`.schedule.epoch_schedule`. Augmentation: every random draw of a
training sample is a pure function of (loader.seed, epoch, sample) (:mod:`dali_pose.draws`),
so an epoch's batches do not depend on what ran before it. Occlusion and NODA switch on at
``occlusion.start_epoch`` / ``noda.start_epoch`` with their configured probabilities, or as
:meth:`PoseLoader.set_prob` says; the probability reaches the kernels as data, so changing
it rebuilds nothing.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..datasets import DatasetError, PoseIndex, load_index
from .graph import Outputs, graph_spec, make_pipeline
from .schedule import epoch_schedule, occlusion_probs
from .sources import BatchSource, PoolSource, upload_pool


class PoseLoader:
    """Iterable of batch dicts (see the module docstring). ``len()`` = batches per epoch.

    Several DALI pipelines ("lanes") take batches in turn: DALI runs a CPU numba operator's
    samples one after another on one thread, so one lane cannot fill the cores. A bad image
    ends the epoch with a ``DatasetError`` naming it (or is skipped, ``data.on_bad_image``);
    the next ``iter()`` starts a clean epoch on fresh pipelines. A new ``iter()`` while an
    earlier one is unfinished ends the earlier one (its next ``next()`` stops).
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
        self._check_sizes()
        gpu = device == "gpu"
        if gpu:
            self._torch_device = torch.device(
                "cuda", torch.cuda.current_device() if device_id is None else device_id)
        else:
            self._torch_device = torch.device("cpu")
        self.spec = graph_spec(cfg, self.info, train=self.train, gpu=gpu)
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
        per_rank = n // self.num_shards
        if self.train and self.cfg.loader.drop_last and per_rank < self.batch_size:
            raise DatasetError(f"{what}: {n} people give {per_rank} per rank, fewer than one "
                               f"batch of loader.batch_size={self.batch_size} "
                               f"(loader.drop_last drops it): no training step")

    def _schedule(self):
        return epoch_schedule(len(self.index), self.batch_size, train=self.train,
                              seed=self.cfg.loader.seed, epoch=self.epoch,
                              shard_id=self.shard_id, num_shards=self.num_shards,
                              drop_last=self.cfg.loader.drop_last)

    def __len__(self) -> int:
        return len(self._schedule()[0])

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
        batches, valid = self._schedule()
        occlusion, noda = self.prob()
        n_lanes = len(self._lanes)
        for lane, (source, pool_source, _) in enumerate(self._lanes):
            source.start(batches[lane::n_lanes], self.epoch, occlusion, noda)
            if pool_source is not None:
                pool_source.start()
        self._dirty = True
        for b, n_valid in enumerate(valid):
            if generation != self._generation:  # a newer iter() took the pipelines over
                return
            source, _, pipe = self._lanes[b % n_lanes]
            try:
                outs = pipe.run()
            except DatasetError:
                self._failed = True
                raise
            except Exception as e:  # DALI's own failure: name the files of the batch
                self._failed = True
                rows = source.batches[b // n_lanes]
                files = sorted({str(self.index.image_paths[r]) for r in rows})
                more = " ..." if len(files) > 8 else ""
                raise DatasetError(f"DALI failed on a batch of {self.split} images "
                                   f"({'; '.join(files[:8])}{more}): "
                                   f"{str(e).strip().splitlines()[0]}") from e
            yield self._to_torch(Outputs(*outs), n_valid)
        if generation == self._generation:
            self._drain()
            if self.train:  # without set_epoch, the next epoch still gets a new shuffle
                self.epoch += 1

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

    def _tensor(self, tl, n: int, keep) -> torch.Tensor:
        from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type
        from nvidia.dali.tensors import TensorListGPU

        t = tl.as_tensor()
        if isinstance(tl, TensorListGPU):
            out = torch.empty(t.shape(), dtype=to_torch_type[t.dtype],
                              device=self._torch_device)
            feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream(self._torch_device))
            out = out[:n]
            return out if keep is None else out[torch.from_numpy(keep).to(out.device)]
        arr = np.array(t)[:n] if keep is None else np.array(t)[:n][keep]  # a copy
        return torch.from_numpy(arr).to(self._torch_device, non_blocking=True)

    def _to_torch(self, outs: Outputs, n_valid: int) -> dict:
        rows = np.array(outs.row.as_cpu().as_tensor() if hasattr(outs.row, "as_cpu")
                        else outs.row.as_tensor())[:n_valid, 0]
        keep = None if (rows >= 0).all() else rows >= 0  # -1: a skipped image's sample
        t = Outputs(*(self._tensor(o, n_valid, keep) for o in outs))
        rows = rows if keep is None else rows[keep]
        ids = self.index
        batch = {
            "image": t.image,
            "heatmap": t.heatmap,
            "target_weight": t.target_weight,
            "keypoints": t.keypoints,
            "matrix": t.matrix,
            "center": t.crop_box[:, 0:2].contiguous(),
            "scale": t.crop_box[:, 2:4].contiguous(),
            "row": torch.from_numpy(rows.copy()).to(self._torch_device),
            "image_id": torch.from_numpy(ids.image_id[rows]).to(self._torch_device),
            "instance_id": torch.from_numpy(ids.instance_id[rows]).to(self._torch_device),
            "flipped": t.flipped[:, 0].bool(),
            "occluded": t.occluded,
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
        raise RuntimeError("loader.device is 'gpu' but CUDA is not available; "
                           "use --set loader.device=cpu")
    if index is None:
        index = load_index(cfg, split, log)
    return PoseLoader(cfg, split, index, device, shard_id, num_shards, device_id, log)
