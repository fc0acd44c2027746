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
LIMIT = {"gaussian": 0.05, "combined": 0.1}  # crop pixels (the bounds)


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
    assert d.max() < 1e-3
    np.testing.assert_allclose(both[..., 2][keep], plain[..., 2][keep], atol=1e-5)
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
    assert np.abs(a[..., :2] - b.numpy()[..., :2]).max() < 0.5  # fp16 maps: coarse
    # empty / flat / negative maps: finite output at the argmax, no step
    for fill in (0.0, -1.0):
        z = torch.full((2, K, 64, 48), fill)
        r = decode(z, {"matrix": mats[:2]}, m)
        assert torch.isfinite(r).all()
        np.testing.assert_allclose(r[..., :2].numpy(),
                                   build_codec(m).to_source(torch.zeros(2, K, 2), mats[:2]).numpy(),
                                   atol=1e-4)
    with pytest.raises(ValueError):
        decode(t, {"matrix": mats}, m, output_flipped=t)


def test_noisy_prediction_stays_close():
    """Not a proof, a sanity check: mild noise on perfect maps moves points little."""
    m = CFGS["gaussian"]
    mats, crops, srcs, flips, _ = make_samples(m, 64, seed=9)
    t, wt = build_codec(m).encode(crops)
    rng = np.random.default_rng(2)
    noisy = t + rng.normal(0, 0.02, t.shape).astype(np.float32)
    err = crop_errors(decode(noisy, {"matrix": mats}, m), mats, srcs, flips, wt)
    assert np.median(err) < 0.5 and err.max() < 4.0


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
