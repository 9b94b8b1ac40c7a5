"""Fold constant Range into an initializer; compute refused Range dtypes through INT32/FP32."""

from __future__ import annotations

import math

import numpy as np

import graphfix as gf

# Larger constant Ranges stay computed, like graphfix's constant folding (execute.fold).
_FOLD_LIMIT = 1 << 20
# Range-27 added float16/bfloat16 with `stash_type` (1 = compute in float32, the default).
_STASH_FLOAT32 = 1


@gf.rule(limitation=("range.dtype", "range.float_not_weights"), stage="fold")
class FoldRange:
    """Fold Range with constant inputs; compute Range in dtypes TensorRT refuses via INT32/FP32.

    TensorRT limitation: every release imports Range for FP32/INT32/INT64 only (INT64 narrowed
    to INT32 up to 8.6; FP16, BF16, DOUBLE, INT16 refused; 10.x docs list FP16 but the importer
    rejects it), and 7.2 to 8.2 take FP32 Range only when start, limit and delta are all
    initializers, else they require INT32 (trt-onnx-support.md Range row: S72, S80-S86, S100,
    S1016; the 8.4 changelog adds dynamic FP32 Range). Keys `range.dtype`,
    `range.float_not_weights`.

    Rewrite, in order:

    * start, limit and delta computable from constants (and at most 2**20 elements): the
      output becomes an initializer computed with numpy as the ONNX spec's pseudocode says,
      `start + i * delta` for i < max(ceil((limit - start) / delta), 0) (16-bit floats in
      float32, as Range-27's default stash_type). Exact for integers. For floats it is also
      what TensorRT's fill layer computes; onnxruntime's kernel adds delta repeatedly, which
      drifts by float rounding on long fractional ranges (1e-4 relative after 10**4 steps of
      0.1), so there the verifier's tolerance decides.
    * INT16 (runtime inputs): Cast to INT32, Range, Cast back: exact (every value lies between
      start and limit, so it fits INT16).
    * FP16/BF16/DOUBLE, and FP32 with runtime inputs on targets where it needs initializers:
      the element count is computed in the compute type (float32 for 16-bit floats unless
      stash_type says otherwise, the input type otherwise) as ceil((limit - start) / delta),
      Cast to INT32, an INT32 Range(0, count, 1) gives i, and the values are
      start + Cast(i) * delta, cast back to the input type. Exact for integer-valued ranges
      (the usual `torch.arange(n, dtype=float)`), and for 16-bit floats it rounds once from
      float32 as Range-27 specifies.

    INT32/INT64 Range with runtime inputs, and FP32 Range whose inputs are initializers (or any
    FP32 Range from 8.4 on), are imported as they are: near misses.
    """

    def pattern(self, op, start, limit, delta):
        return op.Range(start, limit, delta, _capture="node")

    def check(self, ctx, start, limit, delta, node):
        dtype = ctx.numpy_dtype(start)
        if dtype is None:
            return gf.reject("the element type is unknown", start)
        compute = _compute_dtype(ctx, node, dtype)
        inputs = [ctx.constant(t) for t in (start, limit, delta)]
        if all(value is not None for value in inputs) and _count(*inputs, compute) <= _FOLD_LIMIT:
            return gf.accept(value=_range_values(*inputs, compute))
        if dtype.name in ("int32", "int64"):
            narrowed = " (narrowed to INT32 up to 8.6, as every INT64 tensor)" if dtype.name == "int64" else ""
            return gf.reject(f"Range on {dtype.name} with runtime inputs is imported by every target{narrowed}", node)
        if dtype.name == "float32":
            if all(ctx.is_weights(t) for t in (start, limit, delta)):
                return gf.reject("float32 Range with initializer inputs is imported by every target", node)
            if ctx.target is not None and not ctx.target.is_active("range.float_not_weights"):
                return gf.reject("the target imports float32 Range with runtime inputs (8.4+)", node)
        return gf.accept(value=None, compute=compute)

    def rewrite(self, op, start, limit, delta, value, compute=None):
        if value is not None:
            return op.constant(value)
        dtype = op.ctx.numpy_dtype(start)
        if dtype.kind in "iu":
            bounds = (op.cast(t, np.int32) for t in (start, limit, delta))
            return op.cast(op.Range(*bounds), dtype)
        first, last, step = (_as(op, t, compute) for t in (start, limit, delta))
        count = op.cast(op.Ceil(op.Div(op.Sub(last, first), step)), np.int32)
        index = op.Range(np.zeros((), np.int32), count, np.ones((), np.int32))
        return _as(op, op.Add(first, op.Mul(op.cast(index, compute), step)), dtype)


def _compute_dtype(ctx, node, dtype: np.dtype) -> np.dtype:
    """float32 for 16-bit floats (Range-27's default stash_type), else the input's own type."""
    sixteen_bit_float = dtype.itemsize == 2 and dtype.kind not in "iu"
    if sixteen_bit_float and ctx.attr(node, "stash_type", _STASH_FLOAT32) == _STASH_FLOAT32:
        return np.dtype(np.float32)
    return dtype


def _as(op, tensor, dtype: np.dtype):
    return tensor if op.ctx.numpy_dtype(tensor) == dtype else op.cast(tensor, dtype)


def _count(start, limit, delta, compute: np.dtype) -> int:
    """max(ceil((limit - start) / delta), 0), the difference in the compute type."""
    first, last, step = (np.asarray(v).reshape(()).astype(compute) for v in (start, limit, delta))
    return max(math.ceil(float(last - first) / float(step)), 0)  # onnxruntime divides in double


def _range_values(start, limit, delta, compute: np.dtype) -> np.ndarray:
    """The ONNX pseudocode: start + i * delta for i < max(ceil((limit - start) / delta), 0)."""
    dtype = np.asarray(start).dtype
    count = _count(start, limit, delta, compute)
    first, step = (np.asarray(v).reshape(()).astype(compute) for v in (start, delta))
    if dtype.kind in "iu":
        return (first.astype(np.int64) + np.arange(count, dtype=np.int64) * step.astype(np.int64)).astype(dtype)
    return (first + np.arange(count).astype(compute) * step).astype(dtype)
