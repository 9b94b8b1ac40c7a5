"""Fuzzing: random valid graphs mixing the ops the rules target; apply verifies or declines.

Every example: `graphfix.apply` (target `portable`, every default rule) must not crash; every
pass it reports as verified must really be equivalent (checked again here on fresh inputs of a
different size when dims are dynamic); a pass that is not verified must say why; the result
passes onnx.checker's full check. CI runs a bounded number of examples; for a longer run:

    GRAPHFIX_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz.py -p no:cacheprovider
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from conftest import run
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import graphfix as gf
from graphfix import ir
from graphfix.report import STATUS_ROLLED_BACK, STATUS_UNVERIFIED, STATUS_VERIFIED

EXAMPLES = int(os.environ.get("GRAPHFIX_FUZZ_EXAMPLES", "40"))


class _Builder:
    """Grows a chain of blocks on a [B, N, D] float activation."""

    def __init__(self, draw, opset: int, dims: tuple[int, int, int]):
        self.draw = draw
        self.opset = opset
        self.dims = dims
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(draw(st.integers(0, 2**16)))

    def name(self, prefix: str) -> str:
        return f"{prefix}{len(self.nodes)}_{len(self.inits)}"

    def const(self, value) -> str:
        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: int = 1, **attrs) -> str | list[str]:
        names = [self.name(op.lower()) + f"_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, **attrs))
        return names[0] if outputs == 1 else names

    def weight(self, *shape: int) -> str:
        return self.const((self.rng.standard_normal(shape) * 0.3).astype(np.float32))

    def reduce(self, op: str, x: str, axes: list[int], keepdims: int = 1) -> str:
        if op == "ReduceSum" and self.opset >= 13 or self.opset >= 18:
            return self.node(op, [x, self.const(np.array(axes, np.int64))], keepdims=keepdims)
        return self.node(op, [x], axes=axes, keepdims=keepdims)


def _clip_runtime(b: _Builder, x: str) -> str:
    axis = b.draw(st.integers(0, 2))
    size = b.node("Cast", [b.node("Gather", [b.node("Shape", [x]), b.const(np.array(axis, np.int64))], axis=0)], to=TensorProto.FLOAT)
    bound = b.node("Mul", [size, b.const(np.float32(b.draw(st.sampled_from([0.01, 0.1, 1.0]))))])
    low = b.const(np.float32(-b.draw(st.sampled_from([0.05, 0.5, 2.0]))))
    return b.node("Clip", [x, low, bound] if b.draw(st.booleans()) else [x, "", bound])


def _clip_foldable(b: _Builder, x: str) -> str:
    low = b.node("Cast", [b.const(np.int64(-1))], to=TensorProto.FLOAT)
    return b.node("Clip", [x, low, b.const(np.float32(0.5))])


def _cumsum(b: _Builder, x: str) -> str:
    axis = b.draw(st.integers(-3, 2))
    return b.node("CumSum", [x, b.const(np.array(axis, np.int64))],
                  exclusive=int(b.draw(st.booleans())), reverse=int(b.draw(st.booleans())))


def _einsum(b: _Builder, x: str) -> str:
    d = b.dims[2]
    equation, other = b.draw(st.sampled_from([
        ("bnd,de->bne", (d, d)),
        ("...d,de->...e", (d, d)),
        ("bnd,bmd->bnm", None),
    ]))
    if other is None:
        scores = b.node("Einsum", [x, x], equation=equation)
        return b.node("Einsum", [b.node("Softmax", [scores], axis=-1), x], equation="bnm,bmd->bnd")
    return b.node("Einsum", [x, b.weight(*other)], equation=equation)


def _topk_smallest(b: _Builder, x: str) -> str:
    d = b.dims[2]
    k = b.draw(st.integers(1, d))
    values, _ = b.node("TopK", [x, b.const(np.array([k], np.int64))], outputs=2, axis=-1, largest=0)
    return b.node("MatMul", [values, b.weight(k, d)])


def _reduce(b: _Builder, x: str) -> str:
    op = b.draw(st.sampled_from(["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"]))
    axes = b.draw(st.sampled_from([[-1], [1], [1, 2]]))
    return b.node("Add", [x, b.reduce(op, x, axes)])


def _layer_norm(b: _Builder, x: str) -> str:
    d = b.dims[2]
    return b.node("LayerNormalization", [x, b.weight(d), b.weight(d)], axis=-1, epsilon=1e-5)


def _bool_mask(b: _Builder, x: str) -> str:
    mask = b.node("Cast", [x], to=TensorProto.BOOL)
    any_ = b.node("Cast", [b.reduce("ReduceMax", b.node("Cast", [mask], to=TensorProto.INT32), [-1])], to=TensorProto.BOOL)
    return b.node("Where", [any_, x, b.const(np.float32(0))])


def _range(b: _Builder, x: str) -> str:
    n = b.node("Gather", [b.node("Shape", [x]), b.const(np.array(2, np.int64))], axis=0)
    positions = b.node("Cast", [b.node("Range", [b.const(np.int64(0)), n, b.const(np.int64(1))])], to=TensorProto.FLOAT)
    return b.node("Add", [x, b.node("Mul", [positions, b.const(np.float32(0.01))])])


BLOCKS = [_clip_runtime, _clip_foldable, _cumsum, _einsum, _topk_smallest, _layer_norm, _bool_mask, _range]


@st.composite
def models(draw):
    opset = draw(st.sampled_from([13, 17, 18]))
    dims = (draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(2, 6)))
    dynamic = draw(st.booleans())
    b = _Builder(draw, opset, dims)
    x = "x"
    blocks = [blk for blk in BLOCKS if not (blk is _layer_norm and opset < 17)] + [_reduce]
    for block in draw(st.lists(st.sampled_from(blocks), min_size=1, max_size=5)):
        x = block(b, x)
    shape = ["batch", "n", dims[2]] if dynamic else list(dims)
    graph = helper.make_graph(b.nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model, dims, dynamic


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(models())
def test_apply_verifies_or_declines(case):
    model, dims, dynamic = case
    proto = onnx.ModelProto()
    proto.CopyFrom(model)
    working = ir.from_proto(proto)
    shape = "x:" + "x".join(str(d) for d in dims)
    report = gf.apply(working, gf.ApplyOptions(entry_points=False, input_shapes=(shape,)))
    for p in report.passes:  # shown by --hypothesis-show-statistics: which rules the examples exercised
        if p.matches:
            event(f"{p.name}: {p.status}")
    for p in report.passes:
        assert p.status in (STATUS_VERIFIED, STATUS_ROLLED_BACK, STATUS_UNVERIFIED, "unchanged"), p
        if p.status in (STATUS_ROLLED_BACK, STATUS_UNVERIFIED):
            assert p.detail, f"{p.name} {p.status} without a reason"
    result = ir.to_proto(working)
    onnx.checker.check_model(result, full_check=True)
    sizes = [dims, (dims[0] + 1, dims[1] + 2, dims[2])] if dynamic else [dims]
    rng = np.random.default_rng(99)
    for size in sizes:
        x = rng.uniform(-2, 2, size).astype(np.float32)
        expected = run(model, {"x": x})[0]
        actual = run(result, {"x": x})[0]
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
