"""NODA: the pool builder (dali_pose.tools.build_pool) and the online paste kernel
(dali_pose.kernels.noda).

Placement statistics (radius in [R/3, R], scale in the configured range), the coverage rules
checked on the *rendered* alpha, compiled == NUMBA_DISABLE_JIT=1 == CUDA simulator (== GPU when
present), PTX compile, the kernel inside DALI, and pools built from real people
(../shared/data/coco-sample, ochuman-sample; skipped when absent).
"""
from __future__ import annotations

import math
import os
import textwrap
import warnings

import numpy as np
import pytest

from dali_pose.config import ConfigError, NodaConfig, load_config
from dali_pose.datasets import COCO, CROWDPOSE, MPII
from dali_pose.kernels.noda import joint_roles, noda_op_from
from dali_pose.normalize import IMAGENET_MEAN, IMAGENET_STD

from conftest import Gated, run_python, shared

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (96, 128)
K = 17
HEAD = [0, 1, 2, 3, 4]
LIMB = [7, 8, 9, 10, 13, 14, 15, 16]

# A standing COCO person in unit box coordinates (x right, y down).
TEMPLATE = np.array([
    (0.50, 0.08), (0.46, 0.06), (0.54, 0.06), (0.42, 0.08), (0.58, 0.08),  # head
    (0.33, 0.22), (0.67, 0.22), (0.25, 0.38), (0.75, 0.38), (0.22, 0.52), (0.78, 0.52),
    (0.40, 0.55), (0.60, 0.55), (0.40, 0.76), (0.60, 0.76), (0.40, 0.96), (0.60, 0.96)])


def person_kps(cx, cy, w, h, rng=None, drop=0.0):
    kps = np.zeros((K, 3), np.float32)
    kps[:, 0] = cx + (TEMPLATE[:, 0] - 0.5) * w
    kps[:, 1] = cy + (TEMPLATE[:, 1] - 0.5) * h
    kps[:, 2] = 2
    if rng is not None:
        kps[:, :2] += rng.normal(0, 0.03 * h, (K, 2))
        kps[rng.random(K) < drop, 2] = 0
    return kps


def pool_person(h=90, w=45, rgb=(255, 255, 255), blur=2.0):
    """RGBA crop of a blob-shaped person with a smoothed matte; box centred, 10% margin."""
    import cv2

    mask = np.zeros((h, w), np.uint8)
    bw, bh = w / 1.2, h / 1.2
    cx, cy = (w - 1) / 2, (h - 1) / 2
    cv2.ellipse(mask, (int(cx), int(cy - 0.3 * bh)), (int(0.12 * bw), int(0.12 * bh)), 0, 0,
                360, 1, -1)
    cv2.rectangle(mask, (int(cx - 0.35 * bw), int(cy - 0.2 * bh)),
                  (int(cx + 0.35 * bw), int(cy + 0.45 * bh)), 1, -1)
    a = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), blur)
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., :3] = rgb
    rgba[..., 3] = np.round(a * 255).astype(np.uint8)
    return rgba, np.array([cx, cy, bw, bh], np.float32)


def kernels(size=SIZE, info=COCO, **kw):
    kw.setdefault("prob", 1.0)
    return Gated(noda_op_from(NodaConfig(**kw), size, info), kw["prob"])


def per_person(rgba, pbox):
    """The operator's per-person pool inputs of one person: rgba (1, h, w, 4), box (1, 6)
    (the box and the crop's rows, cols)."""
    h, w = rgba.shape[:2]
    return rgba[None], np.concatenate([pbox, [h, w]]).astype(np.float32)[None]


def run_cpu(kern, image, kps, box, rgba, pbox, draws):
    """One crop through the operator (a sample of P = 1 crops, with its pool person)."""
    out = np.full_like(image[None], np.nan)
    occ = np.full((1, kern.num_joints), np.nan, np.float32)
    kern.cpu_kernel(out, occ, image[None], kps[None], box[None], *per_person(rgba, pbox),
                    draws[None])
    return out[0], occ[0]


def random_case(rng, size=SIZE):
    w, h = size
    th = rng.uniform(0.5, 0.9) * h
    tw = th * rng.uniform(0.35, 0.6)
    cx, cy = rng.uniform(0.35, 0.65) * w, rng.uniform(0.4, 0.6) * h
    kps = person_kps(cx, cy, tw, th, rng, drop=0.15)
    box = np.array([cx, cy, tw, th], np.float32)
    ph = int(rng.integers(40, 140))
    rgba, pbox = pool_person(ph, max(8, int(ph * rng.uniform(0.35, 0.7))))
    return kps, box, rgba, pbox


NORM_WHITE = ((1.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)).astype(np.float32)


def rendered_alpha(out):
    """Alpha actually blended, read back from a zero image under a white pool person."""
    return out[0] / NORM_WHITE[0]


# ------------------------------------------------------------------------------------------
# Basics
# ------------------------------------------------------------------------------------------

def test_joint_roles_per_dataset():
    head, limb, pair = joint_roles(COCO)
    assert list(np.nonzero(head)[0]) == HEAD and list(np.nonzero(limb)[0]) == LIMB
    assert pair == (5, 6)  # COCO has no neck joint: mid-shoulder stands in
    head, limb, pair = joint_roles(CROWDPOSE)
    assert list(np.nonzero(head)[0]) == [12, 13] and pair == (-1, -1)
    assert list(np.nonzero(limb)[0]) == [2, 3, 4, 5, 8, 9, 10, 11]
    head, limb, pair = joint_roles(MPII)
    assert list(np.nonzero(head)[0]) == [8, 9] and pair == (-1, -1)


def test_config_errors_and_layout():
    with pytest.raises(ConfigError, match="noda.prob"):
        kernels(prob=2.0)
    with pytest.raises(ConfigError, match="noda.scale_range"):
        kernels(scale_range=(1.2, 0.8))
    with pytest.raises(ConfigError, match="noda.max_tries"):
        kernels(max_tries=0)
    k = kernels(max_tries=7)
    assert k.num_draws == 1 + 3 * 7 and k.num_joints == K
    # per crop (P, ...): image, occluded, keypoints, box, the pool person, draws
    assert tuple(p.ndim for p in k.outputs) == (4, 2)
    assert tuple(p.ndim for p in k.inputs) == (4, 3, 2, 4, 2, 2)


# ------------------------------------------------------------------------------------------
# Placement statistics
# ------------------------------------------------------------------------------------------

def test_placement_radius_angle_and_scale_ranges():
    """Proposals (first try always accepted here: a huge pool person covers every limb and the
    target has no head joints): radius ~ U[R/3, R], scale ~ U[0.8, 1.2], angle ~ U[0, 2pi)."""
    rng = np.random.default_rng(1)
    kern = kernels(max_tries=1)
    rgba = np.full((200, 200, 4), 255, np.uint8)
    pbox = np.array([99.5, 99.5, 4.0, 8.0], np.float32)  # tiny box -> scale >> 1: covers all
    n = 3000
    rho, rel, ang = [], [], []
    for _ in range(n):
        kps, box, _, _ = random_case(rng)
        kps[HEAD + [5, 6], 2] = 0
        kps[LIMB, 2] = 2
        p = kern.params(kps, box, rgba, pbox, kern.draws(rng))
        assert p["ok"] and p["attempt"] == 0
        big_r = 0.5 * math.hypot(box[2], box[3])
        assert big_r / 3 - 1e-9 <= p["rho"] <= big_r + 1e-9
        assert math.isclose(math.hypot(p["ox"] - box[0], p["oy"] - box[1]), p["rho"],
                            rel_tol=1e-5, abs_tol=1e-4)
        assert math.isclose(p["s"] * math.hypot(pbox[2], pbox[3]),
                            p["rel_scale"] * math.hypot(box[2], box[3]), rel_tol=1e-9)
        rho.append((p["rho"] - big_r / 3) / (2 * big_r / 3))
        rel.append((p["rel_scale"] - 0.8) / 0.4)
        ang.append(p["angle"] / (2 * math.pi))
    for u in (rho, rel, ang):
        u = np.sort(u)
        assert u[0] >= 0 and u[-1] <= 1
        ks = np.max(np.abs(u - (np.arange(1, n + 1) - 0.5) / n))
        assert ks < 1.95 / math.sqrt(n)  # Kolmogorov-Smirnov, p = 0.001


def test_coverage_rules_hold_on_the_rendered_alpha():
    """Over many random cases: head and neck never covered, >= 1 limb covered, occluded_out
    == (rendered alpha > 0.5) at every annotated joint on the crop; failures leave the crop
    and report nothing; accepted placements stay within range."""
    rng = np.random.default_rng(2)
    kern = kernels()
    w, h = SIZE
    zero = np.zeros((3, h, w), np.float32)
    n_ok = n_limb = 0
    n = 600
    for _ in range(n):
        kps, box, rgba, pbox = random_case(rng)
        draws = kern.draws(rng)
        out, occ = run_cpu(kern, zero, kps, box, rgba, pbox, draws)
        p = kern.params(kps, box, rgba, pbox, draws)
        np.testing.assert_array_equal(occ, p["covered"].astype(np.float32))
        if not p["ok"]:
            np.testing.assert_array_equal(out, zero)
            assert not occ.any()
            continue
        n_ok += 1
        big_r = 0.5 * math.hypot(box[2], box[3])
        assert big_r / 3 - 1e-9 <= p["rho"] <= big_r + 1e-9
        assert 0.8 <= p["rel_scale"] <= 1.2 and 0 <= p["attempt"] < 10
        a = rendered_alpha(out)
        px = np.floor(kps[:, 0] + 0.5).astype(int)
        py = np.floor(kps[:, 1] + 0.5).astype(int)
        on = (kps[:, 2] > 0) & (px >= 0) & (px < w) & (py >= 0) & (py < h)
        for j in range(K):
            if not on[j]:
                assert occ[j] == 0
                continue
            aj = a[py[j], px[j]]
            if occ[j]:
                assert aj > 0.5 - 1e-5
            else:
                assert aj <= 0.5 + 1e-5
        assert not occ[HEAD].any()
        assert occ[LIMB].any()
        n_limb += occ[LIMB].sum()
        if kps[5, 2] > 0 and kps[6, 2] > 0:  # the mid-shoulder neck
            nx = int(np.floor((kps[5, 0] + kps[6, 0]) / 2 + 0.5))
            ny = int(np.floor((kps[5, 1] + kps[6, 1]) / 2 + 0.5))
            if 0 <= nx < w and 0 <= ny < h:
                assert a[ny, nx] <= 0.5 + 1e-5
    assert n_ok > 0.4 * n, n_ok  # the rules are satisfiable most of the time
    assert n_limb >= n_ok


def test_pasted_pixels_are_normalised_and_scaled():
    """A fully opaque pool pixel becomes its normalised colour; the pasted area scales as s^2."""
    rng = np.random.default_rng(3)
    kern = kernels()
    w, h = SIZE
    rgb = (200, 100, 50)
    want = ((np.asarray(rgb) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)
    checked = 0
    for _ in range(200):
        kps, box, _, _ = random_case(rng)
        rgba, pbox = pool_person(100, 50, rgb=rgb, blur=1.0)
        image = rng.standard_normal((3, h, w)).astype(np.float32)
        draws = kern.draws(rng)
        out, occ = run_cpu(kern, image, kps, box, rgba, pbox, draws)
        p = kern.params(kps, box, rgba, pbox, draws)
        if not p["ok"]:
            continue
        # pixels mapping deep inside the opaque body: exactly the normalised colour
        ys, xs = np.mgrid[0:h, 0:w]
        u = (xs - p["ox"]) / p["s"] + pbox[0]
        v = (ys - p["oy"]) / p["s"] + pbox[1]
        ui, vi = np.floor(u).astype(int), np.floor(v).astype(int)
        inside = (ui >= 0) & (ui < 49) & (vi >= 0) & (vi < 99)
        opaque = np.zeros_like(inside)
        a = rgba[..., 3]
        full = (a == 255)
        full4 = full[:-1, :-1] & full[1:, :-1] & full[:-1, 1:] & full[1:, 1:]
        opaque[inside] = full4[vi[inside], ui[inside]]
        if opaque.sum() < 10:
            continue
        np.testing.assert_allclose(out[:, opaque], np.repeat(want[:, None], opaque.sum(), 1),
                                   rtol=0, atol=1e-5)
        # area with alpha > 0.5, measured on the untouched-vs-changed map of a zero image
        out0, _ = run_cpu(kern, np.zeros_like(image), kps, box, rgba, pbox, draws)
        area = (np.abs(out0[0]) > 0.5 * abs(want[0])).sum()
        src = (a > 127).sum()
        x0, x1 = p["ox"] - p["s"] * pbox[0], p["ox"] + p["s"] * (50 - pbox[0])
        y0, y1 = p["oy"] - p["s"] * pbox[1], p["oy"] + p["s"] * (100 - pbox[1])
        if x0 > 0 and y0 > 0 and x1 < w - 1 and y1 < h - 1:  # fully on the crop
            assert abs(area / (src * p["s"] ** 2) - 1) < 0.1
            checked += 1
    assert checked >= 5


def test_prob_and_impossible_rules():
    rng = np.random.default_rng(4)
    kern = kernels(prob=0.4)
    n = 3000
    applied = np.mean([kern.params(*random_case(rng), kern.draws(rng))["applied"]
                       for _ in range(n)])
    assert abs(applied - 0.4) < 4 * math.sqrt(0.24 / n)
    # no annotated limb joint: the rules cannot be met, nothing is pasted
    kern = kernels()
    for _ in range(30):
        kps, box, rgba, pbox = random_case(rng)
        kps[LIMB, 2] = 0
        image = rng.standard_normal((3, SIZE[1], SIZE[0])).astype(np.float32)
        out, occ = run_cpu(kern, image, kps, box, rgba, pbox,
                           kern.draws(rng))
        np.testing.assert_array_equal(out, image)
        assert not occ.any()


# ------------------------------------------------------------------------------------------
# Compiled == pure Python == CUDA
# ------------------------------------------------------------------------------------------

_SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    from dali_pose.config import NodaConfig
    from dali_pose.datasets import COCO
    from dali_pose.kernels.noda import noda_op_from
    z = np.load(sys.argv[1])
    mode = sys.argv[3]
    kern = noda_op_from(NodaConfig(), (40, 56), COCO)
    res = {}
    n = z["kps"].shape[0]
    for i in range(n):
        rgba = z["rgba_%d" % i]
        pbox = np.concatenate([z["pbox"][i], rgba.shape[:2]]).astype(np.float32)
        args = (z["image"][i][None], z["kps"][i][None], z["box"][i][None], rgba[None],
                pbox[None], z["draws"][i][None])
        if mode == "cpu":
            launches = [None]
        else:
            from numba import cuda
            gpu = cuda.jit(kern.gpu_run)
            launches = [((2, 1, 1), (32, 1, 1)), ((1, 1, 1), (5, 1, 1))]
        for j, launch in enumerate(launches):
            out = np.full_like(args[0], np.nan)
            occ = np.full((1, 17), np.nan, np.float32)
            if launch is None:
                kern.cpu_kernel(out, occ, *args)
            else:
                gpu[launch[0], launch[1]](out, occ, *args)
            res["img_%d_%d" % (i, j)] = out[0]
            res["occ_%d_%d" % (i, j)] = occ[0]
    np.savez(sys.argv[2], **res)
""")


def _inputs(tmp_path, n=4):
    rng = np.random.default_rng(6)
    size = (40, 56)
    kern = kernels(size, prob=0.9)
    arrays = {"image": rng.standard_normal((n, 3, size[1], size[0])).astype(np.float32),
              "kps": [], "box": [], "pbox": [],
              "draws": np.stack([kern.draws(rng) for _ in range(n)])}
    for i in range(n):
        kps, box, rgba, pbox = random_case(rng, size)
        arrays["kps"].append(kps)
        arrays["box"].append(box)
        arrays["pbox"].append(pbox)
        arrays[f"rgba_{i}"] = rgba
    for key in ("kps", "box", "pbox"):
        arrays[key] = np.stack(arrays[key])
    path = tmp_path / "inputs.npz"
    np.savez(path, **arrays)
    return path, arrays, kern


def _run_script(inputs, out, mode, env_extra):
    run_python(_SCRIPT, (inputs, out, mode), env_extra)
    return dict(np.load(out))


def _compiled(arrays, kern, i):
    return run_cpu(kern, arrays["image"][i], arrays["kps"][i], arrays["box"][i],
                   arrays[f"rgba_{i}"], arrays["pbox"][i], arrays["draws"][i])


def test_disable_jit_matches_compiled(tmp_path):
    inputs, arrays, kern = _inputs(tmp_path)
    py = _run_script(inputs, tmp_path / "py.npz", "cpu", {"NUMBA_DISABLE_JIT": "1"})
    pasted = 0
    for i in range(arrays["kps"].shape[0]):
        out, occ = _compiled(arrays, kern, i)
        np.testing.assert_array_equal(py[f"occ_{i}_0"], occ)
        np.testing.assert_array_equal(py[f"img_{i}_0"], out)
        pasted += (out != arrays["image"][i]).any()
    assert pasted >= 2


def test_cuda_simulator_matches_cpu(tmp_path):
    inputs, arrays, kern = _inputs(tmp_path, n=3)
    sim = _run_script(inputs, tmp_path / "sim.npz", "sim",
                      {"NUMBA_ENABLE_CUDASIM": "1", "NUMBA_DISABLE_JIT": "1"})
    for i in range(3):
        out, occ = _compiled(arrays, kern, i)
        for j in range(2):
            np.testing.assert_array_equal(sim[f"occ_{i}_{j}"], occ)
            np.testing.assert_array_equal(sim[f"img_{i}_{j}"], out)


def _cuda_available():
    try:
        from numba import cuda
        return cuda.is_available()
    except Exception:  # pragma: no cover
        return False


def test_gpu_run_compiles_to_ptx(monkeypatch):
    """Type-checks gpu_run for CUDA with DALI's argument types, without a GPU."""
    import types as pytypes

    from numba import cuda, types
    from numba.cuda.cudadrv.error import CudaSupportError, NvvmSupportError

    if not _cuda_available():
        import numba.cuda.dispatcher as disp
        monkeypatch.setattr(disp, "get_current_device",
                            lambda: pytypes.SimpleNamespace(compute_capability=(8, 0)))
    f = types.float32
    sig = types.void(types.Array(f, 4, "C"), types.Array(f, 2, "C"), types.Array(f, 4, "C"),
                     types.Array(f, 3, "C"), types.Array(f, 2, "C"),
                     types.Array(types.uint8, 4, "C"), types.Array(f, 2, "C"),
                     types.Array(f, 2, "C"))
    try:
        ptx, _ = cuda.compile_ptx(kernels((192, 256)).gpu_run, sig, cc=(8, 0))
    except (NvvmSupportError, CudaSupportError) as e:  # pragma: no cover
        pytest.skip(f"no NVVM to compile with: {e}")
    assert ".entry" in ptx


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU")
def test_gpu_matches_cpu_on_device():  # pragma: no cover - needs a GPU
    from numba import cuda

    rng = np.random.default_rng(7)
    size = (192, 256)
    kern = kernels(size)
    gpu = cuda.jit(kern.gpu_run)
    for _ in range(10):
        kps, box, rgba, pbox = random_case(rng, size)
        image = rng.standard_normal((3, size[1], size[0])).astype(np.float32)
        draws = kern.draws(rng)
        d_out = cuda.to_device(np.full_like(image[None], np.nan))
        d_occ = cuda.to_device(np.full((1, K), np.nan, np.float32))
        gpu[kern.launch(cuda.get_current_device().MULTIPROCESSOR_COUNT)](
            d_out, d_occ, *(cuda.to_device(a) for a in (image[None], kps[None], box[None],
                                                        *per_person(rgba, pbox),
                                                        draws[None])))
        out, occ = run_cpu(kern, image, kps, box, rgba, pbox, draws)
        np.testing.assert_array_equal(d_occ.copy_to_host()[0], occ)
        # GPU may contract a*b+c into FMA: equal up to float rounding
        np.testing.assert_allclose(d_out.copy_to_host()[0], out, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Inside DALI
# ------------------------------------------------------------------------------------------

def _batch_source(batch):
    return lambda: list(batch)


def _dali_case(device):
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn
    from nvidia.dali.pipeline import Pipeline

    from dali_pose.loader.graph import dali_operator

    rng = np.random.default_rng(8)
    kern = kernels()
    bs = 4
    cases = [random_case(rng) for _ in range(bs)]
    images = [rng.standard_normal((3, SIZE[1], SIZE[0])).astype(np.float32) for _ in range(bs)]
    draws = [kern.draws(rng) for _ in range(bs)]
    cols = [images, [c[0] for c in cases], [c[1] for c in cases], [c[2] for c in cases],
            [c[3] for c in cases], draws]
    pool = [per_person(c[2], c[3]) for c in cases]
    dali_cols = [[a[None] for a in c] for c in cols]  # samples of P = 1
    dali_cols[3:5] = [[p[0] for p in pool], [p[1] for p in pool]]
    pipe = Pipeline(batch_size=bs, num_threads=1, device_id=None if device == "cpu" else 0)
    with pipe:
        srcs = [fn.external_source(source=_batch_source(c), batch=True, device=device)
                for c in dali_cols]
        out, occ = dali_operator(kern.op, device, 0 if device == "gpu" else None)(*srcs)
        pipe.set_outputs(out, occ)
    pipe.build()
    out, occ = pipe.run()
    if device == "gpu":
        out, occ = out.as_cpu(), occ.as_cpu()
    pasted = 0
    for i in range(bs):
        ref_out, ref_occ = run_cpu(kern, *(c[i] for c in cols[:1]), *cases[i][:2],
                                   cases[i][2], cases[i][3], draws[i])
        assert np.array(occ[i]).shape == (1, K)
        np.testing.assert_array_equal(np.array(occ[i])[0], ref_occ)
        np.testing.assert_allclose(np.array(out[i])[0], ref_out, rtol=0, atol=1e-5)
        pasted += ref_occ.any()
    assert pasted >= 1


def test_cpu_run_inside_dali():
    _dali_case("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU")
def test_gpu_run_inside_dali():  # pragma: no cover - needs a GPU
    _dali_case("gpu")


# ------------------------------------------------------------------------------------------
# The pool, from real people
# ------------------------------------------------------------------------------------------

def _coco_overrides(name="coco-sample", ann="test_coco.json"):
    d = shared(name)
    return [f"data.train_ann={d / ann}", f"data.train_images={d}"]


@pytest.fixture(scope="module")
def coco_pools(tmp_path_factory):
    """Pools at the three levels built through the CLI from coco-sample."""
    from dali_pose.loader.pool import load_pool
    from dali_pose.tools.build_pool import main

    d = shared("coco-sample")
    out = {}
    tmp = tmp_path_factory.mktemp("pools")
    for level in ("box", "cardboard", "grabcut"):
        path = tmp / f"{level}.npz"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rc = main(["--out", str(path), "--level", level,
                       "--set", f"data.train_ann={d / 'test_coco.json'}",
                       "--set", f"data.train_images={d}"])
        assert rc == 0
        out[level] = load_pool(str(path))
    return out


def test_pool_layout_and_levels(coco_pools):
    for level, pool in coco_pools.items():
        assert pool.level == level and pool.dataset == "coco"
        assert len(pool) == 12  # coco-sample: 12 people with keypoints, none tiny
        assert pool.skipped == {}
        for i in range(len(pool)):
            rgba, kps, box = pool.get(i)
            h, w, c = rgba.shape
            assert c == 4 and max(h, w) <= 256 and rgba.dtype == np.uint8
            a = rgba[..., 3]
            assert a.max() == 255 and a[0, 0] == 0 and a[-1, -1] == 0  # margin is background
            lab = kps[:, 2] > 0
            assert lab.sum() >= 6
            pb = pool.person_boxes[i]
            # crop centred on the annotation box, with a 10% margin each side: the centre is
            # on (w - 1) / 2 by construction (measured 0.0; float32 leaves 1e-3 ample); the
            # height is ceil(1.2 box) rescaled by <= 1, i.e. < 1 px over (measured max 0.956)
            assert abs(pb[0] - (w - 1) / 2) < 1e-3 and abs(pb[1] - (h - 1) / 2) < 1e-3
            assert abs(pb[3] * 1.2 - h) < 1.0 + 1e-3
            fg = a > 127
            ys, xs = np.mgrid[0:h, 0:w]
            in_box = (np.abs(xs - pb[0]) <= pb[2] / 2 + 1) & (np.abs(ys - pb[1]) <= pb[3] / 2 + 1)
            assert not (fg & ~in_box).any()  # every level stays inside the person box
            share = fg.sum() / (pb[2] * pb[3])
            if level == "box":
                assert share > 0.93
            else:
                assert 0.08 < share < 0.97, (level, i, share)
            # the placement box: same centre convention, aspect-fixed (w/h = 192/256)
            assert math.isclose(box[2] / box[3], 0.75, rel_tol=0.02)  # px rounding


def test_grabcut_differs_from_box_and_cardboard(coco_pools):
    """GrabCut refines the cardboard seed: the masks are not the same."""
    diff = []
    for i in range(len(coco_pools["grabcut"])):
        g = coco_pools["grabcut"].get(i)[0][..., 3] > 127
        c = coco_pools["cardboard"].get(i)[0][..., 3] > 127
        diff.append((g ^ c).mean())
    assert np.mean(diff) > 0.02


def test_pool_skips_with_counts(tmp_path, capsys):
    from dali_pose.tools.build_pool import build_pool

    cfg = load_config(None, _coco_overrides())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arrays = build_pool(cfg, "box", min_height=150, min_joints=15)
    out = capsys.readouterr().out
    assert "box under 150 px tall" in out and "fewer than 15 annotated joints" in out
    assert len(arrays["offsets"]) < 12


def test_ochuman_pool_and_paste_on_real_crops(tmp_path, coco_pools):
    """Real people pasted onto real crops obey the rules."""
    import cv2

    from dali_pose.geometry import apply_affine, udp_matrix
    from dali_pose.datasets import load_index
    from dali_pose.tools.build_pool import build_pool

    cfg = load_config(None, _coco_overrides("ochuman-sample", "test_ochuman.json"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arrays = build_pool(cfg, "grabcut")
        assert len(arrays["offsets"]) == 5
        cfg = load_config(None, _coco_overrides())
        index = load_index(cfg, "train")
    pool = coco_pools["grabcut"]
    w, h = cfg.model.input_size
    kern = kernels((w, h))
    mean = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, np.float32)[:, None, None]
    rng = np.random.default_rng(9)
    n_ok = 0
    for i in range(len(index)):
        c, s = index.center[i], index.scale[i]
        m = udp_matrix(c[0], c[1], s[0], s[1], 0.0, w, h, False)
        img = cv2.cvtColor(cv2.imread(index.image_paths[i]), cv2.COLOR_BGR2RGB)
        crop = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR)
        x = np.ascontiguousarray(((crop / 255.0).transpose(2, 0, 1) - mean) / std, np.float32)
        kps = index.keypoints[i].copy()
        kps[:, :2] = apply_affine(m, kps[:, :2])
        pad = cfg.data.padding
        box = np.array([*apply_affine(m, c), s[0] / pad * m[0, 0], s[1] / pad * m[1, 1]],
                       np.float32)
        for _ in range(3):
            j = int(rng.integers(len(pool)))
            rgba, _, pbox = pool.get(j)
            draws = kern.draws(rng)
            out, occ = run_cpu(kern, x, kps, box, rgba, pbox, draws)
            p = kern.params(kps, box, rgba, pbox, draws)
            np.testing.assert_array_equal(occ, p["covered"].astype(np.float32))
            if p["ok"]:
                n_ok += 1
                assert not occ[HEAD].any() and occ[LIMB].any()
                assert p.get("neck_alpha", 0.0) <= 0.5
                assert (out != x).any()
            else:
                np.testing.assert_array_equal(out, x)
    assert n_ok >= 6
