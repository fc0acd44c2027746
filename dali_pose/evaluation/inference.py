"""A model in, scores out: flip-test predictions on the val split, back in source pixels, and
their metrics.

``train.py`` calls :func:`predict` (each rank on its shard), :func:`merge` and :func:`score`
when it validates; ``evaluate.py --checkpoint`` calls :func:`load_checkpoint` and then the
same, so a saved model is scored exactly as it was during its run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch

from ..codecs import build_codec
from ..config import Config, config_from_dict, load_config
from ..datasets import PoseIndex
from ..models import build_model, describe_model
from ..engine.checkpoint import read_model_checkpoint
from ..models.weights import load_state
from ..normalize import normalize_images
from .metrics import EvaluationError, evaluate_coco, evaluate_mpii, format_table, write_metrics
from .postprocess import index_to_results, write_results


def load_checkpoint(path: str, config: Optional[str] = None, overrides=()):
    """(cfg, model on the CPU in eval mode, epochs trained) of a checkpoint ``train.py``
    wrote (``last.pt``, ``best.pt`` or the final ``model.pt``).

    The config is the one saved in the checkpoint, unless ``config`` (a YAML path) is given;
    ``overrides`` ("a.b=c") apply to either. A file that is not such a checkpoint, or whose
    weights do not fit the config's model, is a one-line ``WeightsError`` naming ``path``.
    """
    ckpt = read_model_checkpoint(path)
    cfg = load_config(config, overrides) if config else config_from_dict(
        ckpt["config"], overrides, source=f"{path} (its saved config)")
    model = build_model(cfg)
    load_state(model, ckpt["model"], path, describe_model(cfg))
    return cfg, model.eval(), int(ckpt.get("epoch", ckpt.get("epochs", 0)))


@dataclass(frozen=True)
class Predictions:
    """``keypoints`` (N, K, 3): x, y in source-image pixels (0-based, integer pixel centres)
    and the heatmap score, one row per ``index`` row; ``done`` (N,) bool marks the rows
    predicted (all, unless ``max_batches`` stopped the run or this is one rank's shard; the
    others are NaN)."""
    index: PoseIndex
    keypoints: np.ndarray
    done: np.ndarray


def merge(parts: Sequence[Predictions]) -> Predictions:
    """The shards of several ranks as one; a row predicted by two of them is an error (each
    validation instance must be predicted exactly once)."""
    first = parts[0]
    count = np.sum([p.done for p in parts], axis=0)
    if (count > 1).any():
        rows = np.flatnonzero(count > 1)
        raise EvaluationError(f"validation: {len(rows)} instances predicted more than once "
                              f"(first: instance {first.index.instance_id[rows[0]]})")
    keypoints = first.keypoints.copy()
    for p in parts[1:]:
        keypoints[p.done] = p.keypoints[p.done]
    return Predictions(first.index, keypoints, count == 1)


@torch.no_grad()
def predict(cfg: Config, model: torch.nn.Module, device: torch.device,
            max_batches: Optional[int] = None, loader=None) -> Predictions:
    """Run ``model`` over the val split (flip test when ``loader.flip_test``), decoded back to
    source pixels. ``loader`` defaults to ``build_loader(cfg, "val")``; a shard's loader
    predicts the shard's rows."""
    if loader is None:
        from ..loader import build_loader

        loader = build_loader(cfg, "val")
    index, info = loader.index, loader.info
    codec = build_codec(cfg)
    preds = np.full((len(index), info.num_joints, 3), np.nan, np.float32)
    done = np.zeros(len(index), bool)
    model.eval()
    for b, batch in enumerate(loader):
        output = model(normalize_images(batch["image"].to(device))).float()
        flipped = None
        if "image_flipped" in batch:
            flipped = model(normalize_images(batch["image_flipped"].to(device))).float()
        kps = codec.decode(output, batch["matrix"], flipped, info.flip_index).cpu().numpy()
        valid = batch["valid"].cpu().numpy()  # the rows that pad equal shards are copies
        rows = batch["row"].cpu().numpy()[valid]
        preds[rows] = kps[valid]
        done[rows] = True
        if max_batches is not None and b + 1 >= max_batches:
            break
    return Predictions(index, preds, done)


def score(cfg: Config, preds: Predictions, out_dir: str, ann: Optional[str] = None,
          metrics_path: Optional[str] = None, verbose: bool = False,
          log: Callable[[str], None] = print) -> Optional[Dict[str, float]]:
    """Save ``preds`` into ``out_dir`` and score them; reports (the table, what was written)
    through ``log`` and writes the table to ``metrics_path`` (default
    ``out_dir/metrics.json``).

    COCO/CrowdPose: ``val_results.json`` (rescored, OKS-NMS'd) against ``ann`` (default
    ``cfg.data.val_ann``); people not predicted count as missed. MPII: ``val_preds.npy``
    (N, 16, 2) in the json's order (HRNet's valid.json lists people in ``gt_valid.mat``'s
    order); scored against ``ann`` (default ``cfg.data.val_gt``, the ``gt_valid.mat``), not
    scored (None) when neither names one.
    """
    os.makedirs(out_dir, exist_ok=True)
    done = preds.done
    n, total = int(done.sum()), len(done)
    flip = "flip test" if cfg.loader.flip_test else "no flip"
    if n < total:
        log(f"validation stopped early: {n} of {total} people predicted")
    if cfg.data.format == "mpii":
        ann = ann or cfg.data.val_gt
        path = os.path.join(out_dir, "val_preds.npy")
        np.save(path, preds.keypoints[:, :, :2])
        log(f"wrote {path} ({n} of {total} people)")
        if ann is None:
            if n < total:
                log(f"{path} is partial (NaN rows for the people not predicted): PCKh "
                      f"needs all {total}")
            else:
                log(f"score with: python evaluate.py --dataset mpii --ann gt_valid.mat "
                      f"--preds {path}")
            return None
        if n < total:
            raise EvaluationError(f"{path}: PCKh needs every one of the {total} people; "
                                  f"only {n} were predicted (max_batches?)")
        metrics = evaluate_mpii(preds.keypoints[:, :, :2], ann, source=path, per_joint=True,
                                visible=cfg.data.val_visible)
    else:
        results = index_to_results(preds.index, preds.keypoints[done],
                                   rows=np.flatnonzero(done))
        path = os.path.join(out_dir, "val_results.json")
        write_results(results, path)
        metrics = evaluate_coco(ann or cfg.data.val_ann, results, dataset=cfg.data.format,
                                verbose=verbose, source=path)
    log(format_table(metrics, title=f"val ({n} of {total} people, {flip})"))
    write_metrics(metrics, metrics_path or os.path.join(out_dir, "metrics.json"))
    return metrics
