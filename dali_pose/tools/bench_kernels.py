"""Per-kernel timings for ``python -m dali_pose.tools.bench --kernels``: each numba kernel next to
the classic loader's way of doing the same job, on the same inputs, in one run.

For a batch of ``batch`` samples (default 256; keypoints, matrices and draws from a seeded
``np.random.default_rng``, 60% of the crops rotated as in training):

* ``warp``: the CPU warp + normalise (``kernels.warp``) as the loader's operator runs
  it, from the crop's own decoded window (spread, then warped), vs ``cv2.warpAffine`` of the
  whole image followed by the reference loader's ``normalize_chw``; unrotated and rotated
  crops apart. (Per image, one spread serves all the image's crops.)
* ``targets``: the CPU target kernel vs the reference's NumPy targets; on a GPU also the
  CUDA kernel launched once per sample with its own launch shape, as DALI launches it.
* ``occlusion``: the CPU occlusion kernel (in place, as fused into the warp) vs the
  reference's NumPy mask + fill; on a GPU the CUDA kernel, per sample.

Times are milliseconds per batch (median of ``rounds``, after one warm-up round); GPU times
end with a device synchronisation. The issue's GPU target is < 0.2 ms per batch of 256.
"""
from __future__ import annotations

import dataclasses
import statistics
import time

import numpy as np

from ..codecs import build_codec
from ..geometry import invert_affine, source_roi, udp_matrix
from ..kernels.dropping import dropping_op_from
from ..kernels.warp import warp_normalize
from ..normalize import IMAGENET_MEAN, IMAGENET_STD
from .reference import normalize_chw, occlude_numpy, targets_numpy

SOURCE_HW = (480, 640)  # COCO-like source image


def _median_ms(fn, rounds: int, sync=None) -> float:
    fn()  # warm-up (and compilation)
    if sync is not None:
        sync()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def _inputs(cfg, batch: int, num_joints: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    w, h = cfg.model.input_size
    kps = np.zeros((batch, num_joints, 3), np.float32)
    kps[:, :, 0] = rng.uniform(0, w - 1, (batch, num_joints))
    kps[:, :, 1] = rng.uniform(0, h - 1, (batch, num_joints))
    kps[:, :, 2] = rng.choice([0.0, 1.0, 2.0], (batch, num_joints), p=[0.2, 0.2, 0.6])
    ys, xs = np.mgrid[0:SOURCE_HW[0], 0:SOURCE_HW[1]]
    image = np.stack([xs % 256, ys % 256, (xs + ys) % 256], -1).astype(np.uint8)
    image = np.ascontiguousarray(image + rng.integers(0, 32, image.shape, dtype=np.uint8))
    mats = []
    for i in range(batch):
        rotated = rng.random() < 0.6
        sw = float(rng.uniform(100, 300))
        mats.append(udp_matrix(float(rng.uniform(200, 440)), float(rng.uniform(150, 330)),
                               sw, sw * h / w, float(rng.normal(0, 30)) if rotated else 0.0,
                               float(w), float(h), bool(rng.random() < 0.5)))
    rotated = np.array([m[0, 1] != 0.0 for m in mats])
    return kps, image, mats, rotated, rng


def kernel_times(cfg, num_joints: int, batch: int = 256, rounds: int = 5, gpu: bool = False,
                 log=print) -> dict:
    """Milliseconds per batch for each kernel and its classic counterpart (see module doc)."""
    import cv2

    w, h = (int(v) for v in cfg.model.input_size)
    kps, image, mats, rotated, rng = _inputs(cfg, batch, num_joints)
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    report = {"batch": batch, "rounds": rounds, "unit": "ms per batch"}

    crops = np.empty((batch, 3, h, w), np.float32)
    warp = {}
    for name, sel in (("unrotated", ~rotated), ("rotated", rotated)):
        rows = np.flatnonzero(sel)
        if len(rows) == 0:
            continue

        windows = {}  # the decoder's output for each crop: its source window
        for i in rows:
            x0, y0, x1, y1 = source_roi(invert_affine(mats[i]), float(w), float(h),
                                        image.shape[1], image.shape[0], 1)
            windows[i] = (np.ascontiguousarray(image[y0:y1, x0:x1]), x0, y0)

        def ours():
            for i in rows:
                roi, x0, y0 = windows[i]
                warp_normalize(crops[i], roi, mats[i], x0, y0, mean, std)

        def classic():
            for i in rows:
                normalize_chw(cv2.warpAffine(image, mats[i], (w, h), flags=cv2.INTER_LINEAR,
                                             borderMode=cv2.BORDER_CONSTANT, borderValue=0))

        a, b = _median_ms(ours, rounds), _median_ms(classic, rounds)
        warp[name] = {"samples": int(len(rows)), "numba_ms": a, "opencv_numpy_ms": b,
                      "per_sample_numba_ms": a / len(rows), "speedup": b / a}
    report["warp"] = warp
    log(f"  warp: {warp}")

    codec = build_codec(cfg.model)
    t = codec.target_op(num_joints)
    tw, th = t.hm_size
    hm = np.empty((batch, t.channels, th, tw), np.float32)
    wt = np.empty((batch, num_joints), np.float32)
    boxes = np.zeros((batch, 4), np.float32)  # unused by the target kernels

    def targets_cpu():  # one call for all: the kernel loops over its P people
        t.cpu_kernel(hm, wt, kps, boxes)

    def targets_classic():
        for i in range(batch):
            targets_numpy(kps[i], codec)

    a, b = _median_ms(targets_cpu, rounds), _median_ms(targets_classic, rounds)
    report["targets"] = {"target": cfg.model.target, "numba_cpu_ms": a, "numpy_ms": b, "speedup": b / a}

    occ_cfg = cfg.occlusion
    if occ_cfg.method == "none":  # time AID, the method the speed targets name
        occ_cfg = dataclasses.replace(occ_cfg, method="aid")
    occ = dropping_op_from(occ_cfg, cfg.model.input_size)
    draws = rng.random((batch, occ.num_draws)).astype(np.float32)
    draws[:, 0] = 1.0  # the gate open for every sample: the kernels' worst case

    def occ_cpu():  # in place, as the fused warp runs it
        occ.cpu_kernel(crops, crops, kps, draws)

    def occ_classic():
        for i in range(batch):
            occlude_numpy(crops[i], occ, kps[i], draws[i])

    a, b = _median_ms(occ_cpu, rounds), _median_ms(occ_classic, rounds)
    report["occlusion"] = {"method": occ.method, "numba_cpu_ms": a, "numpy_ms": b,
                           "speedup": b / a}

    if gpu:
        from numba import cuda

        d_hm, d_wt = cuda.to_device(hm), cuda.to_device(wt)
        d_kps, d_boxes = cuda.to_device(kps), cuda.to_device(boxes)
        d_crops, d_draws = cuda.to_device(crops), cuda.to_device(draws)
        sms = cuda.get_current_device().MULTIPROCESSOR_COUNT
        t_gpu = cuda.jit(t.gpu_run)[t.launch(sms)]
        o_gpu = cuda.jit(occ.gpu_run)[occ.launch(sms)]

        def targets_gpu():  # one launch per sample of one person, as DALI launches them
            for i in range(batch):
                t_gpu(d_hm[i:i + 1], d_wt[i:i + 1], d_kps[i:i + 1], d_boxes[i:i + 1])

        def occ_gpu():
            for i in range(batch):
                o_gpu(d_crops[i:i + 1], d_crops[i:i + 1], d_kps[i:i + 1], d_draws[i:i + 1])

        report["targets"]["cuda_ms"] = _median_ms(targets_gpu, rounds, cuda.synchronize)
        report["occlusion"]["cuda_ms"] = _median_ms(occ_gpu, rounds, cuda.synchronize)
        # correctness next to speed: the GPU kernels reproduce the CPU ones
        targets_cpu()
        report["targets"]["cuda_max_abs_diff"] = float(np.abs(d_hm.copy_to_host() - hm).max())
    log(f"  targets: {report['targets']}")
    log(f"  occlusion: {report['occlusion']}")
    return report


def format_kernels(r: dict) -> str:
    lines = [f"kernels (ms per batch of {r['batch']}, median of {r['rounds']}):",
             "kernel               ours (numba CPU)  classic (OpenCV/NumPy)  speed-up  CUDA",
             "-------------------  ----------------  ----------------------  --------  ------"]
    for name, v in r["warp"].items():
        lines.append(f"{'warp ' + name:<19}  {v['numba_ms']:>16.2f}  {v['opencv_numpy_ms']:>22.2f}"
                     f"  {v['speedup']:>7.2f}x  {'-':>6}  ({v['samples']} samples)")
    for name in ("targets", "occlusion"):
        v = r[name]
        cuda_ms = f"{v['cuda_ms']:.3f}" if "cuda_ms" in v else "-"
        label = f"{name} ({v.get('target') or v.get('method')})"
        lines.append(f"{label:<19}  {v['numba_cpu_ms']:>16.2f}  {v['numpy_ms']:>22.2f}"
                     f"  {v['speedup']:>7.2f}x  {cuda_ms:>6}")
    return "\n".join(lines)
