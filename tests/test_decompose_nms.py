"""decompose_nms: every NMS backend case exactly, random ties/flips/empties, near misses, subgraphs, samples."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
import pytest
from backend import node_cases, run_in_onnxruntime
from conftest import SAMPLES, parse, run, sample_data
from rulecheck import op_types, rewrite

import graphfix as gf
from graphfix import ir, targets
from graphfix.check import check
from graphfix._loader import load_rules

RULE = "decompose_nms"
NMS_CASES = node_cases("test_nonmaxsuppression")


def save_inputs(path: Path, names: Iterable[str], values: Iterable[np.ndarray]) -> str:
    """The verification inputs as an .npz (NMS thresholds must be valid, so no random feeds)."""
    np.savez(path, **{name: np.asarray(value) for name, value in zip(names, values)})
    return str(path)


def at_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """The same model stamped with a newer opset (NonMaxSuppression's schema is the same from 11)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    next(o for o in copy.opset_import if o.domain in ("", "ai.onnx")).version = opset
    copy.ir_version = 8
    onnx.checker.check_model(copy, full_check=True)
    return copy


@pytest.mark.parametrize("opset", [None, 17], ids=["stamped", "opset17"])
@pytest.mark.parametrize("case", NMS_CASES, ids=lambda c: c.name)
def test_backend_nms_cases_give_the_same_rows_in_the_same_order(case, opset, tmp_path):
    """The cases are stamped at opset 10 (no Range: the Loop-scan form) and re-run at opset 17."""
    model = case.model if opset is None else at_opset(case.model, opset)
    inputs = save_inputs(tmp_path / "inputs.npz", [i.name for i in model.graph.input], case.data_sets[0][0])
    result, report = rewrite(model, RULE, inputs=inputs)
    assert report.passes[0].matches == 1 and report.passes[0].status == "verified"
    assert "NonMaxSuppression" not in op_types(result)
    for feeds, expected in case.data_sets:
        (actual,) = run_in_onnxruntime(result, feeds)
        assert actual.dtype == np.int64
        np.testing.assert_array_equal(actual, expected[0])  # rows and their order
    _, again = rewrite(result, RULE, inputs=inputs)
    assert again.passes[0].matches == 0


def _nms_model(opset: int, center: int, threshold: bool) -> onnx.ModelProto:
    declared, used = (", float[1] score_threshold", ", score_threshold") if threshold else ("", "")
    return parse(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[b, n, 4] boxes, float[b, c, n] scores, int64[1] max_boxes, float[1] iou{declared})
        => (int64[k, 3] selected) {{
        selected = NonMaxSuppression <center_point_box = {center}> (boxes, scores, max_boxes, iou{used})
    }}
    """)


def random_nms_inputs(rng, batches: int, classes: int, count: int, center: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes on a half-unit lattice (many exact ties, duplicates, empty and flipped boxes) and
    quantised scores (ties between boxes), so every tie-break rule is exercised."""
    corner = rng.integers(0, 8, (batches, count, 2)).astype(np.float32) * 0.5
    size = rng.integers(-1, 6, (batches, count, 2)).astype(np.float32) * 0.5
    if center:
        boxes = np.concatenate([corner, size], -1)
    else:
        boxes = np.concatenate([corner, corner + size], -1)[..., [1, 0, 3, 2]]
        flipped = rng.random((batches, count)) < 0.3
        boxes[flipped] = boxes[flipped][:, [2, 3, 0, 1]]
    scores = (rng.integers(0, 5, (batches, classes, count)) / 4 - 0.25 * (rng.random() < 0.3)).astype(np.float32)
    return boxes, scores


@pytest.mark.parametrize("opset", [10, 17])
@pytest.mark.parametrize("center", [0, 1])
@pytest.mark.parametrize("threshold", [True, False], ids=["score_threshold", "no_threshold"])
def test_random_inputs_match_onnxruntime_exactly(opset, center, threshold, rng):
    model = _nms_model(opset, center, threshold)
    result, report = rewrite(model, RULE, verify=False)
    assert report.passes[0].matches == 1
    for _ in range(12):
        boxes, scores = random_nms_inputs(rng, rng.integers(1, 4), rng.integers(1, 4), rng.integers(0, 40), center)
        feeds = {"boxes": boxes, "scores": scores, "max_boxes": np.array([rng.integers(-1, 8)]),
                 "iou": np.array([rng.choice([0.0, 1 / 3, 0.5, 1.0])], np.float32)}
        if threshold:
            feeds["score_threshold"] = np.array([rng.choice([-1.0, 0.0, 0.25, 0.5])], np.float32)
        (expected,), (actual,) = run(model, feeds), run(result, feeds)
        np.testing.assert_array_equal(actual, expected)


def test_only_standard_ops_that_tensorrt_72_imports():
    """Every op of the decomposition (Loop bodies too) has a builtin importer on TensorRT 7.2."""
    result, _ = rewrite(_nms_model(17, 0, True), RULE, verify=False)
    added = set(op_types(result))  # Loop bodies included
    assert added <= targets.resolve_target("trt7.2").importers, added - targets.resolve_target("trt7.2").importers
    loops = [n for n in result.graph.node if n.op_type == "Loop"]
    assert len(loops) == 1 and len(loops[0].input) == 3  # trip count, condition, one carried tensor
    assert not {"NonZero", "CumSum", "GatherElements", "ScatterND"} & added


@pytest.mark.parametrize("target, selected", [
    ("trt7.2", True), ("trt8.0", True), ("trt8.4", True), ("trt-rtx", True), ("trt8.5", False), ("trt10.16", False),
])
def test_targets_without_a_usable_nms_run_the_rule(target, selected):
    rules = gf.select_rules(load_rules(entry_points=False), gf.ApplyOptions(target=target),
                            targets.resolve_target(target))
    assert (RULE in {r.name for r in rules}) is selected


def test_near_misses():
    odd_center = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 8, 4] boxes, float[1, 1, 8] scores) => (int64[k, 3] selected) {
        selected = NonMaxSuppression <center_point_box = 2> (boxes, scores)
    }
    """)
    _, report = rewrite(odd_center, RULE, verify=False)
    assert report.passes[0].near_misses[0][2] == "center_point_box=2 is neither 0 nor 1"
    too_many = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 4000, 4] boxes, float[1, 2, 4000] scores) => (int64[k, 3] selected) {
        selected = NonMaxSuppression (boxes, scores)
    }
    """)
    result, report = rewrite(too_many, RULE, verify=False)
    assert report.passes[0].matches == 0 and "NonMaxSuppression" in op_types(result)
    assert report.passes[0].near_misses[0][2] == "4000 boxes: sorting them needs a TopK above TensorRT's limit of 3840"


def test_rpn_sample_merged_levels_nms():
    model = onnx.load(SAMPLES / "rpn_two_level_nms.onnx")
    npz = SAMPLES / "rpn_two_level_nms.npz"
    result, report = rewrite(model, RULE, inputs=str(npz))
    assert report.passes[0].matches == 1 and report.passes[0].status == "verified"
    assert "NonMaxSuppression" not in op_types(result)
    data = np.load(npz)
    feeds = {k.removeprefix("input:"): data[k] for k in data.files if k.startswith("input:")}
    for name, expected, actual in zip([o.name for o in model.graph.output], run(model, feeds), run(result, feeds)):
        np.testing.assert_array_equal(actual, expected)
        np.testing.assert_allclose(actual, data[f"torch:{name}"], rtol=1e-5, atol=1e-5)


def test_maskrcnn_nms_inside_if_branches():
    """Both NonMaxSuppression nodes sit in If else-branches: rewritten there, verified end to end."""
    model = onnx.load(SAMPLES / "maskrcnn_tiny.onnx")
    npz = SAMPLES / "maskrcnn_tiny.npz"
    result, report = rewrite(model, RULE, inputs=str(npz))
    assert op_types(model).count("NonMaxSuppression") == 2 and "NonMaxSuppression" not in op_types(result)
    assert report.passes[0].matches == 2 and report.passes[0].status == "verified"
    assert report.passes[0].detail == "by the end-to-end run"
    data = np.load(npz)
    feeds = {k.removeprefix("input:"): data[k] for k in data.files if k.startswith("input:")}
    expected, actual = run(model, feeds), run(result, feeds)
    assert expected[0].shape[0] == 6  # boxes survive both NMS stages, so the NMS outputs are not empty
    for want, got in zip(expected, actual):
        np.testing.assert_array_equal(got, want)
    _, again = rewrite(result, RULE, inputs=str(npz))
    assert again.passes[0].matches == 0


def test_tensorrt_72_pipeline_converts_the_decomposition_down_to_opset_11():
    """TensorRT 7.2 reads ReduceSum's axes only as an attribute (opset 11): convert_opset_down must
    be able to take the decomposition there, Loop body included, and the result stays exact."""
    model = onnx.load(SAMPLES / "rpn_two_level_nms.onnx")
    # Not verified by graphfix here: it checks each pass's regions under the final opset (11),
    # which the opset-17 decomposition does not parse at; the outputs are compared below.
    result, report = rewrite(model, RULE, "convert_opset_down", target="trt7.2", verify=False)
    assert [p.matches for p in report.passes] == [1, 1]
    assert next(o.version for o in result.opset_import if o.domain == "") == 11
    findings = check(ir.Model(graph=ir.import_proto(result), source=result), targets.resolve_target("trt7.2"),
                     load_rules(entry_points=False).rules.values())
    assert not {f.limitation for f in findings.errors} & {"reduce.axes_input_ignored", "nms.missing"}
    feeds, data = sample_data("rpn_two_level_nms")
    for expected, actual in zip(run(model, feeds), run(result, feeds)):
        np.testing.assert_array_equal(actual, expected)
