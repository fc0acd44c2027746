"""``build_loader``: a DALI pipeline behind the interface of a torch DataLoader.

The caller never imports DALI. Each batch is a dict of torch tensors (N = batch size,
K joints, crop H x W, heatmaps h x w):

    image          (N, 3, H, W) float32 (float16 with loader.fp16), ImageNet-normalised
    image_flipped  (N, 3, H, W) validation with loader.flip_test: the horizontal mirror
    heatmap        (N, K, h, w) float32 (3K channels for model.target=combined)
    target_weight  (N, K) float32: 0 for unlabelled joints and joints off the map
    keypoints      (N, K, 3) float32: x, y in crop px (pixel centres on integers), visibility
    matrix         (N, 2, 3) float32: source-image px -> crop px (OpenCV convention)
    center, scale  (N, 2) float32: the crop's box in source px (after augmentation)
    image_id, instance_id (N,) int64; flipped (N,) bool; occluded (N, K) float32

Epochs and shards (``epoch_schedule``): training shuffles with a generator seeded by
(seed, epoch), gives rank r every num_shards-th sample of that permutation, and drops or
fills (by wrapping around) the last partial batch; validation keeps the dataset order,
gives each rank a disjoint stride, and yields every instance exactly once (the padded tail
of the last batch is cut off). Augmentation draws come from the DALI pipeline's seeded
generator, seeded with (seed, shard_id); they continue from epoch to epoch.
"""
from __future__ import annotations

import math
import time
from typing import List, Optional, Tuple

import numpy as np
import torch

from .datasets import DatasetError, PoseIndex, load_index

_SIGNATURES = (b"\xff\xd8", b"\x89PNG")


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


class _Source:
    """External source: serves the batches of the current epoch, then StopIteration."""

    def __init__(self, index: PoseIndex):
        self.index = index
        self.batches: List[np.ndarray] = []
        self.numbers: List[int] = []  # each batch's number in the epoch (lanes interleave)
        self.cursor = 0
        self.epoch = 0

    def start(self, batches: List[np.ndarray], epoch: int, numbers=None) -> None:
        self.batches, self.cursor, self.epoch = batches, 0, epoch
        self.numbers = list(range(len(batches))) if numbers is None else list(numbers)

    def _read(self, i: int) -> np.ndarray:
        path = self.index.image_paths[i]
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except OSError as e:
            raise DatasetError(f"cannot read image {path} (instance "
                               f"{self.index.instance_id[i]}): {e}") from e
        if not any(data[:len(s)].tobytes() == s for s in _SIGNATURES):
            raise DatasetError(f"image {path} (instance {self.index.instance_id[i]}) is not "
                               f"a JPEG or PNG file")
        return data

    def __call__(self):
        if self.cursor >= len(self.batches):
            raise StopIteration
        rows = self.batches[self.cursor]
        self.cursor += 1
        ix = self.index
        ids = np.stack([ix.image_id[rows], ix.instance_id[rows]], axis=1)
        return ([self._read(i) for i in rows],
                list(ix.center[rows].astype(np.float32)),
                list(ix.scale[rows].astype(np.float32)),
                list(ix.keypoints[rows]),
                list(ids))


class _PoolSource:
    """NODA: one pool person (RGBA crop, box) per sample of the batches ``main`` serves.

    The pick is a pure function of (seed, epoch, batch number in the epoch): a generator seeded with
    them, never the sample's own instance. It keeps its own cursor, so it agrees with
    ``main`` whatever order DALI calls the two in. On the GPU the pool is uploaded once and
    served as per-sample CUDA views (device-to-device copies, no host round trip).
    """

    def __init__(self, main: _Source, pool, seed: int, device: Optional[torch.device] = None):
        self.main, self.pool, self.seed = main, pool, seed
        self.cursor = 0
        self._rgba, self._boxes = pool.rgba, pool.boxes.astype(np.float32)
        if device is not None and device.type == "cuda":
            self._rgba = torch.from_numpy(self._rgba).to(device)
            self._boxes = torch.from_numpy(self._boxes).to(device)

    def start(self) -> None:
        self.cursor = 0

    def picks(self, cursor: int) -> np.ndarray:
        """Pool rows for batch number ``cursor`` of the current epoch."""
        rows = self.main.batches[cursor]
        ix, n = self.main.index, len(self.pool)
        rng = np.random.default_rng([self.seed, self.main.epoch, self.main.numbers[cursor]])
        pick = rng.integers(0, n, size=len(rows))
        same = ((self.pool.image_id[pick] == ix.image_id[rows])
                & (self.pool.instance_id[pick] == ix.instance_id[rows]))
        return np.where(same & (n > 1), (pick + 1) % n, pick)

    def __call__(self):
        if self.cursor >= len(self.main.batches):
            raise StopIteration
        pick = self.picks(self.cursor)
        self.cursor += 1
        rgba, boxes = [], []
        for i in pick:
            h, w = (int(v) for v in self.pool.shapes[i])
            o = int(self.pool.offsets[i])
            rgba.append(self._rgba[o:o + h * w * 4].reshape(h, w, 4))
            boxes.append(self._boxes[i])
        return rgba, boxes


class PoseLoader:
    """Iterable of batch dicts (see module docstring). ``len()`` = batches per epoch."""

    def __init__(self, cfg, split: str, index: PoseIndex, device: str, shard_id: int,
                 num_shards: int):
        from .pipeline import GraphSpec, make_pipeline

        self.cfg, self.split, self.index = cfg, split, index
        self.info = index.info
        self.train = split == "train"
        self.device = device
        self.shard_id, self.num_shards = shard_id, num_shards
        self.batch_size = cfg.loader.batch_size
        self.epoch = 0
        self._started = False
        self._in_epoch = False
        gpu = device == "gpu"
        warp = "fused" if (not gpu and cfg.loader.fast_cpu) else "dali"
        self._torch_device = torch.device("cuda", torch.cuda.current_device()) if gpu \
            else torch.device("cpu")
        pool = None
        if self.train and cfg.noda.prob > 0:
            from .noda import load_pool

            if not cfg.noda.pool:
                raise ValueError("noda.prob > 0 needs noda.pool: build one with "
                                 "`python -m dali_pose.noda build-pool --config CFG --out POOL`")
            pool = load_pool(cfg.noda.pool)
            if pool.kps.shape[1] != self.info.num_joints:
                raise DatasetError(f"NODA pool {cfg.noda.pool} has {pool.kps.shape[1]} joints, "
                                   f"the dataset {self.info.num_joints}")
        # Several pipelines ("lanes") take batches in turn: DALI runs a CPU numba operator's
        # samples one after another on one thread, so one lane cannot fill the cores.
        spec = GraphSpec(train=self.train, gpu=gpu, warp=warp)
        n_lanes = cfg.loader.pipelines
        self._lanes = []
        for lane in range(n_lanes):
            source = _Source(index)
            pool_source = None if pool is None else _PoolSource(
                source, pool, cfg.loader.seed, self._torch_device)
            pipe = make_pipeline(
                cfg, self.info, source, pool_source, spec, self.batch_size,
                seed=(cfg.loader.seed * 1000 + shard_id) * 16 + lane,
                device_id=self._torch_device.index if gpu else None,
                num_threads=max(1, cfg.loader.num_threads // n_lanes))
            self._lanes.append((source, pool_source, pipe))

    def _schedule(self):
        return epoch_schedule(len(self.index), self.batch_size, train=self.train,
                              seed=self.cfg.loader.seed, epoch=self.epoch,
                              shard_id=self.shard_id, num_shards=self.num_shards,
                              drop_last=self.cfg.loader.drop_last)

    def __len__(self) -> int:
        return len(self._schedule()[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of ``epoch`` for the next iteration (like DistributedSampler)."""
        self.epoch = int(epoch)

    def __iter__(self):
        if self._in_epoch:  # a previous iteration was abandoned part-way
            self._drain()
        batches, valid = self._schedule()
        n_lanes = len(self._lanes)
        for lane, (source, pool_source, pipe) in enumerate(self._lanes):
            if self._started:
                pipe.reset()
            source.start(batches[lane::n_lanes], self.epoch,
                         range(lane, len(batches), n_lanes))
            if pool_source is not None:
                pool_source.start()
        self._started = True
        self._in_epoch = True
        for b, n_valid in enumerate(valid):
            yield self._to_torch(self._lanes[b % n_lanes][2].run(), n_valid)
        self._drain()
        if self.train:  # without set_epoch, the next epoch still gets a new shuffle
            self.epoch += 1

    def _drain(self) -> None:
        """Run each pipeline into its source's StopIteration (prefetched batches included)."""
        for source, pool_source, pipe in self._lanes:
            source.cursor = len(source.batches)
            if pool_source is not None:
                pool_source.cursor = len(source.batches)
            try:
                while True:
                    pipe.run()
            except StopIteration:
                pass
        self._in_epoch = False

    def _tensor(self, tl, n_valid: int) -> torch.Tensor:
        from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type
        from nvidia.dali.tensors import TensorListGPU

        t = tl.as_tensor()
        if isinstance(tl, TensorListGPU):
            out = torch.empty(t.shape(), dtype=to_torch_type[t.dtype],
                              device=self._torch_device)
            feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream(self._torch_device))
            return out[:n_valid]
        arr = torch.from_numpy(np.array(t)[:n_valid])  # a copy: DALI reuses its buffers
        return arr.to(self._torch_device, non_blocking=True)

    def _to_torch(self, outs, n_valid: int) -> dict:
        from .pipeline import OUTPUTS

        t = {name: self._tensor(o, n_valid) for name, o in zip(OUTPUTS, outs)}
        box, ids = t.pop("box"), t.pop("ids")
        batch = {
            "image": t["image"],
            "heatmap": t["heatmap"],
            "target_weight": t["target_weight"],
            "keypoints": t["keypoints"],
            "matrix": t["matrix"],
            "center": box[:, 0:2].contiguous(),
            "scale": box[:, 2:4].contiguous(),
            "image_id": ids[:, 0].contiguous(),
            "instance_id": ids[:, 1].contiguous(),
            "flipped": t["flipped"][:, 0].bool(),
            "occluded": t["occluded"],
        }
        if not self.train and self.cfg.loader.flip_test:
            # The UDP flip is the exact mirror x -> (W-1) - x of the crop's pixel grid.
            batch["image_flipped"] = torch.flip(batch["image"], dims=[3])
        return batch



def build_loader(cfg, split: str, *, device: Optional[str] = None, shard_id: int = 0,
                 num_shards: int = 1, index: Optional[PoseIndex] = None) -> PoseLoader:
    """A drop-in DataLoader for ``split`` ('train' or 'val').

    ``device`` overrides ``cfg.loader.device`` ('gpu' needs CUDA; 'cpu' runs DALI's CPU
    backend). ``index`` lets a caller pass a prebuilt dataset index.
    """
    device = device or cfg.loader.device
    if device not in ("gpu", "cpu"):
        raise ValueError(f"device must be 'gpu' or 'cpu', got {device!r}")
    if device == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("loader.device is 'gpu' but CUDA is not available; "
                           "use --set loader.device=cpu")
    if index is None:
        index = load_index(cfg, split)
    return PoseLoader(cfg, split, index, device, shard_id, num_shards)


def measure(loader, max_batches: Optional[int] = None) -> dict:
    """Iterate once (or ``max_batches``) and report samples/s; the first batch is warm-up."""
    n = 0
    t0 = None
    for i, batch in enumerate(loader):
        if i == 0:
            t0 = time.perf_counter()
        else:
            n += batch["image"].shape[0]
        if max_batches is not None and i + 1 >= max_batches:
            break
    dt = time.perf_counter() - t0 if t0 is not None else 0.0
    return {"samples": n, "seconds": dt, "samples_per_s": n / dt if dt > 0 else 0.0}
