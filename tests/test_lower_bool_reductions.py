"""lower_bool_reductions: any/all of BOOL tensors, backend bool cases, the opset-18 export bug."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from backend import node_cases, onnxruntime_refusal
from conftest import SAMPLES, parse, run
from rulecheck import check_backend_case, op_types, rewrite

RULE = "lower_bool_reductions"
BOOL_REDUCE_CASES = [c for c in node_cases("test_reduce_max", "test_reduce_min") if "bool" in c.name]


def test_backend_bool_cases_exist():
    assert {c.name for c in BOOL_REDUCE_CASES} == {
        "test_reduce_max_bool_inputs", "test_reduce_min_bool_inputs", "test_reduce_max_empty_set_bool",
    }


@pytest.mark.parametrize("case", BOOL_REDUCE_CASES, ids=lambda c: c.name)
def test_backend_bool_reductions(case):
    """Axes given as a graph input at run time; the empty set gives false for ReduceMax."""
    result, report = check_backend_case(case, RULE)
    assert report.passes[0].matches == 1
    reduce_op = case.model.graph.node[0].op_type
    assert op_types(result) == ["Cast", reduce_op, "Greater"]
    reduce_node = next(n for n in result.graph.node if n.op_type == reduce_op)
    assert reduce_node.input[1] == "axes"  # the same runtime axes


def _export_like(op: str, attrs: str, opset: int) -> onnx.ModelProto:
    """PyTorch 2.14's `mask.amax(dim=...)` (both exporters): a Reduce on BOOL with axes as an input."""
    return parse(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[3,4,5] x, int64[1] axes) => (bool[3,1,5] y) {{
        zero = Constant <value = float {{0.5}}> ()
        mask = Greater(x, zero)
        y = {op} <{attrs}> (mask, axes)
    }}
    """)


@pytest.mark.parametrize("op, reference", [("ReduceMax", np.any), ("ReduceMin", np.all)])
@pytest.mark.parametrize("opset", [18, 20])
def test_bool_reduction_is_exact_and_repairs_the_opset_18_export(op, reference, opset, rng):
    model = _export_like(op, "keepdims = 1", opset)
    if opset == 18:  # BOOL is not allowed there: onnxruntime refuses the export
        assert "tensor(bool)" in onnxruntime_refusal(model)
    result, report = rewrite(model, RULE)
    assert report.passes[0].matches == 1
    assert report.passes[0].status == ("verified" if opset == 20 else "unverified")
    x = rng.uniform(-1, 1, (3, 4, 5)).astype(np.float32)
    x[0] = 1.0  # a row that is all true
    x[1] = -1.0  # a row that is all false
    for axis in (0, 1, 2, -1):
        (actual,) = run(result, {"x": x, "axes": np.array([axis], np.int64)})
        np.testing.assert_array_equal(actual, reference(x > 0.5, axis=axis, keepdims=True))
    _, second = rewrite(result, RULE)
    assert second.passes[0].matches == 0


def test_noop_with_empty_axes_and_keepdims_are_kept(rng):
    model = parse("""
    <ir_version: 8, opset_import: ["" : 20]>
    g (bool[2,3] m) => (bool[2,3] same, bool everything) {
        same = ReduceMin <noop_with_empty_axes = 1> (m)
        everything = ReduceMax <keepdims = 0> (m)
    }
    """)
    result, report = rewrite(model, RULE)
    assert report.passes[0].matches == 2 and report.passes[0].status == "verified"
    mask = rng.integers(0, 2, (2, 3)).astype(bool)
    same, everything = run(result, {"m": mask})
    np.testing.assert_array_equal(same, mask)
    assert everything.shape == () and bool(everything) == bool(mask.any())


def test_near_miss_on_numeric_reductions_and_the_opset_18_sample():
    """reduce_opset18's any() exports as Cast(INT64) -> ReduceSum -> Greater: nothing BOOL is reduced."""
    model = onnx.load(SAMPLES / "reduce_opset18.onnx")
    _, report = rewrite(model, RULE)
    assert report.passes[0].matches == 0
    assert report.passes[0].near_misses[0][2] == "input 0 (x) of /ReduceMax has type float32, expected one of ['bool']"
