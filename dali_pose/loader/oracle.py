"""DALI's own decode + ``warp_affine``: a test oracle and benchmark baseline, not the loader.

:func:`oracle_graph` is :func:`.graph.build_graph` with the window decode and the numba
warp replaced by ``decoders.image`` (the whole image) + ``warp_affine`` (bilinear, fill 0,
uint8) + ``crop_mirror_normalize``; everything else (sources, crop geometry, NODA,
information dropping, targets) is the production graph's. It checks that our warp puts the
pixels where the geometry says (``tests/test_loader.py``'s dot test runs both) and times
DALI's warp (``python -m dali_pose.tools.bench``).

``warp_affine`` takes one crop per sample: every sample must hold one person (P = 1, a
dataset of one person per image, e.g. :func:`one_person_per_image`); a sample with more
fails in DALI's reshape.

Pixel-centre convention: DALI's ``warp_affine`` puts pixel centres at x + 0.5; the crop
operator's OpenCV matrix ``[A | t]`` becomes ``[A | t + 0.5 (1 - A @ [1, 1])]``
(:func:`dali_pose.geometry.opencv_to_dali_into`).
"""
from __future__ import annotations

import dataclasses

import numpy as np
from nvidia.dali import fn, types

from ..normalize import IMAGENET_MEAN, IMAGENET_STD
from .graph import GraphSpec, Outputs, finish, occlusion_stage, read_and_place
from .plan import image_groups

_ROW_FIELDS = ("image_paths", "center", "scale", "keypoints", "area", "image_id",
               "instance_id", "score")


def one_person_per_image(index):
    """``index`` (a :class:`~dali_pose.datasets.PoseIndex`) with only the first person of
    each image: the oracle graph's one person per sample."""
    first = np.array([g[0] for g in image_groups(np.asarray(index.image_paths))], np.int64)
    rows = {f: getattr(index, f)[first] for f in _ROW_FIELDS}
    for f in ("image_size", "box_size"):
        if getattr(index, f) is not None:
            rows[f] = getattr(index, f)[first]
    return dataclasses.replace(index, **rows)


def dali_matrix(matrix):
    """(2, 3) DALI-convention matrix of a (1, 2, 3) OpenCV-convention matrix DataNode."""
    m = fn.reshape(matrix, shape=[2, 3])
    shift = m[:, 2:3] + 0.5 * (1.0 - m[:, 0:1] - m[:, 1:2])
    return fn.cat(m[:, 0:2], shift, axis=1)


def oracle_graph(spec: GraphSpec, source, pool_source=None) -> Outputs:
    """The graph of ``spec`` with DALI's decode + ``warp_affine`` (one person per sample)."""
    read, geometry = read_and_place(spec, source, pool_source)
    device = "mixed" if spec.gpu else "cpu"
    decoded = fn.decoders.image(read.jpeg, device=device, output_type=types.RGB,
                                adjust_orientation=False)
    w, h = spec.input_size
    warped = fn.warp_affine(decoded, matrix=dali_matrix(geometry.matrix), size=[h, w],
                            fill_value=0, inverse_map=False, interp_type=types.INTERP_LINEAR)
    if spec.image_dtype == "uint8":
        image = fn.crop_mirror_normalize(warped, output_layout="CHW", dtype=types.UINT8)
    else:
        image = fn.crop_mirror_normalize(warped, mean=[255.0 * v for v in IMAGENET_MEAN],
                                         std=[255.0 * v for v in IMAGENET_STD],
                                         output_layout="CHW", dtype=types.FLOAT)
    image = fn.reshape(image, shape=[1, 3, h, w], layout="FCHW")
    image, occluded = occlusion_stage(spec, read, geometry, image, dropping=True)
    return finish(spec, read, geometry, image, occluded)
