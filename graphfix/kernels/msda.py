"""Multi-scale deformable attention: TensorRT `MultiscaleDeformableAttnPlugin_TRT` and mmdeploy's op."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["multiscale_deformable_attention", "trt_msda_kernel", "mmcv_msda_kernel"]

# Bound on the elements of one gathered [N, queries, M, P, D] block; queries are chunked to fit.
_CHUNK_ELEMENTS = 1 << 22


def multiscale_deformable_attention(
    value: np.ndarray,
    spatial_shapes: np.ndarray,
    level_start_index: np.ndarray,
    sampling_locations: np.ndarray,
    attention_weights: np.ndarray,
) -> np.ndarray:
    """Deformable-DETR's ms_deform_attn forward, as the TensorRT plugin's CUDA kernel computes it.

    From NVIDIA/TensorRT plugin/multiscaleDeformableAttnPlugin/multiscaleDeformableIm2ColCuda.cuh
    (ms_deformable_im2col_gpu_kernel, ms_deform_attn_im2col_bilinear), identical to mmcv's and
    Deformable-DETR's kernels: for each batch n, query q, head m, level l (H_l x W_l, starting
    at row level_start_index[l] of value) and point p, with (x, y) = sampling_locations[..., :]
    in [0, 1], the pixel coordinates are h = y * H_l - 0.5 and w = x * W_l - 0.5 (i.e.
    grid_sample bilinear, zero padding, align_corners=False on the grid 2 * loc - 1); points with
    h <= -1, w <= -1, h >= H_l or w >= W_l contribute nothing, otherwise the four neighbours
    floor(.), floor(.) + 1 are blended bilinearly with out-of-image neighbours read as 0. The
    output is sum over l, p of attention_weights * sampled value.

    Args:
        value: [N, S, M, D], S = sum of H_l * W_l.
        spatial_shapes: [L, 2] (H_l, W_l), integer.
        level_start_index: [L] first row of each level in value, integer.
        sampling_locations: [N, Lq, M, L, P, 2] normalised (x, y).
        attention_weights: [N, Lq, M, L, P].

    Returns:
        [N, Lq, M, D] in value's dtype.
    """
    n, _, heads, depth = value.shape
    locations_ok = sampling_locations.ndim == 6 and sampling_locations.shape[-1] == 2
    if not locations_ok or attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(f"MSDA needs sampling_locations [N,Lq,M,L,P,2] and attention_weights [N,Lq,M,L,P]; got "
                         f"{sampling_locations.shape}, {attention_weights.shape}")
    queries, levels, points = sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]
    if np.shape(spatial_shapes) != (levels, 2) or np.shape(level_start_index) != (levels,):
        raise ValueError(f"MSDA: spatial_shapes {np.shape(spatial_shapes)} / level_start_index "
                         f"{np.shape(level_start_index)} do not match {levels} levels")
    dtype = np.result_type(value.dtype, sampling_locations.dtype, attention_weights.dtype, np.float32)
    value = value.astype(dtype, copy=False)
    output = np.zeros((n, queries, heads, depth), dtype)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n * heads * points * depth))
    for first in range(0, queries, chunk):
        part = slice(first, first + chunk)
        for level in range(levels):
            height, width = (int(v) for v in spatial_shapes[level])
            start = int(level_start_index[level])
            sampled = _sample_level(
                value[:, start:start + height * width], height, width,
                sampling_locations[:, part, :, level].astype(dtype, copy=False),
            )  # [N, q, M, P, D]
            weights = attention_weights[:, part, :, level].astype(dtype, copy=False)
            output[:, part] += (weights[..., None] * sampled).sum(axis=3)
    return output.astype(value.dtype, copy=False)


def trt_msda_kernel(inputs: Sequence[np.ndarray | None], attrs: Mapping[str, Any]) -> list[np.ndarray]:
    """TensorRT MultiscaleDeformableAttnPlugin_TRT (v1/v2, no fields): output [N, Lq, M, D].

    Args:
        inputs: value, spatial_shapes, level_start_index, sampling_locations, attention_weights.
        attrs: None used.

    Returns:
        [output].
    """
    return [multiscale_deformable_attention(*inputs[:5])]


def mmcv_msda_kernel(inputs: Sequence[np.ndarray | None], attrs: Mapping[str, Any]) -> list[np.ndarray]:
    """mmdeploy MMCVMultiScaleDeformableAttention: same computation, output [N, Lq, M * D].

    Exported by mmdeploy/mmcv/ops/multi_scale_deform_attn.py with attribute im2col_step, which
    only batches the CUDA work and does not change the result.

    Args:
        inputs: value, spatial_shapes, level_start_index, sampling_locations, attention_weights.
        attrs: im2col_step (ignored).

    Returns:
        [output] of shape [N, Lq, M * D].
    """
    out = multiscale_deformable_attention(*inputs[:5])
    return [out.reshape(out.shape[0], out.shape[1], -1)]


def _sample_level(value: np.ndarray, height: int, width: int, locations: np.ndarray) -> np.ndarray:
    """ms_deform_attn_im2col_bilinear for every (n, q, m, p) of one level.

    Args:
        value: [N, H*W, M, D] rows of this level.
        height: H.
        width: W.
        locations: [N, q, M, P, 2] normalised (x, y).

    Returns:
        [N, q, M, P, D].
    """
    t = locations.dtype.type
    h = locations[..., 1] * t(height) - t(0.5)
    w = locations[..., 0] * t(width) - t(0.5)
    inside = (h > -1) & (w > -1) & (h < height) & (w < width)
    h_low, w_low = np.floor(h), np.floor(w)
    lh, lw = h - h_low, w - w_low
    hh, hw = t(1) - lh, t(1) - lw
    h_low, w_low = h_low.astype(np.int64), w_low.astype(np.int64)
    batch = np.arange(value.shape[0])[:, None, None, None]
    head = np.arange(value.shape[2])[None, None, :, None]
    total = None
    for dh, dw, weight in ((0, 0, hh * hw), (0, 1, hh * lw), (1, 0, lh * hw), (1, 1, lh * lw)):
        rows, cols = h_low + dh, w_low + dw
        valid = inside & (rows >= 0) & (rows <= height - 1) & (cols >= 0) & (cols <= width - 1)
        flat = np.clip(rows, 0, height - 1) * width + np.clip(cols, 0, width - 1)
        term = np.where(valid, weight, t(0))[..., None] * value[batch, flat, head]
        total = term if total is None else total + term
    return total
