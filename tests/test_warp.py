"""The fused CPU warp + normalise kernel against a float64 NumPy reference, compiled vs pure
Python, and its two loops (separable for unrotated crops, general for rotated) against each
other and against OpenCV."""
import json
import textwrap

import cv2
import numpy as np
import pytest

from dali_pose.geometry import udp_matrix
from dali_pose.kernels.warp import warp_normalize
from dali_pose.normalize import IMAGENET_MEAN, IMAGENET_STD

from conftest import run_python

MEAN = np.array(IMAGENET_MEAN)
STD = np.array(IMAGENET_STD)
OUT_W, OUT_H = 48, 64
# Positions are float32 in the kernel (~1e-4 px at 700 px); on random-noise images a
# 1e-4 px shift moves a value by <= 0.03 intensity levels = 5e-4 in normalised units.
ATOL = 1e-3


def reference_warp(roi, m, anchor, out_w, out_h):
    """float64 NumPy: bilinear sample of ``roi`` at inverse(m) @ (x, y, 1) - anchor, with
    neighbours outside the window counting as 0; then ImageNet normalisation, (3, H, W)."""
    a = np.vstack([np.asarray(m, np.float64), [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(a)
    ys, xs = np.mgrid[0:out_h, 0:out_w].astype(np.float64)
    fx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2] - anchor[0]
    fy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2] - anchor[1]
    x0 = np.floor(fx).astype(np.int64)
    y0 = np.floor(fy).astype(np.int64)
    wx, wy = fx - x0, fy - y0
    h, w = roi.shape[:2]
    acc = np.zeros((out_h, out_w, 3))
    for dy, wgt_y in ((0, 1.0 - wy), (1, wy)):
        for dx, wgt_x in ((0, 1.0 - wx), (1, wx)):
            xx, yy = x0 + dx, y0 + dy
            ok = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
            px = roi[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)].astype(np.float64)
            acc += np.where(ok, wgt_x * wgt_y, 0.0)[..., None] * px
    return ((acc / 255.0 - MEAN) / STD).transpose(2, 0, 1)


def random_cases(rng, n, roi_shape):
    """(matrix, anchor) pairs: half unrotated (the separable loop), flips, crops partly or
    wholly outside the window, up- and down-scaling, float32 and float64 matrices."""
    h, w = roi_shape[:2]
    cases = []
    for i in range(n):
        rot = 0.0 if i % 2 else float(rng.uniform(-90.0, 90.0))
        sw = float(rng.uniform(10.0, 2.0 * w))
        m = udp_matrix(float(rng.uniform(-0.3 * w, 1.3 * w)), float(rng.uniform(-0.3 * h, 1.3 * h)),
                       sw, sw * OUT_H / OUT_W, rot, float(OUT_W), float(OUT_H), bool(i % 3 == 0))
        cases.append((m.astype(np.float32) if i % 4 == 1 else m,
                      (float(rng.integers(0, 9)), float(rng.integers(0, 9)))))
    return cases


def run_kernel(roi, m, anchor):
    out = np.full((3, OUT_H, OUT_W), np.nan, np.float32)
    warp_normalize(out, roi, m, anchor[0], anchor[1], MEAN, STD)
    return out


def test_matches_numpy_reference():
    rng = np.random.default_rng(0)
    roi = rng.integers(0, 256, (37, 29, 3), dtype=np.uint8)
    inside = 0
    for m, anchor in random_cases(rng, 80, roi.shape):
        got = run_kernel(roi, m, anchor)
        ref = reference_warp(roi, m, anchor, OUT_W, OUT_H)
        np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL, err_msg=f"m={m}, anchor={anchor}")
        inside += int((np.abs(ref - (-MEAN / STD)[:, None, None]) > 1e-6).any())
    assert inside > 40  # most crops see real pixels, not only the fill


def test_rotation_zero_and_tiny_rotation_agree():
    """The separable loop (rot == 0 exactly) and the general loop (rot = 1e-7 deg) compute
    the same bilinear sum, borders included."""
    rng = np.random.default_rng(1)
    roi = rng.integers(0, 256, (50, 40, 3), dtype=np.uint8)
    for flip in (False, True):
        for cx, cy, sw in ((20.0, 25.0, 30.0), (2.0, 45.0, 60.0), (35.0, 3.0, 8.0)):
            a = run_kernel(roi, udp_matrix(cx, cy, sw, sw * 4 / 3, 0.0, OUT_W, OUT_H, flip), (0, 0))
            b = run_kernel(roi, udp_matrix(cx, cy, sw, sw * 4 / 3, 1e-7, OUT_W, OUT_H, flip), (0, 0))
            np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)


def test_matches_opencv_warp_affine():
    """OpenCV quantises positions to 1/32 px: on a smooth image that moves values by less
    than a fraction of an intensity level (a noise image would show the quantisation)."""
    ys, xs = np.mgrid[0:120, 0:160]
    roi = np.stack([xs * 1.5, ys * 2.0, (xs + ys) * 0.7], -1).clip(0, 255).astype(np.uint8)
    roi = np.ascontiguousarray(roi)
    for rot in (0.0, 25.0, -70.0):
        for flip in (False, True):
            m = udp_matrix(80.0, 60.0, 90.0, 120.0, rot, OUT_W, OUT_H, flip)
            cv = cv2.warpAffine(roi, m, (OUT_W, OUT_H), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
            ref = ((cv / 255.0 - MEAN) / STD).transpose(2, 0, 1)
            # 1/64 px of a 2-levels/px ramp plus OpenCV's rounding to uint8: < 0.6 levels.
            np.testing.assert_allclose(run_kernel(roi, m, (0, 0)), ref, rtol=0,
                                       atol=0.6 / 255 / STD.min())


_DUMP = textwrap.dedent("""
    import json, sys, numpy as np
    from dali_pose.kernels.warp import warp_normalize
    from dali_pose.normalize import IMAGENET_MEAN, IMAGENET_STD
    args = json.loads(sys.argv[1])
    roi = np.asarray(args["roi"], np.uint8)
    res = []
    for m, anchor in args["cases"]:
        out = np.full((3, args["h"], args["w"]), np.nan, np.float32)
        warp_normalize(out, roi, np.asarray(m), anchor[0], anchor[1],
                       np.array(IMAGENET_MEAN), np.array(IMAGENET_STD))
        res.append(out.tolist())
    print(json.dumps(res))
""")


def test_pure_python_equals_compiled():
    rng = np.random.default_rng(2)
    roi = rng.integers(0, 256, (21, 17, 3), dtype=np.uint8)
    cases = random_cases(rng, 6, roi.shape)
    arg = json.dumps({"roi": roi.tolist(), "w": OUT_W, "h": OUT_H,
                      "cases": [(m.astype(np.float64).tolist(), a) for m, a in cases]})
    res = json.loads(run_python(_DUMP, [arg], {"NUMBA_DISABLE_JIT": "1"}).strip().splitlines()[-1])
    for (m, anchor), py in zip(cases, res):
        # Compiled code contracts to FMA; pure Python rounds every step: ~1e-6 apart.
        np.testing.assert_allclose(run_kernel(roi, m.astype(np.float64), anchor),
                                   np.asarray(py, np.float32), rtol=0, atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 1, 3), (1, 2, 3)])
def test_tiny_windows(shape):
    """Windows narrower than two pixels have no interior run: every pixel is a border one."""
    roi = np.full(shape, 200, np.uint8)
    m = udp_matrix(0.0, 0.0, 3.0, 4.0, 10.0, OUT_W, OUT_H, False)
    np.testing.assert_allclose(run_kernel(roi, m, (0, 0)), reference_warp(roi, m, (0, 0), OUT_W, OUT_H),
                               rtol=0, atol=ATOL)


# ------------------------------------------------------------------------------------------
# The operator: the P crops of one decoded window (per-image decoding), CPU and CUDA
# ------------------------------------------------------------------------------------------

def _crops_case(rng, p=3):
    """A source image, a window inside it covering every crop's taps, and p crop matrices
    (rotated and not, flipped and not)."""
    from dali_pose.geometry import invert_affine, source_roi

    image = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    mats = np.stack([udp_matrix(float(rng.uniform(30, 90)), float(rng.uniform(25, 65)),
                                40.0, 40.0 * OUT_H / OUT_W, 0.0 if i % 2 else 30.0 * i,
                                float(OUT_W), float(OUT_H), i == 1)
                     for i in range(p)]).astype(np.float32)
    x0, y0, x1, y1 = 120, 90, 0, 0
    for m in mats:
        a0, b0, a1, b1 = source_roi(invert_affine(m.astype(np.float64)), float(OUT_W),
                                    float(OUT_H), 120, 90, 1)
        x0, y0, x1, y1 = min(x0, a0), min(y0, b0), max(x1, a1), max(y1, b1)
    return image, mats, np.array([x0, y0, x1 - x0, y1 - y0], np.int32)


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_operator_crops_equal_single_crops_from_any_window(dtype):
    """The operator's P crops from the union window == each crop warped alone from the whole
    image, bit for bit (positions are in source px); uint8 = the float warp rounded."""
    from dali_pose.kernels.warp import warp_into, warp_op

    rng = np.random.default_rng(5)
    image, mats, win = _crops_case(rng)
    x, y, w, h = win
    roi = np.ascontiguousarray(image[y:y + h, x:x + w])
    op = warp_op((OUT_W, OUT_H), None, dtype)
    out = np.zeros((len(mats), 3, OUT_H, OUT_W), dtype)
    op.cpu_kernel(out, mats, roi, win)
    assert (x, y) != (0, 0)  # a real window, not the whole image
    whole = np.array([0, 0, image.shape[1], image.shape[0]], np.int32)
    for i, m in enumerate(mats):
        alone = np.zeros((1, 3, OUT_H, OUT_W), dtype)
        op.cpu_kernel(alone, mats[i:i + 1], image, whole)
        np.testing.assert_array_equal(out[i], alone[0])
        # ... and the warp of the module's functions
        if dtype == "uint8":
            raw = np.zeros((3, OUT_H, OUT_W), np.float32)
            warp_into(raw, image, m, 0, 0, (1.0, 1.0, 1.0, 0.0, 0.0, 0.0))
            assert np.abs(alone[0] - raw).max() <= 0.5 + 1e-4  # rounded, not truncated
        else:
            ref = np.zeros((3, OUT_H, OUT_W), np.float32)
            warp_normalize(ref, image, m, 0, 0, MEAN, STD)
            # the operator's constants are frozen into its code (multiply-add in float64)
            np.testing.assert_allclose(alone[0], ref, rtol=0, atol=1e-6)


_SIM = textwrap.dedent("""
    import sys, numpy as np
    from numba import cuda
    from dali_pose.kernels.warp import warp_op
    z = np.load(sys.argv[1])
    res = {}
    for dtype in ("float32", "uint8"):
        op = warp_op((int(z["w"]), int(z["h"])), None, dtype)
        gpu = cuda.jit(op.gpu_run)
        for j, (b, t) in enumerate((((2, 1, 1), (64, 1, 1)), ((1, 1, 1), (7, 1, 1)))):
            out = np.zeros((len(z["mats"]), 3, int(z["h"]), int(z["w"])), dtype)
            gpu[b, t](out, z["mats"], z["roi"], z["win"])
            res["%s_%d" % (dtype, j)] = out
    np.savez(sys.argv[2], **res)
""")


def test_cuda_warp_simulator_matches_cpu(tmp_path):
    """The CUDA warp (per-image decoding on the GPU) under NUMBA_ENABLE_CUDASIM=1 == the CPU
    operator, for two launch shapes (grid-stride loops): within float32 rounding."""
    from dali_pose.kernels.warp import warp_op

    rng = np.random.default_rng(6)
    image, mats, win = _crops_case(rng, p=2)
    x, y, w, h = win
    roi = np.ascontiguousarray(image[y:y + h, x:x + w])
    inputs = tmp_path / "in.npz"
    np.savez(inputs, mats=mats, roi=roi, win=win, w=OUT_W, h=OUT_H)
    run_python(_SIM, (inputs, tmp_path / "out.npz"),
               {"NUMBA_ENABLE_CUDASIM": "1", "NUMBA_DISABLE_JIT": "1"}, timeout=600)
    sim = dict(np.load(tmp_path / "out.npz"))
    for dtype in ("float32", "uint8"):
        cpu = np.zeros((len(mats), 3, OUT_H, OUT_W), dtype)
        warp_op((OUT_W, OUT_H), None, dtype).cpu_kernel(cpu, mats, roi, win)
        for j in range(2):
            got = sim[f"{dtype}_{j}"]
            if dtype == "uint8":  # a value at exactly .5 may round either way: rare
                assert np.abs(got.astype(int) - cpu).max() <= 1
                assert (got != cpu).mean() < 1e-3
            else:
                np.testing.assert_allclose(got, cpu, rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_cuda_warp_compiles_to_ptx(dtype, monkeypatch):
    """Type-checks the CUDA warp with DALI's argument types, without a GPU."""
    import types as pytypes

    from numba import cuda, types
    from numba.cuda.cudadrv.error import CudaSupportError, NvvmSupportError

    from dali_pose.kernels.warp import warp_op

    try:
        available = cuda.is_available()
    except Exception:  # pragma: no cover
        available = False
    if not available:
        import numba.cuda.dispatcher as disp
        monkeypatch.setattr(disp, "get_current_device",
                            lambda: pytypes.SimpleNamespace(compute_capability=(8, 0)))
    op = warp_op((192, 256), None, dtype)
    out_t = types.uint8 if dtype == "uint8" else types.float32
    sig = types.void(types.Array(out_t, 4, "C"), types.Array(types.float32, 3, "C"),
                     types.Array(types.uint8, 3, "C"), types.Array(types.int32, 1, "C"))
    try:
        ptx, _ = cuda.compile_ptx(op.gpu_run, sig, cc=(8, 0))
    except (NvvmSupportError, CudaSupportError) as e:  # pragma: no cover
        pytest.skip(f"no NVVM to compile with: {e}")
    assert ".entry" in ptx
