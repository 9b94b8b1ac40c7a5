"""decompose_cumsum: backend cases, a property test, dynamic lengths, dtypes, near misses, samples."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from backend import assert_outputs_match, node_cases, run_in_onnxruntime
from conftest import SAMPLES, assert_matches_torch, run, sample_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from rulecheck import op_types, rewrite

RULE = "decompose_cumsum"
CUMSUM_CASES = node_cases("test_cumsum")
_ONNX_TYPES = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE, np.int32: TensorProto.INT32,
               np.int64: TensorProto.INT64, np.float16: TensorProto.FLOAT16}


def _with_constant_axis(case) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    """The case's model with its `axis` input turned into an initializer holding the case's value."""
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    inputs = dict(zip((i.name for i in model.graph.input), case.data_sets[0][0]))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(inputs.pop("axis")), "axis"))
    kept = [i for i in model.graph.input if i.name != "axis"]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return model, list(inputs.values())


@pytest.mark.parametrize("case", CUMSUM_CASES, ids=lambda c: c.name)
def test_backend_cumsum_cases(case):
    model, inputs = _with_constant_axis(case)
    result, report = rewrite(model, RULE)
    assert "CumSum" not in op_types(result)
    assert report.passes[0].matches == 1 and report.passes[0].status == "verified"
    assert_outputs_match(run_in_onnxruntime(result, inputs), case.data_sets[0][1], rtol=1e-5, atol=1e-6)
    _, again = rewrite(result, RULE)
    assert again.passes[0].matches == 0


@pytest.mark.parametrize("case", CUMSUM_CASES[:1], ids=lambda c: c.name)
def test_runtime_axis_is_a_near_miss(case):
    result, report = rewrite(case.model, RULE)  # the backend models take the axis as a graph input
    assert op_types(result) == ["CumSum"] and report.passes[0].matches == 0
    node, reason = report.passes[0].near_misses[0][1:]
    assert node == "axis" and reason.startswith("the axis is computed at run time")


def _reference(x: np.ndarray, axis: int, exclusive: bool, reverse: bool) -> np.ndarray:
    flipped = np.flip(x, axis) if reverse else x
    summed = np.cumsum(flipped, axis=axis, dtype=x.dtype)
    if exclusive:
        summed = summed - flipped  # exact for integers, float rounding for floats
    return np.flip(summed, axis) if reverse else summed


def _cumsum_model(dtype, dims, axis: int, exclusive: int, reverse: int, *, from_bool: bool = False) -> onnx.ModelProto:
    elem = _ONNX_TYPES[dtype]
    summed = "x_cast" if from_bool else "x"
    nodes = [helper.make_node("CumSum", [summed, "axis"], ["y"], exclusive=exclusive, reverse=reverse)]
    if from_bool:
        nodes.insert(0, helper.make_node("Cast", ["x"], ["x_cast"], to=elem))
    graph = helper.make_graph(
        nodes, "cumsum",
        [helper.make_tensor_value_info("x", TensorProto.BOOL if from_bool else elem, dims)],
        [helper.make_tensor_value_info("y", elem, dims)],
        [onnx.numpy_helper.from_array(np.array(axis, np.int64), "axis")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)


@st.composite
def _cases(draw):
    rank = draw(st.integers(1, 4))
    # Other dims >= 1: onnxruntime's fused Transpose+MatMul fails on empty batch dims (docstring).
    dims = draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank))
    axis = draw(st.integers(-rank, rank - 1))
    dims[axis] = draw(st.sampled_from([0, dims[axis], 9, 200]))  # 200 > matmul_max_length: log-step
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int32, np.int64]))
    dynamic = draw(st.booleans())
    return dims, axis, dtype, dynamic, draw(st.integers(0, 1)), draw(st.integers(0, 1)), draw(st.integers(0, 2**32))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases())
def test_property_matches_numpy_cumsum(params):
    dims, axis, dtype, dynamic, exclusive, reverse, seed = params
    declared = [f"d{i}" for i in range(len(dims))] if dynamic else dims
    model = _cumsum_model(dtype, declared, axis, exclusive, reverse)
    result, report = rewrite(model, RULE, verify=False)
    assert "CumSum" not in op_types(result) and report.passes[0].matches == 1
    x = _draw(np.random.default_rng(seed), dtype, dims)
    actual, expected = run(result, {"x": x})[0], _reference(x, axis, exclusive, reverse)
    if np.dtype(dtype).kind == "f":
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-4)
    else:
        np.testing.assert_array_equal(actual, expected)


def _draw(rng: np.random.Generator, dtype, dims) -> np.ndarray:
    """Normal floats; integers far above 2**24 for int64 (a float round trip would lose them)."""
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(dims).astype(dtype)
    high = 2**40 if dtype is np.int64 else 2**20  # int32: no overflow in 300-long sums
    return rng.integers(-high, high, dims).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.int64])
def test_dynamic_length_model_at_several_lengths(dtype, rng):
    model = _cumsum_model(dtype, ["batch", "sequence"], 1, 0, 0)
    result, report = rewrite(model, RULE)
    assert report.passes[0].status == "verified"
    for length in (1, 2, 7, 33, 300):
        x = _draw(rng, dtype, (3, length))
        expected = run(model, {"x": x})[0]
        actual = run(result, {"x": x})[0]
        if np.dtype(dtype).kind == "f":
            np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * np.abs(x).max())
        else:
            np.testing.assert_array_equal(actual, expected)


def test_forms_follow_the_documented_threshold():
    short, _ = rewrite(_cumsum_model(np.float32, [4, 128], 1, 0, 0), RULE)
    long, _ = rewrite(_cumsum_model(np.float32, [4, 129], 1, 0, 0), RULE)
    tuned, _ = rewrite(_cumsum_model(np.float32, [4, 129], 1, 0, 0), RULE,
                       rule_options=("decompose_cumsum.matmul_max_length=512",))
    integers, _ = rewrite(_cumsum_model(np.int64, [4, 8], 1, 0, 0), RULE)
    assert "MatMul" in op_types(short) and "MatMul" not in op_types(long) and "MatMul" in op_types(tuned)
    assert "MatMul" not in op_types(integers) and {"Slice", "Concat", "Add"} <= set(op_types(integers))
    middle, _ = rewrite(_cumsum_model(np.float32, [2, 3, 5, 4], 1, 0, 0), RULE)
    assert op_types(middle).count("Transpose") == 2  # axis 1 of 4 moves last and back


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_counting_a_bool_mask_uses_the_exact_float32_matmul(dtype, rng):
    model = _cumsum_model(dtype, ["batch", "sequence"], 1, 1, 1, from_bool=True)
    result, report = rewrite(model, RULE)
    assert "MatMul" in op_types(result) and report.passes[0].status == "verified"
    mask = rng.random((2, 1000)) < 0.7
    np.testing.assert_array_equal(run(result, {"x": mask})[0], run(model, {"x": mask})[0])


def test_float16_input(rng):
    model = _cumsum_model(np.float16, [3, 6], -1, 1, 0)
    result, report = rewrite(model, RULE)
    assert report.passes[0].status == "verified"
    x = rng.standard_normal((3, 6)).astype(np.float16)
    np.testing.assert_allclose(run(result, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-3, atol=1e-3)


def test_targets_that_import_cumsum_keep_an_initializer_axis():
    model = _cumsum_model(np.float32, [2, 5], 1, 0, 0)
    _, report = rewrite(model, RULE, target="trt8.6")
    assert report.passes[0].matches == 0
    assert report.passes[0].near_misses[0][2] == "the target imports CumSum with an initializer axis"
    _, report = rewrite(model, RULE, target="trt7.2")
    assert report.passes[0].matches == 1


def test_targets_that_import_cumsum_still_get_integer_cumsum_rewritten(rng):
    """Their CumSum takes FP32/FP16 only (support matrix); the integer form is exact."""
    model = _cumsum_model(np.int64, [2, 5], 1, 0, 0)
    result, report = rewrite(model, RULE, target="trt8.6")
    assert report.passes[0].matches == 1 and report.passes[0].status == "verified"
    x = _draw(rng, np.int64, (2, 5))
    np.testing.assert_array_equal(run(result, {"x": x})[0], run(model, {"x": x})[0])


def _sample_feeds(name: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray], np.lib.npyio.NpzFile]:
    feeds, data = sample_data(name)
    return onnx.load(SAMPLES / f"{name}.onnx"), feeds, data


@pytest.mark.parametrize("sample, count", [
    ("hf_superglue_matcher", 2), ("hf_cumsum_text", 1), ("superglue_attention", 2), ("deformable_detr_tiny_f32", 6),
])
def test_samples_lose_every_cumsum_and_match_torch(sample, count):
    if not (SAMPLES / f"{sample}.onnx").is_file():
        pytest.skip(f"{sample}.onnx is not committed yet")
    model, feeds, data = _sample_feeds(sample)
    assert op_types(model).count("CumSum") == count
    result, report = rewrite(model, RULE)
    assert "CumSum" not in op_types(result)
    assert report.passes[0].matches == count and report.passes[0].status == "verified"
    assert_matches_torch(result, feeds, data, rtol=1e-4, atol=1e-4)
    _, again = rewrite(result, RULE)
    assert again.passes[0].matches == 0
