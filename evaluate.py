#!/usr/bin/env python
"""Score pose predictions, or a trained model, with the official COCO, CrowdPose and MPII metrics.

File mode (no model)::

    python evaluate.py --dataset coco      --ann person_keypoints_val2017.json --preds results.json
    python evaluate.py --dataset crowdpose --ann crowdpose_test.json --preds results.json
    python evaluate.py --dataset mpii      --ann gt_valid.mat --preds preds.npy \\
        [--visible visible_valid.npy]

Model mode (a checkpoint train.py wrote, or any weight file through a config)::

    python evaluate.py --checkpoint runs/synthetic/model.pt [--config CFG] [--set KEY=VALUE]
    python evaluate.py --checkpoint runs/mpii/model.pt --ann gt_valid.mat
    python evaluate.py --config configs/coco_w32_256x192.yaml \
        --set model.weights=models/pose_hrnet_w32_256x192.pth --set model.codec=msra

    python evaluate.py --checkpoint runs/coco/model.pt --test-dev \
        --set data.val_ann=image_info_test-dev2017.json --set data.det_file=DETS.json

runs the model over the config's val split (the config saved in the checkpoint unless
``--config`` is given; ``--set`` overrides either, e.g. ``loader.device=cpu`` or
``data.val_ann=...``) with the flip test, maps the keypoints back to source pixels and
scores them exactly as train.py does at the end of a run (``dali_pose.evaluation.inference``). The
predictions are written next to the metrics (``val_results.json``, or ``val_preds.npy`` for
MPII, which is scored when ``--ann`` names ``gt_valid.mat``).

``--preds``: COCO/CrowdPose, a COCO results json (``dali_pose.evaluation.postprocess.to_coco_results``
writes one); MPII, an ``.npy`` (N, 16, 2) of 0-based pixel coordinates in the order of
``gt_valid.mat``. The metrics are printed as a table and written to ``--out`` (default
``runs/eval/<dataset>-<time>/metrics.json``) with the table's names as flat keys.
``--vis N`` draws ground truth (left) and predictions (right) for N images (COCO/CrowdPose)
or people (MPII) into ``<out dir>/vis/*.png``; on the photographs with ``--images DIR``
(and, for MPII, ``--mpii-json`` the HRNet-format json listing the images in ground-truth
order), else on a blank canvas. Model mode takes both from the config's val split.

Bad input (unknown image ids, wrong shapes, NaN, a ground truth of another dataset, a
checkpoint whose weights do not fit its config) prints ``error: ...`` naming the file and
exits with status 1.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from dali_pose.config import DataConfig, add_config_args
from dali_pose.datasets import DATASETS, MPII, DatasetInfo, image_path, read_json
from dali_pose.errors import DaliPoseError, NoGpuError
from dali_pose.evaluation.visualize import draw_pose
from dali_pose.evaluation.metrics import (EvaluationError, evaluate_coco, evaluate_mpii,
                                          format_table, load_gt, load_mpii_gt, load_results,
                                          write_metrics)

GT_COLOR = (60, 200, 60)  # BGR
PRED_COLOR = (40, 90, 240)


def score(dataset: str, ann: str, preds, visible=None, verbose: bool = False,
          source: str = "predictions") -> Dict[str, float]:
    """Metrics of ``preds`` (results path/list, or MPII array/path) against ``ann``.

    ``source`` names in-memory predictions in error messages.
    """
    if dataset == "mpii":
        return evaluate_mpii(preds, ann, visible=visible, source=source)
    if visible is not None:
        raise EvaluationError("--visible is the MPII is_visible array; COCO/CrowdPose take "
                              "visibility from the ground-truth json")
    return evaluate_coco(ann, preds, dataset=dataset, verbose=verbose, source=source)


# --------------------------------------------------------------------------- drawing


def _panel(base: np.ndarray, label: str) -> np.ndarray:
    import cv2

    out = base.copy()
    cv2.putText(out, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 3,
                cv2.LINE_AA)
    cv2.putText(out, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def _read_image(path: str, shape: Tuple[int, int],
                max_pixels: int = DataConfig.max_image_pixels) -> np.ndarray:
    """The photo at ``path`` (BGR, as stored: no EXIF turn), or a grey (h, w) = ``shape``
    canvas for None; a file larger than ``max_pixels`` (its header says) is refused undecoded."""
    import cv2

    if path is None:
        return np.full((shape[0], shape[1], 3), 96, np.uint8)
    from dali_pose.imagefiles import read_size

    try:
        size = read_size(path)
    except OSError as e:
        raise EvaluationError(f"--vis: cannot read image {path}: {e}") from None
    if size is not None and size[0] * size[1] > max_pixels:  # never decode a pixel bomb
        raise EvaluationError(f"--vis: image {path} is {size[0]}x{size[1]} pixels, above "
                              f"data.max_image_pixels ({max_pixels})")
    img = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise EvaluationError(f"--vis: cannot read image {path}")
    return img


def _save(path: str, gt_img: np.ndarray, pred_img: np.ndarray) -> None:
    import cv2

    both = np.concatenate([_panel(gt_img, "ground truth"), _panel(pred_img, "prediction")],
                          axis=1)
    if not cv2.imwrite(path, both):
        raise EvaluationError(f"--vis: cannot write {path}")


def visualize_coco(ann: str, results: List[dict], info: DatasetInfo, n: int, out_dir: str,
                   images_dir: Optional[str] = None, score_thr: float = 0.3,
                   data: DataConfig = DataConfig()) -> List[str]:
    """Ground truth | predictions (score >= score_thr) for the first n images with people.
    ``data``: the config's image limits (``max_image_pixels``, ``allow_outside_paths``)."""
    coco = load_gt(ann, info)
    by_img: Dict[object, List[dict]] = {}
    for r in results:
        by_img.setdefault(r["image_id"], []).append(r)
    ids = [i for i in sorted(coco.getImgIds()) if coco.getAnnIds(imgIds=[i], iscrowd=False)]
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for iid in ids[:n]:
        meta = coco.loadImgs([iid])[0]
        path = image_path(images_dir, meta.get("file_name"), ann, f"image {iid}",
                          data.allow_outside_paths, hint="") if images_dir else None
        shape = (int(meta.get("height", 480)), int(meta.get("width", 640)))
        base = _read_image(path, shape, data.max_image_pixels)
        gt_img, pred_img = base.copy(), base.copy()
        for a in coco.loadAnns(coco.getAnnIds(imgIds=[iid])):
            kp = np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3)
            draw_pose(gt_img, kp[:, :2], kp[:, 2] > 0, info.skeleton, GT_COLOR)
        for r in sorted(by_img.get(iid, []), key=lambda r: r["score"]):
            if r["score"] >= score_thr:
                kp = np.asarray(r["keypoints"], dtype=np.float64).reshape(-1, 3)
                draw_pose(pred_img, kp[:, :2], np.ones(len(kp), bool), info.skeleton,
                          PRED_COLOR)
        out = os.path.join(out_dir, f"{iid}.png")
        _save(out, gt_img, pred_img)
        written.append(out)
    return written


def visualize_mpii(gt_mat: str, preds, n: int, out_dir: str, images_dir: Optional[str] = None,
                   mpii_json: Optional[str] = None, data: DataConfig = DataConfig()
                   ) -> List[str]:
    """Ground truth | prediction for the first n people, cropped around each person.
    ``data``: the config's image limits (``max_image_pixels``, ``allow_outside_paths``)."""
    names = None
    if images_dir:
        if not mpii_json:
            raise EvaluationError("--vis with --images for MPII also needs --mpii-json (the "
                                  "HRNet-format json listing each person's image, in "
                                  "gt_valid.mat order)")
        people = read_json(mpii_json, "--mpii-json file", EvaluationError)
        if not isinstance(people, list) or not all(isinstance(a, dict) and "image" in a
                                                   for a in people):
            raise EvaluationError(f"--mpii-json {mpii_json}: not an MPII json (a list of "
                                  f"people, each with its 'image')")
        names = [a["image"] for a in people]
    gt = load_mpii_gt(gt_mat)
    p = np.load(preds) if isinstance(preds, str) else np.asarray(preds)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for i in range(min(n, len(gt))):
        g, valid = gt.joints0[i], ~gt.missing[i]
        pts = np.concatenate([g[valid], p[i], gt.headboxes[i] - 1.0])
        margin = 2.0 * gt.head_size[i]
        x0, y0 = np.floor(pts.min(0) - margin).astype(int)
        x1, y1 = np.ceil(pts.max(0) + margin).astype(int)
        if names is not None and i < len(names):
            img = _read_image(image_path(images_dir, names[i], mpii_json, f"person {i}",
                                         data.allow_outside_paths, hint=""), (0, 0),
                              data.max_image_pixels)
            h, w = img.shape[:2]
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
            crop = img[y0:y1, x0:x1]
        else:
            crop = _read_image(None, (y1 - y0, x1 - x0))
        off = np.array([x0, y0], np.float64)
        gt_img, pred_img = crop.copy(), crop.copy()
        draw_pose(gt_img, g - off, valid, MPII.skeleton, GT_COLOR)
        draw_pose(pred_img, p[i] - off, np.ones(16, bool), MPII.skeleton, PRED_COLOR)
        out = os.path.join(out_dir, f"{i:05d}.png")
        _save(out, gt_img, pred_img)
        written.append(out)
    return written


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(DATASETS),
                    help="file mode (required there); model mode takes data.format")
    ap.add_argument("--ann", help="ground truth: keypoint json (coco/crowdpose) or "
                                  "gt_valid.mat (mpii). Model mode: coco/crowdpose default "
                                  "to data.val_ann (the people predicted are always "
                                  "data.val_ann's: change both with --set data.val_ann=); "
                                  "mpii is scored only with --ann gt_valid.mat")
    ap.add_argument("--preds", help="file mode: COCO results json, or .npy (N,16,2) 0-based "
                                    "for mpii")
    ap.add_argument("--visible", help="mpii file mode: is_visible flags (N,16) .npy for the "
                                      "visible/occluded breakdown")
    ap.add_argument("--checkpoint", help="model mode: a model.pt written by train.py")
    add_config_args(ap, default="model mode: the config saved in the checkpoint")
    ap.add_argument("--max-batches", type=int, default=None, metavar="N",
                    help="model mode: predict only the first N val batches (a quick look; "
                         "the people left out count as missed)")
    ap.add_argument("--out", help="metrics json (default runs/eval/<dataset>-<time>/"
                                  "metrics.json); --vis draws into its folder's vis/")
    ap.add_argument("--vis", type=int, default=0, metavar="N",
                    help="draw ground truth and predictions of N images (people for mpii)")
    ap.add_argument("--vis-thr", type=float, default=0.3, metavar="S",
                    help="--vis draws predictions with score >= S (default 0.3)")
    ap.add_argument("--images", help="image folder for --vis")
    ap.add_argument("--mpii-json", help="mpii --vis: HRNet-format json naming each person's "
                                        "image, in gt_valid.mat order")
    ap.add_argument("--test-dev", action="store_true",
                    help="model mode: write the results json of data.val_ann (an image-info "
                         "file, e.g. COCO test-dev's) with data.det_file, unscored, for the "
                         "evaluation server")
    ap.add_argument("--verbose", action="store_true",
                    help="show pycocotools' own output, and full tracebacks on errors")
    return ap


def _default_out(dataset: str) -> str:
    return os.path.join("runs", "eval", f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}",
                        "metrics.json")


def _file_mode(args) -> None:
    out = args.out or _default_out(args.dataset)
    preds = args.preds
    if args.dataset != "mpii":
        preds = load_results(args.preds)  # read once, for scoring and drawing
    metrics = score(args.dataset, args.ann, preds, args.visible, args.verbose,
                    source=args.preds)
    if args.dataset != "mpii":
        covered = len({r["image_id"] for r in preds})
        print(f"{args.preds}: {len(preds)} predictions on {covered} images")
    print(format_table(metrics, title=f"{args.dataset}: {args.preds}"))
    write_metrics(metrics, out)
    print(f"metrics written to {out}")
    if args.vis:
        _draw(args.dataset, args.ann, preds if args.dataset != "mpii" else args.preds,
              args, out, args.images, args.mpii_json)


def _model_mode(args) -> None:
    import torch

    from dali_pose.evaluation.inference import load_checkpoint, predict
    from dali_pose.evaluation.inference import score as score_model

    from dali_pose import build_model, load_config
    from dali_pose.models import describe_model

    if args.checkpoint:
        cfg, model, epochs = load_checkpoint(args.checkpoint, args.config, args.overrides)
        what = f"{args.checkpoint} ({epochs} epochs)"
    else:  # a published or earlier model through the config's model.weights
        cfg = load_config(args.config, args.overrides)
        if not cfg.model.weights:
            raise EvaluationError("model mode without --checkpoint needs the weights: "
                                  "--set model.weights=PATH (a dali_pose, official HRNet / "
                                  "SimpleBaseline or mmpose file)")
        model = build_model(cfg, log=print).eval()
        what = cfg.model.weights
    fmt = cfg.data.format
    if args.dataset and args.dataset != fmt:
        raise EvaluationError(f"--dataset {args.dataset} but the config has data.format "
                              f"{fmt}")
    if fmt == "mpii" and args.vis and args.ann is None:
        raise EvaluationError("--vis for MPII needs --ann gt_valid.mat (the drawings show "
                              "its ground truth)")
    out = args.out or _default_out(fmt)
    gpu = cfg.loader.device == "gpu"
    if gpu and not torch.cuda.is_available():
        raise NoGpuError()
    device = torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")
    print(f"{what}: {describe_model(cfg)}, codec {cfg.model.codec}; val {cfg.data.val_ann}"
          f"{' with detections ' + cfg.data.det_file if cfg.data.det_file else ''} on {device}")
    preds = predict(cfg, model.to(device), device, args.max_batches)
    out_dir = os.path.dirname(out) or "."
    if args.test_dev:
        write_test_dev(preds, out_dir)
        return
    metrics = score_model(cfg, preds, out_dir, ann=args.ann, metrics_path=out,
                          verbose=args.verbose)
    if metrics is not None:
        print(f"metrics written to {out}")
    if args.vis:
        if fmt == "mpii":
            _draw(fmt, args.ann, os.path.join(out_dir, "val_preds.npy"), args, out,
                  args.images or cfg.data.val_images, args.mpii_json or cfg.data.val_ann,
                  cfg.data)
        else:
            _draw(fmt, args.ann or cfg.data.val_ann,
                  load_results(os.path.join(out_dir, "val_results.json")), args, out,
                  args.images or cfg.data.val_images, None, cfg.data)


def write_test_dev(preds, out_dir: str) -> str:
    """The COCO results json of ``preds`` (every detection predicted) without scoring: the
    file the COCO server takes (``person_keypoints_test-dev2017_<name>_results.json``;
    rename it to that pattern when submitting)."""
    from dali_pose.evaluation.postprocess import index_to_results, write_results

    if not preds.done.all():
        raise EvaluationError(f"test-dev results need every detection predicted; only "
                              f"{int(preds.done.sum())} of {len(preds.done)} were "
                              f"(--max-batches?)")
    path = os.path.join(out_dir, "test_dev_results.json")
    results = index_to_results(preds.index, preds.keypoints)
    write_results(results, path)
    print(f"wrote {path}: {len(results)} people on "
          f"{len({r['image_id'] for r in results})} images (unscored: submit to the server)")
    return path


def _draw(dataset, ann, preds, args, out, images, mpii_json,
          data: DataConfig = DataConfig()) -> None:
    vis_dir = os.path.join(os.path.dirname(out) or ".", "vis")
    if dataset == "mpii":
        files = visualize_mpii(ann, preds, args.vis, vis_dir, images, mpii_json, data)
    else:
        files = visualize_coco(ann, preds, DATASETS[dataset], args.vis, vis_dir, images,
                               args.vis_thr, data)
    print(f"{len(files)} drawings written to {vis_dir}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    model_mode = bool(args.checkpoint or args.config or args.overrides)
    if not model_mode:
        missing = [f"--{f}" for f in ("dataset", "ann", "preds") if not getattr(args, f)]
        if missing:
            parser.error(f"file mode needs {', '.join(missing)} (or give --checkpoint, or "
                         f"--config with model.weights, to score a model)")
        if args.max_batches is not None:
            parser.error("--max-batches belongs to model mode (--checkpoint or --config)")
    else:
        if args.preds or args.visible:
            parser.error("--preds/--visible belong to file mode; in model mode the model "
                         "makes the predictions")
        if args.max_batches is not None and args.max_batches < 1:
            parser.error("--max-batches must be >= 1")
    try:
        if args.vis < 0:
            raise EvaluationError("--vis must be >= 0")
        if model_mode:
            _model_mode(args)
        else:
            _file_mode(args)
    except (DaliPoseError, OSError) as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
