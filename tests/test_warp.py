"""The fused CPU warp + normalise kernel: its fixed-point arithmetic against an integer NumPy
reference (exactly), against the float64 bilinear warp (within the 1/32-px quantisation)
and OpenCV, compiled vs pure Python."""
import json
import textwrap

import cv2
import numpy as np
import pytest

from dali_pose.geometry import invert_affine, udp_matrix
from dali_pose.kernels.warp import AB_BITS, INTER_BITS, warp_normalize
from dali_pose.normalize import IMAGENET_MEAN, IMAGENET_STD

from conftest import run_python

MEAN = np.array(IMAGENET_MEAN)
STD = np.array(IMAGENET_STD)
OUT_W, OUT_H = 48, 64
LEVEL = 1.0 / 255 / STD.min()  # one intensity level in normalised units (at most)


def fixed_point_sums(roi, m, anchor, out_w, out_h):
    """int64 (H, W, 3): OpenCV's fixed-point bilinear warp written out in NumPy. The source
    position of crop pixel (x, y) is inverse(m) @ (x, y, 1), built as OpenCV does from
    per-row and per-column terms in 1/1024 px, each rounded, and then rounded to 1/32 px
    (``INTER_BITS``); the four taps (0 outside the window ``roi``, which starts at source
    pixel ``anchor``) are weighted in 1/32 x 1/32 units, so the sum is intensity * 1024."""
    inv = invert_affine(np.asarray(m, np.float64))
    scale = 1 << AB_BITS
    shift = AB_BITS - INTER_BITS
    xs, ys = np.arange(out_w), np.arange(out_h)

    def pos(row):  # source x (row 0) or y (row 1) in 1/32 px, each term rounded as OpenCV's
        r = np.floor((inv[row, 1] * ys + inv[row, 2]) * scale + 0.5).astype(np.int64)
        c = np.floor(inv[row, 0] * xs * scale + 0.5).astype(np.int64)
        return (r[:, None] + (1 << (shift - 1)) + c[None, :]) >> shift

    px = pos(0) - (int(anchor[0]) << INTER_BITS)
    py = pos(1) - (int(anchor[1]) << INTER_BITS)
    ix, iy = px >> INTER_BITS, py >> INTER_BITS
    fx, fy = px & ((1 << INTER_BITS) - 1), py & ((1 << INTER_BITS) - 1)
    one = 1 << INTER_BITS
    h, w = roi.shape[:2]
    acc = np.zeros((out_h, out_w, 3), np.int64)
    for dy, wy in ((0, one - fy), (1, fy)):
        for dx, wx in ((0, one - fx), (1, fx)):
            xx, yy = ix + dx, iy + dy
            ok = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
            tap = roi[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)].astype(np.int64)
            acc += np.where(ok, wx * wy, 0)[..., None] * tap
    return acc


def normalised(sums):
    """(3, H, W) float64 ImageNet-normalised values of fixed-point sums (H, W, 3)."""
    return ((sums / (255.0 * (1 << AB_BITS)) - MEAN) / STD).transpose(2, 0, 1)


def float_warp(roi, m, out_w, out_h):
    """float64 (H, W, 3): the exact bilinear warp (no quantisation), 0 outside ``roi``."""
    inv = invert_affine(np.asarray(m, np.float64))
    ys, xs = np.mgrid[0:out_h, 0:out_w].astype(np.float64)
    fx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    fy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    x0, y0 = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    wx, wy = fx - x0, fy - y0
    h, w = roi.shape[:2]
    acc = np.zeros((out_h, out_w, 3))
    for dy, wgt_y in ((0, 1.0 - wy), (1, wy)):
        for dx, wgt_x in ((0, 1.0 - wx), (1, wx)):
            xx, yy = x0 + dx, y0 + dy
            ok = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
            px = roi[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)].astype(np.float64)
            acc += np.where(ok, wgt_x * wgt_y, 0.0)[..., None] * px
    return acc


def random_cases(rng, n, roi_shape):
    """(matrix, anchor) pairs: rotated and not, flips, crops partly or wholly outside the
    window, up- and down-scaling, float32 and float64 matrices."""
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


def test_matches_fixed_point_reference():
    """On noise images (every tap matters) the kernel's sums are the reference's exactly: the
    float32 output is their normalisation to float32 rounding, uint8 their rounding."""
    from dali_pose.kernels.warp import warp_into

    rng = np.random.default_rng(0)
    roi = rng.integers(0, 256, (37, 29, 3), dtype=np.uint8)
    inside = 0
    for m, anchor in random_cases(rng, 80, roi.shape):
        sums = fixed_point_sums(roi, m, anchor, OUT_W, OUT_H)
        ref = normalised(sums)
        np.testing.assert_allclose(run_kernel(roi, m, anchor), ref, rtol=0, atol=2e-6,
                                   err_msg=f"m={m}, anchor={anchor}")
        u8 = np.zeros((3, OUT_H, OUT_W), np.uint8)
        warp_into(u8, roi, m, anchor[0], anchor[1], (0.0,) * 6)
        half = 1 << (2 * INTER_BITS - 1)
        np.testing.assert_array_equal(u8, ((sums + half) >> (2 * INTER_BITS)).transpose(2, 0, 1))
        inside += int((sums > 0).any())
    assert inside > 40  # most crops see real pixels, not only the fill


def test_quantisation_against_exact_bilinear():
    """Positions rounded to 1/32 px move a value by at most gradient x 1/64 px per axis: on a
    smooth image (<= 3 levels/px) the kernel is the exact float64 warp within 0.1 levels,
    and on noise the error has no sign (the position rounding is unbiased)."""
    ys, xs = np.mgrid[0:240, 0:320]  # the crops stay inside: no step to the fill value
    smooth = np.stack([xs * 0.8, ys * 1.0, (xs + ys) * 0.35 + 20 * np.sin(xs / 9.0)], -1)
    smooth = np.ascontiguousarray(smooth.clip(0, 255).astype(np.uint8))
    noise = np.random.default_rng(3).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    errs = []
    for rot in (0.0, 25.0, -70.0, 180.0):
        for flip in (False, True):
            m = udp_matrix(160.0, 120.0, 90.0, 120.0, rot, OUT_W, OUT_H, flip)
            exact = ((float_warp(smooth, m, OUT_W, OUT_H) / 255.0 - MEAN) / STD).transpose(2, 0, 1)
            np.testing.assert_allclose(run_kernel(smooth, m, (0, 0)), exact, rtol=0,
                                       atol=0.1 * LEVEL)
            exact = ((float_warp(noise, m, OUT_W, OUT_H) / 255.0 - MEAN) / STD).transpose(2, 0, 1)
            errs.append((run_kernel(noise, m, (0, 0)) - exact) / LEVEL)
    errs = np.concatenate([e.ravel() for e in errs])
    assert np.abs(errs).max() < 255 / 32 + 0.01  # two axes x 1/64 px x 255 levels/px
    assert abs(errs.mean()) < 0.02 and 0.3 < errs.std() < 2.0


def test_matches_opencv_warp_affine():
    """OpenCV's warpAffine (INTER_LINEAR, constant border 0): OpenCV 4 quantises positions
    to 1/32 px as this kernel does, OpenCV 5 samples at exact positions; either way, on a
    smooth image the two agree within OpenCV's rounding to uint8 and the quantisation."""
    ys, xs = np.mgrid[0:240, 0:320]  # the crops stay inside: no step to the fill value
    roi = np.stack([xs * 0.8, ys * 1.0, (xs + ys) * 0.5], -1).clip(0, 255).astype(np.uint8)
    roi = np.ascontiguousarray(roi)
    for rot in (0.0, 25.0, -70.0):
        for flip in (False, True):
            m = udp_matrix(160.0, 120.0, 90.0, 120.0, rot, OUT_W, OUT_H, flip)
            cv = cv2.warpAffine(roi, m, (OUT_W, OUT_H), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
            ref = ((cv / 255.0 - MEAN) / STD).transpose(2, 0, 1)
            # 1/64 px of a 1-level/px ramp plus OpenCV's rounding to uint8: < 0.6 levels.
            np.testing.assert_allclose(run_kernel(roi, m, (0, 0)), ref, rtol=0,
                                       atol=0.6 * LEVEL)


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
        # The sums are integers on both sides; only the final multiply-add may differ (FMA).
        np.testing.assert_allclose(run_kernel(roi, m.astype(np.float64), anchor),
                                   np.asarray(py, np.float32), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 1, 3), (1, 2, 3)])
def test_tiny_windows(shape):
    """Windows narrower than two pixels: every tap goes through the border branch."""
    roi = np.full(shape, 200, np.uint8)
    m = udp_matrix(0.0, 0.0, 3.0, 4.0, 10.0, OUT_W, OUT_H, False)
    np.testing.assert_allclose(run_kernel(roi, m, (0, 0)),
                               normalised(fixed_point_sums(roi, m, (0, 0), OUT_W, OUT_H)),
                               rtol=0, atol=2e-6)


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
    image, bit for bit (positions are in source px), == the fixed-point reference."""
    from dali_pose.kernels.warp import warp_op

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
        sums = fixed_point_sums(image, m, (0, 0), OUT_W, OUT_H)
        if dtype == "uint8":  # rounded half up, not truncated
            half = 1 << (2 * INTER_BITS - 1)
            np.testing.assert_array_equal(
                alone[0], ((sums + half) >> (2 * INTER_BITS)).transpose(2, 0, 1))
        else:
            np.testing.assert_allclose(alone[0], normalised(sums), rtol=0, atol=2e-6)


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
    operator, for two launch shapes (grid-stride loops): the same integer sums, so uint8
    crops are equal and float32 ones equal to the last bit but for FMA contraction."""
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
            if dtype == "uint8":
                np.testing.assert_array_equal(got, cpu)
            else:
                np.testing.assert_allclose(got, cpu, rtol=0, atol=1e-6)


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
