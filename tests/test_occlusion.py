"""Information-dropping kernels (dali_pose.kernels.dropping): AID and its comparison family.

Geometry statistics from the kernels' own parameter functions, kernel output == an independent
NumPy mask, compiled == NUMBA_DISABLE_JIT=1 == CUDA simulator (== real GPU when present), PTX
compile of every gpu_run, and the CPU kernel inside a DALI pipeline.
"""
from __future__ import annotations

import math
import os
import textwrap

import numpy as np
import pytest

from dali_pose.codecs import build_codec
from dali_pose.config import ConfigError, OcclusionConfig
from dali_pose.kernels.dropping import QUANT, dropping_op_from
from dali_pose.normalize import IMAGENET_MEAN, IMAGENET_STD, black_fill
from dali_pose.tools.reference import occlusion_mask

from conftest import Gated, run_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 17
METHODS = ("aid", "cutout", "erasing", "hide_and_seek", "gridmask")
FULL = (192, 256)
SMALL = (47, 63)


def kernels(method, size=SMALL, **kw):
    kw.setdefault("prob", 1.0)
    return Gated(dropping_op_from(OcclusionConfig(method=method, **kw), size), kw["prob"])


def random_kps(rng, size, n=1, k=K):
    """Crop keypoints: mostly on the crop, some off it, some unlabelled."""
    w, h = size
    kps = np.zeros((n, k, 3), np.float32)
    kps[..., 0] = rng.uniform(-0.1 * w, 1.1 * w, (n, k))
    kps[..., 1] = rng.uniform(-0.1 * h, 1.1 * h, (n, k))
    kps[..., 2] = rng.choice([0, 1, 2], (n, k), p=[0.2, 0.2, 0.6])
    return kps


def on_crop(kps, size):
    w, h = size
    px, py = np.floor(kps[:, 0] + 0.5), np.floor(kps[:, 1] + 0.5)
    return (kps[:, 2] > 0) & (px >= 0) & (px < w) & (py >= 0) & (py < h)


def random_image(rng, size):
    w, h = size
    return rng.standard_normal((3, h, w)).astype(np.float32)


def run_cpu(kern, image, kps, draws):
    """One crop through the operator (a sample of P = 1 crops)."""
    out = np.full_like(image[None], np.nan)  # DALI outputs are uninitialised
    kern.cpu_kernel(out, image[None], kps[None], draws[None])
    return out[0]


def expected(kern, image, kps, draws):
    m = occlusion_mask(kern.op, kps, draws, (image.shape[2], image.shape[1]))
    fill = np.asarray(kern.fill, np.float32)[:, None, None]
    return np.where(m[None], fill, image), m


# ------------------------------------------------------------------------------------------
# Basics
# ------------------------------------------------------------------------------------------

def test_black_fill_is_zero_intensity():
    fill = np.asarray(black_fill(), np.float64)
    np.testing.assert_allclose(fill * IMAGENET_STD + np.asarray(IMAGENET_MEAN), 0.0,
                               atol=1e-12)
    assert kernels("aid").fill == black_fill()


def test_num_draws_layout():
    assert kernels("aid", num=3).num_draws == 1 + 5 * 3
    assert kernels("cutout", num=2).num_draws == 1 + 3 * 2
    assert kernels("erasing").num_draws == 1 + 4 * 10
    # one draw per patch at the smallest positive patch size: 12 x 16 patches of 16 px
    assert kernels("hide_and_seek", FULL).num_draws == 2 + 12 * 16
    assert kernels("hide_and_seek", FULL, grid_sizes=(0,)).num_draws == 2
    assert kernels("gridmask").num_draws == 4


def test_launch_shape():
    for m in METHODS:
        kern = kernels(m)
        for t in kern.launch(132):
            assert len(t) == 3 and all(isinstance(v, int) and v > 0 for v in t)
        assert kern.launch(132)[1][0] * kern.launch(132)[1][1] <= 1024


def test_config_errors():
    with pytest.raises(ConfigError, match="occlusion.method"):
        kernels("blur")
    with pytest.raises(ConfigError, match="occlusion.prob"):
        kernels("aid", prob=1.5)
    with pytest.raises(ConfigError, match="occlusion.num"):
        kernels("aid", num=0)
    with pytest.raises(ConfigError, match="occlusion.erasing_area"):
        kernels("erasing", erasing_area=(0.5, 0.1))
    with pytest.raises(ConfigError, match="occlusion.gridmask_period"):
        kernels("gridmask", gridmask_period=(0, 4))


@pytest.mark.parametrize("method", METHODS + ("none",))
def test_kernel_equals_numpy_mask(method):
    """Output == input with exactly the mask's pixels black; inputs untouched."""
    rng = np.random.default_rng(1)
    for size in (SMALL, (64, 48)):
        kern = kernels(method, size, prob=0.8, grid_sizes=(0, 8, 16, 44), num=2)
        n_dropped = 0
        for kps in random_kps(rng, size, n=40):
            image = random_image(rng, size)
            draws = kern.draws(rng)
            before = (image.copy(), kps.copy(), draws.copy())
            out = run_cpu(kern, image, kps, draws)
            ref, m = expected(kern, image, kps, draws)
            np.testing.assert_array_equal(out, ref)
            for a, b in zip(before, (image, kps, draws)):
                np.testing.assert_array_equal(a, b)
            n_dropped += m.sum()
        assert (n_dropped > 0) == (method != "none")


def test_prob_decides_per_sample():
    rng = np.random.default_rng(2)
    kern = kernels("cutout", prob=0.3)
    n = 4000
    applied = [kern.params(None, kern.draws(rng))["applied"] for _ in range(n)]
    assert abs(np.mean(applied) - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n)
    image = random_image(rng, SMALL)
    k0 = kernels("aid", prob=0.0)
    for kps in random_kps(rng, SMALL, n=20):
        draws = k0.draws(rng)
        np.testing.assert_array_equal(run_cpu(k0, image, kps, draws), image)


# ------------------------------------------------------------------------------------------
# AID geometry
# ------------------------------------------------------------------------------------------

def _aid_samples(n, seed=3, **kw):
    rng = np.random.default_rng(seed)
    kern = kernels("aid", FULL, **kw)
    kps_all = random_kps(rng, FULL, n=n)
    out = []
    for kps in kps_all:
        draws = kern.draws(rng)
        out.append((kps, kern.params(kps, draws)))
    return kern, out


def test_aid_radius_range_and_uniform():
    n = 4000
    _, samples = _aid_samples(n)
    w = FULL[0]
    r = np.array([p["discs"][0][4] for _, p in samples])
    half_q = 0.5 / QUANT
    assert r.min() >= 0.1 * w - half_q and r.max() <= 0.2 * w + half_q
    u = np.sort((r - 0.1 * w) / (0.1 * w))
    ks = np.max(np.abs(u - (np.arange(1, n + 1) - 0.5) / n))
    assert ks < 1.95 / math.sqrt(n)  # Kolmogorov-Smirnov, p = 0.001


def test_aid_half_centred_on_a_keypoint():
    """~50% of occluders sit exactly on the chosen keypoint, the rest within the spread."""
    n = 4000
    kern, samples = _aid_samples(n, seed=4)
    w = FULL[0]
    exact = 0
    for kps, p in samples:
        (joint, shifted, cx, cy, _), = p["discs"]
        assert on_crop(kps, FULL)[joint]
        kx = math.floor(kps[joint, 0] * QUANT + 0.5) / QUANT
        ky = math.floor(kps[joint, 1] * QUANT + 0.5) / QUANT
        is_exact = cx == kx and cy == ky
        assert is_exact == (not shifted)
        exact += is_exact
        assert abs(cx - kps[joint, 0]) <= 0.1 * w + 1.0 / QUANT
        assert abs(cy - kps[joint, 1]) <= 0.1 * w + 1.0 / QUANT
    share = exact / n
    assert abs(share - 0.5) < 4 * math.sqrt(0.25 / n), share


def test_aid_shift_spread_and_probability_follow_config():
    n = 2000
    _, samples = _aid_samples(n, seed=5, shift_prob=0.8, shift_spread=0.05)
    d = np.array([(p["discs"][0][2] - kps[p["discs"][0][0], 0],
                   p["discs"][0][3] - kps[p["discs"][0][0], 1], p["discs"][0][1])
                  for kps, p in samples])
    sh = d[:, 2] > 0
    assert abs(sh.mean() - 0.8) < 4 * math.sqrt(0.16 / n)
    off = d[sh, :2] / (0.05 * FULL[0])  # ~ U(-1, 1) per axis
    assert np.abs(off).max() <= 1.0 + 1e-3
    assert np.abs(off.mean(axis=0)).max() < 0.06
    assert abs(np.var(off[:, 0]) - 1 / 3) < 0.03


def test_aid_picks_annotated_keypoints_uniformly():
    rng = np.random.default_rng(6)
    kern = kernels("aid", FULL)
    kps = random_kps(rng, FULL)[0]
    cand = np.nonzero(on_crop(kps, FULL))[0]
    assert len(cand) >= 5
    n = 6000
    picks = np.array([kern.params(kps, kern.draws(rng))["discs"][0][0]
                      for _ in range(n)])
    assert set(picks) <= set(cand)
    counts = np.array([(picks == j).sum() for j in cand])
    chi2 = ((counts - n / len(cand)) ** 2 / (n / len(cand))).sum()
    assert chi2 < 3.0 * len(cand) + 10  # far below the p = 0.001 quantile's ~3x dof


def test_aid_without_candidate_keypoints_leaves_crop():
    rng = np.random.default_rng(7)
    kern = kernels("aid")
    image = random_image(rng, SMALL)
    kps = random_kps(rng, SMALL)[0]
    kps[:, 2] = 0  # nothing annotated
    kps2 = kps.copy()
    kps2[:, 2] = 2
    kps2[:, 0] = -5.0  # annotated, all off the crop
    for k in (kps, kps2):
        draws = kern.draws(rng)
        assert kern.params(k, draws)["discs"] == []
        np.testing.assert_array_equal(run_cpu(kern, image, k, draws), image)


def test_occluded_area_matches_the_disc():
    """Pixels set == lattice points of the disc; within the annulus bound of pi r^2, and
    pi r^2 on aggregate."""
    rng = np.random.default_rng(8)
    kern = kernels("aid", FULL)
    image = np.zeros((3, FULL[1], FULL[0]), np.float32)
    counted, area = 0, 0.0
    for kps in random_kps(rng, FULL, n=300):
        draws = kern.draws(rng)
        p = kern.params(kps, draws)
        if not p["discs"]:
            continue
        _, _, cx, cy, r = p["discs"][0]
        out = run_cpu(kern, image, kps, draws)
        got = int((out[0] != 0).sum())
        inside = r <= cx <= FULL[0] - 1 - r and r <= cy <= FULL[1] - 1 - r
        if inside:
            assert abs(got - math.pi * r * r) <= math.pi * math.sqrt(2) * r + math.pi / 2
            counted += got
            area += math.pi * r * r
        ys, xs = np.mgrid[0:FULL[1], 0:FULL[0]]
        assert got == int((((xs - cx) ** 2 + (ys - cy) ** 2) <= r * r).sum())
    assert area > 0 and abs(counted / area - 1.0) < 0.005


def test_aid_leaves_targets_unchanged():
    """The kernel has no target outputs; the heatmaps built from kps after AID are the ones
    built before it."""
    from dali_pose.config import ModelConfig

    rng = np.random.default_rng(9)
    kern = kernels("aid", FULL)
    t = build_codec(ModelConfig()).target_op(K)

    def targets(kps):
        hm = np.zeros((t.channels, t.hm_size[1], t.hm_size[0]), np.float32)
        wt = np.zeros(K, np.float32)
        t.cpu_kernel(hm[None], wt[None], kps[None], np.zeros((1, 4), np.float32))
        return hm, wt

    for kps in random_kps(rng, FULL, n=5):
        hm0, wt0 = targets(kps)
        image = random_image(rng, FULL)
        out = run_cpu(kern, image, kps, kern.draws(rng))
        assert (out != image).any()
        hm1, wt1 = targets(kps)
        np.testing.assert_array_equal(hm0, hm1)
        np.testing.assert_array_equal(wt0, wt1)


# ------------------------------------------------------------------------------------------
# The comparison family
# ------------------------------------------------------------------------------------------

def test_cutout_centres_uniform_over_the_crop():
    rng = np.random.default_rng(10)
    kern = kernels("cutout", FULL)
    c = np.array([kern.params(None, kern.draws(rng))["discs"][0][2:4]
                  for _ in range(3000)])
    w, h = FULL
    assert c[:, 0].min() >= -0.5 and c[:, 0].max() < w - 0.5
    assert c[:, 1].min() >= -0.5 and c[:, 1].max() < h - 0.5
    assert abs(c[:, 0].mean() - (w - 1) / 2) < 4 * w / math.sqrt(12 * 3000)
    assert abs(c[:, 1].mean() - (h - 1) / 2) < 4 * h / math.sqrt(12 * 3000)


def test_erasing_area_and_aspect_ranges():
    rng = np.random.default_rng(11)
    kern = kernels("erasing", FULL)
    w, h = FULL
    rects = [kern.params(None, kern.draws(rng))["rect"] for _ in range(3000)]
    ok = [r for r in rects if r is not None]
    assert len(ok) >= 0.99 * len(rects)
    fr = []
    for x0, y0, we, he in ok:
        assert 0 <= x0 and x0 + we <= w and 0 <= y0 and y0 + he <= h
        # sides were rounded to whole pixels: the unrounded rectangle met the ranges
        assert (we - 0.5) * (he - 0.5) <= 0.4 * w * h
        assert (we + 0.5) * (he + 0.5) >= 0.02 * w * h
        assert (he - 0.5) / (we + 0.5) <= 3.3 and (he + 0.5) / (we - 0.5) >= 0.3
        fr.append(we * he / (w * h))
    assert min(fr) < 0.03 and max(fr) > 0.37  # the whole range is used


def test_hide_and_seek_grid_sizes_and_hiding():
    rng = np.random.default_rng(12)
    kern = kernels("hide_and_seek", FULL)
    n = 2500
    ps = [kern.params(None, kern.draws(rng)) for _ in range(n)]
    sizes = np.array([p["grid"] for p in ps])
    for g in (0, 16, 32, 44, 56):
        assert abs((sizes == g).mean() - 0.2) < 4 * math.sqrt(0.16 / n), g
    assert set(sizes) == {0, 16, 32, 44, 56}
    hidden = np.concatenate([p["hidden"].ravel() for p in ps if p["grid"] > 0])
    assert abs(hidden.mean() - 0.5) < 4 * math.sqrt(0.25 / hidden.size)
    for p in ps[:50]:
        if p["grid"]:
            g = p["grid"]
            assert p["hidden"].shape == (math.ceil(FULL[1] / g), math.ceil(FULL[0] / g))


def test_gridmask_units_and_kept_share():
    rng = np.random.default_rng(13)
    kern = kernels("gridmask", FULL)
    dropped = []
    for _ in range(300):
        draws = kern.draws(rng)
        d, keep, dx, dy = kern.params(None, draws)["grid"]
        assert 32 <= d <= 96 and keep == math.floor(0.5 * d + 0.5) and 0 <= dx < d
        assert 0 <= dy < d
        m = occlusion_mask(kern.op, None, draws)
        # one full unit drops exactly the (d - keep)^2 square
        assert m[dy:dy + d, dx:dx + d].sum() == (d - keep) ** 2
        dropped.append(m.mean())
    assert abs(np.mean(dropped) - 0.25) < 0.02  # r = 0.5 keeps 1 - (1 - r)^2 = 75%


# ------------------------------------------------------------------------------------------
# Compiled == pure Python == CUDA (simulator, PTX, device)
# ------------------------------------------------------------------------------------------

_SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    from dali_pose.config import OcclusionConfig
    from dali_pose.kernels.dropping import dropping_op_from
    z = np.load(sys.argv[1])
    sim = sys.argv[3] == "sim"
    res = {}
    for method in %r:
        kern = dropping_op_from(OcclusionConfig(method=method, num=2,
                                                grid_sizes=(0, 8, 16)), (40, 28))
        if sim:
            from numba import cuda
            gpu = cuda.jit(kern.gpu_run)
        for i in range(z["kps"].shape[0]):
            launches = [((2, 1, 1), (32, 1, 1)), ((1, 1, 1), (5, 1, 1))]
            if method == "aid" and i == 0:  # more threads than pixels: idle threads
                launches.append(((3, 1, 1), (400, 1, 1)))
            image, kps = z["image"][i], z["kps"][i]
            draws = z["draws_" + method][i]
            if not sim:
                out = np.full_like(image[None], np.nan)
                kern.cpu_kernel(out, image[None], kps[None], draws[None])
                res["%%s_%%d" %% (method, i)] = out[0]
            else:
                for j, (b, t) in enumerate(launches):
                    out = np.full_like(image[None], np.nan)
                    gpu[b, t](out, image[None], kps[None], draws[None])
                    res["%%s_%%d_%%d" %% (method, i, j)] = out[0]
    np.savez(sys.argv[2], **res)
""" % (METHODS,))


def _inputs(tmp_path, n=4):
    rng = np.random.default_rng(14)
    size = (40, 28)
    arrays = {"image": np.stack([random_image(rng, size) for _ in range(n)]),
              "kps": random_kps(rng, size, n=n)}
    for m in METHODS:
        kern = kernels(m, size, prob=0.9, num=2, grid_sizes=(0, 8, 16))
        arrays["draws_" + m] = np.stack([kern.draws(rng) for _ in range(n)])
    path = tmp_path / "inputs.npz"
    np.savez(path, **arrays)
    return path, arrays


def _run_script(inputs, out, mode, env_extra):
    run_python(_SCRIPT, (inputs, out, mode), env_extra)
    return dict(np.load(out))


def _compiled(arrays):
    res = {}
    for m in METHODS:
        kern = kernels(m, (40, 28), prob=0.9, num=2, grid_sizes=(0, 8, 16))
        for i in range(arrays["kps"].shape[0]):
            res[f"{m}_{i}"] = run_cpu(kern, arrays["image"][i], arrays["kps"][i],
                                      arrays["draws_" + m][i])
    return res


def test_disable_jit_matches_compiled(tmp_path):
    inputs, arrays = _inputs(tmp_path)
    py = _run_script(inputs, tmp_path / "py.npz", "cpu", {"NUMBA_DISABLE_JIT": "1"})
    comp = _compiled(arrays)
    changed = 0
    for key, out in comp.items():
        np.testing.assert_array_equal(py[key], out, err_msg=key)
        changed += (out != arrays["image"][int(key.rsplit("_", 1)[1])]).any()
    assert changed >= len(comp) // 2  # the samples exercise real occlusion


def test_cuda_simulator_matches_cpu(tmp_path):
    """gpu_run under NUMBA_ENABLE_CUDASIM=1 == the compiled CPU kernel, for launches with
    fewer threads than pixels (grid-stride loops) and more (idle threads). The factory's own
    launch shape (16k threads) is too slow for the simulator; the GPU tests use it."""
    inputs, arrays = _inputs(tmp_path, n=2)
    sim = _run_script(inputs, tmp_path / "sim.npz", "sim",
                      {"NUMBA_ENABLE_CUDASIM": "1", "NUMBA_DISABLE_JIT": "1"})
    comp = _compiled(arrays)
    n = 0
    for key, out in sim.items():
        method_i = key.rsplit("_", 1)[0]
        np.testing.assert_array_equal(out, comp[method_i], err_msg=key)
        n += 1
    assert n == 2 * 2 * len(METHODS) + 1


def _cuda_available():
    try:
        from numba import cuda
        return cuda.is_available()
    except Exception:  # pragma: no cover
        return False


def ptx_signature(n_out_3d, ins):
    from numba import types
    t = {"f4": types.Array(types.float32, 4, "C"), "f3": types.Array(types.float32, 3, "C"), "f2": types.Array(types.float32, 2, "C"),
         "f1": types.Array(types.float32, 1, "C"), "u3": types.Array(types.uint8, 3, "C")}
    return types.void(*[t[a] for a in n_out_3d + ins])


@pytest.fixture
def ptx_compiler(monkeypatch):
    """cuda.compile_ptx that works without a GPU: numba compiles device functions (our njit
    helpers) for the *current device's* compute capability, so pretend one is there."""
    import types as pytypes

    from numba import cuda
    from numba.cuda.cudadrv.error import CudaSupportError, NvvmSupportError

    if not _cuda_available():
        import numba.cuda.dispatcher as disp
        monkeypatch.setattr(disp, "get_current_device",
                            lambda: pytypes.SimpleNamespace(compute_capability=(8, 0)))

    def compile_ptx(fn, sig):
        try:
            ptx, _ = cuda.compile_ptx(fn, sig, cc=(8, 0))
        except (NvvmSupportError, CudaSupportError) as e:  # pragma: no cover
            pytest.skip(f"no NVVM to compile with: {e}")
        return ptx

    return compile_ptx


@pytest.mark.parametrize("method", METHODS)
def test_gpu_run_compiles_to_ptx(method, ptx_compiler):
    """Type-checks gpu_run for CUDA with exactly DALI's argument types (C-contiguous)."""
    kern = kernels(method, FULL)
    ptx = ptx_compiler(kern.gpu_run, ptx_signature(["f4"], ["f4", "f3", "f2"]))
    assert ".entry" in ptx


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", METHODS)
def test_gpu_matches_cpu_on_device(method):  # pragma: no cover - needs a GPU
    from numba import cuda

    rng = np.random.default_rng(15)
    kern = kernels(method, FULL, prob=0.9)
    gpu = cuda.jit(kern.gpu_run)
    for kps in random_kps(rng, FULL, n=8):
        image = random_image(rng, FULL)
        draws = kern.draws(rng)
        d_out = cuda.to_device(np.full_like(image[None], np.nan))
        gpu[kern.launch(cuda.get_current_device().MULTIPROCESSOR_COUNT)](
            d_out, cuda.to_device(image[None]), cuda.to_device(kps[None]),
            cuda.to_device(draws[None]))
        np.testing.assert_array_equal(d_out.copy_to_host()[0], run_cpu(kern, image, kps, draws))


# ------------------------------------------------------------------------------------------
# Inside DALI
# ------------------------------------------------------------------------------------------

def _batch_source(batch):
    return lambda: list(batch)


def _dali_run(kern, images, kps_batch, draws_batch, device):
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn
    from nvidia.dali.pipeline import Pipeline

    from dali_pose.loader.graph import dali_operator

    bs = len(images)
    pipe = Pipeline(batch_size=bs, num_threads=1, device_id=None if device == "cpu" else 0)
    with pipe:
        srcs = [fn.external_source(source=_batch_source(b), batch=True, device=device)
                for b in (images, kps_batch, draws_batch)]
        (out,) = (dali_operator(kern.op, device, 0 if device == "gpu" else None)(*srcs),)
        pipe.set_outputs(out)
    pipe.build()
    (out,) = pipe.run()
    if device == "gpu":
        out = out.as_cpu()
    return [np.array(out[i])[0] for i in range(bs)]


def _dali_case(method, device):
    rng = np.random.default_rng(16)
    kern = kernels(method, SMALL, prob=0.9)
    images = [random_image(rng, SMALL) for _ in range(3)]
    kps_batch = list(random_kps(rng, SMALL, n=3))
    draws = [kern.draws(rng) for _ in range(3)]
    outs = _dali_run(kern, [a[None] for a in images], [a[None] for a in kps_batch],
                     [a[None] for a in draws], device)
    for out, image, kps, d in zip(outs, images, kps_batch, draws):
        np.testing.assert_array_equal(out, run_cpu(kern, image, kps, d))


def test_cpu_run_inside_dali():
    _dali_case("aid", "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["aid", "hide_and_seek"])
def test_gpu_run_inside_dali(method):  # pragma: no cover - needs a GPU
    _dali_case(method, "gpu")
