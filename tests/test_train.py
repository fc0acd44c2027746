"""The trainer's pieces: the losses against per-joint loops of their HRNet/mmpose
definitions, the configurable HRNet, and a short run that must actually learn."""
import numpy as np
import pytest
import torch

from dali_pose import build_model
from dali_pose.config import ModelConfig, load_config
from dali_pose.models.losses import pose_loss

pytest.importorskip("nvidia.dali")


def _mse(a, b):
    return float(np.mean((a.astype(np.float64) - b) ** 2))


def _batch(gt, w):
    return {"heatmap": torch.from_numpy(gt), "target_weight": torch.from_numpy(w)}


def test_gaussian_loss_is_joints_mse_with_target_weight():
    rng = np.random.default_rng(0)
    out = rng.random((3, 5, 8, 6)).astype(np.float32)
    gt = rng.random((3, 5, 8, 6)).astype(np.float32)
    w = np.array([[1, 0, 1, 1, 0], [0, 0, 1, 1, 1], [1, 1, 1, 0, 1]], np.float32)
    wb = w[:, :, None, None]
    ref = np.mean([0.5 * _mse(out[:, j] * wb[:, j], gt[:, j] * wb[:, j]) for j in range(5)])
    got = pose_loss(torch.from_numpy(out), _batch(gt, w), ModelConfig()).item()
    assert got == pytest.approx(ref, rel=1e-6)


def test_combined_loss_is_mmpose_combined_target_mse():
    rng = np.random.default_rng(1)
    n, k, h, wd = 2, 4, 8, 6
    out = rng.normal(size=(n, 3 * k, h, wd)).astype(np.float32)
    gt = np.zeros((n, 3 * k, h, wd), np.float32)
    gt[:, 0::3] = rng.random((n, k, h, wd)) > 0.7  # disks
    gt[:, 1::3] = rng.normal(size=(n, k, h, wd)) * gt[:, 0::3]  # offsets inside them
    gt[:, 2::3] = rng.normal(size=(n, k, h, wd)) * gt[:, 0::3]
    w = rng.integers(0, 2, (n, k)).astype(np.float32)
    ref = 0.0
    for j in range(k):
        wj = w[:, j, None, None]
        disk_pred, disk_gt = out[:, 3 * j] * wj, gt[:, 3 * j] * wj
        ref += 0.5 * _mse(disk_pred, disk_gt)
        for c in (1, 2):
            ref += 0.5 * _mse(disk_gt * out[:, 3 * j + c], disk_gt * gt[:, 3 * j + c])
    ref /= k
    got = pose_loss(torch.from_numpy(out), _batch(gt, w), ModelConfig(target="combined")).item()
    assert got == pytest.approx(ref, rel=1e-6)


def test_loss_names_a_size_mismatch():
    with pytest.raises(ValueError, match="heatmap_size"):
        pose_loss(torch.zeros(1, 2, 8, 6), _batch(np.zeros((1, 2, 16, 12), np.float32),
                                                  np.ones((1, 2), np.float32)), ModelConfig())


@pytest.mark.parametrize("target,channels", [("gaussian", 17), ("combined", 51)])
def test_build_model_output_matches_the_targets(target, channels):
    m = build_model(ModelConfig(target=target, width=4, stem_width=8, num_blocks=1,
                                stage_modules=(1, 1)), 17)
    assert m(torch.zeros(1, 3, 64, 48)).shape == (1, channels, 16, 12)


def test_a_short_run_learns(tmp_path):
    """One loader batch, no augmentation: 100 steps of the tiny HRNet must cut the loss on
    it to 60% (measured: 50%; the heatmaps' zero background makes the start slow). Wrong targets (e.g. not at the keypoints of the crop) would still be fitted, but
    a broken loss, model or gradient path would not."""
    from dali_pose.loader import build_loader
    from dali_pose.tools.synthetic import generate

    generate(str(tmp_path), seed=1, num_train=4, num_val=1)
    cfg = load_config("configs/synthetic.yaml", [
        f"data.train_ann={tmp_path}/annotations/person_keypoints_train.json",
        f"data.train_images={tmp_path}/images/train", "loader.batch_size=4",
        "loader.pipelines=1", "loader.num_threads=1", "aug.rot_prob=0", "aug.flip_prob=0",
        "aug.scale_factor=0", "aug.half_body_prob=0"])
    batch = next(iter(build_loader(cfg, "train")))
    assert batch["target_weight"].sum() > 10
    torch.manual_seed(0)
    model = build_model(cfg.model, 17)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    losses = []
    for _ in range(100):
        loss = pose_loss(model(batch["image"]), batch, cfg.model)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses
