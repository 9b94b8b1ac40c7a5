"""Make NonMaxSuppression suppress per group, the groups given by a tensor the user names."""

from __future__ import annotations

import numpy as np

import graphfix as gf
from graphfix.kernels.nms import nms_parameters, per_group_nms
from graphfix.rules.offset_nms_groups import shift_refused, shifted_boxes


@gf.rule(limitation="nms.merged_groups", opt_in=True, exclusive=False, options={"group_ids": ""})
class OffsetNmsByGroupIds:
    """Shift boxes by a user-named group-id tensor so that one NMS suppresses within groups only.

    TensorRT limitation: not a parser defect but an export one that every release reproduces
    faithfully (7.2 to 10.x; key `nms.merged_groups`, opt-in because it changes results on
    purpose): PyTorch's per-class or per-level `batched_nms` often reaches ONNX as one
    NonMaxSuppression over all boxes. `offset_nms_groups` recognises the concatenated-groups
    form; this rule covers every other graph shape when the user names the tensor holding each
    box's group: `--enable offset_nms_by_group_ids --rule-option
    offset_nms_by_group_ids.group_ids=labels` (trt-onnx-support.md, NonMaxSuppression row).

    Rewrite: boxes [B, N, 4] (corners) are shifted by group_id * (max - min + 1) over all box
    coordinates, computed in the graph; the named tensor holds N integer-valued group ids
    (any numeric type; floats must be whole numbers, e.g. labels from an ArgMax cast to float).
    Distinct ids put groups in disjoint coordinate ranges with a gap of at least 1, so boxes of
    different groups never overlap and the single NMS selects what a per-group NMS selects.
    `max_output_boxes_per_class` still counts over all groups. Verified against the rule's
    reference semantics: per-group ONNX NMS in numpy on the same boxes, scores and ids.
    """

    def pattern(self, op, boxes, scores, max_boxes, iou_threshold, score_threshold, center_point_box):
        return op.NonMaxSuppression(
            boxes, scores, max_boxes.optional(), iou_threshold.optional(), score_threshold.optional(),
            center_point_box=center_point_box,
        )

    def check(self, ctx, boxes, center_point_box):
        name = ctx.options["group_ids"]
        if not name:
            return gf.reject("name the group-id tensor: --rule-option offset_nms_by_group_ids.group_ids=NAME",
                             ctx.root, quiet=True)
        group_ids = ctx.tensor(name)
        if group_ids is None:
            return gf.reject(f"no tensor named {name!r} in this graph", ctx.root)
        refused = shift_refused(ctx, center_point_box)
        if refused is not None:
            return refused
        # The rewritten NMS matches the pattern again; its boxes' producer, named after this
        # rule (provenance), says it is done.
        shifter = ctx.producer(boxes)
        if shifter is not None and shifter.name.startswith("offset_nms_by_group_ids/"):
            return gf.reject("the boxes are already shifted by this rule", ctx.root)
        if ctx.rank(group_ids) not in (1, None):
            return gf.reject(f"{name} must hold one group id per box (rank 1), not rank {ctx.rank(group_ids)}",
                             group_ids)
        return gf.accept(group_ids=group_ids)

    def rewrite(self, op, boxes, scores, max_boxes, iou_threshold, score_threshold, group_ids):
        dtype = op.ctx.numpy_dtype(boxes) or np.dtype(np.float32)
        shifted = shifted_boxes(op, boxes, op.cast(group_ids, dtype), dtype)
        return op.NonMaxSuppression(shifted, scores, max_boxes, iou_threshold, score_threshold)

    def reference(self, ctx, boxes, scores, max_boxes, iou_threshold, score_threshold, group_ids):
        limit, iou, score = nms_parameters(max_boxes, iou_threshold, score_threshold)
        return per_group_nms(boxes, scores, np.asarray(group_ids).reshape(-1), limit=limit, iou_threshold=iou,
                             score_threshold=score)
