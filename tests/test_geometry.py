import math

import cv2
import numpy as np
import pytest

from dali_pose.datasets import COCO
from dali_pose.geometry import (RECIPE_HRNET, RECIPE_MMPOSE, apply_affine, augment,
                                half_body_box, half_body_choice, invert_affine,
                                opencv_to_dali, source_roi, transform_keypoints, udp_matrix)


def udp_reference(c, s, rot, out):
    """The UDP paper's get_warp_matrix, written out: size_input = 2c, size_dst = out - 1,
    size_target = box size in pixels."""
    th = math.radians(rot)
    sx, sy = (out[0] - 1) / s[0], (out[1] - 1) / s[1]
    return np.array([
        [math.cos(th) * sx, -math.sin(th) * sx,
         sx * (-c[0] * math.cos(th) + c[1] * math.sin(th) + 0.5 * s[0])],
        [math.sin(th) * sy, math.cos(th) * sy,
         sy * (-c[0] * math.sin(th) - c[1] * math.cos(th) + 0.5 * s[1])]])


@pytest.mark.parametrize("rot", [0.0, 17.0, -90.0, 135.0])
def test_udp_matrix_closed_form(rot):
    c, s, out = (310.3, 205.7), (150.0, 200.0), (192, 256)
    m = udp_matrix(c[0], c[1], s[0], s[1], rot, out[0], out[1], False)
    np.testing.assert_allclose(m, udp_reference(c, s, rot, out), rtol=0, atol=1e-10)
    # box centre -> crop centre, box corners (unrotated) -> crop corners in unit lengths
    np.testing.assert_allclose(apply_affine(m, [c]), [[95.5, 127.5]], atol=1e-10)
    if rot == 0:
        np.testing.assert_allclose(apply_affine(m, [[c[0] - s[0] / 2, c[1] - s[1] / 2]]),
                                   [[0, 0]], atol=1e-10)


def test_flip_is_mirror_of_crop():
    m = udp_matrix(100.0, 80.0, 60.0, 80.0, 30.0, 192, 256, False)
    mf = udp_matrix(100.0, 80.0, 60.0, 80.0, 30.0, 192, 256, True)
    p = np.array([[90.0, 70.0], [120.0, 95.5]])
    a, b = apply_affine(m, p), apply_affine(mf, p)
    np.testing.assert_allclose(b[:, 0], 191 - a[:, 0], atol=1e-10)
    np.testing.assert_allclose(b[:, 1], a[:, 1], atol=1e-10)


def test_invert_and_dali_conversion():
    m = udp_matrix(100.0, 80.0, 60.0, 80.0, 30.0, 192, 256, True)
    inv = invert_affine(m)
    p = np.random.default_rng(0).uniform(0, 200, (5, 2))
    np.testing.assert_allclose(apply_affine(inv, apply_affine(m, p)), p, atol=1e-9)
    # DALI puts pixel centres at +0.5: a point x (OpenCV) is x + 0.5 (DALI).
    md = opencv_to_dali(m)
    np.testing.assert_allclose(apply_affine(md, p + 0.5), apply_affine(m, p) + 0.5, atol=1e-9)


def test_matches_opencv_warp_of_a_dot():
    img = np.zeros((120, 160), np.float32)
    img[40, 70] = 1.0
    m = udp_matrix(75.0, 45.0, 40.0, 40.0, 0.0, 81, 81, False)  # 2x zoom
    out = cv2.warpAffine(img, m, (81, 81), flags=cv2.INTER_LINEAR)
    ys, xs = np.nonzero(out)
    cx = (out[ys, xs] * xs).sum() / out[ys, xs].sum()
    cy = (out[ys, xs] * ys).sum() / out[ys, xs].sum()
    # measured 0.0 (the 2x zoom samples the dot symmetrically); a pixel-centre slip would be
    # 0.5 px or more
    np.testing.assert_allclose([cx, cy], apply_affine(m, [[70, 40]])[0], rtol=0, atol=1e-6)


def test_transform_keypoints_swaps_when_flipped():
    kps = np.zeros((17, 3))
    kps[5] = [10, 20, 2]  # left shoulder
    kps[6] = [30, 20, 1]  # right shoulder
    m = udp_matrix(20.0, 20.0, 60.0, 80.0, 0.0, 192, 256, True)
    out = np.zeros((17, 3))
    transform_keypoints(m, kps, True, COCO.flip_index, out)
    # The right shoulder (x=30) becomes the left one and lands left of centre after flip.
    np.testing.assert_allclose(out[5, :2], apply_affine(m, [kps[6, :2]])[0])
    assert out[5, 2] == 1 and out[6, 2] == 2 and out[0, 2] == 0
    assert out[5, 0] < out[6, 0]  # mirrored: the source-right joint lands on the crop left
    np.testing.assert_allclose(out[6, :2], apply_affine(m, [kps[5, :2]])[0])


def test_half_body_box():
    kps = np.zeros((17, 3))
    kps[[0, 5, 6, 9], :2] = [[50, 10], [40, 30], [60, 30], [30, 70]]
    kps[[0, 5, 6, 9], 2] = 2
    kps[[11, 12, 15], :2] = [[45, 100], [55, 100], [50, 180]]
    kps[[11, 12, 15], 2] = 2
    upper = np.zeros(17, np.bool_)
    upper[:11] = True
    cx, cy, w, h = half_body_box(kps, upper, True)
    np.testing.assert_allclose([cx, cy], kps[[0, 5, 6, 9], :2].mean(0))
    np.testing.assert_allclose([w, h], [30, 60])
    cx, cy, w, h = half_body_box(kps, upper, False)
    np.testing.assert_allclose([cx, cy], kps[[11, 12, 15], :2].mean(0))
    np.testing.assert_allclose([w, h], [10, 80])
    # HRNet: upper when preferred and >= 3 upper joints, else lower if >= 3, else upper
    assert half_body_choice(4, 3, 0.1, 0.69, 3, 3, RECIPE_HRNET) == 1
    assert half_body_choice(4, 3, 0.9, 0.69, 3, 3, RECIPE_HRNET) == 2
    assert half_body_choice(2, 3, 0.1, 0.69, 3, 3, RECIPE_HRNET) == 2
    assert half_body_choice(4, 2, 0.9, 0.69, 3, 3, RECIPE_HRNET) == 1
    assert half_body_choice(1, 2, 0.9, 0.69, 3, 3, RECIPE_HRNET) == 0  # < 2 joints
    # mmpose: the half that is not short, else the preferred one; none when both are short
    assert half_body_choice(1, 3, 0.1, 0.7, 2, 3, RECIPE_MMPOSE) == 2
    assert half_body_choice(5, 2, 0.9, 0.7, 2, 3, RECIPE_MMPOSE) == 1
    assert half_body_choice(1, 2, 0.1, 0.7, 2, 3, RECIPE_MMPOSE) == 0
    assert half_body_choice(2, 3, 0.69, 0.7, 2, 3, RECIPE_MMPOSE) == 1


def test_augment_ranges():
    rng = np.random.default_rng(0)
    kps = np.zeros((17, 3))
    upper = np.zeros(17, np.bool_)
    upper[:11] = True
    rots, scales, flips = [], [], []
    for _ in range(4000):
        u, n = rng.random(7), rng.standard_normal(2)
        cx, cy, sw, sh, rot, flip = augment(np.array([50.0, 60.0]), np.array([75.0, 100.0]),
                                            kps, u, n, upper, 0.5, 0.6, 45.0, 0.35, 0.3, 8,
                                            0.0, 0.75)
        rots.append(rot)
        scales.append(sw / 75.0)
        flips.append(flip)
        assert sh / 100.0 == pytest.approx(sw / 75.0) and (cx, cy) == (50.0, 60.0)
    rots, scales = np.array(rots), np.array(scales)
    assert scales.min() >= 0.65 - 1e-12 and scales.max() <= 1.35 + 1e-12
    assert abs(rots).max() <= 90.0
    assert abs((rots != 0).mean() - 0.6) < 0.03
    assert abs(np.mean(flips) - 0.5) < 0.03


def test_source_roi_covers_crop():
    m = udp_matrix(300.0, 200.0, 150.0, 200.0, 33.0, 192, 256, False)
    x0, y0, x1, y1 = source_roi(invert_affine(m), 192, 256, 640, 480, 1)
    inv = invert_affine(m)
    ys, xs = np.mgrid[0:256, 0:192]
    src = apply_affine(inv, np.stack([xs.ravel(), ys.ravel()], 1))
    assert src[:, 0].min() >= x0 and np.floor(src[:, 0].max()) + 1 < x1
    assert src[:, 1].min() >= y0 and np.floor(src[:, 1].max()) + 1 < y1


def test_half_body_share_in_the_training_crop_operator():
    """The training graph's crop operator, run on a known set of people with the default
    config's augmentation and the loader's draws: a person with more than
    ``half_body_min_joints`` visible joints gets the half-body crop exactly when the draw says
    so (share ~ half_body_prob), the others never."""
    from dali_pose import load_config
    from dali_pose.draws import sample_draws
    from dali_pose.loader.graph import graph_spec

    cfg = load_config(None, [])
    assert cfg.aug.half_body_prob == 0.3 and cfg.aug.half_body_min_joints == 8
    op = graph_spec(cfg, COCO, train=True, gpu=False).crop
    n_people, k = 400, 17
    rng = np.random.default_rng(0)
    # a big box (1000 x 1333 px) around joints within 100 px: a half-body crop is far smaller
    center = np.tile(np.float32([500, 500]), (n_people, 1))
    scale = np.tile(np.float32([1000, 1333]), (n_people, 1))
    kps = np.zeros((n_people, k, 3), np.float32)
    kps[:, :, :2] = rng.uniform(450, 550, (n_people, k, 2))
    kps[:, :, 2] = 2
    eligible = np.arange(n_people) % 2 == 0
    kps[~eligible, 8:, 2] = 0  # 8 visible joints: not more than half_body_min_joints
    draws = [sample_draws(0, 0, r) for r in range(n_people)]
    u = np.stack([d.uniform for d in draws])
    n = np.stack([d.normal for d in draws])
    outs = [np.zeros((n_people, 2, 3), np.float32), np.zeros((n_people, k, 3), np.float32),
            np.zeros((n_people, 4), np.float32), np.zeros((n_people, 4), np.float32),
            np.zeros(n_people, np.int32), np.zeros(4, np.int32)]
    op.cpu_run(*outs, center, scale, kps, u, n, np.array([1000, 1000, 3], np.int64))
    crop_w = outs[2][:, 2]
    # scale augmentation keeps a whole-box crop >= 0.65 * 1000 px wide, a half-body crop of
    # joints within 100 px is <= 1.35 * 1.5 * 133 * 0.75 px
    half = crop_w < 450
    assert not half[~eligible].any()
    np.testing.assert_array_equal(half[eligible], (u[:, 2] < 0.3)[eligible])  # U_HALF
    share = half[eligible].mean()
    assert 0.23 < share < 0.37, share  # 200 people: +-2.3 binomial standard deviations


def test_augment_follows_hrnets_rule_draw_by_draw():
    """An oracle independent of geometry.augment: HRNet's training augmentation written out
    from the rule for given draws (no half body here: no visible joints)."""
    rng = np.random.default_rng(3)
    kps = np.zeros((17, 3))
    upper = np.zeros(17, np.bool_)
    flip_p, rot_p, rf, sf, shift = 0.5, 0.6, 45.0, 0.35, 0.1
    for _ in range(500):
        u, n = rng.random(6), rng.standard_normal(2) * 2.0
        c, s = rng.uniform(50, 500, 2), rng.uniform(40, 300, 2)
        got = augment(c, s, kps, u, n, upper, flip_p, rot_p, rf, sf, 0.3, 8, shift, 0.75)
        k = min(max(n[0] * sf + 1.0, 1.0 - sf), 1.0 + sf)  # scale: clipped N(1, sf)
        rot = min(max(n[1] * rf, -2 * rf), 2 * rf) if u[1] < rot_p else 0.0
        sw, sh = s[0] * k, s[1] * k
        cx = c[0] + (2 * u[4] - 1) * shift * sw  # shift: uniform, in units of the box
        cy = c[1] + (2 * u[5] - 1) * shift * sh
        np.testing.assert_allclose(got[:5], [cx, cy, sw, sh, rot], rtol=1e-12, atol=1e-9)
        assert got[5] == (u[0] < flip_p)
