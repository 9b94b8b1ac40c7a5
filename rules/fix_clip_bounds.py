"""Make Clip's min/max bounds weights, or express runtime bounds with Max/Min."""

from __future__ import annotations

import numpy as np

import graphfix as gf


@gf.rule(limitation=("clip.bounds_not_weights", "clip.fp16_tensor_bounds"), stage="fold")
class FixClipBounds:
    """Fold Clip bounds computable from constants; rewrite runtime bounds to Max/Min.

    TensorRT limitation: TensorRT 7.2 and 8.0 GA import Clip as an activation whose min/max
    must be weights at parse time (an initializer or a Constant node's output), failing with
    "Clip min/max value must be an initializer"; 8.0.3 to 8.4 accept tensor bounds only for
    FP32/INT32 inputs and still refuse them on FP16 inputs (trt-onnx-support.md, Clip row:
    S72, S80GA, S80, S82, S84).

    Rewrite: bounds computable from constants (shape arithmetic on static shapes, casts of
    constants) are folded into initializers and the Clip kept; otherwise the Clip becomes
    Max(x, min) then Min(., max) over the bounds present, which is Clip's definition (including
    min > max giving max), with the bounds reshaped to scalars so broadcasting cannot change
    the output shape. A Clip with one bound keeps one bound. Clip before opset 11 carries its
    bounds as attributes and is left alone.
    """

    def pattern(self, op, x, low, high):
        return op.Clip(x, low.optional(), high.optional())

    def check(self, ctx, x, low, high):
        if ctx.opset < 11:
            return gf.reject("opset < 11: the bounds are attributes, already weights", ctx.root)
        bounds = [b for b in (low, high) if b is not None]
        if not bounds:
            return gf.reject("Clip has no bound inputs", ctx.root)
        if all(ctx.is_weights(b) for b in bounds):
            return gf.reject("the bounds are already weights", ctx.root)
        folded = {id(b): ctx.constant(b) for b in bounds}
        return gf.accept(folded=folded)

    def rewrite(self, op, x, low, high, folded):
        if all(value is not None for value in folded.values()):
            return op.Clip(x, *(_weights(op, b, folded) for b in (low, high)))
        result = x
        if low is not None:
            result = op.Max(result, _scalar(op, low, folded))
        if high is not None:
            result = op.Min(result, _scalar(op, high, folded))
        return result


def _weights(op, bound, folded):
    if bound is None:
        return None
    value = folded[id(bound)]
    return bound if op.ctx.is_weights(bound) else op.constant(np.asarray(value).reshape(()))


def _scalar(op, bound, folded):
    value = folded[id(bound)]
    if value is not None:
        return op.constant(np.asarray(value).reshape(()))
    if op.ctx.rank(bound) == 0:
        return bound
    return op.Reshape(bound, op.int64([]))
