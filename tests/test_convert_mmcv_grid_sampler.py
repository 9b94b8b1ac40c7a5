"""convert_mmcv_grid_sampler: the mmcv_ops sample on TensorRT 8.4/8.5 (decomposition at opset 11,
GridSample at opset 16) against torch, every integer code, the opset-20 spelling, near misses."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import SAMPLES, graphfix_cli, sample_data
from onnx import TensorProto, helper
from rulecheck import op_types, rewrite

from graphfix import execute

RULE = "convert_mmcv_grid_sampler"
SAMPLED = ("gs_bilinear_zeros", "gs_nearest_border", "gs_bilinear_reflect")


def _sample(opset: int | None = None) -> onnx.ModelProto:
    """mmcv_ops.onnx; with `opset`, re-stamped (its standard ops mean the same at 11 and 16)."""
    model = onnx.load(SAMPLES / "mmcv_ops.onnx")
    if opset is not None:
        next(o for o in model.opset_import if o.domain == "").version = opset
    return model


def _expected_grid_samples(model: onnx.ModelProto) -> dict[str, float]:
    """Max abs error of each grid sample output against torch's F.grid_sample (npz expected:*)."""
    feeds, data = sample_data("mmcv_ops")
    values = execute.run_model(model, feeds, SAMPLED)  # MMCVRoiAlign runs on graphfix's kernel
    return {name: float(np.abs(values[name] - data[f"expected:{name}"]).max()) for name in SAMPLED}


@pytest.mark.parametrize("target", ["trt8.4", "trt8.5"])
def test_opset_11_sample_is_decomposed_and_matches_torch(target):
    model = _sample()
    result, report = rewrite(model, RULE, target=target)
    assert "grid_sampler" not in op_types(result) and "GridSample" not in op_types(result)
    assert report.passes[0].matches == 3 and report.passes[0].status == "verified"
    assert max(_expected_grid_samples(result).values()) < 1e-5
    _, again = rewrite(result, RULE, target=target)
    assert again.passes[0].matches == 0


def test_opset_16_sample_becomes_gridsample_on_8_5_and_matches_torch():
    result, report = rewrite(_sample(opset=16), RULE, target="trt8.5")
    modes = [
        {a.name: helper.get_attribute_value(a) for a in n.attribute}
        for n in result.graph.node if n.op_type == "GridSample"
    ]
    assert modes == [
        {"mode": b"bilinear", "padding_mode": b"zeros", "align_corners": 0},
        {"mode": b"nearest", "padding_mode": b"border", "align_corners": 1},
        {"mode": b"bilinear", "padding_mode": b"reflection", "align_corners": 0},
    ]
    assert report.passes[0].status == "verified"
    assert max(_expected_grid_samples(result).values()) < 1e-5
    decomposed, _ = rewrite(_sample(opset=16), RULE, target="trt8.4")
    assert "GridSample" not in op_types(decomposed)


def _grid_sampler_model(codes: dict[str, int], rank: int = 4, opset: int = 16) -> onnx.ModelProto:
    x_dims, grid_dims = ([2, 3, 4, 5, 6], [2, 3, 2, 4, 3]) if rank == 5 else ([2, 3, 5, 6], [2, 4, 3, 2])
    node = helper.make_node("grid_sampler", ["x", "grid"], ["y"], domain="mmdeploy", **codes)
    graph = helper.make_graph(
        [node], "grid_sampler",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims),
         helper.make_tensor_value_info("grid", TensorProto.FLOAT, grid_dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, x_dims[:2] + grid_dims[1:-1])],
    )
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("mmdeploy", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


@pytest.mark.parametrize("interpolation, padding, align", list(itertools.product((0, 1, 2), (0, 1, 2), (0, 1))))
def test_every_code_is_verified_against_the_kernel_both_ways(interpolation, padding, align):
    model = _grid_sampler_model({"interpolation_mode": interpolation, "padding_mode": padding, "align_corners": align})
    for target, native in (("trt8.5", True), ("trt8.4", False)):
        result, report = rewrite(model, RULE, target=target, input_ranges=("grid:-1.6,1.6",))
        assert report.passes[0].status == "verified", report.passes[0].detail
        assert report.passes[0].max_abs < 1e-5
        assert (op_types(result) == ["GridSample"]) is native


def test_absent_codes_mean_bilinear_zeros_unaligned():
    result, _ = rewrite(_grid_sampler_model({}), RULE, target="trt8.5")
    [node] = result.graph.node
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"mode": b"bilinear", "padding_mode": b"zeros", "align_corners": 0}


def test_opset_20_spelling_and_the_mode_bug():
    bilinear = _grid_sampler_model({"interpolation_mode": 0}, opset=20)
    result, report = rewrite(bilinear, RULE, target="trt10.16")  # would be read as nearest
    assert "GridSample" not in op_types(result) and report.passes[0].status == "verified"
    nearest = _grid_sampler_model({"interpolation_mode": 1}, opset=20)
    result, _ = rewrite(nearest, RULE, target="trt10.16")
    assert op_types(result) == ["GridSample"]
    attrs = {a.name: helper.get_attribute_value(a) for a in result.graph.node[0].attribute}
    assert attrs["mode"] == b"nearest"


def test_5d_input_is_decomposed_on_8_5():
    model = _grid_sampler_model({"interpolation_mode": 0, "padding_mode": 2}, rank=5)
    result, report = rewrite(model, RULE, target="trt8.5")
    assert "GridSample" not in op_types(result) and report.passes[0].status == "verified"


def test_near_misses():
    _, report = rewrite(_grid_sampler_model({"interpolation_mode": 3}), RULE, target="trt8.5")
    assert report.passes[0].matches == 0
    assert report.passes[0].near_misses[0][2] == "unknown grid_sampler codes interpolation_mode=3, padding_mode=0"
    cubic_5d = _grid_sampler_model({"interpolation_mode": 2}, rank=5)
    _, report = rewrite(cubic_5d, RULE, target="trt8.5", verify=False)
    assert report.passes[0].near_misses[0][2] == "bicubic GridSample is defined for 4-D inputs only"


@pytest.mark.parametrize("target, passes, remaining", [
    ("trt8.5", {"convert_mmcv_grid_sampler": 3, "convert_mmcv_roialign": 1}, []),
    ("trt8.4", {"convert_mmcv_grid_sampler": 3}, ["MMCVRoiAlign"]),  # 8.4: no RoiAlign, no ROIAlign_TRT
])
def test_cli_apply_on_the_sample_verifies_every_pass(target, passes, remaining, tmp_path: Path):
    fixed, report_path = tmp_path / "mmcv_ops.fixed.onnx", tmp_path / "report.json"
    result = graphfix_cli("apply", str(SAMPLES / "mmcv_ops.onnx"), "--target", target, "-o", str(fixed),
                          "--report", str(report_path), "--strict")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    changed = {p["name"]: p for p in report["passes"] if p["matches"]}
    assert {name: p["matches"] for name, p in changed.items()} == passes
    assert all(p["status"] == "verified" for p in changed.values())
    assert all(c["ok"] for c in report["verification"]["final"])
    assert [r["op_type"] for r in report["remaining"]] == remaining  # graphfix check of the result
    model = onnx.load(fixed)
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node if n.domain == "mmdeploy"] == remaining
    assert max(_expected_grid_samples(model).values()) < 1e-5
