"""samples/rpn_two_level_nms.onnx: a two-level RPN whose export runs ONE NonMaxSuppression over the boxes of
both FPN levels (as mmdet/mmdeploy RPN exports do), although PyTorch (mmdet eager) does NMS per level.

Run from the repo root:  /work/export-venv/bin/python samples/scripts/export_rpn_two_level_nms.py

Model: image [1,3,64,64] -> conv stem -> P0 [1,16,16,16] (stride 4) -> P1 [1,16,8,8] (stride 8); per level a
3x3 conv + ReLU and 1x1 convs giving objectness [A] and deltas [4A] (A = 3 ratios 0.5/1/2; anchor size
32 px on P0, 36 px on P1; reg/cls 1x1 weights scaled x8 so boxes and scores spread); per level top-k (PRE_NMS_TOP_N = 32) by objectness, delta2bbox decoding (means 0,
stds 1, dw/dh clamped to log(1000/16)), clipping to the image; then Concat of both levels' boxes [64,4] and
sigmoid scores [64], and torchvision.ops.nms(boxes, scores, IOU_THRESHOLD = 0.7) -> ONE ONNX NonMaxSuppression
(boxes [1,64,4], scores [1,1,64], max_output_boxes_per_class = INT64_MAX, iou_threshold 0.7, no
score_threshold input), keep[:MAX_BOXES = 40].
Outputs: boxes [K,4], scores [K], keep [K] (indices into the concatenated [64] box list), K = min(40, #kept).
On the npz input merged NMS keeps 45 boxes, per-level NMS 48; the first 40 differ (3 P1 boxes are suppressed
by P0 boxes only in the merged version).
npz: input:image, torch:boxes/scores/keep (the module's merged NMS = what the ONNX computes),
reference:per_level_keep = torchvision.ops.batched_nms(boxes, scores, level_ids, 0.7)[:40] on the same
concatenated boxes (mmdet's eager per-level semantics), reference:level_ids [64] (0 = P0, 1 = P1),
reference:boxes_before_nms [64,4], reference:scores_before_nms [64], reference:per_level_boxes / _scores, reference:iou_threshold, reference:max_boxes.
"""
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torchvision  # noqa: E402

NAME = "rpn_two_level_nms"
OPSET = 17
IMG = 64
STRIDES = (4, 8)
RATIOS = (0.5, 1.0, 2.0)
ANCHOR_SIZES = (32, 36)  # per level; close sizes so that boxes of P0 and P1 overlap (IoU of centred squares 0.79)
PRE_NMS_TOP_N = 32
IOU_THRESHOLD = 0.7
MAX_BOXES = 40
REG_GAIN = 8.0
CLS_GAIN = 8.0


def make_anchors(h, w, stride, base):
    ws = torch.tensor([base / math.sqrt(r) for r in RATIOS])
    hs = torch.tensor([base * math.sqrt(r) for r in RATIOS])
    base_anchors = torch.stack([-ws / 2, -hs / 2, ws / 2, hs / 2], 1)  # [A, 4]
    ys, xs = torch.meshgrid(torch.arange(h) * stride + stride / 2, torch.arange(w) * stride + stride / 2, indexing="ij")
    shifts = torch.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4)
    return (shifts + base_anchors).reshape(-1, 4)  # [(h*w*A), 4], order (y, x, a) like the head outputs


def delta2bbox(anchors, deltas, max_shape):
    wh_clamp = math.log(1000.0 / 16)
    px = (anchors[:, 0] + anchors[:, 2]) * 0.5
    py = (anchors[:, 1] + anchors[:, 3]) * 0.5
    pw = anchors[:, 2] - anchors[:, 0]
    ph = anchors[:, 3] - anchors[:, 1]
    dx, dy, dw, dh = deltas.unbind(-1)
    dw = dw.clamp(-wh_clamp, wh_clamp)
    dh = dh.clamp(-wh_clamp, wh_clamp)
    gw, gh = pw * dw.exp(), ph * dh.exp()
    gx, gy = px + pw * dx, py + ph * dy
    boxes = torch.stack([gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5], -1)
    return boxes.clamp(min=0, max=max_shape)


class TwoLevelRPN(nn.Module):
    def __init__(self):
        super().__init__()
        A = len(RATIOS)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())
        self.heads = nn.ModuleList(nn.Conv2d(16, 16, 3, 1, 1) for _ in STRIDES)
        self.cls = nn.ModuleList(nn.Conv2d(16, A, 1) for _ in STRIDES)
        self.reg = nn.ModuleList(nn.Conv2d(16, 4 * A, 1) for _ in STRIDES)
        for s, size in zip(STRIDES, ANCHOR_SIZES):
            self.register_buffer(f"anchors_{s}", make_anchors(IMG // s, IMG // s, s, size), persistent=False)

    def levels(self, image):
        p0 = self.stem(image)
        p1 = self.down(p0)
        boxes, scores = [], []
        for i, (feat, s) in enumerate(zip((p0, p1), STRIDES)):
            t = torch.relu(self.heads[i](feat))
            logits = self.cls[i](t).permute(0, 2, 3, 1).reshape(-1)          # [(h*w*A)]
            deltas = self.reg[i](t).permute(0, 2, 3, 1).reshape(-1, 4)       # [(h*w*A), 4]
            top, idx = logits.topk(PRE_NMS_TOP_N)
            anchors = getattr(self, f"anchors_{s}")[idx]
            boxes.append(delta2bbox(anchors, deltas[idx], IMG))
            scores.append(top.sigmoid())
        return boxes, scores

    def forward(self, image):
        boxes, scores = self.levels(image)
        boxes = torch.cat(boxes, 0)
        scores = torch.cat(scores, 0)
        keep = torchvision.ops.nms(boxes, scores, IOU_THRESHOLD)[:MAX_BOXES]   # merged: one NMS for all levels
        return boxes[keep], scores[keep], keep


def main():
    C.seed_all(0)
    model = TwoLevelRPN().eval()
    # random heads: spread the deltas (boxes of both levels then overlap with IoU > thr) and the objectness
    # logits (so that both levels' scores interleave instead of one level taking all top places)
    with torch.no_grad():
        for reg, cls in zip(model.reg, model.cls):
            reg.weight.mul_(REG_GAIN)
            cls.weight.mul_(CLS_GAIN)
            cls.bias.zero_()
    image = torch.rand(1, 3, IMG, IMG)
    with torch.no_grad():
        lvl_boxes, lvl_scores = model.levels(image)
        boxes, scores, keep = model(image)
    cat_boxes = torch.cat(lvl_boxes, 0)
    cat_scores = torch.cat(lvl_scores, 0)
    level_ids = torch.cat([torch.full((len(b),), i, dtype=torch.int64) for i, b in enumerate(lvl_boxes)])
    per_level = torchvision.ops.batched_nms(cat_boxes, cat_scores, level_ids, IOU_THRESHOLD)[:MAX_BOXES]
    print(f"boxes into NMS: {len(cat_boxes)} ({[len(b) for b in lvl_boxes]} per level), iou {IOU_THRESHOLD}, "
          f"max {MAX_BOXES}")
    assert len(cat_boxes) > 0
    iou = torchvision.ops.box_iou(lvl_boxes[0], lvl_boxes[1])
    print(f"cross-level pairs with IoU > {IOU_THRESHOLD}: {int((iou > IOU_THRESHOLD).sum())}, max cross-level IoU "
          f"{float(iou.max()):.3f}")
    # robustness: no IoU within 1e-3 of the threshold (ORT and torch would then agree for sure)
    all_iou = torchvision.ops.box_iou(cat_boxes, cat_boxes)
    near = ((all_iou - IOU_THRESHOLD).abs() < 1e-3).nonzero().tolist()
    print(f"pairs with |IoU - thr| < 1e-3: {near}")
    all_merged = torchvision.ops.nms(cat_boxes, cat_scores, IOU_THRESHOLD)
    all_per_level = torchvision.ops.batched_nms(cat_boxes, cat_scores, level_ids, IOU_THRESHOLD)
    print(f"kept before the [:{MAX_BOXES}] cut: merged {len(all_merged)}, per level {len(all_per_level)}")
    print("merged keep   :", keep.tolist())
    print("per-level keep:", per_level.tolist())
    print("level of merged keep   :", level_ids[keep].tolist())
    print("level of per-level keep:", level_ids[per_level].tolist())
    assert not torch.equal(keep, per_level), "merged and per-level NMS agree: the sample would not show the issue"
    assert set(all_merged.tolist()) < set(all_per_level.tolist())

    onnx_path = C.path(NAME + ".onnx")
    out_names = ["boxes", "scores", "keep"]
    torch.onnx.export(model, (image,), onnx_path, dynamo=False, opset_version=OPSET, input_names=["image"],
                      output_names=out_names, do_constant_folding=True)
    C.describe(onnx_path, interesting=("NonMaxSuppression", "TopK"))
    inputs = {"image": image.numpy()}
    touts = {"boxes": boxes.numpy(), "scores": scores.numpy(), "keep": keep.numpy()}
    C.save_npz(NAME, inputs, touts, {
        "reference:per_level_keep": per_level.numpy(),
        "reference:level_ids": level_ids.numpy(),
        "reference:boxes_before_nms": cat_boxes.numpy(),
        "reference:scores_before_nms": cat_scores.numpy(),
        "reference:per_level_boxes": cat_boxes[per_level].numpy(),
        "reference:per_level_scores": cat_scores[per_level].numpy(),
        "reference:iou_threshold": np.float32(IOU_THRESHOLD),
        "reference:max_boxes": np.int64(MAX_BOXES),
    })
    C.ort_check(onnx_path, inputs, touts)


if __name__ == "__main__":
    main()
