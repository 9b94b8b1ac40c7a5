"""Clamp INT64 weights outside INT32 where the clamp provably keeps what their consumers compute."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

import graphfix as gf
from graphfix.rules._protos import (
    all_graphs,
    all_nodes,
    drop_unread_weights,
    literal_sources,
    literal_value,
    node_name,
    static_dims,
)

logger = logging.getLogger(__name__)

_INT32 = np.iinfo(np.int32)
_NAME_PREFIX = "clamp_int64_weights"
# Slice inputs read as positions or strides along an axis: starts, ends, steps.
_SLICE_BOUND_INPUTS = {1: "starts", 2: "ends", 4: "steps"}
_RANGE_INPUTS = ("start", "limit", "delta")
_NMS_MAX_BOXES = 2  # NonMaxSuppression's max_output_boxes_per_class
_SHOWN_REASONS = 3


@dataclass(frozen=True)
class _Use:
    """One input of one node that reads an INT64 weight holding values outside INT32."""

    weight: str
    extreme: int  # the weight's value farthest outside INT32
    node: onnx.NodeProto
    index: int
    problem: str  # why clamping would change the node's result; '' when it cannot

    def __str__(self) -> str:
        return (f"INT64 weight {self.weight!r} ({self.extreme}) read by {self.node.op_type} "
                f"{node_name(self.node)!r} (input {self.index}): {self.problem}")


@gf.rule(limitation="int64.clamped")
class ClampInt64Weights:
    """Clamp INT64 weights to INT32 where their consumers compute the same either way.

    TensorRT limitation: TensorRT 7.2 to 8.6 have no INT64 type: the parser narrows every INT64
    weight (initializer or Constant node) to INT32 with a warning and clamps values outside INT32,
    silently (trt-onnx-support.md, INT64 row: S72-S86; native INT64 from 9.0/10.0). PyTorch writes
    INT64_MAX / INT64_MIN sentinels for open slices (`x[:, 1:]`, `x.flip(...)`), for NMS's
    unlimited box count, and for masked_fill with iinfo limits; what a clamped sentinel means
    depends on its consumer.

    Rewrite: each weight with values outside INT32 gets a clamped copy, read by the consumers
    for which the clamp provably changes nothing; the others keep the original and are reported
    by name (and `graphfix check` still flags them). Clamp-safe consumers: Slice starts, ends and
    steps (ONNX clamps them to the sliced dim, so any value at or beyond INT32's limits means
    "past the end" exactly as the clamped one does, for every dim up to INT32_MAX, which a
    TensorRT <= 8.6 dim cannot exceed; refused when a static dim of the input is larger);
    NonMaxSuppression's max_output_boxes_per_class above INT32_MAX (no class can have more
    boxes than that); and Range when its start, limit and delta are all weights and the clamped
    values produce the same count and the same elements (exact integer arithmetic). Everything
    else (Where fill values, arithmetic, Range over run-time bounds, ...) is left alone. The pass
    is verified end to end in onnxruntime, which computes in INT64, so the clamped model must
    give the same outputs there too.
    """

    def check(self, ctx):
        limits = np.iinfo(np.int32)
        if not any(np.any((v < limits.min) | (v > limits.max)) for _, v in ctx.weights(np.dtype(np.int64))):
            return gf.reject("no INT64 weight holds values outside INT32")  # decided without an export
        uses = _out_of_range_uses(ctx.proto)
        if not uses:
            return gf.reject("no INT64 weight holds values outside INT32")
        if all(u.problem for u in uses):
            return gf.reject(_summary(uses))
        return gf.accept(uses=uses)

    def transform(self, ctx, proto, uses):
        unsafe = [u for u in uses if u.problem]
        if unsafe:
            logger.warning("clamp_int64_weights left %d use(s) alone: %s", len(unsafe), _summary(unsafe))
        _clamp(proto, [u for u in uses if not u.problem])
        return proto


# ----------------------------------------------------------------------------- finding uses


def _out_of_range_uses(model: onnx.ModelProto) -> list[_Use]:
    sources = literal_sources(model)
    values = {name: _int64_value(source) for name, source in sources.items()}
    wide = {name: _extreme(value) for name, value in values.items()
            if value is not None and _outside_int32(value)}
    if not wide:
        return []
    dims = static_dims(model)
    return [
        _Use(name, wide[name], node, index, _problem(node, index, values, dims))
        for node in all_nodes(model.graph)
        for index, name in enumerate(node.input)
        if name in wide
    ]


def _int64_value(source: onnx.TensorProto | onnx.NodeProto) -> np.ndarray | None:
    tensor = source if isinstance(source, onnx.TensorProto) else source.attribute[0].t
    if tensor.data_type not in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.INT64):
        return None  # do not decode float weights for nothing (UNDEFINED: value_int(s) attribute)
    value = literal_value(source)
    return value if value is not None and value.dtype == np.int64 else None


def _outside_int32(value: np.ndarray) -> bool:
    return bool(value.size) and (int(value.max()) > _INT32.max or int(value.min()) < _INT32.min)


def _extreme(value: np.ndarray) -> int:
    low, high = int(value.min()), int(value.max())
    return low if -low > high else high


def _problem(node: onnx.NodeProto, index: int, values: dict[str, np.ndarray | None],
             dims: dict[str, list[int | None]]) -> str:
    """Why clamping input `index` of `node` changes its result ('' when it cannot)."""
    if node.op_type == "Slice" and index in _SLICE_BOUND_INPUTS:
        return _dims_problem(dims.get(node.input[0]), f"{_SLICE_BOUND_INPUTS[index]} of a slice")
    if node.op_type == "NonMaxSuppression" and index == _NMS_MAX_BOXES:
        if int(values[node.input[index]].min()) < _INT32.min:
            return "a negative box limit below INT32"
        return _dims_problem(dims.get(node.input[0]), "a box limit")
    if node.op_type == "Range":
        return _range_problem(node, values)
    return f"{node.op_type} computes with the value itself, so clamping it changes the result"


def _dims_problem(dims: list[int | None] | None, role: str) -> str:
    """A bound clamped to INT32 means the same for every dim up to INT32_MAX."""
    large = [d for d in dims or () if d is not None and d > _INT32.max]
    if large:
        return f"as {role} it is clamped to INT32 but the input has a dim of {large[0]}"
    return ""


def _range_problem(node: onnx.NodeProto, values: dict[str, np.ndarray | None]) -> str:
    bounds = [values.get(name) for name in node.input]
    missing = [role for role, value in zip(_RANGE_INPUTS, bounds) if value is None]
    if missing:
        return f"Range's {missing[0]} is computed at run time, so the clamped range cannot be proven equal"
    exact = [int(v.reshape(())) for v in bounds]
    clamped = [int(np.clip(v, _INT32.min, _INT32.max)) for v in exact]
    if _same_range(exact, clamped):
        return ""
    described = f"Range({', '.join(map(str, exact))})"
    count, clamped_count = _range_length(*exact), _range_length(*clamped)
    if count != clamped_count:
        return f"{described} has {count} elements, clamped {clamped_count}"
    return f"{described} starts or steps elsewhere once clamped"


def _range_length(start: int, limit: int, delta: int) -> int | None:
    """ONNX Range's element count, max(ceil((limit - start) / delta), 0), in exact integers."""
    if delta == 0:
        return None
    return max(-((start - limit) // delta), 0)


def _same_range(exact: Sequence[int], clamped: Sequence[int]) -> bool:
    count = _range_length(*exact)
    if count is None or count != _range_length(*clamped):
        return False
    return count == 0 or (exact[0] == clamped[0] and (count == 1 or exact[2] == clamped[2]))


def _summary(uses: Sequence[_Use]) -> str:
    reasons = [str(u) for u in uses if u.problem]
    more = f" (and {len(reasons) - _SHOWN_REASONS} more)" if len(reasons) > _SHOWN_REASONS else ""
    return "; ".join(reasons[:_SHOWN_REASONS]) + more


# ----------------------------------------------------------------------------- clamping


def _clamp(model: onnx.ModelProto, safe: Sequence[_Use]) -> None:
    """Give the safe uses a clamped copy of their weight (an initializer of the main graph,
    visible in every subgraph), then drop originals nobody reads any more."""
    sources = literal_sources(model)
    taken = {name for g in all_graphs(model.graph) for name in _names(g)}
    copies: dict[str, str] = {}
    for use in safe:
        if use.weight not in copies:
            copies[use.weight] = _fresh(f"{_NAME_PREFIX}/{use.weight}", taken)
            clamped = np.clip(literal_value(sources[use.weight]), _INT32.min, _INT32.max).astype(np.int64)
            model.graph.initializer.append(onnx.numpy_helper.from_array(clamped, copies[use.weight]))
        use.node.input[use.index] = copies[use.weight]
    drop_unread_weights(model, set(copies))


def _names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in (*graph.input, *graph.initializer)}
    return names | {o for n in graph.node for o in n.output}


def _fresh(name: str, taken: set[str]) -> str:
    candidate, k = name, 1
    while candidate in taken:
        k += 1
        candidate = f"{name}/{k}"
    taken.add(candidate)
    return candidate
