"""The NODA foreground pool: its file format and reading (the loader pastes from it).

A pool is one ``.npz`` (``np.savez``) written by ``python -m dali_pose.tools.build_pool``:
``rgba`` (sum h*w*4,) uint8 concatenated crops (RGB + an edge-smoothed alpha matte),
``offsets`` (N,) int64 into it, ``shapes`` (N, 2) int32 (h, w), ``kps`` (N, K, 3) float32 in
crop px, ``boxes`` (N, 4) float32 [cx, cy, w, h] in crop px of the placement box: the
index's box without padding (``PoseIndex.center``, ``PoseIndex.scale / data.padding``:
aspect-fixed to the input, the convention of the crop operator's ``person_box``),
``person_boxes`` (N, 4) the annotation box in crop px, ``image_id`` / ``instance_id`` (N,)
int64 (so the loader never pastes a person into its own crop), ``level``, ``dataset``,
``settings`` and ``skipped`` (json strings). ``settings['smooth']`` records whether the
mattes' edges were smoothed; a config's ``noda.smooth_edges`` is checked against it
(:func:`check_pool`), so that NODA Table I's smoothing rows cannot silently swap pools.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np

from ..errors import ConfigError, DatasetError, show

POOL_VERSION = 1


@dataclass(frozen=True)
class Pool:
    """A loaded pool. ``get(i)`` -> (rgba (h, w, 4) uint8, kps (K, 3) f32, box (4,) f32)."""

    rgba: np.ndarray
    offsets: np.ndarray
    shapes: np.ndarray
    kps: np.ndarray
    boxes: np.ndarray
    person_boxes: np.ndarray
    image_id: np.ndarray
    instance_id: np.ndarray
    level: str
    dataset: str
    settings: Dict
    skipped: Dict[str, int]

    def __len__(self) -> int:
        return len(self.offsets)

    def get(self, i: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        h, w = (int(v) for v in self.shapes[i])
        o = int(self.offsets[i])
        rgba = self.rgba[o:o + h * w * 4].reshape(h, w, 4)
        return rgba, self.kps[i], self.boxes[i]


def load_pool(path: str, noda=None) -> Pool:
    """Read a pool written by ``build_pool``; a file that is not one (missing, an .npy or
    not an .npz, an array missing or of objects, which would need pickle: never unpickled)
    is a ``DatasetError``.
    ``noda`` (the ``noda`` config section, optional): a pool built otherwise than it states
    (:func:`check_pool`) is a ``ConfigError``."""
    pool = _read_pool(path)
    if noda is not None:
        check_pool(pool, noda, path)
    return pool


def check_pool(pool: Pool, noda, path: str) -> None:
    """``noda.smooth_edges`` (true / false; None: either) against the edge smoothing the
    pool records (``settings['smooth']``): a mismatch is a ``ConfigError`` naming the key
    and the command that builds the pool asked for."""
    want = noda.smooth_edges
    if want is None:
        return
    have = pool.settings.get("smooth")
    if have is want:
        return
    built = {True: "with edge smoothing", False: "without edge smoothing (--no-smooth)"}.get(
        have, "without a record of its edge smoothing")
    flag = "" if want else " --no-smooth"
    e = ConfigError(f"config key 'noda.smooth_edges': {str(want).lower()}, but the NODA pool "
                    f"{path} was built {built}; build the pool the config asks for with "
                    f"`python -m dali_pose.tools.build_pool --config CONFIG --out {path} "
                    f"--level {pool.level}{flag}`")
    e.key = "noda.smooth_edges"
    raise e


def _read_pool(path: str) -> Pool:
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise DatasetError(f"NODA pool {path} is not a pool written by `python -m "
                               f"dali_pose.tools.build_pool` (it holds one array (an .npy "
                               f"file), not an .npz archive)")
        with z:
            settings = json.loads(str(z["settings"]))
            if not isinstance(settings, dict) or settings.get("version") != POOL_VERSION:
                version = settings.get("version") if isinstance(settings, dict) else None
                raise DatasetError(f"NODA pool {path}: pool version {show(version, 40)}, "
                                   f"expected {POOL_VERSION}; rebuild it with `python -m "
                                   f"dali_pose.tools.build_pool`")
            return Pool(rgba=z["rgba"], offsets=z["offsets"], shapes=z["shapes"],
                        kps=z["kps"], boxes=z["boxes"], person_boxes=z["person_boxes"],
                        image_id=z["image_id"], instance_id=z["instance_id"],
                        level=str(z["level"]), dataset=str(z["dataset"]), settings=settings,
                        skipped=json.loads(str(z["skipped"])))
    except DatasetError:
        raise
    except (OSError, ValueError, KeyError, EOFError, RecursionError,
            zipfile.BadZipFile) as e:
        # ValueError: object arrays (allow_pickle=False), bad json, not an npz at all
        if isinstance(e, FileNotFoundError):
            raise DatasetError(f"NODA pool {path} does not exist (build one with `python -m "
                               f"dali_pose.tools.build_pool`)") from None
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "pickle" in why:  # numpy's advice to allow pickle is not for files from others
            why = "it holds pickled objects, which are never loaded"
        raise DatasetError(f"NODA pool {path} is not a pool written by `python -m "
                           f"dali_pose.tools.build_pool` ({show(why, 100)})") from None
