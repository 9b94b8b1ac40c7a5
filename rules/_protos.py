"""Helpers for the whole-model rules that edit an onnx.ModelProto: subgraphs, weights, names."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx

__all__ = [
    "DEFAULT_DOMAINS",
    "all_graphs",
    "all_nodes",
    "bodies",
    "copy_message",
    "drop_unread_weights",
    "is_constant_node",
    "literal_sources",
    "literal_value",
    "node_name",
    "static_dims",
]

DEFAULT_DOMAINS = ("", "ai.onnx")


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every subgraph in it, outer graphs first."""
    yield graph
    for node in graph.node:
        for body in bodies(node):
            yield from all_graphs(body)


def bodies(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The node's subgraphs (If branches, Loop and Scan bodies)."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        yield from attr.graphs


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for each in all_graphs(graph):
        yield from each.node


def is_constant_node(node: onnx.NodeProto) -> bool:
    return node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS


def literal_sources(model: onnx.ModelProto) -> dict[str, onnx.TensorProto | onnx.NodeProto]:
    """What TensorRT's parser takes as weights: initializers and Constant nodes of every graph,
    by tensor name (values are read on demand with `literal_value`)."""
    found: dict[str, onnx.TensorProto | onnx.NodeProto] = {}
    for graph in all_graphs(model.graph):
        found.update((t.name, t) for t in graph.initializer)
        found.update((n.output[0], n) for n in graph.node if is_constant_node(n))
    return found


def literal_value(source: onnx.TensorProto | onnx.NodeProto) -> np.ndarray | None:
    """The value of an initializer or a Constant node (None for a sparse or string attribute)."""
    if isinstance(source, onnx.TensorProto):
        return onnx.numpy_helper.to_array(source)
    attr = source.attribute[0]
    if attr.type == onnx.AttributeProto.TENSOR:
        return onnx.numpy_helper.to_array(attr.t)
    if attr.type in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS):
        return np.asarray(onnx.helper.get_attribute_value(attr), np.int64)
    if attr.type in (onnx.AttributeProto.FLOAT, onnx.AttributeProto.FLOATS):
        return np.asarray(onnx.helper.get_attribute_value(attr), np.float32)
    return None


def static_dims(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Tensor dims from ONNX shape inference (None for a symbolic dim; {} when inference fails)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError):
        return {}
    dims = {}
    for graph in all_graphs(inferred.graph):
        for info in (*graph.input, *graph.value_info, *graph.output):
            tensor_type = info.type.tensor_type
            if tensor_type.HasField("shape"):
                dims[info.name] = [d.dim_value if d.HasField("dim_value") else None
                                   for d in tensor_type.shape.dim]
    return dims


def copy_message(message: Any) -> Any:
    copied = type(message)()
    copied.CopyFrom(message)
    return copied


def node_name(node: onnx.NodeProto) -> str:
    """The node's name, else its first output's (exporters leave some nodes unnamed)."""
    return node.name or (node.output[0] if node.output else node.op_type)


def drop_unread_weights(model: onnx.ModelProto, names: set[str]) -> None:
    """Remove the initializers and Constant nodes among `names` that no node or graph output
    reads any more (with their value_info), in every graph."""
    read = {name for node in all_nodes(model.graph) for name in node.input}
    read |= {out.name for g in all_graphs(model.graph) for out in g.output}
    unread = names - read
    if not unread:
        return
    for graph in all_graphs(model.graph):
        nodes = [copy_message(n) for n in graph.node if not (is_constant_node(n) and n.output[0] in unread)]
        weights = [copy_message(t) for t in graph.initializer if t.name not in unread]
        infos = [copy_message(v) for v in graph.value_info if v.name not in unread]
        for field, kept in ((graph.node, nodes), (graph.initializer, weights), (graph.value_info, infos)):
            if len(kept) < len(field):
                del field[:]
                field.extend(kept)
