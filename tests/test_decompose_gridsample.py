"""decompose_gridsample: backend cases, every mode/padding/alignment/rank against onnxruntime, dynamic
shapes, dtypes, near misses, importability on TensorRT 7.2, the Deformable-DETR sample."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from backend import node_cases
from conftest import SAMPLES, parse, run, sample_data
from onnx import TensorProto, helper
from rulecheck import check_backend_case, op_types, rewrite

from graphfix import ir, targets
from graphfix.check import check

RULE = "decompose_gridsample"
GRIDSAMPLE_CASES = node_cases("test_gridsample")
_ONNX_TYPES = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}


@pytest.mark.parametrize("case", GRIDSAMPLE_CASES, ids=lambda c: c.name)
def test_backend_gridsample_cases(case):
    result, report = check_backend_case(case, RULE)  # compares with the case's outputs at 1e-5
    assert "GridSample" not in op_types(result)
    assert report.passes[0].matches == 1 and report.passes[0].status == "verified"
    _, again = rewrite(result, RULE)
    assert again.passes[0].matches == 0


def _gridsample_model(
    mode: str, padding: str, align: int, x_dims, grid_dims, dtype=np.float32, opset: int = 20
) -> onnx.ModelProto:
    elem = _ONNX_TYPES[dtype]
    node = helper.make_node("GridSample", ["x", "grid"], ["y"], mode=mode, padding_mode=padding, align_corners=align)
    graph = helper.make_graph(
        [node], "gridsample",
        [helper.make_tensor_value_info("x", elem, x_dims), helper.make_tensor_value_info("grid", elem, grid_dims)],
        [helper.make_tensor_value_info("y", elem, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def _grid(rng: np.random.Generator, dims, sizes, align: int, dtype=np.float32) -> np.ndarray:
    """Locations well outside [-1, 1] (every padding branch, reflections over several folds),
    with every tenth point moved onto a half-pixel tie (nearest rounds it to even)."""
    grid = rng.uniform(-3.5, 3.5, dims).astype(dtype)
    flat = grid.reshape(-1, dims[-1])
    for axis, size in enumerate(sizes):  # sizes innermost first, like grid's last axis
        pixel = rng.integers(-3, size + 3, flat.shape[0]) + 0.5
        tie = (2 * pixel / (size - 1) - 1) if align else ((2 * pixel + 1) / size - 1)
        flat[::10, axis] = tie[::10]
    return grid


_SWEEP = [
    (mode, padding, align, rank)
    for mode, padding, align, rank in itertools.product(
        ("nearest", "linear", "cubic"), ("zeros", "border", "reflection"), (0, 1), (4, 5))
    if not (mode == "cubic" and rank == 5)
]


@pytest.mark.parametrize("mode, padding, align, rank", _SWEEP)
def test_every_mode_padding_alignment_and_rank_matches_onnxruntime(mode, padding, align, rank, rng):
    x_dims = [2, 3, 5, 6, 7] if rank == 5 else [2, 3, 6, 7]
    grid_dims = [2, 3, 4, 5, 3] if rank == 5 else [2, 4, 5, 2]
    model = _gridsample_model(mode, padding, align, x_dims, grid_dims)
    result, report = rewrite(model, RULE)
    assert "GridSample" not in op_types(result) and report.passes[0].status == "verified"
    x = rng.standard_normal(x_dims).astype(np.float32)
    grid = _grid(rng, grid_dims, x_dims[:1:-1], align)
    feeds = {"x": x, "grid": grid}
    np.testing.assert_allclose(run(result, feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-5)


def test_one_pixel_axes_with_align_corners_reflect_onto_the_pixel(rng):
    """align_corners=1 on a size-1 axis: the reflection span is 0, every index reads pixel 0."""
    model = _gridsample_model("linear", "reflection", 1, [1, 2, 1, 1], [1, 3, 4, 2])
    result, _ = rewrite(model, RULE)
    feeds = {"x": rng.standard_normal((1, 2, 1, 1)).astype(np.float32),
             "grid": rng.uniform(-3.5, 3.5, (1, 3, 4, 2)).astype(np.float32)}
    np.testing.assert_allclose(run(result, feeds)[0], run(model, feeds)[0], rtol=1e-6, atol=1e-6)


def test_dynamic_shapes_and_float64(rng):
    model = _gridsample_model("linear", "zeros", 0, ["n", "c", "h", "w"], ["n", "ho", "wo", 2], dtype=np.float64)
    result, report = rewrite(model, RULE)
    assert report.passes[0].status == "verified"
    for n, c, h, w, ho, wo in ((1, 1, 3, 4, 2, 2), (3, 5, 9, 2, 7, 1)):
        feeds = {"x": rng.standard_normal((n, c, h, w)), "grid": rng.uniform(-1.3, 1.3, (n, ho, wo, 2))}
        got, want = run(result, feeds)[0], run(model, feeds)[0]
        assert got.dtype == np.float64 and got.shape == (n, c, ho, wo)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_near_misses():
    four_d = _gridsample_model("linear", "zeros", 0, [1, 1, 4, 4], [1, 2, 2, 2])
    _, report = rewrite(four_d, RULE, target="trt8.5")
    assert report.passes[0].matches == 0
    assert report.passes[0].near_misses[0][2] == "the target imports 4-D GridSample"
    five_d = _gridsample_model("linear", "zeros", 0, [1, 1, 2, 4, 4], [1, 2, 2, 2, 3])
    _, report = rewrite(five_d, RULE, target="trt8.5")
    assert report.passes[0].matches == 1 and report.passes[0].status == "verified"
    unranked = parse("""
    <ir_version: 9, opset_import: ["" : 20]>
    g (float[16] x, int64[n] shape, float[1, 2, 2, 2] grid) => (float y) {
        image = Reshape(x, shape)
        y = GridSample(image, grid)
    }
    """)
    _, report = rewrite(unranked, RULE, target="trt8.4", verify=False)
    assert report.passes[0].near_misses[0][2].startswith("GridSample needs 4-D or 5-D input")


@pytest.mark.parametrize("mode, padding", [("nearest", "reflection"), ("bilinear", "zeros"), ("bicubic", "border")])
def test_the_decomposition_imports_on_tensorrt_7_2(mode, padding):
    """Only ops (and forms) the oldest parser takes: no Round, GatherElements, Mod or Trilu."""
    model = _gridsample_model(mode, padding, 0, ["n", 3, "h", "w"], ["n", 4, 5, 2], opset=16)
    result, _ = rewrite(model, RULE, target="trt7.2", verify=False)
    fixed = ir.Model(graph=ir.import_proto(result), source=result)
    report = check(fixed, targets.resolve_target("trt7.2"))
    assert [f for f in report.errors if f.op_type not in ("(model)", "(initializer)")] == []
    assert not {"Round", "GatherElements", "Mod", "Trilu", "GridSample"} & set(op_types(result))


def test_deformable_detr_sample_is_decomposed_and_matches_torch():
    model = onnx.load(SAMPLES / "deformable_detr_tiny_f32.onnx")
    assert op_types(model).count("GridSample") == 6
    result, report = rewrite(model, RULE, target="trt8.4")
    assert "GridSample" not in op_types(result)
    assert report.passes[0].matches == 6 and report.passes[0].status == "verified"
    feeds, data = sample_data("deformable_detr_tiny_f32")
    for output, value in zip(result.graph.output, run(result, feeds)):
        np.testing.assert_allclose(value, data[f"torch:{output.name}"], rtol=1e-4, atol=1e-4)


def test_superpoint_descriptor_sampling_is_decomposed_and_matches_torch():
    """align_corners=1 on real keypoints; the rank-3 MaxPools must be repaired first to run at all."""
    model = onnx.load(SAMPLES / "hf_superpoint.onnx")
    result, report = rewrite(model, "batch_unbatched_pooling", RULE, target="trt8.4")
    [decompose] = [p for p in report.passes if p.name == RULE]
    assert decompose.matches == 1 and decompose.status == "verified" and "GridSample" not in op_types(result)
    feeds, data = sample_data("hf_superpoint")
    for output, value in zip(result.graph.output, run(result, feeds)):
        np.testing.assert_allclose(value, data[f"torch:{output.name}"], rtol=1e-4, atol=1e-5)
