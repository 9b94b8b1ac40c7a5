"""Example user rules for `graphfix apply --rules samples/custom_rule.py` (used by the tests).

Both styles of the rule API: a class, and a decorated function.
"""

from __future__ import annotations

import graphfix as gf


@gf.rule()
class DecomposeReduceL2:
    """Write ReduceL2 as Sqrt(ReduceSum(x * x)) over the same axes.

    An example of a user rule: some teams keep norms out of fused reductions to pin their
    precision. It reads the axes whether they are an attribute (opset < 18) or an input.
    """

    def pattern(self, op, x, axes, keepdims):
        return op.ReduceL2(x, axes.optional(), keepdims=keepdims, _capture="norm")

    def check(self, ctx, x, axes, norm):
        if axes is None:
            listed = norm.attrs.get("axes")
            return gf.accept(reduce_axes=None if listed is None else list(listed))
        value = ctx.constant(axes)
        if value is None:
            return gf.reject("the axes are computed at run time", axes)
        return gf.accept(reduce_axes=[int(a) for a in value.reshape(-1)])

    def rewrite(self, op, x, keepdims, reduce_axes):
        return op.Sqrt(op.reduce("ReduceSum", op.Mul(x, x), reduce_axes, keepdims=keepdims))


@gf.rule(pattern=lambda op, x: op.Identity(x))
def drop_identity(op, x):
    """Remove Identity nodes (their consumers read the input directly)."""
    return x
