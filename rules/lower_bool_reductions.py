"""Reduce BOOL tensors (any/all) in FLOAT: Cast, ReduceMax/ReduceMin, Greater than 0."""

from __future__ import annotations

import numpy as np

import graphfix as gf


@gf.rule(limitation="reduce.bool_input", stage="repair")
class LowerBoolReductions:
    """Compute ReduceMax (any) / ReduceMin (all) of a BOOL tensor on its FLOAT 0/1 values.

    TensorRT limitation: no TensorRT version reduces a BOOL tensor: the 7.2-8.6 reduce layer is
    documented for FP32/FP16 only and 10.x rejects BOOL and UINT8 reduce inputs explicitly
    (trt-onnx-support.md, "ReduceMax / ReduceMin / ReduceSum used as any()/all()" row: S72-S86,
    S100, S1016). ONNX allows BOOL in ReduceMax/ReduceMin from opset 20 only, yet both of
    PyTorch 2.14's exporters write `bool_tensor.amax(dim)` as ReduceMax on BOOL at opset 18 too
    (`any()`/`all()` go through integer casts), which onnxruntime 1.31 refuses to load ("Type
    'tensor(bool)' of input parameter ... is invalid"), so the rule runs with the export repairs.

    Rewrite: Cast(x, FLOAT) -> the same Reduce node (same axes input or attribute, keepdims,
    noop_with_empty_axes) -> Greater(., 0). On 0/1 values max > 0 is "any true" and min > 0 is
    "all true", exactly; an empty reduction gives the lowest (max) / highest (min) FLOAT, hence
    false / true, ONNX's BOOL results for ReduceMax / ReduceMin. FLOAT rather than INT32 because
    the 8.0-8.4 parsers cast BOOL to FP32/FP16 but not to INT32, and Greater makes the BOOL
    result without a Cast to BOOL (impossible before 8.5).
    """

    def pattern(self, op, x, axes):
        return op.node({"ReduceMax", "ReduceMin"}, x.dtype("bool"), axes.optional(), _capture="reduce")

    def rewrite(self, op, x, axes, reduce):
        reduced = op.node(reduce.op, op.cast(x, np.float32), axes, **dict(reduce.attrs))
        return op.Greater(reduced, op.constant(0, np.float32))
