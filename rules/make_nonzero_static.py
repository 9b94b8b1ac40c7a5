"""Rewrite TopK over x[mask] (NonZero selection) as TopK over the masked dense tensor."""

from __future__ import annotations

import numpy as np

import graphfix as gf
from graphfix.rules.pad_nonzero import flags_unavailable, nonzero_flags



@gf.rule(limitation="nonzero.missing")
class MakeNonzeroStatic:
    """Rewrite TopK(x[mask], K) into a fixed-size TopK over Where(mask, x, fill): no NonZero.

    TensorRT limitation: TensorRT 7.2 to 8.4 have no NonZero importer and no data-dependent
    shapes at all; TensorRT-RTX has no NonZero runner (trt-onnx-support.md NonZero row:
    S72-S84, S85, support doc b.3); key `nonzero.missing`.

    Rewrite: matches the two exports of `x[mask]` / `x[torch.where(mask)]` that feed a TopK with
    a constant K along the selected axis: `TopK(GatherND(x, Transpose(NonZero(mask))), K,
    axis=0)` (mask over the leading dims of x) and `TopK(Gather(x, Squeeze(NonZero(mask)),
    axis=a), K, axis=a)` (1-D mask). The replacement is `TopK(Where(mask, x, fill), K)` with
    the masked dims flattened into one, fill = -inf (largest) / +inf (smallest) for floats and
    the integer type's min / max, and x cut to the mask's extent on the masked axes (a no-op
    for x[mask]). Values are the values; the indices (positions in the selected list) are
    recomputed as the number of selected elements before each chosen position (a comparison
    against Range and a float32 ReduceSum, exact below 2**24 elements). The match is rooted at
    the TopK because NonZero's own output has a data-dependent shape: only the fixed-size
    consumer's outputs can be replaced by a static form.

    When it is equal: the selected list keeps the mask's row-major order, so both forms rank
    the same elements with the same tie-break (lower index first), and the original TopK runs
    only when the mask selects at least K elements, exactly when no fill value reaches the
    top K. Values and indices are therefore identical on every input the original model runs
    on, provided the elements needed to reach K are never equal to the fill value and are not
    NaN (an element equal to -inf could tie with a masked-out position), and the mask is not
    larger than x on the masked axes (never, for x[mask]). Rejected: K computed at run time
    (TensorRT <= 8.5 needs it constant anyway), sorted=0 (order unspecified), GatherND with
    batch_dims, a TopK axis other than the selected one, an index that is not NonZero's. A
    NonZero used any other way cannot be made static: the rule leaves it, and fold_nonzero's
    near miss names it with the alternatives (TensorRT 8.5+, or pad_nonzero).
    """

    def pattern(self, op, x, index, k):
        selected = op.node({"GatherND", "Gather"}, x, index, _capture="select")
        return op.TopK(selected, k, _outputs=2, _capture="topk")

    def check(self, ctx, x, index, k, select, topk):
        mask = _nonzero_mask(ctx, index, select)
        if isinstance(mask, gf.Reject):
            return mask
        count = ctx.constant(k)
        if count is None:
            return gf.reject("TopK's K is computed at run time: a static form needs a constant count", k)
        if ctx.attr(topk, "sorted", 1) != 1:  # TopK before opset 11 has no attribute: always sorted
            return gf.reject("TopK sorted=0 leaves the order unspecified: no equality to prove", topk)
        rank, mask_rank, dtype = ctx.rank(x), ctx.rank(mask), ctx.numpy_dtype(x)
        if rank is None or mask_rank is None or dtype is None:
            return gf.reject("the rank or type of x or of the mask is unknown", x)
        axis = 0 if select.op == "GatherND" else ctx.attr(select, "axis") % rank
        selected_rank = rank - mask_rank + 1
        if ctx.attr(topk, "axis") % selected_rank != axis:
            return gf.reject(f"TopK reduces axis {ctx.attr(topk, 'axis')}, not the selected axis {axis}", topk)
        unavailable = flags_unavailable(ctx, mask)
        if unavailable is not None:  # a Reject is falsy
            return unavailable
        largest = bool(ctx.attr(topk, "largest"))
        masked_axes = list(range(mask_rank)) if select.op == "GatherND" else [axis]
        return gf.accept(mask=mask, axis=axis, masked_axes=masked_axes, count=int(np.asarray(count).reshape(-1)[0]),
                         largest=largest, fill=_fill(dtype, largest))

    def rewrite(self, op, x, topk, mask, axis, masked_axes, count, largest, fill):
        mask_rank = op.ctx.rank(mask)
        selected = nonzero_flags(op, mask)
        flat_mask = op.Reshape(selected, op.int64([-1]))
        masked = op.Where(_broadcastable(op, selected, mask_rank, op.ctx.rank(x), axis),
                          _cropped_to_mask(op, x, mask, masked_axes), fill)
        if mask_rank > 1:  # GatherND over several leading dims: flatten them into one
            kept_dims = op.slice(op.Shape(x), [mask_rank], [gf.SLICE_TO_END])
            masked = op.Reshape(masked, op.Concat(op.int64([-1]), kept_dims, axis=0))
        values, positions = op.TopK(masked, op.int64([count]), axis=axis, largest=int(largest), sorted=1, _outputs=2)
        used_values, used_indices = (op.ctx.is_used(t) for t in topk.outputs)
        return (values if used_values else None,
                _selected_before(op, flat_mask, positions) if used_indices else None)


def _nonzero_mask(ctx, index, select):
    """The mask whose NonZero produced `index` in one of the two x[mask] spellings, or a Reject."""
    node = ctx.producer(index)
    if select.op == "GatherND":
        if ctx.attr(select, "batch_dims"):
            return gf.reject("GatherND with batch_dims is not a plain x[mask]", select)
        if node is None or node.op != "Transpose" or list(ctx.attr(node, "perm") or []) != [1, 0]:
            return gf.reject("GatherND's indices are not Transpose(NonZero(mask), perm=[1, 0])", index)
    elif node is None or node.op != "Squeeze" or ctx.axes(node) != [0]:
        return gf.reject("Gather's indices are not Squeeze(NonZero(mask), axes=[0])", index)
    source = ctx.producer(node.inputs[0])
    if source is None or source.op != "NonZero":
        return gf.reject(f"{node.op} {node.name} does not read a NonZero", node)
    return source.inputs[0]


def _fill(dtype: np.dtype, largest: bool) -> np.ndarray:
    """The value that loses every comparison TopK makes: -inf / +inf, or the integer extreme."""
    if dtype.kind == "f":
        return np.array(-np.inf if largest else np.inf, dtype)
    limits = np.iinfo(dtype)
    return np.array(limits.min if largest else limits.max, dtype)


def _cropped_to_mask(op, x, mask, masked_axes: list[int]):
    """x cut to the mask's extent on the masked axes: NonZero's positions index from x's start,
    and x may be longer there (a no-op for x[mask], skipped when the dims provably agree)."""
    mask_dims, x_dims = op.ctx.shape(mask), op.ctx.shape(x)
    if mask_dims is not None and x_dims is not None and all(
        mask_dim is not None and mask_dim == x_dims[axis] for mask_dim, axis in zip(mask_dims, masked_axes)
    ):
        return x
    return op.slice(x, [0] * len(masked_axes), op.Shape(mask), masked_axes)


def _broadcastable(op, mask, mask_rank: int, rank: int, axis: int):
    """The mask reshaped so that it broadcasts over x: its dims at `axis` (or leading), 1 elsewhere."""
    leading = list(range(axis)) if mask_rank == 1 else []
    trailing = list(range(len(leading) + mask_rank, rank))
    axes = leading + trailing
    return op.unsqueeze(mask, axes) if axes else mask


def _selected_before(op, flat_mask, positions):
    """How many selected elements precede each chosen position: TopK's index in the list."""
    length = op.Gather(op.Shape(flat_mask), op.int64(0), axis=0)
    every = op.Range(op.int64(0), length, op.int64(1))
    before = op.Less(every, op.unsqueeze(positions, [op.ctx.rank(positions)]))
    ones = op.Where(flat_mask, np.ones((), np.float32), np.zeros((), np.float32))
    counted = op.reduce("ReduceSum", op.Where(before, ones, np.zeros((), np.float32)), [-1], keepdims=0)
    return op.cast(counted, np.int64)


