"""offset_nms_by_group_ids: per-group NMS from a user-named group-id tensor, on the RPN sample and
on per-class labels; verified against the rule's reference; near misses; opt-in."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import SAMPLES, parse, run
from onnx import helper
from rulecheck import rewrite

RULE = "offset_nms_by_group_ids"


def _rpn_with_level_ids(tmp_path):
    """The two-level RPN sample, with each box's level fed as a graph input `level_ids`."""
    model = onnx.load(SAMPLES / "rpn_two_level_nms.onnx")
    model.graph.input.append(helper.make_tensor_value_info("level_ids", onnx.TensorProto.INT64, [64]))
    data = np.load(SAMPLES / "rpn_two_level_nms.npz")
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, **{"input:image": data["input:image"], "input:level_ids": data["reference:level_ids"]})
    return model, data, inputs


def test_rpn_levels_named_by_the_user_match_per_level_batched_nms(tmp_path):
    model, data, inputs = _rpn_with_level_ids(tmp_path)
    result, report = rewrite(model, RULE, inputs=str(inputs), rule_options=(f"{RULE}.group_ids=level_ids",))
    [nms] = report.passes
    assert nms.matches == 1 and nms.status == "verified" and nms.detail == "against the rule's reference semantics"
    feeds = {"image": data["input:image"], "level_ids": data["reference:level_ids"]}
    keep = dict(zip((o.name for o in result.graph.output), run(result, feeds)))["keep"]
    np.testing.assert_array_equal(keep, data["reference:per_level_keep"])
    _, again = rewrite(result, RULE, inputs=str(inputs), rule_options=(f"{RULE}.group_ids=level_ids",))
    assert again.passes[0].matches == 0
    assert again.passes[0].near_misses[0][2] == "the boxes are already shifted by this rule"


CLASSES = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,12,4] boxes, float[1,1,12] scores, float[12] labels) => (int64[?,3] keep) {
    limit = Constant <value = int64[1] {100}> ()
    iou = Constant <value = float[1] {0.3}> ()
    keep = NonMaxSuppression (boxes, scores, limit, iou)
}
"""


def test_per_class_nms_from_float_labels_near_misses_and_opt_in(tmp_path, rng):
    corners = rng.uniform(0, 20, (1, 12, 2)).astype(np.float32)
    boxes = np.concatenate([corners, corners + rng.uniform(5, 15, (1, 12, 2)).astype(np.float32)], axis=-1)
    inputs = tmp_path / "classes.npz"
    np.savez(inputs, **{"input:boxes": boxes, "input:scores": rng.uniform(0, 1, (1, 1, 12)).astype(np.float32),
                        "input:labels": rng.integers(0, 3, 12).astype(np.float32)})
    model = parse(CLASSES)
    result, report = rewrite(model, RULE, inputs=str(inputs), rule_options=(f"{RULE}.group_ids=labels",))
    assert report.passes[0].status == "verified"
    _, unset = rewrite(model, RULE)
    assert "name the group-id tensor" in unset.passes[0].near_misses[0][2]
    _, missing = rewrite(model, RULE, rule_options=(f"{RULE}.group_ids=nope",))
    assert "no tensor named 'nope'" in missing.passes[0].near_misses[0][2]
    from graphfix._loader import load_rules

    assert load_rules(entry_points=False).rules[RULE].opt_in
