"""Independent oracles: each function below against its rule written out here in plain NumPy
(and pycocotools), calling nothing of the function under test.

The consistency checks elsewhere (``test_bench.py``: DALI vs the reference loader;
``test_evaluate_model.py``: ``evaluate.py`` vs ``predict`` / ``score``) share these functions
on both sides; these tests do not.

    geometry.udp_matrix / msra_matrix   composed from elementary matrices (UDP paper's rule)
    geometry.transform_keypoints        homogeneous multiply, joints gathered through the
                                        flip pairs
    evaluation.inference.predict        flip-test average, DARK step, stride, inverse matrix
    evaluation.inference.score          rescoring, greedy OKS-NMS, COCOeval run here

    geometry.draw_box (augment)         HRNet's and mmpose's recipes, draw by draw, half
                                        body included

(also ``test_geometry.py::test_augment_follows_hrnets_rule_draw_by_draw``, and
``test_recipes.py`` in distribution; the draws:
``test_draws.py::test_draws_follow_the_documented_generator``.)
"""
import contextlib
import dataclasses
import io
import json
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO as CocoApi
from pycocotools.cocoeval import COCOeval

from dali_pose.config import load_config
from dali_pose.datasets import COCO, CROWDPOSE, MPII, load_coco_style
from dali_pose.evaluation.inference import Predictions, predict, score
from dali_pose.geometry import msra_matrix, transform_keypoints, udp_matrix


# ------------------------------------------------------------------------------------------
# geometry
# ------------------------------------------------------------------------------------------

def _translate(tx, ty):
    return np.array([[1.0, 0, tx], [0, 1.0, ty], [0, 0, 1.0]])


def _scale(kx, ky):
    return np.diag([kx, ky, 1.0])


def _rotate(deg):
    """Rotation of the content by ``deg`` counter-clockwise on screen (y points down), which
    in (x, y) image coordinates is the matrix [[cos, -sin], [sin, cos]]."""
    t = math.radians(deg)
    return np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0],
                     [0, 0, 1.0]])


def crop_matrix_rule(c, s, rot, out, flip, unit_lengths):
    """Source px -> crop px, composed step by step: move the box centre to the origin, rotate
    about it, scale the box (s px) onto the crop's span, move the origin to the span's
    middle; the flip mirrors the crop's span (x -> span - x). UDP (``unit_lengths``): the
    span of a crop of ``out`` pixels with centres on integers is out - 1 (first to last pixel
    centre); HRNet's classic crop spans ``out``."""
    span = np.asarray(out, float) - (1.0 if unit_lengths else 0.0)
    m = (_translate(span[0] / 2, span[1] / 2) @ _scale(span[0] / s[0], span[1] / s[1])
         @ _rotate(rot) @ _translate(-c[0], -c[1]))
    if flip:
        m = np.array([[-1.0, 0, span[0]], [0, 1.0, 0], [0, 0, 1.0]]) @ m
    return m[:2]


@pytest.mark.parametrize("unit_lengths", [True, False], ids=["udp", "msra"])
def test_crop_matrix_against_its_composition(unit_lengths):
    fn = udp_matrix if unit_lengths else msra_matrix
    rng = np.random.default_rng(11)
    for _ in range(300):
        c = rng.uniform(-50, 800, 2)
        s = rng.uniform(5, 900, 2)
        rot = rng.uniform(-180, 180)
        out = (int(rng.integers(8, 512)), int(rng.integers(8, 512)))
        flip = bool(rng.random() < 0.5)
        got = fn(c[0], c[1], s[0], s[1], rot, out[0], out[1], flip)
        want = crop_matrix_rule(c, s, rot, out, flip, unit_lengths)
        # float64 round-off of entries up to ~1e4 (the translations): measured max 2.7e-12
        # over the 300 cases, 3.7x margin
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-11)
    # the pixel-centre convention, stated as points: UDP's box corners land on the first and
    # last pixel centres, 0 and out - 1 (unrotated, unflipped)
    m = udp_matrix(300.0, 200.0, 120.0, 160.0, 0.0, 192, 256, False)
    corners = np.array([[240.0, 120.0, 1.0], [360.0, 280.0, 1.0]])
    np.testing.assert_allclose(corners @ m.T, [[0, 0], [191, 255]], rtol=0, atol=1e-12)


@pytest.mark.parametrize("info", [COCO, CROWDPOSE, MPII], ids=lambda i: i.name)
def test_transform_keypoints_against_homogeneous_multiply(info):
    rng = np.random.default_rng(12)
    k = info.num_joints
    fi = np.asarray(info.flip_index)
    for _ in range(100):
        flip = bool(rng.random() < 0.5)
        m = udp_matrix(*rng.uniform(100, 500, 2), *rng.uniform(50, 400, 2),
                       rng.uniform(-90, 90), 192, 256, flip)
        src = np.c_[rng.uniform(0, 640, (k, 2)), rng.choice([0, 1, 2], k)]
        out = np.full((k, 3), np.nan)
        transform_keypoints(m, src, flip, info.flip_index, out)
        # crop joint j of a flipped crop is source joint fi[j] (the mirror swaps the sides)
        take = fi if flip else np.arange(k)
        moved = np.c_[src[take, :2], np.ones(k)] @ m.T
        labelled = src[take, 2] > 0
        want = np.where(labelled[:, None], np.c_[moved, src[take, 2]], 0.0)
        # float64 round-off: measured max 4.5e-13 px over the 100 cases, 4.4x margin
        np.testing.assert_allclose(out, want, rtol=0, atol=2e-12)


UPPER = np.arange(17) < 11  # COCO: nose .. wrists


def _box_by_the_rule(recipe, c, s, b, kps, u, n, p):
    """One training crop from its draws, written out from HRNet's ``JointsDataset`` and
    mmpose 1.x's ``RandomHalfBody`` + ``RandomBBoxTransform`` + ``TopdownAffine`` (scipy for
    the truncated normal); the draw layout of ``dali_pose.draws``: u = flip, rotation gate,
    half-body gate, upper-or-lower, shift x, shift y, shift gate; n = scale, rotation.
    ``s``: the padded box aspect-fixed (HRNet's, as loaded), ``b``: the same before the
    aspect fix (mmpose's ``bbox_scale`` from ``GetBBoxCenterScale``)."""
    from scipy.stats import norm, truncnorm

    vis = kps[:, 2] > 0
    n_up, n_lo = int((vis & UPPER).sum()), int((vis & ~UPPER).sum())
    half = 0
    if n_up + n_lo > p["min_joints"] and u[2] < p["half_prob"]:
        prefer = u[3] < p["upper_prob"]
        if recipe == "hrnet":
            upper = (prefer and n_up >= 3) or n_lo < 3
            half = (1 if upper else 2) if (n_up if upper else n_lo) >= 2 else 0
        elif not (n_up < 2 and n_lo < 3):
            half = 1 if n_lo < 3 else 2 if n_up < 2 else 1 if prefer else 2
    def fix(w, h):
        return (w, w / ASPECT) if w > ASPECT * h else (h * ASPECT, h)

    cx, cy, sw, sh = c[0], c[1], s[0], s[1]
    bw, bh = b  # mmpose: bbox_scale, aspect-fixed only at the end (TopdownAffine)
    if half:
        sel = vis & (UPPER if half == 1 else ~UPPER)
        xy = kps[sel, :2]
        (cx, cy), (w, h) = xy.mean(0), xy.max(0) - xy.min(0)
        bw, bh = w * 1.5, h * 1.5
        sw, sh = fix(w * 1.5, h * 1.5)
    rot = 0.0
    if recipe == "hrnet":
        k = min(max(n[0] * p["sf"] + 1, 1 - p["sf"]), 1 + p["sf"])
        sw, sh = sw * k, sh * k
        if u[1] < p["rot_prob"]:
            rot = min(max(n[1] * p["rf"], -2 * p["rf"]), 2 * p["rf"])
        cx += (2 * u[4] - 1) * p["shift"] * sw
        cy += (2 * u[5] - 1) * p["shift"] * sh
    else:
        t = lambda q: truncnorm.ppf(q, -1, 1)  # noqa: E731
        if u[6] < p["shift_prob"]:
            cx, cy = cx + t(u[4]) * p["shift"] * bw, cy + t(u[5]) * p["shift"] * bh
        k = 1 + p["sf"] * t(norm.cdf(n[0]))
        sw, sh = fix(bw * k, bh * k)
        if u[1] < p["rot_prob"]:
            rot = p["rf"] * t(norm.cdf(n[1]))
    return np.array([cx, cy, sw, sh, rot, u[0] < p["flip_prob"], half])


ASPECT = 0.75
RECIPES = {
    "hrnet": dict(flip_prob=0.5, rot_prob=0.6, rf=45.0, sf=0.35, half_prob=0.5, min_joints=8,
                  shift=0.1, shift_prob=1.0, upper_prob=0.6914624612740131, min_upper=3,
                  min_lower=3),
    "mmpose": dict(flip_prob=0.5, rot_prob=0.6, rf=80.0, sf=0.5, half_prob=0.5, min_joints=8,
                   shift=0.16, shift_prob=0.3, upper_prob=0.7, min_upper=2, min_lower=3),
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_training_crop_follows_its_recipe_draw_by_draw(recipe):
    """geometry.draw_box (which augment wraps) against the recipe's rule, one draw at a time,
    half body included: a swapped draw or a wrong half-body box fails here, where the
    distribution tests (test_recipes.py) cannot see it."""
    from dali_pose.geometry import RECIPE_HRNET, RECIPE_MMPOSE, draw_box

    p = RECIPES[recipe]
    rng = np.random.default_rng(13)
    halves = []
    for _ in range(400):
        kps = np.c_[rng.uniform(100, 400, (17, 2)), rng.random(17) < rng.uniform(0.2, 1)]
        kps[:, 1] += np.where(UPPER, -60, 60)
        c, b = rng.uniform(150, 350, 2), rng.uniform(100, 400, 2)
        s = np.array((b[0], b[0] / ASPECT) if b[0] > ASPECT * b[1] else (b[1] * ASPECT, b[1]))
        u, n = rng.random(7), rng.standard_normal(2) * 1.5
        got = draw_box(c, s, b, kps, u, n, UPPER, p["flip_prob"], p["rot_prob"], p["rf"],
                       p["sf"], p["half_prob"], p["min_joints"], p["shift"], ASPECT,
                       p["shift_prob"], p["upper_prob"], p["min_upper"], p["min_lower"], 1.5,
                       RECIPE_HRNET if recipe == "hrnet" else RECIPE_MMPOSE)
        want = _box_by_the_rule(recipe, c, s, b, kps, u, n, p)
        # float64 both, measured max over the 400 crops: hrnet 1.1e-13 px (the half-body
        # box padded and aspect-fixed in the other order), mmpose 2.3e-13 px / degrees
        # (scipy's truncated normal vs the library's inverse CDF, the aspect fix last, as
        # mmpose's TopdownAffine); 4.4x margin
        np.testing.assert_allclose(np.array(got, float), want, rtol=0, atol=1e-12)
        halves.append(got[6])
    assert {0, 1, 2} <= set(halves)  # every branch taken (276 / 86-88 / 36-38 here)


# ------------------------------------------------------------------------------------------
# predict: a model that answers known heatmaps, and the decoding rule written out
# ------------------------------------------------------------------------------------------

W, H, SIGMA = 48, 64, 2.0  # the default config's heatmap [w, h] and sigma
IN_W, IN_H = 192, 256


def _gauss(mu, sigma=SIGMA):
    """(K, H, W) Gaussians at the heatmap positions mu (K, 2)."""
    py, px = np.mgrid[0:H, 0:W]
    return np.exp(-((px[None] - mu[:, 0, None, None]) ** 2
                    + (py[None] - mu[:, 1, None, None]) ** 2) / (2 * sigma ** 2))


def _dark_rule(hm, sigma=SIGMA):
    """DARK for interior peaks (the codec's rule, module docstring of dali_pose.codecs):
    argmax; blur with the unnormalised Gaussian of sigma, floor(3 sigma) taps each side, zero
    padding; log; gradient and Hessian by central differences at the argmax (the mixed one
    from the four diagonal neighbours); one Newton step. Returns (K, 2) x, y and the score
    (the unblurred maximum)."""
    r = int(math.floor(3 * sigma))
    g = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma ** 2))
    out, scores = [], []
    for m in hm.astype(np.float64):
        b = np.apply_along_axis(lambda v: np.convolve(v, g, "same"), 0, m)
        b = np.apply_along_axis(lambda v: np.convolve(v, g, "same"), 1, b)
        y0, x0 = np.unravel_index(np.argmax(m), m.shape)
        f = np.log(np.maximum(b[y0 - 1:y0 + 2, x0 - 1:x0 + 2], 1e-10))
        grad = np.array([f[1, 2] - f[1, 0], f[2, 1] - f[0, 1]]) / 2
        hxy = (f[2, 2] - f[2, 0] - f[0, 2] + f[0, 0]) / 4
        hess = np.array([[f[1, 2] - 2 * f[1, 1] + f[1, 0], hxy],
                         [hxy, f[2, 1] - 2 * f[1, 1] + f[0, 1]]])
        out.append(np.array([x0, y0]) - np.linalg.solve(hess, grad))
        scores.append(m[y0, x0])
    return np.array(out), np.array(scores)


class _Answering(torch.nn.Module):
    """A "model" whose output for an image is the heatmap stored under the image's code
    (its pixel [0, 0, 0]); float images pass ``normalize_images`` unchanged."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.from_numpy(table)

    def forward(self, x):
        return self.table[x[:, 0, 0, 0].long()]


class _Loader:
    def __init__(self, index, batches):
        self.index, self.info, self.batches = index, index.info, batches

    def __iter__(self):
        return iter(self.batches)


def test_predict_against_the_decoding_rule():
    """Six people in two batches (rows shuffled, the last batch padded with a row marked not
    valid whose answer is garbage): each plain output has Gaussians at a, each flipped output
    the mirror of Gaussians at b with the joints swapped. The rule: flip back (mirror the
    columns, gather the joints through the flip pairs), average, DARK, times the UDP stride,
    through the inverse of the crop matrix."""
    rng = np.random.default_rng(21)
    n, k = 6, COCO.num_joints
    fi = np.asarray(COCO.flip_index)
    index = type("Index", (), {"info": COCO, "__len__": lambda self: n})()
    # peaks at least 8 px inside the map: the blur keeps its full radius (6 px) around the
    # 3x3 stencil, where the codec's border rule (a narrower blur) does not apply
    a = np.stack([rng.uniform(10, W - 11, (k,)), rng.uniform(10, H - 11, (k,))], -1)[None] \
        + rng.uniform(-1, 1, (n, k, 2))
    b = a + rng.uniform(-0.6, 0.6, (n, k, 2))
    plain = np.stack([_gauss(a[r]) for r in range(n)]).astype(np.float32)
    # the flipped crop's joint fi[j] sits where joint j sits, mirrored: x -> W - 1 - x
    flipped = np.stack([_gauss(np.c_[W - 1 - b[r, fi, 0], b[r, fi, 1]])
                        for r in range(n)]).astype(np.float32)
    garbage = rng.uniform(0, 1, (1, k, H, W)).astype(np.float32)
    table = np.concatenate([plain, flipped, garbage])  # codes: r, n + r, 2n
    mats = np.stack([udp_matrix(*rng.uniform(100, 500, 2), *rng.uniform(50, 300, 2),
                                rng.uniform(-60, 60), IN_W, IN_H, False) for _ in range(n)])

    def batch(rows, pad):
        codes = list(rows) + [2 * n] * pad
        img = torch.zeros(len(codes), 3, 4, 4)
        img[:, 0, 0, 0] = torch.tensor(codes, dtype=torch.float32)
        img_f = img.clone()
        img_f[:len(rows), 0, 0, 0] += n
        rows_all = list(rows) + [rows[0]] * pad
        return {"image": img, "image_flipped": img_f,
                "matrix": torch.from_numpy(mats[rows_all]).float(),
                "row": torch.tensor(rows_all), "valid": torch.tensor([True] * len(rows)
                                                                     + [False] * pad)}

    loader = _Loader(index, [batch([3, 1, 5, 0], 0), batch([2, 4], 2)])
    cfg = load_config(None, [])
    assert (cfg.model.codec, cfg.model.target, cfg.model.sigma) == ("udp", "gaussian", SIGMA)
    got = predict(cfg, _Answering(table), torch.device("cpu"), loader=loader)
    assert got.done.all() and got.keypoints.shape == (n, k, 3)

    avg = 0.5 * (plain + flipped[:, fi, :, ::-1])
    stride = np.array([(IN_W - 1) / (W - 1), (IN_H - 1) / (H - 1)])
    for r in range(n):
        hm_xy, sc = _dark_rule(avg[r])
        crop = hm_xy * stride
        m3 = np.vstack([mats[r].astype(np.float32).astype(np.float64), [0, 0, 1]])
        src = (np.c_[crop, np.ones(k)] @ np.linalg.inv(m3).T)[:, :2]
        # the rule and predict agree to 1.8e-15 heatmap px; predict returns float32 (half a
        # float32 step at < 1024 px: 3.1e-5 px): measured max 1.5e-5 source px, 4x margin
        np.testing.assert_allclose(got.keypoints[r, :, :2], src, rtol=0, atol=6e-5)
        np.testing.assert_array_equal(got.keypoints[r, :, 2], sc.astype(np.float32))
        # and the known peak: two equal Gaussians < 1 px apart peak halfway between them;
        # DARK finds it to measured max 5.1e-6 heatmap px (the log of their sum is not
        # quadratic); 4x margin
        np.testing.assert_allclose(hm_xy, (a[r] + b[r]) / 2, rtol=0, atol=2e-5)

    # max_batches: the rows of the first batch only
    part = predict(cfg, _Answering(table), torch.device("cpu"), max_batches=1,
                   loader=_Loader(index, loader.batches))
    assert part.done.tolist() == [True, True, False, True, False, True]
    assert np.isnan(part.keypoints[~part.done]).all()


# ------------------------------------------------------------------------------------------
# score: COCO results by the rule, scored by pycocotools here
# ------------------------------------------------------------------------------------------

def _gt(rng, n_images=4, per_image=3):
    images, anns = [], []
    for i in range(n_images):
        images.append({"id": 10 + i, "file_name": f"{i}.jpg", "width": 640, "height": 480})
        for _ in range(per_image):
            w, h = rng.uniform(60, 200), rng.uniform(120, 300)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            kp = np.c_[rng.uniform(x, x + w, 17), rng.uniform(y, y + h, 17),
                       rng.choice([0, 1, 2], 17, p=[0.2, 0.3, 0.5])]
            kp[kp[:, 2] == 0, :2] = 0
            anns.append({"id": len(anns) + 1, "image_id": 10 + i, "category_id": 1,
                         "iscrowd": 0, "bbox": [x, y, w, h], "area": w * h * 0.6,
                         "keypoints": kp.round(2).ravel().tolist(),
                         "num_keypoints": int((kp[:, 2] > 0).sum())})
    return {"images": images, "annotations": anns, "categories": [
        {"id": 1, "name": "person", "keypoints": list(COCO.joints), "skeleton": []}]}


def _results_by_the_rule(rows, image_ids, kps, box_scores, areas, sigmas):
    """HRNet's evaluation, written out: score = box score x the mean of the joint scores
    above 0.2; per image, highest score first, drop a pose whose OKS (mean over joints of
    exp(-d^2 / (2 * ((a_i + a_j) / 2 + eps) * (2 sigma)^2))) with a kept one is above 0.9."""
    res = []
    for iid in sorted(set(image_ids[rows].tolist())):
        mine = [r for r in rows if image_ids[r] == iid]
        sc = {}
        for r in mine:
            s = kps[r, :, 2]
            sc[r] = box_scores[r] * (s[s > 0.2].mean() if (s > 0.2).any() else 0.0)
        kept = []
        for r in sorted(mine, key=lambda q: -sc[q]):
            ok = True
            for q in kept:
                d2 = ((kps[r, :, :2] - kps[q, :, :2]) ** 2).sum(1)
                scale = (areas[r] + areas[q]) / 2 + np.spacing(1)
                if np.mean(np.exp(-d2 / (2 * scale * (2 * np.asarray(sigmas)) ** 2))) > 0.9:
                    ok = False
            if ok:
                kept.append(r)
        res += [{"image_id": int(iid), "category_id": 1,
                 "keypoints": kps[r].ravel().tolist(), "score": float(sc[r])} for r in kept]
    return res


def test_score_against_cocoeval_run_here(tmp_path):
    rng = np.random.default_rng(31)
    gt = _gt(rng)
    for img in gt["images"]:
        (tmp_path / img["file_name"]).write_bytes(b"")
    ann = tmp_path / "gt.json"
    ann.write_text(json.dumps(gt))
    index = load_coco_style(str(ann), str(tmp_path), COCO, 0.75, log=None)
    n = len(index)
    assert n == 12
    kps = index.keypoints.astype(np.float64).copy()
    size = np.sqrt(index.scale[:, 0] * index.scale[:, 1])[:, None, None]
    kps[:, :, :2] += rng.normal(0, 1, (n, 17, 2)) * size * rng.uniform(0.005, 0.04, (n, 1, 1))
    kps[:, :, 2] = rng.uniform(0, 1, (n, 17))
    # detector-like box scores (ground-truth boxes score 1), so that rescoring uses them
    index = dataclasses.replace(index, score=rng.uniform(0.3, 1.0, n).astype(np.float32))
    assert (index.image_id[:2] == 10).all() and (index.image_id[3:6] == 11).all()
    kps[1, :, :2] = kps[0, :, :2] + 0.5  # a near-duplicate of row 0 (same image): NMS'd
    kps[1, :, 2] = kps[0, :, 2]
    index.score[1] = index.score[0] * 0.9
    sig2 = (2 * np.asarray(COCO.sigmas)) ** 2

    def oks_of_shift(d, area):  # all joints moved by d px
        return np.mean(np.exp(-d * d / (2 * area * sig2)))

    def shift_for(oks, i, j):  # on the crop boxes' areas, the rule's
        lo, hi, area = 0.0, 1000.0, (index.scale[i].prod() + index.scale[j].prod()) / 2
        for _ in range(60):
            d = (lo + hi) / 2
            lo, hi = (d, hi) if oks_of_shift(d, area) > oks else (lo, d)
        return d

    # row 4: row 3 moved so that the OKS is 0.93 (suppressed) while on the annotations'
    # areas it is < 0.9 (kept); row 2: row 0 moved to OKS 0.7 (kept at 0.9, not at 0.5)
    d = shift_for(0.93, 3, 4)
    assert oks_of_shift(d, (index.area[3] + index.area[4]) / 2) < 0.9
    for i, j, d in ((3, 4, d), (0, 2, shift_for(0.7, 0, 2))):
        kps[j, :, :2] = kps[i, :, :2] + [d, 0.0]
        kps[j, :, 2] = kps[i, :, 2]
        index.score[j] = index.score[i] * 0.9
    done = np.ones(n, bool)
    done[7] = False  # not predicted: counts as missed
    preds = Predictions(index, np.where(done[:, None, None], kps, np.nan).astype(np.float32),
                        done)
    cfg = load_config(None, ["loader.flip_test=true"])
    got = score(cfg, preds, str(tmp_path / "out"), ann=str(ann), log=lambda s: None)

    rows = np.flatnonzero(done)
    k32 = preds.keypoints.astype(np.float64)
    want = _results_by_the_rule(rows, index.image_id, k32, index.score,
                                index.scale[:, 0] * index.scale[:, 1], COCO.sigmas)
    assert len(want) == n - 3  # the two suppressed and the missing one
    written = json.loads((tmp_path / "out" / "val_results.json").read_text())
    assert [r["image_id"] for r in written] == [r["image_id"] for r in want]
    assert [r["score"] for r in written] == pytest.approx([r["score"] for r in want],
                                                          rel=1e-12)
    np.testing.assert_allclose([r["keypoints"] for r in written],
                               [r["keypoints"] for r in want], rtol=0, atol=0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = CocoApi(str(ann))
        e = COCOeval(coco, coco.loadRes(want), "keypoints")
        e.evaluate()
        e.accumulate()
        e.summarize()
    keys = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")
    assert [got[k] for k in keys] == pytest.approx([float(v) for v in e.stats], abs=1e-12)
    # neither perfect nor empty (0.41 here): the comparison means something
    assert 0.2 < got["AP"] < 0.95
