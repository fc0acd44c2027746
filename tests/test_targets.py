"""Target kernels (dali_pose.kernels.targets): NumPy reference, CPU == pure Python == CUDA
(simulator, PTX compile, real GPU when present), and the CPU kernel inside a DALI pipeline."""
from __future__ import annotations

import json
import math
import os
import textwrap

import numpy as np
import pytest

from dali_pose.codecs import build_codec, combined_radius, udp_stride
from dali_pose.config import ModelConfig

from conftest import run_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 17
RTOL = 1e-6  # float64 formulas stored as float32: <= 0.5 ulp apart
ATOL = 1e-7

CFGS = {
    "gaussian": ModelConfig(),
    "combined": ModelConfig(target="combined"),
    "gaussian_s3": ModelConfig(input_size=(288, 384), heatmap_size=(72, 96), sigma=3.0),
    "gaussian_s1.5": ModelConfig(input_size=(47, 63), heatmap_size=(12, 16), sigma=1.5),
    "combined_small": ModelConfig(input_size=(47, 63), heatmap_size=(12, 16), target="combined"),
}


# ------------------------------------------------------------------------------------------
# NumPy reference, written from the UDP formulas (independent of the kernels' code)
# ------------------------------------------------------------------------------------------

def reference(kps: np.ndarray, m: ModelConfig):
    """(target, weight) in float64 for one sample of crop keypoints (K, 3)."""
    w, h = m.heatmap_size
    sx = (m.input_size[0] - 1.0) / (w - 1.0)
    sy = (m.input_size[1] - 1.0) / (h - 1.0)
    kps = kps.astype(np.float64)
    mu_x = kps[:, 0] / sx
    mu_y = kps[:, 1] / sy
    weight = ((kps[:, 2] > 0) & (mu_x >= -0.5) & (mu_x < w - 0.5)
              & (mu_y >= -0.5) & (mu_y < h - 0.5)).astype(np.float64)
    py, px = np.mgrid[0:h, 0:w].astype(np.float64)
    mx, my = mu_x[:, None, None], mu_y[:, None, None]
    on = weight[:, None, None] > 0
    if m.target == "gaussian":
        cx, cy = np.floor(mx + 0.5), np.floor(my + 0.5)
        win = (np.abs(px - cx) <= 3 * m.sigma) & (np.abs(py - cy) <= 3 * m.sigma) & on
        g = np.exp(-((px - mx) ** 2 + (py - my) ** 2) / (2 * m.sigma ** 2))
        return np.where(win, g, 0.0), weight
    r = 0.0546875 * h
    ox, oy = (mx - px) / r, (my - py) / r
    disk = (ox ** 2 + oy ** 2 <= 1.0) & on
    t = np.stack([disk * 1.0, np.where(disk, ox, 0.0), np.where(disk, oy, 0.0)], axis=1)
    return t.reshape(-1, h, w), weight


def random_kps(rng, m: ModelConfig, k=K, n=1):
    """Crop keypoints: mostly on the crop, some off it, some unlabelled."""
    iw, ih = m.input_size
    kps = np.zeros((n, k, 3), np.float32)
    kps[..., 0] = rng.uniform(-0.15 * iw, 1.15 * iw, (n, k))
    kps[..., 1] = rng.uniform(-0.15 * ih, 1.15 * ih, (n, k))
    kps[..., 2] = rng.choice([0, 1, 2], (n, k), p=[0.15, 0.25, 0.6])
    return kps


def run_cpu(kern, kps):
    """Targets of one person's keypoints (K, 3): the operator on a sample of P = 1."""
    w, h = kern.hm_size
    hm = np.full((1, kern.channels, h, w), np.nan, np.float32)  # outputs are uninitialised
    wt = np.full((1, kern.num_joints), np.nan, np.float32)
    kern.cpu_kernel(hm, wt, kps[None], np.zeros((1, 4), np.float32))
    return hm[0], wt[0]


# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CFGS))
def test_cpu_matches_numpy_reference(name):
    m = CFGS[name]
    kern = build_codec(m).target_op(K)
    assert kern.channels == (K if m.target == "gaussian" else 3 * K)
    assert kern.hm_size == tuple(m.heatmap_size)
    rng = np.random.default_rng(1)
    for kps in random_kps(rng, m, n=20):
        hm, wt = run_cpu(kern, kps)
        ref, ref_w = reference(kps, m)
        assert not np.isnan(hm).any() and not np.isnan(wt).any()
        np.testing.assert_array_equal(wt, ref_w)
        np.testing.assert_allclose(hm, ref, rtol=RTOL, atol=ATOL)
        # same support exactly (Gaussian values in the window are >= exp(-9) > 0)
        sel = slice(None) if m.target == "gaussian" else slice(0, None, 3)
        np.testing.assert_array_equal(hm[sel] != 0, ref[sel] != 0)
        c = hm.shape[0] // K
        assert not hm.reshape(K, c, *hm.shape[1:])[wt == 0].any()


def test_weight_rule_at_map_edges():
    """weight 0 iff v == 0 or mu outside [-0.5, w - 0.5) x [-0.5, h - 0.5); exact stride 4."""
    for target in ("gaussian", "combined"):
        m = ModelConfig(input_size=(193, 257), heatmap_size=(49, 65), target=target)
        assert udp_stride(m.input_size, m.heatmap_size) == (4.0, 4.0)
        kern = build_codec(m).target_op(8)
        w, h = m.heatmap_size
        mu = [(-0.5, 10), (-0.5001, 10), (w - 0.5, 10), (w - 0.5001, 10),
              (10, -0.5), (10, h - 0.5), (10, h - 0.5001), (24.0, 32.0)]
        kps = np.array([[x * 4.0, y * 4.0, 2] for x, y in mu], np.float32)
        kps[7, 2] = 0  # unlabelled, in the middle of the map
        hm, wt = run_cpu(kern, kps)
        np.testing.assert_array_equal(wt, [1, 0, 0, 1, 1, 0, 1, 0])
        c = 1 if target == "gaussian" else 3
        for j in range(8):
            assert (hm[c * j:c * j + c].any()) == bool(wt[j]), j
        ref, ref_w = reference(kps, m)
        np.testing.assert_array_equal(wt, ref_w)
        np.testing.assert_allclose(hm, ref, rtol=RTOL, atol=ATOL)


def test_gaussian_window_and_peak():
    """Window centred on the rounded position (ties upwards), values from the exact one."""
    m = ModelConfig(input_size=(193, 257), heatmap_size=(49, 65), sigma=2.0)
    kern = build_codec(m).target_op(2)
    kps = np.array([[20.5 * 4, 30.0 * 4, 1], [10.2 * 4, 40.7 * 4, 1]], np.float32)
    hm, wt = run_cpu(kern, kps)
    ys, xs = np.nonzero(hm[0])
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (15, 27, 24, 36)  # cx = 21 (tie up)
    assert hm[0, 30, 20] == hm[0, 30, 21] == np.float32(math.exp(-0.25 / 8))
    ys, xs = np.nonzero(hm[1])
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (4, 16, 35, 47)
    assert np.unravel_index(hm[1].argmax(), hm[1].shape) == (41, 10)


def test_combined_radius_and_values():
    m = ModelConfig(target="combined")  # [w, h] = [48, 64]
    assert combined_radius(m.heatmap_size) == 3.5
    kern = build_codec(m).target_op(1)
    sx, sy = kern.stride
    kps = np.array([[20.25 * sx, 30.5 * sy, 1]], np.float32)
    hm, wt = run_cpu(kern, kps)
    assert wt[0] == 1
    assert hm[0].sum() == np.sum((np.mgrid[0:64, 0:48][1] - 20.25) ** 2
                                 + (np.mgrid[0:64, 0:48][0] - 30.5) ** 2 <= 3.5 ** 2)
    np.testing.assert_allclose(hm[1, 30, 20], 0.25 / 3.5, rtol=1e-5)
    np.testing.assert_allclose(hm[2, 33, 19], -2.5 / 3.5, rtol=1e-5)
    assert hm[1, 30, 24] == 0 and hm[0, 30, 24] == 0  # 3.75 px away: outside


def test_setup_shapes_plain_python():
    for name in ("gaussian", "combined"):
        kern = build_codec(CFGS[name]).target_op(K)
        outs = [[np.zeros(4, np.int64) for _ in range(3)],
                [np.zeros(2, np.int64) for _ in range(3)]]
        ins = [[np.array([p, K, 3], np.int64) for p in (1, 3, 2)],
               [np.array([p, 4], np.int64) for p in (1, 3, 2)]]
        kern.setup(outs, ins)
        for i, p in enumerate((1, 3, 2)):
            assert tuple(outs[0][i]) == (p, kern.channels, 64, 48)
            assert tuple(outs[1][i]) == (p, K)


def test_factory_geometry():
    kern = build_codec(ModelConfig()).target_op(K)
    assert kern.threads_per_block == (32, 8, 1)
    assert kern.blocks == (2, 8, K)
    assert kern.stride == (191 / 47, 255 / 63)
    with pytest.raises(ValueError):
        build_codec(ModelConfig(target="nope")).target_op(K)


# ------------------------------------------------------------------------------------------
# Pure Python (NUMBA_DISABLE_JIT=1) == compiled
# ------------------------------------------------------------------------------------------

_DUMP = textwrap.dedent("""
    import json, sys, numpy as np
    from dali_pose.config import ModelConfig
    from dali_pose.codecs import build_codec
    args = json.loads(sys.argv[1])
    kps = np.asarray(args["kps"], np.float32)
    res = {}
    for name, kw in args["cfgs"].items():
        kern = build_codec(ModelConfig(**kw)).target_op(kps.shape[0])
        w, h = kern.hm_size
        hm = np.full((1, kern.channels, h, w), np.nan, np.float32)
        wt = np.full((1, kps.shape[0]), np.nan, np.float32)
        kern.cpu_kernel(hm, wt, kps[None], np.zeros((1, 4), np.float32))
        res[name] = [hm[0].tolist(), wt[0].tolist()]
    print(json.dumps(res))
""")


def _subprocess(code, env_extra, *args):
    return json.loads(run_python(code, args, env_extra).strip().splitlines()[-1])


def _cfg_kwargs(m: ModelConfig):
    return dict(input_size=list(m.input_size), heatmap_size=list(m.heatmap_size),
                sigma=m.sigma, target=m.target)


def test_disable_jit_matches_compiled():
    rng = np.random.default_rng(7)
    names = ("gaussian", "combined")
    kps = random_kps(rng, CFGS["gaussian"], k=6)[0]
    res = _subprocess(_DUMP, {"NUMBA_DISABLE_JIT": "1"},
                      json.dumps({"kps": kps.tolist(),
                                  "cfgs": {n: _cfg_kwargs(CFGS[n]) for n in names}}))
    for n in names:
        hm, wt = run_cpu(build_codec(CFGS[n]).target_op(6), kps)
        np.testing.assert_array_equal(np.asarray(res[n][1], np.float32), wt)
        np.testing.assert_allclose(np.asarray(res[n][0], np.float32), hm, rtol=RTOL, atol=ATOL)
        assert wt.sum() >= 3  # the sample exercises real targets


# ------------------------------------------------------------------------------------------
# CUDA variants
# ------------------------------------------------------------------------------------------

_SIM = textwrap.dedent("""
    import json, sys, numpy as np
    from numba import cuda
    from dali_pose.config import ModelConfig
    from dali_pose.codecs import build_codec
    args = json.loads(sys.argv[1])
    kps_all = np.asarray(args["kps"], np.float32)
    out = {}
    for name, kw in args["cfgs"].items():
        k = kps_all.shape[1]
        kern = build_codec(ModelConfig(**kw)).target_op(k)
        w, h = kern.hm_size
        gpu = cuda.jit(kern.gpu_run)
        diffs = []
        # the kernel's own launch shape, then a tiny one that exercises the grid-stride loops
        # one sample of all the people (P = 2): the kernel loops over them
        for launch in ((kern.blocks, kern.threads_per_block), ((1, 1, 2), (4, 2, 1))):
            for kps in (kps_all, kps_all[:1]):
                p = kps.shape[0]
                hm = np.full((p, kern.channels, h, w), np.nan, np.float32)
                wt = np.full((p, k), np.nan, np.float32)
                gpu[launch[0], launch[1]](hm, wt, kps, np.zeros((p, 4), np.float32))
                hm_c = np.full_like(hm, np.nan)
                wt_c = np.full_like(wt, np.nan)
                kern.cpu_kernel(hm_c, wt_c, kps, np.zeros((p, 4), np.float32))
                assert not np.isnan(hm).any() and not np.isnan(wt).any()
                diffs.append([float(np.abs(hm - hm_c).max()),
                              float(np.abs(wt - wt_c).max()), float(wt_c.sum())])
        out[name] = diffs
    print(json.dumps(out))
""")


def test_cuda_simulator_matches_cpu():
    """gpu_run launched per sample under NUMBA_ENABLE_CUDASIM=1 == cpu kernel (small maps:
    the simulator runs every thread in Python)."""
    names = ("gaussian_s1.5", "combined_small")
    rng = np.random.default_rng(3)
    kps = random_kps(rng, CFGS["gaussian_s1.5"], k=4, n=2)
    res = _subprocess(_SIM, {"NUMBA_ENABLE_CUDASIM": "1"},
                      json.dumps({"kps": kps.tolist(),
                                  "cfgs": {n: _cfg_kwargs(CFGS[n]) for n in names}}))
    for n in names:
        diffs = np.asarray(res[n])
        assert diffs[:, 0].max() <= ATOL, (n, diffs)  # float64 formulas both sides
        assert diffs[:, 1].max() == 0, (n, diffs)
        assert diffs[:, 2].sum() > 0  # some joints on the map


def _ptx_signature():
    from numba import types
    f32 = types.float32
    # exactly the argument types DALI's GPU numba_function compiles run_fn with
    return (types.void(types.Array(f32, 4, "C"), types.Array(f32, 2, "C"),
                       types.Array(f32, 3, "C"), types.Array(f32, 2, "C")))


@pytest.mark.parametrize("name", ["gaussian", "combined"])
def test_gpu_run_compiles_to_ptx(name):
    """Type-checks and compiles gpu_run for CUDA without a GPU (needs libNVVM only)."""
    from numba import cuda
    from numba.cuda.cudadrv.error import CudaSupportError, NvvmSupportError

    kern = build_codec(CFGS[name]).target_op(K)
    try:
        ptx, _ = cuda.compile_ptx(kern.gpu_run, _ptx_signature(), cc=(8, 0))
    except (NvvmSupportError, CudaSupportError) as e:  # pragma: no cover - toolchain missing
        pytest.skip(f"no NVVM to compile with: {e}")
    assert ".entry" in ptx and "call." not in ptx


def _cuda_available():
    try:
        from numba import cuda
        return cuda.is_available()
    except Exception:  # pragma: no cover
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["gaussian", "combined", "gaussian_s3"])
def test_gpu_matches_cpu_on_device(name):  # pragma: no cover - needs a GPU
    from numba import cuda

    m = CFGS[name]
    kern = build_codec(m).target_op(K)
    gpu = cuda.jit(kern.gpu_run)
    rng = np.random.default_rng(11)
    w, h = kern.hm_size
    for kps in random_kps(rng, m, n=8):
        d_hm = cuda.to_device(np.full((1, kern.channels, h, w), np.nan, np.float32))
        d_wt = cuda.to_device(np.full((1, K), np.nan, np.float32))
        gpu[kern.blocks, kern.threads_per_block](d_hm, d_wt, cuda.to_device(kps[None]),
                                                 cuda.to_device(np.zeros((1, 4), np.float32)))
        hm_c, wt_c = run_cpu(kern, kps)
        np.testing.assert_array_equal(d_wt.copy_to_host()[0], wt_c)
        np.testing.assert_allclose(d_hm.copy_to_host()[0], hm_c, rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------------------------
# Inside DALI
# ------------------------------------------------------------------------------------------

def _dali_targets(kern, kps_batch, device):
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn
    from nvidia.dali.pipeline import Pipeline

    from dali_pose.loader.graph import dali_operator

    bs = len(kps_batch)
    boxes = [np.zeros((len(k), 4), np.float32) for k in kps_batch]
    pipe = Pipeline(batch_size=bs, num_threads=1, device_id=None if device == "cpu" else 0)
    with pipe:
        kps = fn.external_source(source=lambda: list(kps_batch), batch=True, device=device)
        box = fn.external_source(source=lambda: boxes, batch=True, device=device)
        hm, wt = dali_operator(kern, device, 0 if device == "gpu" else None)(kps, box)
        pipe.set_outputs(hm, wt)
    pipe.build()
    hm, wt = pipe.run()
    if device == "gpu":
        hm, wt = hm.as_cpu(), wt.as_cpu()
    return [np.array(hm[i]) for i in range(bs)], [np.array(wt[i]) for i in range(bs)]


@pytest.mark.parametrize("name", ["gaussian", "combined"])
def test_cpu_run_inside_dali(name):
    m = CFGS[name]
    kern = build_codec(m).target_op(K)
    people = random_kps(np.random.default_rng(5), m, n=6)
    kps_batch = [people[0:1], people[1:4], people[4:6]]  # samples of 1, 3 and 2 people
    hms, wts = _dali_targets(kern, kps_batch, "cpu")
    for kps, hm, wt in zip(kps_batch, hms, wts):
        assert hm.shape == (len(kps), kern.channels, 64, 48) and wt.shape == (len(kps), K)
        for p in range(len(kps)):
            ref, ref_w = reference(kps[p], m)
            np.testing.assert_array_equal(wt[p], ref_w)
            np.testing.assert_allclose(hm[p], ref, rtol=RTOL, atol=ATOL)


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["gaussian", "combined"])
def test_gpu_run_inside_dali(name):  # pragma: no cover - needs a GPU
    m = CFGS[name]
    kern = build_codec(m).target_op(K)
    people = random_kps(np.random.default_rng(6), m, n=6)
    kps_batch = [people[0:1], people[1:4], people[4:6]]  # samples of 1, 3 and 2 people
    hms, wts = _dali_targets(kern, kps_batch, "gpu")
    for kps, hm, wt in zip(kps_batch, hms, wts):
        for p in range(len(kps)):
            hm_c, wt_c = run_cpu(kern, kps[p])
            np.testing.assert_array_equal(wt[p], wt_c)
            np.testing.assert_allclose(hm[p], hm_c, rtol=RTOL, atol=ATOL)
