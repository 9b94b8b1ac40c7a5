"""decompose_mod: integer Mod in both sign conventions, backend cases, the SuperPoint sample."""

from __future__ import annotations

import numpy as np
import pytest
from backend import node_cases
from conftest import SAMPLES, assert_matches_torch, parse, run, sample_data
from rulecheck import check_backend_case, op_types, rewrite

import onnx

RULE = "decompose_mod"
INTEGER_CASES = [c for c in node_cases("test_mod") if all(np.asarray(i).dtype.kind in "iu" for i in c.data_sets[0][0])]
FLOAT_CASES = [c for c in node_cases("test_mod") if c not in INTEGER_CASES]


@pytest.mark.parametrize("case", INTEGER_CASES, ids=lambda c: c.name)
def test_backend_integer_mod_cases(case):
    result, report = check_backend_case(case, RULE)
    narrow = np.asarray(case.data_sets[0][0][0]).dtype.itemsize < 4
    if narrow and case.model.opset_import[0].version < 14:
        assert "needs opset 14" in report.passes[0].near_misses[0][2]
    else:
        assert "Mod" not in op_types(result) and report.passes[0].status == "verified"


@pytest.mark.parametrize("case", FLOAT_CASES[:2], ids=lambda c: c.name)
def test_float_mod_is_a_near_miss(case):
    result, report = check_backend_case(case, RULE)
    assert "Mod" in op_types(result)
    assert "is not exact in floating point" in report.passes[0].near_misses[0][2]


@pytest.mark.parametrize("fmod", [0, 1])
@pytest.mark.parametrize("dtype, name", [(np.int32, "int32"), (np.int64, "int64"), (np.int8, "int8")])
def test_every_sign_combination_and_extreme_values(fmod, dtype, name):
    """numpy is the oracle: onnxruntime 1.31's own int64 Mod is off by one near INT64_MAX
    (it gives INT64_MAX % 7 = 1; 2**63 - 1 is a multiple of 7)."""
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 14]>
    g ({name}[N] a, {name}[N] b) => ({name}[N] r) {{ r = Mod <fmod = {fmod}> (a, b) }}
    """)
    result, _ = rewrite(model, RULE)
    info = np.iinfo(dtype)
    a = np.array([7, -7, 7, -7, 0, 6, -6, info.max, info.min + 1, info.min, 5], dtype)
    b = np.array([3, 3, -3, -3, 5, 3, -3, 7, 7, 3, info.max], dtype)
    expected = np.fmod(a, b) if fmod else np.mod(a, b)
    np.testing.assert_array_equal(run(result, {"a": a, "b": b})[0], expected)
    _, second = rewrite(result, RULE)
    assert second.passes[0].matches == 0


def test_narrow_integers_need_opset_14():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (int8[N] a, int8[N] b) => (int8[N] r) { r = Mod (a, b) }
    """)
    _, report = rewrite(model, RULE, verify=False)
    assert report.passes[0].near_misses[0][2] == "int8 arithmetic (Div, Mul, Sub) needs opset 14, the model is at 13"


def test_superpoint_head_keypoint_columns():
    model = onnx.load(SAMPLES / "superpoint_head.onnx")
    result, report = rewrite(model, RULE, target="trt8.4")
    assert report.passes[0].matches == 1 and report.passes[0].status == "verified"
    feeds, data = sample_data("superpoint_head")
    assert_matches_torch(result, feeds, data, rtol=1e-4, atol=1e-4)
