"""Write NonMaxSuppression with standard ops: a score sort, an IoU matrix, a Loop to the greedy result."""

from __future__ import annotations

import numpy as np

import graphfix as gf

# TensorRT's TopK layer takes K <= 3840 in every release (H7.2, H10.16), and the score sort is one
# TopK over all boxes.
TOPK_LIMIT = 3840
# Range exists from opset 11 and TopK's `largest`/`sorted` attributes too (TopK-10 always takes the
# largest, sorted); NonMaxSuppression itself exists from opset 10.
_RANGE_SINCE = 11
_F32 = np.float32


@gf.rule(limitation=("nms.missing", "nms.padded_plugin"))
class DecomposeNms:
    """Replace NonMaxSuppression by an exact greedy NMS made of TopK, IoU arithmetic and a Loop.

    TensorRT limitation: TensorRT 7.2 has no NonMaxSuppression importer and TensorRT-RTX no
    runner for it (`nms.missing`); TensorRT 8.0 to 8.4 import it as the EfficientNMS_ONNX_TRT
    plugin, whose padded [batch * max_output_boxes_per_class, 3] output ignores the class count,
    so boxes are silently dropped (`nms.padded_plugin`) (trt-onnx-support.md NonMaxSuppression
    row: S72, S80-S84, PL-effnms; support doc b.3). NVIDIA's NMS plugins are deprecated or gone
    in TensorRT 11, so a standard-op form is the durable one.

    Rewrite: per batch and class, TopK sorts the scores (descending, ties by lower box index, as
    onnxruntime's priority queue orders them) and the boxes are gathered in that order. The
    suppression matrix S[i, j] (i before j) is onnxruntime's SuppressByIOU evaluated for every
    pair with the same float32 operations in the same order: min/max corners (or centre +- half
    size), intersection, areas, union = (area_i + area_j) - intersection, IoU > threshold, never
    for an empty intersection or a non-positive area. Greedy NMS keeps j iff j passes the score
    threshold (score > threshold) and no kept i < j has S[i, j]; that system is triangular, so
    it has exactly one solution, and the Loop iterates keep <- valid and not (keep . S) from
    keep = valid until nothing changes: after t rounds the first t candidates are final, so at
    most N rounds (the trip count) and in practice as many as the longest chain of
    suppressions. The loop-carried tensor keeps its shape and there is one (TensorRT 7.2 needs
    one). The first max_output_boxes_per_class kept boxes of each class are selected (greedy
    selection stops there, which does not change the earlier choices). Rows come out by batch,
    class, then score: the same rows in the same order as onnxruntime.

    The [num_selected, 3] shape: everything is fixed-size ([B, C, N], [B, C, N, N]) except the
    final compaction: a Range over the selected count (a Loop scan output before opset 11, which
    has no Range) followed by Gathers; each output row finds its class group by comparing with
    the groups' cumulative counts (no NonZero, no CumSum, no ScatterND). That Range is the only
    data-dependent step, and no exact rewrite can do without one: the ONNX output length
    depends on the data, while TensorRT before 8.5 has no data-dependent shapes at all (a TopK
    compaction needs a data-dependent K, which must be an initializer before 8.6; a Loop scan
    output's length is a shape tensor fixed before the loop starts, ILoopOutputLayer). So the
    result builds on TensorRT-RTX and 8.5+, and on 7.2-8.4 it parses but the engine build stops
    at that Range, where the original NMS did not parse (7.2) or silently dropped boxes
    (8.0-8.4); a fixed-size output would change the model's contract (an opt-in rule with its
    own reference semantics, like pad_nonzero). The Loop body only uses ops whose meaning is
    the same from opset 11 on, so convert_opset_down can take the result to 7.2's opset 11.
    Costs: O(B*C*N^2) memory for the pairwise matrix and one [B, C, N] x [N, N] product per
    round. Near misses: a box count above TensorRT's TopK limit of 3840, center_point_box other
    than 0/1.
    """

    def pattern(self, op, boxes, scores, max_boxes, iou, score_threshold):
        return op.NonMaxSuppression(
            boxes, scores, max_boxes.optional(), iou.optional(), score_threshold.optional(), _capture="nms"
        )

    def check(self, ctx, boxes, scores, nms):
        center = ctx.attr(nms, "center_point_box")
        if center not in (0, 1):
            return gf.reject(f"center_point_box={center} is neither 0 nor 1", nms)
        count = box_count(ctx, boxes, scores)
        if count is not None and count > TOPK_LIMIT:
            return gf.reject(f"{count} boxes: sorting them needs a TopK above TensorRT's limit of {TOPK_LIMIT}", boxes)
        return gf.accept(center=center, count=count)

    def rewrite(self, op, boxes, scores, max_boxes, iou, score_threshold, center, count):
        sorted_scores, order = top_k(op, scores, last_dim(op, scores, count, as_k=True))
        sorted_boxes = op.Gather(op.Reshape(boxes, op.int64([-1, 4])), _batch_flat_index(op, order), axis=0)
        suppress = _suppression_matrix(op, _extents(op, sorted_boxes, center), _scalar(op, iou, _F32(0)), count)
        valid = _candidates(op, sorted_scores, score_threshold)
        keep = _greedy_keep(op, valid, suppress, last_dim(op, scores, count))
        ranked = take_along_last(op, order, selected_first(op, op.Greater(keep, np.array(0.5, _F32)), count))
        kept = op.cast(op.reduce("ReduceSum", keep, [2], keepdims=0), np.int64)
        limit = maximum(op, _scalar(op, max_boxes, np.int64(0)), op.constant(np.array(0, np.int64)))
        return ranked_rows(op, ranked, minimum(op, kept, limit))


def box_count(ctx, boxes, scores) -> int | None:
    """N, the number of boxes, when a static dim says it."""
    for tensor, axis in ((scores, 2), (boxes, 1)):
        dims = ctx.shape(tensor)
        if dims is not None and len(dims) == 3 and isinstance(dims[axis], (int, np.integer)):
            return int(dims[axis])
    return None


def last_dim(op, tensor, static: int | None, as_k: bool = False):
    """The last dim of a rank-3 tensor: a constant when static (TopK's K must be weights before
    TensorRT 8.6), else read from its Shape; a [1] tensor when `as_k`, else a scalar."""
    if static is not None:
        return op.int64([static]) if as_k else op.constant(np.array(static, np.int64))
    dim = op.Gather(op.Shape(tensor), op.int64(2), axis=0)
    return op.unsqueeze(dim, [0]) if as_k else dim


def _scalar(op, tensor, default):
    """An optional NMS input (shape [] or [1]) as a scalar, or `default` when it is omitted."""
    if tensor is None:
        return op.constant(np.asarray(default))
    return op.Reshape(tensor, op.int64([]))


def _batch_flat_index(op, order):
    """Indices into boxes flattened to [B * N, 4] for the [B, C, N] box indices `order`."""
    shape = op.Shape(order)
    batches = op.Gather(shape, op.int64(0), axis=0)
    per_batch = op.Gather(shape, op.int64(2), axis=0)
    offsets = op.Mul(arange(op, batches), per_batch)
    return op.Add(order, op.Reshape(offsets, op.int64([-1, 1, 1])))


def _extents(op, sorted_boxes, center: int):
    """(x_min, x_max, y_min, y_max), each [B, C, N], as onnxruntime's SuppressByIOU forms them."""
    coordinate = [op.Gather(sorted_boxes, op.int64(k), axis=3) for k in range(4)]
    if center == 0:  # [y1, x1, y2, x2], corners in either order
        y1, x1, y2, x2 = coordinate
        return op.Min(x1, x2), op.Max(x1, x2), op.Min(y1, y2), op.Max(y1, y2)
    x_center, y_center, width, height = coordinate  # half sizes as width / 2 (onnxruntime)
    half_width, half_height = op.Div(width, np.array(2, _F32)), op.Div(height, np.array(2, _F32))
    return (op.Sub(x_center, half_width), op.Add(x_center, half_width),
            op.Sub(y_center, half_height), op.Add(y_center, half_height))


def _suppression_matrix(op, extents, iou, count: int | None):
    """[B, C, N, N] float 0/1: the earlier box i suppresses box j (SuppressByIOU, i < j)."""
    earlier = [op.unsqueeze(e, [3]) for e in extents]  # i on axis 2
    later = [op.unsqueeze(e, [2]) for e in extents]  # j on axis 3
    x_low, x_high = op.Max(earlier[0], later[0]), op.Min(earlier[1], later[1])
    y_low, y_high = op.Max(earlier[2], later[2]), op.Min(earlier[3], later[3])
    intersection = op.Mul(op.Sub(x_high, x_low), op.Sub(y_high, y_low))
    area = op.Mul(op.Sub(extents[1], extents[0]), op.Sub(extents[3], extents[2]))
    area_i, area_j = op.unsqueeze(area, [3]), op.unsqueeze(area, [2])
    union = op.Sub(op.Add(area_i, area_j), intersection)
    zero = np.array(0, _F32)
    conditions = [
        op.Greater(x_high, x_low), op.Greater(y_high, y_low), op.Greater(intersection, zero),
        op.Greater(area_i, zero), op.Greater(area_j, zero), op.Greater(union, zero),
        op.Greater(op.Div(intersection, union), iou), _strictly_upper(op, extents[0], count),
    ]
    suppressed = conditions[0]
    for condition in conditions[1:]:
        suppressed = op.And(suppressed, condition)
    return op.Where(suppressed, np.array(1, _F32), zero)


def _strictly_upper(op, like, count: int | None):
    """[N, N] bool, true where row < column."""
    index = arange(op, last_dim(op, like, count))
    return op.Less(op.unsqueeze(index, [1]), op.unsqueeze(index, [0]))


def _candidates(op, sorted_scores, score_threshold):
    """[B, C, N] float 1/0: the box enters NMS (score > score_threshold, all when it is omitted)."""
    one, zero = np.array(1, _F32), np.array(0, _F32)
    if score_threshold is None:
        return op.Expand(one, op.Shape(sorted_scores))
    return op.Where(op.Greater(sorted_scores, _scalar(op, score_threshold, None)), one, zero)


def _greedy_keep(op, valid, suppress, trip_count):
    """The unique keep with keep = valid and not (keep . S): a Loop from keep = valid to the fixed point.

    The body uses only ops whose schema means the same from opset 11 on (Reshape with constant
    targets, MatMul, comparisons, Where): convert_opset_down cannot enter a Loop body, and
    TensorRT 7.2 needs the model at opset 11.
    """

    def body(inner, iteration, condition, keep):
        row = inner.Reshape(keep, inner.int64([0, 0, 1, -1]))  # [B, C, 1, N]
        blocked = inner.Reshape(inner.MatMul(row, suppress), inner.int64([0, 0, -1]))
        updated = inner.Where(inner.Less(blocked, np.array(0.5, _F32)), valid, np.array(0, _F32))
        change = inner.Sub(updated, keep)  # -1, 0 or 1: the sum of squares counts the changes
        changed = inner.MatMul(inner.Reshape(change, inner.int64([1, -1])), inner.Reshape(change, inner.int64([-1, 1])))
        return inner.Reshape(inner.Greater(changed, np.array(0, _F32)), inner.int64([])), updated

    graph = op.subgraph("greedy", [(np.int64, []), (np.bool_, []), (_F32, None)], body)
    keep = op.Loop(trip_count, op.constant(np.array(True)), valid, body=graph)
    keep.dtype = _F32
    return keep


def selected_first(op, flags, count: int | None):
    """[B, C, L] positions along the last axis: the flagged ones first, then the rest, each in order.

    A TopK over the distinct float keys L - k (flagged) and -k (not), exact below 2**24.
    """
    length = last_dim(op, flags, count)
    position = op.cast(arange(op, length), _F32)
    key = op.Where(flags, op.Sub(op.cast(length, _F32), position), op.Neg(position))
    return top_k(op, key, last_dim(op, flags, count, as_k=True))[1]


def take_along_last(op, table, positions, table_rank: int = 3, extra: int = 0):
    """table[..., positions] along the last axis, as a flat Gather (GatherElements needs 8.0+).

    The leading dims of `table` (rank `table_rank`) are a prefix of those of `positions`, which
    has `extra` more dims before its last one (over them the table rows repeat).
    """
    shape = op.Shape(table)
    length = op.Gather(shape, op.int64(table_rank - 1), axis=0)
    leading = op.slice(shape, [0], [table_rank - 1])
    offsets = op.Mul(arange(op, op.reduce("ReduceProd", leading, None, keepdims=0)), length)
    offsets = op.Reshape(offsets, op.Concat(leading, op.int64([1] * (extra + 1)), axis=0))
    return op.Gather(op.Reshape(table, op.int64([-1])), op.Add(positions, offsets), axis=0)


def ranked_rows(op, ranked, counts):
    """[total, 3] rows (batch, class, box) from per-(batch, class) lists, as ONNX orders them.

    Args:
        op: The builder.
        ranked: [B, C, L] int64 box indices; group (b, c) selects its first counts[b, c].
        counts: [B, C] int64.

    Output row r belongs to the first group whose cumulative count exceeds r; the Range over the
    total count is the one data-dependent step.
    """
    shape = op.Shape(ranked)
    classes = op.Gather(shape, op.int64(1), axis=0)
    length = op.Gather(shape, op.int64(2), axis=0)
    flat_counts = op.Reshape(counts, op.int64([-1]))
    groups = arange(op, op.Gather(op.Shape(flat_counts), op.int64(0), axis=0))
    zero = np.array(0, np.int64)
    up_to = op.Less(op.unsqueeze(groups, [1]), op.unsqueeze(op.Add(groups, np.array(1, np.int64)), [0]))
    ends = op.reduce("ReduceSum", op.Where(up_to, op.unsqueeze(flat_counts, [1]), zero), [0], keepdims=0)
    starts = op.Sub(ends, flat_counts)
    slots = arange(op, op.reduce("ReduceSum", flat_counts, None, keepdims=0))
    finished = op.Where(op.Less(op.unsqueeze(slots, [1]), op.unsqueeze(ends, [0])), zero, np.array(1, np.int64))
    group = op.reduce("ReduceSum", finished, [1], keepdims=0)
    position = op.Sub(slots, op.Gather(starts, group, axis=0))
    box = op.Gather(op.Reshape(ranked, op.int64([-1])), op.Add(op.Mul(group, length), position), axis=0)
    batch = op.Div(group, classes)
    columns = (batch, op.Sub(group, op.Mul(batch, classes)), box)
    return op.Concat(*(op.unsqueeze(c, [1]) for c in columns), axis=1)


def top_k(op, x, k):
    """TopK along the last axis, largest first, sorted (TopK-10 does that without attributes)."""
    if op.opset < _RANGE_SINCE:
        return op.TopK(x, k, axis=-1, _outputs=2)
    return op.TopK(x, k, axis=-1, largest=1, sorted=1, _outputs=2)


def arange(op, count):
    """[0, 1, ..., count - 1] (int64) for a scalar count: Range, or before opset 11 the iteration
    numbers of a Loop as its scan output (the trip count fixes the length)."""
    if op.opset >= _RANGE_SINCE:
        return op.Range(op.int64(0), count, op.int64(1))

    def body(inner, iteration, condition, carried):
        return inner.Identity(condition), inner.Identity(carried), inner.Identity(iteration)

    # ONNX and TensorRT 7.2 want a loop-carried value: the count, passed through unchanged.
    graph = op.subgraph("arange", [(np.int64, []), (np.bool_, []), (np.int64, [])], body)
    _, numbers = op.Loop(count, None, count, body=graph, _outputs=2)
    numbers.dtype = np.int64
    return numbers


def minimum(op, a, b):
    """Elementwise min as Where(a < b): Min takes no integers before opset 12."""
    return op.Where(op.Less(a, b), a, b)


def maximum(op, a, b):
    """Elementwise max as Where(a > b): Max takes no integers before opset 12."""
    return op.Where(op.Greater(a, b), a, b)
