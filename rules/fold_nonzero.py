"""Fold NonZero of a constant (or of anything computable from constants) into an initializer."""

from __future__ import annotations

import graphfix as gf


@gf.rule(limitation="nonzero.missing", stage="fold")
class FoldNonzero:
    """Fold NonZero whose input is computable from constants into an int64 initializer.

    TensorRT limitation: TensorRT 7.2 to 8.4 have no NonZero importer, and TensorRT-RTX has no
    runner for it (trt-onnx-support.md NonZero row: S72-S84, support doc b.3); key
    `nonzero.missing`. From 8.5 it imports, with a data-dependent output shape.

    Rewrite: when the input is a literal or folds from constants (casts and comparisons of
    constants, Shape of statically shaped tensors), onnxruntime evaluates the NonZero once and
    its [rank, count] int64 output becomes an initializer: the same values by construction. A
    NonZero of a runtime tensor is a near miss naming the node and the ways out (the rules
    make_nonzero_static and pad_nonzero, or a target that imports NonZero).
    """

    def pattern(self, op, x):
        return op.NonZero(x, _capture="nonzero")

    def check(self, ctx, x, nonzero):
        if ctx.constant(x) is None:
            return gf.reject(
                f"NonZero {nonzero.name}: its input is computed at run time, so its output shape "
                "depends on the data; if it selects x[mask] for a TopK with a constant K, "
                "make_nonzero_static rewrites it, otherwise use TensorRT 8.5+ (--target trt8.5) "
                "or opt in to the padded form (--enable pad_nonzero --rule-option "
                "pad_nonzero.max_count=N)", nonzero)
        value = ctx.constant(nonzero.outputs[0])
        if value is None:
            return gf.reject(f"NonZero {nonzero.name}: it could not be folded (its output is too large "
                             "to store, or its constant inputs come from too long a chain of nodes)", nonzero)
        return gf.accept(value=value)

    def rewrite(self, op, x, value):
        return op.constant(value)
