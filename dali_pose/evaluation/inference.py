"""A model in, scores out: checkpoints, flip-test predictions on the val split, metrics.

``train.py`` calls :func:`predict` and :func:`score` after training; ``evaluate.py
--checkpoint`` calls :func:`load_checkpoint` and then the same two, so a saved model is
scored exactly as it was at the end of its run.

A checkpoint is a ``torch.save`` of ``{"model": state_dict, "config": to_dict(cfg),
"epochs": int}``: plain types only, so it loads with ``weights_only=True``.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch

from ..codecs import build_codec
from ..config import Config, ConfigError, config_from_dict, load_config, to_dict
from ..datasets import PoseIndex
from ..models import build_model
from .metrics import EvaluationError, evaluate_coco, evaluate_mpii, format_table, write_metrics
from .postprocess import index_to_results, write_results


def save_checkpoint(path: str, model: torch.nn.Module, cfg: Config, epochs: int) -> None:
    torch.save({"model": model.state_dict(), "config": to_dict(cfg), "epochs": int(epochs)},
               path)


def load_checkpoint(path: str, config: Optional[str] = None, overrides=()):
    """(cfg, model on the CPU in eval mode, epochs trained) of a :func:`save_checkpoint` file.

    The config is the one saved in the checkpoint, unless ``config`` (a YAML path) is given;
    ``overrides`` ("a.b=c") apply to either. Raises ``EvaluationError`` naming ``path`` when
    the file is not such a checkpoint or its weights do not fit the config's model.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EvaluationError(f"cannot read checkpoint {path}: {first}") from e
    if not isinstance(ckpt, dict) or not {"model", "config"} <= set(ckpt) \
            or not isinstance(ckpt["model"], dict):
        raise EvaluationError(f"{path}: not a dali_pose checkpoint (a dict with 'model' and "
                              f"'config', as train.py writes)")
    try:
        cfg = load_config(config, overrides) if config else config_from_dict(
            ckpt["config"], overrides, source=f"{path} (its saved config)")
    except ConfigError as e:
        raise EvaluationError(str(e)) from e
    model = build_model(cfg)
    _check_weights(path, ckpt["model"], model.state_dict(), cfg)
    model.load_state_dict(ckpt["model"])
    return cfg, model.eval(), int(ckpt.get("epochs", 0))


def _check_weights(path: str, got: dict, want: dict, cfg: Config) -> None:
    """One readable line instead of torch's list of every mismatched tensor."""
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    shape = [k for k in want if k in got and tuple(got[k].shape) != tuple(want[k].shape)]
    if not (missing or unexpected or shape):
        return
    parts = []
    if shape:
        k = shape[0]
        parts.append(f"{len(shape)} tensors of another shape (first: {k} is "
                     f"{tuple(got[k].shape)} in the file, {tuple(want[k].shape)} in the model)")
    for what, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            parts.append(f"{len(keys)} {what} (first: {keys[0]})")
    m = cfg.model
    raise EvaluationError(
        f"{path}: the weights do not fit the config's model (model.width={m.width}, "
        f"stem_width={m.stem_width}, num_blocks={m.num_blocks}, stage_modules="
        f"{list(m.stage_modules)}, target={m.target}, data.format={cfg.data.format}): "
        + "; ".join(parts))


@dataclass(frozen=True)
class Predictions:
    """``keypoints`` (N, K, 3): x, y in source-image pixels (0-based, integer pixel centres)
    and the heatmap score, one row per ``index`` row; ``done`` (N,) bool marks the rows
    predicted (all, unless ``max_batches`` stopped the run; the others are NaN)."""
    index: PoseIndex
    keypoints: np.ndarray
    done: np.ndarray


@torch.no_grad()
def predict(cfg: Config, model: torch.nn.Module, device: torch.device,
            max_batches: Optional[int] = None, loader=None) -> Predictions:
    """Run ``model`` over the val split (flip test when ``loader.flip_test``), decoded back to
    source pixels. ``loader`` defaults to ``build_loader(cfg, "val")``."""
    if loader is None:
        from ..loader import build_loader

        loader = build_loader(cfg, "val")
    index, info = loader.index, loader.info
    codec = build_codec(cfg)
    row_of = {int(i): r for r, i in enumerate(index.instance_id)}
    preds = np.full((len(index), info.num_joints, 3), np.nan, np.float32)
    done = np.zeros(len(index), bool)
    model.eval()
    for b, batch in enumerate(loader):
        output = model(batch["image"].to(device)).float()
        flipped = None
        if "image_flipped" in batch:
            flipped = model(batch["image_flipped"].to(device)).float()
        kps = codec.decode(output, batch["matrix"], flipped, info.flip_index).cpu().numpy()
        for i, iid in enumerate(batch["instance_id"].tolist()):
            preds[row_of[int(iid)]] = kps[i]
            done[row_of[int(iid)]] = True
        if max_batches is not None and b + 1 >= max_batches:
            break
    return Predictions(index, preds, done)


def score(cfg: Config, preds: Predictions, out_dir: str, ann: Optional[str] = None,
          metrics_path: Optional[str] = None, verbose: bool = False
          ) -> Optional[Dict[str, float]]:
    """Save ``preds`` into ``out_dir`` and score them; prints the table and writes it to
    ``metrics_path`` (default ``out_dir/metrics.json``).

    COCO/CrowdPose: ``val_results.json`` (rescored, OKS-NMS'd) against ``ann`` (default
    ``cfg.data.val_ann``); people not predicted count as missed. MPII: ``val_preds.npy``
    (N, 16, 2) in the json's order (HRNet's valid.json lists people in ``gt_valid.mat``'s
    order); scored only when ``ann`` names ``gt_valid.mat``, else returns None.
    """
    os.makedirs(out_dir, exist_ok=True)
    done = preds.done
    n, total = int(done.sum()), len(done)
    flip = "flip test" if cfg.loader.flip_test else "no flip"
    if n < total:
        print(f"validation stopped early: {n} of {total} people predicted")
    if cfg.data.format == "mpii":
        path = os.path.join(out_dir, "val_preds.npy")
        np.save(path, preds.keypoints[:, :, :2])
        print(f"wrote {path} ({n} of {total} people)")
        if ann is None:
            if n < total:
                print(f"{path} is partial (NaN rows for the people not predicted): PCKh "
                      f"needs all {total}")
            else:
                print(f"score with: python evaluate.py --dataset mpii --ann gt_valid.mat "
                      f"--preds {path}")
            return None
        if n < total:
            raise EvaluationError(f"{path}: PCKh needs every one of the {total} people; "
                                  f"only {n} were predicted (max_batches?)")
        metrics = evaluate_mpii(preds.keypoints[:, :, :2], ann, source=path)
    else:
        results = index_to_results(preds.index, preds.keypoints[done],
                                   rows=np.flatnonzero(done))
        path = os.path.join(out_dir, "val_results.json")
        write_results(results, path)
        metrics = evaluate_coco(ann or cfg.data.val_ann, results, dataset=cfg.data.format,
                                verbose=verbose, source=path)
    print(format_table(metrics, title=f"val ({n} of {total} people, {flip})"))
    write_metrics(metrics, metrics_path or os.path.join(out_dir, "metrics.json"))
    return metrics
