"""Render training samples as the network sees them.

``python -m dali_pose.tools.preview --config CFG --out grid.png [--split train] [--num 16]
[--set key=value ...]`` writes a grid of crops (de-normalised), each with its skeleton and
keypoints drawn (labelled-visible green, labelled-occluded orange, joints covered by a
NODA occluder red) and the heatmaps' maximum overlaid, so a person can check the
augmentation by eye.
"""
from __future__ import annotations

import argparse
import math

import cv2
import numpy as np

from ..codecs import build_codec
from ..config import add_config_args, load_config
from ..evaluation.visualize import draw_pose
from ..normalize import IMAGENET_MEAN, IMAGENET_STD, normalize_images

_VISIBLE, _OCCLUDED, _COVERED, _LIMB = (60, 220, 60), (255, 160, 0), (255, 40, 40), (80, 160, 255)


def render_sample(image, heatmap, keypoints, occluded, skeleton, codec, heat_alpha=0.45):
    """One crop as RGB uint8 (H, W, 3). ``image`` (3, H, W) normalised float; ``heatmap``
    (C, h, w) targets of ``codec``; ``keypoints`` (K, 3) crop px; ``occluded`` (K,)."""
    rgb = image.astype(np.float32).transpose(1, 2, 0) * np.array(IMAGENET_STD) \
        + np.array(IMAGENET_MEAN)
    rgb = np.clip(rgb * 255.0, 0, 255).astype(np.uint8)
    h, w = rgb.shape[:2]
    k = keypoints.shape[0]
    heat = codec.heatmaps(heatmap)
    heat = cv2.resize(np.clip(heat.max(axis=0), 0, 1).astype(np.float32), (w, h),
                      interpolation=cv2.INTER_LINEAR)
    color = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    a = (heat_alpha * heat)[..., None]
    out = (rgb * (1 - a) + color * a).astype(np.uint8)
    out = np.ascontiguousarray(out)
    colors = [_COVERED if occluded[j] > 0 else (_VISIBLE if keypoints[j, 2] >= 2
                                                 else _OCCLUDED) for j in range(k)]
    return draw_pose(out, keypoints[:, :2], keypoints[:, 2] > 0, skeleton, _LIMB,
                     joint_colors=colors, radius=3, thickness=1)


def render_grid(batch, skeleton, codec, num: int, cols: int = 8) -> np.ndarray:
    """Tile the first ``num`` samples of a loader batch into one RGB uint8 image."""
    n = min(num, batch["image"].shape[0])
    images = normalize_images(batch["image"][:n]).float()
    tiles = [render_sample(images[i].cpu().numpy(),
                           batch["heatmap"][i].float().cpu().numpy(),
                           batch["keypoints"][i].cpu().numpy(),
                           batch["occluded"][i].cpu().numpy(), skeleton, codec)
             for i in range(n)]
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    h, w = tiles[0].shape[:2]
    grid = np.full((rows * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for t, tile in enumerate(tiles):
        r, c = divmod(t, cols)
        grid[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = tile
    return grid


def write_preview(cfg, out_path: str, split: str = "train", num: int = 16, loader=None):
    """Draw ``num`` samples of ``split`` into ``out_path`` (PNG); returns the grid."""
    from ..loader import build_loader

    loader = loader or build_loader(cfg, split)
    batch = next(iter(loader))
    grid = render_grid(batch, loader.info.skeleton, build_codec(cfg), num)
    if not cv2.imwrite(out_path, grid[..., ::-1]):
        raise OSError(f"cannot write preview {out_path}")
    return grid


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_args(p)
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--split", default="train", choices=("train", "val"))
    p.add_argument("--num", type=int, default=16, help="samples to draw")
    a = p.parse_args(argv)
    cfg = load_config(a.config, [f"loader.batch_size={max(a.num, 1)}", *a.overrides])
    write_preview(cfg, a.out, a.split, a.num)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
