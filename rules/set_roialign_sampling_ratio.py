"""Write RoiAlign's sampling_ratio explicitly: TensorRT's default differs from ONNX's."""

from __future__ import annotations

import graphfix as gf

# ONNX RoiAlign's default sampling_ratio: adaptive, ceil(roi_size / output_size) points per bin.
_ONNX_DEFAULT = 0


@gf.rule(limitation="roialign.sampling_ratio_default")
class SetRoialignSamplingRatio:
    """Give RoiAlign nodes without a sampling_ratio attribute the ONNX default, 0, explicitly.

    TensorRT limitation: from 8.5 (the first release that imports RoiAlign, through its
    ROIAlign_TRT plugin) to 10.x the importer reads a missing sampling_ratio as 1, where ONNX
    means 0 (adaptive: ceil(roi_size / output_size) sampling points per bin and axis), so every
    bin of a large ROI is sampled once instead of several times: the output changes silently
    (trt-onnx-support.md RoiAlign row and pitfall 3: S85, S86, S100, S1016).

    Rewrite: the same RoiAlign with `sampling_ratio=0` added. Writing an attribute at its
    default value changes nothing in ONNX, so the result is identical; the other attributes
    are copied unchanged. Nodes that already carry sampling_ratio are near misses.
    """

    def pattern(self, op, x, rois, batch_indices):
        return op.RoiAlign(x, rois, batch_indices, _capture="roi_align")

    def check(self, ctx, roi_align):
        if "sampling_ratio" in roi_align.attrs:
            return gf.reject(f"sampling_ratio is written ({roi_align.attrs['sampling_ratio']})", roi_align)
        return gf.accept()

    def rewrite(self, op, x, rois, batch_indices, roi_align):
        return op.RoiAlign(x, rois, batch_indices, **roi_align.attrs, sampling_ratio=_ONNX_DEFAULT)
