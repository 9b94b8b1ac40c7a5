"""replace_cast_to_bool: Cast(to=BOOL) as Not(Equal(x, 0)) in every dtype, NaN/-0/inf, the opset-18 sample."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import SAMPLES, assert_matches_torch, parse, run, sample_data
from rulecheck import op_types, rewrite

RULE = "replace_cast_to_bool"


def _cast_model(dtype: str) -> onnx.ModelProto:
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g ({dtype}[12] x) => (bool[12] y) {{
        y = Cast <to = 9> (x)
    }}
    """)


SPECIAL_FLOATS = [0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 1e-40, -1e-45, 0.5, -3.0, 65504.0, 1e30]


@pytest.mark.parametrize("dtype, np_dtype", [
    ("float", np.float32), ("double", np.float64), ("float16", np.float16),
    ("int64", np.int64), ("int32", np.int32), ("int8", np.int8), ("uint8", np.uint8), ("uint64", np.uint64),
])
def test_cast_to_bool_becomes_not_equal_zero_exactly(dtype, np_dtype, rng):
    model = _cast_model(dtype)
    result, report = rewrite(model, RULE)
    assert report.passes[0].matches == 1 and report.passes[0].status == "verified"
    assert op_types(result) == ["Equal", "Not"]
    if np.dtype(np_dtype).kind == "f":
        with np.errstate(over="ignore", under="ignore"):
            x = np.array(SPECIAL_FLOATS, np_dtype)  # NaN -> true, -0.0 -> false, subnormals -> true
    else:
        info = np.iinfo(np_dtype)
        x = np.array([0, 1, info.max, info.min, 2, 0, 7, info.max - 1, 0, 3, 0, 1], np_dtype)
    (expected,) = run(model, {"x": x})
    (actual,) = run(result, {"x": x})
    np.testing.assert_array_equal(actual, expected)
    np.testing.assert_array_equal(actual, x.astype(bool))
    _, second = rewrite(result, RULE)
    assert second.passes[0].matches == 0


def test_bool_to_bool_cast_is_dropped():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[5] x) => (bool[5] y) {
        zero = Constant <value = float {0}> ()
        mask = Greater(x, zero)
        same = Cast <to = 9> (mask)
        y = Not(same)
    }
    """)
    result, report = rewrite(model, RULE)
    assert report.passes[0].status == "verified" and op_types(result) == ["Constant", "Greater", "Not"]


def test_near_misses_other_target_types_and_bfloat16():
    to_float = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (int64[3] x) => (float[3] y) { y = Cast <to = 1> (x) }
    """)
    to_float.graph.node[0].name = "to_float"
    _, report = rewrite(to_float, RULE)
    assert report.passes[0].matches == 0
    assert report.passes[0].near_misses[0][2] == "attribute to of to_float is 1, expected 9"
    _, report = rewrite(_cast_model("bfloat16"), RULE, verify=False)
    assert report.passes[0].near_misses[0][2] == "the input type is bfloat16: no Equal to compare it with 0"


@pytest.mark.parametrize("sample, casts", [("reduce_opset18", 1), ("hf_cumsum_text", 3)])
def test_samples_keep_their_masks(sample, casts):
    """reduce_opset18: `count.bool()` (INT64 -> BOOL, a graph output); RoBERTa: attention mask casts."""
    model = onnx.load(SAMPLES / f"{sample}.onnx")
    result, report = rewrite(model, RULE)
    assert report.passes[0].matches == casts and report.passes[0].status == "verified"
    assert not [n for n in result.graph.node if n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.BOOL]
    feeds, data = sample_data(sample)
    assert_matches_torch(result, feeds, data, rtol=1e-4, atol=1e-5)
