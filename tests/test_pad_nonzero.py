"""pad_nonzero: opt-in, the padded semantics against its reference, truncation, dtypes, hf_superpoint."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from backend import node_cases, run_in_onnxruntime
from conftest import SAMPLES, parse, run
from rulecheck import op_types, rewrite

import graphfix as gf
from graphfix import ir
from graphfix.rules.pad_nonzero import INVALID

RULE = "pad_nonzero"
NONZERO_CASES = node_cases("test_nonzero")


def _padded(found: np.ndarray, max_count: int) -> np.ndarray:
    result = np.full((found.shape[0], max_count), INVALID, np.int64)
    kept = min(found.shape[1], max_count)
    result[:, :kept] = found[:, :kept]
    return result


def _count_declared_free(model: onnx.ModelProto) -> onnx.ModelProto:
    """The backend model declares NonZero's output [2, 3]; the padded output is [2, max_count].

    (The driver keeps a replaced output's declared shape, so a rule that changes a graph
    output's shape on purpose needs the declaration to leave the count free.)
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "max_count"
    return copy


@pytest.mark.parametrize("case", NONZERO_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("max_count", [2, 3, 5])  # truncated, exact, padded
def test_backend_nonzero_case_padded(case, max_count):
    result, report = rewrite(_count_declared_free(case.model), RULE, rule_options=(f"{RULE}.max_count={max_count}",))
    assert "NonZero" not in op_types(result)
    assert report.passes[0].status == "verified" and report.passes[0].detail == "against the rule's reference semantics"
    expected = np.asarray(case.data_sets[0][1][0])
    np.testing.assert_array_equal(run_in_onnxruntime(result, case.data_sets[0][0])[0], _padded(expected, max_count))
    _, again = rewrite(result, RULE, rule_options=(f"{RULE}.max_count={max_count}",))
    assert again.passes[0].matches == 0


def _nonzero_model(dtype: str, dims: str) -> onnx.ModelProto:
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g ({dtype}[{dims}] x) => (int64[r, n] y) {{ y = NonZero(x) }}
    """)


@pytest.mark.parametrize("dtype, np_dtype", [("float", np.float32), ("int32", np.int32), ("bool", np.bool_)])
def test_padded_form_in_every_dtype_and_dynamic_shape(dtype, np_dtype, rng):
    model = _nonzero_model(dtype, "a, b, c")
    result, report = rewrite(model, RULE, rule_options=(f"{RULE}.max_count=16",))
    assert report.passes[0].status == "verified"
    for shape in ((2, 3, 4), (1, 5, 2), (4, 4, 4), (3, 0, 2)):
        x = (rng.random(shape) < 0.3).astype(np_dtype)
        if dtype == "float" and x.size:
            x.flat[0] = np.nan  # NonZero counts NaN as nonzero
        np.testing.assert_array_equal(run(result, {"x": x})[0], _padded(np.stack(np.nonzero(x)), 16))


@pytest.mark.parametrize("opset", [9, 10, 11])  # TopK: K an attribute, K an input, order attributes
def test_padded_form_is_valid_at_every_topk_revision(opset, rng):
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (int32[a, b] x) => (int64[r, n] y) {{ y = NonZero(x) }}
    """)
    result, report = rewrite(model, RULE, rule_options=(f"{RULE}.max_count=8",))  # checks the model
    assert report.passes[0].status == "verified"
    x = (rng.random((3, 4)) < 0.4).astype(np.int32)
    np.testing.assert_array_equal(run(result, {"x": x})[0], _padded(np.stack(np.nonzero(x)), 8))


def test_max_count_must_be_given_and_within_the_topk_limit():
    model = _nonzero_model("bool", "4")
    _, report = rewrite(model, RULE)
    assert report.passes[0].near_misses[0][2] == "set the maximum count: --rule-option pad_nonzero.max_count=N"
    _, report = rewrite(model, RULE, rule_options=(f"{RULE}.max_count=4000",))
    assert report.passes[0].near_misses[0][2] == "max_count 4000 is above TensorRT's TopK limit 3840"


def test_opt_in_only():
    model = ir.Model(graph=ir.import_proto(_nonzero_model("bool", "4")), source=_nonzero_model("bool", "4"))
    report = gf.apply(model, gf.ApplyOptions(target="trt7.2", entry_points=False, verify=False))
    assert RULE not in {p.name for p in report.passes}


def test_superpoint_with_every_nonzero_padded():
    """All three NonZeros of transformers' SuperPoint padded to 512: no NonZero left. The -1
    columns become keypoints at -1, which SuperPoint's own border filter drops, so on images
    with at most 512 candidates the outputs still equal torch's."""
    model, _ = rewrite(onnx.load(SAMPLES / "hf_superpoint.onnx"), "batch_unbatched_pooling")  # valid ONNX first
    data = np.load(SAMPLES / "hf_superpoint.npz")
    result, report = rewrite(model, RULE, rule_options=(f"{RULE}.max_count=512",))
    assert "NonZero" not in op_types(result)
    assert report.passes[0].matches == 3 and report.passes[0].status == "verified"
    for output, value in zip(result.graph.output, run(result, {"pixel_values": data["input:pixel_values"]})):
        np.testing.assert_allclose(value, data[f"torch:{output.name}"], rtol=1e-5, atol=1e-6)
