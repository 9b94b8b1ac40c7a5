"""The pass manager: verification, rollback and blame, reference states, journals, determinism."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import parse, run
from rulecheck import op_types, rewrite

import graphfix as gf
from graphfix import ir
from graphfix.errors import VerificationError

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,3] x, float[2,3] y) => (float[2,3] out) {
    a = Add(x, y)
    r = Relu(a)
    out = Neg(r)
}
"""


@gf.rule(pattern=lambda op, a, b: op.Add(a, b))
def add_to_sub(op, a, b):
    """Deliberately wrong: Add becomes Sub."""
    return op.Sub(a, b)


@gf.rule(pattern=lambda op, x: op.Neg(x))
def neg_as_sub(op, x, ctx):
    """Correct: Neg(x) = 0 - x."""
    return op.Sub(op.constant(np.zeros((), ctx.numpy_dtype(x))), x)


@pytest.mark.parametrize("mode", ["incremental", "full"])
def test_wrong_rule_is_rolled_back_and_blamed(mode):
    model = parse(MODEL)
    result, report = rewrite(model, "add_to_sub", "neg_as_sub", extra_rules=[add_to_sub, neg_as_sub], verify_mode=mode)
    by_name = {p.name: p for p in report.passes}
    wrong = by_name["add_to_sub"]
    assert wrong.status == "rolled back"
    assert "add_to_sub" in wrong.detail and "a" in wrong.detail and wrong.max_abs > 0.1
    assert by_name["neg_as_sub"].status == "verified"
    assert "Add" in op_types(result) and "Sub" in op_types(result) and "Neg" not in op_types(result)
    feeds = {"x": np.ones((2, 3), np.float32), "y": np.full((2, 3), 2, np.float32)}
    np.testing.assert_array_equal(run(result, feeds)[0], run(model, feeds)[0])


def test_incremental_verification_runs_the_model_twice_however_many_passes():
    model = parse(MODEL)
    rules = [neg_as_sub, gf.rule(pattern=lambda op, x: op.Relu(x), name="relu_as_max")(
        lambda op, x, ctx: op.Max(x, op.constant(np.zeros((), np.float32))))]
    _, report = rewrite(model, "neg_as_sub", "relu_as_max", extra_rules=rules)
    assert [p.status for p in report.passes] == ["verified", "verified"]
    # Both regions' outputs are compared inside the final run: no local check was needed.
    assert report.verification.full_runs == 2 and report.verification.region_checks == 0
    assert report.verification.regions_in_final_run == 2
    _, full = rewrite(model, "neg_as_sub", "relu_as_max", extra_rules=rules, verify_mode="full")
    assert full.verification.full_runs == 3


def test_a_wrong_rewrite_the_outputs_hide_is_still_rolled_back():
    """Its region's output is compared inside the final run, not only the model outputs."""
    hidden = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3] x, float[2,3] y) => (float[2,3] out) {
        zero = Constant <value = float[1] {0.0}> ()
        a = Add(x, y)
        out = Mul(a, zero)
    }
    """)
    _, report = rewrite(hidden, "add_to_sub", extra_rules=[add_to_sub])
    [wrong] = report.passes
    assert wrong.status == "rolled back" and "changed a at node" in wrong.detail
    assert report.verification.full_runs == 2 and report.verification.region_checks == 1


def test_strict_turns_a_rollback_into_an_error():
    with pytest.raises(VerificationError, match="add_to_sub"):
        model = gf.Model(graph=ir.import_proto(parse(MODEL)), source=parse(MODEL))
        report = gf.apply(model, gf.ApplyOptions(only=("add_to_sub",), extra_rules=(add_to_sub,), entry_points=False))
        from graphfix.passes import raise_if_strict

        raise_if_strict(report.passes)


UNBATCHED_POOL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[4,8,8] x) => (float[4,8,8] out) {
    p = MaxPool <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x)
    out = Neg(p)
}
"""


@gf.rule(pattern=lambda op, x: op.MaxPool(x, _capture="pool"), stage="repair",
         check=lambda ctx, x: ctx.rank(x) == 3)
def batch_pool(op, x, pool):
    """Test repair: pooling on a 3-D tensor gets a batch axis."""
    return op.squeeze(op.MaxPool(op.unsqueeze(x, [0]), **pool.attrs), [0])


def test_passes_after_a_repair_are_verified_from_the_first_runnable_state():
    model = parse(UNBATCHED_POOL)
    _, report = rewrite(model, "batch_pool", "neg_as_sub", extra_rules=[batch_pool, neg_as_sub])
    repair, neg = report.passes
    assert repair.status == "unverified" and "onnxruntime cannot run the input model" in repair.detail
    assert "MaxPool" in repair.detail
    assert neg.status == "verified"
    assert report.verification.reference_state == "state after batch_pool"


CUSTOM = """
<ir_version: 8, opset_import: ["" : 17, "acme" : 1]>
g (float[2] x) => (float[2] out) {
    c = acme.Mystery(x)
    out = Neg(c)
}
"""


def test_a_model_nothing_can_run_is_never_reported_verified():
    _, report = rewrite(parse(CUSTOM), "neg_as_sub", extra_rules=[neg_as_sub])
    [neg] = report.passes
    assert neg.status == "unverified"
    assert "Mystery" in neg.detail and "no graphfix reference kernel" in neg.detail


@gf.rule(pattern=lambda op, x: op.Neg(x))
def neg_to_custom(op, x):
    """Emits an op nothing can run."""
    return op.node("Mystery", x, _domain="acme")


def test_a_region_that_cannot_run_is_unverified_not_ok():
    _, report = rewrite(parse(MODEL), "neg_to_custom", extra_rules=[neg_to_custom])
    assert report.passes[0].status == "unverified"
    assert "acme::Mystery" in report.passes[0].detail


def test_journal_undo_and_redo_restore_exact_states():
    proto = parse(MODEL)
    model = gf.Model(graph=ir.import_proto(proto), source=proto)
    before = ir.to_proto(model).SerializeToString()
    pass_ = gf.RulePass([neg_as_sub])
    result = pass_.apply(model, ir.NameRegistry(model.graph), target=None, dry_run=False)
    after = ir.to_proto(model).SerializeToString()
    assert after != before
    result.journal.undo()
    assert ir.to_proto(model).SerializeToString() == before
    result.journal.redo()
    assert ir.to_proto(model).SerializeToString() == after


def test_export_writes_a_changed_tensor_type_not_the_imported_one():
    proto = parse(MODEL)
    proto.graph.value_info.extend([onnx.helper.make_tensor_value_info("r", onnx.TensorProto.FLOAT, [2, 3])])
    model = gf.Model(graph=ir.import_proto(proto), source=proto)
    unchanged = {v.name: v for v in ir.to_proto(model).graph.value_info}["r"]
    assert [d.dim_value for d in unchanged.type.tensor_type.shape.dim] == [2, 3]
    tensor = next(t for n in model.graph.nodes for t in n.outputs if t.name == "r")
    tensor.shape, tensor.dtype = ["n", 3], np.float16
    exported = {v.name: v for v in ir.to_proto(model).graph.value_info}["r"]
    assert exported.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert [d.dim_param or d.dim_value for d in exported.type.tensor_type.shape.dim] == ["n", 3]


def test_dry_run_changes_nothing_and_lists_matches():
    proto = parse(MODEL)
    model = gf.Model(graph=ir.import_proto(proto), source=proto)
    before = ir.to_proto(model).SerializeToString()
    report = gf.apply(model, gf.ApplyOptions(only=("neg_as_sub",), extra_rules=(neg_as_sub,), dry_run=True, entry_points=False))
    assert ir.to_proto(model).SerializeToString() == before
    [entry] = report.passes[0].rewrites
    assert entry.root_op == "Neg" and entry.added_ops == ("Sub",)


def test_new_nodes_carry_provenance_names():
    result, report = rewrite(parse(MODEL), "neg_as_sub", extra_rules=[neg_as_sub])
    sub = next(n for n in result.graph.node if n.op_type == "Sub")
    assert sub.name.startswith("neg_as_sub/")
    assert report.provenance == {sub.name: "neg_as_sub"}


@gf.rule(pattern=lambda op, x: op.Relu(x))
def raising(op, x):
    """Raises."""
    raise ValueError("boom")


def test_a_rule_that_raises_is_named():
    with pytest.raises(gf.RuleError, match=r"rule raising raised ValueError while rewriting node .* \(Relu\): boom"):
        rewrite(parse(MODEL), "raising", extra_rules=[raising])


def test_identity_elimination_rewires_consumers_and_keeps_graph_output_names():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] out, float[2] other) {
        i = Identity(x)
        out = Identity(i)
        other = Relu(i)
    }
    """
    drop = gf.rule(pattern=lambda op, x: op.Identity(x), name="drop_identity")(lambda op, x: x)
    result, report = rewrite(parse(text), "drop_identity", extra_rules=[drop])
    assert [o.name for o in result.graph.output] == ["out", "other"]
    assert report.passes[0].status == "verified"
    np.testing.assert_array_equal(run(result, {"x": np.array([-1, 2], np.float32)})[1], [0, 2])


def test_same_input_and_options_give_byte_identical_models():
    first, _ = rewrite(parse(MODEL), "neg_as_sub", extra_rules=[neg_as_sub])
    second, _ = rewrite(parse(MODEL), "neg_as_sub", extra_rules=[neg_as_sub])
    assert first.SerializeToString() == second.SerializeToString()


def test_rule_class_style_and_options():
    @gf.rule(options={"scale": 2.0})
    class ScaleNeg:
        """Neg(x) as x * -scale / scale (checks options flow)."""

        def pattern(self, op, x):
            return op.Neg(x)

        def check(self, ctx, x):
            return gf.accept(scale=float(ctx.options["scale"]))

        def rewrite(self, op, x, scale):
            return op.Div(op.Mul(x, op.constant(np.array(-scale, np.float32))), op.constant(np.array(scale, np.float32)))

    assert ScaleNeg.name == "scale_neg" and ScaleNeg.summary.startswith("Neg(x)")
    result, report = rewrite(parse(MODEL), "scale_neg", extra_rules=[ScaleNeg], rule_options=("scale_neg.scale=4",))
    assert report.passes[0].status == "verified"
    scales = sorted(float(onnx.numpy_helper.to_array(t)) for t in result.graph.initializer)
    assert scales == [-4.0, 4.0]
    with pytest.raises(gf.UsageError, match="no option 'nope'"):
        rewrite(parse(MODEL), "scale_neg", extra_rules=[ScaleNeg], rule_options=("scale_neg.nope=1",))


REDUCE_18 = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[2,3,4] x) => (float[2,1,4] out) {
    axes = Constant <value = int64[1] {1}> ()
    out = ReduceMean <keepdims = 1> (x, axes)
}
"""


@gf.rule()
class ConvertTo17:
    """Whole-model rule used by the tests: onnx.version_converter to opset 17."""

    def check(self, ctx):
        return gf.accept() if ctx.opset > 17 else gf.reject("already at 17 or below")

    def transform(self, ctx, proto):
        return onnx.version_converter.convert_version(proto, 17)


@gf.rule()
class BreakTheModel:
    """Whole-model rule used by the tests: changes results, so it must be rolled back."""

    def transform(self, ctx, proto):
        for node in proto.graph.node:
            if node.op_type == "ReduceMean":
                node.op_type = "ReduceMax"
        return proto


def test_model_rules_are_verified_end_to_end_and_rolled_back_when_wrong():
    import onnx.version_converter  # noqa: F401

    result, report = rewrite(parse(REDUCE_18), "convert_to17", extra_rules=[ConvertTo17])
    assert report.passes[0].status == "verified" and "end-to-end" in report.passes[0].detail
    assert result.opset_import[0].version == 17
    _, report = rewrite(parse(REDUCE_18), "break_the_model", extra_rules=[BreakTheModel])
    assert report.passes[0].status == "rolled back"
    assert "out" in report.passes[0].detail
    assert "first divergence at tensor 'out'" in report.passes[0].detail and "ReduceMax" in report.passes[0].detail


def test_whole_model_rules_keep_subgraphs_wired_to_outer_producers():
    """After a whole-model rule re-imports the graph, If bodies still read the outer tensors
    (shape inference lists them in the bodies' value_info; they must not become local copies)."""
    from conftest import SAMPLES

    model = onnx.load(SAMPLES / "maskrcnn_tiny.onnx")
    result, report = rewrite(model, "clamp_int64_weights", "replace_cast_to_bool", target="trt7.2")
    assert [p.status for p in report.passes] == ["verified", "verified"]
    assert len(result.graph.node) > 1000  # nothing the If bodies read was dropped as dead


def test_incremental_catches_a_wrong_rewrite_deep_in_a_big_model_like_full_and_runs_the_reference_once():
    """The benchmark's 3000-node block model; one Add in the middle is rewritten wrongly."""
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    import models

    proto = models.build(3000)
    adds = [n.name for n in proto.graph.node if n.op_type == "Add"]
    target = adds[len(adds) // 2]
    wrong = gf.rule(pattern=lambda op, a, b: op.Add(a, b, _capture="add"), name="wrong_add",
                    check=lambda ctx, add: add.name == target)(lambda op, a, b: op.Sub(a, b))
    reports = {}
    for mode in ("incremental", "full"):
        result, report = rewrite(proto, "wrong_add", extra_rules=[wrong], verify_mode=mode)
        [p] = report.passes
        assert p.matches == 1 and p.status == "rolled back", (mode, p.status)
        assert f"at node {target}" in p.detail
        assert target in {n.name for n in result.graph.node}
        assert not any(n.name.startswith("wrong_add/") for n in result.graph.node)
        reports[mode] = report
    # Incremental: one reference run, the rollback decided locally, one final run.
    assert reports["incremental"].verification.full_runs == 2
    assert reports["full"].verification.full_runs >= 1
