"""Make one NonMaxSuppression over concatenated groups (FPN levels, classes) suppress per group."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

import graphfix as gf
from graphfix.kernels.nms import nms_parameters, per_group_nms

# Ops between the scores' Concat and the NMS that keep the boxes' order (torchvision's nms
# export: Cast(Unsqueeze(Unsqueeze(scores)))).
_ORDER_KEEPING = frozenset({"Cast", "Unsqueeze", "Identity"})


@gf.rule(limitation="nms.merged_groups", opt_in=True, exclusive=False)
class OffsetNmsGroups:
    """Shift each concatenated group's boxes apart so that one NMS suppresses within groups only.

    TensorRT limitation: not a parser defect, an export one that every release reproduces
    faithfully (7.2 to 10.x, through the 8.0-8.4 NMS plugin or the 8.5+ NMS layer; key
    `nms.merged_groups`, opt-in because it changes results on purpose). Detectors evaluated
    per group in PyTorch (mmdet's RPN runs `batched_nms` per FPN level) are often exported
    with one `torchvision.ops.nms` over the boxes of all levels concatenated, so boxes of
    different levels suppress each other and detections differ from PyTorch's
    (trt-onnx-support.md NonMaxSuppression row for what each release runs).

    Rewrite: matched is the form `torchvision.ops.nms` exports, NonMaxSuppression(
    Cast(Unsqueeze(Concat(group boxes, axis 0))), scores, ...), with the scores also a Concat of
    as many groups (through Cast/Unsqueeze/Identity). Group g's boxes are shifted by
    g * (max - min + 1) of all box coordinates, computed in the graph; the group ids come from
    the Concat's input sizes read at run time (Shape), so dynamic group sizes work. Shifted
    groups lie in disjoint coordinate ranges with a gap of at least 1, so boxes of different
    groups never overlap and the single NMS selects exactly what a per-group NMS selects, in
    descending score order (torchvision's coordinate trick uses max + 1, which fails for
    negative coordinates). The only difference from per-group NMS on the raw boxes is float
    rounding of the shifted coordinates, which can flip an IoU within about 1e-6 relative of
    the threshold. `max_output_boxes_per_class` still counts across all groups, as the
    exported graph does. The pass is verified against the rule's reference semantics
    (`reference`: per-group ONNX NMS in numpy, merged by score), not against the original
    graph. Near misses: NMS inside an If/Loop body (there only an end-to-end run against the
    original could verify it), center_point_box=1 (shifting would move the sizes too), other
    layouts; for those, `offset_nms_by_group_ids` takes a user-named group-id tensor.
    """

    def pattern(self, op, groups, concat_axis, to, scores, max_boxes, iou_threshold, score_threshold, center_point_box):
        merged = op.Concat(gf.variadic("groups", min_count=2), axis=concat_axis)
        boxes = op.Cast(op.Unsqueeze(merged, _allow_extra_inputs=True, _capture="unsqueeze"), to=to)
        return op.NonMaxSuppression(
            boxes, scores, max_boxes.optional(), iou_threshold.optional(), score_threshold.optional(),
            center_point_box=center_point_box, _capture="nms",
        )

    def check(self, ctx, groups, concat_axis, scores, center_point_box, unsqueeze):
        refused = shift_refused(ctx, center_point_box)
        if refused is not None:
            return refused
        if any(ctx.rank(part) != 2 for part in groups) or concat_axis not in (0, -2):
            return gf.reject(f"the groups must be [n, 4] boxes concatenated on axis 0 (axis {concat_axis})", ctx.root)
        if ctx.axes(unsqueeze) != [0]:
            return gf.reject("the boxes are not unsqueezed to [1, N, 4] on axis 0", unsqueeze)
        score_parts = _concat_parts_behind(ctx, scores)
        if score_parts is None or len(score_parts) != len(groups):
            return gf.reject(f"the scores are not a Concat of {len(groups)} groups like the boxes", scores)
        for box_part, score_part in zip(groups, score_parts):
            box_count, score_count = _length(ctx, box_part), _length(ctx, score_part)
            if None not in (box_count, score_count) and box_count != score_count:
                return gf.reject(f"group sizes differ between boxes ({box_count}) and scores ({score_count})",
                                 score_part)
        return gf.accept()

    def rewrite(self, op, groups, scores, max_boxes, iou_threshold, score_threshold, nms):
        boxes = nms.inputs[0]
        dtype = op.ctx.numpy_dtype(boxes)
        group_sizes = [op.slice(op.Shape(part), [0], [1]) for part in groups]
        group_ids = op.Concat(*(op.Expand(np.array([g], dtype), size) for g, size in enumerate(group_sizes)), axis=0)
        shifted = shifted_boxes(op, boxes, group_ids, dtype)
        return op.NonMaxSuppression(shifted, scores, max_boxes, iou_threshold, score_threshold)

    def reference(self, ctx, groups, to, scores, max_boxes, iou_threshold, score_threshold):
        boxes = np.concatenate(groups, axis=0)[None].astype(onnx.helper.tensor_dtype_to_np_dtype(to))
        group_of = np.repeat(np.arange(len(groups)), [len(part) for part in groups])
        limit, iou, score = nms_parameters(max_boxes, iou_threshold, score_threshold)
        return per_group_nms(boxes, scores, group_of, limit=limit, iou_threshold=iou, score_threshold=score)


def shift_refused(ctx: gf.Context, center_point_box: int) -> gf.Reject | None:
    """Why no group shift applies to this NMS whatever its groups are, or None."""
    if ctx.in_subgraph:
        return gf.reject("the NMS is inside an If/Loop body, where only an end-to-end run could verify it",
                         ctx.root)
    if center_point_box != 0:
        return gf.reject("center_point_box=1: shifting the boxes would shift their sizes too", ctx.root)
    return None


def shifted_boxes(op: Any, boxes: Any, group_ids: Any, dtype: np.dtype) -> Any:
    """`boxes` [1, N, 4] moved by group id x (extent of all coordinates + 1): boxes of different
    groups can no longer overlap. `group_ids` [N] are of `dtype`."""
    extent = op.Sub(op.reduce("ReduceMax", boxes, None, keepdims=0), op.reduce("ReduceMin", boxes, None, keepdims=0))
    offsets = op.Mul(group_ids, op.Add(extent, np.array(1, dtype)))
    return op.Add(boxes, op.unsqueeze(offsets, [0, 2]))


def _length(ctx: gf.Context, tensor: Any) -> int | None:
    """The static size of a tensor's first axis, else None."""
    dims = ctx.shape(tensor)
    return int(dims[0]) if dims and isinstance(dims[0], (int, np.integer)) else None


def _concat_parts_behind(ctx: gf.Context, tensor: Any) -> Sequence[Any] | None:
    """The inputs of the Concat that `tensor` is, through order-keeping ops, else None."""
    node = ctx.producer(tensor)
    while node is not None and node.op in _ORDER_KEEPING:
        node = ctx.producer(node.inputs[0])
    return None if node is None or node.op != "Concat" else list(node.inputs)
