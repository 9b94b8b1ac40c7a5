"""Replace mmdeploy's grid_sampler custom op by ONNX GridSample or its exact decomposition."""

from __future__ import annotations

from typing import Any

import graphfix as gf
from graphfix.rules.decompose_gridsample import decomposition_problem, sample_grid

# torch's GridSamplerInterpolation / GridSamplerPadding enums, which mmdeploy exports verbatim.
_MODES = {0: "linear", 1: "nearest", 2: "cubic"}
_PADDINGS = {0: "zeros", 1: "border", 2: "reflection"}
# GridSample's mode spellings: opset 16-19, and from 20 on.
_OPSET16_SPELLING = {"linear": "bilinear", "nearest": "nearest", "cubic": "bicubic"}
_GRIDSAMPLE_OPSET = 16
_OPSET20_SPELLING_SINCE = 20


@gf.rule(limitation=("custom_op.mmcv_grid_sampler", "gridsample.missing"))
class ConvertMmcvGridSampler:
    """Replace mmdeploy::grid_sampler by ONNX GridSample, or by its Gather-based decomposition.

    TensorRT limitation: mmdeploy exports `F.grid_sample` as the custom op
    `mmdeploy::grid_sampler`, which TensorRT resolves by name to mmdeploy's plugin in
    libmmdeploy_tensorrt_ops.so; without that library (never ported to TensorRT 10) the parser
    fails on the node. TensorRT 8.5 and later import ONNX GridSample natively (4-D only), 7.2 to
    8.4 have no GridSample at all (mmdeploy-ops.md; trt-onnx-support.md GridSample row: S85,
    S86, S100, S1016). Keys `custom_op.mmcv_grid_sampler` (8.5+) and `gridsample.missing`
    (7.2-8.4).

    Rewrite: the integer attributes are torch's enums (interpolation_mode 0 bilinear, 1
    nearest, 2 bicubic; padding_mode 0 zeros, 1 border, 2 reflection; align_corners 0/1;
    defaults 0), and the node computes what `F.grid_sample` computes, which is what ONNX
    GridSample computes. The node becomes GridSample with the same modes in the spelling of the
    model's opset when the target imports that exact form: opset >= 16 (GridSample does not
    exist before), a 4-D input, and not an opset-20 "linear"/"cubic" node on a target that
    reads those as nearest (see fix_gridsample_mode). Otherwise it becomes the exact
    decomposition of `decompose_gridsample` (7.2-8.4, 5-D inputs, opset < 16). The model's
    opset is not raised to 16 to make room for GridSample: that changes the schema of every
    other node (Unsqueeze/Squeeze/Reduce* axes, Split, ...) and is a whole-model conversion,
    while the decomposition is exact at any opset and imports on every release (it costs
    extra elementwise layers next to the gathers a native kernel also does). mmdeploy's own
    TensorRT plugin silently runs bilinear for interpolation_mode 2; this rule follows the
    exported PyTorch model (bicubic). To keep the plugin node instead (an application that
    loads libmmdeploy_tensorrt_ops.so), skip the rule (`--skip convert_mmcv_grid_sampler`).
    Not matched: mmcv-domain nodes (PPLNN exports) and torch's `org.pytorch.aten::ATen`
    fallback node of grid_sampler, because a pattern names one domain.
    """

    def pattern(self, op, x, grid):
        return op.domain(("mmdeploy", "mmcv")).grid_sampler(x, grid, _capture="sampler")

    def check(self, ctx, x, grid, sampler):
        interpolation = int(ctx.attr(sampler, "interpolation_mode", 0))
        padding = int(ctx.attr(sampler, "padding_mode", 0))
        if interpolation not in _MODES or padding not in _PADDINGS:
            codes = f"interpolation_mode={interpolation}, padding_mode={padding}"
            return gf.reject(f"unknown grid_sampler codes {codes}", sampler)
        mode, padding_mode = _MODES[interpolation], _PADDINGS[padding]
        problem = decomposition_problem(ctx, x, grid, mode, padding_mode)
        if problem is not None:
            return problem
        return gf.accept(
            mode=mode,
            padding_mode=padding_mode,
            align_corners=bool(ctx.attr(sampler, "align_corners", 0)),
            native=_imports_as_gridsample(ctx, x, mode),
        )

    def rewrite(self, op, x, grid, mode, padding_mode, align_corners, native):
        if not native:
            return sample_grid(op, x, grid, mode, padding_mode, align_corners)
        spelling = mode if op.opset >= _OPSET20_SPELLING_SINCE else _OPSET16_SPELLING[mode]
        return op.GridSample(x, grid, mode=spelling, padding_mode=padding_mode, align_corners=int(align_corners))


def _imports_as_gridsample(ctx: gf.Context, x: Any, mode: str) -> bool:
    """The target's parser runs a GridSample node of this form as ONNX means it."""
    if ctx.opset < _GRIDSAMPLE_OPSET or ctx.rank(x) != 4:
        return False
    target = ctx.target
    if target is None:
        return True
    if target.is_active("gridsample.missing"):
        return False
    misread = ctx.opset >= _OPSET20_SPELLING_SINCE and mode != "nearest"
    return not (misread and target.is_active("gridsample.mode_string_ignored"))
