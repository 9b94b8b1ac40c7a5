"""NonMaxSuppression (ONNX) and TensorRT's `EfficientNMS_TRT` plugin as numpy kernels."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "non_max_suppression",
    "nonmaxsuppression_kernel",
    "per_group_nms",
    "nms_parameters",
    "efficient_nms",
    "efficient_nms_trt_kernel",
]

_F32 = np.float32
# EfficientNMS_TRT internals (NVIDIA/TensorRT plugin/efficientNMSPlugin, 8.5+):
# candidates NMS looks at per image (5000; 2000 on GPUs with < 64K registers per block, i.e.
# Jetson TX1/TX2; 4096 before 8.5), the score that marks dropped entries on the dense path, and
# the threshold below which that path is taken.
TRT_NUM_SELECTED_BOXES = 5000
_DENSE_DROPPED_SCORE = -32768.0
_DENSE_PATH_BELOW = 0.007
# Candidates whose pairwise overlaps are evaluated at once by the greedy selection.
_BLOCK = 256


def non_max_suppression(
    boxes: np.ndarray,
    scores: np.ndarray,
    max_output_boxes_per_class: int = 0,
    iou_threshold: float = 0.0,
    score_threshold: float | None = None,
    center_point_box: int = 0,
) -> np.ndarray:
    """ONNX NonMaxSuppression exactly as onnxruntime's CPU kernel (and the reference implementation).

    Per batch and class: candidates are the boxes whose score is > score_threshold (all boxes
    when the threshold input is absent), taken by descending score, ties by lower box index;
    a candidate is selected unless its IoU with an already selected box of that class is
    > iou_threshold, until max_output_boxes_per_class are selected (0, the default, selects
    nothing; negative counts as 0). Rows are ordered by batch, then class, then selection.
    IoU is computed in float32 in onnxruntime's operation order (SuppressByIOU in
    non_max_suppression_helper.h): corner boxes [y1, x1, y2, x2] may have their corners in either
    order (min/max per axis); center boxes [xc, yc, w, h] are not reordered; an empty
    intersection or a non-positive area never suppresses.

    Args:
        boxes: [B, N, 4] float.
        scores: [B, C, N] float.
        max_output_boxes_per_class: Selection limit per batch and class.
        iou_threshold: Suppress when IoU > this.
        score_threshold: Keep candidates with score > this; None = the input is absent.
        center_point_box: 0 corners [y1, x1, y2, x2], 1 center [xc, yc, w, h].

    Returns:
        selected_indices [K, 3] int64 of (batch, class, box).
    """
    if boxes.ndim != 3 or boxes.shape[2] != 4 or scores.ndim != 3 or scores.shape[0] != boxes.shape[0] \
            or scores.shape[2] != boxes.shape[1]:
        raise ValueError(f"NonMaxSuppression needs boxes [B,N,4] and scores [B,C,N]; got {boxes.shape}, {scores.shape}")
    if center_point_box not in (0, 1):
        raise ValueError(f"center_point_box must be 0 or 1, got {center_point_box}")
    limit = max(int(max_output_boxes_per_class), 0)
    selected: list[tuple[int, int, int]] = []
    if limit == 0:
        return np.zeros((0, 3), np.int64)
    threshold = _F32(iou_threshold)
    for b in range(boxes.shape[0]):
        extents = _onnx_extents(boxes[b].astype(_F32), center_point_box)
        for c in range(scores.shape[1]):
            class_scores = scores[b, c].astype(_F32)
            candidates = np.arange(class_scores.size)
            if score_threshold is not None:
                candidates = candidates[class_scores > _F32(score_threshold)]
            # Descending score, ties by lower index (stable sort of the negated scores).
            order = candidates[np.argsort(-class_scores[candidates], kind="stable")]
            ordered = extents[:, order]

            def suppresses(k: np.ndarray, rest: np.ndarray) -> np.ndarray:
                return _onnx_suppresses(ordered[:, k], ordered[:, rest], threshold)

            kept = _greedy(order.size, limit, suppresses)
            selected.extend((b, c, int(order[k])) for k in kept)
    return np.array(selected, dtype=np.int64).reshape(-1, 3)


def nonmaxsuppression_kernel(inputs: Sequence[np.ndarray | None], attrs: Mapping[str, Any]) -> list[np.ndarray]:
    """ONNX NonMaxSuppression node: optional inputs may be None or absent.

    Args:
        inputs: boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold.
        attrs: center_point_box (default 0).

    Returns:
        [selected_indices].
    """
    limit, iou, score = nms_parameters(*[*inputs[2:5], None, None, None][:3])
    return [
        non_max_suppression(
            inputs[0], inputs[1],
            max_output_boxes_per_class=limit,
            iou_threshold=iou,
            score_threshold=score,
            center_point_box=int(attrs.get("center_point_box", 0)),
        )
    ]


def nms_parameters(
    max_boxes: np.ndarray | None, iou_threshold: np.ndarray | None, score_threshold: np.ndarray | None
) -> tuple[int, float, float | None]:
    """NonMaxSuppression's optional scalar inputs as (limit, iou threshold, score threshold).

    Absent or empty inputs take the spec's defaults: no limit (0), IoU threshold 0, and no
    score threshold (None).
    """
    def scalar(value: np.ndarray | None) -> Any:
        return None if value is None or np.size(value) == 0 else np.asarray(value).reshape(-1)[0].item()

    limit, iou, score = scalar(max_boxes), scalar(iou_threshold), scalar(score_threshold)
    return (0 if limit is None else int(limit)), (0.0 if iou is None else float(iou)), (None if score is None else float(score))


def per_group_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    group_of: np.ndarray,
    limit: int,
    iou_threshold: float,
    score_threshold: float | None,
) -> np.ndarray:
    """ONNX NonMaxSuppression run separately on each group, merged as one NMS would list them.

    Args:
        boxes: [B, N, 4] corners.
        scores: [B, C, N].
        group_of: [N] group of each box.
        limit: max_output_boxes_per_class, counted over all groups.
        iou_threshold: Suppress when IoU > this.
        score_threshold: Candidates need a score > this; None: no threshold input.

    Returns:
        selected_indices [K, 3] int64 (batch, class, box), by batch, class, descending score,
        ties by box index, at most `limit` per batch and class.
    """
    found = [np.zeros((0, 3), np.int64)]
    for group in np.unique(group_of):
        members = np.flatnonzero(group_of == group)
        rows = non_max_suppression(
            boxes[:, members], scores[:, :, members], members.size, iou_threshold, score_threshold)
        rows[:, 2] = members[rows[:, 2]]
        found.append(rows)
    rows = np.concatenate(found)
    score = scores.astype(np.float32)[rows[:, 0], rows[:, 1], rows[:, 2]]
    rows = rows[np.lexsort((rows[:, 2], -score, rows[:, 1], rows[:, 0]))]
    # Rows are now in (batch, class) blocks; keep the first `limit` of each block.
    _, starts, counts = np.unique(rows[:, 0] * scores.shape[1] + rows[:, 1], return_index=True, return_counts=True)
    rank_in_block = np.arange(len(rows)) - np.repeat(starts, counts)
    return rows[rank_in_block < max(limit, 0)]


def efficient_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    anchors: np.ndarray | None = None,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    max_output_boxes: int = 100,
    background_class: int = -1,
    score_activation: bool = False,
    class_agnostic: bool = False,
    box_coding: int = 0,
    num_selected_boxes: int = TRT_NUM_SELECTED_BOXES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """TensorRT EfficientNMS_TRT as its CUDA source computes it (float32).

    Reproduced from NVIDIA/TensorRT plugin/efficientNMSPlugin/efficientNMSInference.cu(h):
    * Candidates per image are the (anchor, class) score elements with score >= threshold
      (on raw scores when score_activation: threshold logit(t), or -32768 for t <= 0),
      excluding background_class. Sorted by descending score; ties in element order
      (anchor-major, class-minor), which is what the plugin's stable radix sort yields on its
      dense path; on its filtered path the tie order is that of atomic slot allocation,
      i.e. not deterministic.
    * Dense path (threshold < 0.007, or its logit with score_activation): the plugin does not
      drop below-threshold and background elements but sets their score to -32768 and keeps
      them in the sorted list, so when fewer than max_output_boxes real detections survive they
      are emitted with score -32768 (sigmoid(-32768) = 0 with score_activation). Reproduced.
    * Only the first `num_selected_boxes` sorted candidates per image enter NMS (5000 since
      TensorRT 8.5; 2000 on Jetson TX1/TX2; 4096 before 8.5).
    * Greedy NMS in that order: a candidate is dropped when its IoU with an earlier kept box
      of the same class (any class if class_agnostic) is >= iou_threshold (ONNX uses >).
      IoU is on reordered corners (y1 <= y2, x1 <= x2, swapped with the plugin's
      subtract/add trick) and is 0 for non-positive areas. Output stops at max_output_boxes.
    * box_coding 0: boxes are corners [y1, x1, y2, x2] (any axis order, the plugin treats
      both axes alike); 1: center-size [yc, xc, h, w] (likewise), converted to corners.
      With anchors (fused decoder): corners are added to reordered anchors; center-size decodes
      as (c * anchor_size + anchor_c, anchor_size * exp(s)).
    Not reproduced: the float16 score-bits sort, whose key precision only matters for fp16.

    Args:
        boxes: [B, N, 4], [B, N, 1, 4] or [B, N, C, 4].
        scores: [B, N, C] (or [B, N, C, 1]).
        anchors: Optional [1 or B, N, 4] (fused box decoder).
        score_threshold: Plugin field score_threshold.
        iou_threshold: Plugin field iou_threshold.
        max_output_boxes: Detections per image (K).
        background_class: Class to ignore, -1 for none.
        score_activation: Apply sigmoid to the output scores (threshold on logits).
        class_agnostic: One NMS over all classes.
        box_coding: 0 corners, 1 center-size.
        num_selected_boxes: Candidates per image that NMS considers.

    Returns:
        num_detections [B, 1] int32, detection_boxes [B, K, 4], detection_scores [B, K]
        (both in the scores' float type), detection_classes [B, K] int32; zero padded.
    """
    if scores.ndim == 4 and scores.shape[3] == 1:
        scores = scores[..., 0]
    batch, anchors_count, classes = scores.shape
    boxes = boxes.reshape(batch, anchors_count, -1, 4).astype(_F32)
    if boxes.shape[2] not in (1, classes):
        raise ValueError(f"EfficientNMS_TRT: boxes {boxes.shape} do not match {classes} classes")
    raw = scores.astype(_F32).reshape(batch, -1)  # element e = anchor * C + class
    threshold, dense = _score_threshold(score_threshold, score_activation)
    eligible = np.tile(np.arange(classes), anchors_count) != background_class
    counts = np.zeros((batch, 1), np.int32)
    out_boxes = np.zeros((batch, max_output_boxes, 4), _F32)
    out_scores = np.zeros((batch, max_output_boxes), _F32)
    out_classes = np.zeros((batch, max_output_boxes), np.int32)
    for b in range(batch):
        elements, ranked = _ranked_candidates(raw[b], threshold, eligible, dense, num_selected_boxes)
        anchor_of, class_of = elements // classes, elements % classes
        decoded = _decode(boxes[b, anchor_of, class_of if boxes.shape[2] > 1 else 0],
                          None if anchors is None else anchors[min(b, anchors.shape[0] - 1), anchor_of],
                          box_coding)
        kept = _efficient_select(decoded, None if class_agnostic else class_of, _F32(iou_threshold), max_output_boxes)
        counts[b, 0] = len(kept)
        out_boxes[b, : len(kept)] = decoded[kept]
        out_scores[b, : len(kept)] = _sigmoid(ranked[kept]) if score_activation else ranked[kept]
        out_classes[b, : len(kept)] = class_of[kept]
    dtype = scores.dtype if scores.dtype.kind == "f" else _F32
    return counts, out_boxes.astype(dtype), out_scores.astype(dtype), out_classes


def efficient_nms_trt_kernel(inputs: Sequence[np.ndarray | None], attrs: Mapping[str, Any]) -> list[np.ndarray]:
    """TensorRT EfficientNMS_TRT plugin node (plugin_version 1); see `efficient_nms`.

    Fields (efficientNMSPlugin.cpp; TensorRT 10 requires all but class_agnostic, which exists
    since 8.6): score_threshold, iou_threshold, max_output_boxes, background_class,
    score_activation, class_agnostic, box_coding. Missing fields take the parameter struct's
    defaults (0.5, 0.5, 100, -1, 0, 0, 0).

    Args:
        inputs: boxes, scores, optional anchors.
        attrs: Plugin fields.

    Returns:
        [num_detections, detection_boxes, detection_scores, detection_classes].
    """
    anchors = inputs[2] if len(inputs) > 2 else None
    # The creator refuses these (PLUGIN_VALIDATE in EfficientNMSPluginCreator::createPlugin).
    if float(attrs.get("score_threshold", 0.5)) < 0 or float(attrs.get("iou_threshold", 0.5)) <= 0 \
            or int(attrs.get("max_output_boxes", 100)) <= 0 or int(attrs.get("box_coding", 0)) not in (0, 1):
        raise ValueError("EfficientNMS_TRT: needs score_threshold >= 0, iou_threshold > 0, max_output_boxes > 0, "
                         "box_coding 0 or 1")
    return list(
        efficient_nms(
            inputs[0], inputs[1], anchors,
            score_threshold=float(attrs.get("score_threshold", 0.5)),
            iou_threshold=float(attrs.get("iou_threshold", 0.5)),
            max_output_boxes=int(attrs.get("max_output_boxes", 100)),
            background_class=int(attrs.get("background_class", -1)),
            score_activation=bool(attrs.get("score_activation", 0)),
            class_agnostic=bool(attrs.get("class_agnostic", 0)),
            box_coding=int(attrs.get("box_coding", 0)),
        )
    )


def _greedy(count: int, limit: int, suppresses: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> list[int]:
    """Greedy selection over `count` candidates already in priority order.

    Exactly the sequential rule (take the next candidate not suppressed by any earlier
    selected one), evaluated a block of candidates at a time: the block's pairwise matrix
    decides within it, then the block's selections filter the candidates after it.

    Args:
        count: Number of candidates.
        limit: Maximum number selected.
        suppresses: f(selected positions [k], candidate positions [m]) -> [k, m] bool.

    Returns:
        Positions of the selected candidates, in selection order.
    """
    kept: list[int] = []
    alive = np.arange(count)
    while alive.size and len(kept) < limit:
        head, alive = alive[:_BLOCK], alive[_BLOCK:]
        pairs = suppresses(head, head)
        live = np.ones(head.size, bool)
        chosen: list[int] = []
        for i in range(head.size):
            if not live[i]:
                continue
            chosen.append(i)
            if len(kept) + len(chosen) == limit:
                break
            live[i + 1:] &= ~pairs[i, i + 1:]
        kept.extend(int(head[i]) for i in chosen)
        if alive.size and len(kept) < limit:
            alive = alive[~suppresses(head[chosen], alive).any(axis=0)]
    return kept


def _score_threshold(score_threshold: float, score_activation: bool) -> tuple[np.float32, bool]:
    """EfficientNMSFilterLauncher: the threshold on raw scores, and whether the dense path runs.

    Args:
        score_threshold: The plugin field.
        score_activation: Whether scores are logits (the threshold becomes logit(t), -32768 if t <= 0).

    Returns:
        (threshold, dense path taken).
    """
    threshold, dense_below = _F32(score_threshold), _F32(_DENSE_PATH_BELOW)
    if score_activation:
        threshold = _F32(_DENSE_DROPPED_SCORE) if threshold <= 0 else _F32(np.log(threshold / (_F32(1) - threshold)))
        dense_below = _F32(np.log(dense_below / (_F32(1) - dense_below)))
    return threshold, bool(threshold < dense_below)


def _ranked_candidates(
    raw: np.ndarray, threshold: np.float32, eligible: np.ndarray, dense: bool, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """One image's candidate elements by descending score (ties by element), the first `limit`.

    Args:
        raw: Scores per element (anchor * C + class), float32.
        threshold: Raw-score threshold (>=).
        eligible: False for background-class elements.
        dense: Dense path: failing elements stay in with score -32768 instead of being dropped.
        limit: num_selected_boxes.

    Returns:
        (element indices, their ranking scores).
    """
    keep = (raw >= threshold) & eligible
    if dense:
        elements, ranked = np.arange(raw.size), np.where(keep, raw, _F32(_DENSE_DROPPED_SCORE))
    else:
        elements = np.flatnonzero(keep)
        ranked = raw[elements]
    order = np.argsort(-ranked, kind="stable")[:limit]
    return elements[order], ranked[order]


def _efficient_select(decoded: np.ndarray, classes: np.ndarray | None, iou: np.float32, limit: int) -> list[int]:
    """The EfficientNMS kernel's greedy pass: drop when IOU >= iou with an earlier kept box.

    Args:
        decoded: Candidate corners [K, 4] in rank order.
        classes: Class per candidate, or None for class-agnostic NMS.
        iou: iou_threshold.
        limit: max_output_boxes.

    Returns:
        Positions of the kept candidates, in rank order.
    """
    corners = _reordered(decoded)

    def suppresses(kept: np.ndarray, rest: np.ndarray) -> np.ndarray:
        overlap = _trt_iou(corners, kept, rest) >= iou
        return overlap if classes is None else overlap & (classes[kept][:, None] == classes[rest][None, :])

    return _greedy(decoded.shape[0], limit, suppresses)


def _onnx_extents(boxes: np.ndarray, center_point_box: int) -> np.ndarray:
    """(x_min, x_max, y_min, y_max) per box, rows of a [4, N] float32 array (SuppressByIOU)."""
    if center_point_box == 0:
        y1, x1, y2, x2 = boxes.T
        return np.stack([np.minimum(x1, x2), np.maximum(x1, x2), np.minimum(y1, y2), np.maximum(y1, y2)])
    xc, yc, w, h = boxes.T
    half_w, half_h = w / _F32(2), h / _F32(2)
    return np.stack([xc - half_w, xc + half_w, yc - half_h, yc + half_h])


def _onnx_suppresses(kept: np.ndarray, rest: np.ndarray, threshold: np.float32) -> np.ndarray:
    """SuppressByIOU(selected box, candidate): IoU > threshold, never for degenerate boxes.

    Args:
        kept: (x_min, x_max, y_min, y_max) of the selected boxes, [4, K].
        rest: The same for the candidates, [4, M].
        threshold: iou_threshold as float32.

    Returns:
        [K, M] bool.
    """
    kx_min, kx_max, ky_min, ky_max = kept[:, :, None]
    x_min, x_max, y_min, y_max = rest[:, None, :]
    ix_min, ix_max = np.maximum(kx_min, x_min), np.minimum(kx_max, x_max)
    iy_min, iy_max = np.maximum(ky_min, y_min), np.minimum(ky_max, y_max)
    inter = (ix_max - ix_min) * (iy_max - iy_min)
    area_kept = (kx_max - kx_min) * (ky_max - ky_min)
    area = (x_max - x_min) * (y_max - y_min)
    union = area_kept + area - inter
    valid = (ix_max > ix_min) & (iy_max > iy_min) & (inter > 0) & (area_kept > 0) & (area > 0) & (union > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return valid & (inter / union > threshold)


def _trt_iou(corners: np.ndarray, kept: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """The plugin's IOU(): intersection of reordered corners over the union, 0 if degenerate.

    Args:
        corners: Reordered corners [4, K_all] (y1, x1, y2, x2).
        kept: Positions of kept boxes [K].
        rest: Positions of candidates [M].

    Returns:
        [K, M] float32.
    """
    y1, x1, y2, x2 = corners[:, None, rest]
    ky1, kx1, ky2, kx2 = corners[:, kept, None]
    inter = _trt_area(np.maximum(y1, ky1), np.maximum(x1, kx1), np.minimum(y2, ky2), np.minimum(x2, kx2))
    union = _trt_area(y1, x1, y2, x2) + _trt_area(ky1, kx1, ky2, kx2) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where((inter <= 0) | (union <= 0), _F32(0), iou)


def _trt_area(y1: np.ndarray, x1: np.ndarray, y2: np.ndarray, x2: np.ndarray) -> np.ndarray:
    w, h = x2 - x1, y2 - y1
    return np.where((h <= 0) | (w <= 0), _F32(0), h * w)


def _reordered(corners: np.ndarray) -> np.ndarray:
    """BoxCorner::reorder on [K, 4] -> [4, K]: swap each axis with the plugin's a-b, a+b, b-a trick."""
    y1, x1, y2, x2 = corners.T.copy()
    for low, high in ((y1, y2), (x1, x2)):
        swap = low > high
        diff = low - high
        new_high = diff + high
        new_low = new_high - diff
        low[swap], high[swap] = new_low[swap], new_high[swap]
    return np.stack([y1, x1, y2, x2])


def _decode(boxes: np.ndarray, anchors: np.ndarray | None, box_coding: int) -> np.ndarray:
    """DecodeBoxes: the candidate boxes as corners [K, 4] (float32)."""
    if box_coding not in (0, 1):
        raise ValueError(f"EfficientNMS_TRT: box_coding must be 0 or 1, got {box_coding}")
    boxes = boxes.astype(_F32)
    if anchors is not None:
        anchors = anchors.astype(_F32)
        if box_coding == 0:
            return _reordered(boxes).T + _reordered(anchors).T
        c0, c1, s0, s1 = boxes.T
        a0, a1, as0, as1 = anchors.T
        boxes = np.stack([c0 * as0 + a0, c1 * as1 + a1, as0 * np.exp(s0), as1 * np.exp(s1)], axis=1)
    if box_coding == 1:
        c0, c1, s0, s1 = boxes.T
        h0, h1 = s0 * _F32(0.5), s1 * _F32(0.5)
        return np.stack([c0 - h0, c1 - h1, c0 + h0, c1 + h1], axis=1)
    return boxes


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (_F32(1) / (_F32(1) + np.exp(-x))).astype(_F32)
