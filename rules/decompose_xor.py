"""Write Xor with And, Or and Not."""

from __future__ import annotations

import graphfix as gf


@gf.rule(limitation="xor.missing")
class DecomposeXor:
    """Rewrite Xor(a, b) as And(Or(a, b), Not(And(a, b))).

    TensorRT limitation: TensorRT 7.2 to 8.2 have no Xor importer (key `xor.missing`; the
    importer list of S84 adds Xor, trt-onnx-support.md sources IMP(9f82b2b)). PyTorch exports
    `a ^ b` and `!=` on masks (SuperPoint's border mask) as Xor.

    Rewrite: "exactly one of a, b" is "at least one, and not both"; Xor is defined on BOOL
    only, so the identity holds element by element, with the same broadcasting (And and Or
    broadcast like Xor).
    """

    def pattern(self, op, a, b):
        return op.Xor(a, b)

    def rewrite(self, op, a, b):
        return op.And(op.Or(a, b), op.Not(op.And(a, b)))
