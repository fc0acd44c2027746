"""The DALI graph: one definition, two backends, built from named stages.

    read (file bytes, boxes, keypoints, draws) --> geometry (numba crop operator)
        --> decode --> warp + normalise --> occlusion (numba) --> targets (numba)

A DALI sample is one image to decode and the P >= 1 people to crop from it: all its people
of the epoch when images are decoded once (``loader.decode_per_image``), else one person
(P = 1). Every per-person output has that leading P axis; the loader flattens them.

Each stage is a function from named DataNodes to named DataNodes; :func:`build_graph`
composes them, and the benchmark composes prefixes of the same functions to time stages.
What the graph does is fixed by a :class:`GraphSpec` (:func:`graph_spec` reads the config
once): the numba operators (:class:`~dali_pose.kernels.op.NumbaOp`, each described next to
its kernel) and the backend. Decode + warp + normalise has two implementations of the same
maths:

* a numba warp (``spec.warp``): ``decoders.image_slice`` decodes only the source window the
  sample's crops touch (on the GPU: nvJPEG, ``mixed``), and one numba kernel warps +
  normalises every crop (CPU: information dropping fused in when NODA does not have to
  paste first; GPU: its CUDA variant). The CPU fast path, and every per-image graph;
* ``decoders.image`` (``mixed`` = nvJPEG on the GPU) + ``warp_affine`` (matrix in DALI's
  half-pixel convention, from the crop operator) + ``crop_mirror_normalize``, one person
  per sample: the GPU's per-person graph; on the CPU the slow reference path
  (``loader.fast_cpu: false``).

Numba operators get the CUDA variant of their kernel on the GPU. Each ``NumbaOp`` is
compiled into a DALI operator once per device (:func:`dali_operator`), and shared by every
pipeline that uses it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import numpy as np
from nvidia.dali import Pipeline, fn, pipeline_def, types

from ..codecs import build_codec
from ..geometry import AugParams
from ..kernels.crop import crop_op
from ..kernels.dropping import dropping_op_from
from ..kernels.noda import noda_op_from
from ..kernels.op import NumbaOp
from ..kernels.warp import warp_op
from ..normalize import IMAGENET_MEAN, IMAGENET_STD
from .compile_cache import CachedNumbaFunction as NumbaFunction  # compiled once per machine

DALI_TYPES = {"float32": types.FLOAT, "int32": types.INT32, "int64": types.INT64,
              "uint8": types.UINT8}


# ------------------------------------------------------------------------- the spec ----

@dataclass(frozen=True)
class GraphSpec:
    """Everything the graph does: backend, operators, sizes (``input_size`` is [w, h]).

    ``warp`` is the numba warp (None: DALI's decode + ``warp_affine``); ``dropping`` the
    information-dropping operator when it runs on its own (not fused into ``warp``);
    ``noda`` the NODA paste; all None where not configured (validation has none).
    ``per_image``: a sample is an image and all its people (else one person);
    ``image_dtype``: float32, float16 (normalised) or uint8 (intensities).
    """

    train: bool
    gpu: bool
    input_size: Tuple[int, int]
    num_joints: int
    crop: NumbaOp
    targets: NumbaOp
    warp: Optional[NumbaOp] = None
    dropping: Optional[NumbaOp] = None
    noda: Optional[NumbaOp] = None
    per_image: bool = False
    image_dtype: str = "float32"

    @property
    def n_occlusion(self) -> int:
        """Draws per sample of the information-dropping kernel (fused or not); 0 if none."""
        op = self.dropping or self.warp
        return op.num_draws if op is not None else 0


def graph_spec(cfg, info, *, train: bool, gpu: bool) -> GraphSpec:
    """The graph ``cfg`` configures for ``info``'s dataset, one split and backend.

    Only the values an operator uses go into it (its factory is cached on them), so a
    config differing elsewhere (output folder, epochs, probabilities) gets the very same
    operators and compiles nothing.
    """
    w, h = (int(v) for v in cfg.model.input_size)
    noda_on = train and cfg.noda.prob > 0
    per_image = cfg.loader.decode_per_image and not noda_on  # NODA: one pool person each
    numba_warp = per_image or (not gpu and cfg.loader.fast_cpu)
    dtype = cfg.loader.image_dtype
    warp_dtype = "uint8" if dtype == "uint8" else "float32"  # float16: a cast after
    codec = build_codec(cfg.model)
    crop = crop_op((w, h), float(cfg.data.padding), tuple(int(v) for v in info.flip_index),
                   tuple(j in info.upper_body for j in range(info.num_joints)),
                   AugParams.of(cfg.aug) if train else None, numba_warp, codec.unbiased)
    dropping = noda = None
    if train and cfg.occlusion.method != "none":
        dropping = dropping_op_from(cfg.occlusion, (w, h), warp_dtype)
    if noda_on:
        noda = noda_op_from(cfg.noda, (w, h), info)
    warp = None
    if numba_warp:  # information dropping fuses into the CPU warp unless NODA pastes first
        fuse = not gpu and dropping is not None and noda is None
        warp = warp_op((w, h), dropping if fuse else None, warp_dtype)
        dropping = None if fuse else dropping
    return GraphSpec(train=train, gpu=gpu, input_size=(w, h), num_joints=info.num_joints,
                     crop=crop, targets=codec.target_op(info.num_joints), warp=warp,
                     dropping=dropping, noda=noda, per_image=per_image, image_dtype=dtype)


# --------------------------------------------------------------- numba operators -------

def _plain(fn_):
    """DALI compiles run/setup functions itself: hand it the Python function."""
    return getattr(fn_, "py_func", fn_)


def allow_newer_cuda_toolkit() -> None:
    """DALI 2.4 gates GPU numba operators on a table of known CUDA majors (11, 12); a CUDA 13
    toolkit is refused before anything is compiled. numba-cuda itself supports it, so add the
    running major to the table with the CUDA 12 minimum. Applied wherever dali_pose builds a
    GPU numba operator (:func:`dali_operator`)."""
    from numba import cuda
    from nvidia.dali.plugin import numba as dali_numba

    table = dali_numba.minimal_numba_version
    major = cuda.runtime.get_version()[0]
    if major not in table and major > max(table):
        table[major] = table[max(table)]


def _sm_count(device_id) -> int:
    from numba import cuda

    with cuda.gpus[int(device_id or 0)]:
        return int(cuda.get_current_device().MULTIPROCESSOR_COUNT)


@functools.lru_cache(maxsize=None)
def dali_operator(op: NumbaOp, device: str = "cpu", device_id=None) -> NumbaFunction:
    """The DALI operator of ``op`` on ``device`` ('cpu' or 'gpu'), compiled once and shared
    by every pipeline (compiling one takes 1-3 s on a small CPU; the object holds only the
    compiled functions' addresses and can be called in many pipelines)."""
    kw = dict(setup_fn=_plain(op.setup), out_types=[DALI_TYPES[p.dtype] for p in op.outputs],
              in_types=[DALI_TYPES[p.dtype] for p in op.inputs],
              outs_ndim=[p.ndim for p in op.outputs], ins_ndim=[p.ndim for p in op.inputs])
    if device == "gpu":
        if op.gpu_run is None:
            raise ValueError(f"{op.name}: has no CUDA variant")
        allow_newer_cuda_toolkit()
        blocks, threads = op.launch(_sm_count(device_id))
        return NumbaFunction(run_fn=_plain(op.gpu_run), device="gpu", blocks=list(blocks),
                             threads_per_block=list(threads), **kw)
    return NumbaFunction(run_fn=_plain(op.cpu_run), device="cpu", batch_processing=False,
                         **kw)


def forget_compiled() -> None:
    """Drop the shared DALI operators, so that the next graph compiles its own (the
    benchmark times cold builds)."""
    dali_operator.cache_clear()


def apply(op: NumbaOp, *inputs, gpu: bool = False):
    """Run ``op`` on ``inputs`` (DataNodes, in ``op.inputs`` order); returns its outputs as
    a tuple in ``op.outputs`` order."""
    if len(inputs) != len(op.inputs):
        raise ValueError(f"{op.name}: {len(inputs)} inputs given, it takes "
                         f"{[p.name for p in op.inputs]}")
    device_id = Pipeline.current().device_id if gpu else None
    out = dali_operator(op, "gpu" if gpu else "cpu", device_id)(
        *([x.gpu() for x in inputs] if gpu else inputs))
    return tuple(out) if isinstance(out, (list, tuple)) else (out,)


# ------------------------------------------------------------------------- stages ------

class Read(NamedTuple):
    """The external sources' outputs (see :mod:`.sources`); absent fields are None."""

    jpeg: object
    center: object
    scale: object
    keypoints: object
    row: object
    uniform: object
    normal: object
    occlusion_draws: object = None
    noda_draws: object = None
    pool_rgba: object = None
    pool_box: object = None


class Geometry(NamedTuple):
    """The crop operator's outputs (:mod:`dali_pose.kernels.crop`): ``window`` is its last
    output, the source window (fused path) or DALI's warp matrix."""

    matrix: object
    keypoints: object
    crop_box: object
    person_box: object
    flipped: object
    window: object


class Outputs(NamedTuple):
    """What the graph returns, per sample (the loader turns them into the batch dict):
    image (P, 3, H, W) float32 / float16 / uint8; heatmap (P, C, h, w); target_weight
    (P, K); keypoints (P, K, 3) crop px; matrix (P, 2, 3) source px -> crop px; crop_box
    (P, 4) [cx, cy, w, h] source px; flipped (P,) int32; row (P,) int64 index rows;
    occluded (P, K) float32."""

    image: object
    heatmap: object
    target_weight: object
    keypoints: object
    matrix: object
    crop_box: object
    flipped: object
    row: object
    occluded: object


def _external(source, device: str = "cpu"):
    names, dtypes = zip(*source.fields)
    outs = fn.external_source(source=source, num_outputs=len(names), batch=True,
                              dtype=[DALI_TYPES[t] for t in dtypes], device=device)
    return dict(zip(names, outs))


def read_stage(spec: GraphSpec, source, pool_source=None) -> Read:
    nodes = _external(source)
    if pool_source is not None:
        nodes.update(_external(pool_source, "gpu" if spec.gpu else "cpu"))
    return Read(**nodes)


def geometry_stage(spec: GraphSpec, read: Read) -> Geometry:
    """The crop operator (CPU: it reads host data)."""
    # stored pixel order: COCO / MPII / CrowdPose annotate the pixels as stored, whatever an
    # EXIF orientation tag says (HRNet reads with cv2.IMREAD_IGNORE_ORIENTATION)
    shape = fn.peek_image_shape(read.jpeg, adjust_orientation=False)
    return Geometry(*apply(spec.crop, read.center, read.scale, read.keypoints, read.uniform,
                           read.normal, shape))


def decode_stage(spec: GraphSpec, read: Read, geometry: Geometry):
    """RGB uint8 (h, w, 3): the source window of the sample's crops (numba warp), or the
    whole image; on the GPU by nvJPEG (``mixed``)."""
    device = "mixed" if spec.gpu else "cpu"
    if spec.warp is not None:
        return fn.decoders.image_slice(read.jpeg, geometry.window[0:2], geometry.window[2:4],
                                       axis_names="WH", normalized_anchor=False,
                                       normalized_shape=False, output_type=types.RGB,
                                       adjust_orientation=False, device=device)
    return fn.decoders.image(read.jpeg, device=device, output_type=types.RGB,
                             adjust_orientation=False)


def warp_stage(spec: GraphSpec, read: Read, geometry: Geometry, decoded):
    """The crops (P, 3, H, W): float32 normalised or uint8 (information dropped too when
    fused into the CPU warp)."""
    if spec.warp is not None:
        inputs = [geometry.matrix, decoded, geometry.window]
        if spec.warp.num_draws:
            inputs += [geometry.keypoints, read.occlusion_draws]
        if spec.gpu:  # the CUDA warp reads the window on the device, the crop op is CPU's
            return apply(spec.warp, *inputs, gpu=True)[0]
        return apply(spec.warp, *inputs)[0]
    w, h = spec.input_size  # one person per sample: DALI's warp_affine
    warped = fn.warp_affine(decoded, matrix=fn.reshape(geometry.window, shape=[2, 3]),
                            size=[h, w], fill_value=0, inverse_map=False,
                            interp_type=types.INTERP_LINEAR)
    if spec.image_dtype == "uint8":
        image = fn.crop_mirror_normalize(warped, output_layout="CHW", dtype=types.UINT8)
    else:
        image = fn.crop_mirror_normalize(warped, mean=[255.0 * v for v in IMAGENET_MEAN],
                                         std=[255.0 * v for v in IMAGENET_STD],
                                         output_layout="CHW", dtype=types.FLOAT)
    return fn.reshape(image, shape=[1, 3, h, w], layout="FCHW")


def occlusion_stage(spec: GraphSpec, read: Read, geometry: Geometry, image):
    """NODA, then information dropping, where configured; (image, occluded (K,))."""
    occluded = None
    if spec.noda is not None:
        image, occluded = apply(spec.noda, image, geometry.keypoints, geometry.person_box,
                                read.pool_rgba, read.pool_box, read.noda_draws, gpu=spec.gpu)
    if spec.dropping is not None:
        (image,) = apply(spec.dropping, image, geometry.keypoints, read.occlusion_draws,
                         gpu=spec.gpu)
    if occluded is None:  # (P, K) zeros: no NODA
        occluded = fn.cast(geometry.keypoints[:, :, 2] * 0.0, dtype=types.FLOAT)
        if spec.gpu:
            occluded = occluded.gpu()
    return image, occluded


def targets_stage(spec: GraphSpec, geometry: Geometry):
    """(heatmap (C, h, w), target_weight (K,)) of the codec's target operator."""
    return apply(spec.targets, geometry.keypoints, geometry.person_box, gpu=spec.gpu)


def build_graph(spec: GraphSpec, source, pool_source=None) -> Outputs:
    """Define the whole graph inside a ``pipeline_def`` body."""
    if Pipeline.current() is None:
        raise RuntimeError("build_graph defines DALI operators: call it inside a "
                           "pipeline_def body (see make_pipeline)")
    read = read_stage(spec, source, pool_source)
    geometry = geometry_stage(spec, read)
    image = warp_stage(spec, read, geometry, decode_stage(spec, read, geometry))
    image, occluded = occlusion_stage(spec, read, geometry, image)
    heatmap, weight = targets_stage(spec, geometry)
    if spec.image_dtype == "float16":
        image = fn.cast(image, dtype=types.FLOAT16)
    return Outputs(image, heatmap, weight, geometry.keypoints, geometry.matrix,
                   geometry.crop_box, geometry.flipped, read.row, occluded)


def make_pipeline(spec: GraphSpec, source, pool_source=None, *, batch_size: int,
                  num_threads: int, device_id=None, prefetch: int = 2, seed: int = 0,
                  graph=build_graph):
    """A built DALI pipeline running ``graph(spec, source, pool_source)`` (by default the
    whole graph; the benchmark passes prefixes). All randomness comes from the sources, so
    ``seed`` only seeds DALI's own generator, which no operator here uses."""
    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  seed=seed, prefetch_queue_depth=prefetch)
    def pose_pipeline():
        return tuple(graph(spec, source, pool_source))

    pipe = pose_pipeline()
    pipe.build()
    return pipe
