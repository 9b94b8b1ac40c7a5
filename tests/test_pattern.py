"""The pattern language, feature by feature, on tiny inline graphs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import parse

import graphfix as gf
from graphfix import ir
from graphfix.pattern import Match, MatchFailure, OpIndex, Pattern, PatternBuilder, Var


def _pattern(fn) -> Pattern:
    names = fn.__code__.co_varnames[1 : fn.__code__.co_argcount]
    return Pattern(fn(PatternBuilder(), *(Var(n) for n in names)))


def _graph(text: str) -> ir.Graph:
    return ir.import_proto(parse(text))


def _matches(text: str, fn, exclusive: bool = True, graph: ir.Graph | None = None) -> list[Match | MatchFailure]:
    graph = graph or _graph(text)
    pattern = _pattern(fn)
    results = []
    for node in OpIndex(graph).candidates(pattern.root_op_types):
        results.append(
            pattern.match(
                node,
                graph_nodes={id(n) for n in graph.nodes},
                graph_outputs={id(t) for t in graph.outputs},
                opset=int(graph.opset),
                exclusive=exclusive,
            )
        )
    return results


CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,3] x, float[2,3] y) => (float[2,3] out) {
    a = Add(x, y)
    r = Relu(a)
    out = Mul(r, y)
}
"""


def test_op_type_and_recursive_inputs_bind_tensors_and_nodes():
    [match] = _matches(CHAIN, lambda op, x, y, w: op.Mul(op.Relu(op.Add(x, y), _capture="relu"), w))
    assert isinstance(match, Match)
    assert match.root.op == "Mul"
    assert match.bindings["x"].name == "x" and match.bindings["w"].name == "y"
    assert match.bindings["relu"].op == "Relu"
    assert [n.op for n in match.nodes] == ["Mul", "Relu", "Add"]


def test_op_set_and_wildcard_op():
    found = _matches(CHAIN, lambda op, x: op.node({"Relu", "Mul"}, x, _allow_extra_inputs=True))
    assert sorted(m.root.op for m in found if m) == ["Mul", "Relu"]
    any_op = _matches(CHAIN, lambda op, x: op.node(None, x, _allow_extra_inputs=True))
    assert len([m for m in any_op if m]) == 3


def test_near_miss_reports_the_deepest_failure():
    [failure] = _matches(CHAIN, lambda op, x, y, w: op.Mul(op.Relu(op.Sub(x, y)), w))
    assert isinstance(failure, MatchFailure)
    assert "expected Sub, found Add" in failure.reason
    assert failure.depth >= 2


def test_commutative_inputs_match_in_either_order():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] out) {
        c = Constant <value = float[1] {2.0}> ()
        r = Relu(x)
        out = Add(c, r)
    }
    """
    [match] = _matches(text, lambda op, x, c: op.Add(op.Relu(x), c.constant()))
    assert match and match.bindings["c"].name == "c"
    [miss] = _matches(text, lambda op, x, c: op.Add(op.Relu(x), c.constant(), _commutative=False))
    assert not miss


def test_attribute_literal_predicate_variable_and_schema_default():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[4,5] x, int64[1] k) => (float[4,2] v, int64[4,2] i) {
        v, i = TopK <largest = 0> (x, k)
    }
    """
    assert _matches(text, lambda op, x, k: op.TopK(x, k, largest=0, _outputs=2)[0])[0]
    assert not _matches(text, lambda op, x, k: op.TopK(x, k, largest=1, _outputs=2)[0])[0]
    assert _matches(text, lambda op, x, k: op.TopK(x, k, largest=lambda v: v == 0, _outputs=2)[0])[0]
    [match] = _matches(text, lambda op, x, k, axis: op.TopK(x, k, axis=axis, _outputs=2)[0])
    assert match.bindings["axis"] == -1  # absent: the schema default


def test_domain_patterns_match_custom_ops_only_in_their_domain():
    text = """
    <ir_version: 8, opset_import: ["" : 17, "mmdeploy" : 1]>
    g (float[1,1,4,4] x, float[1,4,4,2] grid) => (float[1,1,4,4] y) {
        y = mmdeploy.grid_sampler <interpolation_mode = 0> (x, grid)
    }
    """
    model = parse(text)
    graph = ir.import_proto(model)
    assert _matches("", lambda op, x, g: op.domain("mmdeploy").grid_sampler(x, g), graph=graph)[0]
    assert not _matches("", lambda op, x, g: op.grid_sampler(x, g), graph=graph)[0]


def test_constant_initializer_value_and_dtype_constraints():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, float lo_in) => (float[2] a, float[2] b) {
        hi = Constant <value = float {6.0}> ()
        a = Clip(x, lo_in, hi)
        b = Clip(x, lo_in)
    }
    """
    found = _matches(text, lambda op, x, lo, hi: op.Clip(x, lo, hi.constant(lambda v: v == 6.0)))
    assert [bool(m) for m in found] == [True, False]
    assert "input 1 (lo) of" in _matches(text, lambda op, x, lo, hi: op.Clip(x, lo.constant(), hi))[0].reason
    assert not _matches(text, lambda op, x, lo, hi: op.Clip(x, lo, hi.initializer()))[0]
    assert not _matches(text, lambda op, x, lo, hi: op.Clip(x.dtype("float16"), lo, hi))[0]
    assert _matches(text, lambda op, x, lo, hi: op.Clip(x.dtype("float32"), lo, hi))[0]


def test_optional_inputs_bind_none_when_omitted():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, float lo) => (float[2] y) {
        y = Clip(x, lo)
    }
    """
    [match] = _matches(text, lambda op, x, lo, hi: op.Clip(x, lo.optional(), hi.optional()))
    assert match.bindings["hi"] is None and match.bindings["lo"].name == "lo"
    assert not _matches(text, lambda op, x, lo, hi: op.Clip(x, lo, hi))[0]


def test_variadic_inputs_bind_a_list():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] a, float[2] b, float[2] c) => (float[6] y) {
        y = Concat <axis = 0> (a, b, c)
    }
    """
    [match] = _matches(text, lambda op, first: op.Concat(first, gf.variadic("rest", min_count=2), axis=0))
    assert [t.name for t in match.bindings["rest"]] == ["b", "c"]
    assert not _matches(text, lambda op, first: op.Concat(first, gf.variadic("rest", min_count=3)))[0]


def test_repeated_variable_must_bind_the_same_tensor():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, float[2] y) => (float[2] a, float[2] b) {
        a = Mul(x, x)
        b = Mul(x, y)
    }
    """
    found = _matches(text, lambda op, x: op.Mul(x, x))
    assert [bool(m) for m in found] == [True, False]


def test_exclusive_guard_rejects_interior_nodes_used_outside():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] a, float[2] b) {
        r = Relu(x)
        a = Neg(r)
        b = Abs(r)
    }
    """
    [failure] = _matches(text, lambda op, x: op.Neg(op.Relu(x)))
    assert "also used by" in failure.reason
    assert _matches(text, lambda op, x: op.Neg(op.Relu(x)), exclusive=False)[0]


def test_op_index_visits_only_candidates_of_the_root_op():
    nodes = "\n".join(f"    t{i} = Relu(t{i - 1})" for i in range(1, 200))
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] t0) => (float[2] out) {{
{nodes}
        out = Neg(t199)
    }}
    """
    graph = _graph(text)
    assert len(OpIndex(graph).candidates(frozenset({"Neg"}))) == 1
    assert len(OpIndex(graph).candidates(frozenset({"Neg", "Relu"}))) == 200


def test_subgraph_matches_and_keeps_outer_scope_references():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (bool cond, float[2] x, float[2] y) => (float[2] out) {
        out = If (cond) <
            then_branch = then_g () => (float[2] t) { t = Add(x, y) },
            else_branch = else_g () => (float[2] e) { e = Sub(x, y) }
        >
    }
    """
    add_to_sum = gf.rule(pattern=lambda op, a, b: op.Add(a, b), name="add_to_sum")(
        lambda op, a, b: op.Sum(a, b)
    )
    model = gf.Model(graph=ir.import_proto(parse(text)), source=parse(text))
    report = gf.apply(model, gf.ApplyOptions(only=("add_to_sum",), extra_rules=(add_to_sum,), entry_points=False))
    assert report.passes[0].matches == 1
    assert report.passes[0].status == "verified"
    then_graph = model.graph.nodes[0].attrs["then_branch"]
    assert [n.op for n in then_graph.nodes] == ["Sum"]
    assert [t.name for t in then_graph.nodes[0].inputs] == ["x", "y"]
    feeds = {"cond": np.array(True), "x": np.array([1, 2], np.float32), "y": np.array([3, 4], np.float32)}
    from conftest import run

    np.testing.assert_array_equal(run(ir.to_proto(model), feeds)[0], [4, 6])


def test_pattern_outputs_must_share_one_root():
    with pytest.raises(TypeError):
        Pattern((PatternBuilder().Relu(Var("x")), PatternBuilder().Neg(Var("x"))))


def test_domain_sets_match_any_listed_domain():
    text = """
    <ir_version: 8, opset_import: ["" : 17, "mmcv" : 1]>
    g (float[1,1,4,4] x, float[1,4,4,2] grid) => (float[1,1,4,4] y) {
        y = mmcv.grid_sampler (x, grid)
    }
    """
    graph = ir.import_proto(parse(text))
    assert _matches("", lambda op, x, g: op.domain({"mmdeploy", "mmcv"}).grid_sampler(x, g), graph=graph)[0]
    [miss] = _matches("", lambda op, x, g: op.domain({"mmdeploy"}).grid_sampler(x, g), graph=graph)
    assert "expected mmdeploy::grid_sampler" in miss.reason
