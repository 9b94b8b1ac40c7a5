"""Build a BOOL EyeLike as an INT32 EyeLike followed by Cast(to=BOOL)."""

from __future__ import annotations

import numpy as np
import onnx

import graphfix as gf

_BOOL = int(onnx.TensorProto.BOOL)
_INT32 = int(onnx.TensorProto.INT32)


@gf.rule(limitation="eyelike.bool", stage="repair")
class ComputeEyelikeInInt:
    """Compute an EyeLike whose output is BOOL in INT32 and Cast the result to BOOL.

    TensorRT limitation: an export repair, needed whatever the TensorRT version (7.2 to 10.x)
    because onnxruntime 1.31 has no EyeLike kernel with a BOOL input or output ("Could not find
    an implementation for EyeLike(9)"), which blocks verification of the whole model; ONNX allows
    it, and transformers' Grounding DINO builds `torch.eye(n, dtype=torch.bool)` that way
    (EyeLike of a BOOL ConstantOfShape). TensorRT's own EyeLike importer also builds INT32
    weights and casts them to the output type, a cast to BOOL it cannot do before 8.5
    (targets.py EXPORT_REPAIRS, source key "onnxruntime EyeLike kernel types"; Cast row S72-S84).

    Rewrite: EyeLike's output depends only on its input's shape and on `k`, so the same EyeLike
    (same `k`) is computed with dtype INT32, from the input cast to INT32 when the input is BOOL
    or untyped (onnxruntime has no kernel for a BOOL input either), then Cast to BOOL: 1 -> true,
    0 -> false, exactly the BOOL identity. Dynamic shapes flow through unchanged.
    """

    def pattern(self, op, x):
        return op.EyeLike(x, _capture="eye")

    def check(self, ctx, x, eye):
        dtype = ctx.attr(eye, "dtype")
        if dtype is None and ctx.dtype(x) is None:
            return gf.reject("the input type is unknown (and no dtype attribute)", x)
        produces_bool = dtype == _BOOL if dtype is not None else ctx.dtype(x) == "bool"
        if not produces_bool:
            return gf.reject("the EyeLike does not produce BOOL", eye)
        return gf.accept()

    def rewrite(self, op, x, eye):
        shape_source = op.cast(x, np.int32) if op.ctx.dtype(x) in ("bool", None) else x
        identity = op.EyeLike(shape_source, dtype=_INT32, k=op.ctx.attr(eye, "k"))
        return op.cast(identity, np.bool_)
