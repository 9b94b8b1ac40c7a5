"""set_roialign_sampling_ratio: backend cases (attribute present: near misses; removed: fixed), opset 10
and 16, the Mask R-CNN sample as committed (near miss) and with the attribute stripped (fixed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from backend import node_cases, run_in_onnxruntime
from conftest import SAMPLES, parse, run
from onnx import helper
from rulecheck import check_backend_case, op_types, rewrite

RULE = "set_roialign_sampling_ratio"
ROIALIGN_CASES = node_cases("test_roialign")


def _sampling_ratios(model: onnx.ModelProto) -> list[int | None]:
    return [
        next((helper.get_attribute_value(a) for a in n.attribute if a.name == "sampling_ratio"), None)
        for n in model.graph.node if n.op_type == "RoiAlign"
    ]


def _without_sampling_ratio(model: onnx.ModelProto) -> onnx.ModelProto:
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    for node in stripped.graph.node:
        if node.op_type == "RoiAlign":
            kept = [a for a in node.attribute if a.name != "sampling_ratio"]
            del node.attribute[:]
            node.attribute.extend(kept)
    return stripped


@pytest.mark.parametrize("case", ROIALIGN_CASES, ids=lambda c: c.name)
def test_backend_cases_write_sampling_ratio_and_are_near_misses(case, tmp_path):
    _, report = check_backend_case(case, RULE, target="trt8.5")
    assert report.passes[0].matches == 0 and report.passes[0].near_misses[0][2] == "sampling_ratio is written (2)"
    stripped = _without_sampling_ratio(case.model)
    inputs = [np.asarray(v) for v in case.data_sets[0][0]]
    fixed, report = rewrite(stripped, RULE, target="trt8.5", inputs=_saved(tmp_path, stripped, inputs))
    assert _sampling_ratios(fixed) == [0] and report.passes[0].status == "verified"
    np.testing.assert_array_equal(run_in_onnxruntime(fixed, inputs)[0], run_in_onnxruntime(stripped, inputs)[0])
    _, again = rewrite(fixed, RULE, target="trt8.5")
    assert again.passes[0].matches == 0


def _saved(folder: Path, model: onnx.ModelProto, inputs) -> str:
    """Verification inputs (random ROIs with x2 < x1 overflow onnxruntime's adaptive sampling count)."""
    path = folder / "inputs.npz"
    np.savez(path, **dict(zip((i.name for i in model.graph.input), inputs)))
    return str(path)


def _roialign_model(opset: int, sampling: str) -> onnx.ModelProto:
    return parse(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[1, 2, 16, 16] x, float[3, 4] rois, int64[3] batch) => (float[3, 2, 2, 2] y) {{
        y = RoiAlign <output_height = 2, output_width = 2, spatial_scale = 0.5{sampling}> (x, rois, batch)
    }}
    """)


@pytest.mark.parametrize("opset", [10, 16])
def test_adaptive_sampling_is_kept_and_differs_from_what_tensorrt_would_use(opset, rng, tmp_path):
    model = _roialign_model(opset, "")
    feeds = {"x": rng.standard_normal((1, 2, 16, 16)).astype(np.float32),
             "rois": np.array([[0, 0, 30, 30], [4, 2, 20, 26], [1, 1, 3, 2]], np.float32),
             "batch": np.zeros(3, np.int64)}
    result, report = rewrite(model, RULE, target="trt10.16", inputs=_saved(tmp_path, model, feeds.values()))
    assert _sampling_ratios(result) == [0] and report.passes[0].status == "verified"
    fixed = run(result, feeds)[0]
    np.testing.assert_array_equal(fixed, run(model, feeds)[0])
    one_sample = run(_roialign_model(opset, ", sampling_ratio = 1"), feeds)[0]  # TensorRT's reading
    assert np.abs(fixed - one_sample).max() > 1e-2


def test_maskrcnn_sample_writes_it_and_is_fixed_when_stripped():
    model = onnx.load(SAMPLES / "maskrcnn_tiny.onnx")
    assert _sampling_ratios(model) == [2] * 6
    _, report = rewrite(model, RULE, target="trt8.5")
    assert report.passes[0].matches == 0 and report.passes[0].near_misses[0][2] == "sampling_ratio is written (2)"
    stripped = _without_sampling_ratio(model)
    result, report = rewrite(stripped, RULE, target="trt8.5")
    assert _sampling_ratios(result) == [0] * 6 and op_types(result).count("RoiAlign") == 6
    assert report.passes[0].matches == 6 and report.passes[0].status == "verified"
    assert all(c.ok and c.max_abs == 0 for c in report.verification.final)
