"""fix_gridsample_mode: opset-20 linear/cubic nodes are decomposed, honoured spellings are near misses,
the Deformable-DETR sample at opset 16 (untouched) and converted to opset 20 (fixed, matches torch)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.version_converter
import pytest
from backend import node_cases
from conftest import SAMPLES, run
from rulecheck import check_backend_case, op_types, rewrite

from graphfix import targets

RULE = "fix_gridsample_mode"
GRIDSAMPLE_CASES = node_cases("test_gridsample")


def _mode_of(node: onnx.NodeProto) -> str | None:
    return next((a.s.decode() for a in node.attribute if a.name == "mode"), None)


@pytest.mark.parametrize("case", GRIDSAMPLE_CASES, ids=lambda c: c.name)
def test_backend_gridsample_cases(case):
    mode = _mode_of(case.model.graph.node[0])
    result, report = check_backend_case(case, RULE, target="trt8.5")  # compares with the case's outputs
    if mode in ("linear", "cubic"):
        assert "GridSample" not in op_types(result)
        assert report.passes[0].matches == 1 and report.passes[0].status == "verified"
        _, again = rewrite(result, RULE, target="trt8.5")
        assert again.passes[0].matches == 0
        return
    assert op_types(result) == ["GridSample"] and report.passes[0].matches == 0
    reason = report.passes[0].near_misses[0][2]
    if mode is None:
        assert reason == "no mode attribute: TensorRT imports it as bilinear, the ONNX default"
    else:
        assert reason == f"mode {mode!r} is a spelling TensorRT honours"


def test_rule_runs_on_every_target_with_the_bug():
    needing = [name for name in ("trt8.4", "trt8.5", "trt8.6", "trt10.0", "trt10.16", "trt11")
               if targets.resolve_target(name).is_active("gridsample.mode_string_ignored")]
    assert needing == ["trt8.5", "trt8.6", "trt10.0", "trt10.16", "trt11"]


def _detr_inputs() -> tuple[dict[str, np.ndarray], np.lib.npyio.NpzFile]:
    data = np.load(SAMPLES / "deformable_detr_tiny_f32.npz")
    return {k.removeprefix("input:"): data[k] for k in data.files if k.startswith("input:")}, data


def test_opset_16_sample_keeps_its_bilinear_gridsamples():
    model = onnx.load(SAMPLES / "deformable_detr_tiny_f32.onnx")
    result, report = rewrite(model, RULE, target="trt10.16")
    assert op_types(result).count("GridSample") == 6 and report.passes[0].matches == 0
    assert report.passes[0].near_misses[0][2] == "mode 'bilinear' is a spelling TensorRT honours"


def test_sample_converted_to_opset_20_is_fixed_and_matches_torch():
    """onnx's version converter writes "linear", as PyTorch's opset-20 exporter does."""
    model = onnx.version_converter.convert_version(onnx.load(SAMPLES / "deformable_detr_tiny_f32.onnx"), 20)
    assert {_mode_of(n) for n in model.graph.node if n.op_type == "GridSample"} == {"linear"}
    result, report = rewrite(model, RULE, target="trt10.16")
    assert "GridSample" not in op_types(result)
    assert report.passes[0].matches == 6 and report.passes[0].status == "verified"
    feeds, data = _detr_inputs()
    for output, value in zip(result.graph.output, run(result, feeds)):
        np.testing.assert_allclose(value, data[f"torch:{output.name}"], rtol=1e-4, atol=1e-4)
    _, again = rewrite(result, RULE, target="trt10.16")
    assert again.passes[0].matches == 0
