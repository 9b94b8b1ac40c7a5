"""The builder rules use to write replacements: `op.MatMul(a, b)`, `op.constant(array)`.

Nodes are only described here; the driver connects them to the graph when the rewrite
returns, so a rewrite that raises leaves the graph untouched. Every node and initializer gets
a provenance name `<rule>/<matched node>/<k>` that the report and `bisect` read back.
Opset-dependent spellings (axes as attribute or input) are handled by the helpers
`unsqueeze`, `squeeze`, `reduce`, `slice` and `split`, so rules work at every opset >= 11.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphfix import ir

__all__ = ["Builder", "PendingNode", "TensorLike", "AXES_INPUT_SINCE", "SLICE_TO_END"]

TensorLike = ir.Tensor | np.ndarray | None

# A Slice end meaning "to the end of the axis", kept inside INT32 so that TensorRT <= 8.6 does
# not have to clamp it.
SLICE_TO_END = int(np.iinfo(np.int32).max)

# Constants up to this many elements are shared between the rewrites of one pass.
_SHARED_CONSTANT_ELEMENTS = 64

# The opset from which each op takes its axes (or split sizes) as an input instead of an attribute.
AXES_INPUT_SINCE = {
    "Unsqueeze": 13,
    "Squeeze": 13,
    "ReduceSum": 13,
    "ReduceMean": 18,
    "ReduceMax": 18,
    "ReduceMin": 18,
    "ReduceProd": 18,
    "ReduceL1": 18,
    "ReduceL2": 18,
    "ReduceLogSum": 18,
    "ReduceLogSumExp": 18,
    "ReduceSumSquare": 18,
    "Split": 13,
}


@dataclass
class PendingNode:
    """A node a rewrite asked for, not yet in the graph."""

    op: str
    domain: str
    name: str
    attrs: dict[str, Any]
    inputs: list[ir.Tensor]
    outputs: list[ir.Variable]


class Builder:
    """`op` in rewrites. Attribute access creates nodes: `op.Add(x, y)` returns the output tensor.

    `op.ctx` is the match's Context (the same object the check received).

    `shared_constants`, kept by the driver for one graph during one pass, makes every small
    constant (shapes, axes, scalars) one read-only initializer however many rewrites ask for
    it: a thousand decomposed CumSums then add four Slice parameters, not twenty thousand.
    """

    def __init__(
        self,
        rule_name: str,
        root_name: str,
        names: ir.NameRegistry,
        opset: int,
        ctx: Any = None,
        shared_constants: dict[tuple, ir.Constant] | None = None,
    ):
        self.opset = opset
        self.ctx = ctx
        self.nodes: list[PendingNode] = []
        self._prefix = f"{rule_name}/{root_name or 'node'}"
        self._names = names
        self._count = 0
        self._shared = shared_constants

    # -- core
    def node(
        self,
        op_type: str,
        *inputs: TensorLike,
        _outputs: int = 1,
        _domain: str = "",
        **attrs: Any,
    ) -> ir.Variable | tuple[ir.Variable, ...]:
        """A node of `op_type`; returns its output, or a tuple when `_outputs` > 1.

        Inputs may be tensors, numpy arrays (become initializers) or None (omitted optional
        input). Python scalars are refused: their ONNX type would be a guess.
        """
        name = self._fresh()
        tensors = [self._as_tensor(value, op_type) for value in inputs]
        outputs = [ir.Variable(self._names.fresh(f"{name}_out{i}")) for i in range(_outputs)]
        clean = {k: v for k, v in attrs.items() if v is not None}
        ir.infer_output_types(op_type, _domain, self.opset if _domain in ("", "ai.onnx") else 1, clean, tensors, outputs)
        self.nodes.append(PendingNode(op_type, _domain, name, clean, tensors, outputs))
        return outputs[0] if _outputs == 1 else tuple(outputs)

    def __getattr__(self, op_type: str) -> Any:
        if op_type.startswith("_"):
            raise AttributeError(op_type)
        return lambda *inputs, **attrs: self.node(op_type, *inputs, **attrs)

    def constant(self, value: Any, dtype: Any = None) -> ir.Constant:
        """An initializer holding `value` (converted to `dtype` when given)."""
        array = np.asarray(value, dtype=dtype)
        if array.dtype == np.float64 and dtype is None and not isinstance(value, np.ndarray):
            raise TypeError("give constant() a dtype for Python floats (float32? float64?)")
        if self._shared is None or array.size > _SHARED_CONSTANT_ELEMENTS:
            return ir.Constant(self._names.fresh(f"{self._prefix}/const{self._next()}"), array)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._shared:
            array = array.copy()
            array.setflags(write=False)  # shared by every rewrite that asked for this value
            self._shared[key] = ir.Constant(self._names.fresh(f"{self._prefix}/const{self._next()}"), array)
        return self._shared[key]

    def int64(self, values: Sequence[int] | int) -> ir.Constant:
        """An int64 initializer (shapes, axes, indices)."""
        return self.constant(np.asarray(values, dtype=np.int64))

    # -- opset-aware spellings
    def axes_op(self, op_type: str, x: ir.Tensor, axes: Sequence[int] | ir.Tensor | None, **attrs: Any) -> ir.Variable:
        """`op_type` over `axes`, as an attribute or an input depending on the opset."""
        if axes is None:
            return self.node(op_type, x, **attrs)
        if self.opset >= AXES_INPUT_SINCE.get(op_type, 10**9):
            axes_tensor = axes if isinstance(axes, ir.Tensor) else self.int64(list(axes))
            return self.node(op_type, x, axes_tensor, **attrs)
        if isinstance(axes, ir.Tensor):
            value = ir.literal_value(axes)
            if value is None:
                raise ValueError(f"{op_type} at opset {self.opset} needs constant axes")
            axes = value.tolist()
        return self.node(op_type, x, axes=[int(a) for a in np.atleast_1d(axes)], **attrs)

    def unsqueeze(self, x: ir.Tensor, axes: Sequence[int]) -> ir.Variable:
        return self.axes_op("Unsqueeze", x, axes)

    def squeeze(self, x: ir.Tensor, axes: Sequence[int]) -> ir.Variable:
        return self.axes_op("Squeeze", x, axes)

    def reduce(self, op_type: str, x: ir.Tensor, axes: Sequence[int] | ir.Tensor | None, keepdims: int = 1) -> ir.Variable:
        return self.axes_op(op_type, x, axes, keepdims=keepdims)

    def slice(
        self,
        x: ir.Tensor,
        starts: Sequence[int] | ir.Tensor,
        ends: Sequence[int] | ir.Tensor,
        axes: Sequence[int] | ir.Tensor | None = None,
        steps: Sequence[int] | ir.Tensor | None = None,
    ) -> ir.Variable:
        """Slice (opset >= 10 form: everything as inputs)."""
        def as_input(values: Any) -> Any:
            return values if values is None or isinstance(values, ir.Tensor) else self.int64(list(values))

        return self.node("Slice", x, as_input(starts), as_input(ends), as_input(axes), as_input(steps))

    def split(self, x: ir.Tensor, sizes: Sequence[int], axis: int) -> tuple[ir.Variable, ...]:
        outputs = len(sizes)
        if self.opset >= AXES_INPUT_SINCE["Split"]:
            result = self.node("Split", x, self.int64(list(sizes)), axis=axis, _outputs=outputs)
        else:
            result = self.node("Split", x, axis=axis, split=list(sizes), _outputs=outputs)
        return result if isinstance(result, tuple) else (result,)

    def cast(self, x: ir.Tensor, dtype: Any) -> ir.Variable:
        """Cast to a numpy dtype (np.float32, 'int64', ...)."""
        import onnx

        return self.node("Cast", x, to=int(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))))

    def subgraph(
        self,
        name: str,
        inputs: Sequence[tuple[Any, Sequence[int | str | None] | None]],
        build: Callable[..., Sequence[ir.Tensor]],
    ) -> ir.Graph:
        """A subgraph (Loop or Scan body, If branch): the value of a node's graph attribute.

        Args:
            name: Suffix of the provenance prefix of the body's nodes and tensors.
            inputs: The body's formal inputs as (numpy dtype, shape or None).
            build: `build(op, *formal_inputs)` writes the body with a builder of its own (same
                naming and opset) and returns the body's outputs.

        Body nodes may read the formal inputs, tensors made inside the body, initializers, and
        tensors this rewrite made before the call (outer-scope references). An existing tensor of
        the enclosing graph must come in through a formal input: the body's edges are connected
        here, outside the pass's journal, and only links to new tensors vanish with an undo.

        Raises:
            ValueError: The body reads an existing tensor of the enclosing graph.
        """
        inner = Builder(name, "", self._names, self.opset, self.ctx)
        inner._prefix = f"{self._prefix}/{name}"
        formal = [
            ir.Variable(self._names.fresh(f"{inner._prefix}/in{i}"), dtype=np.dtype(dtype), shape=shape)
            for i, (dtype, shape) in enumerate(inputs)
        ]
        outputs = list(build(inner, *formal))
        allowed = {id(t) for t in formal} | {id(t) for spec in (*self.nodes, *inner.nodes) for t in spec.outputs}
        for spec in inner.nodes:
            for tensor in spec.inputs:
                if not (tensor.is_empty() or isinstance(tensor, ir.Constant) or id(tensor) in allowed):
                    raise ValueError(f"subgraph {name!r} reads {tensor.name!r} of the enclosing graph: "
                                     "pass it in as a formal input")
        nodes = [
            ir.Node(op=s.op, name=s.name, attrs=dict(s.attrs), domain=s.domain or None,
                    inputs=list(s.inputs), outputs=list(s.outputs))
            for s in inner.nodes
        ]
        return ir.Graph(nodes=nodes, inputs=formal, outputs=outputs, opset=self.opset, name=inner._prefix)

    # -- internals
    def _as_tensor(self, value: TensorLike, op_type: str) -> ir.Tensor:
        if value is None:
            return ir.Variable.empty()
        if isinstance(value, ir.Tensor):
            return value
        if isinstance(value, np.ndarray):
            return self.constant(value)
        raise TypeError(
            f"input of {op_type} must be a tensor or a numpy array, got {type(value).__name__}"
        )

    def _next(self) -> int:
        self._count += 1
        return self._count

    def _fresh(self) -> str:
        return self._names.fresh(f"{self._prefix}/{self._next()}")
