"""Opt-in: run NonMaxSuppression on TensorRT's EfficientNMS_TRT plugin, with the exact ONNX rows."""

from __future__ import annotations

import numpy as np

import graphfix as gf
from graphfix.rules.decompose_nms import (
    TOPK_LIMIT,
    arange,
    box_count,
    maximum,
    minimum,
    ranked_rows,
    selected_first,
    take_along_last,
)
from graphfix.rules.pad_nonzero import EQUAL_FLOATS_SINCE
from graphfix.targets import TRT_PLUGIN_DOMAIN

PLUGIN = "EfficientNMS_TRT"
# Candidates per image the plugin sorts and suppresses: 4096 before TensorRT 8.5, 5000 since
# (2000 on Jetson TX1/TX2-class GPUs, which only an explicit option can describe).
# graphfix/kernels/nms.py TRT_NUM_SELECTED_BOXES; NVIDIA/TensorRT efficientNMSPlugin.
_CANDIDATES_BEFORE_85 = 4096
_CANDIDATES_SINCE_85 = 5000
# Ops whose output is >= 0 whatever their input, and ops whose output is >= 0 when their data
# inputs are (all of them for Concat/Mul/Add/Min, the first for the others).
_NONNEGATIVE_OPS = frozenset({"Sigmoid", "Softmax", "Relu", "Abs", "Exp", "Sqrt", "Softplus"})
_SIGN_PRESERVING_OPS = frozenset({
    "Cast", "Unsqueeze", "Squeeze", "Reshape", "Transpose", "Flatten", "Identity", "Gather", "Slice",
    "Expand", "Tile", "GatherElements", "GatherND", "TopK", "Concat", "Mul", "Add", "Min",
})
_PROOF_DEPTH = 12
_CUMSUM_SINCE = 11
_F32 = np.float32


@gf.rule(limitation=("nms.padded_plugin", "nms.missing"), opt_in=True, stage="fuse",
         options={"max_candidates": 0})
class EmitEfficientNms:
    """Opt-in: NonMaxSuppression runs on the EfficientNMS_TRT plugin; its rows are rebuilt exactly.

    TensorRT limitation: TensorRT 8.0 to 8.4 import NonMaxSuppression as the padded
    EfficientNMS_ONNX_TRT plugin, which drops boxes beyond batch * max_output_boxes_per_class
    rows whatever the class count (`nms.padded_plugin`); TensorRT-RTX has no NMS runner
    (`nms.missing`); NVIDIA points users of those releases to an explicit EfficientNMS_TRT node
    (trt-onnx-support.md NonMaxSuppression row and section c: S80-S84, PL-effnms; pitfall 9).
    EfficientNMS_TRT is in the standard plugin library from 8.0 (deprecated from 10.12, still in
    11.x); 7.2 and `portable` are refused. 10.x applications must load the standard plugins
    (`trt.init_libnvinfer_plugins`); `graphfix build` on 8.x needs nothing extra.

    Rewrite (run it with `--enable emit_efficient_nms --target trt8.x`; an enabled rule runs
    before the target's default lowerings, so decompose_nms finds no NonMaxSuppression left on
    the targets where it runs by default, 7.2-8.4 and RTX): the node becomes
    EfficientNMS_TRT (plugin_version 1, fields score_threshold, iou_threshold,
    max_output_boxes, background_class, score_activation, box_coding; class_agnostic, 8.6+
    only, is left at its default 0) on the boxes as ordered corners (y_min, x_min, y_max,
    x_max), formed as onnxruntime forms them (centre boxes: centre -+ size / 2, a negative size
    giving an empty box, which never suppresses in onnxruntime either), and on the scores
    transposed to [B, N, C], followed by standard ops that rebuild ONNX's [num_selected, 3]
    rows. Why it is the same selection:
    * score_threshold 0 puts the plugin on its dense path: every element is a candidate, those
      below 0 are ranked last with score -32768, ties stay in box order; max_output_boxes = C*N
      so nothing is cut. The ONNX score threshold t (score > t) is applied to the plugin's
      output scores afterwards, which is exact because a box below t ranks after every box
      above it and so cannot suppress one. Without a threshold (or with t < 0) every score
      must be >= 0, proven from the graph (Sigmoid, Softmax, ... through value-moving ops),
      else the node is left alone.
    * iou_threshold is the float32 just above the ONNX value: the plugin drops IoU >= it,
      exactly ONNX's IoU > t. On ordered corners the plugin's IoU is onnxruntime's expression.
    * The plugin outputs no box indices: each detection's index is recovered from its image's
      boxes with the same corners and, in its class, the same score. Such duplicates share
      their fate in greedy NMS (the same overlaps with every other box), so the selected ones
      are the first in index order, and the plugin lists them in that order: the detection
      with r duplicates before it is the match with r matches before it (CumSum; a MatMul with
      a triangle of ones before opset 11).
    * The detections of a class are taken in score order and cut at max_output_boxes_per_class
      (which may be a runtime tensor), then laid out by batch and class as decompose_nms does
      (the same data-dependent final Range: the result builds on TensorRT 8.5+ and RTX, and
      on 8.0-8.4 parses but needs data-dependent shapes, which only 8.5 brings).
    Where it can still differ: the plugin's CUDA arithmetic may contract multiply-adds, so an
    IoU within a rounding error of the threshold can go either way on the GPU (the reference
    kernel follows the source's operation order, so verification cannot see it). Near misses:
    a release without the plugin, unknown C or N, C*N above the plugin's candidate limit (4096
    before 8.5, 5000 since; the option `max_candidates` sets another, e.g. 2000 for Jetson
    TX1/TX2) or above TensorRT's TopK limit of 3840 (the rebuild sorts detections by class),
    iou/score thresholds that are not constants, an iou outside [0, 1].
    """

    def pattern(self, op, boxes, scores, max_boxes, iou, score_threshold):
        return op.NonMaxSuppression(
            boxes, scores, max_boxes.optional(), iou.optional(), score_threshold.optional(), _capture="nms"
        )

    def check(self, ctx, boxes, scores, iou, score_threshold, nms):
        missing = plugin_missing(ctx, PLUGIN, "8.0")
        if missing is not None:
            return missing
        center = ctx.attr(nms, "center_point_box")
        if center not in (0, 1):
            return gf.reject(f"center_point_box={center} is neither 0 nor 1", nms)
        dims = ctx.shape(scores)
        classes = dims[1] if dims is not None and len(dims) == 3 else None
        count = box_count(ctx, boxes, scores)
        if not isinstance(classes, (int, np.integer)) or count is None:
            return gf.reject("the class or box count is not static: max_output_boxes must be a constant", scores)
        candidates, limit = classes * count, int(ctx.options["max_candidates"]) or _candidate_limit(ctx.target)
        if candidates > limit:
            return gf.reject(f"{classes} classes x {count} boxes = {candidates} candidates: the plugin "
                             f"considers only the first {limit} per image", scores)
        if candidates > TOPK_LIMIT:
            return gf.reject(f"{candidates} detections to sort back into classes: above TensorRT's TopK "
                             f"limit of {TOPK_LIMIT}", scores)
        overlap = _threshold(ctx, iou, 0.0)
        if isinstance(overlap, gf.Reject):
            return overlap
        if not 0.0 <= overlap <= 1.0:
            return gf.reject(f"iou_threshold {overlap} is outside [0, 1]", iou)
        score = _threshold(ctx, score_threshold, None)
        if isinstance(score, gf.Reject):
            return score
        if (score is None or score < 0) and not _nonnegative(ctx, scores, _PROOF_DEPTH):
            return gf.reject("no score_threshold >= 0 and the scores are not provably >= 0: the plugin "
                             "ranks negative scores last, at -32768", scores)
        return gf.accept(center=center, classes=int(classes), count=count, overlap=overlap, score=score)

    def rewrite(self, op, boxes, scores, max_boxes, center, classes, count, overlap, score):
        corners = _ordered_corners(op, boxes, center)
        detections = classes * count
        outputs = op.node(
            PLUGIN, corners, op.Transpose(scores, perm=[0, 2, 1]), _domain=TRT_PLUGIN_DOMAIN, _outputs=4,
            score_threshold=0.0, iou_threshold=float(np.nextafter(_F32(overlap), _F32(np.inf))),
            max_output_boxes=detections, background_class=-1, score_activation=0, box_coding=0,
        )
        found, det_boxes, det_scores, det_classes = _typed(outputs, op.ctx.shape(boxes), detections)
        valid = op.Less(op.constant(np.arange(detections, dtype=np.int64)), op.cast(found, np.int64))
        if score is not None:
            valid = op.And(valid, op.Greater(det_scores, np.array(score, _F32)))
        det_classes = op.cast(det_classes, np.int64)
        index = _box_index(op, corners, scores, det_boxes, det_scores, det_classes, classes, count)
        class_ids = op.constant(np.arange(classes, dtype=np.int64).reshape(1, -1, 1))
        in_class = op.Equal(op.unsqueeze(det_classes, [1]), class_ids)
        flags = op.And(in_class, op.unsqueeze(valid, [1]))  # [B, C, K]: detection k is of class c
        ranked = take_along_last(op, index, selected_first(op, flags, detections), table_rank=2, extra=1)
        ones = op.Where(flags, np.array(1, np.int64), np.array(0, np.int64))
        selected = op.reduce("ReduceSum", ones, [2], keepdims=0)
        zero = op.constant(np.array(0, np.int64))
        limit = zero if max_boxes is None else maximum(op, op.Reshape(max_boxes, op.int64([])), zero)
        return ranked_rows(op, ranked, minimum(op, selected, limit))


def plugin_missing(ctx, plugin: str, since: str) -> gf.Reject | None:
    """Why the target cannot resolve `plugin` by name (its release lacks it), or None."""
    target = ctx.target
    if target is None:
        return gf.reject(f"no TensorRT target: {plugin} needs one that has it (TensorRT >= {since})", ctx.root)
    if plugin not in target.plugins:
        return gf.reject(f"{target.label} has no {plugin} plugin (TensorRT >= {since} ships it)", ctx.root)
    return None


def _candidate_limit(target) -> int:
    """Candidates per image the target's plugin considers (the smallest over a union's members)."""
    members = target.members or (target,)
    return min(_CANDIDATES_BEFORE_85 if m.version < (8, 5) else _CANDIDATES_SINCE_85 for m in members)


def _threshold(ctx, tensor, default):
    """A threshold input's value as a float (plugin fields are constants), the default if absent."""
    if tensor is None:
        return default
    value = ctx.constant(tensor)
    if value is None or np.size(value) != 1:
        return gf.reject(f"{tensor.name} is computed at run time: plugin fields must be constants", tensor)
    return float(np.asarray(value).reshape(-1)[0])


def _nonnegative(ctx, tensor, depth: int) -> bool:
    """The graph proves every element of `tensor` is >= 0 (within `depth` producers)."""
    value = ctx.literal(tensor)
    if value is not None:
        return bool(np.all(value >= 0))
    node = ctx.producer(tensor)
    if node is None or depth == 0:
        return False
    if node.op in _NONNEGATIVE_OPS:
        return True
    if node.op == "Max":
        return any(_nonnegative(ctx, t, depth - 1) for t in node.inputs)
    if node.op not in _SIGN_PRESERVING_OPS or (node.op == "TopK" and tensor is not node.outputs[0]):
        return False
    data = node.inputs if node.op in ("Concat", "Mul", "Add", "Min") else node.inputs[:1]
    return all(_nonnegative(ctx, t, depth - 1) for t in data)


def _ordered_corners(op, boxes, center: int):
    """[B, N, 4] (y_min, x_min, y_max, x_max) with onnxruntime's extents (SuppressByIOU)."""
    coordinate = [op.Gather(boxes, op.int64(k), axis=2) for k in range(4)]
    if center == 0:  # [y1, x1, y2, x2], corners in either order
        y1, x1, y2, x2 = coordinate
        ordered = (op.Min(y1, y2), op.Min(x1, x2), op.Max(y1, y2), op.Max(x1, x2))
    else:  # [x_center, y_center, width, height]; a negative size makes an empty box
        x_center, y_center, width, height = coordinate
        half_width, half_height = op.Div(width, np.array(2, _F32)), op.Div(height, np.array(2, _F32))
        y_min, x_min = op.Sub(y_center, half_height), op.Sub(x_center, half_width)
        ordered = (y_min, x_min, op.Max(y_min, op.Add(y_center, half_height)),
                   op.Max(x_min, op.Add(x_center, half_width)))
    return op.Concat(*(op.unsqueeze(c, [2]) for c in ordered), axis=2)


def _typed(outputs, boxes_dims, detections: int):
    """The plugin's outputs with the types and shapes its README gives (ONNX cannot infer them)."""
    batch = boxes_dims[0] if boxes_dims else None
    found, det_boxes, det_scores, det_classes = outputs
    for tensor, dtype, shape in ((found, np.int32, [batch, 1]), (det_boxes, _F32, [batch, detections, 4]),
                                 (det_scores, _F32, [batch, detections]), (det_classes, np.int32, [batch, detections])):
        tensor.dtype, tensor.shape = np.dtype(dtype), shape
    return found, det_boxes, det_scores, det_classes


def _box_index(op, corners, scores, det_boxes, det_scores, det_classes, classes: int, count: int):
    """[B, K] the box index of each detection.

    A detection matches the boxes of its image with its corners and, in its class, its score.
    Boxes that match the same detections are duplicates; they share their fate in greedy NMS
    (same overlaps with every other box), so the selected ones come first in index order and
    the plugin lists them in that order (its ties follow box order): the detection with r
    duplicates before it is the match with r matches before it.
    """
    same = op.Where(_equal(op, op.unsqueeze(det_boxes, [2]), op.unsqueeze(corners, [1])),
                    np.array(1, _F32), np.array(0, _F32))
    same_box = _equal(op, op.reduce("ReduceSum", same, [3], keepdims=0), np.array(4, _F32))  # [B, K, N]
    batch = op.Gather(op.Shape(corners), op.int64(0), axis=0)
    row = op.Add(op.Mul(op.Reshape(arange(op, batch), op.int64([-1, 1])), np.array(classes, np.int64)), det_classes)
    class_scores = op.Gather(op.Reshape(scores, op.int64([-1, count])), row, axis=0)  # [B, K, N]
    match = op.Where(op.And(same_box, _equal(op, class_scores, op.unsqueeze(det_scores, [2]))),
                     np.array(1, _F32), np.array(0, _F32))
    rank = _duplicates_before(op, op.ArgMax(match, axis=2, keepdims=0), det_classes, classes * count)
    matches_before = op.Sub(_running_sum(op, match, count), match)
    pick = op.Where(_equal(op, matches_before, op.unsqueeze(rank, [2])), match, np.array(0, _F32))
    return op.ArgMax(pick, axis=2, keepdims=0)


def _duplicates_before(op, first_match, det_classes, detections: int):
    """[B, K] float: earlier detections with the same first matching box and the same class."""
    position = np.arange(detections, dtype=np.int64)
    earlier = op.Greater(op.constant(position.reshape(-1, 1)), op.constant(position.reshape(1, -1)))
    same = op.And(op.Equal(op.unsqueeze(first_match, [2]), op.unsqueeze(first_match, [1])),
                  op.Equal(op.unsqueeze(det_classes, [2]), op.unsqueeze(det_classes, [1])))
    duplicate = op.Where(op.And(same, earlier), np.array(1, _F32), np.array(0, _F32))
    return op.reduce("ReduceSum", duplicate, [2], keepdims=0)


def _running_sum(op, values, count: int):
    """Inclusive running sum along the last axis (length `count`): CumSum, or before opset 11 a
    MatMul with the upper triangle of ones."""
    if op.opset >= _CUMSUM_SINCE:
        return op.CumSum(values, op.constant(np.array(2, np.int64)))
    position = np.arange(count, dtype=np.int64)
    later = op.Less(op.constant(position.reshape(1, -1)), op.constant(position.reshape(-1, 1)))  # row > column
    return op.MatMul(values, op.Where(later, np.array(0, _F32), np.array(1, _F32)))


def _equal(op, a, b):
    """a == b on floats; Equal takes floats from opset 11, before that not (a < b or a > b)."""
    if op.opset >= EQUAL_FLOATS_SINCE:
        return op.Equal(a, b)
    return op.Not(op.Or(op.Less(a, b), op.Greater(a, b)))
