"""compute_eyelike_in_int: BOOL EyeLike (backend cases made BOOL, dynamic shapes), the Grounding DINO export."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from backend import node_cases, onnxruntime_refusal, run_in_onnxruntime
from conftest import SAMPLES, parse, run, sample_data
from rulecheck import op_types, rewrite

RULE = "compute_eyelike_in_int"
EYELIKE_CASES = node_cases("test_eyelike")


def _as_bool_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """The case's model with EyeLike's dtype set to BOOL (the graph output typed to match)."""
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    node = changed.graph.node[0]
    kept = [a for a in node.attribute if a.name != "dtype"]
    del node.attribute[:]
    node.attribute.extend([*kept, onnx.helper.make_attribute("dtype", onnx.TensorProto.BOOL)])
    changed.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.BOOL
    onnx.checker.check_model(changed, full_check=True)
    return changed


@pytest.mark.parametrize("case", EYELIKE_CASES, ids=lambda c: c.name)
def test_backend_eyelike_cases_made_bool(case):
    """The backend cases (k = 0 and off the diagonal, with and without dtype) with a BOOL output."""
    model = _as_bool_output(case.model)
    assert "EyeLike" in onnxruntime_refusal(model)
    result, report = rewrite(model, RULE)
    assert report.passes[0].matches == 1 and op_types(result) == ["EyeLike", "Cast"]
    for inputs, expected in case.data_sets:
        (actual,) = run_in_onnxruntime(result, inputs)
        np.testing.assert_array_equal(actual, np.asarray(expected[0]) != 0)
    _, unchanged = rewrite(case.model, RULE)  # the original numeric cases are not BOOL
    assert unchanged.passes[0].matches == 0
    assert unchanged.passes[0].near_misses[0][2] == "the EyeLike does not produce BOOL"


@pytest.mark.parametrize("k", [0, 2, -1, 7])
def test_bool_eyelike_of_a_bool_tensor_with_runtime_shape(k):
    """Grounding DINO's form: EyeLike without dtype on a BOOL ConstantOfShape, here of a runtime shape."""
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 16]>
    g (int64[2] shape) => (bool[rows, cols] eye) {{
        ones = ConstantOfShape <value = bool[1] {{1}}> (shape)
        eye = EyeLike <k = {k}> (ones)
    }}
    """)
    result, report = rewrite(model, RULE)
    assert report.passes[0].matches == 1
    assert op_types(result) == ["ConstantOfShape", "Cast", "EyeLike", "Cast"]
    for rows, cols in [(4, 4), (3, 6), (5, 2)]:
        (actual,) = run(result, {"shape": np.array([rows, cols], np.int64)})
        np.testing.assert_array_equal(actual, np.eye(rows, cols, k, dtype=bool))
    _, second = rewrite(result, RULE)
    assert second.passes[0].matches == 0


def test_grounding_dino_export_runs_and_matches_torch():
    """The _f32 export: EyeLike(bool) is the only node onnxruntime refuses."""
    model = onnx.load(SAMPLES / "grounding_dino_tiny_f32.onnx")
    assert "EyeLike" in onnxruntime_refusal(model)
    result, report = rewrite(model, RULE)
    assert report.passes[0].matches == 1 and report.passes[0].status == "unverified"
    assert report.verification.reference_state == f"state after {RULE}"
    assert onnxruntime_refusal(result) is None
    feeds, data = sample_data("grounding_dino_tiny_f32")
    for output, value in zip(result.graph.output, run(result, feeds)):
        # logits of padded text positions are -inf in both
        np.testing.assert_allclose(value, data[f"torch:{output.name}"], rtol=1e-4, atol=1e-5)
    _, second = rewrite(result, RULE)
    assert second.passes[0].matches == 0
