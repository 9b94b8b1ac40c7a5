"""fix_clip_bounds: backend node tests, near misses, idempotence, dtypes, the SuperPoint samples."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from backend import node_cases
from conftest import SAMPLES, parse, run, sample_data
from rulecheck import check_backend_case, op_types, rewrite

from graphfix import ir

RULE = "fix_clip_bounds"
CLIP_CASES = node_cases("test_clip")


def _tensor_bounds(model: onnx.ModelProto) -> list[str]:
    """Clip nodes whose bounds are not weights (what TensorRT 7.2/8.0 refuse)."""
    graph = ir.import_proto(model)
    return [
        n.name for n in graph.nodes
        if n.op == "Clip" and any(not ir.is_empty(b) and not ir.is_weights(b) for b in n.inputs[1:])
    ]


@pytest.mark.parametrize("case", CLIP_CASES, ids=lambda c: c.name)
def test_backend_clip_cases(case):
    result, report = check_backend_case(case, RULE)
    assert _tensor_bounds(result) == []
    bounds_are_inputs = any(i.name in {"min", "max"} for i in case.model.graph.input)
    if bounds_are_inputs and "Clip" in op_types(case.model):
        assert report.passes[0].matches >= 1 and report.passes[0].status == "verified"


def _clip_model(dtype: str, bounds: str) -> onnx.ModelProto:
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g ({dtype}[2,5] x, int64[2] s) => ({dtype}[2,5] y) {{
        {bounds}
    }}
    """)


@pytest.mark.parametrize("dtype, np_dtype", [("float16", np.float16), ("float", np.float32), ("double", np.float64), ("int32", np.int32), ("int64", np.int64)])
def test_runtime_bound_becomes_max_min_in_every_dtype(dtype, np_dtype, rng):
    to = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(np_dtype))
    model = _clip_model(dtype, f"""
        one = Constant <value = int64 {{1}}> ()
        w = Gather <axis = 0> (s, one)
        hi = Cast <to = {to}> (w)
        lo = Constant <value = {dtype} {{0}}> ()
        y = Clip(x, lo, hi)
    """)
    result, report = rewrite(model, RULE)
    assert op_types(result).count("Clip") == 0 and {"Max", "Min"} <= set(op_types(result))
    x = (rng.uniform(-8, 8, (2, 5))).astype(np_dtype)
    for s in ([2, 3], [2, 0], [2, -4]):  # includes min > max: Clip gives max
        feeds = {"x": x, "s": np.array(s, np.int64)}
        np.testing.assert_array_equal(run(result, feeds)[0], run(model, feeds)[0])
    assert report.passes[0].status == "verified"


def test_constant_computable_bound_is_folded_into_an_initializer():
    model = _clip_model("float", """
        six = Constant <value = int64 {6}> ()
        hi = Cast <to = 1> (six)
        y = Clip(x, , hi)
    """)
    result, _ = rewrite(model, RULE)
    clip = next(n for n in result.graph.node if n.op_type == "Clip")
    assert clip.input[1] == "" and clip.input[2] in {t.name for t in result.graph.initializer}
    assert "Cast" not in op_types(result)  # the folded chain is gone


def test_one_bound_stays_one_bound():
    model = _clip_model("float", """
        hi = Cast <to = 1> (s)
        hs = ReduceMax <keepdims = 0> (hi)
        y = Clip(x, , hs)
    """)
    result, _ = rewrite(model, RULE)
    assert "Max" not in op_types(result) and op_types(result).count("Min") == 1


def test_near_miss_when_bounds_are_already_weights_and_opset_10_attribute_form():
    weights = _clip_model("float", """
        lo = Constant <value = float {0}> ()
        y = Clip(x, lo)
    """)
    _, report = rewrite(weights, RULE)
    assert report.passes[0].matches == 0
    assert report.passes[0].near_misses[0][2] == "the bounds are already weights"
    old = parse("""
    <ir_version: 5, opset_import: ["" : 10]>
    g (float[2] x) => (float[2] y) { y = Clip <min = 0.0, max = 1.0> (x) }
    """)
    _, report = rewrite(old, RULE)
    assert report.passes[0].matches == 0 and "opset < 11" in report.passes[0].near_misses[0][2]


@pytest.mark.parametrize("sample", ["superpoint_head", "superpoint_head_static"])
def test_superpoint_samples_are_fixed_and_match_torch(sample):
    model = onnx.load(SAMPLES / f"{sample}.onnx")
    assert _tensor_bounds(model), "the sample must need the rule"
    result, report = rewrite(model, RULE)
    assert _tensor_bounds(result) == []
    assert report.passes[0].status == "verified" and report.verification.full_runs == 2
    feeds, data = sample_data(sample)
    outputs = run(result, feeds)
    for output, value in zip(result.graph.output, outputs):
        np.testing.assert_allclose(value, data[f"torch:{output.name}"], rtol=1e-4, atol=1e-4)
    again, second = rewrite(result, RULE)
    assert second.passes[0].matches == 0  # idempotent
