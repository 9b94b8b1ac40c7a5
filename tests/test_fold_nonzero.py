"""fold_nonzero: the backend case with a constant input, folded cones, the runtime near miss, hf_superpoint."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from backend import assert_outputs_match, node_cases, run_in_onnxruntime
from conftest import SAMPLES, parse, run
from rulecheck import op_types, rewrite

RULE = "fold_nonzero"
NONZERO_CASES = node_cases("test_nonzero")


@pytest.mark.parametrize("case", NONZERO_CASES, ids=lambda c: c.name)
def test_backend_nonzero_case_with_a_constant_input_folds(case):
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    for graph_input, value in zip(model.graph.input, case.data_sets[0][0]):
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(value), graph_input.name))
    del model.graph.input[:]
    result, report = rewrite(model, RULE)
    assert "NonZero" not in op_types(result)
    assert report.passes[0].matches == 1 and report.passes[0].status == "verified"
    assert_outputs_match(run_in_onnxruntime(result, []), case.data_sets[0][1], rtol=0, atol=0)


@pytest.mark.parametrize("case", NONZERO_CASES, ids=lambda c: c.name)
def test_backend_nonzero_case_with_a_runtime_input_is_a_near_miss(case):
    result, report = rewrite(case.model, RULE)
    assert op_types(result) == ["NonZero"] and report.passes[0].matches == 0
    reason = report.passes[0].near_misses[0][2]
    assert "computed at run time" in reason and "pad_nonzero.max_count" in reason and "trt8.5" in reason
    assert_outputs_match(run_in_onnxruntime(result, case.data_sets[0][0]), case.data_sets[0][1], rtol=0, atol=0)


def test_computable_input_folds_with_nan_counting_as_nonzero():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[3, 4] x) => (int64[2, n] y, float[3, 4] z) {
        w = Constant <value = float[2, 3] {0, 1, 0, nan, -2, 0}> ()
        shape = Shape(x)
        first = Constant <value = int64 {0}> ()
        size = Gather <axis = 0> (shape, first)
        rows = Cast <to = 1> (size)
        scaled = Mul(w, rows)
        y = NonZero(scaled)
        z = Identity(x)
    }
    """)
    result, report = rewrite(model, RULE)
    assert "NonZero" not in op_types(result) and report.passes[0].status == "verified"
    x = np.zeros((3, 4), np.float32)
    np.testing.assert_array_equal(run(result, {"x": x})[0], [[0, 1, 1], [1, 0, 1]])
    _, again = rewrite(result, RULE)
    assert again.passes[0].matches == 0


def test_superpoint_nonzeros_are_named_as_near_misses():
    model, _ = rewrite(onnx.load(SAMPLES / "hf_superpoint.onnx"), "batch_unbatched_pooling")  # valid ONNX first
    result, report = rewrite(model, RULE)
    assert op_types(result).count("NonZero") == 3 and report.passes[0].matches == 0
    node, reason = report.passes[0].near_misses[0][1:]
    assert node.startswith("/model/keypoint_decoder/NonZero") and reason.startswith(f"NonZero {node}: ")
