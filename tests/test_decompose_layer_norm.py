"""decompose_layer_norm: backend node tests, axes/epsilon/stash_type/optional inputs and outputs, RoBERTa sample."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from backend import node_cases
from conftest import assert_matches_torch, SAMPLES, parse, run, sample_data
from rulecheck import check_backend_case, op_types, rewrite

RULE = "decompose_layer_norm"
LAYER_NORM_CASES = node_cases("test_layer_normalization")


@pytest.mark.parametrize("case", LAYER_NORM_CASES, ids=lambda c: c.name)
def test_backend_layer_normalization_cases(case):
    """Y, Mean and InvStdDev of every case (axes 0..rank-1, negative, epsilon 0.1) match."""
    result, report = check_backend_case(case, RULE)
    assert "LayerNormalization" not in op_types(result)
    if "LayerNormalization" in op_types(case.model):
        assert report.passes[0].matches == 1 and report.passes[0].status == "verified"
        assert {"ReduceMean", "Sub", "Pow", "Sqrt", "Div", "Mul", "Add", "Reciprocal"} == set(op_types(result))


def _layer_norm(
    x_type: str, shape: str, attrs: str, inputs: str = "x, scale, bias", outputs: str = "y", opset: int = 17
) -> onnx.ModelProto:
    """One LayerNormalization; scale and bias are graph inputs of the last dim's size."""
    last = shape.split(",")[-1]
    declared = {"y": f"{x_type}[{shape}] y", "mean": "float mean", "inv": "float inv"}
    results = ", ".join(declared[o] for o in outputs.split(", "))
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g ({x_type}[{shape}] x, {x_type}[{last}] scale, {x_type}[{last}] bias) => ({results}) {{
        {outputs} = LayerNormalization <{attrs}> ({inputs})
    }}
    """)
    for output in model.graph.output[1:]:  # statistics: the input's rank, unknown dims
        output.type.tensor_type.shape.dim.extend(onnx.TensorShapeProto.Dimension() for _ in shape.split(","))
    return model


def _feeds(shape: tuple[int, ...], dtype: type, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "x": (rng.standard_normal(shape) * 3 + 5).astype(dtype),  # an offset mean, as activations have
        "scale": rng.standard_normal(shape[-1]).astype(dtype),
        "bias": rng.standard_normal(shape[-1]).astype(dtype),
    }


def test_float16_with_stash_type_1_computes_in_float(rng):
    model = _layer_norm("float16", "2,5,16", "axis = -1, epsilon = 0.001")
    result, report = rewrite(model, RULE)
    assert report.passes[0].status == "verified"
    casts = [n for n in result.graph.node if n.op_type == "Cast"]
    assert [c.attribute[0].i for c in casts] == [onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16]
    feeds = _feeds((2, 5, 16), np.float16, rng)
    (expected,) = run(model, feeds)
    # run() keeps onnxruntime's default optimisations: its LayerNormFusion must accept the result
    (actual,) = run(result, feeds)
    np.testing.assert_allclose(actual.astype(np.float32), expected.astype(np.float32), rtol=2e-3, atol=2e-3)
    # and within one FLOAT16 rounding of the exact value
    x, scale, bias = (feeds[k].astype(np.float64) for k in ("x", "scale", "bias"))
    exact = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 0.001) * scale + bias
    np.testing.assert_allclose(actual.astype(np.float64), exact, rtol=4e-3, atol=4e-3)


def test_float32_without_bias_statistics_and_dynamic_dims(rng):
    model = _layer_norm("float", "batch,seq,8", "axis = 1", inputs="x, scale", outputs="y, mean, inv")
    result, report = rewrite(model, RULE)
    assert report.passes[0].status == "verified" and op_types(result).count("Add") == 1  # epsilon only
    mean_node = next(n for n in result.graph.node if n.op_type == "ReduceMean")
    assert list(next(a for a in mean_node.attribute if a.name == "axes").ints) == [1, 2]
    for shape in [(2, 3, 8), (1, 7, 8)]:
        feeds = _feeds(shape, np.float32, rng)
        for actual, expected in zip(run(result, feeds), run(model, feeds)):
            np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_unused_statistics_are_not_built_and_opset_18_takes_axes_as_input(rng):
    model = _layer_norm("float", "4,6,10", "axis = -2, epsilon = 0.5", outputs="y", opset=18)
    result, report = rewrite(model, RULE)
    assert report.passes[0].status == "verified" and "Reciprocal" not in op_types(result)
    reductions = [n for n in result.graph.node if n.op_type == "ReduceMean"]
    assert len(reductions) == 2 and all(len(n.input) == 2 for n in reductions)
    feeds = _feeds((4, 6, 10), np.float32, rng)
    np.testing.assert_allclose(run(result, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-5)
    _, second = rewrite(result, RULE)
    assert second.passes[0].matches == 0


def test_near_misses_stash_type_and_unknown_rank(tmp_path):
    _, report = rewrite(_layer_norm("float16", "2,4", "stash_type = 10"), RULE, verify=False)
    assert report.passes[0].matches == 0
    assert report.passes[0].near_misses[0][2] == "stash_type 10: only FLOAT statistics (stash_type 1) are decomposed"
    unknown = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[24] x, int64[n] shape, float[4] scale) => (float[2,3,4] y) {
        reshaped = Reshape(x, shape)
        y = LayerNormalization (reshaped, scale)
    }
    """)
    feeds = {"x": np.linspace(-2, 3, 24).astype(np.float32), "shape": np.array([2, 3, 4], np.int64),
             "scale": np.linspace(0.5, 2, 4).astype(np.float32)}
    np.savez(tmp_path / "inputs.npz", **feeds)
    # axis -1 needs no rank; the scale gives the type
    result, report = rewrite(unknown, RULE, inputs=str(tmp_path / "inputs.npz"))
    assert report.passes[0].matches == 1 and report.passes[0].status == "verified"
    np.testing.assert_allclose(run(result, feeds)[0], run(unknown, feeds)[0], rtol=1e-5, atol=1e-6)
    front = parse(str(onnx.printer.to_text(unknown)).replace("LayerNormalization (", "LayerNormalization <axis = 1> ("))
    _, report = rewrite(front, RULE, verify=False)
    assert report.passes[0].near_misses[0][2] == "the input rank is unknown and axis 1 counts from the front"


def test_roberta_sample_is_decomposed_and_matches_torch():
    model = onnx.load(SAMPLES / "hf_cumsum_text.onnx")
    assert op_types(model).count("LayerNormalization") == 5
    result, report = rewrite(model, RULE)
    assert report.passes[0].matches == 5 and report.passes[0].status == "verified"
    assert "LayerNormalization" not in op_types(result)
    feeds, data = sample_data("hf_cumsum_text")
    assert_matches_torch(result, feeds, data, rtol=1e-4, atol=1e-5)
    _, second = rewrite(result, RULE)
    assert second.passes[0].matches == 0
