"""Cast a DOUBLE GridSample grid to FLOAT when the sampled input is FLOAT."""

from __future__ import annotations

import numpy as np

import graphfix as gf


@gf.rule(limitation="gridsample.double_grid", stage="repair")
class NarrowDoubleGrid:
    """Sample a FLOAT input with the FLOAT rounding of a DOUBLE grid.

    TensorRT limitation: an export repair, needed whatever the TensorRT version (7.2 to 10.x):
    the TorchScript exporter's linspace (torch 2.14) ignores `dtype` and computes in DOUBLE, so
    transformers' Deformable DETR and Grounding DINO exports sample a FLOAT value map with a
    DOUBLE grid. ONNX allows X and grid to differ, but onnxruntime 1.31 only has GridSample
    kernels where both are the same type ("Could not find an implementation for
    GridSample(16)"), which blocks verification of the whole model; TensorRT has no FP64 and
    narrows DOUBLE to FP32 itself (trt-onnx-support.md b, DOUBLE row: S80-S1016), and its
    GridSample takes FP32/FP16 only (GridSample row: S85, S86, S100, S1016).

    Rewrite: Cast(grid, FLOAT) before the GridSample, every attribute kept. The sampled values
    and the output type are unchanged; the sampling positions are the grid rounded to FLOAT,
    which is what PyTorch computed in the model that was exported (FLOAT reference points) and
    what TensorRT computes, and which moves a position by at most 2^-24 of the normalised
    coordinate range (an output change of the order of the FLOAT rounding of the input). An X in
    DOUBLE is left alone: narrowing it would change the output type.
    """

    def pattern(self, op, x, grid):
        return op.GridSample(x, grid.dtype("float64"), _capture="sample")

    def check(self, ctx, x, grid, sample):
        if ctx.dtype(x) != "float32":
            return gf.reject(f"the sampled input is {ctx.dtype(x)}, not float32", x)
        return gf.accept()

    def rewrite(self, op, x, grid, sample):
        return op.GridSample(x, op.cast(grid, np.float32), **dict(sample.attrs))
