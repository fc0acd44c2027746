"""The DALI graph: one definition, two backends, built from named stages.

    read (file bytes, boxes, keypoints, draws) --> geometry (numba crop operator)
        --> decode the window --> warp + normalise (numba) --> occlusion (numba)
        --> targets (numba)

A DALI sample is one image and the P >= 1 people cropped from it (its people of the
epoch; P = 1 is no special case). Every per-person output has that leading P axis; the
loader scatters the crops to their batches (:mod:`.scatter`).

Each stage is a function from named DataNodes to named DataNodes; :func:`build_graph`
composes them, and the benchmark composes prefixes of the same functions to time stages.
What the graph does is fixed by a :class:`GraphSpec` (:func:`graph_spec` reads the config
once): the numba operators (:class:`~dali_pose.kernels.op.NumbaOp`, each described next to
its kernel) and the backend. ``decoders.image_slice`` decodes only the source window the
sample's crops touch (on the GPU: nvJPEG, ``mixed``), and the fixed-point warp
(:mod:`dali_pose.kernels.warp`, CPU or CUDA twin) cuts and normalises every crop of it.
DALI's own ``warp_affine`` is not part of this graph: :mod:`.oracle` builds it as a test
oracle and benchmark baseline.

Numba operators get the CUDA variant of their kernel on the GPU. Each ``NumbaOp`` is
compiled into a DALI operator once per device (:func:`dali_operator`), and shared by every
pipeline that uses it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from types import SimpleNamespace
from typing import NamedTuple, Optional, Tuple

from nvidia.dali import Pipeline, fn, pipeline_def, types

from ..codecs import build_codec
from ..geometry import AugParams
from ..kernels.crop import crop_op
from ..kernels.dropping import dropping_op_from
from ..kernels.noda import noda_op_from
from ..kernels.op import NumbaOp
from ..kernels.warp import warp_op
from .compile_cache import CachedNumbaFunction as NumbaFunction  # compiled once per machine

DALI_TYPES = {"float32": types.FLOAT, "int32": types.INT32, "int64": types.INT64,
              "uint8": types.UINT8}


# ------------------------------------------------------------------------- the spec ----

def fuses_dropping(gpu: bool, noda: bool) -> bool:
    """Whether information dropping runs inside the warp kernel (the one place this is
    decided). On the CPU it does, unless NODA must paste between the warp and the dropping:
    a separate numba operator cannot work in place and would copy every crop once more.
    The CUDA warp has no fused variant: on the GPU the copy is cheap and dropping runs on
    its own."""
    return not gpu and not noda


@dataclass(frozen=True)
class GraphSpec:
    """Everything the graph does: backend, operators, sizes (``input_size`` is [w, h]).

    ``warp``: the warp operator (information dropping fused in when
    ``warp.num_draws > 0``); ``dropping``: the information-dropping operator where
    configured (whether fused or not; it runs on its own when not fused); ``noda``: the
    NODA paste; None where not configured (validation has none). ``image_dtype``: float32,
    float16 (normalised) or uint8 (intensities).
    """

    train: bool
    gpu: bool
    input_size: Tuple[int, int]
    num_joints: int
    crop: NumbaOp
    targets: NumbaOp
    warp: NumbaOp
    dropping: Optional[NumbaOp] = None
    noda: Optional[NumbaOp] = None
    image_dtype: str = "float32"

    @property
    def dropping_fused(self) -> bool:
        return self.dropping is not None and self.warp.num_draws > 0

    @property
    def n_occlusion(self) -> int:
        """Draws per person of the information-dropping kernel; 0 if none."""
        return self.dropping.num_draws if self.dropping is not None else 0


def graph_spec(cfg, info, *, train: bool, gpu: bool) -> GraphSpec:
    """The graph ``cfg`` configures for ``info``'s dataset, one split and backend.

    Only the values an operator uses go into it (its factory is cached on them), so a
    config differing elsewhere (output folder, epochs, probabilities) gets the very same
    operators and compiles nothing.
    """
    w, h = (int(v) for v in cfg.model.input_size)
    dtype = cfg.loader.image_dtype
    warp_dtype = "uint8" if dtype == "uint8" else "float32"  # float16: a cast after
    codec = build_codec(cfg.model)
    crop = crop_op((w, h), float(cfg.data.padding), tuple(int(v) for v in info.flip_index),
                   tuple(j in info.upper_body for j in range(info.num_joints)),
                   AugParams.of(cfg.aug) if train else None, codec.unbiased)
    dropping = noda = None
    if train and cfg.occlusion.method != "none":
        dropping = dropping_op_from(cfg.occlusion, (w, h), warp_dtype)
    if train and cfg.noda.prob > 0:
        noda = noda_op_from(cfg.noda, (w, h), info)
    fuse = dropping is not None and fuses_dropping(gpu, noda is not None)
    return GraphSpec(train=train, gpu=gpu, input_size=(w, h), num_joints=info.num_joints,
                     crop=crop, targets=codec.target_op(info.num_joints),
                     warp=warp_op((w, h), dropping if fuse else None, warp_dtype),
                     dropping=dropping, noda=noda, image_dtype=dtype)


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


def apply(op: NumbaOp, gpu: bool = False, **inputs) -> SimpleNamespace:
    """Run ``op`` on ``inputs`` (DataNodes by ``op.inputs`` port name); returns its outputs
    by ``op.outputs`` port name."""
    names = [p.name for p in op.inputs]
    if set(inputs) != set(names):
        raise ValueError(f"{op.name}: inputs {sorted(inputs)} given, it takes {names}")
    nodes = [inputs[n] for n in names]
    device_id = Pipeline.current().device_id if gpu else None
    out = dali_operator(op, "gpu" if gpu else "cpu", device_id)(
        *([x.gpu() for x in nodes] if gpu else nodes))
    out = tuple(out) if isinstance(out, (list, tuple)) else (out,)
    return SimpleNamespace(**{p.name: x for p, x in zip(op.outputs, out)})


# ------------------------------------------------------------------------- stages ------

class Read(NamedTuple):
    """The external sources' outputs (see :mod:`.sources`); absent fields are None."""

    jpeg: object
    center: object
    size: object
    keypoints: object
    row: object
    uniform: object
    normal: object
    occlusion_draws: object = None
    noda_draws: object = None
    pool_rgba: object = None
    pool_box: object = None


class Geometry(NamedTuple):
    """The crop operator's outputs, by its port names (:mod:`dali_pose.kernels.crop`)."""

    matrix: object
    keypoints: object
    crop_box: object
    person_box: object
    flipped: object
    window: object


class Outputs(NamedTuple):
    """What the graph returns, per sample (the loader turns them into the batch dict,
    :mod:`.batch`): image (P, 3, H, W) float32 / float16 / uint8; heatmap (P, C, h, w);
    target_weight (P, K); keypoints (P, K, 3) crop px; matrix (P, 2, 3) source px -> crop
    px; crop_box (P, 4) [cx, cy, w, h] source px; flipped (P,) int32; row (P,) int64 index
    rows; occluded (P, K) float32."""

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
    out = apply(spec.crop, center=read.center, size=read.size, keypoints=read.keypoints,
                uniform=read.uniform, normal=read.normal, image_shape=shape)
    return Geometry(**vars(out))


def decode_stage(spec: GraphSpec, read: Read, geometry: Geometry):
    """RGB uint8 (h, w, 3): the source window of the sample's crops; on the GPU by nvJPEG
    (``mixed``)."""
    return fn.decoders.image_slice(read.jpeg, geometry.window[0:2], geometry.window[2:4],
                                   axis_names="WH", normalized_anchor=False,
                                   normalized_shape=False, output_type=types.RGB,
                                   adjust_orientation=False,
                                   device="mixed" if spec.gpu else "cpu")


def warp_stage(spec: GraphSpec, read: Read, geometry: Geometry, decoded):
    """The crops (P, 3, H, W): float32 normalised or uint8 (information dropped too when
    fused into the warp). On the GPU the CUDA warp reads the window on the device."""
    inputs = dict(matrix=geometry.matrix, roi=decoded, window=geometry.window)
    if spec.warp.num_draws:
        inputs.update(keypoints=geometry.keypoints, draws=read.occlusion_draws)
    return apply(spec.warp, gpu=spec.gpu, **inputs).image


def occlusion_stage(spec: GraphSpec, read: Read, geometry: Geometry, image,
                    dropping: bool = True):
    """NODA, then information dropping where configured and not fused into the warp
    (``dropping=True``: also when fused, for graphs with another warp); (image, occluded
    (P, K))."""
    occluded = None
    if spec.noda is not None:
        out = apply(spec.noda, gpu=spec.gpu, image=image, keypoints=geometry.keypoints,
                    person_box=geometry.person_box, pool_rgba=read.pool_rgba,
                    pool_box=read.pool_box, draws=read.noda_draws)
        image, occluded = out.image, out.occluded
    if spec.dropping is not None and dropping:
        image = apply(spec.dropping, gpu=spec.gpu, image=image, keypoints=geometry.keypoints,
                      draws=read.occlusion_draws).image
    if occluded is None:  # (P, K) zeros: no NODA
        occluded = fn.cast(geometry.keypoints[:, :, 2] * 0.0, dtype=types.FLOAT)
        if spec.gpu:
            occluded = occluded.gpu()
    return image, occluded


def targets_stage(spec: GraphSpec, geometry: Geometry):
    """The codec's target operator: ``heatmap`` (P, C, h, w), ``target_weight`` (P, K)."""
    return apply(spec.targets, gpu=spec.gpu, keypoints=geometry.keypoints,
                 person_box=geometry.person_box)


def finish(spec: GraphSpec, read: Read, geometry: Geometry, image, occluded) -> Outputs:
    """The graph's outputs, by name."""
    targets = targets_stage(spec, geometry)
    if spec.image_dtype == "float16":
        image = fn.cast(image, dtype=types.FLOAT16)
    return Outputs(image=image, heatmap=targets.heatmap, target_weight=targets.target_weight,
                   keypoints=geometry.keypoints, matrix=geometry.matrix,
                   crop_box=geometry.crop_box, flipped=geometry.flipped, row=read.row,
                   occluded=occluded)


def read_and_place(spec: GraphSpec, source, pool_source=None) -> Tuple[Read, Geometry]:
    """The sources and the crop operator: the start of every graph (call it inside a
    ``pipeline_def`` body)."""
    if Pipeline.current() is None:
        raise RuntimeError("a dali_pose graph defines DALI operators: call it inside a "
                           "pipeline_def body (see make_pipeline)")
    read = read_stage(spec, source, pool_source)
    return read, geometry_stage(spec, read)


def build_graph(spec: GraphSpec, source, pool_source=None) -> Outputs:
    """Define the whole graph inside a ``pipeline_def`` body."""
    read, geometry = read_and_place(spec, source, pool_source)
    image = warp_stage(spec, read, geometry, decode_stage(spec, read, geometry))
    image, occluded = occlusion_stage(spec, read, geometry, image,
                                      dropping=not spec.dropping_fused)
    return finish(spec, read, geometry, image, occluded)


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
