"""Deterministic large models built from repeated real blocks, for the benchmarks.

Each block is what exported detectors and transformers contain and what graphfix rewrites:
attention written with Einsum (SuperGlue / LightGlue style) and LayerNormalization, position ids
from CumSum over an attention mask, an L2 normalisation whose Clip bound comes from the runtime
shape, and a box-decoding head with Exp. Blocks chain on a [1, 16, 32] activation. Shapes are
static: with symbolic batch and sequence dims, onnxruntime 1.31's session creation grows
quadratically on these Reshape chains (42 s for 10k nodes against 1.8 s static), which would
measure onnxruntime instead of graphfix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["build", "write", "HIDDEN"]

HIDDEN = 32
HEADS = 2
_HEAD_DIM = HIDDEN // HEADS
_OPSET = 17


class _Graph:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def weight(self, *shape: int, scale: float = 0.2) -> str:
        name = self.name("w")
        values = (self.rng.standard_normal(shape) * scale).astype(np.float32)
        self.initializers.append(numpy_helper.from_array(values, name))
        return name

    def const(self, values: np.ndarray) -> str:
        name = self.name("c")
        self.initializers.append(numpy_helper.from_array(np.asarray(values), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs) -> str | list[str]:
        names = [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.name(f"/{op_type}"), **attrs))
        return names[0] if outputs == 1 else names


def _attention(g: _Graph, x: str) -> str:
    heads = g.const(np.array([0, -1, HEADS, _HEAD_DIM], np.int64))
    merged = g.const(np.array([0, -1, HIDDEN], np.int64))

    def project(weight: str) -> str:
        split = g.op("Reshape", [g.op("MatMul", [x, weight]), heads])
        return g.op("Transpose", [split], perm=[0, 2, 1, 3])

    q, k, v = (project(g.weight(HIDDEN, HIDDEN)) for _ in range(3))
    scores = g.op("Einsum", [q, k], equation="bhqd,bhkd->bhqk")
    scaled = g.op("Mul", [scores, g.const(np.array(_HEAD_DIM**-0.5, np.float32))])
    attended = g.op("Einsum", [g.op("Softmax", [scaled], axis=-1), v], equation="bhqk,bhkd->bhqd")
    back = g.op("Reshape", [g.op("Transpose", [attended], perm=[0, 2, 1, 3]), merged])
    residual = g.op("Add", [g.op("MatMul", [back, g.weight(HIDDEN, HIDDEN)]), x])
    return g.op("LayerNormalization", [residual, g.const(np.ones(HIDDEN, np.float32)), g.const(np.zeros(HIDDEN, np.float32))], axis=-1)


def _positions(g: _Graph, x: str, mask: str) -> str:
    ids = g.op("Sub", [g.op("CumSum", [mask, g.const(np.array(1, np.int64))]), g.const(np.array(1, np.int64))])
    clipped = g.op("Max", [ids, g.const(np.array(0, np.int64))])
    table = g.weight(512, HIDDEN, scale=0.05)
    return g.op("Add", [x, g.op("Gather", [table, clipped], axis=0)])


def _normalize(g: _Graph, x: str) -> str:
    norm = g.op("ReduceL2", [x], axes=[-1], keepdims=1)
    width = g.op("Gather", [g.op("Shape", [x]), g.const(np.array(2, np.int64))], axis=0)
    limit = g.op("Cast", [width], to=TensorProto.FLOAT)
    bounded = g.op("Clip", [norm, g.const(np.array(1e-6, np.float32)), limit])
    return g.op("Div", [x, bounded])


def _box_head(g: _Graph, x: str) -> str:
    deltas = g.op("MatMul", [x, g.weight(HIDDEN, 4, scale=0.05)])
    sizes = g.op("Mul", [g.op("Exp", [deltas]), g.const(np.full(4, 16.0, np.float32))])
    return g.op("Add", [x, g.op("MatMul", [sizes, g.weight(4, HIDDEN, scale=0.01)])])


_BLOCKS = (_attention, _positions, _normalize, _box_head)


def build(target_nodes: int, seed: int = 0) -> onnx.ModelProto:
    """A model of about `target_nodes` nodes: the four blocks repeated in turn."""
    g = _Graph(seed)
    x, mask = "x", "mask"
    block = 0
    while len(g.nodes) < target_nodes:
        fn = _BLOCKS[block % len(_BLOCKS)]
        x = fn(g, x, mask) if fn is _positions else fn(g, x)
        block += 1
    graph = helper.make_graph(
        g.nodes,
        f"blocks_{target_nodes}",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, HIDDEN]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, [1, 16]),
        ],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 16, HIDDEN])],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="graphfix-benchmarks")
    model.ir_version = 8
    return model


def write(target_nodes: int, folder: Path) -> Path:
    """Build and save (once per size) into `folder`; returns the path."""
    path = folder / f"blocks_{target_nodes}.onnx"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        onnx.save(build(target_nodes), path)
    return path
