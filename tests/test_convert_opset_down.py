"""convert_opset_down: Reduce* backend cases, the opset-18 sample, kept/adapted nodes, refusals."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from backend import node_cases, onnxruntime_refusal, run_in_onnxruntime
from conftest import SAMPLES, assert_matches_torch, parse, run, sample_data
from rulecheck import check_backend_case, op_types, rewrite

from graphfix.targets import InputFacts, NodeFacts, resolve_target

RULE = "convert_opset_down"
_REDUCE_AXES_INPUT_SINCE = {"ReduceSum": 13}  # the other Reduce* take axes as an input from opset 18
REDUCE_CASES = node_cases("test_reduce_")


def _silent_findings(model: onnx.ModelProto, target: str) -> list[str]:
    """The opset and Reduce-axes findings `graphfix check` reports for `model` on `target`."""
    profile = resolve_target(target)
    opset = model.opset_import[0].version
    found = [f.limitation for f in profile.evaluate_model(opset)]
    for node in model.graph.node:
        inputs = tuple(InputFacts(index=i, name=name) for i, name in enumerate(node.input))
        facts = NodeFacts(name=node.name, op_type=node.op_type, opset=opset, inputs=inputs)
        found += [f.limitation for f in profile.evaluate(facts) if f.limitation == "reduce.axes_input_ignored"]
    return found


def _onnxruntime_cannot_run(case) -> str | None:
    """Why onnxruntime cannot load the case's model or run it on the case's inputs, if it cannot."""
    refusal = onnxruntime_refusal(case.model)
    if refusal:
        return refusal
    try:
        for inputs, _ in case.data_sets:
            run_in_onnxruntime(case.model, [np.asarray(v) for v in inputs])
    except Exception as error:  # onnxruntime raises several unrelated exception types
        return str(error).strip().splitlines()[0][-300:]
    return None


def _target_for(model: onnx.ModelProto) -> str:
    """The release whose declared range the case exceeds: opset-18 Reduce* on 8.4 (declares 17),
    ReduceSum-13 on 7.2 (declares 11)."""
    return "trt8.4" if model.opset_import[0].version >= 18 else "trt7.2"


def _with_constant_axes(case):
    """The case with its `axes` graph input turned into an initializer holding the case's value."""
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    names = [i.name for i in model.graph.input]
    if "axes" not in names:
        return case
    position = names.index("axes")
    inputs, expected = case.data_sets[0]
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(inputs[position]), "axes"))
    del model.graph.input[position]
    kept = [value for i, value in enumerate(inputs) if i != position]
    return type(case)(**{**case.__dict__, "model": model, "data_sets": [(kept, expected)]})


def _expected_refusal(case, target: str) -> str | None:
    """Why the conversion must refuse this case, when it must."""
    wanted = resolve_target(target).opset_range[1]
    graph_inputs = {i.name for i in case.model.graph.input}
    # Ops that do not exist at the target's opset are found first, before any conversion.
    if "CastLike" in op_types(case.model) and wanted < 15:
        return "CastLike (node reduced) does not exist before opset 15"
    if any(n.op_type.startswith("Reduce") and len(n.input) > 1 and n.input[1] in graph_inputs
           and _REDUCE_AXES_INPUT_SINCE.get(n.op_type, 18) > wanted for n in case.model.graph.node):
        return "takes input 'axes' at run time"  # the attribute form needs constant axes
    if "bool" in case.name:  # ReduceMax/ReduceMin take BOOL only from opset 20
        return "fails onnx.checker"
    return None


@pytest.mark.parametrize("constant_axes", [False, True], ids=["axes_input", "axes_constant"])
@pytest.mark.parametrize("case", REDUCE_CASES, ids=lambda c: c.name)
def test_backend_reduce_cases(case, constant_axes):
    refusal = _onnxruntime_cannot_run(case)
    if refusal:
        pytest.skip(f"onnxruntime cannot run {case.name} even before the rewrite: {refusal}")
    target = _target_for(case.model)
    case = _with_constant_axes(case) if constant_axes else case
    result, report = check_backend_case(case, RULE, target=target)  # compares with the expected outputs
    passed = report.passes[0]
    reason = passed.near_misses[0][2] if passed.near_misses else ""
    expected = _expected_refusal(case, target)
    if expected:
        print(f"{case.name} on {target}: refused as expected: {reason}")
        assert passed.matches == 0 and expected in reason
        return
    assert passed.matches == 1 and passed.status == "verified", reason
    assert result.opset_import[0].version == resolve_target(target).opset_range[1]
    assert _silent_findings(result, target) == []


@pytest.mark.parametrize("target, opset", [("trt8.4", 17), ("trt8.0", 13), ("trt7.2", 11), ("portable", 11)])
def test_reduce_sample_is_converted_verified_and_matches_torch(target, opset):
    model = onnx.load(SAMPLES / "reduce_opset18.onnx")
    assert _silent_findings(model, target), "the sample must need the rule"
    result, report = rewrite(model, RULE, target=target)
    assert report.passes[0].status == "verified" and report.passes[0].max_abs == 0.0
    assert result.opset_import[0].version == opset
    assert _silent_findings(result, target) == []
    reductions = [n for n in result.graph.node if n.op_type.startswith("Reduce")]
    assert len(reductions) == 7 and all(len(n.input) == (2 if n.op_type == "ReduceSum" and opset >= 13 else 1)
                                        for n in reductions)
    feeds, data = sample_data("reduce_opset18")
    assert_matches_torch(result, feeds, data, rtol=1e-4, atol=1e-5)
    _, second = rewrite(result, RULE, target=target)
    assert second.passes[0].matches == 0  # idempotent: now within the declared range
    assert "within the declared range" in second.passes[0].near_misses[0][2]


def test_topk_sample_reducesum_13_becomes_the_attribute_form_for_7_2():
    model = onnx.load(SAMPLES / "topk_smallest.onnx")
    assert _silent_findings(model, "trt7.2") == ["opset.above_declared_range"] + ["reduce.axes_input_ignored"] * 2
    result, report = rewrite(model, RULE, target="trt7.2")
    assert report.passes[0].status == "verified" and result.opset_import[0].version == 11
    assert _silent_findings(result, "trt7.2") == []


def _compare(model: onnx.ModelProto, result: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    for got, want in zip(run(result, feeds), run(model, feeds)):
        np.testing.assert_array_equal(got, want)


def test_noop_with_empty_axes_becomes_identity_and_empty_axes_mean_every_axis(rng):
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[2, 3] x) => (float[2, 3] same, float all, float[2] rows) {
        none = Constant <value = int64[0] {}> ()
        one = Constant <value = int64[1] {1}> ()
        same = ReduceProd <noop_with_empty_axes = 1> (x, none)
        all = ReduceMean <keepdims = 0> (x, none)
        rows = ReduceMax <keepdims = 0, noop_with_empty_axes = 1> (x, one)
    }
    """)
    result, report = rewrite(model, RULE, target="trt8.4")
    assert report.passes[0].status == "verified"
    assert op_types(result) == ["Identity", "ReduceMean", "ReduceMax"]
    assert all(a.name != "noop_with_empty_axes" for n in result.graph.node for a in n.attribute)
    _compare(model, result, {"x": rng.standard_normal((2, 3)).astype(np.float32)})


def test_type_only_revisions_are_kept_and_softmax_keeps_its_last_axis(rng):
    model = parse("""
    <ir_version: 8, opset_import: ["" : 15]>
    g (float[2, 3, 4] x, float[3] s, float[3] b, float[3] m, float[3] v) => (float[2, 12] y, int64[3] shape) {
        n = BatchNormalization (x, s, b, m, v)
        p = Softmax (n)
        target = Constant <value = int64[2] {2, 12}> ()
        y = Reshape <allowzero = 0> (p, target)
        shape = Shape (x)
    }
    """)
    result, report = rewrite(model, RULE, target="trt7.2")
    assert report.passes[0].status == "verified" and result.opset_import[0].version == 11
    softmax = next(n for n in result.graph.node if n.op_type == "Softmax")
    assert [(a.name, a.i) for a in softmax.attribute] == [("axis", -1)]  # Softmax-11's default is 1
    assert all(a.name != "allowzero" for n in result.graph.node for a in n.attribute)
    feeds = {"x": rng.standard_normal((2, 3, 4)).astype(np.float32),
             **{k: rng.uniform(0.5, 2, 3).astype(np.float32) for k in "sbmv"}}
    _compare(model, result, feeds)


def test_reductions_inside_if_branches_are_converted(rng):
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[2, 3] x, bool c) => (float[2] y) {
        axes = Constant <value = int64[1] {1}> ()
        y = If (c) <then_branch = t () => (float[2] o) { o = ReduceMean <keepdims = 0> (x, axes) },
                    else_branch = e () => (float[2] o) { o = ReduceMax <keepdims = 0> (x, axes) }>
    }
    """)
    result, report = rewrite(model, RULE, target="trt8.4")
    assert report.passes[0].status == "verified" and result.opset_import[0].version == 17
    x = rng.standard_normal((2, 3)).astype(np.float32)
    for c in (True, False):
        _compare(model, result, {"x": x, "c": np.array(c)})


def _refusal(text: str, target: str) -> str:
    _, report = rewrite(parse(text), RULE, target=target)
    assert report.passes[0].matches == 0
    return report.passes[0].near_misses[0][2]


def test_refusals_name_the_node_and_the_reason():
    runtime_axes = """
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[2, 3] x, int64[1] a) => (float[2] y) { y = ReduceMean <keepdims = 0> (x, a) }
    """
    assert _refusal(runtime_axes, "trt8.4") == (
        "no opset-17 form for TensorRT 8.4: ReduceMean (node y) takes input 'a' at run time; "
        "below opset 18 it must be a constant attribute")
    missing_op = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x, float[3] s) => (float[2, 3] y) { y = LayerNormalization (x, s) }
    """
    assert "LayerNormalization (node y) does not exist before opset 17" in _refusal(missing_op, "trt8.0")
    no_adapter = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1, 1, 2, 2] x, float[4] s) => (float[1, 1, 4, 4] y) { y = Resize <mode = "nearest"> (x, , s) }
    """
    assert ("onnx.version_converter has no adapter taking Resize from opset 13 to 12 (node y)"
            in _refusal(no_adapter, "trt7.2"))
    softmax_channels = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1, 4, 2, 2] x) => (float[1, 4, 2, 2] y) { y = Softmax <axis = 1> (x) }
    """
    assert "Softmax (node y) normalizes axis 1 of a rank-4 input alone" in _refusal(softmax_channels, "trt7.2")
    grid_sample = """
    <ir_version: 9, opset_import: ["" : 20]>
    g (float[1, 1, 4, 4] x, float[1, 2, 2, 2] grid) => (float[1, 1, 2, 2] y) { y = GridSample (x, grid) }
    """
    assert "GridSample (node y): opset 20 changed what mode='linear' means" in _refusal(grid_sample, "trt8.6")
    inside_if = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2, 3] x, bool c) => (float[2] y) {
        y = If (c) <then_branch = t () => (float[2] a) { one = Constant <value = int64[1] {1}> ()
                                                         a = ReduceSum <keepdims = 0> (x, one) },
                    else_branch = e () => (float[2] b) { b = ReduceMax <keepdims = 0, axes = [1]> (x) }>
    }
    """
    assert ("If (node y) keeps its form from opset 13 to 12, but ReduceSum (node a) in its body needs "
            "onnx.version_converter" in _refusal(inside_if, "trt7.2"))
    within = "<ir_version: 8, opset_import: [\"\" : 18]> g (float[2] x) => (float[2] y) { y = Relu (x) }"
    assert _refusal(within, "trt10.0") == "opset 18 is within the declared range of TensorRT 10.0 (up to 20)"


def test_roialign_16_is_kept_only_with_the_coordinate_mode_opset_10_used(rng):
    text = """
    <ir_version: 8, opset_import: ["" : 16]>
    g (float[1, 2, 8, 8] x, float[3, 4] rois, int64[3] batch) => (float[3, 2, 2, 2] y) {
        y = RoiAlign <output_height = 2, output_width = 2, coordinate_transformation_mode = "MODE"> (x, rois, batch)
    }
    """
    model = parse(text.replace("MODE", "output_half_pixel"))
    result, report = rewrite(model, RULE, target="trt7.2", input_ranges=("batch:0,1",))  # image 0
    assert report.passes[0].status == "verified" and result.opset_import[0].version == 11
    assert "coordinate_transformation_mode" not in {a.name for a in result.graph.node[0].attribute}
    feeds = {"x": rng.standard_normal((1, 2, 8, 8)).astype(np.float32),
             "rois": np.array([[0, 0, 4, 4], [1, 2, 7, 6], [0.5, 0.5, 3, 5]], np.float32),
             "batch": np.zeros(3, np.int64)}
    _compare(model, result, feeds)
    assert "no adapter taking RoiAlign from opset 16 to 15" in _refusal(text.replace("MODE", "half_pixel"), "trt7.2")
