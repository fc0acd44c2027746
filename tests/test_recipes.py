"""The augmentation recipes against NumPy samplers written here from the reference rules.

hrnet: HRNet / UDP-Pose ``JointsDataset`` (``__getitem__`` + ``half_body_transform``);
mmpose: mmpose 1.x ``RandomFlip`` + ``RandomHalfBody`` + ``RandomBBoxTransform``.
Each recipe draws N = 100,000 crops of the same people both ways (ours: ``draw_box`` on
uniform / normal draws; the reference: its own np.random calls, vectorised) and compares
every output's distribution with a two-sample KS test, and the flip / half-body branch
shares with a binomial z-test.
"""
import math

import numba
import numpy as np
import pytest

from dali_pose.config import load_config
from dali_pose.geometry import (NUM_NORMAL, NUM_UNIFORM, RECIPE_HRNET, RECIPE_MMPOSE,
                                AugParams, draw_box, fix_aspect, normal_ppf, truncnorm_unit)

N = 100_000
K = 17
UPPER = np.arange(K) < 11  # COCO: nose .. wrists are the upper body
ASPECT = 192 / 256
# two-sample KS with n = m = N: P(D > c * sqrt(2 / N)) ~ 2 exp(-2 c^2); c for 1e-4 per test
# (about a dozen tests per recipe), i.e. D_crit ~ 0.010 (the noise floor at this size ~0.004)
KS_CRIT = math.sqrt(-0.5 * math.log(1e-4 / 2)) * math.sqrt(2.0 / N)
Z_MAX = 4.5  # binomial shares: |difference| / its standard error


def people(n=3000, seed=7):
    """Random people: keypoints (n, K, 3) with visibility counts from 0 to K, and their
    1.25-padded boxes: center (n, 2), scale (n, 2) aspect-fixed, box (n, 2) before the
    aspect fix (the index's ``box_size``). Their w/h spread from 0.1 to 2.7 (5-95%: 0.2 to
    1.6), so the aspect fix grows 87% of the boxes by > 10% (a shift relative to the wrong
    box shows)."""
    rng = np.random.default_rng(seed)
    kps = np.zeros((n, K, 3), np.float32)
    base = rng.uniform(100, 500, (n, 1, 2))
    kps[:, :, :2] = base + rng.uniform(-1, 1, (n, K, 2)) * rng.uniform(20, 150, (n, 1, 2))
    kps[:, :, 1] += np.where(UPPER, -40, 40)[None]  # upper joints above the lower ones
    p_vis = rng.uniform(0.2, 1.0, (n, 1))
    kps[:, :, 2] = np.where(rng.random((n, K)) < p_vis, 2, 0)
    xy = kps[:, :, :2]
    center = (xy.min(1) + xy.max(1)) / 2
    box = (xy.max(1) - xy.min(1)) * 1.25
    scale = np.array([fix_aspect(w, h, ASPECT) for w, h in box])
    return (center.astype(np.float32), scale.astype(np.float32), box.astype(np.float32),
            kps)


@numba.njit
def ours(center, scale, box, kps, u, n, upper, p, aspect):
    m = u.shape[0]
    out = np.empty((m, 7))
    for i in range(m):
        j = i % center.shape[0]
        cx, cy, sw, sh, rot, flip, half = draw_box(
            center[j], scale[j], box[j], kps[j], u[i], n[i], upper, p[0], p[1], p[2], p[3],
            p[4], int(p[5]), p[6], aspect, p[7], p[8], int(p[9]), int(p[10]), p[11],
            int(p[12]))
        out[i, 0], out[i, 1], out[i, 2], out[i, 3] = cx, cy, sw, sh
        out[i, 4], out[i, 5], out[i, 6] = rot, flip, half
    return out


def run_ours(cfg_aug, c, s, b, k, seed=1):
    rng = np.random.default_rng(seed)
    u = rng.random((N, NUM_UNIFORM), dtype=np.float32)
    n = rng.standard_normal((N, NUM_NORMAL), dtype=np.float32)
    p = np.array(AugParams.of(cfg_aug), np.float64)
    return ours(c, s, b, k, u, n, UPPER, p, ASPECT)


def halves(kps):
    """Per person and half (0 upper, 1 lower): visible count, centre, extent (w, h)."""
    vis = kps[:, :, 2] > 0
    out = []
    for mask in (UPPER, ~UPPER):
        sel = vis & mask[None]
        cnt = sel.sum(1)
        xy = kps[:, :, :2].astype(np.float64)
        mean = (xy * sel[..., None]).sum(1) / np.maximum(cnt, 1)[:, None]
        lo = np.where(sel[..., None], xy, np.inf).min(1)
        hi = np.where(sel[..., None], xy, -np.inf).max(1)
        out.append((cnt, mean, np.where(cnt[:, None] > 0, hi - lo, 0.0)))
    return out


def fix_aspect_np(w, h):
    wide = w > ASPECT * h
    return np.where(wide, w, h * ASPECT), np.where(wide, w / ASPECT, h)


def truncnorm_np(rng, size):
    """N(0, 1) truncated to [-1, 1] by rejection (scipy truncnorm(-1, 1) in mmpose)."""
    x = rng.standard_normal(size)
    bad = np.abs(x) > 1
    while bad.any():
        x[bad] = rng.standard_normal(bad.sum())
        bad = np.abs(x) > 1
    return x


def reference(recipe, a, c, s, b, k, seed=2):
    """The reference sampler, vectorised: (cx, cy, sw, sh, rot, flip, half) per sample.
    ``b``: the padded boxes before the aspect fix (mmpose's ``bbox_scale`` after
    ``GetBBoxCenterScale``); ``s`` the same aspect-fixed (HRNet's box)."""
    rng = np.random.default_rng(seed)
    j = np.arange(N) % len(c)
    c, s, b, k = (c[j].astype(np.float64), s[j].astype(np.float64), b[j].astype(np.float64),
                  k[j])
    (n_up, m_up, e_up), (n_lo, m_lo, e_lo) = halves(k)
    n_vis = n_up + n_lo
    flip = rng.random(N) < a.flip_prob
    if recipe == "hrnet":
        gate = (n_vis > a.half_body_min_joints) & (rng.random(N) < a.half_body_prob)
        prefer = rng.standard_normal(N) < 0.5  # HRNet: np.random.randn() < 0.5
        upper = (prefer & (n_up > 2)) | ~(n_lo > 2)
        count = np.where(upper, n_up, n_lo)
        half = np.where(gate & (count >= 2), np.where(upper, 1, 2), 0)
    else:
        gate = (rng.random(N) <= a.half_body_prob) & (n_vis >= a.half_body_min_joints + 1)
        prefer = rng.random(N) < 0.7
        short_up, short_lo = n_up < 2, n_lo < 3
        choice = np.where(short_lo, 1, np.where(short_up, 2, np.where(prefer, 1, 2)))
        half = np.where(gate & ~(short_up & short_lo), choice, 0)
    is_up, is_lo = (half == 1)[:, None], (half == 2)[:, None]
    ctr = np.where(is_up, m_up, np.where(is_lo, m_lo, c))
    ext = np.where(is_up, e_up, e_lo) * 1.5
    took = half > 0
    if recipe == "hrnet":  # HRNet fixes the aspect of the half-body box at once
        hw, hh = fix_aspect_np(ext[:, 0], ext[:, 1])
        box = np.where(took[:, None], np.stack([hw, hh], 1), s)
        sf, rf = a.scale_factor, a.rot_factor
        scl = np.clip(rng.standard_normal(N) * sf + 1, 1 - sf, 1 + sf)
        rot = np.where(rng.random(N) <= a.rot_prob,
                       np.clip(rng.standard_normal(N) * rf, -2 * rf, 2 * rf), 0.0)
        box = box * scl[:, None]
    else:
        # mmpose keeps bbox_scale as it is (GetBBoxCenterScale's padded box, or
        # RandomHalfBody's padded extent) through RandomBBoxTransform, whose shift is a
        # fraction of it and whose scale multiplies it; TopdownAffine fixes the aspect last
        box = np.where(took[:, None], ext, b)
        off = truncnorm_np(rng, (N, 2)) * 0.16
        off = np.where(rng.random((N, 1)) < 0.3, off, 0.0)
        ctr = ctr + off * box
        scl = truncnorm_np(rng, N) * 0.5 + 1.0
        box = box * scl[:, None]
        rot = np.where(rng.random(N) < 0.6, truncnorm_np(rng, N) * 80.0, 0.0)
        box = np.stack(fix_aspect_np(box[:, 0], box[:, 1]), 1)
    return np.column_stack([ctr, box, rot, flip, half])


def ks(a, b):
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return np.max(np.abs(np.searchsorted(a, grid, "right") / len(a)
                         - np.searchsorted(b, grid, "right") / len(b)))


def relative(out, c, s, b, k):
    """Each crop relative to the box it started from (the person's, or the chosen half's):
    shift of the centre in units of that box before the aspect fix (mmpose's shift is a
    fraction of it) and the scale factor, so that the KS tests see the draws, not the
    people."""
    j = np.arange(len(out)) % len(c)
    (_, m_up, e_up), (_, m_lo, e_lo) = halves(k[j])
    half = out[:, 6]
    is_up, is_lo = (half == 1)[:, None], (half == 2)[:, None]
    ctr0 = np.where(is_up, m_up, np.where(is_lo, m_lo, c[j]))
    ext = np.where(is_up, e_up, e_lo) * 1.5
    hw, hh = fix_aspect_np(ext[:, 0], ext[:, 1])
    took = (half > 0)[:, None]
    pre = np.maximum(np.where(took, ext, b[j]), 1e-6)
    box = np.where(took, np.stack([hw, hh], 1), s[j])
    return np.column_stack([(out[:, :2] - ctr0) / pre, out[:, 2:4] / box, out[:, 4]])


def compare(x, y, people_):
    """Failures: KS on each continuous output (relative to the box it started from) and
    z-tests on the flip and branch shares."""
    bad = []
    rx, ry = relative(x, *people_), relative(y, *people_)
    for col, name in enumerate(["shift x", "shift y", "scale w", "scale h", "rot"]):
        d = ks(rx[:, col], ry[:, col])
        if d > KS_CRIT:
            bad.append(f"{name}: KS {d:.4f} > {KS_CRIT:.4f}")
    for name, fx, fy in [("flip", x[:, 5] > 0, y[:, 5] > 0),
                         ("whole", x[:, 6] == 0, y[:, 6] == 0),
                         ("upper", x[:, 6] == 1, y[:, 6] == 1),
                         ("lower", x[:, 6] == 2, y[:, 6] == 2)]:
        p = (fx.mean() + fy.mean()) / 2
        se = math.sqrt(max(p * (1 - p), 1e-12) * 2 / N)
        z = abs(fx.mean() - fy.mean()) / se
        if z > Z_MAX:
            bad.append(f"{name}: {fx.mean():.4f} vs {fy.mean():.4f} (z {z:.1f})")
    return bad


@pytest.fixture(scope="module")
def crowd():
    return people()


@pytest.mark.parametrize("recipe", ["hrnet", "mmpose"])
def test_recipe_matches_reference(recipe, crowd):
    c, s, b, k = crowd
    a = load_config(None, [f"aug.recipe={recipe}", "aug.shift_factor=0.16"
                           if recipe == "mmpose" else "aug.shift_factor=0.0"]).aug
    x = run_ours(a, c, s, b, k)
    y = reference(recipe, a, c, s, b, k)
    assert compare(x, y, crowd) == []
    # the draws are not degenerate: half-body crops of both halves happen
    assert (x[:, 6] == 1).mean() > 0.03 and (x[:, 6] == 2).mean() > 0.01


def test_half_body_rule_prefers_upper_as_randn(crowd):
    """The hrnet rule's upper preference is Phi(0.5) = 0.691; the old uniform < 0.5 rule
    (0.5) is a different distribution, which the comparison sees."""
    c, s, b, k = crowd
    a = load_config(None).aug
    assert a.half_body_upper_prob == pytest.approx(0.5 * math.erfc(-0.5 / math.sqrt(2)))
    y = reference("hrnet", a, c, s, b, k)
    import dataclasses
    x = run_ours(dataclasses.replace(a, half_body_upper_prob=0.5), c, s, b, k)
    assert any(b.startswith(("upper", "lower")) for b in compare(x, y, crowd))


def test_truncnorm_and_ppf():
    sp = pytest.importorskip("scipy.stats")
    p = np.linspace(1e-6, 1 - 1e-6, 2001)
    ours_ppf = np.array([normal_ppf(v) for v in p])
    assert np.max(np.abs(ours_ppf - sp.norm.ppf(p))) < 1e-9
    ours_tn = np.array([truncnorm_unit(v) for v in p])
    assert np.max(np.abs(ours_tn - sp.truncnorm(-1, 1).ppf(p))) < 1e-9


def test_recipe_defaults_and_overrides():
    a = load_config(None, ["aug.recipe=mmpose", "aug.rot_factor=60"]).aug
    assert (a.rot_factor, a.scale_factor, a.shift_factor, a.shift_prob) == (60, 0.5, 0.16, 0.3)
    assert (a.half_body_upper_prob, a.half_body_min_upper, a.half_body_min_lower) == (0.7, 2, 3)
    h = load_config(None).aug
    assert (h.recipe, h.rot_factor, h.scale_factor, h.shift_factor) == ("hrnet", 45, 0.35, 0)
    assert AugParams.of(a).recipe == RECIPE_MMPOSE and AugParams.of(h).recipe == RECIPE_HRNET


def test_mmpose_recipe_through_the_loader(tmp_path):
    """aug.recipe=mmpose reaches the DALI crop operator: its crops' matrices equal the
    reference loader's (the same draw_box on the same draws, the shift always on so that
    the box before the aspect fix reaches it), sample by sample, and differ from the hrnet
    recipe's."""
    pytest.importorskip("nvidia.dali")
    from dali_pose import build_loader
    from dali_pose.datasets import load_index
    from dali_pose.tools.reference import build_reference_loader
    from dali_pose.tools.synthetic import generate

    p = generate(str(tmp_path), seed=0, num_train=4, num_val=1)
    over = [f"data.{k}={p[k]}" for k in ("train_ann", "train_images")] + [
        "loader.batch_size=4", "loader.drop_last=false", "aug.half_body_prob=1"]

    def matrices(loader):
        return {int(r): b["matrix"][i].numpy() for b in loader
                for i, r in enumerate(b["row"].tolist())}

    cfg = load_config(None, over + ["aug.recipe=mmpose", "aug.shift_prob=1"])
    index = load_index(cfg, "train")
    assert (np.abs(index.box_size - index.scale) > 1).any()  # the aspect fix changed boxes
    ref = matrices(build_reference_loader(cfg, "train", num_workers=0, index=index))
    dali = matrices(build_loader(cfg, "train", device="cpu", index=index))
    assert set(ref) == set(dali) == set(range(len(index)))
    for r in ref:
        np.testing.assert_allclose(ref[r], dali[r], rtol=1e-6, atol=1e-4)
    hrnet = load_config(None, over)
    other = matrices(build_reference_loader(hrnet, "train", num_workers=0, index=index))
    assert any(not np.allclose(other[r], ref[r]) for r in ref)
