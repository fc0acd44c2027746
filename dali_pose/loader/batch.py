"""The batch a loader yields, stated once: keys, shapes, dtypes, meaning.

N crops, K joints, crop H x W, heatmaps h x w, C heatmap channels (the codec's: K, or 3K
for the combined target). :data:`BATCH` is the schema (the README's batch table is checked
against it: ``tests/test_loader_contract.py``); :func:`make_batch` builds a batch from the
graph's per-crop outputs (:class:`~dali_pose.loader.graph.Outputs` fields, one row per
crop) by it.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Tuple

import numpy as np
import torch


class Key(NamedTuple):
    """One key of the batch dict: ``shape`` and ``dtype`` as the README writes them,
    ``meaning``, and ``make(crops, ids)``: its tensor from the crop fields ``crops`` (name
    -> tensor, one row per crop) and ``ids`` (name -> (N,) int64 NumPy index columns)."""

    name: str
    shape: str
    dtype: str
    meaning: str
    make: Callable


def _ids(column: str) -> Callable:
    return lambda crops, ids: torch.from_numpy(ids[column]).to(crops["row"].device)


BATCH: Tuple[Key, ...] = (
    Key("image", "(N,3,H,W)", "float32 / float16 / uint8",
        "RGB crop, ImageNet-normalised (`loader.image_dtype`: float32, float16); uint8: "
        "intensities 0..255, normalise on your device with "
        "`dali_pose.normalize.normalize_images`",
        lambda c, i: c["image"]),
    Key("image_flipped", "(N,3,H,W)", "as `image`",
        "validation with `loader.flip_test` only: the mirrored crop",
        # the UDP flip is the exact mirror x -> (W-1) - x of the crop's pixel grid
        lambda c, i: torch.flip(c["image"], dims=[3])),
    Key("heatmap", "(N,C,h,w)", "float32",
        "the codec's targets (C = K; 3K for the combined target)",
        lambda c, i: c["heatmap"]),
    Key("target_weight", "(N,K)", "float32", "0 for unlabelled joints and joints off the map",
        lambda c, i: c["target_weight"]),
    Key("keypoints", "(N,K,3)", "float32",
        "x, y in crop pixels (pixel centres on integers), visibility",
        lambda c, i: c["keypoints"]),
    Key("matrix", "(N,2,3)", "float32", "source-image pixels → crop pixels, OpenCV convention",
        lambda c, i: c["matrix"]),
    Key("center", "(N,2)", "float32", "the crop's box centre in source pixels, after "
        "augmentation", lambda c, i: c["crop_box"][:, 0:2].contiguous()),
    Key("scale", "(N,2)", "float32", "the crop's box size in source pixels, after "
        "augmentation", lambda c, i: c["crop_box"][:, 2:4].contiguous()),
    Key("image_id", "(N,)", "int64", "the dataset's image id", _ids("image_id")),
    Key("instance_id", "(N,)", "int64", "the dataset's annotation id", _ids("instance_id")),
    Key("row", "(N,)", "int64", "the crop's row in the dataset index (`dali_pose.load_index`)",
        lambda c, i: c["row"]),
    Key("flipped", "(N,)", "bool", "the crop was flipped", lambda c, i: c["flipped"].bool()),
    Key("occluded", "(N,K)", "float32", "joints covered by a NODA occluder",
        lambda c, i: c["occluded"]),
    Key("valid", "(N,)", "bool", "False for the rows that pad validation batches to the same "
        "count and size on every rank (copies of a real row): score and gather only the "
        "True rows; training: all True", lambda c, i: c["valid"]),
)


def make_batch(crops: dict, index, flip_test: bool,
               keys: Optional[Tuple[Key, ...]] = None, valid: Optional[int] = None) -> dict:
    """The batch dict of ``crops`` (graph output name -> tensor, one row per crop) from
    ``index`` (a :class:`~dali_pose.datasets.PoseIndex`); the crops of skipped images
    (row -1) left out; ``image_flipped`` only with ``flip_test``; the first ``valid`` rows
    (default: all) are real, the rest padding."""
    n = len(crops["row"])
    crops = dict(crops, valid=torch.arange(n, device=crops["row"].device)
                 < (n if valid is None else valid))
    rows = crops["row"].cpu().numpy()
    if (rows < 0).any():  # -1: a skipped image's crop
        keep = torch.from_numpy(np.flatnonzero(rows >= 0)).to(crops["row"].device)
        crops = {k: v.index_select(0, keep) for k, v in crops.items()}
        rows = rows[rows >= 0]
    ids = {"image_id": index.image_id[rows], "instance_id": index.instance_id[rows]}
    return {k.name: k.make(crops, ids) for k in (keys or BATCH)
            if k.name != "image_flipped" or flip_test}
