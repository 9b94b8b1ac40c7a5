"""Rewrite TopK(largest=0) as TopK(largest=1) over order-reversed values."""

from __future__ import annotations

import numpy as np

import graphfix as gf

# Sub takes 8- and 16-bit integers only from opset 14 (Sub-14 widened its types).
_SUB_NARROW_INTS_SINCE = 14


@gf.rule(limitation="topk.largest_ignored")
class NegateTopkSmallest:
    """Rewrite TopK(largest=0) as an order-reversing map, TopK(largest=1), and the map back.

    TensorRT limitation: TensorRT 7.2 to 8.4 import TopK with largest=0 as a top-max layer
    without a warning, so the k largest values come back instead of the k smallest (a silent
    mismatch; trt-onnx-support.md, TopK row: S72, S80, S82, S84; 8.5 honours `largest`, S85).

    Rewrite: r(x) is a strictly order-reversing bijection of the input's type onto itself: Neg
    for floating-point inputs and Sub(c, x) for integers, with c = -1 for signed types
    (-1 - x = ~x maps [min, max] onto itself, where Neg would wrap INT_MIN onto itself) and
    c = the type's maximum for unsigned ones. TopK(largest=1) of r(x) with the same axis, K and
    `sorted` selects the positions TopK(largest=0) of x selects; its indices are the result and
    r applied to its values gives the values back exactly (r is an involution; Neg keeps the
    sign of zeros and NaN payloads). Equal inputs stay equal under r, so ties break as before
    (lower index first, ONNX's rule), and since r(a) > r(b) holds exactly when a < b, also for
    NaN (both false), onnxruntime's comparator takes the same decisions: indices are identical
    with NaN inputs and with sorted=0 too. Integer TopK is refused by these TensorRT versions
    anyway (topk.int32_input); the integer form keeps the rewrite exact for every model ONNX
    allows. 8- and 16-bit integers before opset 14 are left alone (Sub has no such types there).
    Cost: one element-wise pass over TopK's input and one over its k outputs.
    """

    def pattern(self, op, x, k):
        return op.TopK(x, k, largest=0, _outputs=2, _capture="topk")

    def check(self, ctx, x):
        dtype = ctx.numpy_dtype(x)
        if dtype is None:
            return gf.reject("the input's element type is unknown", x)
        if dtype.kind == "f" or dtype.name == "bfloat16":
            return gf.accept(pivot=None)
        if dtype.kind not in "iu":
            return gf.reject(f"TopK on {dtype.name} has no order-reversing map", x)
        if dtype.itemsize < 4 and ctx.opset < _SUB_NARROW_INTS_SINCE:
            return gf.reject(f"Sub takes no {dtype.name} before opset {_SUB_NARROW_INTS_SINCE}", x)
        pivot = np.array(-1 if dtype.kind == "i" else np.iinfo(dtype).max, dtype)
        return gf.accept(pivot=pivot)

    def rewrite(self, op, x, k, topk, pivot):
        values, indices = op.TopK(
            _reversed_order(op, x, pivot), k,
            axis=op.ctx.attr(topk, "axis"), largest=1, sorted=op.ctx.attr(topk, "sorted"), _outputs=2,
        )
        used_values, used_indices = (op.ctx.is_used(t) for t in topk.outputs)
        return (_reversed_order(op, values, pivot) if used_values else None,
                indices if used_indices else None)


def _reversed_order(op, tensor, pivot):
    """Neg(tensor) for floats, pivot - tensor for integers: order-reversing and exact."""
    return op.Neg(tensor) if pivot is None else op.Sub(op.constant(pivot), tensor)
