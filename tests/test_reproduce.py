"""python -m dali_pose.tools.reproduce: --list / --json / --plot / --compare."""
import json
import os

import cv2
import numpy as np
import pytest

from dali_pose.config import load_config, save_config
from dali_pose.tools import reproduce as rp

# published numbers, read from the papers for this test (AID Tables 1 and 3, NODA Table II)
PAPER = {
    ("Table 1 (COCO val)", "UDPv1 HRNet-W32 256x192"): {"AP": 77.2, "AP_vis": 80.7,
                                                         "AP_invis": 69.4},
    ("Table 1 (COCO val)", "+OA HRNet-W32 384x288"): {"AP": 78.7, "AP_invis": 71.4},
    ("Table 3 (CrowdPose test)", "+OA W32 256x192"): {"AP": 77.9, "AR": 80.9},
    ("Table II (MPII val)", "HRNet-W32+NODA"): {"PCKh@0.5/Mean": 90.9,
                                                "PCKh@0.5/Wrist": 86.9},
    ("Table II (MPII val)", "Simple ResNet-50"): {"PCKh@0.5/Mean": 88.5,
                                                  "PCKh@0.5_occ/Mean": 70.8},
}


def test_list_and_json_cover_every_row():
    rows = rp.as_json()
    by = {(r["table"], r["row"]): r for r in rows}
    for key, want in PAPER.items():
        for k, v in want.items():
            assert by[key]["published"][k] == v, (key, k)
    configs = {r["config"] for r in rows if r["config"]}
    # every paper config under configs/aid and configs/noda is a row, and every row loads
    on_disk = {os.path.relpath(os.path.join(d, f), rp.CONFIG_ROOT)
               for sub in ("aid", "noda") for d, _, fs in os.walk(os.path.join(rp.CONFIG_ROOT, sub))
               for f in fs if f.endswith(".yaml")}
    assert on_disk == configs
    for r in rows:
        if r["config"]:
            assert r["commands"]["single"] == f"python train.py --config configs/{r['config']}"
            assert "torchrun --nproc_per_node" in r["commands"]["torchrun"]
        else:
            assert r["note"].startswith("not provided")
    # the recipe's ranks: AID 4 x 32 (128), NODA one process of 64
    assert by[("Table 1 (COCO val)", "UDPv1 HRNet-W32 256x192")]["commands"]["torchrun"] \
        .startswith("torchrun --nproc_per_node 4 ")
    assert "--level box --no-smooth" in by[("Table I (ablation, MPII val)", "Box")]["commands"]["pool"]
    text = rp.format_list()
    assert "E3: S2, no OA" in text and "not provided" in text


def test_noda_pools_are_built_as_their_configs_ask():
    """Each NODA config states the pool's edge smoothing (noda.smooth_edges, checked against
    the pool at load) and its comment gives the pool's build command; both agree with the
    command ``--list`` prints (Table I's smoothing rows differ only by it)."""
    seen = set()
    for r in rp.as_json():
        if "pool" not in r.get("commands", {}):
            continue
        path = os.path.join(rp.CONFIG_ROOT, r["config"])
        cfg = load_config(path)
        command = r["commands"]["pool"]
        assert cfg.noda.smooth_edges is not None, r["config"]
        assert ("--no-smooth" in command) == (cfg.noda.smooth_edges is False), r["config"]
        comment = " ".join(line.strip().lstrip("# ").rstrip(" \\") for line in open(path)
                           if line.startswith("#"))
        assert command in " ".join(comment.split()), r["config"]
        seen.add(cfg.noda.smooth_edges)
    assert seen == {True, False}


def test_cli_json(capsys):
    assert rp.main(["--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == len(rp.EXPERIMENTS)


def fake_run(tmp_path, name, config, records):
    run = tmp_path / name
    run.mkdir()
    cfg = load_config(os.path.join(rp.CONFIG_ROOT, config), [f"out_dir={run}"])
    save_config(cfg, str(run / "config.yaml"))
    with open(run / "metrics.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(run)


def test_compare_finds_the_row_and_the_difference(tmp_path, capsys):
    recs = [{"epoch": e, "loss": 1.0 / (e + 1)} for e in range(3)]
    recs[-1].update({"val/PCKh@0.5/Mean": 90.1, "val/PCKh@0.5/Wrist": 85.0})
    run = fake_run(tmp_path, "w32", "noda/mpii_w32_256x256.yaml", recs)
    rows = rp.compare_rows([run])
    mean = [r for r in rows if r["metric"] == "PCKh@0.5/Mean"]
    assert len(mean) == 1 and mean[0]["row"] == "Table II (MPII val): HRNet-W32"
    assert mean[0]["ours"] == pytest.approx(90.1) and mean[0]["diff"] == pytest.approx(0.1)
    coco = fake_run(tmp_path, "coco", "aid/crowdpose_w32_256x192_s1.yaml",
                    [{"epoch": 0, "loss": 1.0, "val/AP": 0.75, "val/AR": 0.8}])
    ap = [r for r in rp.compare_rows([coco]) if r["metric"] == "AP"]
    assert ap[0]["ours"] == pytest.approx(75.0) and ap[0]["diff"] == pytest.approx(-1.3)
    other = fake_run(tmp_path, "other", "noda/mpii_w32_256x256.yaml", recs)
    with open(os.path.join(other, "config.yaml")) as f:
        text = f.read().replace("epochs: 210", "epochs: 5")
    with open(os.path.join(other, "config.yaml"), "w") as f:
        f.write(text)
    assert rp.compare_rows([other])[0]["row"] is None
    assert rp.main(["--compare", run, other]) == 0
    out = capsys.readouterr().out
    assert "+0.1" in out and "no table row" in out


def test_plot_overlays_runs(tmp_path):
    a = fake_run(tmp_path, "e1", "aid/coco_w32_256x192_s1.yaml",
                 [{"epoch": e, "loss": 2.0 - 0.1 * e, "val/AP": 0.5 + 0.02 * e}
                  for e in range(10)])
    b = fake_run(tmp_path, "e2", "aid/coco_w32_256x192_s1_oa.yaml",
                 [{"epoch": e, "loss": 2.2 - 0.1 * e, "val/AP": 0.45 + 0.025 * e}
                  for e in range(10)])
    out = str(tmp_path / "curves.png")
    assert rp.main(["--plot", a, b, "--out", out]) == 0
    img = cv2.imread(out)
    assert img is not None and img.shape == (480, 1200, 3)
    # both runs' colours are drawn in both panels
    for colour in ((180, 119, 31), (14, 127, 255)):
        hit = np.all(img == colour, axis=2)
        assert hit[:, :600].sum() > 50 and hit[:, 600:].sum() > 50


def test_missing_run_is_an_error(tmp_path, capsys):
    assert rp.main(["--compare", str(tmp_path / "nope")]) == 1
    assert "error:" in capsys.readouterr().err


def test_small_aid_hits_keypoints_more_than_cutout():
    """AID 3.1 at small scale: the keypoint-aware occluder covers a labelled keypoint in
    (almost) every occluded crop; a cutout disc of the same size anywhere does far less often."""
    s = rp.occluder_hit_shares(n_scenes=20, methods=("aid", "cutout"))
    assert s["aid"]["crops"] >= 30
    assert s["aid"]["share"] >= 0.95
    assert s["cutout"]["share"] < s["aid"]["share"] - 0.3


def test_visibility_counts_from_the_index(tmp_path, capsys):
    """Per-joint labelled / occluded counts of a training split (NODA Fig. 1), from a tiny
    COCO file written here."""
    import cv2

    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((100, 100, 3), np.uint8))
    kp1 = [0] * 51
    kp2 = [0] * 51
    for j, v in ((0, 2), (9, 1), (10, 2)):  # nose visible, left wrist occluded, right visible
        kp1[3 * j:3 * j + 3] = [50, 50, v]
    for j, v in ((9, 1), (15, 1), (16, 2)):
        kp2[3 * j:3 * j + 3] = [40, 60, v]
    ann = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}],
           "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                            "bbox": [20, 20, 50, 60], "area": 3000, "keypoints": k,
                            "num_keypoints": 3} for i, k in enumerate((kp1, kp2))],
           "categories": [{"id": 1, "name": "person"}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    cfg = load_config(None, [f"data.train_ann={tmp_path}/ann.json",
                             f"data.train_images={tmp_path}"])
    c = rp.visibility_counts(cfg)
    assert c["left_wrist"] == {"labelled": 2, "occluded": 2, "share": 1.0}
    assert c["nose"]["labelled"] == 1 and c["nose"]["occluded"] == 0
    assert c["left_ankle"]["occluded"] == 1 and c["right_ankle"]["occluded"] == 0
    assert c["left_eye"] == {"labelled": 0, "occluded": 0, "share": 0.0}
    (tmp_path / "cfg.yaml").write_text(
        f"data:\n  train_ann: {tmp_path}/ann.json\n  train_images: {tmp_path}\n")
    assert rp.main(["--visibility", str(tmp_path / "cfg.yaml")]) == 0
    assert "left_wrist" in capsys.readouterr().out


@pytest.mark.slow
def test_noda_raises_limb_occlusion_on_synthetic_people(tmp_path):
    """NODA at small scale: one loader epoch with and without it; the per-joint share of
    occluded labelled joints rises on the limbs, never on the head joints."""
    pytest.importorskip("nvidia.dali")
    from dali_pose.tools.build_pool import build_pool
    from dali_pose.tools.synthetic import generate

    generate(str(tmp_path), seed=3, num_train=12, num_val=1)
    base = [f"data.train_ann={tmp_path}/annotations/person_keypoints_train.json",
            f"data.train_images={tmp_path}/images/train", "loader.batch_size=8",
            "model.input_size=[96, 128]", "model.heatmap_size=[24, 32]"]
    pool = str(tmp_path / "pool.npz")
    np.savez(pool, **build_pool(load_config(None, base), level="cardboard", verbose=False))
    off = rp.visibility_counts(load_config(None, base), loader_epoch=0)
    on = rp.visibility_counts(load_config(None, base + ["noda.prob=1", f"noda.pool={pool}"]),
                              loader_epoch=0)
    for j in ("nose", "left_eye", "right_eye", "left_ear", "right_ear"):
        assert on[j]["occluded"] == off[j]["occluded"], j
    limbs = ("left_wrist", "right_wrist", "left_elbow", "right_elbow", "left_knee",
             "right_knee", "left_ankle", "right_ankle")
    assert sum(on[j]["occluded"] for j in limbs) > sum(off[j]["occluded"] for j in limbs)
    # --epochs: the counts of consecutive epochs add up (each epoch draws its own pastes)
    noda = load_config(None, base + ["noda.prob=1", f"noda.pool={pool}"])
    second = rp.visibility_counts(noda, loader_epoch=1)
    both = rp.visibility_counts(noda, loader_epoch=0, epochs=2)
    for j in on:
        for key in ("labelled", "occluded"):
            assert both[j][key] == on[j][key] + second[j][key], (j, key)
    assert any(second[j]["occluded"] != on[j]["occluded"] for j in limbs)


def test_mask_levels_tighten_on_synthetic_silhouettes():
    """NODA's mask levels at small scale: IoU with the true silhouette, box < cardboard <
    GrabCut."""
    r = rp.mask_level_iou(n_scenes=8)
    assert r["box"]["people"] >= 10
    assert r["box"]["mean_iou"] < r["cardboard"]["mean_iou"] < r["grabcut"]["mean_iou"]
