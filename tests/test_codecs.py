"""encode/decode round trips (the proof that targets, geometry and decoding agree), flip test.

Round trip: random person boxes, scales, rotations and flips -> ``geometry.udp_matrix`` and
``geometry.transform_keypoints`` -> ``Codec.encode`` (the CPU target kernels) -> ``decode`` of
the targets as if they were perfect predictions -> source pixels. The error is measured in crop
pixels (``|A (pred - src)|`` with A the linear part of the source -> crop matrix).

Excluded keypoints: only those with target weight 0, i.e. unlabelled (v = 0) or with the
nearest heatmap pixel off the map (mu outside [-0.5, w - 0.5) x [-0.5, h - 0.5)). Keypoints
right at the map border are kept: the decoder handles them (see ``codecs.dark_refine``).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dali_pose import geometry as G
from dali_pose.codecs import build_codec, decode, udp_stride
from dali_pose.config import Config, ModelConfig
from dali_pose.datasets import COCO

FI = COCO.flip_index
K = COCO.num_joints

CFGS = {
    "gaussian": ModelConfig(),
    "combined": ModelConfig(target="combined"),
    "gaussian_s3_384": ModelConfig(input_size=(288, 384), heatmap_size=(72, 96), sigma=3.0),
    "combined_384": ModelConfig(input_size=(288, 384), heatmap_size=(72, 96), target="combined"),
}
# Round-trip error bound, crop pixels: the measured maximum over the configs of each codec
# (gaussian 3.2e-3, combined 2.9e-4; 160 samples, seeded, see test_round_trip's print) with a
# margin of ~3x (gaussian: DARK's Taylor step is not exact) and ~3.5x (combined)
LIMIT = {"gaussian": 0.01, "combined": 1e-3}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_samples(m: ModelConfig, n: int, seed: int, flip_prob=0.5, rot_prob=0.6):
    """Random source keypoints, crop matrices and crop keypoints (geometry's functions).

    Returns (mats, crops, srcs, flips, boxes); boxes rows are (cx, cy, sw, sh, rot).
    """
    rng = np.random.default_rng(seed)
    iw, ih = m.input_size
    mats, crops, srcs, flips, boxes = [], [], [], [], []
    for _ in range(n):
        cx, cy = rng.uniform(50, 600, 2)
        sw = rng.uniform(30, 500)
        sh = sw * ih / iw * rng.uniform(0.9, 1.1)
        rot = rng.uniform(-90, 90) if rng.random() < rot_prob else 0.0
        flip = bool(rng.random() < flip_prob)
        m_ = G.udp_matrix(cx, cy, sw, sh, rot, iw, ih, flip)
        src = np.zeros((K, 3), np.float64)
        src[:, 0] = cx + rng.uniform(-0.62, 0.62, K) * sw  # some land off the crop
        src[:, 1] = cy + rng.uniform(-0.62, 0.62, K) * sh
        src[:, 2] = rng.choice([0, 1, 2], K, p=[0.1, 0.3, 0.6])
        crop = np.zeros((K, 3), np.float64)
        G.transform_keypoints(m_, src, flip, FI, crop)
        mats.append(m_)
        crops.append(crop.astype(np.float32))
        srcs.append(src)
        flips.append(flip)
        boxes.append((cx, cy, sw, sh, rot))
    return np.array(mats), np.array(crops), np.array(srcs), np.array(flips), np.array(boxes)


def crop_errors(pred, mats, srcs, flips, weight):
    """Per-keypoint error in crop px for the kept (weight > 0) keypoints."""
    errs = []
    for i in range(len(mats)):
        order = FI if flips[i] else np.arange(K)  # crop channel j is source joint FI[j]
        d = pred[i, :, :2].astype(np.float64) - srcs[i][order, :2]
        e = np.linalg.norm(d @ mats[i][:, :2].T, axis=1)
        errs.append(e[weight[i] > 0])
    return np.concatenate(errs)


@pytest.mark.parametrize("name", sorted(CFGS))
def test_round_trip(name, record_property):
    m = CFGS[name]
    mats, crops, srcs, flips, _ = make_samples(m, 160, seed=sorted(CFGS).index(name))
    target, weight = build_codec(m).encode(crops)
    assert target.shape == (160, K if m.target == "gaussian" else 3 * K, m.heatmap_size[1],
                            m.heatmap_size[0])
    pred = decode(torch.from_numpy(target), {"matrix": torch.from_numpy(mats)}, m)
    assert pred.shape == (160, K, 3) and pred.dtype == torch.float32
    err = crop_errors(pred.numpy(), mats, srcs, flips, weight)
    # the test must exercise keypoints at the border of the map too
    sx, sy = udp_stride(m.input_size, m.heatmap_size)
    mu = crops[..., :2] / np.array([sx, sy])
    w, h = m.heatmap_size
    near = (np.minimum.reduce([mu[..., 0] + 0.5, w - 0.5 - mu[..., 0], mu[..., 1] + 0.5,
                               h - 0.5 - mu[..., 1]]) < 1.0) & (weight > 0)
    assert near.sum() > 50 and len(err) > 1500
    print(f"\nround trip {name}: {len(err)} keypoints, max {err.max():.2e} "
          f"mean {err.mean():.2e} crop px ({near.sum()} within 1 px of the map border)")
    record_property("max_crop_px_error", float(err.max()))
    assert err.max() < LIMIT[m.target]
    # perfect targets score (close to) 1 at visible joints
    score = pred.numpy()[..., 2][weight > 0]
    assert score.min() > (0.88 if m.target == "gaussian" else 0.999)


@pytest.mark.parametrize("name", ["gaussian", "combined"])
def test_flip_test_round_trip(name):
    """decode(encode(kps), output_flipped=encode(flipped crop)) == decode(encode(kps))."""
    m = CFGS[name]
    mats, crops, srcs, _, boxes = make_samples(m, 64, seed=5, flip_prob=0.0)
    iw, ih = m.input_size
    crops_f = np.zeros_like(crops)
    for i, (cx, cy, sw, sh, rot) in enumerate(boxes):
        # the flipped copy of the same crop (same box, flip=True), as the val pipeline makes it
        mf = G.udp_matrix(cx, cy, sw, sh, rot, iw, ih, True)
        out = np.zeros((K, 3), np.float64)
        G.transform_keypoints(mf, srcs[i], True, FI, out)
        crops_f[i] = out
    t, wt = build_codec(m).encode(crops)
    tf, wtf = build_codec(m).encode(crops_f)
    batch = {"matrix": mats}
    plain = decode(t, batch, m)
    both = decode(t, batch, m, output_flipped=tf, flip_index=FI)
    assert isinstance(both, np.ndarray)
    keep = (wt > 0) & (wtf[:, FI] > 0)
    assert keep.sum() > 500
    diff = np.einsum("nij,nkj->nki", mats[:, :, :2], both[..., :2] - plain[..., :2])
    d = np.linalg.norm(diff, axis=-1)[keep]
    print(f"\nflip test {name}: max |flip-averaged - plain| = {d.max():.2e} crop px")
    # measured max 1.44e-4 (gaussian), 9.4e-5 (combined) crop px: margins 3.5x, 5.3x
    assert d.max() < 5e-4
    # scores: float32 rounding of the average, measured max 1.2e-7; 4x margin
    np.testing.assert_allclose(both[..., 2][keep], plain[..., 2][keep], rtol=0, atol=5e-7)
    # the flipped-back targets are the plain targets: no shift needed with UDP
    back = build_codec(m).flip_back(tf, FI)
    c = 1 if m.target == "gaussian" else 3
    n, _, h, w = t.shape
    back = back.reshape(n, K, c, h, w)[keep]
    ref = t.reshape(n, K, c, h, w)[keep]
    if m.target == "combined":  # a pixel right on a disk's rim may flip by float rounding
        inside = (back[:, 0] > 0) & (ref[:, 0] > 0)
        assert inside.sum() >= 0.99 * (ref[:, 0] > 0).sum()
        back, ref = back.transpose(0, 2, 3, 1)[inside], ref.transpose(0, 2, 3, 1)[inside]
    # float32 rounding of the mirrored keypoints: measured max 6.0e-7; 3.4x margin
    np.testing.assert_allclose(back, ref, rtol=0, atol=2e-6)


def test_flip_back_channels_and_offsets():
    n, h, w = 2, 4, 5
    x = torch.arange(n * 3 * K * h * w, dtype=torch.float32).reshape(n, 3 * K, h, w)
    b = build_codec(ModelConfig(target="combined")).flip_back(x, FI).reshape(n, K, 3, h, w)
    xg = x.reshape(n, K, 3, h, w)
    for j in (0, 1, 2, 16):
        s = FI[j]
        assert torch.equal(b[:, j, 0], xg[:, s, 0].flip(-1))
        assert torch.equal(b[:, j, 1], -xg[:, s, 1].flip(-1))
        assert torch.equal(b[:, j, 2], xg[:, s, 2].flip(-1))
    g = build_codec(ModelConfig()).flip_back(x[:, :K], FI)
    assert torch.equal(g[:, 1], x[:, 2].flip(-1)) and torch.equal(g[:, 0], x[:, 0].flip(-1))
    assert isinstance(build_codec(ModelConfig()).flip_back(x[:, :K].numpy(), FI), np.ndarray)


def test_heatmap_to_source_inverts_the_matrix():
    m = CFGS["gaussian"]
    rng = np.random.default_rng(0)
    mats = np.stack([G.udp_matrix(300.0, 200.0, 120.0, 160.0, rot, 192, 256, fl)
                     for rot, fl in [(0.0, False), (30.0, True), (-75.0, False)]])
    src = rng.uniform(100, 400, (3, 5, 2))
    crop = np.einsum("nij,nkj->nki", mats[:, :, :2], src) + mats[:, None, :, 2]
    sx, sy = udp_stride(m.input_size, m.heatmap_size)
    back = build_codec(m).to_source(torch.from_numpy(crop / [sx, sy]), mats)
    np.testing.assert_allclose(back.numpy(), src, rtol=0, atol=1e-9)


def test_decode_inputs_and_degenerate_maps():
    m = CFGS["gaussian"]
    mats, crops, *_ = make_samples(m, 4, seed=1)
    t, _ = build_codec(m).encode(crops)
    a = decode(t, {"matrix": mats}, Config(model=m))  # whole Config works too
    b = decode(torch.from_numpy(t).half(), {"matrix": torch.from_numpy(mats).float()}, m)
    assert isinstance(a, np.ndarray) and b.dtype == torch.float32
    # fp16 maps: measured max 6.2e-3 source px from the float32 maps' result; 4x margin
    assert np.abs(a[..., :2] - b.numpy()[..., :2]).max() < 0.025
    # empty / flat / negative maps: finite output at the argmax, no step
    for fill in (0.0, -1.0):
        z = torch.full((2, K, 64, 48), fill)
        r = decode(z, {"matrix": mats[:2]}, m)
        assert torch.isfinite(r).all()
        # float32 output of a float64 back-projection: measured max 5.7e-6 px; 4.4x margin
        np.testing.assert_allclose(r[..., :2].numpy(),
                                   build_codec(m).to_source(torch.zeros(2, K, 2), mats[:2]).numpy(),
                                   rtol=0, atol=2.5e-5)
    with pytest.raises(ValueError, match="output_flipped needs flip_index"):
        decode(t, {"matrix": mats}, m, output_flipped=t)


def test_noisy_prediction_stays_close():
    """Not a proof, a sanity check: mild noise on perfect maps moves points little."""
    m = CFGS["gaussian"]
    mats, crops, srcs, flips, _ = make_samples(m, 64, seed=9)
    t, wt = build_codec(m).encode(crops)
    rng = np.random.default_rng(2)
    noisy = t + rng.normal(0, 0.02, t.shape).astype(np.float32)
    err = crop_errors(decode(noisy, {"matrix": mats}, m), mats, srcs, flips, wt)
    # seeded: measured median 0.084, max 2.55 crop px; margins 3x and 1.6x
    assert np.median(err) < 0.25 and err.max() < 4.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["gaussian", "combined"])
def test_decode_on_cuda_matches_cpu(name):  # pragma: no cover - needs a GPU
    m = CFGS[name]
    mats, crops, *_ = make_samples(m, 32, seed=4)
    t, _ = build_codec(m).encode(crops)
    tf = np.ascontiguousarray(t[..., ::-1])  # any second output will do here
    cpu = decode(torch.from_numpy(t), {"matrix": torch.from_numpy(mats)}, m,
                 output_flipped=torch.from_numpy(tf), flip_index=FI)
    gpu = decode(torch.from_numpy(t).cuda(), {"matrix": torch.from_numpy(mats).cuda()}, m,
                 output_flipped=torch.from_numpy(tf).cuda(), flip_index=FI)
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-3)


# ------------------------------------------------------------------ HRNet's classic codec ---

def _msra_reference(kps, m):
    """HRNet's ``generate_target`` (lib/dataset/JointsDataset.py), transcribed in NumPy."""
    w, h = m.heatmap_size
    stride = (m.input_size[0] / w, m.input_size[1] / h)
    tmp = m.sigma * 3
    target = np.zeros((len(kps), h, w), np.float64)
    weight = (kps[:, 2] > 0).astype(np.float64)
    for j, (x, y, v) in enumerate(kps):
        mu_x, mu_y = int(x / stride[0] + 0.5), int(y / stride[1] + 0.5)
        ul = [int(mu_x - tmp), int(mu_y - tmp)]
        br = [int(mu_x + tmp + 1), int(mu_y + tmp + 1)]
        if ul[0] >= w or ul[1] >= h or br[0] < 0 or br[1] < 0:
            weight[j] = 0
            continue
        size = 2 * tmp + 1
        xs = np.arange(0, size, 1, np.float64)
        ys = xs[:, None]
        x0 = y0 = size // 2
        g = np.exp(-((xs - x0) ** 2 + (ys - y0) ** 2) / (2 * m.sigma ** 2))
        gx = max(0, -ul[0]), min(br[0], w) - ul[0]
        gy = max(0, -ul[1]), min(br[1], h) - ul[1]
        ix = max(0, ul[0]), min(br[0], w)
        iy = max(0, ul[1]), min(br[1], h)
        if weight[j] > 0:
            target[j, iy[0]:iy[1], ix[0]:ix[1]] = g[gy[0]:gy[1], gx[0]:gx[1]]
    return target, weight


@pytest.mark.parametrize("sigma", [2.0, 1.5])
def test_msra_targets_are_hrnets(sigma):
    m = ModelConfig(codec="msra", sigma=sigma)
    rng = np.random.default_rng(11)
    kps = np.zeros((K, 3), np.float32)
    for _ in range(30):
        kps[:, 0] = rng.uniform(-40, 230, K)
        kps[:, 1] = rng.uniform(-40, 300, K)
        kps[:, 2] = rng.choice([0, 1, 2], K)
        t, w = build_codec(m).encode(kps)
        ref_t, ref_w = _msra_reference(kps, m)
        np.testing.assert_array_equal(w, ref_w)
        np.testing.assert_allclose(t, ref_t, rtol=1e-6, atol=1e-7)


def test_msra_round_trip_and_flip_test_bias():
    """HRNet's processing, measured: the decoded position is the rounded heatmap position
    (error up to half a heatmap pixel, 2 crop px at stride 4, unbiased on average); its flip
    test (mirror, one-pixel shift, average) moves x by the known quarter-pixel-scale bias.
    UDP, through the same measurement, is exact (test_round_trip, test_flip_test_round_trip)."""
    m = ModelConfig(codec="msra")
    codec = build_codec(m)
    assert codec.stride == (4.0, 4.0) and not codec.unbiased
    w_in, h_in = m.input_size
    rng = np.random.default_rng(12)
    n = 300
    kps = np.zeros((n, K, 3), np.float32)
    kps[..., 0] = rng.uniform(12, w_in - 13, (n, K))
    kps[..., 1] = rng.uniform(12, h_in - 13, (n, K))
    kps[..., 2] = 2
    flipped = kps.copy()
    flipped[..., 0] = (w_in - 1) - kps[..., 0]  # the val pipeline's tensor mirror
    flipped = flipped[:, FI]
    t, _ = codec.encode(kps)
    tf, _ = codec.encode(flipped)
    eye = np.tile(np.eye(2, 3, dtype=np.float32), (n, 1, 1))
    plain = codec.decode(t, eye)[..., :2] - kps[..., :2]
    both = codec.decode(t, eye, tf, FI)[..., :2] - kps[..., :2]
    print(f"\nmsra: round trip |err| max {np.abs(plain).max():.3f} mean "
          f"{np.abs(plain).mean():.3f} crop px, mean x {plain[..., 0].mean():+.3f}; flip "
          f"test mean x {both[..., 0].mean():+.3f}, mean y {both[..., 1].mean():+.3f}")
    assert np.abs(plain).max() <= 0.5 * 4.0 + 1e-3
    assert abs(plain[..., 0].mean()) < 0.05 and abs(plain[..., 1].mean()) < 0.05
    assert 0.15 < both[..., 0].mean() < 0.35  # measured +0.25 crop px
    assert abs(both[..., 1].mean()) < 0.05


def test_msra_crop_maps_the_box_onto_the_whole_crop():
    m = G.msra_matrix(100.0, 80.0, 48.0, 64.0, 0.0, 192, 256, False)
    np.testing.assert_allclose(G.apply_affine(m, [[100.0, 80.0], [76.0, 48.0]]),
                               [[96.0, 128.0], [0.0, 0.0]])
    mf = G.msra_matrix(100.0, 80.0, 48.0, 64.0, 0.0, 192, 256, True)
    p = np.array([[90.0, 70.0]])
    np.testing.assert_allclose(G.apply_affine(mf, p)[0, 0], 192 - G.apply_affine(m, p)[0, 0])


def _dark_like_mmpose(hm, sigma, kernel=11):
    """mmpose 1.x's DARK-UDP refinement, written from its definition: blur the whole map
    (OpenCV Gaussian, ``kernel`` taps, rescaled to the original maximum), clip to
    [0.001, 50], log, pad with edge values, one unguarded Newton step at the argmax."""
    import cv2

    n, h, w = hm.shape
    b = np.stack([cv2.GaussianBlur(m, (kernel, kernel), 0) for m in hm])
    b *= hm.reshape(n, -1).max(1)[:, None, None] / b.reshape(n, -1).max(1)[:, None, None]
    lg = np.pad(np.log(np.clip(b, 0.001, 50)), ((0, 0), (1, 1), (1, 1)), mode="edge")
    flat = hm.reshape(n, -1).argmax(1)
    x, y = flat % w + 1, flat // w + 1
    r = np.arange(n)
    f = lambda dx, dy: lg[r, y + dy, x + dx]  # noqa: E731
    g = np.stack([0.5 * (f(1, 0) - f(-1, 0)), 0.5 * (f(0, 1) - f(0, -1))], 1)
    hxx = f(1, 0) - 2 * f(0, 0) + f(-1, 0)
    hyy = f(0, 1) - 2 * f(0, 0) + f(0, -1)
    hxy = 0.5 * (f(1, 1) - f(1, 0) - f(0, 1) + 2 * f(0, 0) - f(-1, 0) - f(0, -1) + f(-1, -1))
    hess = np.stack([np.stack([hxx, hxy], 1), np.stack([hxy, hyy], 1)], 1)
    step = np.linalg.solve(hess + np.finfo(np.float32).eps * np.eye(2), g[..., None])[..., 0]
    return np.stack([x - 1, y - 1], 1) - step


def test_dark_on_noisy_maps():
    """Interior Gaussians (sigma 2) plus noise: DARK-UDP's error is that of mmpose's
    unguarded step, and bounded where mmpose's is not (a pure-noise map)."""
    import dali_pose.codecs as C

    rng = np.random.default_rng(13)
    h, w, sigma, n = 64, 48, 2.0, 3000
    mu = np.stack([rng.uniform(8, w - 9, n), rng.uniform(8, h - 9, n)], 1)
    py, px = np.mgrid[0:h, 0:w]
    clean = np.exp(-((px[None] - mu[:, 0, None, None]) ** 2
                     + (py[None] - mu[:, 1, None, None]) ** 2) / (2 * sigma ** 2))
    for noise in (0.05, 0.1):
        hm = (clean + rng.normal(0, noise, clean.shape)).astype(np.float32)
        t = torch.from_numpy(hm)
        _, x0, y0, _ = C._argmax2d(t)
        x, y = C.dark_refine(t, x0, y0, sigma)
        ours = np.linalg.norm(np.stack([x.numpy(), y.numpy()], 1) - mu, axis=1)
        theirs = np.linalg.norm(_dark_like_mmpose(hm, sigma) - mu, axis=1)
        print(f"\nnoise {noise}: DARK-UDP mean {ours.mean():.4f} max {ours.max():.3f}; "
              f"mmpose mean {theirs.mean():.4f} max {theirs.max():.3f} heatmap px")
        assert ours.mean() <= 1.01 * theirs.mean() and ours.max() <= 1.05 * theirs.max()
    flat = rng.normal(0, 1, (200, h, w)).astype(np.float32)
    t = torch.from_numpy(flat)
    _, x0, y0, _ = C._argmax2d(t)
    x, y = C.dark_refine(t, x0, y0, sigma)
    assert (x - x0).abs().max() <= sigma and (y - y0).abs().max() <= sigma
