"""Convert a model down to the newest opset its TensorRT target declares."""

from __future__ import annotations

import functools
import re
from typing import Any

import numpy as np
import onnx
import onnx.version_converter

import graphfix as gf
from graphfix.errors import first_line
from graphfix.ir import weightless, with_weights
from graphfix.rules._protos import (
    DEFAULT_DOMAINS,
    all_graphs,
    all_nodes,
    bodies,
    copy_message,
    drop_unread_weights,
    is_constant_node,
    literal_sources,
    literal_value,
    node_name,
    static_dims,
)

_Param = onnx.defs.OpSchema.FormalParameterOption

# Ops whose axes (split sizes for Split) moved from an attribute to input 1 (gf.AXES_INPUT_SINCE):
# the version converter's adapters move a constant input back into the attribute.
# Softmax-13 normalizes one axis; before, the input was flattened to 2-D at `axis` and the
# trailing block normalized. Both mean the same only when the axis is the last one.
_ONE_AXIS_SINCE_13 = frozenset({"Softmax", "LogSoftmax", "Hardmax"})
# Schema revisions that kept inputs, outputs and attribute names but changed what values mean:
# (op, since_version) -> the attribute values the older schema reads differently (None: all).
_MEANING_CHANGED: dict[tuple[str, int], tuple[str, frozenset[str] | None]] = {
    ("GridSample", 20): ("mode", None),  # linear/cubic (20) were bilinear/bicubic (16)
    ("Resize", 19): ("coordinate_transformation_mode", frozenset({"half_pixel_symmetric"})),
    ("Pad", 19): ("mode", frozenset({"wrap"})),
    ("ScatterElements", 18): ("reduction", frozenset({"max", "min"})),
    ("ScatterND", 18): ("reduction", frozenset({"max", "min"})),
}
# Attributes added by a schema revision whose default is not what the older schema computed:
# (op, since_version, attribute) -> the value that reproduces the older behaviour.
_OLDER_BEHAVIOUR = {("RoiAlign", 16, "coordinate_transformation_mode"): "output_half_pixel"}
# Formal parameters a revision renamed without changing them (newer name -> older name); the
# only renames since opset 11 besides Resize-11's new roi input.
_RENAMED = {("BatchNormalization", 14): {"input_mean": "mean", "input_var": "var"}}
# Nodes whose schema changes in a conversion step but whose meaning does not are moved to this
# domain while onnx.version_converter runs (it converts the default domain only), then moved back.
_UNCHANGED_DOMAIN = "graphfix.unchanged"
_NO_ADAPTER = re.compile(r"No Adapter (?:From|To) Version \$\d+ for (\w+)")
_PROTOBUF_LIMIT = 2**31 - 1  # onnx.version_converter and the checker work on one protobuf


class _NotConvertible(Exception):
    """The model has no verified opset-N form; the message names the node and why."""


@gf.rule(limitation=("opset.above_declared_range", "reduce.axes_input_ignored"), stage="fuse")
class ConvertOpsetDown:
    """Convert the model down to the newest opset the target declares (onnx.version_converter).

    TensorRT limitation: no TensorRT parser refuses a model above its declared opset range (7.2:
    11, 8.0/8.2: 13, 8.4-8.6: 17, 10.0-10.14: 20, 10.15+: 24); every importer branches on the
    model opset and falls back to older semantics (trt-onnx-support.md, "Declared opset range" and
    "Opset enforcement" rows: S72-S86, S100, S1016). The worst case is silent: 7.2 reads only the
    attribute form of ReduceSum's axes, so ReduceSum-13 with axes as input 1 reduces every axis
    (S72), and 8.0-8.6 do the same to every other opset-18 Reduce* (S80-S86, Reduce row).

    Rewrite: the whole model is taken to the target's newest declared opset, one opset at a time.
    At each step, nodes whose schema is revised there go through onnx.version_converter's adapter
    (e.g. Reduce*-18 and ReduceSum-13: a constant axes input becomes the axes attribute), and
    nodes whose revision does not change what they compute stay as they are: same inputs and
    outputs at the positions the node uses, equal defaults for the attributes it leaves unset,
    and attributes the revision added at the value that computes what the older schema did
    (dropped then: allowzero=0, Shape's start=0, ...; RoiAlign-16 only with output_half_pixel).
    That covers the revisions that only widened types (Shape-13, Add-14, ...), for which the
    converter has no adapter. Softmax/LogSoftmax/Hardmax-13 on the last axis get axis=-1 written
    out, which means the same at opset 11. A Reduce* with noop_with_empty_axes=1 and no (or
    empty) axes is the identity by definition and becomes Identity; with a non-empty axes list
    that attribute has no effect and is dropped; an empty axes list without it means every axis,
    which is what an absent axes input means. Refused with the node named: an op that does not
    exist at the target opset, axes computed at run time, revisions that changed meaning (Softmax
    on another axis, GridSample-20 modes, ...), steps the converter has no adapter for, local
    functions, models above 2 GB, and a result that fails onnx.checker's full check. The pass is
    verified by an end-to-end onnxruntime run like any whole-model rule. It runs in the last
    stage, after the rules that remove ops the older opset lacks (LayerNormalization, ...).
    """

    def check(self, ctx):
        wanted = _declared_opset(ctx.target)
        if wanted is None:
            return gf.reject("the target declares no opset range")
        if ctx.opset <= wanted:
            return gf.reject(f"opset {ctx.opset} is within the declared range of {_label(ctx.target)} "
                             f"(up to {wanted})")
        missing = sorted(op for domain, op in ctx.op_types if domain == "" and not _exists(op, wanted))
        if missing:  # decided without exporting or converting the model
            name = ctx.node_named(missing[0])
            return gf.reject(f"no opset-{wanted} form for {_label(ctx.target)}: {missing[0]} (node {name}) "
                             f"does not exist before opset {_first_version(missing[0])}")
        try:
            converted = _converted(ctx.proto, wanted)
        except _NotConvertible as error:
            return gf.reject(f"no opset-{wanted} form for {_label(ctx.target)}: {error}")
        return gf.accept(converted=converted)

    def transform(self, ctx, proto, converted):
        return converted


def _exists(op: str, opset: int) -> bool:
    try:
        onnx.defs.get_schema(op, opset)
    except onnx.defs.SchemaError:
        return False
    return True


def _first_version(op: str) -> int:
    """The opset an ONNX op first appeared in (get_schema at opset 1 finds nothing before it)."""
    return next(v for v in range(1, onnx.defs.onnx_opset_version() + 1) if _exists(op, v))


def _declared_opset(target: Any) -> int | None:
    opset_range = getattr(target, "opset_range", None)
    return None if opset_range is None else int(opset_range[1])


def _label(target: Any) -> str:
    return getattr(target, "label", str(target))


# ----------------------------------------------------------------------------- the conversion


def _converted(proto: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """`proto` at `opset`; raises _NotConvertible naming what stands in the way."""
    if proto.functions:
        raise _NotConvertible(f"the model has local functions ({proto.functions[0].name}, ...), "
                              "which the conversion does not handle")
    # Converted without its large weights (typed graph inputs stand for them): each conversion
    # step copies the model, and the adapters only read small constants (axes, shapes).
    model, weights = weightless(proto)
    if model.ByteSize() > _PROTOBUF_LIMIT:
        raise _NotConvertible("the model is larger than 2 GB, the most onnx.version_converter takes")
    current = _default_opset(model)
    _prepare_axes_inputs(model, opset)
    ranks = _ranks(model)
    nodes = _default_nodes(model)
    for version in range(current, opset, -1):
        stepped = _step_down(model, version, ranks, nodes)
        nodes = nodes if stepped is model else _default_nodes(stepped)  # the converter made a copy
        model = stepped
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise _NotConvertible(f"the opset-{opset} model fails onnx.checker: {first_line(error)}") from None
    return with_weights(model, weights)


def _step_down(
    model: onnx.ModelProto, version: int, ranks: dict[str, int], nodes: list[onnx.NodeProto]
) -> onnx.ModelProto:
    """`model` (at `version`, its default-domain `nodes`) at `version - 1`."""
    kept, adapted = [], []
    for node in nodes:
        if _since(node.op_type, version) != version:
            continue  # not revised at this opset
        older = _older_schema(node, version)
        _refuse_changed_meaning(node, version, ranks)
        if node.op_type in _ONE_AXIS_SINCE_13 and version == 13:
            _write_axis(node, -1)  # the last axis (checked above); Softmax-11's default is 1
        if _keeps_meaning(node, version, older):
            _drop_added_attributes(node, older)
            kept.append(node)
        else:
            adapted.append(node)
    if not adapted:
        _set_default_opset(model, version - 1)
        return model
    _refuse_adapting_inside_kept(kept, adapted, version)
    for node in kept:
        node.domain = _UNCHANGED_DOMAIN
    model.opset_import.append(onnx.helper.make_opsetid(_UNCHANGED_DOMAIN, 1))
    try:
        converted = onnx.version_converter.convert_version(model, version - 1)
    except Exception as error:  # the converter raises RuntimeError/ValidationError from C++
        raise _NotConvertible(_converter_failure(error, adapted, version)) from None
    for node in all_nodes(converted.graph):
        if node.domain == _UNCHANGED_DOMAIN:
            node.domain = ""
    imports = [o for o in converted.opset_import if o.domain != _UNCHANGED_DOMAIN]
    del converted.opset_import[:]
    converted.opset_import.extend(imports)
    return converted


def _refuse_adapting_inside_kept(kept: list[onnx.NodeProto], adapted: list[onnx.NodeProto], version: int) -> None:
    """The converter does not enter the subgraphs of a node outside the default domain."""
    needs_converter = {n.output[0]: n for n in adapted if n.output}
    for node in kept:
        for body in bodies(node):
            inner = next((needs_converter[n.output[0]] for n in all_nodes(body)
                          if n.output and n.output[0] in needs_converter), None)
            if inner is not None:
                raise _NotConvertible(
                    f"{node.op_type} (node {node_name(node)}) keeps its form from opset {version} to "
                    f"{version - 1}, but {inner.op_type} (node {node_name(inner)}) in its body needs "
                    "onnx.version_converter, which does not enter a body it does not convert")


def _older_schema(node: onnx.NodeProto, version: int) -> onnx.defs.OpSchema:
    try:
        return onnx.defs.get_schema(node.op_type, version - 1)
    except onnx.defs.SchemaError:
        raise _NotConvertible(f"{node.op_type} (node {node_name(node)}) does not exist before opset "
                              f"{version}") from None


def _refuse_changed_meaning(node: onnx.NodeProto, version: int, ranks: dict[str, int]) -> None:
    if node.op_type in _ONE_AXIS_SINCE_13 and version == 13:
        axis = _attribute(node, "axis", -1)
        rank = ranks.get(node.input[0])
        if axis == -1 or (rank is not None and axis == rank - 1):
            return
        where = f"axis {axis} of a rank-{rank} input" if rank is not None else f"axis {axis} (rank unknown)"
        raise _NotConvertible(f"{node.op_type} (node {node_name(node)}) normalizes {where} alone; before "
                              "opset 13 it normalizes every axis from there on")
    changed = _MEANING_CHANGED.get((node.op_type, version))
    if changed is None:
        return
    name, values = changed
    value = _value(node, name, onnx.defs.get_schema(node.op_type, version))
    if values is None or value in values:
        raise _NotConvertible(f"{node.op_type} (node {node_name(node)}): opset {version} changed what "
                              f"{name}={value!r} means")


def _keeps_meaning(node: onnx.NodeProto, version: int, older: onnx.defs.OpSchema) -> bool:
    """_means_the_same, remembered per op, version, inputs given and attributes: a model of
    repeated blocks asks it thousands of times about the same kinds of node."""
    if any(a.type not in _SMALL_ATTRIBUTE_TYPES for a in node.attribute):  # bodies, tensor values
        return _means_the_same(node, onnx.defs.get_schema(node.op_type, version), older)
    key = (
        node.op_type, version,
        tuple(bool(n) for n in node.input), tuple(bool(n) for n in node.output),
        tuple(sorted((a.name, a.SerializeToString()) for a in node.attribute)),
    )
    if key not in _meaning_kept:
        _meaning_kept[key] = _means_the_same(node, onnx.defs.get_schema(node.op_type, version), older)
    return _meaning_kept[key]


_meaning_kept: dict[tuple, bool] = {}
_A = onnx.AttributeProto
_SMALL_ATTRIBUTE_TYPES = frozenset({_A.INT, _A.INTS, _A.FLOAT, _A.FLOATS, _A.STRING, _A.STRINGS})


def _means_the_same(node: onnx.NodeProto, newer: onnx.defs.OpSchema, older: onnx.defs.OpSchema) -> bool:
    """`node` computes the same under `older` as under `newer` (types are left to the checker)."""
    renamed = _RENAMED.get((node.op_type, newer.since_version), {})
    if not (_same_params(node.input, newer.inputs, older.inputs, renamed)
            and _same_params(node.output, newer.outputs, older.outputs, renamed)):
        return False
    if older.attributes.keys() - newer.attributes.keys():
        return False  # the newer schema dropped an attribute: it means something else now
    added = newer.attributes.keys() - older.attributes.keys()
    if any(_value(node, n, newer) != _older_behaviour(node.op_type, newer, n) for n in added):
        return False
    unset = (older.attributes.keys() - added) - {a.name for a in node.attribute}
    return all(older.attributes[n].default_value == newer.attributes[n].default_value for n in unset)


def _older_behaviour(op_type: str, newer: onnx.defs.OpSchema, name: str) -> Any:
    """The value of attribute `name` (new in `newer`) that computes what the older schema did."""
    return _OLDER_BEHAVIOUR.get((op_type, newer.since_version, name), _default(newer, name))


def _drop_added_attributes(node: onnx.NodeProto, older: onnx.defs.OpSchema) -> None:
    """Remove attributes the older schema lacks (they hold its behaviour, see _means_the_same)."""
    for name in [a.name for a in node.attribute if a.name not in older.attributes]:
        _remove_attribute(node, name)


def _same_params(names: Any, newer: Any, older: Any, renamed: dict[str, str]) -> bool:
    """The formal parameters at the positions `names` uses are the same ones, and every
    parameter `older` requires is given."""
    for position, name in enumerate(names):
        newer_name = _param_name(newer, position)
        if name and renamed.get(newer_name, newer_name) != _param_name(older, position):
            return False
    given = {i for i, name in enumerate(names) if name}
    return all(i in given for i, p in enumerate(older) if p.option == _Param.Single)


def _param_name(params: Any, position: int) -> str | None:
    if position < len(params):
        return params[position].name
    if params and params[-1].option == _Param.Variadic:
        return params[-1].name
    return None


def _converter_failure(error: Exception, adapted: list[onnx.NodeProto], version: int) -> str:
    match = _NO_ADAPTER.search(str(error))
    if match is None:
        return f"onnx.version_converter failed from opset {version} to {version - 1}: {first_line(error)}"
    op = match.group(1)
    nodes = ", ".join(node_name(n) for n in adapted if n.op_type == op) or "?"
    return (f"onnx.version_converter has no adapter taking {op} from opset {version} to "
            f"{version - 1} (node {nodes})")


# ----------------------------------------------------------------------------- axes inputs


def _prepare_axes_inputs(model: onnx.ModelProto, opset: int) -> None:
    """Prepare every node whose axes input must become an attribute at `opset`.

    The converter's adapter needs the axes as a constant of the node's own graph and keeps
    noop_with_empty_axes, which opset-17 Reduce* do not have: normalize those nodes to forms
    that mean the same, and copy axes defined in an enclosing graph next to the node.
    """
    constants = literal_sources(model)
    current = _default_opset(model)
    dropped: set[str] = set()
    for graph in all_graphs(model.graph):
        local = {t.name for t in graph.initializer} | {n.output[0] for n in graph.node if is_constant_node(n)}
        rebuilt = []
        for node in graph.node:
            if _axes_become_attribute(node, current, opset):
                rebuilt += _prepared(node, constants, local, dropped)
            rebuilt.append(copy_message(node))
        del graph.node[:]
        graph.node.extend(rebuilt)
    drop_unread_weights(model, dropped)


def _axes_become_attribute(node: onnx.NodeProto, current: int, opset: int) -> bool:
    since = gf.AXES_INPUT_SINCE.get(node.op_type)
    return node.domain in DEFAULT_DOMAINS and since is not None and opset < since <= _since(node.op_type, current)


def _prepared(
    node: onnx.NodeProto, constants: dict[str, Any], local: set[str], dropped: set[str]
) -> list[onnx.NodeProto]:
    """Normalize `node` in place; returns the Constant to put before it (a copy of axes that an
    enclosing graph defines), if any. Axes inputs the node no longer reads go to `dropped`."""
    axes_name = node.input[1] if len(node.input) > 1 else ""
    if axes_name and axes_name not in constants:
        raise _NotConvertible(f"{node.op_type} (node {node_name(node)}) takes input {axes_name!r} at run time; "
                              f"below opset {gf.AXES_INPUT_SINCE[node.op_type]} it must be a constant attribute")
    axes = literal_value(constants[axes_name]) if axes_name else np.zeros(0, np.int64)
    if node.op_type.startswith("Reduce"):
        _normalize_reduce(node, axes)
    if not axes_name:
        return []
    if len(node.input) < 2:
        dropped.add(axes_name)
        return []
    if axes_name in local:
        return []
    local_copy = _constant_node(f"{axes_name}/{node_name(node)}", axes)
    node.input[1] = local_copy.output[0]
    return [local_copy]


def _normalize_reduce(node: onnx.NodeProto, axes: np.ndarray) -> None:
    noop = _attribute(node, "noop_with_empty_axes", 0)
    _remove_attribute(node, "noop_with_empty_axes")
    if axes.size:
        return
    del node.input[1:]  # an absent axes input: every axis, what an empty list without noop means
    if noop:
        node.op_type = "Identity"
        del node.attribute[:]


# ----------------------------------------------------------------------------- proto helpers


def _default_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in all_nodes(model.graph) if n.domain in DEFAULT_DOMAINS]


def _default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS)


def _set_default_opset(model: onnx.ModelProto, version: int) -> None:
    for entry in model.opset_import:
        if entry.domain in DEFAULT_DOMAINS:
            entry.version = version


@functools.cache
def _since(op_type: str, version: int) -> int:
    try:
        return onnx.defs.get_schema(op_type, version).since_version
    except onnx.defs.SchemaError:
        return 0


def _constant_node(name: str, value: np.ndarray) -> onnx.NodeProto:
    return onnx.helper.make_node("Constant", [], [name], name=name,
                                 value=onnx.numpy_helper.from_array(value, name))


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor ranks from ONNX shape inference (best effort)."""
    return {name: len(dims) for name, dims in static_dims(model).items()}


def _attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _value(node: onnx.NodeProto, name: str, schema: onnx.defs.OpSchema) -> Any:
    """The node's attribute, else the schema's default (None when it has none)."""
    return _attribute(node, name, _default(schema, name))


def _default(schema: onnx.defs.OpSchema, name: str) -> Any:
    default = schema.attributes[name].default_value
    if not default.type:
        return None
    value = onnx.helper.get_attribute_value(default)
    return value.decode() if isinstance(value, bytes) else value


def _remove_attribute(node: onnx.NodeProto, name: str) -> None:
    for index, attr in enumerate(node.attribute):
        if attr.name == name:
            del node.attribute[index]
            return


def _write_axis(node: onnx.NodeProto, axis: int) -> None:
    _remove_attribute(node, "axis")
    node.attribute.append(onnx.helper.make_attribute("axis", axis))
