"""fold_range: backend cases, folding, the INT32/FP32 forms per dtype and target, the samples."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from backend import assert_outputs_match, node_cases, onnxruntime_refusal, run_in_onnxruntime
from conftest import SAMPLES, assert_matches_torch, parse, run, sample_data
from onnx.reference import ReferenceEvaluator
from rulecheck import op_types, rewrite

RULE = "fold_range"
RANGE_CASES = [case for case in node_cases("test_range") if not case.name.endswith("_expanded")]


def _run(model: onnx.ModelProto, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """onnxruntime when it loads the model; else ONNX's reference evaluator (Range-27 with
    float16/bfloat16 needs opset 27, above onnxruntime 1.31's 26)."""
    if onnxruntime_refusal(model) is None:
        return run_in_onnxruntime(model, inputs)
    return ReferenceEvaluator(model).run(None, dict(zip((i.name for i in model.graph.input), inputs)))


def _as_initializers(case) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    for graph_input, value in zip(model.graph.input, case.data_sets[0][0]):
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(value), graph_input.name))
    del model.graph.input[:]
    return model


@pytest.mark.parametrize("case", RANGE_CASES, ids=lambda c: c.name)
def test_backend_range_cases_with_constant_inputs_fold(case):
    result, report = rewrite(_as_initializers(case), RULE)
    assert "Range" not in op_types(result) and report.passes[0].matches == 1
    assert_outputs_match(_run(result, []), case.data_sets[0][1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", RANGE_CASES, ids=lambda c: c.name)
def test_backend_range_cases_with_runtime_inputs(case):
    inputs, expected = case.data_sets[0]
    result, report = rewrite(case.model, RULE)
    ranges = [n for n in result.graph.node if n.op_type == "Range"]
    if "int32" in case.name:  # imported as it is by every target
        assert report.passes[0].matches == 0 and "imported by every target" in report.passes[0].near_misses[0][2]
    else:  # float32 (7.2-8.2 need initializers), float16 and bfloat16 (never imported)
        assert report.passes[0].matches == 1
        assert [_elem_type(result, n.input[1]) for n in ranges] == [onnx.TensorProto.INT32]
    assert_outputs_match(_run(result, list(inputs)), expected, rtol=1e-5, atol=1e-6)


def _elem_type(model: onnx.ModelProto, name: str) -> int:
    inferred = onnx.shape_inference.infer_shapes(model)
    return next(v.type.tensor_type.elem_type for v in inferred.graph.value_info if v.name == name)


def _range_model(dtype: str, stash: str = "") -> onnx.ModelProto:
    opset = 27 if dtype in ("float16", "bfloat16") else 17
    return parse(f"""
    <ir_version: 11, opset_import: ["" : {opset}]>
    g ({dtype} start, {dtype} limit, {dtype} delta) => ({dtype}[n] y) {{ y = Range {stash}(start, limit, delta) }}
    """)


@pytest.mark.parametrize("dtype, bounds", [
    ("int16", (-7, 300, 9)), ("int16", (5, -40, -3)), ("double", (0.25, 100.0, 0.5)), ("double", (3.0, -2.0, -0.7)),
    ("float", (0.0, 77.0, 1.0)), ("float16", (-3.0, 20.0, 0.5)), ("float16", (0.0, 1.0, 0.1)),
])
def test_runtime_inputs_in_refused_dtypes_compute_through_int32(dtype, bounds):
    np_dtype = np.dtype({"float": "float32", "double": "float64"}.get(dtype, dtype))
    result, report = rewrite(_range_model(dtype), RULE)
    assert report.passes[0].matches == 1 and "Range" in op_types(result)
    actual = _run(result, [np.array(b, np_dtype) for b in bounds])[0]
    assert actual.dtype == np_dtype
    np.testing.assert_array_equal(actual, _pseudocode(*bounds, np_dtype))


def _pseudocode(start: float, limit: float, delta: float, dtype: np.dtype) -> np.ndarray:
    """Range's definition: start + i * delta, i < max(ceil((limit - start) / delta), 0); 16-bit
    floats computed in float32 and rounded once (Range-27, stash_type 1)."""
    compute = np.float32 if dtype == np.float16 else dtype
    first, last, step = (np.asarray(v, dtype).astype(compute) for v in (start, limit, delta))
    count = max(int(np.ceil((last - first) / step)), 0)
    if dtype.kind == "i":
        return (int(first) + np.arange(count) * int(step)).astype(dtype)
    return (first + np.arange(count).astype(compute) * step).astype(dtype)


def test_float16_with_stash_type_float16_stays_in_float16():
    result, _ = rewrite(_range_model("float16", "<stash_type = 10>"), RULE)
    casts = [a.i for n in result.graph.node if n.op_type == "Cast" for a in n.attribute]
    assert onnx.TensorProto.FLOAT not in casts
    inputs = [np.array(v, np.float16) for v in (1.0, 9.0, 0.5)]
    np.testing.assert_array_equal(_run(result, inputs)[0], np.arange(1.0, 9.0, 0.5, dtype=np.float16))


@pytest.mark.parametrize("target, fires", [("trt7.2", True), ("trt8.2", True), ("trt8.4", False), ("trt10.16", False)])
def test_float32_runtime_range_only_for_targets_that_need_initializers(target, fires):
    _, report = rewrite(_range_model("float"), RULE, target=target)
    assert report.passes[0].matches == int(fires)
    if not fires:
        assert report.passes[0].near_misses[0][2] == "the target imports float32 Range with runtime inputs (8.4+)"


def test_float32_with_a_computed_limit_is_rewritten_for_8_0():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[n] y) {
        start = Constant <value = float {0}> ()
        limit = ReduceSum <keepdims = 0> (x)
        delta = Constant <value = float {1}> ()
        y = Range(start, limit, delta)
    }
    """)
    result, report = rewrite(model, RULE, target="trt8.0")
    assert report.passes[0].matches == 1  # the limit is computed: 8.0 refuses it
    x = np.array([2.0, 3.5], np.float32)
    np.testing.assert_array_equal(run(result, {"x": x})[0], run(model, {"x": x})[0])
    _, again = rewrite(result, RULE, target="trt8.0")
    assert again.passes[0].matches == 0


def test_huge_constant_float32_range_stays_a_range():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g () => (float[n] y) {
        start = Constant <value = float {0}> ()
        limit = Constant <value = float {4000000}> ()
        delta = Constant <value = float {1}> ()
        y = Range(start, limit, delta)
    }
    """)
    result, report = rewrite(model, RULE, verify=False)
    assert op_types(result) == ["Constant", "Constant", "Constant", "Range"]
    assert report.passes[0].near_misses[0][2] == "float32 Range with initializer inputs is imported by every target"


def _static_copy(sample: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray], np.lib.npyio.NpzFile]:
    """The sample with its inputs fixed to the npz shapes (shape chains become constant)."""
    feeds, data = sample_data(sample)
    model = onnx.load(SAMPLES / f"{sample}.onnx")
    for graph_input in model.graph.input:
        for dim, size in zip(graph_input.type.tensor_type.shape.dim, feeds[graph_input.name].shape):
            dim.Clear()
            dim.dim_value = size
    del model.graph.value_info[:]
    return model, feeds, data


def _assert_matches_torch(model: onnx.ModelProto, feeds, data) -> None:
    assert_matches_torch(model, feeds, data, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sample, count", [("reduce_opset18", 1), ("superpoint_head", 2)])
def test_shape_ranges_of_the_samples(sample, count):
    dynamic = onnx.load(SAMPLES / f"{sample}.onnx")
    _, report = rewrite(dynamic, RULE)  # Range(0, Cast(Gather(Shape))) on int64: imported as it is
    assert report.passes[0].matches == 0
    assert "Range on int64 with runtime inputs is imported by every target" in report.passes[0].near_misses[0][2]
    model, feeds, data = _static_copy(sample)  # with static input shapes the limit folds
    result, report = rewrite(model, RULE)
    assert op_types(model).count("Range") == count and "Range" not in op_types(result)
    assert report.passes[0].status == "verified"
    _assert_matches_torch(result, feeds, data)
    _, again = rewrite(result, RULE)
    assert again.passes[0].matches == 0


def test_float_arange_of_the_einsum_sample_runs_through_int32():
    model = onnx.load(SAMPLES / "einsum_ellipsis.onnx")  # torch.arange(seq, dtype=float), seq dynamic
    data = np.load(SAMPLES / "einsum_ellipsis.npz")
    result, report = rewrite(model, RULE, target="trt8.2")
    assert report.passes[0].matches == 4 and report.passes[0].status == "verified"
    ranges = [n for n in result.graph.node if n.op_type == "Range"]
    assert all(_elem_type(result, n.input[1]) == onnx.TensorProto.INT32 for n in ranges)
    _assert_matches_torch(result, {"x": data["input:x"]}, data)
    longer = np.random.default_rng(0).standard_normal((3, 40, 32)).astype(np.float32)
    np.testing.assert_allclose(run(result, {"x": longer})[0], run(model, {"x": longer})[0], rtol=1e-5, atol=1e-6)
    _, later = rewrite(model, RULE, target="trt8.4")
    assert later.passes[0].matches == 0
