"""batch_unbatched_pooling: pooling on unbatched tensors, rank derivation, the SuperPoint/SuperGlue exports."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from backend import onnxruntime_refusal
from conftest import SAMPLES, assert_matches_torch, graphfix_cli, parse, run, sample_data
from rulecheck import op_types, rewrite

import graphfix as gf
from graphfix import ir

RULE = "batch_unbatched_pooling"


def _unshaped_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with unknown output dims of the input's rank (the text syntax `float y` is a scalar)."""
    rank = len(model.graph.input[0].type.tensor_type.shape.dim)
    for output in model.graph.output:
        output.type.tensor_type.shape.ClearField("dim")
        output.type.tensor_type.shape.dim.extend(onnx.TensorShapeProto.Dimension() for _ in range(rank))
    return model


def _pooling_model(op: str, attrs: str, x_shape: list[int], outputs: str = "y") -> onnx.ModelProto:
    """One pooling node on a graph input of `x_shape` (unbatched or not, as the test says)."""
    dims = ",".join(map(str, x_shape))
    declared = ", ".join(f"{'int64' if name == 'indices' else 'float'} {name}" for name in outputs.split(", "))
    return _unshaped_outputs(parse(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[{dims}] x) => ({declared}) {{
        {outputs} = {op} <{attrs}> (x)
    }}
    """))


def _batched_reference(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    """What the node computes on x with a batch axis of 1 added (valid ONNX), batch axis removed."""
    batched = onnx.ModelProto()
    batched.CopyFrom(model)
    dims = batched.graph.input[0].type.tensor_type.shape.dim
    dims.insert(0, onnx.TensorShapeProto.Dimension(dim_value=1))
    return [value[0] for value in run(batched, {"x": x[None]})]


# name: (op, attributes, unbatched input shape, outputs)
UNBATCHED_CASES = {
    "maxpool2d_nms": ("MaxPool", "kernel_shape = [9, 9], pads = [4, 4, 4, 4], strides = [1, 1]", [3, 16, 20], "y"),
    "maxpool1d": ("MaxPool", "kernel_shape = [3], strides = [2], ceil_mode = 1", [4, 15], "y"),
    "maxpool3d_dilated": (
        "MaxPool", "kernel_shape = [2, 3, 2], dilations = [1, 2, 1], pads = [0, 1, 1, 0, 1, 0]", [2, 6, 7, 5], "y",
    ),
    "maxpool2d_indices": (
        "MaxPool", "kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1], storage_order = 1", [3, 9, 8],
        "y, indices",
    ),
    "avgpool2d_count_pad": (
        "AveragePool",
        "kernel_shape = [3, 3], pads = [1, 1, 1, 1], count_include_pad = 1, ceil_mode = 1, strides = [2, 2]",
        [5, 9, 10], "y",
    ),
    "avgpool1d_same_upper": (
        "AveragePool", 'kernel_shape = [4], auto_pad = "SAME_UPPER", strides = [3]', [4, 11], "y",
    ),
}


@pytest.mark.parametrize("name", UNBATCHED_CASES)
def test_unbatched_pooling_is_wrapped_and_equals_the_batched_node(name, rng):
    op, attrs, shape, outputs = UNBATCHED_CASES[name]
    model = _pooling_model(op, attrs, shape, outputs)
    assert onnxruntime_refusal(model) is not None, "ONNX forbids the unbatched node"
    result, report = rewrite(model, RULE, verify=False)
    assert report.passes[0].matches == 1
    assert op_types(result) == ["Unsqueeze", op] + ["Squeeze"] * len(outputs.split(", "))
    pooled = next(n for n in result.graph.node if n.op_type == op)
    original = model.graph.node[0]
    assert {a.name: a for a in pooled.attribute} == {a.name: a for a in original.attribute}  # every attribute kept
    x = rng.standard_normal(shape).astype(np.float32)
    for actual, expected in zip(run(result, {"x": x}), _batched_reference(model, x)):
        if expected.dtype == np.int64:
            np.testing.assert_array_equal(actual, expected)  # flattened (C, H, W) indices
        else:
            np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)
    again, second = rewrite(result, RULE, verify=False)
    assert second.passes[0].matches == 0


def test_unused_indices_output_is_not_produced():
    model = _unshaped_outputs(parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,6,6] x) => (float y) {
        y, unused = MaxPool <kernel_shape = [2, 2]> (x)
    }
    """))
    result, _ = rewrite(model, RULE, verify=False)
    pooled = next(n for n in result.graph.node if n.op_type == "MaxPool")
    assert len([o for o in pooled.output if o]) == 1 and op_types(result).count("Squeeze") == 1


def test_rank_is_derived_where_shape_inference_stopped(rng):
    """SuperPoint's NMS: pooled again through Equal/Cast/Where after an invalid MaxPool, so untyped on load."""
    model = _unshaped_outputs(parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,12,12] scores) => (float y) {
        pooled = MaxPool <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (scores)
        peak = Equal(scores, pooled)
        as_float = Cast <to = 1> (peak)
        spread = MaxPool <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (as_float)
        zero = Constant <value = float {0}> ()
        suppressed = Greater(spread, zero)
        kept = Where(suppressed, zero, scores)
        y = MaxPool <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (kept)
    }
    """))
    inferred = onnx.shape_inference.infer_shapes(model)
    shaped = {v.name for v in inferred.graph.value_info if v.type.tensor_type.HasField("shape")}
    assert "as_float" not in shaped and "kept" not in shaped  # inference lost the ranks at the first MaxPool
    result, report = rewrite(model, RULE)
    assert report.passes[0].matches == 3 and "MaxPool" in op_types(result)
    assert report.passes[0].status == "unverified"  # the input model does not run
    x = rng.standard_normal((1, 12, 12)).astype(np.float32)
    scores = x[0]
    padded = np.pad(scores, 1, constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3)).max(axis=(2, 3))
    peak = (scores == windows).astype(np.float32)
    spread = np.lib.stride_tricks.sliding_window_view(np.pad(peak, 1, constant_values=-np.inf), (3, 3)).max(axis=(2, 3))
    kept = np.where(spread > 0, 0.0, scores).astype(np.float32)
    expected = np.lib.stride_tricks.sliding_window_view(np.pad(kept, 1, constant_values=-np.inf), (3, 3)).max(axis=(2, 3))
    np.testing.assert_array_equal(run(result, {"scores": x})[0], expected[None])


def test_near_misses_batched_unknown_rank_and_mismatched_rank():
    batched = _pooling_model("MaxPool", "kernel_shape = [2, 2]", [1, 3, 8, 8])
    _, report = rewrite(batched, RULE)
    assert report.passes[0].matches == 0
    assert report.passes[0].near_misses[0][2] == "the input is batched (rank 4 = 2 + 2 spatial dims)"

    unknown = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[48] x, int64[n] shape) => (float[3,4,4] y) {
        reshaped = Reshape(x, shape)
        y = MaxPool <kernel_shape = [2, 2], pads = [1, 1, 0, 0]> (reshaped)
    }
    """)
    _, report = rewrite(unknown, RULE, verify=False)
    assert report.passes[0].matches == 0 and "rank is unknown" in report.passes[0].near_misses[0][2]

    too_small = _pooling_model("AveragePool", "kernel_shape = [2, 2, 2]", [6, 6])
    report = gf.apply(  # stays invalid, so not through rewrite(), which checks the result
        ir.Model(graph=ir.import_proto(too_small), source=too_small),
        gf.ApplyOptions(only=(RULE,), verify=False, entry_points=False),
    )
    assert report.passes[0].near_misses[0][2] == "input rank 2 fits neither 4 (unbatched) nor 5"


@pytest.mark.parametrize("sample, wrapped", [("hf_superpoint", 5), ("hf_superglue", 10)])
def test_superpoint_and_superglue_exports_load_and_match_torch(sample, wrapped):
    model = onnx.load(SAMPLES / f"{sample}.onnx")
    assert "Attribute dilations has incorrect size" in onnxruntime_refusal(model)
    result, report = rewrite(model, RULE)
    assert report.passes[0].matches == wrapped
    # The encoder's MaxPools are batched and stay as they are.
    assert report.passes[0].near_misses[0][2] == "the input is batched (rank 4 = 2 + 2 spatial dims)"
    assert report.passes[0].status == "unverified"
    assert report.verification.reference_state == f"state after {RULE}"
    assert onnxruntime_refusal(result) is None
    feeds, data = sample_data(sample)
    assert_matches_torch(result, feeds, data, rtol=1e-5, atol=1e-6)
    _, second = rewrite(result, RULE)
    assert second.passes[0].matches == 0


def test_cli_repair_is_unverified_and_later_passes_are_verified_from_the_repaired_state(tmp_path):
    """The input cannot run: the repair pass is unverified, the next pass is verified from its state."""
    report_path = tmp_path / "report.json"
    done = graphfix_cli(
        "apply", str(SAMPLES / "hf_superglue.onnx"), "-o", str(tmp_path / "fixed.onnx"),
        "--only", RULE, "--only", "replace_cast_to_bool", "--report", str(report_path),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(report_path.read_text())
    repair, cast = report["passes"]
    assert (repair["name"], repair["matches"], repair["status"]) == (RULE, 10, "unverified")
    assert repair["detail"].startswith("onnxruntime cannot run the input model")
    assert repair["detail"].endswith(f"verified from state after {RULE}")
    assert (cast["name"], cast["matches"], cast["status"]) == ("replace_cast_to_bool", 6, "verified")
    verification = report["verification"]
    assert verification["reference_state"] == f"state after {RULE}" and verification["regions_in_final_run"] == 6
    assert all(c["ok"] and c["max_abs"] == 0 for c in verification["final"])
    onnx.checker.check_model(str(tmp_path / "fixed.onnx"), full_check=True)
