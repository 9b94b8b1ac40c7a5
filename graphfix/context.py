"""What a rule's check (and rewrite) may ask about the graph around a match."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from graphfix import execute, ir

__all__ = ["Context"]


@dataclass
class Context:
    """The `ctx` of checks: the match, the target, the rule's options, and graph queries.

    Attributes:
        root: the matched root node.
        nodes: every matched node.
        graph: the graph (or subgraph) the match is in.
        opset: the model's default-domain opset.
        target: the TensorRT target profile (graphfix.targets.Target) or None.
        options: the rule's options (defaults overridden by `--rule-option`).
        in_subgraph: the match is inside an If/Loop/Scan body.
        graph_node_ids: ids of the graph's nodes, kept current by the driver (folding asks
            whether a producer is in this graph or an outer scope).
    """

    root: ir.Node
    nodes: Sequence[ir.Node]
    graph: ir.Graph
    opset: int
    opset_imports: Sequence[onnx.OperatorSetIdProto]
    target: Any = None
    options: Mapping[str, Any] = field(default_factory=dict)
    in_subgraph: bool = False
    graph_node_ids: set[int] | None = field(default=None, repr=False)
    _folded: dict[int, np.ndarray | None] = field(default_factory=dict, repr=False)

    def constant(self, tensor: ir.Tensor | None) -> np.ndarray | None:
        """The tensor's value when it is a literal or computable from constants, else None."""
        if tensor is None or tensor.is_empty():
            return None
        if id(tensor) not in self._folded:
            self._folded[id(tensor)] = execute.fold(tensor, self.graph, self.opset_imports, self.graph_node_ids)
        return self._folded[id(tensor)]

    def literal(self, tensor: ir.Tensor | None) -> np.ndarray | None:
        """The value of an initializer or Constant-node output only (what TensorRT sees as weights)."""
        return ir.literal_value(tensor)

    def is_weights(self, tensor: ir.Tensor | None) -> bool:
        return ir.is_weights(tensor)

    def dtype(self, tensor: ir.Tensor | None) -> str | None:
        return ir.dtype_name(tensor)

    def numpy_dtype(self, tensor: ir.Tensor | None) -> np.dtype | None:
        return ir.numpy_dtype(tensor)

    def shape(self, tensor: ir.Tensor | None) -> tuple[int | str | None, ...] | None:
        return ir.shape(tensor)

    def rank(self, tensor: ir.Tensor | None) -> int | None:
        return ir.rank(tensor)

    def static_shape(self, tensor: ir.Tensor | None) -> tuple[int, ...] | None:
        """The shape when every dim is a known integer, else None."""
        dims = ir.shape(tensor)
        if dims is None or not all(isinstance(d, (int, np.integer)) for d in dims):
            return None
        return tuple(int(d) for d in dims)

    def producer(self, tensor: ir.Tensor | None) -> ir.Node | None:
        return None if tensor is None else ir.producer(tensor)

    def consumers(self, tensor: ir.Tensor | None) -> list[ir.Node]:
        return [] if tensor is None else ir.consumers(tensor)

    def node_facts(self, node: ir.Node | None = None) -> Any:
        """A node (the root by default) as the target profiles see it (targets.NodeFacts), so a
        check can ask `ctx.target.evaluate(ctx.node_facts())` whether the target takes it."""
        from graphfix.check import describe_node

        return describe_node(node or self.root, self.opset, self.in_subgraph)

    def tensor(self, name: str) -> ir.Tensor | None:
        """The tensor of this graph named `name` (for rule options that name a tensor)."""
        return self.graph.tensors().get(name)

    def is_graph_output(self, tensor: ir.Tensor) -> bool:
        return any(tensor is out for out in self.graph.outputs)

    def is_used(self, tensor: ir.Tensor) -> bool:
        """A node reads the tensor or the graph outputs it."""
        return not tensor.is_empty() and bool(self.consumers(tensor) or self.is_graph_output(tensor))

    def axes(self, node: ir.Node) -> list[int] | None:
        """The axes of an op that takes them as an attribute or, from some opset on, as an input
        (Squeeze, Unsqueeze, Reduce*; see AXES_INPUT_SINCE); None when absent or computed."""
        axes = self.constant(node.inputs[1]) if len(node.inputs) > 1 else self.attr(node, "axes")
        return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]

    def attr(self, node: ir.Node, name: str, default: Any = None) -> Any:
        """A node attribute, else the schema default at the model's opset, else `default`."""
        value = ir.attribute(node, name, self.opset, default)
        return value.decode() if isinstance(value, bytes) else value
