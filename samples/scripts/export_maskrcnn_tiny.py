"""samples/maskrcnn_tiny.onnx: torchvision Mask R-CNN with a tiny custom backbone + FPN, random weights.

Run from the repo root:  /work/export-venv/bin/python samples/scripts/export_maskrcnn_tiny.py

- backbone: 3 small conv stages (16/24/32 ch, strides 4/8/16) -> torchvision FPN (16 ch) + LastLevelMaxPool
- RPN: 4 levels, 3 aspect ratios; pre-NMS top-n 64, post-NMS top-n 24 (test), nms 0.7
- ROI heads: MultiScaleRoIAlign 7x7 (box) / 14x14 (mask), sampling_ratio 2, box_score_thresh 0.0,
  box_nms_thresh 0.5, box_detections_per_img 6, num_classes 3 (so boxes reach RoiAlign/NMS with random weights)
- input 1x3x128x128 (min_size = max_size = 128 so GeneralizedRCNNTransform resizes nothing)
- TorchScript exporter, opset 17 -> RoiAlign (opset-16 schema, coordinate_transformation_mode), NonMaxSuppression,
  and a Loop (mask pasting) with its own subgraph.
"""
import collections
import sys
import os

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torchvision  # noqa: E402
from torchvision.models.detection import MaskRCNN  # noqa: E402
from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa: E402
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead  # noqa: E402
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor  # noqa: E402
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign  # noqa: E402
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool  # noqa: E402

NAME = "maskrcnn_tiny"
OPSET = 17
H = W = 128


class TinyBackbone(nn.Module):
    def __init__(self, out_channels=16):
        super().__init__()

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.stem = nn.Sequential(block(3, 16, 2), block(16, 16, 2))  # stride 4
        self.c3 = block(16, 24, 2)  # stride 8
        self.c4 = block(24, 32, 2)  # stride 16
        self.fpn = FeaturePyramidNetwork([16, 24, 32], out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x):
        c2 = self.stem(x)
        c3 = self.c3(c2)
        c4 = self.c4(c3)
        return self.fpn(collections.OrderedDict([("0", c2), ("1", c3), ("2", c4)]))  # + "pool"


def build():
    backbone = TinyBackbone(16)
    anchor_gen = AnchorGenerator(sizes=((16,), (32,), (64,), (128,)), aspect_ratios=((0.5, 1.0, 2.0),) * 4)
    box_pool = MultiScaleRoIAlign(["0", "1", "2"], output_size=7, sampling_ratio=2)
    mask_pool = MultiScaleRoIAlign(["0", "1", "2"], output_size=14, sampling_ratio=2)
    model = MaskRCNN(
        backbone,
        num_classes=None,  # given by the predictors (3 classes incl. background)
        min_size=H,
        max_size=W,
        rpn_anchor_generator=anchor_gen,
        rpn_pre_nms_top_n_test=64,
        rpn_post_nms_top_n_test=24,
        box_roi_pool=box_pool,
        box_head=TwoMLPHead(16 * 7 * 7, 64),
        box_predictor=FastRCNNPredictor(64, 3),
        box_score_thresh=0.0,
        box_nms_thresh=0.5,
        box_detections_per_img=6,
        mask_roi_pool=mask_pool,
        mask_head=MaskRCNNHeads(16, (16, 16), 1),
        mask_predictor=MaskRCNNPredictor(16, 16, 3),
    )
    model.eval()
    return model


def count_boxes(model, x):
    """Run once in eager mode and count what reaches NMS and RoiAlign."""
    counts = collections.defaultdict(list)
    boxes_mod = torchvision.ops.boxes
    orig_bnms = boxes_mod.batched_nms

    def bnms(boxes, scores, idxs, iou):
        keep = orig_bnms(boxes, scores, idxs, iou)
        counts["nms_in"].append(int(boxes.shape[0]))
        counts["nms_kept"].append(int(keep.shape[0]))
        return keep

    boxes_mod.batched_nms = bnms
    hooks = [
        model.roi_heads.box_roi_pool.register_forward_hook(
            lambda m, inp, out: counts["box_roialign_rois"].append(int(out.shape[0]))),
        model.roi_heads.mask_roi_pool.register_forward_hook(
            lambda m, inp, out: counts["mask_roialign_rois"].append(int(out.shape[0]))),
    ]
    try:
        with torch.no_grad():
            model([x[0]])
    finally:
        boxes_mod.batched_nms = orig_bnms
        for h in hooks:
            h.remove()
    print("boxes into NMS per call (RPN, then box head):", counts["nms_in"], "kept:", counts["nms_kept"])
    print("rois into RoiAlign: box branch", counts["box_roialign_rois"], "mask branch", counts["mask_roialign_rois"])
    assert counts["nms_in"] and min(counts["nms_in"]) > 0, counts
    assert counts["box_roialign_rois"][0] > 0 and counts["mask_roialign_rois"][0] > 0, counts


class Wrapper(nn.Module):
    """[1,3,H,W] tensor in, (boxes, labels, scores, masks) out (torchvision takes a list of images)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        out = self.model([images[0]])[0]
        return out["boxes"], out["labels"], out["scores"], out["masks"]


def main():
    C.seed_all(0)
    model = build()
    # a structured image: random smooth blobs in [0, 1]
    x = torch.rand(1, 3, H // 8, W // 8)
    x = torch.nn.functional.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
    count_boxes(model, x)
    wrapper = Wrapper(model).eval()
    with torch.no_grad():
        ref = wrapper(x)
    out_names = ["boxes", "labels", "scores", "masks"]
    for n, r in zip(out_names, ref):
        print(f"torch {n}: {tuple(r.shape)} {r.dtype}")
    onnx_path = C.path(NAME + ".onnx")
    torch.onnx.export(
        wrapper, (x,), onnx_path, dynamo=False, opset_version=OPSET,
        input_names=["images"], output_names=out_names, do_constant_folding=True,
    )
    C.describe(onnx_path, interesting=("RoiAlign", "NonMaxSuppression"))
    inputs = {"images": x.numpy()}
    touts = {n: r.numpy() for n, r in zip(out_names, ref)}
    C.save_npz(NAME, inputs, touts)
    C.ort_check(onnx_path, inputs, touts)


if __name__ == "__main__":
    main()
