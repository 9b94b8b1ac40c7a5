"""GridSample (ONNX opsets 16/20/22) and mmdeploy `grid_sampler` as vectorised numpy kernels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["grid_sample", "gridsample_kernel", "mmdeploy_grid_sampler_kernel"]

# Opset 16 spells bilinear/bicubic, opset 20 linear/cubic; both mean the same.
_MODES = {"bilinear": "linear", "linear": "linear", "nearest": "nearest", "bicubic": "cubic", "cubic": "cubic"}
_PADDINGS = ("zeros", "border", "reflection")
# torch's GridSamplerInterpolation / GridSamplerPadding enums, which mmdeploy exports verbatim.
_MMDEPLOY_MODES = {0: "linear", 1: "nearest", 2: "cubic"}
_MMDEPLOY_PADDINGS = {0: "zeros", 1: "border", 2: "reflection"}
_CUBIC_ALPHA = -0.75


def grid_sample(
    x: np.ndarray,
    grid: np.ndarray,
    mode: str = "linear",
    padding_mode: str = "zeros",
    align_corners: bool = False,
) -> np.ndarray:
    """Sample `x` at the normalised locations of `grid` exactly as onnxruntime's CPU GridSample.

    Semantics (onnxruntime core/providers/cpu/tensor/grid_sample.cc, which the ONNX backend
    tests and PyTorch's grid_sample agree with): a grid value n in [-1, 1] maps to the pixel
    coordinate (n + 1) / 2 * (size - 1) if align_corners else ((n + 1) * size - 1) / 2, computed
    in the input's float type. grid[..., 0] indexes the last (W) axis, grid[..., 1] H, grid[..., 2] D.
    nearest rounds half to even (std::nearbyint); linear interpolates the 2**d neighbours
    floor(c), floor(c) + 1; cubic (4-D only) uses the 4x4 neighbours of floor(c) with Keys
    coefficients, A = -0.75. Padding is applied to each neighbour's integer index: zeros reads 0
    outside the image, border clamps the index, reflection reflects it about [-0.5, size - 0.5]
    (align_corners=0) or [0, size - 1] (align_corners=1) as the spec's reflect formula.

    Args:
        x: Input [N, C, H, W] or [N, C, D, H, W] (float).
        grid: Locations [N, Ho, Wo, 2] or [N, Do, Ho, Wo, 3].
        mode: "linear"/"bilinear", "nearest", "cubic"/"bicubic".
        padding_mode: "zeros", "border" or "reflection".
        align_corners: Whether -1 and 1 are the centres of the corner pixels.

    Returns:
        [N, C, *grid.shape[1:-1]] in x's dtype.
    """
    mode = _MODES.get(mode)
    if mode is None or padding_mode not in _PADDINGS:
        raise ValueError(f"unsupported GridSample mode {mode!r} / padding_mode {padding_mode!r}")
    spatial = x.ndim - 2
    if spatial not in (2, 3) or grid.ndim != x.ndim or grid.shape[-1] != spatial or grid.shape[0] != x.shape[0]:
        raise ValueError(f"GridSample needs X [N,C,(D,)H,W] and grid [N,...,{spatial}]; got {x.shape}, {grid.shape}")
    if mode == "cubic" and spatial != 2:
        raise ValueError("GridSample cubic mode is defined for 4-D inputs only")
    dtype = np.result_type(x.dtype, grid.dtype, np.float32)
    n, c = x.shape[:2]
    sizes = x.shape[:1:-1]  # innermost first: W, H(, D), matching grid's last axis
    points = grid.reshape(n, -1, spatial).astype(dtype, copy=False)
    coords = [_denormalize(points[..., k], sizes[k], align_corners) for k in range(spatial)]
    image = np.moveaxis(x.astype(dtype, copy=False).reshape(n, c, -1), 1, 2)  # [N, S, C]
    if mode == "nearest":
        taps = [[(np.rint(u).astype(np.int64), None)] for u in coords]
    elif mode == "linear":
        taps = [_linear_taps(u) for u in coords]
    else:
        taps = [_cubic_taps(u) for u in coords]
    values = _interpolate(image, sizes, taps, padding_mode, align_corners, dtype)  # [N, P, C]
    return np.moveaxis(values, 2, 1).reshape(n, c, *grid.shape[1:-1]).astype(x.dtype, copy=False)


def gridsample_kernel(inputs: Sequence[np.ndarray | None], attrs: Mapping[str, Any]) -> list[np.ndarray]:
    """ONNX GridSample node: inputs (X, grid), attributes mode, padding_mode, align_corners.

    Args:
        inputs: X and grid.
        attrs: ONNX attributes; defaults as in the spec (linear, zeros, 0).

    Returns:
        [Y].
    """
    x, grid = inputs[0], inputs[1]
    return [
        grid_sample(
            x,
            grid,
            mode=_text(attrs.get("mode", "linear")),
            padding_mode=_text(attrs.get("padding_mode", "zeros")),
            align_corners=bool(attrs.get("align_corners", 0)),
        )
    ]


def mmdeploy_grid_sampler_kernel(inputs: Sequence[np.ndarray | None], attrs: Mapping[str, Any]) -> list[np.ndarray]:
    """mmdeploy/mmcv `grid_sampler` (torch's aten::grid_sampler exported as a custom op).

    The integer attributes are torch's enums, exported verbatim by mmdeploy's symbolic
    (mmdeploy/pytorch/ops/grid_sampler.py): interpolation_mode 0 bilinear, 1 nearest, 2 bicubic;
    padding_mode 0 zeros, 1 border, 2 reflection; align_corners 0/1 (plugin defaults 0, 0, 0).
    This computes what the exported PyTorch model computes. Note that mmdeploy's TensorRT plugin
    (csrc/mmdeploy/backend_ops/tensorrt/grid_sampler/trt_grid_sampler.cpp) maps only 0 and 1 and
    silently runs bilinear for interpolation_mode 2.

    Args:
        inputs: input [N, C, H, W] (or 5-D) and grid.
        attrs: interpolation_mode, padding_mode, align_corners.

    Returns:
        [output].
    """
    interpolation = int(attrs.get("interpolation_mode", 0))
    padding = int(attrs.get("padding_mode", 0))
    if interpolation not in _MMDEPLOY_MODES or padding not in _MMDEPLOY_PADDINGS:
        raise ValueError(f"grid_sampler: unknown interpolation_mode {interpolation} / padding_mode {padding}")
    return [
        grid_sample(
            inputs[0],
            inputs[1],
            mode=_MMDEPLOY_MODES[interpolation],
            padding_mode=_MMDEPLOY_PADDINGS[padding],
            align_corners=bool(attrs.get("align_corners", 0)),
        )
    ]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _denormalize(n: np.ndarray, size: int, align_corners: bool) -> np.ndarray:
    """GsDenormalize: normalised [-1, 1] to pixel coordinates, same operation order as ORT."""
    one, two = n.dtype.type(1), n.dtype.type(2)
    if align_corners:
        return (n + one) / two * n.dtype.type(size - 1)
    return ((n + one) * n.dtype.type(size) - one) / two


def _linear_taps(u: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Neighbours floor(u), floor(u) + 1 with weights (floor(u) + 1 - u, u - floor(u))."""
    low = np.floor(u)
    high = low + 1
    return [(low.astype(np.int64), high - u), (high.astype(np.int64), u - low)]


def _cubic_taps(u: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Neighbours floor(u) - 1 .. floor(u) + 2 with Keys cubic coefficients (GsGetCubicCoeffs)."""
    base = np.floor(u)
    t = np.abs(u - base)
    a = u.dtype.type(_CUBIC_ALPHA)
    one, two = u.dtype.type(1), u.dtype.type(2)
    coeffs = [
        ((a * (t + one) - 5 * a) * (t + one) + 8 * a) * (t + one) - 4 * a,
        ((a + 2) * t - (a + 3)) * t * t + one,
        ((a + 2) * (one - t) - (a + 3)) * (one - t) * (one - t) + one,
        ((a * (two - t) - 5 * a) * (two - t) + 8 * a) * (two - t) - 4 * a,
    ]
    first = base.astype(np.int64) - 1
    return [(first + k, coeffs[k]) for k in range(4)]


def _interpolate(
    image: np.ndarray,
    sizes: Sequence[int],
    taps: Sequence[list[tuple[np.ndarray, np.ndarray | None]]],
    padding_mode: str,
    align_corners: bool,
    dtype: np.dtype,
) -> np.ndarray:
    """Weighted sum over the tap product, innermost axis first (ORT's summation order).

    Args:
        image: [N, S, C], S the flattened spatial size (row-major, innermost axis last).
        sizes: Spatial sizes, innermost first.
        taps: Per axis (innermost first), a list of (index [N, P], weight [N, P] or None).
        padding_mode: zeros, border or reflection.
        align_corners: Selects the reflection borders.
        dtype: Computation type.

    Returns:
        [N, P, C].
    """
    # Resolve every tap index of every axis once: clamped/reflected index and validity.
    resolved = [[(*_pad_index(index, size, padding_mode, align_corners, dtype), weight) for index, weight in axis_taps]
                for axis_taps, size in zip(taps, sizes)]
    strides = np.cumprod([1, *sizes[:-1]])
    batch = np.arange(image.shape[0])[:, None]

    def combine(axis: int, offset: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        # Recursive over axes from outermost to innermost so that the innermost sums come first.
        total = None
        for index, ok, weight in resolved[axis]:
            flat = offset + index * strides[axis]
            both = _both(valid, ok)
            if axis == 0:
                value = image[batch, flat]  # [N, P, C]
                if both is not None:
                    value = np.where(both[..., None], value, dtype.type(0))
            else:
                value = combine(axis - 1, flat, both)
            term = value if weight is None else weight[..., None] * value
            total = term if total is None else total + term
        return total

    return combine(len(sizes) - 1, np.zeros_like(taps[0][0][0]), None)


def _both(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None or b is None:
        return b if a is None else a
    return a & b


def _pad_index(
    index: np.ndarray, size: int, padding_mode: str, align_corners: bool, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray | None]:
    """PixelAtGrid's padding of one integer index: (index to read, validity mask or None)."""
    if padding_mode == "zeros":
        ok = (index >= 0) & (index < size)
        return np.clip(index, 0, size - 1), ok
    if padding_mode == "border":
        return np.clip(index, 0, size - 1), None
    low, high = (0.0, size - 1.0) if align_corners else (-0.5, size - 0.5)
    reflected = _reflect(index.astype(dtype), dtype.type(low), dtype.type(high))
    return np.clip(np.trunc(reflected).astype(np.int64), 0, size - 1), None


def _reflect(x: np.ndarray, low: np.floating, high: np.floating) -> np.ndarray:
    """GsReflect: reflect by the nearer border until inside [low, high] (ONNX spec formula)."""
    span = high - low
    if span <= 0:  # a 1-pixel axis with align_corners: every index reflects onto pixel 0
        return np.full_like(x, low)
    below, above = x < low, x > high
    distance = np.where(below, low - x, x - high)
    folds = np.trunc(distance / span)
    rest = distance - folds * span
    odd = np.mod(folds, 2) == 1
    from_below = np.where(odd, high - rest, low + rest)
    from_above = np.where(odd, low + rest, high - rest)
    return np.where(below, from_below, np.where(above, from_above, x))
