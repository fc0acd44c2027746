"""The whole chain on real photos from ../shared/data: loader -> targets -> decode.

Decoding the loader's own targets as if they were a perfect prediction must give back the
annotated source keypoints, through augmentation, flip and back-projection.
"""
import warnings

import numpy as np
import pytest

from dali_pose import build_loader, decode, load_config
from dali_pose.datasets import load_index

from conftest import shared

pytest.importorskip("nvidia.dali")

CASES = {
    "coco": ("coco", "coco-sample/test_coco.json", "coco-sample", [192, 256], [48, 64]),
    "crowdpose": ("crowdpose", "crowdpose-sample/test_crowdpose.json", "crowdpose-sample",
                  [192, 256], [48, 64]),
    "mpii": ("mpii", "mpii-sample/test_mpii.json", "mpii-sample/images", [256, 256],
             [64, 64]),
}


def _cfg(name, split_overrides=()):
    fmt, ann, img, ins, hms = CASES[name]
    ann, img = shared(ann), shared(img)
    o = [f"data.format={fmt}", f"data.train_ann={ann}", f"data.train_images={img}",
         f"data.val_ann={ann}", f"data.val_images={img}", f"model.input_size={ins}",
         f"model.heatmap_size={hms}", "loader.batch_size=4", *split_overrides]
    return load_config(None, o)


# Decoding error of a perfect target in crop px (the error in source px times the crop's zoom),
# measured over every supervised joint of the nine cases below (coco / crowdpose / mpii x
# gaussian train, gaussian val, combined train; 1370 joints):
# gaussian (DARK-UDP) max 2.43e-3 px (mean 3.4e-4), the codec's documented ~0.003 px for
# perfect targets; combined (float32 offsets) max 1.07e-4 px (mean 1.1e-5). Margins: 2.5x and
# 4.7x. A half-pixel slip anywhere in the chain (crop, target, stride, back-projection) is 100x
# larger.
TOLERANCE = {"gaussian": 6e-3, "combined": 5e-4}


@pytest.mark.parametrize("name,target,split", [
    (n, t, s) for n in sorted(CASES) for t, s in
    (("gaussian", "train"), ("gaussian", "val"), ("combined", "train"))])
def test_decode_of_targets_recovers_source_keypoints(name, target, split):
    cfg = _cfg(name, [f"model.target={target}", "aug.rot_prob=1"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = load_index(cfg, split)
    loader = build_loader(cfg, split, index=index)
    row_of = {int(i): r for r, i in enumerate(index.instance_id)}
    n_checked = 0
    flip_index = index.info.flip_index
    for _ in range(2 if split == "train" else 1):
        for batch in loader:
            pred = decode(batch["heatmap"], batch, cfg).numpy()
            w = batch["target_weight"].numpy()
            for i in range(pred.shape[0]):
                src = index.keypoints[row_of[int(batch["instance_id"][i])]]
                # channel j of a flipped crop is source joint flip_index[j]
                order = flip_index if bool(batch["flipped"][i]) else np.arange(len(src))
                zoom = float(np.linalg.norm(batch["matrix"][i, 0, :2].numpy()))
                for j in np.nonzero(w[i] > 0)[0]:
                    err = np.abs(pred[i, j, :2] - src[order[j], :2]).max() * zoom
                    assert err < TOLERANCE[target], (i, j, err)
                    n_checked += 1
    assert n_checked >= 20


def test_val_with_detections_and_flip_copy():
    cfg = _cfg("coco", [f"data.det_file={shared('coco-sample/test_coco_det_AP_H_56.json')}",
                        "loader.batch_size=32"])
    loader = build_loader(cfg, "val")
    ids = []
    for batch in loader:
        # the last batch is padded to full size; its padding rows are marked not valid
        ids += batch["instance_id"][batch["valid"]].tolist()
        assert batch["image_flipped"].shape == batch["image"].shape
        assert (batch["target_weight"] == 0).all()  # detections carry no keypoints
    assert sorted(ids) == list(range(118))  # every detection exactly once
