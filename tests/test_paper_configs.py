"""Every paper config loads and states what its paper states; configs compose with one `base:`.

The table below is written from the papers (AID: "Pay Attention to the Constraint Cue",
NODA: "Nearby-person Occlusion Data Augmentation"), not from the configs: a config that
drifts from its paper fails here.
"""
import glob
import os

import pytest
import yaml

from dali_pose.config import ConfigError, load_config, save_config

ROOT = os.path.join(os.path.dirname(__file__), "..", "configs")

# AID 4.1.1: UDPv1 processing (combined target), the HRNet-UDPv1 recipe for every
# architecture: rotation 45, scale 0.35, half body 0.3, Adam 1e-3 on 4 x 32, S1 = 210
# epochs (x0.1 at 170, 200), S2 = 420 (380, 410), S3 = S1 then S1 with occlusion; occlusion
# radius U(0.1, 0.2) x input width, centre shifted with probability 0.5.
AID_COMMON = {"model.target": "combined", "model.codec": "udp", "aug.recipe": "hrnet",
              "aug.rot_factor": 45.0, "aug.scale_factor": 0.35, "aug.half_body_prob": 0.3,
              "train.lr": 1e-3, "train.base_batch_size": 128, "train.warmup_iters": 0,
              "occlusion.radius": (0.1, 0.2), "occlusion.shift_prob": 0.5}
S1 = {"train.epochs": 210, "train.lr_steps": (170, 200), "train.init_from": None}
S2 = {"train.epochs": 420, "train.lr_steps": (380, 410), "train.init_from": None}
S3 = {"train.epochs": 210, "train.lr_steps": (170, 200)}
OA = {"occlusion.method": "aid"}
NO = {"occlusion.method": "none"}
R50 = {"model.arch": "simplebaseline", "model.depth": 50, "model.input_size": (192, 256)}
W32 = {"model.arch": "hrnet", "model.width": 32, "model.input_size": (192, 256)}
W48 = {"model.arch": "hrnet", "model.width": 48, "model.input_size": (192, 256)}
W32L = {"model.arch": "hrnet", "model.width": 32, "model.input_size": (288, 384),
        "model.heatmap_size": (72, 96)}
CROWD = {"data.format": "crowdpose", "data.det_file": None}
# NODA IV-B: SimpleBaseline rotation 40, scale 0.3, 140 epochs (90, 120); HRNet rotation 45,
# scale [0.65, 1.35], 210 epochs (170, 200); batch 64; Adam 1e-3; 256x256; half of the
# samples occluded, rescale 0.8-1.2; the classic processing of its baselines
NODA_SB = {"model.arch": "simplebaseline", "model.codec": "msra", "aug.rot_factor": 40.0,
           "aug.scale_factor": 0.3, "train.epochs": 140, "train.lr_steps": (90, 120),
           "train.lr": 1e-3, "train.base_batch_size": 64, "model.input_size": (256, 256),
           "data.format": "mpii"}
NODA_HR = {"model.arch": "hrnet", "model.width": 32, "model.codec": "msra",
           "aug.rot_factor": 45.0, "aug.scale_factor": 0.35, "train.epochs": 210,
           "train.lr_steps": (170, 200), "train.lr": 1e-3, "train.base_batch_size": 64,
           "model.input_size": (256, 256), "data.format": "mpii"}
NODA_ON = {"noda.prob": 0.5, "noda.scale_range": (0.8, 1.2)}
NODA_OFF = {"noda.prob": 0.0}
FIXED = {"noda.prob": 0.5, "noda.scale_range": (1.0, 1.0)}

PAPER = {
    "aid/coco_res50_256x192_s1.yaml": [AID_COMMON, R50, S1, NO],
    "aid/coco_res50_256x192_s3.yaml": [AID_COMMON, R50, S3, OA],
    "aid/coco_w32_256x192_s1.yaml": [AID_COMMON, W32, S1, NO],
    "aid/coco_w32_256x192_s3.yaml": [AID_COMMON, W32, S3, OA],
    "aid/coco_w48_256x192_s1.yaml": [AID_COMMON, W48, S1, NO],
    "aid/coco_w48_256x192_s3.yaml": [AID_COMMON, W48, S3, OA],
    "aid/coco_w32_384x288_s1.yaml": [AID_COMMON, W32L, S1, NO],
    "aid/coco_w32_384x288_s3.yaml": [AID_COMMON, W32L, S3, OA],
    "aid/coco_w32_256x192_s1_oa.yaml": [AID_COMMON, W32, S1, OA],  # E2
    "aid/coco_w32_256x192_s2_noocc.yaml": [AID_COMMON, W32, S2, NO],  # E3
    "aid/coco_w32_256x192_s2.yaml": [AID_COMMON, W32, S2, OA],  # E4
    "aid/crowdpose_w32_256x192_s1.yaml": [AID_COMMON, W32, S1, NO, CROWD],
    "aid/crowdpose_w32_256x192_s2.yaml": [AID_COMMON, W32, S2, OA, CROWD],
    "aid/crowdpose_w32_256x192_s3.yaml": [AID_COMMON, W32, S3, OA, CROWD],
    "noda/mpii_res50_256x256.yaml": [NODA_SB, {"model.depth": 50}, NODA_OFF],
    "noda/mpii_res50_256x256_noda.yaml": [NODA_SB, {"model.depth": 50}, NODA_ON],
    "noda/mpii_res152_256x256.yaml": [NODA_SB, {"model.depth": 152}, NODA_OFF],
    "noda/mpii_res152_256x256_noda.yaml": [NODA_SB, {"model.depth": 152}, NODA_ON],
    "noda/mpii_w32_256x256.yaml": [NODA_HR, NODA_OFF],
    "noda/mpii_w32_256x256_noda.yaml": [NODA_HR, NODA_ON],
    "noda/ablation_box.yaml": [NODA_SB, FIXED],
    "noda/ablation_cardboard.yaml": [NODA_SB, FIXED],
    "noda/ablation_grabcut.yaml": [NODA_SB, FIXED],
    "noda/ablation_grabcut_smooth.yaml": [NODA_SB, FIXED],
    "noda/ablation_mixed.yaml": [NODA_SB, NODA_ON],
}
# the pool each NODA row needs: mask level and edge smoothing (Table I's columns)
POOLS = {"noda/ablation_box.yaml": "box_hard", "noda/ablation_cardboard.yaml": "cardboard_hard",
         "noda/ablation_grabcut.yaml": "grabcut_hard",
         "noda/ablation_grabcut_smooth.yaml": "grabcut", "noda/ablation_mixed.yaml": "mixed",
         "noda/mpii_res50_256x256_noda.yaml": "grabcut",
         "noda/mpii_res152_256x256_noda.yaml": "grabcut",
         "noda/mpii_w32_256x256_noda.yaml": "grabcut"}


def value(cfg, key):
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_states_the_paper(name):
    cfg = load_config(os.path.join(ROOT, name))
    wrong = {}
    for part in PAPER[name]:
        for key, want in part.items():
            got = value(cfg, key)
            if got != (pytest.approx(want) if isinstance(want, float) else want):
                wrong[key] = (got, want)
    assert wrong == {}
    if name in POOLS:
        assert os.path.basename(cfg.noda.pool) == f"noda_pool_{POOLS[name]}.npz"
    if name.startswith("aid/") and name.endswith("_s3.yaml"):
        assert cfg.train.init_from == f"runs/aid/{name[4:-8]}_s1/last.pt"
    if name.startswith("aid/crowdpose"):  # the paper's split: train, not trainval
        assert cfg.data.train_ann.endswith("crowdpose_train.json")
        assert cfg.data.val_ann.endswith("crowdpose_test.json")


def test_every_config_loads_and_names_its_recipe():
    files = sorted(glob.glob(os.path.join(ROOT, "**", "*.yaml"), recursive=True))
    assert len(files) >= 35
    for f in files:
        cfg = load_config(f)
        tree = yaml.safe_load(open(f))
        if "synthetic" not in f:
            # the recipe is stated in the file or in its base
            base = tree.get("base")
            stated = tree.get("aug", {}).get("recipe") or (base and yaml.safe_load(
                open(os.path.join(os.path.dirname(f), base))).get("aug", {}).get("recipe"))
            assert stated in ("hrnet", "mmpose"), f
            assert cfg.train.base_batch_size, f
            # official HRNet / UDP-Pose / SimpleBaseline recipes have no warm-up
            assert cfg.train.warmup_iters == 0 or cfg.aug.recipe == "mmpose", f


def test_recipe_configs_follow_their_recipe():
    sb = load_config(os.path.join(ROOT, "coco_res50_256x192.yaml"))
    assert sb.aug.half_body_prob == 0.0  # SimpleBaseline's PROB_HALF_BODY
    assert (sb.aug.rot_factor, sb.aug.scale_factor, sb.train.epochs) == (40, 0.3, 140)
    mm = load_config(os.path.join(ROOT, "coco_w32_256x192_mmpose.yaml"))
    assert (mm.aug.recipe, mm.aug.rot_factor, mm.aug.scale_factor, mm.aug.shift_factor,
            mm.aug.shift_prob, mm.aug.half_body_upper_prob) == ("mmpose", 80, 0.5, 0.16, 0.3,
                                                                0.7)
    tv = load_config(os.path.join(ROOT, "crowdpose_w32_256x192_trainval.yaml"))
    assert tv.data.train_ann.endswith("crowdpose_trainval.json")


def test_base_merges_one_level_and_saves_resolved(tmp_path):
    (tmp_path / "root.yaml").write_text(
        "model:\n  width: 48\n  sigma: 3.0\ntrain:\n  epochs: 7\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "child.yaml").write_text("base: ../root.yaml\nmodel:\n  sigma: 2.5\n")
    cfg = load_config(str(sub / "child.yaml"), ["train.lr=0.5"])
    assert (cfg.model.width, cfg.model.sigma, cfg.train.epochs, cfg.train.lr) == (48, 2.5, 7,
                                                                                 0.5)
    save_config(cfg, str(tmp_path / "saved.yaml"))
    saved = yaml.safe_load(open(tmp_path / "saved.yaml"))
    assert "base" not in saved and saved["model"]["width"] == 48
    assert load_config(str(tmp_path / "saved.yaml")) == cfg
    # two levels: an error naming the key
    (sub / "grandchild.yaml").write_text("base: child.yaml\n")
    with pytest.raises(ConfigError, match="'base'.*one level"):
        load_config(str(sub / "grandchild.yaml"))
    (sub / "missing.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_config(str(sub / "missing.yaml"))
