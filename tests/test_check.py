"""graphfix.check: facts of the working graph, findings joined to rules, apply -> check on every sample."""

from __future__ import annotations

import pytest
from conftest import SAMPLES, parse

import graphfix as gf
from graphfix import ir, targets
from graphfix._loader import load_rules
from graphfix.api import ApplyOptions, apply, select_rules
from graphfix.check import check, int64_out_of_range, node_facts, with_parser

RULE_SET = load_rules()
RULES = tuple(RULE_SET.rules.values())
# Strictest first: portable (every limitation), then the releases from the oldest.
TARGETS = sorted((targets.resolve_target(t.name) for t in targets.list_targets()), key=lambda t: t.family != "portable")

# A Clip whose max is computed at run time (Shape -> Gather -> Cast), as torch exports clamp(max=W - 1).
CLIP_COMPUTED_MAX = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1,4] x) => (float[1,4] y) {
    shape = Shape(x)
    one = Constant<value = int64 {1}>()
    width = Gather<axis=0>(shape, one)
    high = Cast<to=1>(width)
    low = Constant<value = float {0.0}>()
    y = Clip(x, low, high)
}
"""

# An If whose branches hold a custom-domain op and a NonZero that reads an outer-scope tensor.
IF_WITH_CUSTOM_DOMAIN = """
<ir_version: 8, opset_import: ["" : 13, "com.example" : 2]>
g (float[4] x, bool c) => (float[M] y) {
    flat_shape = Constant<value = int64[1] {-1}>()
    y = If(c) <then_branch = then_g () => (float[M] a) {
                    a = com.example.Scale<factor = 2.0, mode = "fast">(x)
                },
                else_branch = else_g () => (float[M] b) {
                    nz = NonZero(x)
                    flat = Reshape(nz, flat_shape)
                    b = Cast<to=1>(flat)
                }>
}
"""


def model_of(text: str) -> ir.Model:
    return ir.from_proto(parse(text))


def limitations(report) -> set[str]:
    return {f.limitation for f in report.findings}


# ---------------------------------------------------------------------------------- facts
def test_facts_cover_subgraphs_and_custom_domains():
    facts = {f.op_type: f for f in node_facts(model_of(IF_WITH_CUSTOM_DOMAIN))}
    assert set(facts) == {"Constant", "If", "Scale", "NonZero", "Reshape", "Cast"}
    scale = facts["Scale"]
    assert (scale.domain, scale.opset, scale.in_subgraph) == ("com.example", 2, True)
    assert scale.attrs == {"factor": 2.0, "mode": "fast"}
    assert not facts["If"].in_subgraph and "then_branch" not in facts["If"].attrs
    nonzero = facts["NonZero"]
    assert nonzero.in_subgraph and nonzero.opset == 13
    assert (nonzero.inputs[0].name, nonzero.inputs[0].dtype, nonzero.inputs[0].shape) == ("x", "float32", (4,))
    # Unnamed nodes (valid ONNX) get a label from their op and first output.
    assert nonzero.name == "<NonZero -> nz>"
    shape_input = facts["Reshape"].inputs[1]
    assert shape_input.is_weights and shape_input.producer_op == "Constant"
    assert shape_input.value.tolist() == [-1]


def test_facts_of_a_computed_bound():
    clip = next(f for f in node_facts(model_of(CLIP_COMPUTED_MAX)) if f.op_type == "Clip")
    low, high = clip.inputs[1:]
    assert low.is_weights and low.value.tolist() == 0.0
    assert not high.is_weights and high.producer_op == "Cast" and high.value is None


def test_subgraph_and_custom_domain_findings():
    report = check(model_of(IF_WITH_CUSTOM_DOMAIN), targets.resolve_target("trt8.4"), RULES)
    by_op = report.by_op
    assert set(by_op) == {"NonZero", "Scale"}
    assert all(f.in_subgraph for f in report.findings)
    assert by_op["Scale"][0].limitation == "custom_op.unknown"
    assert 'op "Scale" (domain "com.example")' in by_op["Scale"][0].reason
    assert by_op["NonZero"][0].limitation == "nonzero.missing"
    assert "NonZero" not in check(model_of(IF_WITH_CUSTOM_DOMAIN), targets.resolve_target("trt8.5"), RULES).by_op


# ---------------------------------------------------------------------------------- rules
def test_findings_name_the_fixing_rule():
    report = check(model_of(CLIP_COMPUTED_MAX), targets.resolve_target("trt8.0"), RULES)
    finding, = report.findings
    assert (finding.kind, finding.limitation, finding.rules, finding.fix) == (
        "unsupported", "clip.bounds_not_weights", ("fix_clip_bounds",), "fix_clip_bounds")
    assert finding.reason == "input 2 (max) is computed by node <Cast -> high> (Cast), not an initializer"
    assert not report.clean and report.counts == {"unsupported": 1, "silent": 0, "plugin": 0}
    assert check(model_of(CLIP_COMPUTED_MAX), targets.resolve_target("trt8.5"), RULES).clean


def test_opt_in_rules_and_no_rule():
    opt_in = gf.rule(pattern=lambda op, x, k: op.TopK(x, k), limitation="topk.largest_ignored", opt_in=True, name="flip_topk")(
        lambda op, x, k: None)
    model = ir.load(SAMPLES / "topk_smallest.onnx")
    topk = check(model, targets.resolve_target("trt8.4"), [opt_in]).by_op["TopK"]
    assert {(f.kind, f.fix, f.rules) for f in topk} == {("silent", "opt-in: --enable flip_topk", ("flip_topk",))}
    without = check(model, targets.resolve_target("trt8.4"), []).by_op["TopK"]
    assert {f.fix for f in without} == {"no rule"} and "negate the input" in without[0].advice


def test_int64_weights_outside_int32():
    model = ir.load(SAMPLES / "topk_smallest.onnx")
    found = dict(int64_out_of_range(model))
    assert sorted(found.values()) == [["Slice /ec1/Slice"], ["Slice /ec2/Slice"]]
    clamped = [f for f in check(model, targets.resolve_target("trt8.6")).findings if f.limitation == "int64.clamped"]
    assert {f.node for f in clamped} == set(found) and all(f.kind == "silent" for f in clamped)
    assert "int64.clamped" not in limitations(check(model, targets.resolve_target("trt10.0")))


def test_report_groups_model_level_first_then_ops():
    report = check(ir.load(SAMPLES / "topk_smallest.onnx"), targets.resolve_target("trt7.2"), RULES)
    assert list(report.by_op) == ["(model)", "(initializer)", "ReduceSum", "TopK"]
    data = report.to_dict()
    assert data["target"] == "trt7.2" and data["clean"] is False and data["nodes"] == report.nodes
    assert sum(len(v) for v in data["ops"].values()) == len(report.findings)


# ---------------------------------------------------------------------------------- a real parser's verdict
def test_parser_refusing_an_unflagged_node_is_a_disagreement():
    model = model_of(CLIP_COMPUTED_MAX)
    report = check(model, targets.resolve_target("trt8.5"), RULES)
    assert report.clean
    # Older parsers name the node by its index in the file's main graph.
    joined = with_parser(report, model, "8.5.3.1", "trt8.5", [("node #5", "Clip: unsupported bounds")])
    assert joined.parser.errors == (("<Clip -> y>", "Clip: unsupported bounds"),)
    assert joined.parser.disagreements == (
        "the parser refused <Clip -> y> (Clip: unsupported bounds); the profile found nothing unsupported there",)
    assert not joined.clean


def test_parser_taking_a_flagged_model_is_a_disagreement():
    model = model_of(CLIP_COMPUTED_MAX)
    report = check(model, targets.resolve_target("trt8.0"), RULES)
    joined = with_parser(report, model, "8.0.1.6", "trt8.0", [])
    assert joined.parser.disagreements == (
        "the parser took the model; the profile expected it to refuse <Clip -> y>",)
    agreeing = with_parser(report, model, "8.0.1.6", "trt8.0", [("<Clip -> y>", "max must be an initializer")])
    assert agreeing.parser.disagreements == ()


def test_parser_of_another_release_is_shown_not_compared():
    model = model_of(CLIP_COMPUTED_MAX)
    report = check(model, targets.resolve_target("trt8.5"), RULES)
    joined = with_parser(report, model, "10.3.0", "trt10.3", [("x", "refused")])
    assert not joined.parser.compared and joined.parser.disagreements == () and joined.clean


# ---------------------------------------------------------------------------------- apply -> check
def test_apply_reports_what_remains():
    model = ir.load(SAMPLES / "superpoint_head.onnx")
    report = apply(model, ApplyOptions(target="trt8.0"), rule_set=RULE_SET)
    after = check(model, targets.resolve_target("trt8.0"), RULES)
    assert report.target == "trt8.0"
    assert report.remaining == tuple(f.remaining() for f in after.errors)
    assert all(set(r) == {"node", "op_type", "kind", "reason", "rule"} for r in report.remaining)
    assert "Clip" not in {r["op_type"] for r in report.remaining}


NO_RULE = "no rule for this limitation yet"
# convert_opset_down claims these on trt7.2 (declared opset <= 11) and portable, and leaves models
# it cannot express at opset 11 alone; its near miss names the node. With the opset, ReduceSum-13's
# axes input stays (7.2 reads only the attribute form).
OPSET_11 = "convert_opset_down: no opset-11 form ({})"


def _opset_11(blocker: str) -> dict[str, str]:
    return {"opset.above_declared_range": OPSET_11.format(blocker)}


# What `graphfix apply --target X` leaves for `graphfix check --target X`, per sample, over every
# listed target (trt7.2 ... trt11, trt-rtx, portable): limitation -> why it stays (NO_RULE, or why
# the rule that claims it leaves it). A sample with an empty entry is clean on every target.
# Keep this exact: when a rule lands or changes, the test names the entries to add or drop.
EXPECTED_LEFTOVERS: dict[str, dict[str, str]] = {
    "deformable_detr_tiny": {
        **_opset_11("no version_converter adapter for Resize 13 -> 12"),
        "reduce.axes_input_ignored": OPSET_11.format("ReduceSum-13 keeps its axes input"),
        "op.missing": NO_RULE,  # ScatterND on 7.2
    },
    "einsum_ellipsis": {},
    "fp16_overflow": {},
    "grounding_dino_tiny": {
        **_opset_11("GridSample does not exist before opset 16"),
        "reduce.axes_input_ignored": OPSET_11.format("ReduceSum-13 keeps its axes input"),
        # decompose_gridsample is rolled back: its Gather indices go out of bounds (NaN) on
        # this model's sampling grids (7.2-8.4, portable).
        "gridsample.missing": "decompose_gridsample: rolled back",
        # clamp_int64_weights leaves INT64_MIN/MAX read by Where alone: Where computes with
        # the value itself, so clamping it would change the result (<= 8.6).
        "int64.clamped": "clamp_int64_weights: values read by Where",
        "op.missing": NO_RULE,  # Mod <= 8.4, IsNaN <= 8.0, EyeLike/GatherElements/ScatterND on 7.2
    },
    "hf_cumsum_text": {
        **_opset_11("GreaterOrEqual does not exist before opset 12"),
        "op.missing": NO_RULE,  # GatherElements, GreaterOrEqual on 7.2
    },
    "hf_superglue": {
        **_opset_11("Softmax-13 over one axis"),
        "reduce.axes_input_ignored": OPSET_11.format("ReduceSum-13 keeps its axes input"),
        # NonZero over a runtime mask that does not feed a constant-K TopK: fold_nonzero and
        # make_nonzero_static say so; the padded form is opt-in (pad_nonzero). <= 8.4, trt-rtx.
        "nonzero.missing": "fold_nonzero / make_nonzero_static: data-dependent NonZero",
        "op.missing": NO_RULE,  # GatherND <= 8.0; GatherElements, GreaterOrEqual, ScatterND on 7.2
    },
    "hf_superglue_matcher": {
        **_opset_11("GreaterOrEqual does not exist before opset 12"),
        "op.missing": NO_RULE,  # GatherElements, GreaterOrEqual on 7.2
    },
    "hf_superpoint": {
        **_opset_11("Softmax-13 over one axis"),
        "reduce.axes_input_ignored": OPSET_11.format("ReduceSum-13 keeps its axes input"),
        "nonzero.missing": "fold_nonzero / make_nonzero_static: data-dependent NonZero",
        "op.missing": NO_RULE,  # GatherND <= 8.0; GreaterOrEqual, ScatterND on 7.2
    },
    "kornia_lightglue": {
        **_opset_11("LayerNormalization does not exist before opset 17"),
        "op.missing": NO_RULE,  # Mod <= 8.4; GatherElements, ScatterND on 7.2
    },
    "maskrcnn_tiny": {
        **_opset_11("an If body needs a conversion version_converter does not make"),
        "reduce.axes_input_ignored": OPSET_11.format("ReduceSum-13 keeps its axes input"),
        "nonzero.missing": "fold_nonzero / make_nonzero_static: data-dependent NonZero",
        "op.missing": NO_RULE,  # ScatterElements <= 8.0, GreaterOrEqual on 7.2
        "roialign.missing": NO_RULE,  # <= 8.4
        "topk.k_not_weights": NO_RULE,  # K = min(k, number of anchors), 7.2-8.5
    },
    "mmcv_ops": {
        # aligned=1 needs RoiAlign-16 (the model is opset 11) or the ROIAlign_TRT plugin, which
        # not every profile has (portable).
        "custom_op.mmcv_roialign": "convert_mmcv_roialign: aligned=1 at opset 11",
        "custom_op.unknown": NO_RULE,  # <= 8.4: no GridSample / RoiAlign importer to map to
    },
    "reduce_opset18": {},
    "rpn_two_level_nms": {},
    "superglue_attention": {"op.missing": NO_RULE},  # GatherElements on 7.2
    "superpoint_head": {**_opset_11("Softmax-13 over one axis"), "op.missing": NO_RULE},  # Mod <= 8.4, Xor <= 8.2
    "superpoint_head_static": {**_opset_11("Softmax-13 over one axis"), "op.missing": NO_RULE},
    "topk_smallest": {},
}
EXPECTED_LEFTOVERS["deformable_detr_tiny_f32"] = EXPECTED_LEFTOVERS["deformable_detr_tiny"]
EXPECTED_LEFTOVERS["grounding_dino_tiny_f32"] = EXPECTED_LEFTOVERS["grounding_dino_tiny"]


def _leftovers(sample: str) -> dict[str, list[str]]:
    """Error limitations left after apply, over every listed target -> those a rule claims to fix."""
    groups: dict[tuple[str, ...], list[targets.Target]] = {}
    for target in TARGETS:
        rules = tuple(r.name for r in select_rules(RULE_SET, ApplyOptions(), target))
        groups.setdefault(rules, []).append(target)
    left: dict[str, list[str]] = {}
    for same_rules in groups.values():
        model = ir.load(SAMPLES / f"{sample}.onnx")
        reports = [check(model, t, RULES) for t in same_rules]
        # Apply once per group of targets that select the same rules, for the group's strictest
        # target (rules that consult ctx.target keep less there), and only when a rule claims a
        # finding: one apply per target would take minutes.
        if any(f.rules for report in reports for f in report.errors):
            apply(model, ApplyOptions(target=same_rules[0].name), rule_set=RULE_SET)
            reports = [check(model, t, RULES) for t in same_rules]
        for report in reports:
            for f in report.errors:
                left.setdefault(f.limitation, []).extend([f"{report.target}: {f.node} ({f.fix})"] if f.rules else [])
    return left


# The FP32 twins are the float64 exports' graphs with other dtypes; theirs run in CI, these with -m slow.
TWINS = {"deformable_detr_tiny_f32", "grounding_dino_tiny_f32"}
SAMPLE_PARAMS = [pytest.param(s, marks=pytest.mark.slow) if s in TWINS else s
                 for s in sorted(p.stem for p in SAMPLES.glob("*.onnx"))]


@pytest.mark.parametrize("sample", SAMPLE_PARAMS)
def test_apply_then_check_leaves_only_the_expected(sample):
    assert sample in EXPECTED_LEFTOVERS, f"add {sample} to EXPECTED_LEFTOVERS"
    expected = EXPECTED_LEFTOVERS[sample]
    left = _leftovers(sample)
    assert set(left) == set(expected), (
        f"new leftovers: {sorted(set(left) - set(expected))}; fixed now, drop them: {sorted(set(expected) - set(left))}")
    unexplained = {key: claims for key, claims in left.items() if claims and expected[key] == NO_RULE}
    assert not unexplained, f"a rule claims these findings but they stay; say why in EXPECTED_LEFTOVERS: {unexplained}"
