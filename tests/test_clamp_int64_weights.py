"""clamp_int64_weights: Slice/Range/NMS sentinels, refusals by consumer, shared weights, samples."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from conftest import SAMPLES, parse, run, sample_data
from rulecheck import rewrite

from graphfix.targets import resolve_target

RULE = "clamp_int64_weights"
I64 = np.iinfo(np.int64)
I32 = np.iinfo(np.int32)


def _wide_int64_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """INT64 initializers and Constant outputs of the main graph with values outside INT32."""
    found = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            attr = node.attribute[0]
            found[node.output[0]] = (onnx.numpy_helper.to_array(attr.t) if attr.type == onnx.AttributeProto.TENSOR
                                     else np.asarray(onnx.helper.get_attribute_value(attr)))
    return {name: v for name, v in found.items()
            if v.dtype == np.int64 and v.size and (v.max() > I32.max or v.min() < I32.min)}


def _clamp_findings(model: onnx.ModelProto, target: str = "trt8.6") -> list[str]:
    """The int64.clamped findings `graphfix check` reports (Target.evaluate_model)."""
    wide = _wide_int64_weights(model)
    facts = [(name, [n.name for n in model.graph.node if name in n.input]) for name in wide]
    found = resolve_target(target).evaluate_model(model.opset_import[0].version, facts)
    return [f.node for f in found if f.limitation == "int64.clamped"]


def test_runs_exactly_on_the_targets_that_narrow_int64():
    active = {name: "int64.clamped" in resolve_target(name).limitations
              for name in ("trt7.2", "trt8.0", "trt8.4", "trt8.6", "trt10.0", "portable")}
    assert active == {"trt7.2": True, "trt8.0": True, "trt8.4": True, "trt8.6": True,
                      "trt10.0": False, "portable": True}


def test_dgcnn_sample_slice_ends_are_clamped_verified_and_match_torch():
    model = onnx.load(SAMPLES / "topk_smallest.onnx")
    assert len(_clamp_findings(model)) == 2
    result, report = rewrite(model, RULE, target="trt8.6")
    assert report.passes[0].status == "verified" and report.passes[0].max_abs == 0.0
    assert _clamp_findings(result) == [] and _wide_int64_weights(result) == {}
    ends = [onnx.numpy_helper.to_array(t) for t in result.graph.initializer if t.name.startswith(RULE)]
    assert [e.tolist() for e in ends] == [[I32.max], [I32.max]]
    feeds, data = sample_data("topk_smallest")
    np.testing.assert_array_equal(run(result, feeds)[0], run(model, feeds)[0])
    np.testing.assert_allclose(run(result, feeds)[0], data["torch:logits"], rtol=1e-4, atol=1e-5)
    _, second = rewrite(result, RULE)
    assert second.passes[0].matches == 0  # idempotent
    assert second.passes[0].near_misses[0][2] == "no INT64 weight holds values outside INT32"


SLICES = [  # (starts, ends, steps): the sentinels PyTorch writes, and clamped steps
    ([1], [I64.max], [1]),                 # x[1:]
    ([-1], [-I64.max], [-1]),              # x.flip(-1): x[::-1]
    ([I64.min], [I64.max], [2]),           # x[::2] written with both sentinels
    ([I64.max], [I64.min], [-3]),          # x[::-3]
    ([0], [I64.max], [I64.max]),           # x[0:1] as a huge stride
    ([2], [I64.max], [I64.min]),           # empty: a negative stride from 2 to the end
]


@pytest.mark.parametrize("starts, ends, steps", SLICES)
def test_slice_sentinels_mean_the_same_once_clamped(starts, ends, steps, rng):
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N, M] x) => (float[A, B] y) {{
        starts = Constant <value = int64[1] {{{starts[0]}}}> ()
        ends = Constant <value = int64[1] {{{ends[0]}}}> ()
        axes = Constant <value = int64[1] {{1}}> ()
        steps = Constant <value = int64[1] {{{steps[0]}}}> ()
        y = Slice (x, starts, ends, axes, steps)
    }}
    """)
    result, report = rewrite(model, RULE)
    assert report.passes[0].status == "verified"
    assert _wide_int64_weights(result) == {}
    produced = {o for n in result.graph.node for o in n.output}
    assert not set(_wide_int64_weights(model)) & produced  # the unclamped Constants are gone
    for shape in [(2, 1), (3, 7), (1, 40)]:
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_array_equal(run(result, {"x": x})[0], run(model, {"x": x})[0])


def _range_model(start: int | None, limit: int, delta: int) -> onnx.ModelProto:
    """Range over Constant bounds; start None reads the graph input s instead."""
    start_node = "" if start is None else f"s = Constant <value = int64 {{{start}}}> ()"
    inputs = "int64 s" if start is None else ""
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g ({inputs}) => (int64[N] y) {{
        {start_node}
        limit = Constant <value = int64 {{{limit}}}> ()
        delta = Constant <value = int64 {{{delta}}}> ()
        y = Range (s, limit, delta)
    }}
    """)


@pytest.mark.parametrize("start, limit, delta, expected", [
    (5, I64.min, 1, []),                  # empty either way
    (0, 10, I64.max, [0]),                # one element, the start
    (-3, I64.max, -1, []),                # empty: counting down towards a larger limit
])
def test_range_is_clamped_when_the_clamped_bounds_give_the_same_elements(start, limit, delta, expected):
    model = _range_model(start, limit, delta)
    result, report = rewrite(model, RULE)
    assert report.passes[0].status == "verified" and _wide_int64_weights(result) == {}
    np.testing.assert_array_equal(run(result, {})[0], np.array(expected, np.int64))


def test_range_refusals_say_why():
    _, report = rewrite(_range_model(0, I64.max, 2**62), RULE)
    assert report.passes[0].near_misses[0][2].startswith(
        f"INT64 weight 'limit' (9223372036854775807) read by Range 'y' (input 1): Range(0, "
        f"9223372036854775807, {2**62}) has 2 elements, clamped 1")
    _, report = rewrite(_range_model(-2**40, 0, 2**39), RULE)  # 2 elements either way
    assert report.passes[0].near_misses[0][2].endswith(f"Range({-2**40}, 0, {2**39}) starts or steps "
                                                       "elsewhere once clamped")
    _, report = rewrite(_range_model(None, I64.min, 1), RULE)
    assert report.passes[0].near_misses[0][2].endswith(
        "Range's start is computed at run time, so the clamped range cannot be proven equal")


def test_nms_unlimited_box_count_is_clamped(rng):
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1, N, 4] boxes, float[1, 2, N] scores) => (int64[K, 3] selected) {{
        limit = Constant <value_ints = [{I64.max}]> ()
        iou = Constant <value = float[1] {{0.5}}> ()
        selected = NonMaxSuppression (boxes, scores, limit, iou)
    }}
    """)
    result, report = rewrite(model, RULE)
    assert report.passes[0].status == "verified" and _wide_int64_weights(result) == {}
    corners = rng.uniform(0, 10, (1, 30, 2)).astype(np.float32)
    feeds = {"boxes": np.concatenate([corners, corners + rng.uniform(1, 4, (1, 30, 2)).astype(np.float32)], -1),
             "scores": rng.uniform(0, 1, (1, 2, 30)).astype(np.float32)}
    np.testing.assert_array_equal(run(result, feeds)[0], run(model, feeds)[0])


def test_a_weight_shared_with_an_unsafe_consumer_is_copied_and_the_rest_reported(rng, caplog):
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (int64[N] x, bool[N] keep) => (int64[M] head, int64[N] filled) {{
        zero = Constant <value = int64[1] {{0}}> ()
        big = Constant <value = int64[1] {{{I64.max}}}> ()
        head = Slice (x, zero, big)
        filled = Where (keep, x, big)
    }}
    """)
    with caplog.at_level(logging.WARNING):
        result, report = rewrite(model, RULE, target="trt8.6")
    assert report.passes[0].status == "verified"
    slice_node = next(n for n in result.graph.node if n.op_type == "Slice")
    where_node = next(n for n in result.graph.node if n.op_type == "Where")
    assert slice_node.input[2].startswith(RULE) and where_node.input[2] == "big"
    assert _clamp_findings(result) == ["big"]  # `graphfix check` still names it
    assert "read by Where 'filled' (input 2): Where computes with the value itself" in caplog.text
    feeds = {"x": rng.integers(-5, 5, 6).astype(np.int64), "keep": rng.integers(0, 2, 6).astype(bool)}
    for got, want in zip(run(result, feeds), run(model, feeds)):
        np.testing.assert_array_equal(got, want)


def test_near_miss_names_every_unsafe_consumer():
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (bool[N] mask, int64[N] x) => (int64[N] y, int64[N] z) {{
        low = Constant <value = int64 {{{I64.min}}}> ()
        y = Where (mask, x, low)
        z = Add (x, low)
    }}
    """)
    result, report = rewrite(model, RULE)
    assert report.passes[0].matches == 0
    reason = report.passes[0].near_misses[0][2]
    assert "INT64 weight 'low' (-9223372036854775808) read by Where 'y' (input 2)" in reason
    assert "read by Add 'z' (input 1)" in reason


def test_slice_of_a_dim_beyond_int32_is_refused():
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (uint8[3000000000] x) => (uint8[M] y) {{
        one = Constant <value = int64[1] {{1}}> ()
        end = Constant <value = int64[1] {{{I64.max}}}> ()
        y = Slice (x, one, end)
    }}
    """)
    _, report = rewrite(model, RULE, verify=False)
    assert report.passes[0].near_misses[0][2].endswith(
        "as ends of a slice it is clamped to INT32 but the input has a dim of 3000000000")


def test_slice_inside_an_if_branch_reads_the_clamped_copy(rng):
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[N] x, bool c) => (float[M] y) {{
        one = Constant <value = int64[1] {{1}}> ()
        end = Constant <value = int64[1] {{{I64.max}}}> ()
        y = If (c) <then_branch = t () => (float[M] a) {{ a = Slice (x, one, end) }},
                    else_branch = e () => (float[M] b) {{ b = Identity (x) }}>
    }}
    """)
    result, report = rewrite(model, RULE)
    assert report.passes[0].status == "verified" and _wide_int64_weights(result) == {}
    x = rng.standard_normal(5).astype(np.float32)
    for c in (True, False):
        np.testing.assert_array_equal(run(result, {"x": x, "c": np.array(c)})[0],
                                      run(model, {"x": x, "c": np.array(c)})[0])
