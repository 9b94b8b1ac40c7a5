"""Fast conversion between ModelProto and graphsurgeon graphs (part of the IR layer; ir.py only).

graphsurgeon's importer spends most of its time in per-node logging and list bookkeeping and
its exporter rebuilds every NodeProto; on models of 100k nodes that is seconds each way. This
module builds the same graphsurgeon objects directly, remembers each node's NodeProto, and on
export reuses the NodeProto of every node no edit touched (the journal forgets the proto of a
node it edits). Models using features this path does not cover (local functions, sparse
initializers, attribute references, GRAPHS attributes) go through graphsurgeon itself.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.importers.onnx_importer import (
    OnnxImporter,
    get_onnx_tensor_dtype,
    get_onnx_tensor_shape,
    get_onnx_tensor_type,
)
from onnx_graphsurgeon.util.misc import SynchronizedList

__all__ = ["import_model", "export_model", "forget_proto", "PROTO_KEY"]

# Where a node keeps the NodeProto it was imported from, while no edit has touched it.
PROTO_KEY = "_graphfix_proto"
_VALUE_INFO_KEY = "_graphfix_value_info"
_A = onnx.AttributeProto


def import_model(proto: onnx.ModelProto, weights: Mapping[str, onnx.TensorProto] | None = None) -> gs.Graph:
    """A graphsurgeon graph equal to `gs.import_onnx(proto)`, built without its overhead.

    `weights` are main-graph initializers kept out of `proto` (see ir.Typed): `proto` lists
    them as typed graph inputs, which they are not.
    """
    weights = weights or {}
    if not _supported(proto):
        return gs.import_onnx(_whole(proto, weights) if weights else proto)
    opset = OnnxImporter.get_opset(proto)
    domains = OnnxImporter.get_import_domains(proto)
    with _collection_paused():
        graph = _Importer(opset, domains).graph(proto.graph, {}, weights)
    graph.producer_name, graph.producer_version = proto.producer_name, proto.producer_version
    graph.ir_version = proto.ir_version
    return graph


@contextlib.contextmanager
def _collection_paused() -> Iterator[None]:
    """Creating 10^5 linked objects triggers the cyclic garbage collector over and over, which
    costs more than the creation itself; nothing created here is garbage."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _whole(proto: onnx.ModelProto, weights: Mapping[str, onnx.TensorProto]) -> onnx.ModelProto:
    """A copy of `proto` with its kept-out initializers back (graphsurgeon's importer needs them)."""
    from graphfix.ir import with_weights

    whole = onnx.ModelProto()
    whole.CopyFrom(proto)
    return with_weights(whole, dict(weights))


def _supported(proto: onnx.ModelProto) -> bool:
    if proto.functions or _has_unsupported(proto.graph):
        return False
    return True


def _has_unsupported(graph: onnx.GraphProto) -> bool:
    if graph.sparse_initializer:
        return True
    for node in graph.node:
        for attr in node.attribute:
            if attr.ref_attr_name or attr.type not in _ATTRIBUTE_READERS:
                return True
            if attr.type == _A.GRAPH and _has_unsupported(attr.g):
                return True
    return False


def _new_list(parent: Any, field: str, items: Iterable[Any] = ()) -> SynchronizedList:
    # SynchronizedList without its constructor: the back references are set by the caller.
    synced = SynchronizedList.__new__(SynchronizedList)
    list.extend(synced, items)
    synced.parent_obj, synced.field_name = parent, field
    return synced


def _new_variable(name: str) -> gs.Variable:
    tensor = object.__new__(gs.Variable)
    state = tensor.__dict__
    state.update(name=name, dtype=None, shape=None, type="tensor_type")
    state["inputs"] = _new_list(tensor, "outputs")
    state["outputs"] = _new_list(tensor, "inputs")
    return tensor


def _new_node(proto: onnx.NodeProto, attrs: dict[str, Any], inputs: list[gs.Tensor], outputs: list[gs.Tensor]) -> gs.Node:
    node = object.__new__(gs.Node)
    state = node.__dict__
    state.update(op=proto.op_type, name=proto.name, attrs=attrs, domain=proto.domain if proto.HasField("domain") else None)
    state["inputs"] = _new_list(node, "outputs", inputs)
    state["outputs"] = _new_list(node, "inputs", outputs)
    state[PROTO_KEY] = proto
    for tensor in inputs:
        list.append(tensor.outputs, node)
    for tensor in outputs:
        list.append(tensor.inputs, node)
    return node


def _typed(tensor: gs.Variable, info: onnx.ValueInfoProto) -> None:
    if info.type.ByteSize() > 0:
        tensor.__dict__.update(
            dtype=get_onnx_tensor_dtype(info), shape=get_onnx_tensor_shape(info), type=get_onnx_tensor_type(info)
        )
        tensor.__dict__[_VALUE_INFO_KEY] = (info, tensor.dtype, _frozen(tensor.shape))


class _Importer:
    """Mirrors graphsurgeon's OnnxImporter.import_graph (same objects, same name resolution)."""

    def __init__(self, opset: int, domains: Any):
        self.opset = opset
        self.domains = domains

    def graph(
        self, proto: onnx.GraphProto, outer: dict[str, gs.Tensor], weights: Mapping[str, onnx.TensorProto] | None = None
    ) -> gs.Graph:
        local: dict[str, gs.Tensor] = {}
        for initializer in [*proto.initializer, *(weights or {}).values()]:
            local[initializer.name] = OnnxImporter.import_tensor(initializer)
        for info in proto.value_info:
            # Shape inference also lists outer-scope tensors in a body's value_info; a local
            # copy would cut the body off the outer producer (names are unique in ONNX).
            tensor = local.get(info.name, outer.get(info.name))
            if tensor is None:
                tensor = local[info.name] = _new_variable(info.name)
            if isinstance(tensor, gs.Variable) and tensor.dtype is None:
                _typed(tensor, info)
        initializer_names = {t.name for t in proto.initializer} | set(weights or ())
        inputs = [self._io(info, local) for info in proto.input if info.name not in initializer_names]
        outputs = [self._io(info, local) for info in proto.output]

        def tensor_for(name: str, from_outer: bool = True) -> gs.Tensor:
            found = local.get(name)
            if found is not None:
                return found
            if from_outer and name in outer:
                return outer[name]
            if not name:
                return _new_variable("")
            created = local[name] = _new_variable(name)
            return created

        nodes = []
        for node in proto.node:
            attrs = {a.name: self._attribute(a, outer, local) for a in node.attribute}
            ins = [tensor_for(name) for name in node.input]
            outs = [tensor_for(name, from_outer=False) for name in node.output]
            nodes.append(_new_node(node, attrs, ins, outs))
        graph = gs.Graph(
            inputs=inputs,
            outputs=outputs,
            name=proto.name,
            doc_string=proto.doc_string,
            opset=self.opset,
            import_domains=self.domains,
        )
        # Given to the constructor, the nodes would be walked once more to merge local
        # functions, which models on this path do not have.
        graph.nodes = nodes
        return graph

    def _io(self, info: onnx.ValueInfoProto, local: dict[str, gs.Tensor]) -> gs.Tensor:
        tensor = local.get(info.name)
        if tensor is None:
            tensor = local[info.name] = _new_variable(info.name)
        if isinstance(tensor, gs.Variable) and info.type.ByteSize() > 0:
            _typed(tensor, info)
        return tensor

    def _attribute(self, attr: onnx.AttributeProto, outer: dict[str, gs.Tensor], local: dict[str, gs.Tensor]) -> Any:
        if attr.type == _A.GRAPH:
            return self.graph(attr.g, {**outer, **local})
        return _ATTRIBUTE_READERS[attr.type](attr)


_ATTRIBUTE_READERS = {
    _A.FLOAT: lambda a: a.f,
    _A.INT: lambda a: a.i,
    _A.STRING: lambda a: a.s.decode(),
    _A.TENSOR: lambda a: OnnxImporter.import_tensor(a.t),
    _A.GRAPH: None,  # handled by _Importer._attribute (needs the tensor scope)
    _A.FLOATS: lambda a: list(a.floats),
    _A.INTS: lambda a: list(a.ints),
    _A.STRINGS: lambda a: [s.decode() for s in a.strings],
}


def forget_proto(node: gs.Node) -> None:
    """An edit touched `node`: export it anew instead of reusing its imported NodeProto."""
    node.__dict__.pop(PROTO_KEY, None)


# ----------------------------------------------------------------------------- export


def export_model(graph: gs.Graph) -> onnx.ModelProto:
    """Like `gs.export_onnx(graph, do_type_check=False)`, reusing untouched NodeProtos."""
    if graph.functions:
        return gs.export_onnx(graph, do_type_check=False)
    domains: set[str] = set()
    graph_proto = _export_graph(graph, domains)
    known = {o.domain for o in graph.import_domains or []}
    opsets = list(graph.import_domains or [onnx.helper.make_opsetid("", graph.opset)])
    opsets += [onnx.helper.make_opsetid(d, 1) for d in sorted(domains - known - {None, ""})]
    if not any(o.domain in ("", "ai.onnx") for o in opsets):
        opsets.insert(0, onnx.helper.make_opsetid("", graph.opset))
    model = onnx.helper.make_model(graph_proto, opset_imports=opsets)
    model.producer_name, model.producer_version = graph.producer_name, graph.producer_version
    if graph.ir_version is not None:
        model.ir_version = graph.ir_version
    return model


def _export_graph(graph: gs.Graph, domains: set[str]) -> onnx.GraphProto:
    nodes = []
    constants: dict[str, gs.Constant] = {}
    typed: dict[str, gs.Variable] = {}
    for node in graph.nodes:
        domains.add(node.domain)
        nodes.append(_node_proto(node, domains))
        for tensor in node.inputs:
            _collect(tensor, constants, typed)
        for tensor in node.outputs:
            _collect(tensor, constants, typed)
    io_names = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    for tensor in list(graph.inputs) + list(graph.outputs):
        _collect(tensor, constants, typed)
    return onnx.helper.make_graph(
        nodes=nodes,
        name=graph.name,
        inputs=[OnnxExporter.export_value_info_proto(t, False) for t in graph.inputs],
        outputs=[OnnxExporter.export_value_info_proto(t, False) for t in graph.outputs],
        initializer=[OnnxExporter.export_tensor_proto(c) for c in constants.values()],
        doc_string=graph.doc_string,
        value_info=[_value_info(t) for name, t in typed.items() if name not in io_names],
    )


def _collect(tensor: gs.Tensor, constants: dict[str, gs.Constant], typed: dict[str, gs.Variable]) -> None:
    if tensor.is_empty():
        return
    if isinstance(tensor, gs.Constant):
        constants.setdefault(tensor.name, tensor)
    elif tensor.dtype is not None or tensor.shape is not None:
        typed.setdefault(tensor.name, tensor)


def _value_info(tensor: gs.Variable) -> onnx.ValueInfoProto:
    """The imported ValueInfoProto while name, dtype and shape are as imported; else a new one."""
    imported = tensor.__dict__.get(_VALUE_INFO_KEY)
    if imported is not None:
        info, dtype, dims = imported
        if info.name == tensor.name and dtype == tensor.dtype and dims == _frozen(tensor.shape):
            return info
    return OnnxExporter.export_value_info_proto(tensor, False)


def _frozen(dims: Any) -> tuple | None:
    return None if dims is None else tuple(dims)


def _node_proto(node: gs.Node, domains: set[str]) -> onnx.NodeProto:
    proto = node.__dict__.get(PROTO_KEY)
    if proto is not None and _unchanged(node, proto):
        return proto
    subgraphs = [a for a in node.attrs.values() if isinstance(a, gs.Graph)]
    for subgraph in subgraphs:
        for inner in subgraph.nodes:
            domains.add(inner.domain)
    if not subgraphs:
        return OnnxExporter.export_node(node)
    exported = onnx.helper.make_node(
        node.op, [t.name for t in node.inputs], [t.name for t in node.outputs], name=node.name, domain=node.domain
    )
    for key, value in node.attrs.items():
        if isinstance(value, gs.Graph):
            exported.attribute.append(onnx.helper.make_attribute(key, _export_graph(value, domains)))
        else:
            exported.attribute.extend(OnnxExporter.export_attributes({key: value}))
    return exported


def _unchanged(node: gs.Node, proto: onnx.NodeProto) -> bool:
    """The imported NodeProto still describes the node (names, op; no subgraphs to re-export)."""
    if proto.op_type != node.op or proto.name != node.name:
        return False
    if not _same_names(proto.input, node.inputs) or not _same_names(proto.output, node.outputs):
        return False
    return not any(isinstance(a, gs.Graph) for a in node.attrs.values())


def _same_names(names: Sequence[str], tensors: Sequence[gs.Tensor]) -> bool:
    return len(names) == len(tensors) and all(n == t.name for n, t in zip(names, tensors))

