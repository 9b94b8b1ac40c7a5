"""negate_topk_smallest: backend cases, exactness on ties/NaN/int extremes, near misses, the DGCNN sample."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from backend import node_cases, onnxruntime_refusal
from conftest import SAMPLES, parse, run, sample_data
from rulecheck import check_backend_case, op_types, rewrite

from graphfix.targets import NodeFacts, resolve_target

RULE = "negate_topk_smallest"
RULE_KEY = "topk.largest_ignored"
TOPK_CASES = node_cases("test_top_k")


def _smallest_topks(model: onnx.ModelProto) -> list[str]:
    """TopK nodes that ask for the smallest values (what TensorRT 7.2-8.4 get wrong)."""
    return [n.name or n.output[0] for n in model.graph.node if n.op_type == "TopK"
            and any(a.name == "largest" and a.i == 0 for a in n.attribute)]


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("case", TOPK_CASES, ids=lambda c: c.name)
def test_backend_top_k_cases(case):
    refusal = onnxruntime_refusal(case.model)
    if refusal:
        pytest.skip(f"onnxruntime cannot run {case.name} even before the rewrite: {refusal}")
    result, report = check_backend_case(case, RULE)
    assert _smallest_topks(result) == []
    if _smallest_topks(case.model):
        assert report.passes[0].matches == 1 and report.passes[0].status == "verified"
        assert op_types(result).count("Neg") == 2


def _topk_model(dtype: str, opset: int, axis: int, sorted_: int) -> onnx.ModelProto:
    return parse(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g ({dtype}[N, M] x, int64[1] k) => ({dtype}[A, B] values, int64[C, D] indices) {{
        values, indices = TopK <axis = {axis}, largest = 0, sorted = {sorted_}> (x, k)
    }}
    """)


def _extreme_values(np_dtype: np.dtype, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Few distinct values (many ties) including the type's extremes, signed zeros, inf and NaN."""
    if np_dtype.kind == "f":
        pool = np.array([0.0, -0.0, 1.0, -1.0, 2.5, np.inf, -np.inf, np.nan], np_dtype)
    else:
        info = np.iinfo(np_dtype)
        pool = np.array([info.min, info.min + 1, 0, 1, 7, info.max - 1, info.max], np_dtype)
    return rng.choice(pool, size=shape)


# (ONNX text type, numpy type, opset): 8-bit integers need Sub-14.
DTYPES = [("float16", np.float16, 13), ("float", np.float32, 13), ("double", np.float64, 13),
          ("int32", np.int32, 13), ("int64", np.int64, 13), ("int8", np.int8, 14), ("uint8", np.uint8, 14)]


@pytest.mark.parametrize("dtype, np_type, opset", DTYPES, ids=[d[0] for d in DTYPES])
def test_values_and_indices_are_identical_in_every_dtype(dtype, np_type, opset, rng):
    np_dtype = np.dtype(np_type)
    for axis, sorted_ in [(-1, 1), (0, 1), (1, 0)]:
        model = _topk_model(dtype, opset, axis, sorted_)
        result, report = rewrite(model, RULE)
        assert report.passes[0].matches == 1 and report.passes[0].status == "verified"
        assert _smallest_topks(result) == []
        before, after = _session(model), _session(result)
        for shape, k in [((3, 9), 4), ((5, 40), 17), ((6, 6), 6), ((2, 300), 1)]:  # dynamic shapes, K
            k = min(k, shape[axis])
            feeds = {"x": _extreme_values(np_dtype, rng, shape), "k": np.array([k], np.int64)}
            expected, actual = before.run(None, feeds), after.run(None, feeds)
            np.testing.assert_array_equal(actual[1], expected[1])  # indices, ties included
            np.testing.assert_array_equal(actual[0], expected[0])  # NaN == NaN for this assert
            assert np.array_equal(np.signbit(actual[0]), np.signbit(expected[0]))


def test_integer_minimum_is_ordered_correctly_where_neg_would_wrap():
    model = _topk_model("int32", 13, -1, 1)
    result, _ = rewrite(model, RULE)
    assert "Neg" not in op_types(result) and "Sub" in op_types(result)
    low = np.iinfo(np.int32).min
    x = np.array([[5, low, -3, low + 1, 0]], np.int32)
    values, indices = run(result, {"x": x, "k": np.array([3], np.int64)})
    np.testing.assert_array_equal(values, [[low, low + 1, -3]])
    np.testing.assert_array_equal(indices, [[1, 3, 2]])


def test_unused_values_output_gets_no_map_back():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 8] x) => (int64[N, 3] indices) {
        k = Constant <value = int64[1] {3}> ()
        values, indices = TopK <largest = 0> (x, k)
    }
    """)
    result, report = rewrite(model, RULE)
    assert report.passes[0].status == "verified"
    assert op_types(result).count("Neg") == 1  # only the map before TopK
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    np.testing.assert_array_equal(run(result, {"x": x})[0], run(model, {"x": x})[0])


def test_near_misses_largest_one_and_narrow_integers_before_opset_14():
    largest = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2, 8] x, int64[1] k) => (float[2, 3] v, int64[2, 3] i) { v, i = TopK <largest = 1> (x, k) }
    """)
    _, report = rewrite(largest, RULE)
    assert report.passes[0].matches == 0
    assert "attribute largest" in report.passes[0].near_misses[0][2]
    _, report = rewrite(_topk_model("int8", 13, -1, 1), RULE)
    assert report.passes[0].matches == 0
    assert report.passes[0].near_misses[0][2] == "Sub takes no int8 before opset 14"


def test_runs_exactly_on_the_targets_that_ignore_largest():
    active = {name: RULE_KEY in resolve_target(name).limitations
              for name in ("trt7.2", "trt8.0", "trt8.2", "trt8.4", "trt8.5", "trt8.6", "trt10.0")}
    assert active == {"trt7.2": True, "trt8.0": True, "trt8.2": True, "trt8.4": True,
                      "trt8.5": False, "trt8.6": False, "trt10.0": False}


def _topk_findings(model: onnx.ModelProto, target: str) -> list[str]:
    """What `graphfix check` reports for the model's TopK nodes on `target` (largest only)."""
    opset = model.opset_import[0].version
    facts = [NodeFacts(name=n.name, op_type="TopK", opset=opset,
                       attrs={a.name: onnx.helper.get_attribute_value(a) for a in n.attribute})
             for n in model.graph.node if n.op_type == "TopK"]
    profile = resolve_target(target)
    return [f.node for fact in facts for f in profile.evaluate(fact) if f.limitation == RULE_KEY]


def test_dgcnn_sample_is_fixed_verified_and_matches_torch():
    model = onnx.load(SAMPLES / "topk_smallest.onnx")
    assert len(_smallest_topks(model)) == 2 and len(_topk_findings(model, "trt8.4")) == 2
    result, report = rewrite(model, RULE, target="trt8.4")
    assert report.passes[0].matches == 2 and report.passes[0].status == "verified"
    assert report.passes[0].max_abs == 0.0
    assert _smallest_topks(result) == [] and _topk_findings(result, "trt8.4") == []
    feeds, data = sample_data("topk_smallest")
    np.testing.assert_array_equal(run(result, feeds)[0], run(model, feeds)[0])
    np.testing.assert_allclose(run(result, feeds)[0], data["torch:logits"], rtol=1e-4, atol=1e-5)
    _, second = rewrite(result, RULE)
    assert second.passes[0].matches == 0  # idempotent
