"""Write integer Mod with Div, Mul and Sub (and Where for the divisor's sign)."""

from __future__ import annotations

import numpy as np

import graphfix as gf


@gf.rule(limitation="mod.missing")
class DecomposeMod:
    """Rewrite integer Mod as a - b * (a / b), with the sign rule of `fmod`.

    TensorRT limitation: TensorRT 7.2 to 8.4 have no Mod importer (key `mod.missing`;
    trt-onnx-support.md a.2 Mod row: N for S72-S84, R from S85). PyTorch exports `%` on index
    arithmetic (SuperPoint's keypoint coordinates: `argmax % width`) as an integer Mod.

    Rewrite: integer Div truncates toward zero (ONNX, onnxruntime and TensorRT's integer
    division), so r = a - b * Div(a, b) is C's remainder, which has the dividend's sign: that is
    fmod=1. For fmod=0 (the default, Python's `%`) the remainder takes the divisor's sign:
    where r is not 0 and its sign differs from b's, r + b. Exact for every integer type with a
    non-zero divisor (Mod by zero is undefined in ONNX). Floating-point Mod is left alone (near
    miss): a - b * trunc(a / b) rounds in the division, so it is not the exact fmod.
    """

    def pattern(self, op, a, b, fmod):
        return op.Mod(a, b, fmod=fmod)

    def check(self, ctx, a, b):
        dtype = ctx.numpy_dtype(a) or ctx.numpy_dtype(b)
        if dtype is None:
            return gf.reject("the operand type is unknown", a)
        if dtype.kind not in "iu":
            return gf.reject(f"{dtype} Mod: a - b * trunc(a / b) is not exact in floating point", ctx.root)
        if dtype.itemsize < 4 and ctx.opset < 14:
            return gf.reject(f"{dtype} arithmetic (Div, Mul, Sub) needs opset 14, the model is at {ctx.opset}", ctx.root)
        return gf.accept(dtype=dtype)

    def rewrite(self, op, a, b, fmod, dtype):
        remainder = op.Sub(a, op.Mul(b, op.Div(a, b)))
        if fmod == 1 or dtype.kind == "u":  # unsigned: no signs to reconcile
            return remainder
        zero = np.zeros((), dtype)
        # Signs differ: one of r, b is negative and the other positive (r = 0 never adjusts).
        # And/Or/Not only: Xor is missing on the same releases.
        r_negative, r_positive = op.Less(remainder, zero), op.Greater(remainder, zero)
        b_negative = op.Less(b, zero)
        adjust = op.Or(op.And(r_negative, op.Not(b_negative)), op.And(r_positive, b_negative))
        return op.Where(adjust, op.Add(remainder, b), remainder)
