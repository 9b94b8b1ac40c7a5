"""RoiAlign (ONNX opsets 10/16/22), mmcv `MMCVRoiAlign` and TensorRT `ROIAlign_TRT` as numpy kernels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["roi_align", "roialign_kernel", "trt_roi_align_kernel", "mmcv_roi_align_kernel"]

# All three descend from the Caffe2/Detectron RoIAlign and share the sampling: ROI corners are
# scaled by spatial_scale and shifted by -0.5 when half-pixel ("aligned"); without the shift the
# ROI size is clamped to >= 1; each output bin takes a grid of sampling_ratio**2 points, or
# ceil(roi_size / output_size) per axis when sampling_ratio is 0; a point outside
# [-1, size] on either axis contributes 0, otherwise it is clamped into the image and
# interpolated bilinearly. They differ in max pooling and in bins without samples:
#
# * ONNX (reference implementation onnx/reference/ops/op_roi_align.py, the backend test
#   test_roialign_mode_max, onnxruntime's CPU and CUDA kernels) and ROIAlign_TRT
#   (NVIDIA/TensorRT plugin/roiAlignPlugin/roiAlignKernel.cu) take, per sampling point, the
#   maximum of the four weighted corner terms w_i * v_i, then the maximum over points. The spec's
#   prose ("the value of the sampled locations are computed directly through bilinear
#   interpolation") suggests max over interpolated values instead (onnx/onnx#4764, open;
#   onnxruntime's max-mode warning in roialign.h and onnxruntime#6146). Conformance follows the
#   reference implementation, so `roi_align` does too.
# * mmcv (mmcv/ops/csrc/pytorch/cpu/roi_align.cpp, mmdeploy's TensorRT plugin
#   trt_roi_align_kernel.cu) takes the maximum over bilinearly interpolated values, starting
#   from -FLT_MAX. A max-mode MMCVRoiAlign therefore cannot be rewritten to ONNX RoiAlign.
# * Bins without sampling points (half-pixel ROIs of size 0 with sampling_ratio 0): average is
#   0 in ONNX (reference: count >= 1) and mmcv, 0/0 = NaN in ROIAlign_TRT; max is 0 in ONNX and
#   ROIAlign_TRT, -FLT_MAX in mmcv's TensorRT plugin.

_FLT_MAX = float(np.finfo(np.float32).max)
# Up to this many points per bin, pool from an exact four-corner gather (bitwise onnxruntime's
# arithmetic); beyond it, interpolate separably (same values up to float rounding, far faster).
_GATHER_MAX_POINTS = 16
# Elements of one gathered [ROIs, 2 * oh * gh, 2 * ow * gw, C] block: cache-sized blocks are fastest.
_CHUNK_ELEMENTS = 1 << 18


def roi_align(
    x: np.ndarray,
    rois: np.ndarray,
    batch_indices: np.ndarray,
    output_height: int = 1,
    output_width: int = 1,
    sampling_ratio: int = 0,
    spatial_scale: float = 1.0,
    coordinate_transformation_mode: str = "half_pixel",
    mode: str = "avg",
) -> np.ndarray:
    """ONNX RoiAlign as the reference implementation and onnxruntime compute it (see the module comment).

    Opset-10 nodes have no coordinate_transformation_mode attribute and mean
    "output_half_pixel"; opset 16 and 22 default to "half_pixel". Pass it explicitly.

    Args:
        x: Features [N, C, H, W].
        rois: [R, 4] as (x1, y1, x2, y2) in input-image coordinates.
        batch_indices: [R] image index of each ROI.
        output_height: Pooled height.
        output_width: Pooled width.
        sampling_ratio: Points per bin and axis; 0 = ceil(roi_size / output_size).
        spatial_scale: Factor from ROI to feature coordinates.
        coordinate_transformation_mode: "half_pixel" or "output_half_pixel".
        mode: "avg" or "max" (maximum of weighted corner terms).

    Returns:
        [R, C, output_height, output_width] in x's dtype.
    """
    if coordinate_transformation_mode not in ("half_pixel", "output_half_pixel"):
        raise ValueError(f"RoiAlign: unknown coordinate_transformation_mode {coordinate_transformation_mode!r}")
    mode = mode.lower()
    if mode not in ("avg", "max"):
        raise ValueError(f"RoiAlign: unknown mode {mode!r}")
    return _roi_align(
        x, rois, batch_indices, output_height, output_width, sampling_ratio, spatial_scale,
        aligned=coordinate_transformation_mode == "half_pixel",
        pool="avg" if mode == "avg" else "max_corners",
        at_least_one=True,
    )


def roialign_kernel(inputs: Sequence[np.ndarray | None], attrs: Mapping[str, Any]) -> list[np.ndarray]:
    """ONNX RoiAlign node (opset 16/22 defaults; opset-10 nodes need output_half_pixel passed).

    Args:
        inputs: X, rois [R, 4], batch_indices [R].
        attrs: ONNX attributes.

    Returns:
        [Y].
    """
    return [
        roi_align(
            inputs[0], inputs[1], inputs[2],
            output_height=int(attrs.get("output_height", 1)),
            output_width=int(attrs.get("output_width", 1)),
            sampling_ratio=int(attrs.get("sampling_ratio", 0)),
            spatial_scale=float(attrs.get("spatial_scale", 1.0)),
            coordinate_transformation_mode=_text(attrs.get("coordinate_transformation_mode", "half_pixel")),
            mode=_text(attrs.get("mode", "avg")),
        )
    ]


def trt_roi_align_kernel(inputs: Sequence[np.ndarray | None], attrs: Mapping[str, Any]) -> list[np.ndarray]:
    """TensorRT ROIAlign_TRT plugin (v1/v2; NVIDIA/TensorRT plugin/roiAlignPlugin).

    Fields and creator defaults (roiAlignPlugin.cpp): coordinate_transformation_mode int,
    1 = half_pixel (default), 0 = output_half_pixel; mode int, 1 = avg (default), 0 = max;
    output_height, output_width (1); sampling_ratio (0, adaptive); spatial_scale (1.0).
    Same sampling as ONNX RoiAlign including the max-of-weighted-corners max mode; an average
    bin without samples is 0/0 = NaN as in the CUDA kernel (roiAlignKernel.cu).

    Args:
        inputs: X [N, C, H, W], rois [R, 4], batch_indices [R] (INT32 in the plugin).
        attrs: Plugin fields.

    Returns:
        [Y] of shape [R, C, output_height, output_width].
    """
    mode = int(attrs.get("mode", 1))
    aligned = int(attrs.get("coordinate_transformation_mode", 1))
    if mode not in (0, 1) or aligned not in (0, 1):
        raise ValueError(f"ROIAlign_TRT: mode {mode} / coordinate_transformation_mode {aligned} must be 0 or 1")
    return [
        _roi_align(
            inputs[0], inputs[1], inputs[2],
            int(attrs.get("output_height", 1)), int(attrs.get("output_width", 1)),
            int(attrs.get("sampling_ratio", 0)), float(attrs.get("spatial_scale", 1.0)),
            aligned=bool(aligned), pool="avg" if mode == 1 else "max_corners", at_least_one=False,
        )
    ]


def mmcv_roi_align_kernel(inputs: Sequence[np.ndarray | None], attrs: Mapping[str, Any]) -> list[np.ndarray]:
    """mmcv/mmdeploy MMCVRoiAlign (mmdeploy/mmcv/ops/roi_align.py exports mmcv's roi_align).

    rois are [R, 5] = (batch index, x1, y1, x2, y2); the batch index is truncated to int as
    the C++ kernels do. Attributes, with the defaults of mmdeploy's TensorRT plugin creator
    (trt_roi_align.cpp): output_height, output_width (7), spatial_scale (1.0), sampling_ratio
    (0 = adaptive ceil(roi_size / output_size)), mode "avg"/"max" (a string in the exporter;
    the plugin requires it, "avg" here as mmcv's RoIAlign default; ints are read as mmcv's
    pool_mode, 0 max / 1 avg), aligned (1): 1 shifts by -0.5 like torchvision
    roi_align(aligned=True), 0 clamps the ROI size to >= 1 like torchvision's aligned=False.
    Max pools interpolated values (see the comment at the top of this module).

    Args:
        inputs: input [N, C, H, W] and rois [R, 5].
        attrs: Node attributes.

    Returns:
        [output] of shape [R, C, output_height, output_width].
    """
    x, rois = inputs[0], inputs[1]
    mode = attrs.get("mode", "avg")
    mode = {0: "max", 1: "avg"}.get(mode, mode) if isinstance(mode, int) else _text(mode)
    if mode not in ("avg", "max"):
        raise ValueError(f"MMCVRoiAlign: unknown mode {mode!r}")
    return [
        _roi_align(
            x, rois[:, 1:5], np.trunc(rois[:, 0]).astype(np.int64),
            int(attrs.get("output_height", 7)), int(attrs.get("output_width", 7)),
            int(attrs.get("sampling_ratio", 0)), float(attrs.get("spatial_scale", 1.0)),
            aligned=bool(attrs.get("aligned", 1)), pool="avg" if mode == "avg" else "max_interpolated",
            at_least_one=True,
        )
    ]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _roi_align(
    x: np.ndarray,
    rois: np.ndarray,
    batch_indices: np.ndarray,
    output_height: int,
    output_width: int,
    sampling_ratio: int,
    spatial_scale: float,
    aligned: bool,
    pool: str,
    at_least_one: bool,
) -> np.ndarray:
    """Shared RoIAlign; `pool` is avg, max_corners or max_interpolated (see the module comment).

    Args:
        x: [N, C, H, W].
        rois: [R, 4] (x1, y1, x2, y2).
        batch_indices: [R].
        output_height: Pooled height.
        output_width: Pooled width.
        sampling_ratio: Points per bin and axis, 0 = adaptive.
        spatial_scale: ROI to feature scale.
        aligned: Half-pixel shift (and no size clamp).
        pool: avg, max_corners or max_interpolated.
        at_least_one: Average divides by max(count, 1) (ONNX, mmcv) rather than count (TRT).

    Returns:
        [R, C, output_height, output_width] in x's dtype.
    """
    if x.ndim != 4 or rois.ndim != 2 or rois.shape[1] != 4 or batch_indices.shape != (rois.shape[0],):
        raise ValueError(f"RoiAlign needs X [N,C,H,W], rois [R,4], batch_indices [R]; got {x.shape}, {rois.shape}, "
                         f"{batch_indices.shape}")
    if output_height < 1 or output_width < 1 or sampling_ratio < 0:
        raise ValueError("RoiAlign: output sizes must be >= 1 and sampling_ratio >= 0")
    batch_indices = np.asarray(batch_indices).astype(np.int64)
    if batch_indices.size and (batch_indices.min() < 0 or batch_indices.max() >= x.shape[0]):
        raise ValueError(f"RoiAlign: batch index out of range [0, {x.shape[0]})")
    dtype = np.result_type(x.dtype, rois.dtype, np.float32)
    t = dtype.type
    _, channels, height, width = x.shape
    image = np.ascontiguousarray(np.moveaxis(x.astype(dtype, copy=False), 1, 3))  # [N, H, W, C]
    boxes = rois.astype(dtype, copy=False) * t(spatial_scale) - t(0.5 if aligned else 0.0)
    sizes = np.stack([boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]], axis=1)  # (h, w)
    if not aligned:
        sizes = np.maximum(sizes, t(1))
    outputs = np.array([output_height, output_width])
    bins = sizes / outputs.astype(dtype)
    if sampling_ratio > 0:
        grids = np.full(sizes.shape, sampling_ratio, dtype=np.int64)
    else:
        grids = np.ceil(sizes / outputs.astype(dtype)).astype(np.int64)
    result = np.empty((rois.shape[0], output_height, output_width, channels), dtype)
    # ROIs with the same sampling grid are pooled together (all of them for a fixed sampling_ratio).
    shapes, group_of = np.unique(grids, axis=0, return_inverse=True)
    for group, (gh, gw) in enumerate(shapes.tolist()):
        members = np.flatnonzero(group_of.reshape(-1) == group)
        if gh <= 0 or gw <= 0:
            result[members] = _empty_bin(pool, gh * gw, at_least_one, dtype)
            continue
        count = t(max(gh * gw, 1) if at_least_one else gh * gw)
        ys, wy = _axis_samples(boxes[members, 1], bins[members, 0], gh, output_height, height)
        xs, wx = _axis_samples(boxes[members, 0], bins[members, 1], gw, output_width, width)
        if pool == "max_corners" or gh * gw <= _GATHER_MAX_POINTS:
            per_roi = 4 * ys[0, 0].size * xs[0, 0].size * channels
            step = max(1, _CHUNK_ELEMENTS // per_roi)
            for first in range(0, members.size, step):
                part = slice(first, first + step)
                result[members[part]] = _pool_gathered(image, batch_indices[members[part]], ys[part], wy[part],
                                                       xs[part], wx[part], pool, count)
        else:
            for k, r in enumerate(members):
                result[r] = _pool_separable(image[batch_indices[r]], ys[k], wy[k], xs[k], wx[k], pool, count)
    return np.moveaxis(result, 3, 1).astype(x.dtype, copy=False)


def _empty_bin(pool: str, count: int, at_least_one: bool, dtype: np.dtype) -> np.floating:
    """The value of a bin without sampling points (see the module comment)."""
    if pool == "max_corners":
        return dtype.type(0)
    if pool == "max_interpolated":
        return dtype.type(-_FLT_MAX)
    with np.errstate(divide="ignore", invalid="ignore"):
        return dtype.type(0) / dtype.type(max(count, 1) if at_least_one else count)


def _axis_samples(
    starts: np.ndarray, bin_sizes: np.ndarray, grid: int, pooled: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sample rows (or columns) of ROIs on one axis and their bilinear weights.

    pre_calc_for_bilinear_interpolate of the kernels, one axis at a time: the point
    start + ph * bin + (i + 0.5) * bin / grid is outside when < -1 or > size, else clamped at 0,
    its low neighbour truncated, and both neighbours clamped to size - 1.

    Args:
        starts: ROI starts on this axis (scaled, shifted), [R].
        bin_sizes: ROI size / pooled size, [R].
        grid: Sampling points per bin on this axis (> 0).
        pooled: Output size on this axis.
        size: Feature size on this axis.

    Returns:
        Indices [R, 2, pooled, grid] (low, high neighbours) and their weights, 0 for outside points.
    """
    t = starts.dtype.type
    bins = np.arange(pooled, dtype=starts.dtype)[None, :, None]
    steps = np.arange(grid, dtype=starts.dtype)[None, None, :] + t(0.5)
    start, bin_size = starts[:, None, None], bin_sizes[:, None, None]
    position = start + bins * bin_size + steps * bin_size / t(grid)
    inside = (position >= t(-1)) & (position <= t(size))
    position = np.maximum(position, t(0))
    low = np.trunc(position).astype(np.int64)
    at_edge = low >= size - 1
    low = np.where(at_edge, size - 1, low)
    high = np.where(at_edge, size - 1, low + 1)
    frac = np.where(at_edge, t(0), position - low.astype(position.dtype))
    weights = np.stack([t(1) - frac, frac], axis=1) * inside[:, None]
    return np.stack([low, high], axis=1), weights.astype(position.dtype, copy=False)


def _pool_gathered(
    image: np.ndarray,
    batch: np.ndarray,
    ys: np.ndarray,
    wy: np.ndarray,
    xs: np.ndarray,
    wx: np.ndarray,
    pool: str,
    count: np.floating,
) -> np.ndarray:
    """Pool ROIs from a gather of every point's four corners (the kernels' exact arithmetic).

    Args:
        image: [N, H, W, C].
        batch: Batch index per ROI, [R].
        ys: Row indices [R, 2, oh, gh]; wy: their weights.
        xs: Column indices [R, 2, ow, gw]; wx: their weights.
        pool: avg, max_corners or max_interpolated.
        count: Divisor of averages.

    Returns:
        [R, oh, ow, C].
    """
    rois, _, oh, gh = ys.shape
    ow, gw = xs.shape[2:]
    values = image[batch[:, None, None], ys.reshape(rois, -1, 1), xs.reshape(rois, 1, -1)]  # [R, 2ohgh, 2owgw, C]
    weights = wy.reshape(rois, -1, 1) * wx.reshape(rois, 1, -1)
    terms = (weights[..., None] * values).reshape(rois, 2, oh, gh, 2, ow, gw, -1)
    if pool == "max_corners":
        return terms.max(axis=(1, 4)).max(axis=(2, 4))
    # The four corner terms in the kernels' order (low-low, low-high, high-low, high-high).
    samples = ((terms[:, 0, :, :, 0] + terms[:, 0, :, :, 1]) + terms[:, 1, :, :, 0]) + terms[:, 1, :, :, 1]
    return samples.max(axis=(2, 4)) if pool == "max_interpolated" else samples.sum(axis=(2, 4)) / count


def _pool_separable(
    image: np.ndarray, ys: np.ndarray, wy: np.ndarray, xs: np.ndarray, wx: np.ndarray, pool: str, count: np.floating
) -> np.ndarray:
    """Pool one ROI with many points per bin by interpolating separably on its window.

    Same values as the four-corner gather up to float rounding, without gathering
    4 x points x channels values.

    Args:
        image: [H, W, C] of the ROI's batch item.
        ys: Row indices [2, oh, gh]; wy: their weights.
        xs: Column indices [2, ow, gw]; wx: their weights.
        pool: avg or max_interpolated.
        count: Divisor of averages.

    Returns:
        [oh, ow, C].
    """
    (y0, y1), (x0, x1) = (ys.min(), ys.max() + 1), (xs.min(), xs.max() + 1)
    window = image[y0:y1, x0:x1]
    ys, xs = ys - y0, xs - x0
    if pool == "avg":
        # The average is linear: out = Ay @ window @ Ax^T with per-bin summed row/column weights;
        # columns first, as each window row is a contiguous [Ws, C] block (no copy of the window).
        rows, cols = _bin_weights(ys, wy, y1 - y0), _bin_weights(xs, wx, x1 - x0)
        return np.tensordot(rows, np.matmul(cols, window), axes=(1, 0)) / count
    oh, gh = ys.shape[1:]
    ow, gw = xs.shape[1:]
    by_rows = wy[0].reshape(-1, 1, 1) * window[ys[0].reshape(-1)] + wy[1].reshape(-1, 1, 1) * window[ys[1].reshape(-1)]
    samples = (wx[0].reshape(1, -1, 1) * by_rows[:, xs[0].reshape(-1)]
               + wx[1].reshape(1, -1, 1) * by_rows[:, xs[1].reshape(-1)])
    return samples.reshape(oh, gh, ow, gw, -1).max(axis=(1, 3))


def _bin_weights(index: np.ndarray, weight: np.ndarray, size: int) -> np.ndarray:
    """Sum each bin's interpolation weights per row (or column) of the window.

    Args:
        index: [2, pooled, grid] rows of the window.
        weight: Their weights.
        size: Rows in the window.

    Returns:
        [pooled, size].
    """
    pooled = index.shape[1]
    out = np.zeros((pooled, size), weight.dtype)
    bins = np.broadcast_to(np.arange(pooled)[None, :, None], index.shape)
    np.add.at(out, (bins.reshape(-1), index.reshape(-1)), weight.reshape(-1))
    return out
