"""Replace GridSample-20 nodes that TensorRT would run as nearest by their exact decomposition."""

from __future__ import annotations

import graphfix as gf
from graphfix.rules.decompose_gridsample import decomposition_problem, sample_grid

# The spellings TensorRT's GridSample importer maps; every other string becomes nearest.
_HONOURED_MODES = frozenset({"nearest", "bilinear", "bicubic"})


@gf.rule(limitation="gridsample.mode_string_ignored")
class FixGridsampleMode:
    """Decompose GridSample nodes whose mode string TensorRT silently imports as nearest.

    TensorRT limitation: from 8.5 through current releases (the bug is still in the 10.16
    importer; NVIDIA/TensorRT#4646, onnx-tensorrt fix PR #1060 open) the GridSample importer
    knows only the opset-16 spellings "nearest", "bilinear" and "bicubic" and imports any other
    mode string as nearest, without a warning. Opset-20 exports (PyTorch's included) write the
    opset-20 spellings "linear" and "cubic", so a bilinear grid sample silently becomes nearest
    (trt-onnx-support.md GridSample row: S85, S86, S100, S1016, ISS4646, PR1060, TORCH20).
    An absent mode attribute is imported as bilinear, which is the ONNX default, and is left
    alone.

    Rewrite: the spelling TensorRT honours cannot be written at the model's opset: from opset
    20 on, "bilinear" and "bicubic" are not GridSample modes (onnxruntime 1.31 refuses them:
    'mode "bilinear" not supported, expect linear, nearest or cubic'), and lowering the whole
    model below opset 20 changes every other op's schema. So an explicit "linear" or "cubic"
    node becomes the exact Gather-based decomposition of `decompose_gridsample` (same
    padding, alignment and rank handling; see that rule), which every release imports. Nodes
    whose mode TensorRT honours are near misses.
    """

    def pattern(self, op, x, grid, mode, padding_mode, align_corners):
        return op.GridSample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)

    def check(self, ctx, x, grid, mode, padding_mode):
        if "mode" not in ctx.root.attrs:
            return gf.reject("no mode attribute: TensorRT imports it as bilinear, the ONNX default", ctx.root)
        if mode in _HONOURED_MODES:
            return gf.reject(f"mode {mode!r} is a spelling TensorRT honours", ctx.root)
        problem = decomposition_problem(ctx, x, grid, mode, padding_mode)
        return problem if problem is not None else gf.accept()

    def rewrite(self, op, x, grid, mode, padding_mode, align_corners):
        return sample_grid(op, x, grid, mode, padding_mode, bool(align_corners))
