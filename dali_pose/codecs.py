"""Encode keypoints into training targets and decode model outputs back to source pixels (UDP).

``encode_numpy`` is the NumPy convenience over the CPU target kernels of
:mod:`dali_pose.kernels.heatmap` (the same kernels the DALI pipeline runs); ``decode`` is its
inverse for model outputs: batched torch, CPU or CUDA tensors (NumPy arrays are accepted and
give NumPy back), no per-sample Python loops.

Coordinates (see :mod:`dali_pose.geometry`): pixel centres on integers everywhere. Heatmap
pixel ``(u, v)`` is crop pixel ``(u * stride_x, v * stride_y)`` with the UDP stride
``(input - 1) / (heatmap - 1)``: no half-pixel terms. ``batch['matrix']`` (N, 2, 3) maps
source px -> crop px; decoding applies its inverse (closed-form batched 2x2 inverse, float64).

Decoding rules
--------------
gaussian (DARK-UDP): ``(x0, y0)`` = argmax of each channel (first one on ties); score = that
maximum. Sub-pixel position: blur with the target's Gaussian (sigma = ``model.sigma``, at most
``floor(3 sigma)`` px each side), floor at 1e-10, log, one Newton step from the quadratic
through the 3x3 values around the argmax (central differences); see :func:`dark_refine`.

combined (UDP classification + offsets): blur the heatmap channel the same way (full map,
zero padding), argmax ``(x0, y0)``, position = ``(x0, y0) + r * (x-offset, y-offset)`` read at
the argmax from the (unblurred) offset channels, ``r`` = 0.0546875 x heatmap height. Score =
maximum of the (unblurred) heatmap channel. (Near a border the zero padding moves the blurred
argmax inwards, but any pixel of the disk carries exact offsets, so the result is unaffected.)

Where this differs from the UDP/DARK reference code, and why
------------------------------------------------------------
- Borders: the reference blurs the whole map with zero padding and pads the log map with edge
  values for the finite differences. Both bias keypoints near the map border (with a full-map
  zero-padded blur we measured errors up to ~0.9 heatmap px = 3.6 crop px, sigma 2, perfect
  targets, within 3 sigma of the border). Here the blur
  is evaluated only at the 9 stencil points with the kernel truncated, per axis, to the
  largest radius that stays on the map, and an argmax on the border uses a stencil shifted one
  pixel inwards (the derivatives are then those of the same quadratic, taken at the argmax).
  Perfect targets decode to ~0.003 crop px everywhere on the map.
- Blur kernel: from the target sigma (13 taps for sigma 2) instead of a separately configured
  kernel size (11 in the reference configs), so it follows ``model.sigma``.
- No rescaling of the blurred map to the original maximum: under the log it only adds a
  constant, which the finite differences cancel.
- Mixed derivative: the standard 4-point central cross difference (the reference uses a
  different stencil); both are exact for the quadratic log of a perfect Gaussian.
- Guards: the 2-D Newton step is taken only where the Hessian is negative definite (else a
  1-D step per axis where that axis curves downwards, else none), and the result is kept
  within +-1 px of the argmax (a flat or noisy map must not fling the point away).
- Target weights (in the kernels): 0 when the nearest heatmap pixel of the keypoint is off the
  map, for both targets (the reference Gaussian code tests whether the 3-sigma window overlaps
  the map; its offset target ignores the map bounds).

Flip test: :func:`flip_back` mirrors the flipped output along the width, swaps left/right
channels (``flip_index``) and negates the x-offset channels; ``decode`` averages it with the
plain output before decoding. No one-pixel shift is needed (see :func:`flip_back`).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from dali_pose.kernels.heatmap import (
    combined_radius,
    combined_target_cpu,
    gaussian_target_cpu,
    udp_stride,
    window_radius,
)

LOG_FLOOR = 1e-10  # blurred heatmaps are floored here before the log
MAX_STEP = 1.0  # heatmap pixels: largest sub-pixel correction from the argmax, per axis


def _model(cfg):
    return getattr(cfg, "model", cfg)


# ---------------------------------------------------------------------------------------------
# Encoding (NumPy, CPU kernels)
# ---------------------------------------------------------------------------------------------

def encode_numpy(kps_crop, cfg) -> Tuple[np.ndarray, np.ndarray]:
    """Targets for crop keypoints: ``kps_crop`` (K, 3) or (N, K, 3) (x, y crop px, v).

    Returns ``(target, weight)``: target (K or 3K, h, w) float32 (or with a leading N),
    weight (K,) float32 (or (N, K)). Same kernels as the DALI pipeline.
    """
    m = _model(cfg)
    kps = np.ascontiguousarray(kps_crop, dtype=np.float32)
    single = kps.ndim == 2
    if single:
        kps = kps[None]
    n, k = kps.shape[0], kps.shape[1]
    w, h = int(m.heatmap_size[0]), int(m.heatmap_size[1])
    sx, sy = udp_stride(m.input_size, m.heatmap_size)
    c = k if m.target == "gaussian" else 3 * k
    target = np.empty((n, c, h, w), np.float32)
    weight = np.empty((n, k), np.float32)
    for i in range(n):
        if m.target == "gaussian":
            gaussian_target_cpu(target[i], weight[i], kps[i], sx, sy, float(m.sigma),
                                window_radius(m.sigma))
        elif m.target == "combined":
            combined_target_cpu(target[i], weight[i], kps[i], sx, sy,
                                combined_radius(m.heatmap_size))
        else:
            raise ValueError(f"model.target: unknown target {m.target!r}")
    if single:
        return target[0], weight[0]
    return target, weight


# ---------------------------------------------------------------------------------------------
# Decoding (torch, batched)
# ---------------------------------------------------------------------------------------------

def _to_tensor(x, device=None, dtype=None) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    else:
        x = torch.as_tensor(x)
    return x.to(device=device if device is not None else x.device,
                dtype=dtype if dtype is not None else x.dtype)


def flip_back(output_flipped, flip_index, target: str = "gaussian"):
    """Model output of a horizontally flipped crop -> output for the unflipped crop.

    ``output_flipped`` (N, C, h, w); channel j of the result is channel ``flip_index[j]`` of
    the flipped output, mirrored along the width; for ``combined`` the joints are groups of 3
    channels and the x-offset channel changes sign. Works on tensors and NumPy arrays.

    No one-pixel shift (unlike HRNet's ``shift_heatmap``): with UDP the crop flip is the exact
    mirror x' = (w_in - 1) - x, and since the stride is (w_in - 1)/(w_hm - 1) this is exactly
    u' = (w_hm - 1) - u on the heatmap grid, i.e. reversing the pixel columns. The offsets
    (mu - u)/r mirror to -(mu - u)/r, hence the sign change.
    """
    is_np = isinstance(output_flipped, np.ndarray)
    x = _to_tensor(output_flipped)
    idx = torch.as_tensor(np.asarray(flip_index), dtype=torch.long, device=x.device)
    x = x.flip(-1)
    if target == "gaussian":
        out = x[:, idx]
    elif target == "combined":
        n, c, h, w = x.shape
        sign = torch.tensor([1.0, -1.0, 1.0], dtype=x.dtype, device=x.device).view(1, 1, 3, 1, 1)
        out = (x.reshape(n, c // 3, 3, h, w)[:, idx] * sign).reshape(n, c, h, w)
    else:
        raise ValueError(f"unknown target {target!r}")
    return out.numpy() if is_np else out


def _blur_matrix(n: int, sigma: float, r: int, dtype, device) -> torch.Tensor:
    """(n, n) banded matrix G[i, j] = g(i - j) for |i - j| <= r (zero padding)."""
    i = torch.arange(n, device=device)
    dd = (i[:, None] - i[None, :]).to(dtype)
    g = torch.exp(-dd * dd / (2.0 * sigma * sigma))
    return torch.where(dd.abs() <= r, g, torch.zeros_like(g))


def gaussian_blur(hm: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (..., h, w) maps: 2*floor(3 sigma)+1 taps, zero padding,
    unnormalised (callers only compare values of one map). Two banded matmuls, which beat a
    single-channel conv2d by far on the CPU."""
    r = window_radius(sigma)
    h, w = hm.shape[-2], hm.shape[-1]
    gy = _blur_matrix(h, sigma, r, hm.dtype, hm.device)
    gx = _blur_matrix(w, sigma, r, hm.dtype, hm.device)
    return gy @ hm @ gx  # gx is symmetric


def _argmax2d(hm: torch.Tensor):
    """(B, h, w) -> flat index, x, y (long) and the maximum."""
    b, h, w = hm.shape
    val, idx = hm.reshape(b, h * w).max(dim=1)
    return idx, idx % w, torch.div(idx, w, rounding_mode="floor"), val


def dark_refine(hm: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, sigma: float):
    """DARK sub-pixel refinement at the integer argmax (x0, y0) of each map.

    ``hm`` (B, h, w); ``x0``, ``y0`` (B,) long. Returns float64 (B,) x, y in heatmap pixels.

    Per map and axis a 3-point stencil is placed at the argmax (shifted inwards by one pixel
    when the argmax is on the border, so that it stays on the map). The map is blurred with
    the Gaussian of ``sigma`` at the 3x3 stencil points only, with the kernel truncated per
    axis to the largest radius (<= floor(3 sigma)) whose footprint stays on the map: near a
    border the blur is narrower instead of seeing zero padding (zero padding drags the peak of
    a border-cut Gaussian inwards, by up to a heatmap pixel). The 9 blurred values are floored
    at ``LOG_FLOOR`` and logged; their quadratic interpolant (central differences for the
    gradient and Hessian, the 4-corner difference for d2/dxdy) gives one Newton step. The
    kernel normalisation is a constant under the log, so it is left out.
    """
    b, h, w = hm.shape
    r = window_radius(sigma)
    dev = hm.device
    f64 = torch.float64
    # stencil centres and per-axis blur radii
    ok_x = w >= 3
    ok_y = h >= 3
    cx = x0.clamp(1, w - 2) if ok_x else x0
    cy = y0.clamp(1, h - 2) if ok_y else y0
    rx = torch.minimum(cx - 1, (w - 2) - cx).clamp(0, r)
    ry = torch.minimum(cy - 1, (h - 2) - cy).clamp(0, r)
    # (2r+3)^2 patch around the stencil centre (clamped indices only ever get weight 0)
    d = torch.arange(-(r + 1), r + 2, device=dev)
    rows = (cy[:, None] + d[None, :]).clamp(0, h - 1)
    cols = (cx[:, None] + d[None, :]).clamp(0, w - 1)
    idx = (rows[:, :, None] * w + cols[:, None, :]).reshape(b, -1)
    patch = hm.reshape(b, h * w).gather(1, idx).to(f64).reshape(b, 2 * r + 3, 2 * r + 3)
    # separable blur weights: W[b, s, j] = g(d_j - s) where |d_j - s| <= radius_b
    off = d[None, :] - torch.arange(-1, 2, device=dev)[:, None]  # (3, 2r+3)
    g = torch.exp(-(off.to(f64) ** 2) / (2.0 * sigma * sigma))
    wx = g * (off.abs()[None] <= rx[:, None, None])
    wy = g * (off.abs()[None] <= ry[:, None, None])
    blurred = wy @ patch @ wx.transpose(1, 2)  # (B, 3 [y], 3 [x])
    f = torch.log(blurred.clamp_min(LOG_FLOOR))
    gx = 0.5 * (f[:, 1, 2] - f[:, 1, 0])
    gy = 0.5 * (f[:, 2, 1] - f[:, 0, 1])
    hxx = f[:, 1, 2] - 2.0 * f[:, 1, 1] + f[:, 1, 0]
    hyy = f[:, 2, 1] - 2.0 * f[:, 1, 1] + f[:, 0, 1]
    hxy = 0.25 * (f[:, 2, 2] - f[:, 2, 0] - f[:, 0, 2] + f[:, 0, 0])
    det = hxx * hyy - hxy * hxy
    use2 = (det > 0) & (hxx < 0) & ok_x & ok_y
    det_s = torch.where(use2, det, torch.ones_like(det))
    sx2 = -(hyy * gx - hxy * gy) / det_s
    sy2 = -(hxx * gy - hxy * gx) / det_s
    # 1-D fallback per axis (Hessian not negative definite); no curvature: stay at the argmax
    use_x = (hxx < 0) & ok_x
    use_y = (hyy < 0) & ok_y
    sx1 = torch.where(use_x, -gx / torch.where(use_x, hxx, -torch.ones_like(hxx)),
                      (x0 - cx).to(f64))
    sy1 = torch.where(use_y, -gy / torch.where(use_y, hyy, -torch.ones_like(hyy)),
                      (y0 - cy).to(f64))
    x = cx.to(f64) + torch.where(use2, sx2, sx1)
    y = cy.to(f64) + torch.where(use2, sy2, sy1)
    xf = x0.to(f64)
    yf = y0.to(f64)
    return (torch.minimum(torch.maximum(x, xf - MAX_STEP), xf + MAX_STEP),
            torch.minimum(torch.maximum(y, yf - MAX_STEP), yf + MAX_STEP))


def _decode_heatmap_coords(out: torch.Tensor, m):
    """(N, C, h, w) float -> heatmap coordinates (N, K, 2) and scores (N, K)."""
    n, c, h, w = out.shape
    if m.target == "gaussian":
        hm = out.reshape(n * c, h, w)
        _, x0, y0, score = _argmax2d(hm)
        x, y = dark_refine(hm, x0, y0, float(m.sigma))
        k = c
    elif m.target == "combined":
        k = c // 3
        groups = out.reshape(n * k, 3, h, w)
        hm = groups[:, 0]
        score = hm.reshape(n * k, -1).amax(dim=1)
        idx, x0, y0, _ = _argmax2d(gaussian_blur(hm, float(m.sigma)))
        r = combined_radius(m.heatmap_size)
        offs = groups[:, 1:].reshape(n * k, 2, h * w)
        o = offs.gather(2, idx.view(-1, 1, 1).expand(-1, 2, 1)).squeeze(2)
        x = x0.to(torch.float64) + r * o[:, 0].to(torch.float64)
        y = y0.to(torch.float64) + r * o[:, 1].to(torch.float64)
    else:
        raise ValueError(f"model.target: unknown target {m.target!r}")
    return torch.stack([x, y], dim=-1).reshape(n, k, 2), score.reshape(n, k)


def heatmap_to_source(xy_hm: torch.Tensor, matrix, cfg) -> torch.Tensor:
    """Heatmap px (N, K, 2) -> crop px (x stride) -> source px through the inverse of
    ``matrix`` (N, 2, 3), source -> crop. float64 result."""
    m = _model(cfg)
    sx, sy = udp_stride(m.input_size, m.heatmap_size)
    xy = xy_hm.to(torch.float64)
    cx = xy[..., 0] * sx
    cy = xy[..., 1] * sy
    mat = _to_tensor(matrix, device=xy.device, dtype=torch.float64).reshape(-1, 2, 3)
    a, b, tx = mat[:, 0, 0, None], mat[:, 0, 1, None], mat[:, 0, 2, None]
    c, d, ty = mat[:, 1, 0, None], mat[:, 1, 1, None], mat[:, 1, 2, None]
    det = a * d - b * c
    u = cx - tx
    v = cy - ty
    return torch.stack([(d * u - b * v) / det, (a * v - c * u) / det], dim=-1)


def decode(output, batch, cfg, output_flipped=None, flip_index=None):
    """Model output -> (N, K, 3): x, y in source-image pixels and a score per joint.

    ``output`` (N, C, h, w), C = K (gaussian) or 3K (combined), torch (CPU/CUDA) or NumPy;
    ``batch['matrix']`` (N, 2, 3) source px -> crop px of each crop; ``cfg`` a ``ModelConfig``
    or a whole ``Config``. With ``output_flipped`` (the output for the horizontally flipped
    crop) and ``flip_index`` (``DatasetInfo.flip_index``) the two are averaged first (flip
    test). Joint j of the result is output channel (group) j: for a crop whose matrix itself
    contains the flip (training crops) that is source joint ``flip_index[j]``.

    Returns a float32 tensor on ``output``'s device, or a NumPy array for NumPy input.
    """
    m = _model(cfg)
    is_np = isinstance(output, np.ndarray)
    out = _to_tensor(output)
    if not out.is_floating_point() or out.dtype in (torch.float16, torch.bfloat16):
        out = out.float()
    if output_flipped is not None:
        if flip_index is None:
            raise ValueError("decode: output_flipped needs flip_index")
        back = flip_back(_to_tensor(output_flipped, device=out.device, dtype=out.dtype),
                         flip_index, m.target)
        out = 0.5 * (out + back)
    xy_hm, score = _decode_heatmap_coords(out, m)
    src = heatmap_to_source(xy_hm, batch["matrix"], m)
    res = torch.cat([src.to(torch.float32), score.to(torch.float32).unsqueeze(-1)], dim=-1)
    return res.numpy() if is_np else res
