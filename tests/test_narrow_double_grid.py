"""narrow_double_grid: DOUBLE grids on FLOAT inputs, against a DOUBLE GridSample; the DETR exports."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from backend import onnxruntime_refusal
from conftest import SAMPLES, parse, run, sample_data
from rulecheck import op_types, rewrite

RULE = "narrow_double_grid"
# Opset 16 spellings and their opset 20 names (onnxruntime has DOUBLE GridSample kernels from 20).
MODES = {"bilinear": "linear", "nearest": "nearest", "bicubic": "cubic"}


def _grid_sample(x_type: str, grid_type: str, mode: str, padding: str, align: int, opset: int = 16) -> onnx.ModelProto:
    return parse(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g ({x_type}[2,3,7,9] x, {grid_type}[2,5,4,2] grid) => ({x_type}[2,3,5,4] y) {{
        y = GridSample <mode = "{mode}", padding_mode = "{padding}", align_corners = {align}> (x, grid)
    }}
    """)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding, align", [("zeros", 0), ("border", 1), ("reflection", 0)])
def test_double_grid_is_narrowed_and_matches_a_double_grid_sample(mode, padding, align, rng):
    model = _grid_sample("float", "double", mode, padding, align)
    assert "GridSample" in onnxruntime_refusal(model)
    result, report = rewrite(model, RULE)
    assert report.passes[0].matches == 1 and op_types(result) == ["Cast", "GridSample"]
    sample = next(n for n in result.graph.node if n.op_type == "GridSample")
    assert {a.name: a for a in sample.attribute} == {a.name: a for a in model.graph.node[0].attribute}
    x = rng.standard_normal((2, 3, 7, 9)).astype(np.float32)
    grid = rng.uniform(-1.2, 1.2, (2, 5, 4, 2))  # float64, some points outside
    # Reference: the whole sampling in DOUBLE (opset 20 has DOUBLE kernels), rounded to FLOAT.
    double = _grid_sample("double", "double", MODES[mode], padding, align, opset=20)
    (expected,) = run(double, {"x": x.astype(np.float64), "grid": grid})
    (actual,) = run(result, {"x": x, "grid": grid})
    np.testing.assert_allclose(actual, expected.astype(np.float32), rtol=1e-5, atol=1e-5)
    _, second = rewrite(result, RULE)
    assert second.passes[0].matches == 0


def test_near_misses_double_input_and_float_grid():
    _, report = rewrite(_grid_sample("double", "double", "bilinear", "zeros", 0), RULE, verify=False)
    assert report.passes[0].matches == 0
    assert report.passes[0].near_misses[0][2] == "the sampled input is float64, not float32"
    _, report = rewrite(_grid_sample("float", "float", "bilinear", "zeros", 0), RULE)
    assert report.passes[0].matches == 0
    assert "has type float32, expected one of ['float64']" in report.passes[0].near_misses[0][2]


@pytest.mark.parametrize("sample, rules, narrowed", [
    ("deformable_detr_tiny", (RULE,), 3),
    ("grounding_dino_tiny", ("compute_eyelike_in_int", RULE), 4),
])
def test_detr_exports_run_and_match_torch(sample, rules, narrowed):
    """The exporter's DOUBLE linspace makes the encoder grids DOUBLE (the decoder's stay FLOAT)."""
    model = onnx.load(SAMPLES / f"{sample}.onnx")
    assert onnxruntime_refusal(model) is not None
    result, report = rewrite(model, *rules)
    ours = next(p for p in report.passes if p.name == RULE)
    assert ours.matches == narrowed and ours.status == "unverified"
    assert onnxruntime_refusal(result) is None
    feeds, data = sample_data(sample)
    for output, value in zip(result.graph.output, run(result, feeds)):
        np.testing.assert_allclose(value, data[f"torch:{output.name}"], rtol=1e-4, atol=1e-5)
