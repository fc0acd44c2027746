"""The classic loader: a plain PyTorch ``DataLoader`` doing the DALI pipeline's work the way
the HRNet and mmpose loaders do it (OpenCV decode and ``warpAffine``, NumPy heatmaps).

It is the benchmark's baseline (``python -m dali_pose.tools.bench``) and a second implementation
the tests compare the DALI loader against. Per sample (:class:`ReferenceDataset`):

    cv2.imread + BGR->RGB --> augmentation draws (:func:`dali_pose.draws.sample_draws`,
    the DALI loader's very draws) --> ``geometry.augment`` / ``udp_matrix`` /
    ``transform_keypoints`` (the one place for geometry, shared with the pipeline) -->
    ``cv2.warpAffine(INTER_LINEAR, BORDER_CONSTANT, 0)`` --> ImageNet normalisation to CHW
    float32 --> occlusion (NumPy mask, when configured) --> UDP targets written in NumPy
    (Gaussian in the 3 sigma window, or the combined disk + offsets target), following the
    rules in :mod:`dali_pose.kernels.targets`.
NODA (pasting pool people, ``noda.prob > 0``) is not implemented here.

The draws are a pure function of (seed, epoch, row), the same as the DALI loader's: the
batches do not depend on the number of workers, and a training batch matches the DALI
loader's sample by sample (up to OpenCV's 1/32-px warp positions and uint8 rounding).

Batches come from :func:`dali_pose.loader.plan.image_epoch` (the DALI loader's plan), so both
loaders visit the same rows in the same order (validation: the last batch is short instead
of padded). The batch
dict has the DALI loader's keys (``image_flipped`` for validation with ``loader.flip_test``).
With ``timing=True`` each batch also carries ``stage_s`` (N, len(STAGES)) float64: CPU
seconds (``time.thread_time``, so other processes' load does not count) each sample spent in
each stage, measured inside the worker.
"""
from __future__ import annotations

import math
import time
from typing import List, Optional

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..codecs import COMBINED_RADIUS_FACTOR, UDPCombined, build_codec
from ..datasets import DatasetError, PoseIndex, load_index
from ..draws import sample_draws
from ..geometry import AugParams, augment, msra_matrix, transform_keypoints, udp_matrix
from ..kernels.dropping import QUANT, dropping_op_from
from ..loader.plan import image_epoch, image_groups, occlusion_probs
from ..normalize import IMAGENET_MEAN, IMAGENET_STD

STAGES = ("read", "geometry", "warp", "normalize", "targets")


# ------------------------------------------------------------------------ targets ----

def _joints_on_map(kps: np.ndarray, input_size, heatmap_size):
    """Heatmap positions ``mu`` (K, 2) = xy / UDP stride, and weight (K,) float32: 1 for a
    labelled joint whose nearest heatmap pixel is on the map (NaN counts as off)."""
    w, h = int(heatmap_size[0]), int(heatmap_size[1])
    stride = np.array([(input_size[0] - 1.0) / (w - 1.0), (input_size[1] - 1.0) / (h - 1.0)])
    mu = kps[:, :2].astype(np.float64) / stride
    on = ((kps[:, 2] > 0) & (mu[:, 0] >= -0.5) & (mu[:, 0] < w - 0.5)
          & (mu[:, 1] >= -0.5) & (mu[:, 1] < h - 0.5))
    return mu, on.astype(np.float32)


def gaussian_heatmaps(kps: np.ndarray, input_size, heatmap_size, sigma: float):
    """UDP Gaussian targets in NumPy: heatmap (K, h, w) float32 and weight (K,) float32.

    ``kps`` (K, >=3) crop keypoints (x, y, v). A joint at heatmap position ``mu = xy /
    stride`` (stride = (input - 1) / (heatmap - 1)) gets weight 1 when labelled and its
    nearest pixel ``floor(mu + 0.5)`` is on the map; the Gaussian of the exact ``mu`` is then
    written on the window of half size ``floor(3 sigma)`` around that pixel.
    """
    w, h = int(heatmap_size[0]), int(heatmap_size[1])
    rad = int(math.floor(3.0 * sigma))
    mu, weight = _joints_on_map(kps, input_size, heatmap_size)
    heatmap = np.zeros((kps.shape[0], h, w), np.float32)
    for j in np.nonzero(weight)[0]:
        mu_x, mu_y = mu[j]
        cx = int(math.floor(mu_x + 0.5))
        cy = int(math.floor(mu_y + 0.5))
        x0, x1 = max(0, cx - rad), min(w, cx + rad + 1)
        y0, y1 = max(0, cy - rad), min(h, cy + rad + 1)
        dx = np.arange(x0, x1, dtype=np.float64) - mu_x
        dy = np.arange(y0, y1, dtype=np.float64)[:, None] - mu_y
        heatmap[j, y0:y1, x0:x1] = np.exp(-(dx * dx + dy * dy) / (2.0 * sigma * sigma))
    return heatmap, weight


def combined_targets(kps: np.ndarray, input_size, heatmap_size):
    """UDP combined target in NumPy: (3K, h, w) = [disk, x-offset, y-offset] per joint.

    Disk radius r = 0.0546875 x heatmap height; inside ``((mu - p) / r)^2 <= 1`` the three
    channels are 1, (mu_x - px) / r, (mu_y - py) / r. Weight rule as for the Gaussian.
    """
    w, h = int(heatmap_size[0]), int(heatmap_size[1])
    r = COMBINED_RADIUS_FACTOR * float(h)
    mu, weight = _joints_on_map(kps, input_size, heatmap_size)
    out = np.zeros((3 * kps.shape[0], h, w), np.float32)
    px = np.arange(w, dtype=np.float64)
    py = np.arange(h, dtype=np.float64)[:, None]
    for j in np.nonzero(weight)[0]:
        mu_x, mu_y = mu[j]
        ox = (mu_x - px) / r + 0.0 * py
        oy = (mu_y - py) / r + 0.0 * px
        inside = ox * ox + oy * oy <= 1.0
        out[3 * j] = inside
        out[3 * j + 1] = np.where(inside, ox, 0.0)
        out[3 * j + 2] = np.where(inside, oy, 0.0)
    return out, weight


def targets_numpy(kps: np.ndarray, codec):
    """The targets of ``codec`` (:mod:`dali_pose.codecs`) for crop keypoints ``kps``, written
    independently of its kernels: (heatmap, weight)."""
    if isinstance(codec, UDPCombined):
        return combined_targets(kps, codec.input_size, codec.heatmap_size)
    return gaussian_heatmaps(kps, codec.input_size, codec.heatmap_size, codec.sigma)


def occlusion_mask(op, kps, draws, size=None) -> np.ndarray:
    """(H, W) bool: the pixels the information-dropping operator ``op`` (a ``DroppingOp``)
    sets to black, built in NumPy from its ``params`` (an oracle for the kernels)."""
    ww, hh = op.input_size if size is None else size
    p = op.params(kps, draws, (ww, hh))
    m = np.zeros((hh, ww), bool)
    if not p["applied"]:
        return m
    ys, xs = np.mgrid[0:hh, 0:ww]
    if op.method in ("aid", "cutout"):
        for _, _, cx, cy, r in p["discs"]:
            cxq, cyq, rq = round(cx * QUANT), round(cy * QUANT), round(r * QUANT)
            dx = xs.astype(np.int64) * QUANT - cxq
            dy = ys.astype(np.int64) * QUANT - cyq
            m |= dx * dx + dy * dy <= rq * rq
    elif op.method == "erasing" and p["rect"] is not None:
        x0, y0, we, he = p["rect"]
        m[y0:y0 + he, x0:x0 + we] = True
    elif op.method == "hide_and_seek" and p["grid"] > 0:
        g = p["grid"]
        m = np.kron(p["hidden"], np.ones((g, g), bool))[:hh, :ww]
    elif op.method == "gridmask":
        d, keep, dx, dy = p["grid"]
        m = (((xs - dx) % d) >= keep) & (((ys - dy) % d) >= keep)
    return m


def occlude_numpy(image: np.ndarray, op, kps: np.ndarray, draws: np.ndarray) -> None:
    """The classic way: build the (H, W) drop mask in NumPy (:func:`occlusion_mask`) and
    fill ``image`` (3, H, W) there, in place."""
    mask = occlusion_mask(op, kps, draws)
    for c in range(3):
        image[c][mask] = op.fill[c]


def normalize_chw(crop: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                  dtype=np.float32) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) ``(x / 255 - mean) / std``."""
    std = np.asarray(std, np.float64)
    scale = (1.0 / (255.0 * std)).astype(np.float32)[:, None, None]
    offset = (-np.asarray(mean, np.float64) / std).astype(np.float32)[:, None, None]
    img = np.ascontiguousarray(crop.transpose(2, 0, 1)).astype(np.float32)
    img *= scale
    img += offset
    return img if dtype == np.float32 else img.astype(dtype)


# ------------------------------------------------------------------------ dataset ----

class ReferenceDataset(Dataset):
    """One person instance per item; the item key is a row or an ``(epoch, row)`` pair.

    ``train=True`` applies the training augmentation of ``cfg.aug`` (and occlusion of
    ``cfg.occlusion``) with draws from ``np.random.default_rng((seed, epoch, row))``.
    """

    def __init__(self, cfg, index: PoseIndex, train: bool = True, timing: bool = False):
        if train and cfg.noda.prob > 0:
            raise NotImplementedError("the reference loader does not implement NODA "
                                      "(noda.prob > 0); set noda.prob=0 to compare")
        self.cfg, self.index, self.train, self.timing = cfg, index, bool(train), timing
        self.epoch = 0
        info = index.info
        self.k = info.num_joints
        self.flip_index = info.flip_index.astype(np.int64)
        self.upper = np.zeros(self.k, np.bool_)
        self.upper[list(info.upper_body)] = True
        self.out_w, self.out_h = (int(v) for v in cfg.model.input_size)
        self.dtype = np.dtype(cfg.loader.image_dtype)
        self.codec = build_codec(cfg.model)
        self._occ = None
        if self.train and cfg.occlusion.method != "none":  # uint8 crops: black is 0
            self._occ = dropping_op_from(cfg.occlusion, cfg.model.input_size,
                                         "uint8" if self.dtype == np.uint8 else "float32")
        if len(index):  # compile (or load) the numba geometry once, before workers fork
            self._geometry(0, 0)

    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for items given as a plain row (the batch sampler passes pairs)."""
        self.epoch = int(epoch)

    def _geometry(self, epoch: int, row: int):
        """(matrix (2, 3) f64, crop keypoints (K, 3) f32, box (4,) f32, flip, draws)."""
        ix, a = self.index, self.cfg.aug
        center = ix.center[row].astype(np.float32)  # float32, as the DALI source feeds them
        scale = ix.scale[row].astype(np.float32)
        box = ix.box_sizes()[row].astype(np.float32)
        kps = np.ascontiguousarray(ix.keypoints[row], dtype=np.float32)
        draws = None
        if self.train:
            draws = sample_draws(self.cfg.loader.seed, epoch, row,
                                 self._occ.num_draws if self._occ else 0,
                                 occlusion_prob=occlusion_probs(self.cfg, epoch)[0])
            p = AugParams.of(a)
            cx, cy, sw, sh, rot, flip = augment(
                center, scale, box, kps, draws.uniform, draws.normal, self.upper, *p[:7],
                self.out_w / self.out_h, *p[7:])
        else:
            cx, cy, sw, sh, rot, flip = center[0], center[1], scale[0], scale[1], 0.0, False
        matrix_of = udp_matrix if self.codec.unbiased else msra_matrix
        m = matrix_of(cx, cy, sw, sh, rot, float(self.out_w), float(self.out_h), flip)
        kps_crop = np.zeros((self.k, 3), np.float32)
        transform_keypoints(m, kps, flip, self.flip_index, kps_crop)
        box = np.array([cx, cy, sw, sh], np.float32)
        return m, kps_crop, box, bool(flip), draws

    def __getitem__(self, key):
        epoch, row = key if isinstance(key, tuple) else (self.epoch, key)
        row = int(row)
        ix = self.index
        t0 = time.thread_time()
        path = ix.image_paths[row]
        img = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if img is None:
            raise DatasetError(f"cannot read image {path} (instance {ix.instance_id[row]})")
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        t1 = time.thread_time()
        m, kps_crop, box, flip, draws = self._geometry(epoch, row)
        t2 = time.thread_time()
        crop = cv2.warpAffine(img, m, (self.out_w, self.out_h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        t3 = time.thread_time()
        if self.dtype == np.uint8:  # intensities as they are, CHW
            image = np.ascontiguousarray(crop.transpose(2, 0, 1))
        else:
            image = normalize_chw(crop)
        if self._occ is not None:
            occlude_numpy(image, self._occ, kps_crop, draws.occlusion)
        if self.dtype == np.float16:
            image = image.astype(self.dtype)
        t4 = time.thread_time()
        heatmap, weight = targets_numpy(kps_crop, self.codec)
        t5 = time.thread_time()
        sample = {
            "image": image,
            "heatmap": heatmap,
            "target_weight": weight,
            "keypoints": kps_crop,
            "matrix": m.astype(np.float32),
            "center": box[0:2].copy(),
            "scale": box[2:4].copy(),
            "row": np.int64(row),
            "image_id": np.int64(ix.image_id[row]),
            "instance_id": np.int64(ix.instance_id[row]),
            "flipped": flip,
            "occluded": np.zeros(self.k, np.float32),
        }
        if self.timing:
            sample["stage_s"] = np.array([t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4])
        return sample


# ------------------------------------------------------------------------- loader ----

class EpochBatchSampler:
    """Batches of ``(epoch, row)`` keys from :func:`dali_pose.loader.plan.image_epoch`.

    ``image_keys``: each row's image (its path): the plan groups the rows by image, as the
    DALI loader's. Training: the (seed, epoch) plan, fixed-size batches; the epoch
    advances after each complete pass (or is chosen with ``set_epoch``). Validation:
    dataset order, short last batch.
    """

    def __init__(self, image_keys, batch_size: int, *, train: bool, seed: int,
                 drop_last: bool = True, buffer: int = 512):
        self.groups = image_groups(np.asarray(image_keys))
        self.batch_size, self.train = batch_size, train
        self.seed, self.drop_last, self.buffer = seed, drop_last, buffer
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _plan(self):
        return image_epoch(self.groups, self.batch_size, train=self.train, seed=self.seed,
                           epoch=self.epoch, drop_last=self.drop_last, buffer=self.buffer)

    def __len__(self) -> int:
        return len(self._plan().batches)

    def __iter__(self):
        epoch = self.epoch
        plan = self._plan()
        for b, v in enumerate(plan.valid):
            yield [(epoch, int(r)) for r in plan.batch_rows(b)[:v]]
        if self.train:
            self.epoch = epoch + 1


class Collate:
    """``default_collate``, plus the mirrored crop for validation with flip test."""

    def __init__(self, flip_copy: bool):
        self.flip_copy = flip_copy

    def __call__(self, samples: List[dict]) -> dict:
        batch = torch.utils.data.default_collate(samples)
        if self.flip_copy:
            batch["image_flipped"] = torch.flip(batch["image"], dims=[3])
        return batch


def _worker_init(worker_id: int) -> None:
    # As mmengine does by default: no OpenCV thread pool inside loader workers.
    cv2.setNumThreads(0)


class ReferenceLoader(DataLoader):
    """A torch ``DataLoader`` with ``set_epoch`` (like the DALI loader's)."""

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


def build_reference_loader(cfg, split: str, num_workers: Optional[int] = None,
                           index: Optional[PoseIndex] = None, *, timing: bool = False,
                           persistent_workers: bool = True,
                           multiprocessing_context=None) -> ReferenceLoader:
    """The classic DataLoader for ``split`` ('train' or 'val').

    ``num_workers`` defaults to ``cfg.loader.num_threads`` (the DALI pipeline's threads);
    0 runs in the calling process. Workers persist across epochs by default (mmpose's
    default); their randomness does not depend on the worker (see the module docstring).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if index is None:
        index = load_index(cfg, split)
    if num_workers is None:
        num_workers = cfg.loader.num_threads
    train = split == "train"
    dataset = ReferenceDataset(cfg, index, train=train, timing=timing)
    sampler = EpochBatchSampler(index.image_paths, cfg.loader.batch_size, train=train,
                                seed=cfg.loader.seed, drop_last=cfg.loader.drop_last,
                                buffer=cfg.loader.shuffle_buffer)
    kwargs = {}
    if num_workers > 0:
        kwargs = dict(persistent_workers=persistent_workers, worker_init_fn=_worker_init,
                      prefetch_factor=cfg.loader.prefetch,
                      multiprocessing_context=multiprocessing_context)
    return ReferenceLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                           collate_fn=Collate(not train and cfg.loader.flip_test), **kwargs)
