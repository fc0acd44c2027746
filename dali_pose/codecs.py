"""Codecs: one object per target type, owning everything that depends on it.

A codec (``build_codec(cfg.model)``; the one place that chooses by ``model.target``) owns:
the channels per joint, the heatmap stride, the target operator the DALI graph runs
(:mod:`dali_pose.kernels.targets`), ``encode`` (the same CPU kernels, from NumPy),
``flip_back`` for the flip test, ``decode`` back to source pixels (batched torch, CPU or CUDA
tensors; NumPy arrays are accepted and give NumPy back; no per-sample Python loops),
``heatmaps`` (the confidence maps of a target or output, for pictures) and ``loss`` (the
HRNet / mmpose definition for its target).

    ``UDPGaussian``   model.target: gaussian  K channels, UDP Gaussian, DARK-UDP decoding
    ``UDPCombined``   model.target: combined  3K channels [disk, x-offset, y-offset]
    ``MSRAGaussian``  model.codec: msra       K channels, HRNet's classic (biased) processing

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
the argmax from the (unblurred) offset channels, ``r`` = :func:`combined_radius`. Score =
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
  within +-sigma of the argmax, per axis (a flat or noisy map must not fling the point
  away; the blurred log map is quadratic only within about sigma of its peak), and within
  +-1 px where the blur had to be narrowed at a border (less smoothing). An earlier
  +-1 px bound cost accuracy on noisy maps: noise moves the argmax by up to 2 px at sigma 2,
  and the bound then kept the point from coming back (interior Gaussians with noise sd 0.1:
  mean error 0.112 heatmap px with the +-1 bound; 0.098 with +-sigma, the same as mmpose's
  unguarded step, ``tests/test_codecs.py::test_dark_on_noisy_maps``).
- Target weights (in the kernels): 0 when the nearest heatmap pixel of the keypoint is off the
  map, for both targets (the reference Gaussian code tests whether the 3-sigma window overlaps
  the map; its offset target ignores the map bounds).

Flip test: ``flip_back`` mirrors the flipped output along the width, swaps left/right
channels (``flip_index``) and negates the x-offset channels; ``decode`` averages it with the
plain output before decoding. No one-pixel shift is needed (see :func:`flip_back`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch

from .kernels.targets import (TargetOp, combined_target_op, gaussian_target_op,
                              msra_target_op, window_radius)

LOG_FLOOR = 1e-10  # blurred heatmaps are floored here before the log
# Combined-target disk radius, x heatmap height: UDP's "KPD" 3.5 px on 64-px-tall maps.
COMBINED_RADIUS_FACTOR = 0.0546875


def udp_stride(input_size, heatmap_size) -> Tuple[float, float]:
    """UDP stride (input - 1) / (heatmap - 1) per axis, (x, y)."""
    return ((input_size[0] - 1.0) / (heatmap_size[0] - 1.0),
            (input_size[1] - 1.0) / (heatmap_size[1] - 1.0))


def combined_radius(heatmap_size) -> float:
    """Disk radius of the combined target in heatmap px: 0.0546875 x heatmap height.

    dali_pose follows UDP's paper and code (and mmpose 0.x's ``0.0546875 *
    heatmap_size[1]`` with [w, h] sizes): "0.0546875 x heatmap width ... 3.5 px at 64x48"
    only gives 3.5 px from the 64-pixel side, the *height* in [w, h] sizes. mmpose 1.x's
    ``0.0546875 * max(w, h)`` is the same number on every map at least as tall as it is
    wide, i.e. on every top-down configuration (48x64, 72x96, 64x64); the two differ only
    for landscape maps, where we keep the paper's rule (the radius then scales with the
    person's height, which the 3.5 px were chosen for).
    """
    return COMBINED_RADIUS_FACTOR * float(heatmap_size[1])


def _model(cfg):
    return getattr(cfg, "model", cfg)


def _to_tensor(x, device=None, dtype=None) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    else:
        x = torch.as_tensor(x)
    return x.to(device=device if device is not None else x.device,
                dtype=dtype if dtype is not None else x.dtype)


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
    # the step bound: sigma where the blur had its full radius, one pixel near a border
    bx = torch.where(rx >= r, sigma, 1.0).to(f64)
    by = torch.where(ry >= r, sigma, 1.0).to(f64)
    xf = x0.to(f64)
    yf = y0.to(f64)
    return (torch.minimum(torch.maximum(x, xf - bx), xf + bx),
            torch.minimum(torch.maximum(y, yf - by), yf + by))



# ---------------------------------------------------------------------------------------------
# The codecs
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Codec:
    """What every codec shares: sizes (``[w, h]``), ``sigma`` (heatmap px) and the UDP
    geometry of the heatmap grid (stride, back-projection). Subclasses give the target."""

    input_size: Tuple[int, int]
    heatmap_size: Tuple[int, int]
    sigma: float
    channels_per_joint = 1
    unbiased = True  # the crop: UDP's geometry.udp_matrix (False: HRNet's msra_matrix)

    @property
    def stride(self) -> Tuple[float, float]:
        """Crop px per heatmap px, (x, y): UDP's (input - 1) / (heatmap - 1)."""
        return udp_stride(self.input_size, self.heatmap_size)

    def channels(self, num_joints: int) -> int:
        """Model output channels for ``num_joints`` joints."""
        return self.channels_per_joint * int(num_joints)

    def target_op(self, num_joints: int) -> TargetOp:
        """The DALI graph's target operator (CPU and CUDA kernels)."""
        raise NotImplementedError

    def encode(self, kps_crop) -> Tuple[np.ndarray, np.ndarray]:
        """Targets for crop keypoints ``kps_crop`` (K, 3) or (N, K, 3) (x, y crop px, v).

        Returns ``(target, weight)``: target (C, h, w) float32 (or with a leading N), weight
        (K,) float32 (or (N, K)). The very kernels the DALI pipeline runs.
        """
        kps = np.ascontiguousarray(kps_crop, dtype=np.float32)
        single = kps.ndim == 2
        if single:
            kps = kps[None]
        n, k = kps.shape[0], kps.shape[1]
        op = self.target_op(k)
        w, h = op.hm_size
        target = np.empty((n, op.channels, h, w), np.float32)
        weight = np.empty((n, k), np.float32)
        op.cpu_kernel(target, weight, kps, np.zeros((n, 4), np.float32))  # n "people"
        return (target[0], weight[0]) if single else (target, weight)

    def flip_back(self, output_flipped, flip_index):
        """Model output of a horizontally flipped crop -> output for the unflipped crop.

        ``output_flipped`` (N, C, h, w); joint j of the result is joint ``flip_index[j]`` of
        the flipped output (a group of ``channels_per_joint`` channels), mirrored along the
        width. Works on tensors and NumPy arrays.

        No one-pixel shift (unlike HRNet's ``shift_heatmap``): with UDP the crop flip is the
        exact mirror x' = (w_in - 1) - x, and since the stride is (w_in - 1)/(w_hm - 1) this
        is exactly u' = (w_hm - 1) - u on the heatmap grid, i.e. reversing the pixel columns.
        """
        is_np = isinstance(output_flipped, np.ndarray)
        x = _to_tensor(output_flipped).flip(-1)
        idx = torch.as_tensor(np.asarray(flip_index), dtype=torch.long, device=x.device)
        n, c, h, w = x.shape
        g = self.channels_per_joint
        groups = x.reshape(n, c // g, g, h, w)[:, idx] * self._flip_sign(x)
        out = groups.reshape(n, c, h, w)
        return out.numpy() if is_np else out

    def _flip_sign(self, x: torch.Tensor):
        """Per-channel factor of a joint's channel group under the flip."""
        return 1.0

    def heatmaps(self, output):
        """The K confidence maps (..., K, h, w) of a target or model output (..., C, h, w)."""
        return output[..., ::self.channels_per_joint, :, :]

    def decode_heatmaps(self, out: torch.Tensor):
        """(N, C, h, w) float -> heatmap coordinates (N, K, 2) float64 and scores (N, K)."""
        raise NotImplementedError

    def to_source(self, xy_hm, matrix) -> torch.Tensor:
        """Heatmap px (N, K, 2) -> crop px (x stride) -> source px through the inverse of
        ``matrix`` (N, 2, 3), source -> crop. float64 result."""
        sx, sy = self.stride
        xy = _to_tensor(xy_hm).to(torch.float64)
        cx = xy[..., 0] * sx
        cy = xy[..., 1] * sy
        mat = _to_tensor(matrix, device=xy.device, dtype=torch.float64).reshape(-1, 2, 3)
        a, b, tx = mat[:, 0, 0, None], mat[:, 0, 1, None], mat[:, 0, 2, None]
        c, d, ty = mat[:, 1, 0, None], mat[:, 1, 1, None], mat[:, 1, 2, None]
        det = a * d - b * c
        u = cx - tx
        v = cy - ty
        return torch.stack([(d * u - b * v) / det, (a * v - c * u) / det], dim=-1)

    def decode(self, output, matrix, output_flipped=None, flip_index=None):
        """Model output -> (N, K, 3): x, y in source-image pixels and a score per joint.

        ``output`` (N, C, h, w), torch (CPU/CUDA) or NumPy; ``matrix`` (N, 2, 3) source px ->
        crop px of each crop (``batch['matrix']``). With ``output_flipped`` (the output for
        the horizontally flipped crop) and ``flip_index`` (``DatasetInfo.flip_index``) the two
        are averaged first (flip test). Joint j of the result is output joint j: for a crop
        whose matrix itself contains the flip (training crops) that is source joint
        ``flip_index[j]``.

        Returns a float32 tensor on ``output``'s device, or a NumPy array for NumPy input.
        """
        is_np = isinstance(output, np.ndarray)
        out = _to_tensor(output)
        if not out.is_floating_point() or out.dtype in (torch.float16, torch.bfloat16):
            out = out.float()
        if output_flipped is not None:
            if flip_index is None:
                raise ValueError("decode: output_flipped needs flip_index")
            back = self.flip_back(_to_tensor(output_flipped, device=out.device,
                                             dtype=out.dtype), flip_index)
            out = 0.5 * (out + back)
        xy_hm, score = self.decode_heatmaps(out)
        src = self.to_source(xy_hm, matrix)
        res = torch.cat([src.to(torch.float32), score.to(torch.float32).unsqueeze(-1)], dim=-1)
        return res.numpy() if is_np else res

    def loss(self, output: torch.Tensor, target: torch.Tensor,
             weight: torch.Tensor) -> torch.Tensor:
        """Training loss of ``output`` against ``target`` (both (N, C, h, w)) with per-joint
        ``weight`` (N, K): a scalar tensor."""
        raise NotImplementedError


@dataclass(frozen=True)
class UDPGaussian(Codec):
    """UDP Gaussian heatmaps (sigma heatmap px, 3 sigma window), DARK-UDP decoding, HRNet's
    ``JointsMSELoss(use_target_weight=True)``."""

    def target_op(self, num_joints: int) -> TargetOp:
        return gaussian_target_op(tuple(self.heatmap_size), self.stride, float(self.sigma),
                                  int(num_joints))

    def decode_heatmaps(self, out: torch.Tensor):
        n, c, h, w = out.shape
        hm = out.reshape(n * c, h, w)
        _, x0, y0, score = _argmax2d(hm)
        x, y = dark_refine(hm, x0, y0, float(self.sigma))
        return torch.stack([x, y], dim=-1).reshape(n, c, 2), score.reshape(n, c)

    def loss(self, output, target, weight):
        """``0.5 * mean_j MSE(w_j * pred_j, w_j * gt_j)``, the MSE a mean over batch and
        pixels."""
        return 0.5 * ((weight[:, :, None, None] * (output - target)) ** 2).mean()


@dataclass(frozen=True)
class UDPCombined(Codec):
    """UDP's combined classification + offset target (3K channels [disk, x-offset, y-offset]
    per joint, disk radius :func:`combined_radius`), mmpose's ``CombinedTargetMSELoss``."""

    channels_per_joint = 3

    @property
    def radius(self) -> float:
        return combined_radius(self.heatmap_size)

    def target_op(self, num_joints: int) -> TargetOp:
        return combined_target_op(tuple(self.heatmap_size), self.stride, self.radius,
                                  int(num_joints))

    def _flip_sign(self, x):
        # the offsets (mu - u)/r mirror to -(mu - u)/r: the x-offset changes sign
        return torch.tensor([1.0, -1.0, 1.0], dtype=x.dtype, device=x.device).view(
            1, 1, 3, 1, 1)

    def decode_heatmaps(self, out: torch.Tensor):
        n, c, h, w = out.shape
        k = c // 3
        groups = out.reshape(n * k, 3, h, w)
        hm = groups[:, 0]
        score = hm.reshape(n * k, -1).amax(dim=1)
        idx, x0, y0, _ = _argmax2d(gaussian_blur(hm, float(self.sigma)))
        offs = groups[:, 1:].reshape(n * k, 2, h * w)
        o = offs.gather(2, idx.view(-1, 1, 1).expand(-1, 2, 1)).squeeze(2)
        x = x0.to(torch.float64) + self.radius * o[:, 0].to(torch.float64)
        y = y0.to(torch.float64) + self.radius * o[:, 1].to(torch.float64)
        return torch.stack([x, y], dim=-1).reshape(n, k, 2), score.reshape(n, k)

    def loss(self, output, target, weight):
        """Per joint, ``0.5 * MSE`` of the weighted disk maps plus ``0.5 * MSE`` of each offset
        map, both multiplied by the target disk (offsets only count inside it); summed over
        the three and averaged over joints."""
        n, k = weight.shape
        out = output.reshape(n, k, 3, *output.shape[2:])
        gt = target.reshape(n, k, 3, *target.shape[2:])
        disk = gt[:, :, 0]
        wk = weight[:, :, None, None]
        loss = ((wk * (out[:, :, 0] - disk)) ** 2).mean(dim=(0, 2, 3)).sum()
        for c in (1, 2):
            loss = loss + ((wk * disk * (out[:, :, c] - gt[:, :, c])) ** 2).mean(
                dim=(0, 2, 3)).sum()
        return 0.5 * loss / k


@dataclass(frozen=True)
class MSRAGaussian(Codec):
    """HRNet's classic ("MSRA") processing, to evaluate and train the HRNet / SimpleBaseline
    model zoos as they were made (UDP showed it biased): the crop maps the box to W x H
    (``geometry.msra_matrix``), stride = input / heatmap, the Gaussian sits on the rounded
    position (``kernels.targets.msra_target_cpu``), the flip test shifts the flipped heatmap
    one pixel right, and decoding takes the argmax plus a quarter pixel towards the higher
    neighbour (HRNet's ``get_final_preds``). The loss is HRNet's ``JointsMSELoss``."""

    unbiased = False

    @property
    def stride(self) -> Tuple[float, float]:
        """Crop px per heatmap px, (x, y): input / heatmap."""
        return (self.input_size[0] / self.heatmap_size[0],
                self.input_size[1] / self.heatmap_size[1])

    def target_op(self, num_joints: int) -> TargetOp:
        return msra_target_op(tuple(self.heatmap_size), self.stride, float(self.sigma),
                              int(num_joints))

    def flip_back(self, output_flipped, flip_index):
        """Mirror, swap left/right, then HRNet's ``shift_heatmap``: every column moves one
        pixel right (column 0 keeps its value): the tensor mirror is x' -> W - 1 - x' while
        this codec's heatmap grid mirrors as x' -> W - x'."""
        out = super().flip_back(output_flipped, flip_index)
        shifted = out.copy() if isinstance(out, np.ndarray) else out.clone()
        shifted[..., 1:] = out[..., :-1]
        return shifted

    def decode_heatmaps(self, out: torch.Tensor):
        n, c, h, w = out.shape
        hm = out.reshape(n * c, h, w)
        idx, x0, y0, score = _argmax2d(hm)
        x, y = x0.to(torch.float64), y0.to(torch.float64)
        inner_x = (x0 > 1) & (x0 < w - 1) & (y0 > 1) & (y0 < h - 1)
        flat = hm.reshape(n * c, h * w)

        def at(dx, dy):
            i = (idx + dy * w + dx).clamp(0, h * w - 1)
            return flat.gather(1, i[:, None])[:, 0]

        x = x + torch.where(inner_x, 0.25 * torch.sign(at(1, 0) - at(-1, 0)),
                            torch.zeros_like(x0, dtype=out.dtype)).to(torch.float64)
        y = y + torch.where(inner_x, 0.25 * torch.sign(at(0, 1) - at(0, -1)),
                            torch.zeros_like(y0, dtype=out.dtype)).to(torch.float64)
        keep = (score > 0).to(torch.float64)  # HRNet's pred_mask: (0, 0) where max <= 0
        return (torch.stack([x * keep, y * keep], dim=-1).reshape(n, c, 2),
                score.reshape(n, c))

    loss = UDPGaussian.loss


def build_codec(cfg) -> Codec:
    """The codec of ``cfg`` (a ``ModelConfig`` or a whole ``Config``): the one place that
    chooses by ``model.codec`` and ``model.target``."""
    m = _model(cfg)
    kinds = {("udp", "gaussian"): UDPGaussian, ("udp", "combined"): UDPCombined,
             ("msra", "gaussian"): MSRAGaussian}
    kind = kinds.get((getattr(m, "codec", "udp"), m.target))
    if kind is None:
        raise ValueError(f"model.codec {m.codec!r} with model.target {m.target!r}: no such "
                         f"codec")
    return kind(tuple(m.input_size), tuple(m.heatmap_size), float(m.sigma))


def decode(output, batch, cfg, output_flipped=None, flip_index=None):
    """``build_codec(cfg).decode(output, batch['matrix'], ...)``: model output (N, C, h, w)
    -> (N, K, 3) x, y in source-image pixels and a score (see :meth:`Codec.decode`)."""
    return build_codec(cfg).decode(output, batch["matrix"], output_flipped, flip_index)
