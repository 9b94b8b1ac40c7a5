"""emit_efficient_nms: EfficientNMS_TRT (reference kernel) plus the rebuild equals ONNX NMS exactly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from backend import node_cases
from conftest import SAMPLES, parse, run
from rulecheck import op_types, rewrite
from test_decompose_nms import at_opset, random_nms_inputs, save_inputs

import graphfix as gf
from graphfix import execute, ir
from graphfix.targets import TRT_PLUGIN_DOMAIN, TRT_PLUGIN_DOMAIN_VERSION

RULE = "emit_efficient_nms"
PLUGIN = "EfficientNMS_TRT"
NMS_CASES = node_cases("test_nonmaxsuppression")


def with_constant_parameters(case) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The case's model with max_output_boxes_per_class, iou and score thresholds as initializers
    (plugin fields must be constants), and its boxes/scores feeds."""
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    inputs = dict(zip([i.name for i in model.graph.input], case.data_sets[0][0]))
    kept = [i for i in model.graph.input if i.name in ("boxes", "scores")]
    model.graph.initializer.extend(onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in inputs.items()
                                   if k not in ("boxes", "scores"))
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return model, {"boxes": np.asarray(inputs["boxes"]), "scores": np.asarray(inputs["scores"])}


def _plugin_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == PLUGIN]


@pytest.mark.parametrize("opset", [None, 17], ids=["stamped", "opset17"])
@pytest.mark.parametrize("case", NMS_CASES, ids=lambda c: c.name)
def test_backend_nms_cases_through_the_plugin_kernel(case, opset, tmp_path):
    model, feeds = with_constant_parameters(case)
    model = model if opset is None else at_opset(model, opset)
    inputs = save_inputs(tmp_path / "inputs.npz", feeds, feeds.values())
    result, report = rewrite(model, RULE, target="trt8.6", inputs=inputs)
    assert report.passes[0].matches == 1 and report.passes[0].status == "verified"
    [plugin] = _plugin_nodes(result)
    assert plugin.domain == TRT_PLUGIN_DOMAIN
    assert onnx.helper.make_opsetid(TRT_PLUGIN_DOMAIN, TRT_PLUGIN_DOMAIN_VERSION) in result.opset_import
    actual = execute.run_model(result, feeds)[result.graph.output[0].name]
    np.testing.assert_array_equal(actual, case.data_sets[0][1][0])
    _, again = rewrite(result, RULE, target="trt8.6", inputs=inputs)
    assert again.passes[0].matches == 0


def test_plugin_fields_follow_the_plugin_readme():
    case = next(c for c in NMS_CASES if c.name == "test_nonmaxsuppression_two_classes")
    model, _ = with_constant_parameters(case)  # 2 classes x 6 boxes, iou 0.5, score_threshold 0
    result, _ = rewrite(model, RULE, target="trt8.0", verify=False)
    [plugin] = _plugin_nodes(result)
    fields = {a.name: onnx.helper.get_attribute_value(a) for a in plugin.attribute}
    assert fields == {"score_threshold": 0.0, "iou_threshold": pytest.approx(0.5), "max_output_boxes": 12,
                      "background_class": -1, "score_activation": 0, "box_coding": 0}
    # IoU >= the field <=> IoU > 0.5
    assert np.float32(fields["iou_threshold"]) == np.nextafter(np.float32(0.5), np.float32(1))
    assert [a.type for a in plugin.attribute if a.name == "max_output_boxes"] == [onnx.AttributeProto.INT]
    assert len(plugin.input) == 2 and len(plugin.output) == 4


def _constant_nms(opset: int, center: int, iou: float, threshold: float | None) -> onnx.ModelProto:
    nms = f"selected = NonMaxSuppression <center_point_box = {center}>"
    if threshold is None:  # scores through a Sigmoid: provably >= 0
        body = f"s = Sigmoid(scores)\n {nms} (boxes, s, max_boxes, iou)"
    else:
        body = f"t = Constant <value = float[1] {{{threshold!r}}}> ()\n {nms} (boxes, scores, max_boxes, iou, t)"
    return parse(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[b, 30, 4] boxes, float[b, 3, 30] scores, int64[1] max_boxes) => (int64[k, 3] selected) {{
        iou = Constant <value = float[1] {{{iou!r}}}> ()
        {body}
    }}
    """)


@pytest.mark.parametrize("opset", [10, 17])
@pytest.mark.parametrize("center", [0, 1])
@pytest.mark.parametrize("iou, threshold", [(0.0, None), (1 / 3, 0.0), (0.5, 0.25), (1.0, 0.5)])
def test_random_inputs_match_onnx_nms_exactly(opset, center, iou, threshold, rng):
    """Lattice boxes: duplicates, empty and flipped boxes, exact IoU ties, equal scores."""
    model = _constant_nms(opset, center, float(np.float32(iou)), threshold)
    result, report = rewrite(model, RULE, target="trt8.6", verify=False)
    assert report.passes[0].matches == 1
    for _ in range(8):
        boxes, scores = random_nms_inputs(rng, rng.integers(1, 3), 3, 30, center)
        feeds = {"boxes": boxes, "scores": np.abs(scores), "max_boxes": np.array([rng.integers(-1, 40)])}
        actual = execute.run_model(result, feeds)[result.graph.output[0].name]
        np.testing.assert_array_equal(actual, run(model, feeds)[0])


def test_rpn_sample_keeps_its_indices():
    """torchvision-style `keep = nms(...)[:40]` with the indices as an output: rebuilt exactly."""
    model = onnx.load(SAMPLES / "rpn_two_level_nms.onnx")
    npz = SAMPLES / "rpn_two_level_nms.npz"
    result, report = rewrite(model, RULE, target="trt8.4", inputs=str(npz))
    assert report.passes[0].matches == 1 and report.passes[0].status == "verified"
    assert len(_plugin_nodes(result)) == 1 and "NonMaxSuppression" not in op_types(result)
    data = np.load(npz)
    feeds = {k.removeprefix("input:"): data[k] for k in data.files if k.startswith("input:")}
    expected, actual = execute.run_model(model, feeds), execute.run_model(result, feeds)
    for output in model.graph.output:
        np.testing.assert_array_equal(actual[output.name], expected[output.name])
    np.testing.assert_array_equal(actual["keep"], data["torch:keep"])


def test_maskrcnn_boxes_counts_are_data_dependent():
    model = onnx.load(SAMPLES / "maskrcnn_tiny.onnx")
    _, report = rewrite(model, RULE, target="trt8.6", verify=False)
    assert report.passes[0].matches == 0
    assert report.passes[0].near_misses[0][2] == ("the class or box count is not static: max_output_boxes must be "
                                                  "a constant")


def _graph_input_iou() -> onnx.ModelProto:
    return parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 6, 4] boxes, float[1, 1, 6] scores, float[1] iou) => (int64[k, 3] selected) {
        m = Constant <value = int64[1] {3}> ()
        t = Constant <value = float[1] {0}> ()
        selected = NonMaxSuppression (boxes, scores, m, iou, t)
    }
    """)


def _shaped(boxes: int, classes: int, extra: str = "t = Constant <value = float[1] {0}> ()", score: str = ", t",
            iou: str = "0.5") -> onnx.ModelProto:
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, {boxes}, 4] boxes, float[1, {classes}, {boxes}] scores) => (int64[k, 3] selected) {{
        m = Constant <value = int64[1] {{3}}> ()
        i = Constant <value = float[1] {{{iou}}}> ()
        {extra}
        selected = NonMaxSuppression (boxes, scores, m, i{score})
    }}
    """)


@pytest.mark.parametrize("model, target, reason", [
    (lambda: _shaped(6, 1), "trt7.2", "TensorRT 7.2 has no EfficientNMS_TRT plugin (TensorRT >= 8.0 ships it)"),
    (lambda: _shaped(6, 1), "portable",
     "portable (every profile) has no EfficientNMS_TRT plugin (TensorRT >= 8.0 ships it)"),
    (_graph_input_iou, "trt8.6", "iou is computed at run time: plugin fields must be constants"),
    (lambda: _shaped(6, 1, iou="1.5"), "trt8.6", "iou_threshold 1.5 is outside [0, 1]"),
    (lambda: _shaped(6, 1, extra="", score=""), "trt8.6",
     "no score_threshold >= 0 and the scores are not provably >= 0: the plugin ranks negative scores last, at -32768"),
    (lambda: _shaped(1100, 4), "trt8.4",
     "4 classes x 1100 boxes = 4400 candidates: the plugin considers only the first 4096 per image"),
    (lambda: _shaped(1100, 4), "trt8.6",
     "4400 detections to sort back into classes: above TensorRT's TopK limit of 3840"),
])
def test_near_misses(model, target, reason):
    result, report = rewrite(model(), RULE, target=target, verify=False)
    assert report.passes[0].matches == 0 and "NonMaxSuppression" in op_types(result)
    assert report.passes[0].near_misses[0][2] == reason


def test_candidate_limit_option_for_jetson(tmp_path):
    _, report = rewrite(_shaped(700, 3), RULE, target="trt8.6", verify=False,
                        rule_options=("emit_efficient_nms.max_candidates=2000",))
    assert report.passes[0].near_misses[0][2] == ("3 classes x 700 boxes = 2100 candidates: the plugin considers "
                                                  "only the first 2000 per image")


def test_enabled_on_trt84_runs_before_the_default_lowering():
    """The user's flow: --enable emit_efficient_nms --target trt8.4 (decompose_nms is a default there)."""
    model = ir.load(SAMPLES / "rpn_two_level_nms.onnx")
    options = gf.ApplyOptions(target="trt8.4", enable=(RULE,), entry_points=False,
                              inputs=str(SAMPLES / "rpn_two_level_nms.npz"))
    report = gf.apply(model, options)
    names = [p.name for p in report.passes]
    assert names.index(RULE) < names.index("decompose_nms")
    [emitted] = [p for p in report.passes if p.name == RULE]
    assert emitted.matches == 1 and emitted.status == "verified"
    assert next(p for p in report.passes if p.name == "decompose_nms").matches == 0
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
