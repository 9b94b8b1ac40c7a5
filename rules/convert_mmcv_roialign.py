"""Replace mmdeploy's MMCVRoiAlign custom op by ONNX RoiAlign or TensorRT's ROIAlign_TRT plugin."""

from __future__ import annotations

import numpy as np

import graphfix as gf
from graphfix.targets import TRT_PLUGIN_DOMAIN

# The first opset whose RoiAlign has coordinate_transformation_mode (half_pixel); RoiAlign-10
# always means output_half_pixel.
_HALF_PIXEL_OPSET = 16
_ROIALIGN_OPSET = 10
_PLUGIN = "ROIAlign_TRT"
_FLOAT_TYPES = frozenset({"float16", "float32", "float64"})
_PLUGIN_TYPES = frozenset({"float16", "float32"})
# mmcv's integer pool_mode (read by graphfix's kernel when an exporter writes an int).
_POOL_MODES = {0: "max", 1: "avg"}


@gf.rule(limitation="custom_op.mmcv_roialign", options={"plugin": False})
class ConvertMmcvRoialign:
    """Replace mmdeploy::MMCVRoiAlign by ONNX RoiAlign, or by TensorRT's ROIAlign_TRT plugin.

    TensorRT limitation: mmdeploy exports mmcv's `RoIAlign` as the custom op
    `mmdeploy::MMCVRoiAlign`, which TensorRT resolves by name to mmdeploy's plugin in
    libmmdeploy_tensorrt_ops.so (never ported to TensorRT 10); without it the parser fails.
    TensorRT 8.5 and later import ONNX RoiAlign (through their own ROIAlign_TRT plugin) and ship
    ROIAlign_TRT as a standard plugin (mmdeploy-ops.md; trt-onnx-support.md RoiAlign row and
    plugin table: S85, S86, S100, S101, S1016, PL-roialign). Key `custom_op.mmcv_roialign`
    (8.5+); 7.2-8.4 have neither, so the node is left for a plugin library there.

    Rewrite: rois [R, 5] carry the batch index in column 0 (truncated to an integer by mmcv,
    as Cast does) and the box in columns 1:5; ONNX takes them as `batch_indices` (int64) and
    `rois` [R, 4]. `aligned=1` (shift by -0.5, torchvision `aligned=True`) is
    coordinate_transformation_mode `half_pixel`; `aligned=0` (no shift, ROI size clamped to
    >= 1) is `output_half_pixel`, which clamps the same way: the sampling grid, the adaptive
    sampling count ceil(roi_size / output_size), the handling of points outside [-1, size] and
    of empty bins (average 0) are the same in mmcv's kernels and ONNX's. Every attribute is
    written out, so TensorRT's missing-sampling_ratio quirk cannot apply. The form:

    * RoiAlign-16 at opset >= 16; RoiAlign-10 (which means output_half_pixel) for `aligned=0`
      at opsets 10-15.
    * ROIAlign_TRT (domain graphfix.targets.TRT_PLUGIN_DOMAIN, int32 batch indices;
      coordinate_transformation_mode 1 half_pixel / 0 output_half_pixel, mode 1 avg) when
      the option `plugin` is set, or for `aligned=1` below opset 16, where ONNX has no
      half_pixel RoiAlign (raising the model's opset would change every other node's schema).
      The target must ship the plugin (8.5+), the feature map must be float16/32, and
      `aligned=1` needs sampling_ratio > 0: the plugin divides an empty bin by zero (NaN)
      where mmcv gives 0, and half-pixel ROIs of size 0 have no sampling points when adaptive.

    Refused with the reason: mode "max" (mmcv takes the maximum of bilinearly interpolated
    values, ONNX RoiAlign and ROIAlign_TRT the maximum of the weighted corner terms, so no
    exact mapping exists), and `aligned=1` below opset 16 on targets without the plugin.
    mmcv-domain nodes (PPLNN exports) are not matched: a pattern names one domain.
    """

    def pattern(self, op, features, rois):
        return op.domain(("mmdeploy", "mmcv")).MMCVRoiAlign(features, rois, _capture="roi_align")

    def check(self, ctx, features, rois, roi_align):
        mode = ctx.attr(roi_align, "mode", "avg")
        mode = _POOL_MODES.get(mode, mode) if isinstance(mode, int) else mode
        if mode != "avg":
            return gf.reject(f"mode {mode!r}: mmcv pools the maximum of interpolated values, ONNX RoiAlign and "
                             "ROIAlign_TRT the maximum of weighted corner terms (no exact mapping)", roi_align)
        if ctx.dtype(features) not in _FLOAT_TYPES or ctx.rank(rois) != 2:
            found = f"{ctx.dtype(features)} features, rois of rank {ctx.rank(rois)}"
            return gf.reject(f"features must be float and rois [R, 5] (got {found})", rois)
        settings = {
            "output_height": int(ctx.attr(roi_align, "output_height", 7)),
            "output_width": int(ctx.attr(roi_align, "output_width", 7)),
            "sampling_ratio": int(ctx.attr(roi_align, "sampling_ratio", 0)),
            "spatial_scale": float(ctx.attr(roi_align, "spatial_scale", 1.0)),
        }
        aligned = bool(ctx.attr(roi_align, "aligned", 1))
        form = _form(ctx, aligned)
        if isinstance(form, gf.Reject):
            return form
        if form == "plugin":
            problem = _plugin_problem(ctx, features, aligned, settings["sampling_ratio"])
            if problem is not None:
                return problem
        return gf.accept(form=form, aligned=aligned, settings=settings)

    def rewrite(self, op, features, rois, form, aligned, settings):
        boxes = op.slice(rois, [1], [5], [1])
        batch_column = op.Gather(rois, op.int64(0), axis=1)
        if form == "plugin":
            return op.node(
                _PLUGIN, features, boxes, op.cast(batch_column, np.int32), _domain=TRT_PLUGIN_DOMAIN,
                coordinate_transformation_mode=int(aligned), mode=1, **settings,
            )
        batch_indices = op.cast(batch_column, np.int64)
        if form == "onnx16":
            mode = "half_pixel" if aligned else "output_half_pixel"
            return op.RoiAlign(
                features, boxes, batch_indices, mode="avg", coordinate_transformation_mode=mode, **settings)
        return op.RoiAlign(features, boxes, batch_indices, mode="avg", **settings)


def _form(ctx: gf.Context, aligned: bool) -> str | gf.Reject:
    """"plugin", "onnx16" or "onnx10" (see the rule's docstring), or why none fits."""
    if ctx.options["plugin"]:
        return "plugin"
    if ctx.opset >= _HALF_PIXEL_OPSET:
        return "onnx16"
    if not aligned and ctx.opset >= _ROIALIGN_OPSET:
        return "onnx10"
    if ctx.target is None or _PLUGIN in ctx.target.plugins:
        return "plugin"
    return gf.reject(f"aligned=1 (half_pixel) needs RoiAlign-16 but the model is opset {ctx.opset}, and "
                     f"{ctx.target.label} has no {_PLUGIN} plugin", ctx.root)


def _plugin_problem(ctx: gf.Context, features, aligned: bool, sampling_ratio: int) -> gf.Reject | None:
    if ctx.target is not None and _PLUGIN not in ctx.target.plugins:
        return gf.reject(f"{ctx.target.label} has no {_PLUGIN} plugin", ctx.root)
    if ctx.dtype(features) not in _PLUGIN_TYPES:
        return gf.reject(f"{_PLUGIN} takes float16/float32 features, not {ctx.dtype(features)}", features)
    if aligned and sampling_ratio == 0:
        return gf.reject(f"{_PLUGIN} averages an empty bin to NaN (mmcv: 0); half-pixel ROIs of size 0 have "
                         "empty bins with adaptive sampling (sampling_ratio=0)", ctx.root)
    return None
