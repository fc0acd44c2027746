"""The DALI graph's external sources: file bytes, boxes, keypoints and random draws per run.

A DALI sample is one image to decode and the P >= 1 people cropped from it (a *read*:
index rows of one image, from :mod:`.plan`). A :class:`BatchSource` serves one pipeline
the *runs* (lists of reads, one DALI batch each) of the current epoch, then raises
``StopIteration``. Each call returns, per read, the fields named in
:attr:`BatchSource.fields` (name and dtype, in the external source's output order; every
field but ``jpeg`` has the leading P axis); the graph reads them by name. Training people
carry their random draws (:mod:`dali_pose.draws`: a pure function of seed, epoch and row,
whichever read they are in); validation people carry zeros, which the crop operator
ignores.

A :class:`PoolSource` serves NODA's pool people for the same runs (one per person of a
read, along the P axis): a second external source because on the GPU its data lives on
the device (the pool is uploaded once and each sample is assembled there, no host round
trip).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import torch

from ..datasets import DatasetError, PoseIndex
from ..draws import pool_pick, sample_draws
from ..geometry import NUM_NORMAL, NUM_UNIFORM
from ..imagefiles import inspect


def _placeholder_jpeg() -> np.ndarray:
    """A valid 8x8 black JPEG: what a skipped image's sample decodes (then dropped)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    return buf.reshape(-1)


class BatchSource:
    """External source of one pipeline (see the module docstring).

    ``n_occlusion`` / ``n_noda``: the information-dropping / NODA operators' ``num_draws``
    (0 where the graph has no such operator; the field is then not served).
    """

    def __init__(self, index: PoseIndex, *, train: bool, seed: int, n_occlusion: int = 0,
                 n_noda: int = 0, on_bad_image: str = "error", log=print):
        self.index, self.train, self.seed = index, train, seed
        self.on_bad_image, self.log = on_bad_image, log
        self.bad: dict = {}  # path -> why, of the images skipped (on_bad_image: skip)
        self._checked: set = set()  # paths whose bytes were found whole and of the right size
        self._placeholder = None
        self.n_occlusion, self.n_noda = n_occlusion, n_noda
        self.runs: List[List[np.ndarray]] = []
        self.cursor = 0
        self.reads_served = 0  # reads served so far (all epochs): what resuming saves shows
        self.epoch = 0
        self.occlusion_prob = self.noda_prob = 0.0

    @property
    def fields(self) -> Tuple[Tuple[str, str], ...]:
        """(name, dtype) of each output, in order."""
        out = (("jpeg", "uint8"), ("center", "float32"), ("scale", "float32"),
               ("keypoints", "float32"), ("row", "int64"), ("uniform", "float32"),
               ("normal", "float32"))
        if self.n_occlusion:
            out += (("occlusion_draws", "float32"),)
        if self.n_noda:
            out += (("noda_draws", "float32"),)
        return out

    def start(self, runs: List[List[np.ndarray]], epoch: int, occlusion_prob: float = 0.0,
              noda_prob: float = 0.0) -> None:
        """Serve ``runs`` (each a list of reads: row arrays of one image) of ``epoch``,
        with these gate probabilities."""
        self.runs, self.cursor, self.epoch = runs, 0, epoch
        self.occlusion_prob, self.noda_prob = float(occlusion_prob), float(noda_prob)

    def finish(self) -> None:
        """Serve nothing more this epoch."""
        self.cursor = len(self.runs)

    def read(self, i: int):
        """(file bytes, True) of row ``i``'s image; a bad file (unreadable, empty, not an
        image DALI decodes, truncated) is a ``DatasetError`` naming it and the instance, or
        with ``on_bad_image: skip`` (placeholder bytes, False), reported once. An image
        whose stored size is not the annotations' is always an error (a wrong file)."""
        path = self.index.image_paths[i]
        what = f"image {path} (instance {self.index.instance_id[i]})"
        if path in self.bad:
            return self._skip(path, None)
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except OSError as e:
            return self._bad(path, f"cannot read {what}: {e}")
        if path in self._checked:
            return data, True
        info = inspect(data)
        if info.kind is None and info.problem is None:
            return self._bad(path, f"{what} is not an image DALI decodes (JPEG, PNG, BMP, "
                                   f"WebP, TIFF, JPEG 2000, PNM)")
        if info.problem is not None:
            return self._bad(path, f"{what} is {info.problem}")
        want = None if self.index.image_size is None else tuple(self.index.image_size[i])
        if info.size is not None and want is not None and min(want) > 0 and info.size != want:
            raise DatasetError(f"{what} is {info.size[0]}x{info.size[1]} pixels, the "
                               f"annotations say {want[0]}x{want[1]}: a resized copy or "
                               f"another file?")
        self._checked.add(path)
        return data, True

    def _bad(self, path: str, message: str):
        if self.on_bad_image != "skip":
            raise DatasetError(message + " (data.on_bad_image: skip skips such images)")
        return self._skip(path, message)

    def _skip(self, path: str, message):
        if path not in self.bad:
            self.bad[path] = message
            if self.log is not None:
                self.log(f"skipped: {message} ({len(self.bad)} image(s) skipped so far)")
        if self._placeholder is None:
            self._placeholder = _placeholder_jpeg()
        return self._placeholder, False

    def __call__(self):
        if self.cursor >= len(self.runs):
            raise StopIteration
        run = self.runs[self.cursor]
        self.cursor += 1
        ix = self.index
        cols = [[] for _ in self.fields]
        self.reads_served += len(run)
        for rows in run:
            data, ok = self.read(rows[0])  # the rows of a read share their image
            p = len(rows)
            # a skipped image's people go through the graph with row -1: the loader drops them
            served = rows.astype(np.int64) if ok else np.full(p, -1, np.int64)
            vals = [data, ix.center[rows].astype(np.float32),
                    ix.scale[rows].astype(np.float32), ix.keypoints[rows], served]
            if self.train:
                draws = [sample_draws(self.seed, self.epoch, int(r), self.n_occlusion,
                                      self.n_noda, self.occlusion_prob, self.noda_prob)
                         for r in rows]
                vals += [np.stack([d.uniform for d in draws]),
                         np.stack([d.normal for d in draws])]
                if self.n_occlusion:
                    vals.append(np.stack([d.occlusion for d in draws]))
                if self.n_noda:
                    vals.append(np.stack([d.noda for d in draws]))
            else:
                vals += [np.zeros((p, NUM_UNIFORM), np.float32),
                         np.zeros((p, NUM_NORMAL), np.float32)]
            for col, v in zip(cols, vals):
                col.append(v)
        return tuple(cols)


class PoolSource:
    """NODA: one pool person per person of each read of the runs ``main`` serves.

    The pick is :func:`dali_pose.draws.pool_pick` of the person's (seed, epoch, row), moved
    on by one when it would paste the person into its own crop. It keeps its own cursor, so
    it agrees with ``main`` whatever order DALI calls the two in. Per read of P people:
    ``pool_rgba`` (P, h, w, 4) uint8, the picks' RGBA crops at the top left of a zero
    canvas of the largest of them, and ``pool_box`` (P, 6) float32: each pick's
    ``[cx, cy, w, h]`` box in its crop px and the crop's ``[rows, cols]`` (the NODA kernel
    reads each crop at its own size, :class:`dali_pose.kernels.noda.NodaOp`). On the GPU
    (``device``) the pool is uploaded once and each sample assembled on the device.
    """

    fields = (("pool_rgba", "uint8"), ("pool_box", "float32"))

    def __init__(self, main: BatchSource, pool, device: Optional[torch.device] = None,
                 pool_data=None):
        self.main, self.pool = main, pool
        self.cursor = 0
        self._rgba, self._boxes = pool_data or upload_pool(pool, device)

    def start(self) -> None:
        self.cursor = 0

    def finish(self) -> None:
        self.cursor = len(self.main.runs)

    def picks(self, rows: np.ndarray) -> np.ndarray:
        """Pool rows for the index ``rows`` of the current epoch."""
        ix, n = self.main.index, len(self.pool)
        pick = np.array([pool_pick(self.main.seed, self.main.epoch, int(r), n) for r in rows],
                        np.int64)
        same = ((self.pool.image_id[pick] == ix.image_id[rows])
                & (self.pool.instance_id[pick] == ix.instance_id[rows]))
        return np.where(same & (n > 1), (pick + 1) % n, pick)

    def _sample(self, pick: np.ndarray):
        shapes = self.pool.shapes[pick].astype(np.int64)  # (P, 2) rows, cols
        hh, ww = int(shapes[:, 0].max()), int(shapes[:, 1].max())
        gpu = isinstance(self._rgba, torch.Tensor)
        if gpu:
            rgba = torch.zeros((len(pick), hh, ww, 4), dtype=torch.uint8,
                               device=self._rgba.device)
        else:
            rgba = np.zeros((len(pick), hh, ww, 4), np.uint8)
        for p, i in enumerate(pick.tolist()):
            h, w = (int(v) for v in shapes[p])
            o = int(self.pool.offsets[i])
            rgba[p, :h, :w] = self._rgba[o:o + h * w * 4].reshape(h, w, 4)
        box = np.concatenate([self.pool.boxes[pick].astype(np.float32),
                              shapes.astype(np.float32)], 1)
        if gpu:
            box = torch.from_numpy(box).to(self._rgba.device)
        return rgba, box

    def __call__(self):
        if self.cursor >= len(self.main.runs):
            raise StopIteration
        run = self.main.runs[self.cursor]
        self.cursor += 1
        rgba, boxes = [], []
        for rows in run:
            r, b = self._sample(self.picks(np.asarray(rows, np.int64)))
            rgba.append(r)
            boxes.append(b)
        return rgba, boxes


def upload_pool(pool, device: Optional[torch.device] = None):
    """(rgba, boxes) of ``pool`` where a :class:`PoolSource` serves them from: host arrays,
    or on a CUDA ``device`` one device copy of the pixels (share it between sources)."""
    rgba, boxes = pool.rgba, pool.boxes.astype(np.float32)
    if device is not None and device.type == "cuda":
        rgba = torch.from_numpy(rgba).to(device)
    return rgba, boxes
