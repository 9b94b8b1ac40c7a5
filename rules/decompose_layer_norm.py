"""Decompose LayerNormalization into ReduceMean / Sub / Pow / Sqrt / Div / Mul / Add."""

from __future__ import annotations

import numpy as np

import graphfix as gf

_STASH_FLOAT = 1  # ONNX TensorProto.FLOAT, LayerNormalization's default stash_type
_HALF_TYPES = frozenset({"float16", "bfloat16"})


@gf.rule(limitation="layernorm.missing", stage="lower")
class DecomposeLayerNorm:
    """Write LayerNormalization (opset 17) with the elementary ops it is defined by.

    TensorRT limitation: TensorRT 7.2 to 8.2 have no LayerNormalization importer, and neither
    do 8.4 and 8.5 although both declare opset 17 (trt-onnx-support.md, LayerNormalization row:
    S84, S85); opset-17 exports of every transformer (RoBERTa, ViT, ...) carry it. 8.6 and later
    import it natively.

    Rewrite: with D = X - ReduceMean(X) over axes axis..rank-1 (a negative axis counts from the
    end), Y = D / Sqrt(ReduceMean(D^2) + epsilon) * Scale + B. The variance is the mean of
    squared deviations, equal in exact arithmetic to the function body's E[X^2] - E[X]^2 and
    free of its cancellation; Scale and B are applied when present, in X's type. With
    stash_type 1 on a FLOAT16/BFLOAT16 input the statistics and D / Sqrt(...) are computed in
    FLOAT and cast back before Scale and B, as the ONNX function body does; other inputs are
    computed in their own type. The optional outputs Mean and InvStdDev (keepdims shape, stash
    type) are built only when used, as the same ReduceMean and the Reciprocal of the same Sqrt.
    Reduce axes are attributes or inputs as the opset requires; dynamic dims need no shapes.

    Cost: the ops are the Sub -> Pow(2) -> ReduceMean -> Add -> Sqrt -> Div chain PyTorch
    exports below opset 17, which onnxruntime's LayerNormFusion (from the basic optimisation
    level) turns back into its single-pass kernel, so onnxruntime runs the result at about the
    original speed (0.9-1.3x measured on a busy 2-core CPU). Without that fusion the decomposed
    form is slower (2.6-2.9x on one [16, 128, 768] LayerNorm, FLOAT and FLOAT16, with graph
    optimisations off; 1.1-1.2x on the whole RoBERTa sample): it writes D, D^2 and the
    statistics as separate tensors and reads X twice, where the kernel makes one pass per row.
    Applying Scale/B in FLOAT for FLOAT16 inputs would round once less but makes onnxruntime
    1.31's fusion build an invalid node (T bound to both FLOAT16 and FLOAT), so it is not done.
    """

    def pattern(self, op, x, scale, bias, axis, epsilon, stash_type):
        return op.LayerNormalization(
            x, scale.optional(), bias.optional(), axis=axis, epsilon=epsilon, stash_type=stash_type,
            _capture="norm",
        )

    def check(self, ctx, x, scale, axis, stash_type, norm):
        # Scale has X's type (T), so it types X where shape inference lost track of it.
        rank, dtype = ctx.rank(x), ctx.dtype(x) or ctx.dtype(scale)
        if dtype is None:
            return gf.reject("the input type is unknown", x)
        if rank is None and axis >= 0:
            return gf.reject(f"the input rank is unknown and axis {axis} counts from the front", x)
        if rank is not None and not -rank <= axis < rank:
            return gf.reject(f"axis {axis} is outside the input rank {rank}", norm)
        if stash_type != _STASH_FLOAT:
            return gf.reject(f"stash_type {stash_type}: only FLOAT statistics (stash_type 1) are decomposed", norm)
        # Negative reduce axes count from the back: a negative axis needs no rank.
        axes = list(range(axis, 0)) if rank is None else list(range(axis % rank, rank))
        typed = x if ctx.dtype(x) else scale
        return gf.accept(axes=axes, in_float=dtype in _HALF_TYPES, dtype=ctx.numpy_dtype(typed))

    def rewrite(self, op, x, scale, bias, epsilon, norm, axes, in_float, dtype):
        compute_type = np.dtype(np.float32) if in_float else dtype
        values = op.cast(x, compute_type) if in_float else x
        mean = op.reduce("ReduceMean", values, axes)
        centred = op.Sub(values, mean)
        variance = op.reduce("ReduceMean", op.Pow(centred, op.constant(2, compute_type)), axes)
        deviation = op.Sqrt(op.Add(variance, op.constant(epsilon, compute_type)))
        result = op.Div(centred, deviation)
        if in_float:
            result = op.cast(result, dtype)
        if scale is not None:
            result = op.Mul(result, scale)
        if bias is not None:
            result = op.Add(result, bias)
        outputs = [result]
        statistics = (lambda: mean, lambda: op.Reciprocal(deviation))
        outputs += [_statistic(op, original, build) for original, build in zip(norm.outputs[1:], statistics)]
        return tuple(outputs)


def _statistic(op, original, build):
    """`build()` in the type of the optional output `original` when it is used, else None."""
    if original.is_empty() or not (original.outputs or op.ctx.is_graph_output(original)):
        return None
    return _as_type(op, build(), op.ctx.numpy_dtype(original))


def _as_type(op, tensor, dtype):
    """`tensor` cast to `dtype` when its type differs (unknown types are left alone)."""
    current = op.ctx.numpy_dtype(tensor)
    return tensor if dtype is None or current is None or current == dtype else op.cast(tensor, dtype)
