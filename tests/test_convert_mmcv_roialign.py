"""convert_mmcv_roialign: the mmcv_ops sample (ROIAlign_TRT at opset 11, RoiAlign-16 half_pixel at opset 16)
against torchvision's roi_align, aligned=0 as output_half_pixel on hard ROIs, the plugin option, near misses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import SAMPLES, sample_data
from onnx import TensorProto, helper
from rulecheck import op_types, rewrite

from graphfix import execute
from graphfix.targets import TRT_PLUGIN_DOMAIN

RULE = "convert_mmcv_roialign"
# Column 0 is the batch index; then x1, y1, x2, y2 in input pixels: ordinary, smaller than a feature
# pixel, partly outside, zero-size, reversed corners, and a fractional batch index (truncated).
HARD_ROIS = np.array(
    [[0, 1, 1, 12, 10], [1, 4.4, 6.2, 5.2, 6.6], [0, -6, -4, 8, 40], [1, 14, 14, 14, 14], [0, 10, 10, 6, 4],
     [1.7, 0.2, 0.4, 0.8, 1.8]],
    np.float32,
)


def _sample(opset: int | None = None) -> onnx.ModelProto:
    model = onnx.load(SAMPLES / "mmcv_ops.onnx")
    if opset is not None:  # its standard ops mean the same at 11 and 16
        next(o for o in model.opset_import if o.domain == "").version = opset
    return model


def _roi_feats_error(model: onnx.ModelProto) -> float:
    """Max abs error of roi_feats against torchvision.ops.roi_align(aligned=True) (npz expected:roi_feats)."""
    feeds, data = sample_data("mmcv_ops")
    values = execute.run_model(model, feeds, ["roi_feats"])  # grid_sampler / plugin nodes run on kernels
    return float(np.abs(values["roi_feats"] - data["expected:roi_feats"]).max())


def _node(model: onnx.ModelProto, op_type: str) -> tuple[onnx.NodeProto, dict]:
    node = next(n for n in model.graph.node if n.op_type == op_type)
    return node, {a.name: helper.get_attribute_value(a) for a in node.attribute}


def test_opset_11_sample_becomes_the_plugin_on_8_5_and_matches_torchvision():
    result, report = rewrite(_sample(), RULE, target="trt8.5")
    assert "MMCVRoiAlign" not in op_types(result)
    assert report.passes[0].matches == 1 and report.passes[0].status == "verified"
    node, attrs = _node(result, "ROIAlign_TRT")
    assert node.domain == TRT_PLUGIN_DOMAIN
    assert attrs == {"coordinate_transformation_mode": 1, "mode": 1, "output_height": 4, "output_width": 4,
                     "sampling_ratio": 2, "spatial_scale": 0.5}
    assert _roi_feats_error(result) < 1e-5
    _, again = rewrite(result, RULE, target="trt8.5")
    assert again.passes[0].matches == 0


def test_opset_16_sample_becomes_half_pixel_roialign_and_matches_torchvision():
    result, report = rewrite(_sample(opset=16), RULE, target="trt8.5")
    assert report.passes[0].status == "verified"
    _, attrs = _node(result, "RoiAlign")
    assert attrs == {"coordinate_transformation_mode": b"half_pixel", "mode": b"avg", "output_height": 4,
                     "output_width": 4, "sampling_ratio": 2, "spatial_scale": 0.5}
    assert _roi_feats_error(result) < 1e-5


def test_half_pixel_below_opset_16_without_the_plugin_is_a_near_miss():
    result, report = rewrite(_sample(), RULE)  # portable: TensorRT 7.2-8.4 have no ROIAlign_TRT
    assert "MMCVRoiAlign" in op_types(result) and report.passes[0].matches == 0
    assert report.passes[0].near_misses[0][2] == (
        "aligned=1 (half_pixel) needs RoiAlign-16 but the model is opset 11, and portable (every profile) "
        "has no ROIAlign_TRT plugin")


def _roialign_model(opset: int, **attrs) -> onnx.ModelProto:
    node = helper.make_node("MMCVRoiAlign", ["features", "rois"], ["y"], domain="mmdeploy", **attrs)
    height, width = attrs.get("output_height", 7), attrs.get("output_width", 7)
    graph = helper.make_graph(
        [node], "roialign",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [2, 3, 9, 11]),
         helper.make_tensor_value_info("rois", TensorProto.FLOAT, ["r", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["r", 3, height, width])],
    )
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("mmdeploy", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


@pytest.fixture
def hard_inputs(tmp_path: Path, rng) -> str:
    path = tmp_path / "inputs.npz"
    np.savez(path, features=rng.standard_normal((2, 3, 9, 11)).astype(np.float32), rois=HARD_ROIS)
    return str(path)


@pytest.mark.parametrize("opset, aligned, sampling_ratio, form", [
    (11, 0, 0, "RoiAlign"), (11, 0, 2, "RoiAlign"), (16, 0, 0, "RoiAlign"), (16, 1, 0, "RoiAlign"),
    (16, 1, 3, "RoiAlign"), (11, 1, 2, "ROIAlign_TRT"),
])
def test_aligned_both_ways_on_hard_rois_is_verified_against_mmcv(opset, aligned, sampling_ratio, form, hard_inputs):
    model = _roialign_model(opset, output_height=3, output_width=4, spatial_scale=0.75, sampling_ratio=sampling_ratio,
                            mode="avg", aligned=aligned)
    result, report = rewrite(model, RULE, target="trt8.5", inputs=hard_inputs)
    assert form in op_types(result)
    assert report.passes[0].status == "verified" and report.passes[0].max_abs < 1e-5
    if form == "RoiAlign":
        _, attrs = _node(result, "RoiAlign")
        expected = {16: b"half_pixel" if aligned else b"output_half_pixel", 11: None}[opset]
        assert attrs.get("coordinate_transformation_mode") == expected


def test_plugin_option(hard_inputs):
    model = _roialign_model(16, output_height=2, output_width=2, sampling_ratio=0, aligned=0)
    result, report = rewrite(model, RULE, target="trt10.0", inputs=hard_inputs, rule_options=(f"{RULE}.plugin=true",))
    node, attrs = _node(result, "ROIAlign_TRT")
    assert attrs["coordinate_transformation_mode"] == 0 and report.passes[0].status == "verified"
    cast = next(n for n in result.graph.node if n.output[0] == node.input[2])
    assert cast.op_type == "Cast" and helper.get_attribute_value(cast.attribute[0]) == TensorProto.INT32


def test_near_misses():
    max_mode = _roialign_model(16, mode="max")
    _, report = rewrite(max_mode, RULE, target="trt8.5")
    assert report.passes[0].near_misses[0][2].startswith("mode 'max': mmcv pools the maximum of interpolated values")
    empty_bins = _roialign_model(11, sampling_ratio=0, aligned=1)
    _, report = rewrite(empty_bins, RULE, target="trt8.5")
    assert report.passes[0].near_misses[0][2].startswith("ROIAlign_TRT averages an empty bin to NaN (mmcv: 0)")
    no_plugin = _roialign_model(16, sampling_ratio=2)
    _, report = rewrite(no_plugin, RULE, target="trt8.4", rule_options=(f"{RULE}.plugin=true",))
    assert report.passes[0].near_misses[0][2] == "TensorRT 8.4 has no ROIAlign_TRT plugin"
