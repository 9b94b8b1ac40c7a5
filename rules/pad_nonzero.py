"""Opt-in: replace NonZero by a fixed-size [rank, max_count] form padded with -1."""

from __future__ import annotations

import numpy as np

import graphfix as gf
from graphfix.rules.decompose_nms import TOPK_LIMIT

_TOPK_K_INPUT_SINCE = 10
_TOPK_ORDER_ATTRIBUTES_SINCE = 11  # largest / sorted; TopK-10 always returns the largest, sorted
# Equal compares floats from opset 11 (Equal-7 takes bool, int32 and int64 only).
EQUAL_FLOATS_SINCE = 11
INVALID = -1


@gf.rule(limitation="nonzero.missing", opt_in=True, options={"max_count": 0})
class PadNonzero:
    """Opt-in: NonZero becomes a static [rank, max_count] int64 tensor whose extra columns are -1.

    TensorRT limitation: TensorRT 7.2 to 8.4 have no NonZero importer and no data-dependent
    shapes; TensorRT-RTX has no NonZero runner (trt-onnx-support.md NonZero row: S72-S84,
    support doc b.3); key `nonzero.missing`. For a NonZero that make_nonzero_static cannot
    make static, this is the way to build for those targets, at the price of semantics.

    Rewrite (changes results on purpose; run it with `--enable pad_nonzero --rule-option
    pad_nonzero.max_count=N`): the output has the fixed shape [rank, max_count]. Column c holds
    the coordinates of the c-th nonzero element in row-major order, as NonZero's does, for
    c < min(count, max_count); every other column is -1 in every row. So: fewer nonzeros than
    max_count leave -1 columns at the end, and more than max_count are truncated to the first
    max_count. Consumers must treat -1 columns as invalid (the count of valid columns is the
    number of columns whose first row is not -1; beware that Gather/GatherND read index -1 as
    the last element, so values derived from invalid columns are garbage, not errors).
    Built from ops TensorRT 7.2 imports: TopK over the mask as 0/1 floats padded with
    max_count zeros (ties break by lower index, so the ones come first in row-major order),
    then the positions unravelled with Div/Mul/Sub by the runtime shape, and a Where. The
    verifier compares the region against `reference` (this padded semantics), not against
    NonZero. max_count must be given, and at most 3840 (TensorRT's TopK limit).
    """

    def pattern(self, op, x):
        return op.NonZero(x, _capture="nonzero")

    def check(self, ctx, x, nonzero):
        max_count = int(ctx.options["max_count"])
        if max_count <= 0:
            return gf.reject("set the maximum count: --rule-option pad_nonzero.max_count=N", nonzero)
        if max_count > TOPK_LIMIT:
            return gf.reject(f"max_count {max_count} is above TensorRT's TopK limit {TOPK_LIMIT}", nonzero)
        rank = ctx.rank(x)
        if not rank:
            return gf.reject("the input's rank is unknown or 0", x)
        unavailable = flags_unavailable(ctx, x)  # a Reject is falsy: `or` would accept it
        if unavailable is not None:
            return unavailable
        return gf.accept(max_count=max_count, rank=rank)

    def rewrite(self, op, x, max_count, rank):
        flat = op.Reshape(nonzero_flags(op, x), op.int64([-1]))
        ones = op.Where(flat, np.ones((), np.float32), np.zeros((), np.float32))
        padded = op.Concat(ones, np.zeros(max_count, np.float32), axis=0)  # at least max_count long
        found, positions = _largest(op, padded, max_count)
        coordinates = _unravel(op, positions, op.Shape(x), rank)
        valid = op.unsqueeze(op.Greater(found, np.zeros((), np.float32)), [0])
        return op.Where(valid, coordinates, np.full((), INVALID, np.int64))

    def reference(self, ctx, x):
        max_count = int(ctx.options["max_count"])
        found = np.stack(np.nonzero(np.asarray(x))).astype(np.int64)
        result = np.full((found.shape[0], max_count), INVALID, np.int64)
        kept = min(found.shape[1], max_count)
        result[:, :kept] = found[:, :kept]
        return result


def nonzero_flags(op, x):
    """x != 0 as a BOOL tensor: NonZero's notion of nonzero (NaN counts). Shared with
    make_nonzero_static."""
    if op.ctx.dtype(x) == "bool":
        return x
    return op.Not(op.Equal(x, np.zeros((), op.ctx.numpy_dtype(x))))


def flags_unavailable(ctx, x) -> gf.Reject | None:
    """Why nonzero_flags cannot be built at this opset, or None."""
    dtype = ctx.dtype(x)
    if dtype in ("bool", "int32", "int64") or ctx.opset >= EQUAL_FLOATS_SINCE:
        return None
    return gf.reject(f"Equal takes no {dtype} before opset {EQUAL_FLOATS_SINCE}: x != 0 cannot be written", x)


def _largest(op, values, count: int):
    """TopK of the `count` largest along axis 0, sorted, in the spelling of the model's opset."""
    if op.opset < _TOPK_K_INPUT_SINCE:
        return op.TopK(values, axis=0, k=count, _outputs=2)
    if op.opset < _TOPK_ORDER_ATTRIBUTES_SINCE:
        return op.TopK(values, op.int64([count]), axis=0, _outputs=2)
    return op.TopK(values, op.int64([count]), axis=0, largest=1, sorted=1, _outputs=2)


def _unravel(op, positions, shape, rank: int):
    """[rank, K] row-major coordinates of flat `positions` (Div/Mul/Sub: 7.2-8.4 have no Mod)."""
    rows = []
    remaining = positions
    for axis in reversed(range(1, rank)):
        size = op.Gather(shape, op.int64(axis), axis=0)
        # A zero-sized dim has no valid positions; 1 keeps the division defined.
        size = op.Where(op.Equal(size, op.int64(0)), op.int64(1), size)
        quotient = op.Div(remaining, size)
        rows.append(op.Sub(remaining, op.Mul(quotient, size)))
        remaining = quotient
    rows.append(remaining)  # valid positions are below the element count: no wrap on axis 0
    return op.Concat(*(op.unsqueeze(row, [0]) for row in reversed(rows)), axis=0)
