"""Replace Cast(to=BOOL) by Not(Equal(x, 0))."""

from __future__ import annotations

import numpy as np
import onnx

import graphfix as gf

_BOOL = int(onnx.TensorProto.BOOL)
# Input types Equal has an onnxruntime kernel for (checked with 1.31 at opsets 11, 13 and 18).
_COMPARABLE = frozenset({
    "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
})


@gf.rule(limitation="cast.to_bool", stage="lower")
class ReplaceCastToBool:
    """Write a cast to BOOL as "is not zero": Not(Equal(x, 0)).

    TensorRT limitation: TensorRT 7.2 to 8.4 cannot cast to BOOL: the Cast importer maps to an
    identity layer whose conversions never produce BOOL (trt-onnx-support.md, Cast row: S72-S84,
    IIdentityLayer notes of NvInfer.h 7.2/8.0/8.2); 8.5 added it. PyTorch exports `.bool()`,
    masks and `torch.eye(dtype=bool)` as Cast(to=BOOL).

    Rewrite: ONNX casts a number to BOOL as "x != 0", so Not(Equal(x, 0)) with a zero of x's
    own type is exact for every value: -0.0 equals 0 (false), NaN equals nothing (true, as
    Cast(NaN) is), infinities are true. Equal and Not on FP32/FP16/INT32 with a BOOL result are
    elementwise layers every TensorRT version has. A BOOL input is already BOOL: its consumers
    read it directly. Inputs of other types (BFLOAT16, strings, unknown) are left alone with
    that reason.
    """

    def pattern(self, op, x):
        return op.Cast(x, to=_BOOL)

    def check(self, ctx, x):
        dtype = ctx.dtype(x)
        if dtype != "bool" and dtype not in _COMPARABLE:
            return gf.reject(f"the input type is {dtype}: no Equal to compare it with 0", x)
        return gf.accept()

    def rewrite(self, op, x):
        dtype = op.ctx.numpy_dtype(x)
        if dtype == np.bool_:
            return x
        return op.Not(op.Equal(x, op.constant(0, dtype)))
