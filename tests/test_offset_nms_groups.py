"""offset_nms_groups: the two-level RPN sample equals PyTorch's per-level batched_nms, the pass is verified
against the rule's reference (and a wrong rewrite is rolled back by it), three dynamic groups with
negative coordinates, limits and thresholds at opsets 11 and 17, near misses, opt-in."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from conftest import SAMPLES, parse, run
from rulecheck import op_types, rewrite

from graphfix import api
from graphfix._loader import load_rules
from graphfix.kernels.nms import per_group_nms

RULE = "offset_nms_groups"
VERIFIED_BY_REFERENCE = "against the rule's reference semantics"


def _rpn() -> tuple[onnx.ModelProto, np.lib.npyio.NpzFile]:
    return onnx.load(SAMPLES / "rpn_two_level_nms.onnx"), np.load(SAMPLES / "rpn_two_level_nms.npz")


def test_rpn_sample_keeps_exactly_what_per_level_batched_nms_keeps():
    model, data = _rpn()
    outputs = dict(zip((o.name for o in model.graph.output), run(model, {"image": data["input:image"]})))
    assert not np.array_equal(outputs["keep"], data["reference:per_level_keep"]), "the export merges the levels"
    result, report = rewrite(model, RULE, inputs=str(SAMPLES / "rpn_two_level_nms.npz"))
    assert report.passes[0].matches == 1
    assert report.passes[0].status == "verified" and report.passes[0].detail == VERIFIED_BY_REFERENCE
    fixed = dict(zip((o.name for o in result.graph.output), run(result, {"image": data["input:image"]})))
    np.testing.assert_array_equal(fixed["keep"], data["reference:per_level_keep"])  # in order, after [:40]
    np.testing.assert_allclose(fixed["boxes"], data["reference:per_level_boxes"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(fixed["scores"], data["reference:per_level_scores"], rtol=1e-5, atol=1e-6)
    _, again = rewrite(result, RULE)
    assert again.passes[0].matches == 0


def test_reference_reproduces_torchvision_on_the_sample_boxes():
    _, data = _rpn()
    boxes, scores = data["reference:boxes_before_nms"], data["reference:scores_before_nms"]
    levels = data["reference:level_ids"]
    rows = per_group_nms(boxes[None], scores[None, None], levels, limit=2**62,
                         iou_threshold=float(data["reference:iou_threshold"]), score_threshold=None)
    np.testing.assert_array_equal(rows[: int(data["reference:max_boxes"]), 2], data["reference:per_level_keep"])


def test_a_rewrite_that_keeps_merging_is_rolled_back_by_the_reference():
    offset = load_rules(entry_points=False).rules[RULE]
    merging = dataclasses.replace(
        offset, name="merging_nms", opt_in=False,
        rewrite_fn=lambda op, nms: op.NonMaxSuppression(*nms.inputs, center_point_box=0),
    )
    model, _ = _rpn()
    _, report = rewrite(model, "merging_nms", extra_rules=(merging,), inputs=str(SAMPLES / "rpn_two_level_nms.npz"))
    assert report.passes[0].status == "rolled back"
    assert "changed /NonMaxSuppression_output_0" in report.passes[0].detail


def _three_groups(opset: int) -> onnx.ModelProto:
    unsqueeze = "Unsqueeze <axes = [0]> ({x})" if opset < 13 else "Unsqueeze ({x}, zero)"
    return parse(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[a, 4] b0, float[b, 4] b1, float[c, 4] b2, float[a] s0, float[b] s1, float[c] s2)
        => (int64[k, 3] selected) {{
        zero = Constant <value = int64[1] {{0}}> ()
        limit = Constant <value = int64[1] {{20}}> ()
        iou = Constant <value = float[1] {{0.3}}> ()
        threshold = Constant <value = float[1] {{-0.5}}> ()
        boxes = Concat <axis = 0> (b0, b1, b2)
        scores = Concat <axis = 0> (s0, s1, s2)
        boxes3 = {unsqueeze.format(x="boxes")}
        scores2 = {unsqueeze.format(x="scores")}
        scores3 = {unsqueeze.format(x="scores2")}
        nms_boxes = Cast <to = 1> (boxes3)
        nms_scores = Cast <to = 1> (scores3)
        selected = NonMaxSuppression (nms_boxes, nms_scores, limit, iou, threshold)
    }}
    """)


def _random_groups(rng: np.random.Generator, sizes) -> dict[str, np.ndarray]:
    """Boxes with negative coordinates and either corner order, heavily overlapping across groups."""
    feeds = {}
    for index, size in enumerate(sizes):
        corner = rng.uniform(-30, 10, (size, 2))
        extent = rng.uniform(-15, 25, (size, 2))
        feeds[f"b{index}"] = np.concatenate([corner, corner + extent], axis=1).astype(np.float32)
        feeds[f"s{index}"] = rng.uniform(-1, 1, size).astype(np.float32)
    return feeds


@pytest.mark.parametrize("opset", [11, 17])
def test_three_dynamic_groups_with_limit_and_threshold(opset, rng):
    model = _three_groups(opset)
    result, report = rewrite(model, RULE, input_ranges=tuple(f"b{i}:-30,30" for i in range(3)))
    assert report.passes[0].status == "verified" and report.passes[0].detail == VERIFIED_BY_REFERENCE
    for sizes in ((7, 0, 12), (25, 18, 30)):
        feeds = _random_groups(rng, sizes)
        boxes = np.concatenate([feeds[f"b{i}"] for i in range(3)])[None]
        scores = np.concatenate([feeds[f"s{i}"] for i in range(3)])[None, None]
        group_of = np.repeat(np.arange(3), sizes)
        expected = per_group_nms(boxes, scores, group_of, limit=20, iou_threshold=0.3, score_threshold=-0.5)
        np.testing.assert_array_equal(run(result, feeds)[0], expected)
        if sizes == (25, 18, 30):
            assert not np.array_equal(run(model, feeds)[0], expected), "merging must matter on this data"


def test_opt_in_and_near_misses():
    rules, target = load_rules(entry_points=False), api.resolve_target("trt10.16")
    chosen = api.select_rules(rules, api.ApplyOptions(), target)
    enabled = api.select_rules(rules, api.ApplyOptions(enable=(RULE,)), target)
    assert RULE not in {r.name for r in chosen} and RULE in {r.name for r in enabled}
    maskrcnn = onnx.load(SAMPLES / "maskrcnn_tiny.onnx")  # NMS of already-offset boxes, inside If bodies
    result, report = rewrite(maskrcnn, RULE, verify=False)
    assert report.passes[0].matches == 0 and op_types(result).count("NonMaxSuppression") == 2
    assert report.passes[0].near_misses[0][2].startswith("expected Concat, found Add")
    center = _three_groups(17)
    next(n for n in center.graph.node if n.op_type == "NonMaxSuppression").attribute.append(
        onnx.helper.make_attribute("center_point_box", 1))
    _, report = rewrite(center, RULE)
    assert report.passes[0].near_misses[0][2] == "center_point_box=1: shifting the boxes would shift their sizes too"
