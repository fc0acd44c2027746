"""The DALI graph: one definition, two backends.

    source (file bytes, box, keypoints) --> crop geometry (numba, CPU; random draws from
    fn.random.*) --> decode + warp + normalise --> occlusion (numba) --> targets (numba)

Decode + warp + normalise has two implementations of the same maths:
  * ``warp='dali'``: ``decoders.image`` (``mixed`` = nvJPEG on the GPU) + ``warp_affine``
    (matrix conjugated to DALI's half-pixel convention) + ``crop_mirror_normalize``.
    The GPU backend always uses it; on the CPU it is the slow reference path.
  * ``warp='fused'`` (CPU only): ``decoders.image_slice`` decodes only the source window the
    crop touches, and one numba kernel warps + normalises into CHW float32.
Every other operator is shared; numba operators get the CUDA variant of their kernel on GPU.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from nvidia.dali import Pipeline, fn, pipeline_def, types
from nvidia.dali.plugin.numba import NumbaFunction

from .geometry import NUM_NORMAL, NUM_UNIFORM
from .kernels.crop import make_crop_kernel
from .kernels.heatmap import make_target_kernels
from .kernels.warp import IMAGENET_MEAN, IMAGENET_STD, make_warp_kernel

# Pipeline outputs, in order; the iterator turns them into the batch dict's tensors.
OUTPUTS = ("image", "heatmap", "target_weight", "keypoints", "matrix", "box", "flipped",
           "ids", "occluded")


@dataclass(frozen=True)
class GraphSpec:
    train: bool
    gpu: bool
    warp: str  # 'dali' | 'fused'


def _plain(fn_):
    """DALI compiles run/setup functions itself: hand it the Python function."""
    return getattr(fn_, "py_func", fn_)


def _allow_newer_cuda_toolkit() -> None:
    """DALI 2.4 gates GPU numba operators on a table of known CUDA majors (11, 12); a CUDA 13
    toolkit is refused before anything is compiled. numba-cuda itself supports it, so add the
    running major to the table with the CUDA 12 minimum. (Not yet exercised on a GPU here:
    tests/test_gpu.py is the check.)"""
    from numba import cuda
    from nvidia.dali.plugin import numba as dali_numba

    table = dali_numba.minimal_numba_version
    major = cuda.runtime.get_version()[0]
    if major not in table and major > max(table):
        table[major] = table[max(table)]


@functools.lru_cache(maxsize=16)
def _compiled_ops(cfg, info, spec: GraphSpec, device_id) -> dict:
    """name -> NumbaFunction operator, shared by every graph of this (config, dataset, spec,
    device). Compiling one numba operator takes 1-3 s on a small CPU; an operator object
    holds only the compiled functions' addresses and can be called in many pipelines, so
    the loader's lanes (and later loaders of the same config and split) compile each kernel
    once instead of once per pipeline."""
    return {}


def forget_compiled() -> None:
    """Drop the shared operators, so that the next loader compiles its own (the benchmark
    times cold builds)."""
    _compiled_ops.cache_clear()


def _numba_op(ops: dict, name: str, inputs, run, setup, out_types, in_types, outs_ndim,
              ins_ndim, gpu=False, gpu_run=None, blocks=None, threads=None):
    """A numba operator on the CPU, or with the kernel's CUDA variant on the GPU; ``ops``
    (from ``_compiled_ops``) keeps it under ``name`` for the next graph that needs it."""
    op = ops.get(name)
    if op is None:
        if gpu:
            _allow_newer_cuda_toolkit()
            op = NumbaFunction(run_fn=_plain(gpu_run), setup_fn=_plain(setup),
                               out_types=out_types, in_types=in_types, outs_ndim=outs_ndim,
                               ins_ndim=ins_ndim, device="gpu", blocks=list(blocks),
                               threads_per_block=list(threads))
        else:
            op = NumbaFunction(run_fn=_plain(run), setup_fn=_plain(setup),
                               out_types=out_types, in_types=in_types, outs_ndim=outs_ndim,
                               ins_ndim=ins_ndim, device="cpu", batch_processing=False)
        ops[name] = op
    out = op(*([x.gpu() for x in inputs] if gpu else inputs))
    return tuple(out) if isinstance(out, (list, tuple)) else (out,)


# Points where ``build_graph`` can stop early, for the benchmark's per-stage timing.
STAGES = ("source", "full decode", "geometry", "decode", "warp+normalize")


def build_graph(cfg, info, source, pool_source, spec: GraphSpec, stop_after=None):
    """Define the graph inside a ``pipeline_def`` body; returns the OUTPUTS tuple.

    ``stop_after`` (one of STAGES) returns the graph's outputs at that point instead:
    the benchmark times growing prefixes to attribute cost to stages.
    """
    if stop_after is not None and stop_after not in STAGES:
        raise ValueError(f"stop_after must be one of {STAGES}, got {stop_after!r}")
    k = info.num_joints
    in_w, in_h = cfg.model.input_size
    pipe = Pipeline.current()
    if pipe is None:
        raise RuntimeError("build_graph defines DALI operators: call it inside a "
                           "pipeline_def body (see make_pipeline)")
    ops = _compiled_ops(cfg, info, spec, pipe.device_id)
    jpegs, center, scale, kps, ids = fn.external_source(
        source=source, num_outputs=5, batch=True,
        dtype=[types.UINT8, types.FLOAT, types.FLOAT, types.FLOAT, types.INT64])
    pool = ()
    if spec.train and pool_source is not None:  # NODA: one pool person per sample
        pool = fn.external_source(source=pool_source, num_outputs=2, batch=True,
                                  dtype=[types.UINT8, types.FLOAT],
                                  device="gpu" if spec.gpu else "cpu")
    if stop_after == "source":
        return (jpegs, center, scale, kps, ids, *pool)
    if stop_after == "full decode":
        return (fn.decoders.image(jpegs, device="mixed" if spec.gpu else "cpu",
                                  output_type=types.RGB),)
    u = fn.random.uniform(range=[0.0, 1.0], shape=[NUM_UNIFORM])
    n = fn.random.normal(shape=[NUM_NORMAL])
    shape = fn.peek_image_shape(jpegs)
    fused = spec.warp == "fused"
    crop_run, crop_setup = make_crop_kernel(cfg, info, spec.train, roi_outputs=fused)
    matrix, kps_crop, box, flipped, extra0, extra1 = _numba_op(
        ops, "crop", [center, scale, kps, u, n, shape], crop_run, crop_setup,
        [types.FLOAT, types.FLOAT, types.FLOAT, types.INT32,
         types.INT32 if fused else types.FLOAT, types.INT32],
        [types.FLOAT, types.FLOAT, types.FLOAT, types.FLOAT, types.FLOAT, types.INT64],
        [2, 2, 1, 1, 1 if fused else 2, 1], [1, 1, 2, 1, 1, 1])
    if stop_after == "geometry":
        return matrix, kps_crop, box, flipped, extra0, extra1

    # Information dropping (AID & co.) fuses into the CPU warp unless NODA must paste first.
    occ = None
    if spec.train and cfg.occlusion.method != "none":
        from .kernels.occlusion import make_occlusion_kernels

        occ = make_occlusion_kernels(cfg.occlusion, cfg.model.input_size)
    fuse_occlusion = fused and occ is not None and not pool
    if fused:
        roi = fn.decoders.image_slice(jpegs, extra0, extra1, axis_names="WH",
                                      normalized_anchor=False, normalized_shape=False,
                                      output_type=types.RGB, device="cpu")
        if stop_after == "decode":
            return (roi,)
        inputs = [roi, matrix, extra0]
        in_types, ins_ndim = [types.UINT8, types.FLOAT, types.INT32], [3, 2, 1]
        if fuse_occlusion:
            inputs += [kps_crop, fn.random.uniform(range=[0.0, 1.0], shape=[occ.num_draws])]
            in_types += [types.FLOAT, types.FLOAT]
            ins_ndim += [2, 1]
        warp_run, warp_setup = make_warp_kernel(
            cfg.model.input_size, occlude=occ.cpu_kernel if fuse_occlusion else None)
        (image,) = _numba_op(ops, "warp+occlusion" if fuse_occlusion else "warp", inputs,
                             warp_run, warp_setup, [types.FLOAT], in_types, [3], ins_ndim)
    else:
        decoded = fn.decoders.image(jpegs, device="mixed" if spec.gpu else "cpu",
                                    output_type=types.RGB)
        if stop_after == "decode":
            return (decoded,)
        warped = fn.warp_affine(decoded, matrix=extra0, size=[in_h, in_w], fill_value=0,
                                inverse_map=False, interp_type=types.INTERP_LINEAR)
        image = fn.crop_mirror_normalize(
            warped, mean=[255.0 * v for v in IMAGENET_MEAN],
            std=[255.0 * v for v in IMAGENET_STD], output_layout="CHW", dtype=types.FLOAT)
    if stop_after == "warp+normalize":
        return (image,)

    occluded = fn.constant(fdata=np.zeros(k, np.float32).tolist(), shape=[k],
                           dtype=types.FLOAT, device="gpu" if spec.gpu else "cpu")
    if spec.train:
        image, occluded = _occlusion(cfg, info, image, kps_crop, box, occluded, pool,
                                     None if fuse_occlusion else occ, spec, ops)

    t = make_target_kernels(cfg.model, k)
    heatmap, weight = _numba_op(ops, "targets", [kps_crop, box], t.cpu_run, t.setup,
                                [types.FLOAT, types.FLOAT], [types.FLOAT, types.FLOAT],
                                [3, 1], [2, 1], gpu=spec.gpu, gpu_run=t.gpu_run,
                                blocks=t.blocks, threads=t.threads_per_block)
    if cfg.loader.fp16:
        image = fn.cast(image, dtype=types.FLOAT16)
    return image, heatmap, weight, kps_crop, matrix, box, flipped, ids, occluded


def _occlusion(cfg, info, image, kps_crop, box, occluded, pool, occ, spec, ops):
    """NODA, then ``occ`` (AID / the information-dropping family), when configured."""
    if pool:
        from .kernels.occlusion import make_noda_kernels

        nk = make_noda_kernels(cfg.noda, cfg.model.input_size, info)
        draws = fn.random.uniform(range=[0.0, 1.0], shape=[nk.num_draws])
        image, occluded = _numba_op(
            ops, "noda", [image, kps_crop, box, pool[0], pool[1], draws], nk.cpu_run, nk.setup,
            [types.FLOAT, types.FLOAT],
            [types.FLOAT, types.FLOAT, types.FLOAT, types.UINT8, types.FLOAT, types.FLOAT],
            [3, 1], [3, 2, 1, 3, 1, 1], gpu=spec.gpu, gpu_run=nk.gpu_run, blocks=nk.blocks,
            threads=nk.threads_per_block)
    if occ is not None:
        draws = fn.random.uniform(range=[0.0, 1.0], shape=[occ.num_draws])
        (image,) = _numba_op(ops, "occlusion", [image, kps_crop, draws], occ.cpu_run,
                             occ.setup, [types.FLOAT], [types.FLOAT, types.FLOAT, types.FLOAT],
                             [3], [3, 2, 1],
                             gpu=spec.gpu, gpu_run=occ.gpu_run, blocks=occ.blocks,
                             threads=occ.threads_per_block)
    return image, occluded


def make_pipeline(cfg, info, source, pool_source, spec: GraphSpec, batch_size: int,
                  seed: int, device_id, num_threads: int):
    @pipeline_def(batch_size=batch_size, num_threads=num_threads,
                  device_id=device_id, seed=seed, prefetch_queue_depth=cfg.loader.prefetch)
    def pose_pipeline():
        return build_graph(cfg, info, source, pool_source, spec)

    pipe = pose_pipeline()
    pipe.build()
    return pipe
