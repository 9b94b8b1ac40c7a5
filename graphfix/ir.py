"""The working graph: onnx-graphsurgeon, and everything graphfix needs to know about it.

This is the only module that touches onnx-graphsurgeon internals. Edits that passes make go
through a `Journal`, so a pass can be undone and redone without copying the model.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER
from onnx import external_data_helper

from graphfix import _fastio
from graphfix.errors import InputError, first_line

__all__ = [
    "Graph",
    "Node",
    "Tensor",
    "Variable",
    "Constant",
    "Model",
    "Journal",
    "NameRegistry",
    "read_model",
    "load",
    "from_proto",
    "import_proto",
    "to_proto",
    "save",
    "write_model",
    "write_text",
    "write_bytes",
    "iter_graphs",
    "producer",
    "consumers",
    "is_weights",
    "literal_value",
    "dtype_name",
    "numpy_dtype",
    "rank",
    "shape",
    "attribute",
    "attribute_default",
    "free_tensors",
    "toposort",
    "is_sorted",
    "remove_dead_nodes",
    "node_to_proto",
    "infer_output_types",
    "with_inferred_types",
    "weightless",
    "with_weights",
    "Typed",
    "is_huge",
    "tensor_to_proto",
    "value_info",
    "is_empty",
    "EXTERNAL_DATA_THRESHOLD",
]

Graph = gs.Graph
Node = gs.Node
Tensor = gs.Tensor
Variable = gs.Variable
Constant = gs.Constant

logger = logging.getLogger(__name__)

# protobuf refuses to serialize messages of 2 GiB or more; stay clear of it.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
_DEFAULT_DOMAINS = ("", "ai.onnx")

# graphsurgeon logs a warning per duplicate node name and is chatty on import; our own checks
# report what matters.
G_LOGGER.severity = G_LOGGER.ERROR


@dataclass
class Model:
    """A loaded model: the working graph plus the top-level fields export must carry over."""

    graph: Graph
    source: onnx.ModelProto = field(repr=False)
    path: Path | None = None
    external_data: bool = False

    @property
    def opset(self) -> int:
        """The default-domain opset."""
        return int(self.graph.opset)


# ----------------------------------------------------------------------------- reading


def read_model(path: str | os.PathLike) -> tuple[onnx.ModelProto, bool]:
    """Read and sanity-check an ONNX file, loading its external data.

    Returns:
        The model, and whether its weights were stored as external data.

    Raises:
        InputError: with one line saying what is wrong (missing, directory, empty, not ONNX,
            truncated, missing or short external data).
    """
    return _read(Path(path))


def _read(path: Path) -> tuple[onnx.ModelProto, bool]:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an ONNX file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(path.read_bytes())
    except Exception as error:  # protobuf's DecodeError has no stable import path
        raise InputError(
            f"{path}: not an ONNX model (protobuf parse failed: truncated or not ONNX: {error})"
        ) from None
    if not model.HasField("graph") or not model.opset_import:
        raise InputError(f"{path}: a protobuf message, but not an ONNX model (no graph or opset)")
    _check_external_data(model, path.parent)
    external = any(True for _ in _external_tensors(model))
    if external:
        external_data_helper.load_external_data_for_model(model, str(path.parent))
    return model, external


def _external_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    for tensor in external_data_helper._get_all_tensors(model):
        if external_data_helper.uses_external_data(tensor):
            yield tensor


def _check_external_data(model: onnx.ModelProto, base: Path) -> None:
    for tensor in _external_tensors(model):
        info = external_data_helper.ExternalDataInfo(tensor)
        location = base / info.location
        if not location.is_file():
            raise InputError(
                f"external data file {info.location!r} of initializer {tensor.name!r} is missing "
                f"(looked in {base})"
            )
        expected = _tensor_nbytes(tensor)
        length = info.length if info.length else expected
        end = (info.offset or 0) + length
        if location.stat().st_size < end or (expected and length < expected):
            raise InputError(
                f"external data file {info.location!r} is shorter than initializer "
                f"{tensor.name!r} needs ({location.stat().st_size} bytes, needs {end})"
            )


def _tensor_nbytes(tensor: onnx.TensorProto) -> int:
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return 0
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (count + 1) // 2
    return count * itemsize


def load(path: str | os.PathLike) -> Model:
    """Read `path` into a working graph (see `read_model` for the errors)."""
    proto, external = read_model(path)
    return from_proto(proto, path=Path(path), external_data=external)


def from_proto(
    proto: onnx.ModelProto, *, path: Path | None = None, external_data: bool = False, typed: Typed | None = None
) -> Model:
    """A working model of `proto` (which it takes over: initializers are not copied)."""
    graph = import_proto(proto, typed=typed)
    return Model(graph=graph, source=_metadata(proto), path=path, external_data=external_data)


def _metadata(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The top-level fields of `proto` without its graph (what export carries over)."""
    kept = onnx.ModelProto()
    for name in ("ir_version", "doc_string", "domain", "model_version", "producer_name", "producer_version"):
        setattr(kept, name, getattr(proto, name))
    kept.opset_import.extend(proto.opset_import)
    kept.metadata_props.extend(proto.metadata_props)
    return kept


@dataclass
class Typed:
    """A model prepared for import: `proto` carries shape inference's value_info but not the
    large initializers, which stay in the loaded model (`weights`) so inference copies no
    weights; `problem` is the first line of strict inference's error ('' when none)."""

    proto: onnx.ModelProto
    weights: dict[str, onnx.TensorProto]
    problem: str = ""


# Initializers up to this many bytes stay in the model shape inference sees (shape constants
# and the like, whose values inference propagates); larger ones are represented by their type.
_INFERENCE_VALUE_BYTES = 4096


def with_inferred_types(proto: onnx.ModelProto) -> Typed:
    """Run ONNX shape inference on a weightless view of `proto` (see `Typed`).

    Best effort: when strict inference fails (an export bug a repair rule fixes), non-strict
    inference types what it can. Models too large for one protobuf are not inferred.
    """
    if is_huge(proto):
        return Typed(proto, {})
    light, weights = weightless(proto)
    try:
        return Typed(onnx.shape_inference.infer_shapes(light, strict_mode=True), weights)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError) as error:
        problem = first_line(error)
    try:
        return Typed(onnx.shape_inference.infer_shapes(light), weights, problem)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError):
        return Typed(light, weights, problem)


def weightless(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, onnx.TensorProto]]:
    """A copy of `proto` whose large main-graph initializers are typed graph inputs instead
    (what shape inference and opset conversion need of them), and those initializers."""
    light = onnx.ModelProto()
    for name in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(light, name, getattr(proto, name))
    light.opset_import.extend(proto.opset_import)
    light.functions.extend(proto.functions)
    source, graph = proto.graph, light.graph
    graph.name, graph.doc_string = source.name, source.doc_string
    weights = {t.name: t for t in source.initializer if _tensor_nbytes(t) > _INFERENCE_VALUE_BYTES}
    graph.initializer.extend(t for t in source.initializer if t.name not in weights)
    graph.sparse_initializer.extend(source.sparse_initializer)
    graph.input.extend(source.input)
    declared = {i.name for i in source.input}
    graph.input.extend(
        onnx.helper.make_tensor_value_info(name, t.data_type, list(t.dims))
        for name, t in weights.items() if name not in declared
    )
    graph.output.extend(source.output)
    graph.value_info.extend(source.value_info)
    graph.node.extend(source.node)
    return light, weights


def with_weights(light: onnx.ModelProto, weights: dict[str, onnx.TensorProto]) -> onnx.ModelProto:
    """Put back (in place) the initializers `weightless` kept out; returns `light`."""
    inputs = [i for i in light.graph.input if i.name not in weights]
    del light.graph.input[:]
    light.graph.input.extend(inputs)
    light.graph.initializer.extend(weights.values())
    return light


def is_huge(proto: onnx.ModelProto) -> bool:
    """Too large for one protobuf message: must be checked and saved through files."""
    return _initializer_bytes(proto) > EXTERNAL_DATA_THRESHOLD


def import_proto(proto: onnx.ModelProto, *, typed: Typed | None = None) -> Graph:
    """A graphsurgeon graph of `proto`, typed by shape inference (`typed`: already done);
    initializers are not copied."""
    _check_unique_tensor_names(proto)
    typed = typed or with_inferred_types(proto)
    return _fastio.import_model(typed.proto, typed.weights)


def _check_unique_tensor_names(proto: onnx.ModelProto) -> None:
    seen: set[str] = set(i.name for i in proto.graph.initializer)
    for node in proto.graph.node:
        for name in node.output:
            if not name:
                continue
            if name in seen:
                raise InputError(
                    f"tensor name {name!r} is produced twice (node {node.name!r}); "
                    "ONNX requires every tensor to have one producer"
                )
            seen.add(name)


# ----------------------------------------------------------------------------- writing


def to_proto(model: Model | Graph, like: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """Export the working graph, keeping the top-level fields of `like` (or of the model's source)."""
    if isinstance(model, Model):
        graph, like = model.graph, like or model.source
    else:
        graph = model
    proto = _fastio.export_model(graph)
    if like is not None:
        for name in ("doc_string", "domain", "model_version", "producer_name", "producer_version"):
            setattr(proto, name, getattr(like, name))
        del proto.metadata_props[:]
        proto.metadata_props.extend(like.metadata_props)
        proto.ir_version = max(like.ir_version, _IR_INITIALIZERS_NOT_INPUTS, onnx.helper.find_min_ir_version_for(
            list(proto.opset_import), ignore_unknown=True))
    return proto


# Before IR 4 every initializer had to be listed among the graph inputs too; graphsurgeon (and
# every tool since) writes them apart, so the output is stamped at least IR 4 (same semantics).
_IR_INITIALIZERS_NOT_INPUTS = 4


def save(model: Model, path: str | os.PathLike, *, external_data: bool | None = None) -> Path:
    """Export and write atomically; see `write_model`."""
    if external_data is None:
        external_data = model.external_data
    return write_model(to_proto(model), path, external_data=external_data)


def write_model(
    proto: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    external_data: bool = False,
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Write `proto` to `path` atomically: into a hidden temporary folder, then renamed.

    Models too large for one protobuf (or `external_data=True`) keep their weights in
    `<name>.data` next to the model. `check` runs on the staged file before it is moved into
    place; if it raises, nothing is written. An interruption leaves the previous file or none.
    """
    path = Path(path)
    if not external_data and _initializer_bytes(proto) > EXTERNAL_DATA_THRESHOLD:
        external_data = True
    data_name = f"{path.name}.data"
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        staged_model = staging / path.name
        if external_data:
            onnx.save_model(
                proto,
                str(staged_model),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
        else:
            onnx.save_model(proto, str(staged_model))
        if check is not None:
            check(staged_model)
        if external_data and (staging / data_name).exists():
            os.replace(staging / data_name, path.parent / data_name)
        os.replace(staged_model, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def write_bytes(path: Path, data: bytes) -> None:
    """Write a file atomically (engines, reports): a temporary file in the same folder, renamed."""
    handle, staged = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(staged, path)
    finally:
        if os.path.exists(staged):
            os.unlink(staged)


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    write_bytes(path, text.encode())


def _initializer_bytes(proto: onnx.ModelProto) -> int:
    return sum(_tensor_nbytes(t) for t in external_data_helper._get_all_tensors(proto))


_SMALL_CONSTANT = 64  # elements of a constant input handed to inference as data (shapes, axes)
_INFERRED_LIMIT = 20_000
_inferred: dict[tuple, list[tuple[np.dtype, list | None] | None]] = {}


def infer_output_types(
    op_type: str, domain: str, opset: int, attrs: dict[str, Any], inputs: Sequence[Tensor], outputs: Sequence[Variable]
) -> None:
    """Set dtype/shape of a new node's outputs from ONNX type inference (when inputs are typed).

    Results are remembered by op, attributes and input types (and small constant values): a
    rule rewriting a thousand identical blocks runs inference once per distinct node.
    """
    signature = _inference_signature(op_type, domain, opset, attrs, inputs, len(outputs))
    types = _inferred.get(signature) if signature is not None else None
    if types is None:
        types = _inferred_types(op_type, domain, opset, attrs, inputs, len(outputs))
        if types is None:
            return
        if signature is not None:
            if len(_inferred) >= _INFERRED_LIMIT:
                _inferred.clear()
            _inferred[signature] = types
    for tensor, found in zip(outputs, types):
        if found is not None:
            tensor.dtype, dims = found
            if dims is not None:
                tensor.shape = list(dims)


def _inference_signature(
    op_type: str, domain: str, opset: int, attrs: dict[str, Any], inputs: Sequence[Tensor], outputs: int
) -> tuple | None:
    """A hashable key of everything inference reads; None when an attribute is not plain data."""
    plain = []
    for name, value in sorted(attrs.items()):
        if isinstance(value, (list, tuple)):
            value = tuple(value)
            if not all(isinstance(v, (int, float, str, bytes)) for v in value):
                return None
        elif not isinstance(value, (int, float, str, bytes)):
            return None
        plain.append((name, type(value).__name__, value))
    typed = []
    for tensor in inputs:
        if tensor.is_empty():
            typed.append(None)
            continue
        dims = shape(tensor)
        small = isinstance(tensor, Constant) and tensor.values.size <= _SMALL_CONSTANT
        typed.append((str(numpy_dtype(tensor)), None if dims is None else tuple(dims),
                      np.asarray(tensor.values).tobytes() if small else None))
    return (op_type, domain, opset, tuple(plain), tuple(typed), outputs)


def _inferred_types(
    op_type: str, domain: str, opset: int, attrs: dict[str, Any], inputs: Sequence[Tensor], outputs: int
) -> list[tuple[np.dtype, list | None] | None] | None:
    """(dtype, dims) per output from ONNX's node inference; None when it cannot say."""
    try:
        schema = onnx.defs.get_schema(op_type, opset, domain)
    except onnx.defs.SchemaError:
        return None
    types, data = {}, {}
    for index, tensor in enumerate(inputs):
        if tensor.is_empty():
            continue
        dtype = numpy_dtype(tensor)
        if dtype is None:
            return None
        dims = shape(tensor)
        types[f"in{index}"] = onnx.helper.make_tensor_type_proto(
            onnx.helper.np_dtype_to_tensor_dtype(dtype), None if dims is None else list(dims)
        )
        if isinstance(tensor, Constant) and tensor.values.size <= _SMALL_CONSTANT:
            data[f"in{index}"] = onnx.numpy_helper.from_array(np.asarray(tensor.values), f"in{index}")
    node = onnx.helper.make_node(
        op_type,
        ["" if t.is_empty() else f"in{i}" for i, t in enumerate(inputs)],
        [f"out{i}" for i in range(outputs)],
        domain=domain,
    )
    node.attribute.extend(gs.exporters.onnx_exporter.OnnxExporter.export_attributes(attrs))
    try:
        inferred = onnx.shape_inference.infer_node_outputs(schema, node, types, data)
    except Exception:  # inference is a convenience; a node it cannot type stays untyped
        return None
    return [_tensor_type(inferred.get(f"out{index}")) for index in range(outputs)]


def _tensor_type(proto: onnx.TypeProto | None) -> tuple[np.dtype, list | None] | None:
    if proto is None or not proto.HasField("tensor_type") or not proto.tensor_type.elem_type:
        return None
    dtype = onnx.helper.tensor_dtype_to_np_dtype(proto.tensor_type.elem_type)
    if not proto.tensor_type.HasField("shape"):
        return dtype, None
    return dtype, [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in proto.tensor_type.shape.dim]


def node_to_proto(node: Node) -> onnx.NodeProto:
    """One node as a NodeProto (subgraph attributes included)."""
    return gs.exporters.onnx_exporter.OnnxExporter.export_node(node)


def tensor_to_proto(constant: Constant) -> onnx.TensorProto:
    """An initializer's TensorProto, sharing the loaded proto when the values were never touched."""
    proto = gs.exporters.onnx_exporter.OnnxExporter.export_tensor_proto(constant)
    if proto.name != constant.name:
        proto = onnx.TensorProto(proto)  # the lazy proto is shared; never rename it in place
        proto.name = constant.name
    return proto


def value_info(name: str, array_or_dtype: np.ndarray | np.dtype | None) -> onnx.ValueInfoProto:
    """A ValueInfoProto for `name`, typed like the array (or dtype) when one is given."""
    if array_or_dtype is None:
        return onnx.helper.make_empty_tensor_value_info(name)
    if isinstance(array_or_dtype, np.ndarray):
        dtype, dims = array_or_dtype.dtype, list(array_or_dtype.shape)
    else:
        dtype, dims = np.dtype(array_or_dtype), None
    elem = onnx.helper.np_dtype_to_tensor_dtype(dtype)
    return onnx.helper.make_tensor_value_info(name, elem, dims)


# ----------------------------------------------------------------------------- queries


def iter_graphs(graph: Graph) -> Iterator[Graph]:
    """`graph` and every subgraph (If branches, Loop and Scan bodies), outermost first."""
    stack = [graph]
    while stack:
        current = stack.pop()
        yield current
        nested = [value for node in current.nodes if node.attrs for value in node.attrs.values() if type(value) is Graph]
        stack.extend(reversed(nested))


def is_empty(tensor: Tensor | None) -> bool:
    """True for an omitted optional input or output."""
    return tensor is None or tensor.is_empty()


def producer(tensor: Tensor) -> Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def consumers(tensor: Tensor) -> list[Node]:
    return list(tensor.outputs)


def literal_value(tensor: Tensor | None) -> np.ndarray | None:
    """The value of an initializer or of a Constant node's output, else None."""
    if tensor is None or tensor.is_empty():
        return None
    if isinstance(tensor, Constant):
        return np.asarray(tensor.values)
    node = producer(tensor)
    if node is None or node.op != "Constant" or node.domain not in (None, *_DEFAULT_DOMAINS):
        return None
    return _constant_node_value(node)


def _constant_node_value(node: Node) -> np.ndarray | None:
    attrs = node.attrs
    if "value" in attrs:
        value = attrs["value"]
        return np.asarray(value.values if isinstance(value, Constant) else value)
    for name, dtype in (
        ("value_float", np.float32),
        ("value_int", np.int64),
        ("value_floats", np.float32),
        ("value_ints", np.int64),
    ):
        if name in attrs:
            return np.asarray(attrs[name], dtype=dtype)
    return None


def is_weights(tensor: Tensor | None) -> bool:
    """What TensorRT's parser treats as weights: an initializer or a Constant node's output."""
    return literal_value(tensor) is not None


def numpy_dtype(tensor: Tensor | None) -> np.dtype | None:
    """The tensor's numpy dtype when known and representable in numpy."""
    if tensor is None or tensor.is_empty():
        return None
    dtype = tensor.dtype
    if dtype is None:
        return None
    if isinstance(dtype, (int, np.integer)):
        try:
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(dtype)))
        except (KeyError, TypeError, ValueError):
            return None
    try:
        return np.dtype(dtype)
    except TypeError:
        return None


def dtype_name(tensor: Tensor | None) -> str | None:
    """'float32', 'int64', 'bool', 'bfloat16'..., or None when unknown."""
    if tensor is None or tensor.is_empty() or tensor.dtype is None:
        return None
    dtype = tensor.dtype
    if isinstance(dtype, (int, np.integer)):
        return onnx.helper.tensor_dtype_to_string(int(dtype)).removeprefix("TensorProto.").lower()
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype)


def shape(tensor: Tensor | None) -> tuple[int | str | None, ...] | None:
    """Dims as ints (static), strings (symbolic) or None (unknown); None when the rank is unknown."""
    if tensor is None or tensor.is_empty():
        return None
    dims = tensor.shape
    if dims is None:
        return None
    return tuple(d if isinstance(d, (int, np.integer, str)) else None for d in dims)


def rank(tensor: Tensor | None) -> int | None:
    dims = shape(tensor)
    return None if dims is None else len(dims)


def attribute(node: Node, name: str, opset: int | None = None, default: Any = None) -> Any:
    """The node's attribute, else the schema default at `opset`, else `default`."""
    if name in node.attrs:
        return node.attrs[name]
    if opset is not None:
        schema_default = attribute_default(node.op, node.domain or "", opset, name)
        if schema_default is not None:
            return schema_default
    return default


def attribute_default(op_type: str, domain: str, opset: int, name: str) -> Any:
    """The ONNX schema default of an attribute, or None (unknown op or no default)."""
    try:
        schema = onnx.defs.get_schema(op_type, opset, domain)
    except onnx.defs.SchemaError:
        return None
    attr = schema.attributes.get(name)
    if attr is None or not attr.default_value.name:
        return None
    value = onnx.helper.get_attribute_value(attr.default_value)
    return value.decode() if isinstance(value, bytes) else value


def free_tensors(node: Node) -> list[Tensor]:
    """Outer-scope tensors that the node's subgraphs read (they are inputs in all but name)."""
    found: dict[str, Tensor] = {}
    for subgraph in node.subgraphs():
        local = {t.name for t in subgraph.inputs}
        for inner in subgraph.nodes:
            local.update(t.name for t in inner.outputs)
        for inner in subgraph.nodes:
            used = list(inner.inputs) + free_tensors(inner)
            for tensor in used:
                if not tensor.is_empty() and tensor.name not in local and not isinstance(tensor, Constant):
                    found.setdefault(tensor.name, tensor)
        for out in subgraph.outputs:
            if out.name not in local and not isinstance(out, Constant):
                found.setdefault(out.name, out)
    return list(found.values())


# ----------------------------------------------------------------------------- names


class NameRegistry:
    """Unique node and tensor names across a model and its subgraphs."""

    def __init__(self, graph: Graph):
        self._used: set[str] = set()
        for current in iter_graphs(graph):
            self._used.update(t.name for t in current.inputs)
            self._used.update(t.name for t in current.outputs)
            for node in current.nodes:
                self._used.add(node.name)
                self._used.update(t.name for t in node.inputs if not t.is_empty())
                self._used.update(t.name for t in node.outputs if not t.is_empty())

    def fresh(self, wanted: str) -> str:
        """`wanted`, or `wanted_2`, `wanted_3`... whichever is free; reserves it."""
        name = wanted
        for index in itertools.count(2):
            if name not in self._used:
                break
            name = f"{wanted}_{index}"
        self._used.add(name)
        return name

    def __contains__(self, name: str) -> bool:
        return name in self._used


# ----------------------------------------------------------------------------- order and cleanup


def _local_producers(graph: Graph) -> dict[int, Node]:
    return {id(t): node for node in graph.nodes for t in node.outputs}


def _dependencies(node: Node, producers: dict[int, Node]) -> Iterator[Node]:
    for tensor in itertools.chain(node.inputs, free_tensors(node) if _has_subgraph(node) else ()):
        dep = producers.get(id(tensor))
        if dep is not None:
            yield dep


def _has_subgraph(node: Node) -> bool:
    return bool(node.attrs) and any(type(v) is Graph for v in node.attrs.values())


def toposort(graph: Graph) -> None:
    """Sort nodes topologically in place (subgraphs too), keeping the existing order where free.

    Kahn's algorithm with a heap on the current position: linear-ish and iterative, so models
    with very long chains do not hit Python's recursion limit.

    Raises:
        InputError: the graph has a cycle.
    """
    for current in list(iter_graphs(graph)):
        _toposort_one(current)


def _toposort_one(graph: Graph) -> None:
    nodes = list(graph.nodes)
    position = {id(n): i for i, n in enumerate(nodes)}
    producers = _local_producers(graph)
    waiting = [0] * len(nodes)
    users: list[list[int]] = [[] for _ in nodes]
    for index, node in enumerate(nodes):
        deps = {position[id(dep)] for dep in _dependencies(node, producers) if dep is not node}
        waiting[index] = len(deps)
        for dep in deps:
            users[dep].append(index)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[Node] = []
    while ready:
        index = heapq.heappop(ready)
        order.append(nodes[index])
        for user in users[index]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    if len(order) != len(nodes):
        stuck = next(nodes[i].name for i, count in enumerate(waiting) if count > 0)
        raise InputError(f"graph {graph.name!r} has a cycle through node {stuck!r}")
    if any(a is not b for a, b in zip(order, nodes)):
        graph.nodes = order


def is_sorted(graph: Graph) -> bool:
    """True when every node comes after the producers of its inputs (in every subgraph)."""
    for current in iter_graphs(graph):
        seen: set[int] = set()
        producers = _local_producers(current)
        for node in current.nodes:
            if any(id(dep) not in seen for dep in _dependencies(node, producers)):
                return False
            seen.add(id(node))
    return True


def remove_dead_nodes(graph: Graph, journal: Journal | None = None) -> int:
    """Drop nodes that no graph output depends on, in `graph` and its subgraphs.

    Unused initializers go with them (graphsurgeon keeps initializers only through their
    consumers). Returns how many nodes were removed.
    """
    return sum(_remove_dead_in(current, journal) for current in list(iter_graphs(graph)))


def _remove_dead_in(graph: Graph, journal: Journal | None) -> int:
    producers = _local_producers(graph)
    live: set[int] = set()
    work = [t for t in graph.outputs]
    while work:
        node = producers.get(id(work.pop()))
        if node is None or id(node) in live:
            continue
        live.add(id(node))
        work.extend(node.inputs)
        if _has_subgraph(node):
            work.extend(free_tensors(node))
    dead = [node for node in graph.nodes if id(node) not in live]
    if not dead:
        return 0
    for node in dead:
        if journal is not None:
            journal.detach(node)
        else:
            _disconnect(node)
    graph.nodes = [node for node in graph.nodes if id(node) in live]
    return len(dead)


# ----------------------------------------------------------------------------- journal


class Journal:
    """The edits of one pass, in order, so the pass can be undone and redone without a copy.

    Every edge edit goes through a method here. Node lists are recorded as lists of references
    (a pointer per node, not a copy of the model) when the pass starts and when it ends.
    """

    def __init__(self) -> None:
        self._steps: list[tuple[Callable[[], None], Callable[[], None]]] = []
        self._lists_before: dict[int, tuple[Graph, list[Node]]] = {}
        self._lists_after: dict[int, tuple[Graph, list[Node]]] = {}
        self.undone = False

    def _do(self, redo: Callable[[], None], undo: Callable[[], None]) -> None:
        redo()
        self._steps.append((redo, undo))

    def remember_nodes(self, graph: Graph) -> None:
        """Record `graph`'s node list before the pass changes it (first call wins)."""
        if id(graph) not in self._lists_before:
            self._lists_before[id(graph)] = (graph, list(graph.nodes))

    def seal(self) -> None:
        """Record the node lists as the pass leaves them."""
        self._lists_after = {key: (g, list(g.nodes)) for key, (g, _) in self._lists_before.items()}

    def set_input(self, node: Node, index: int, tensor: Tensor) -> None:
        old = node.inputs[index]

        def redo() -> None:
            _set_edge(node.inputs, index, tensor)

        def undo() -> None:
            _set_edge(node.inputs, index, old)

        _fastio.forget_proto(node)
        self._do(redo, undo)

    def set_output(self, node: Node, index: int, tensor: Tensor) -> None:
        old = node.outputs[index]

        def redo() -> None:
            _set_edge(node.outputs, index, tensor)

        def undo() -> None:
            _set_edge(node.outputs, index, old)

        _fastio.forget_proto(node)
        self._do(redo, undo)

    def attach(self, node: Node, inputs: Sequence[Tensor], outputs: Sequence[Tensor]) -> None:
        """Connect a new node's edges."""
        self._do(lambda: _connect(node, inputs, outputs), lambda: _disconnect(node))

    def detach(self, node: Node) -> None:
        """Disconnect a node from every tensor (it becomes dead)."""
        inputs, outputs = list(node.inputs), list(node.outputs)
        self._do(lambda: _disconnect(node), lambda: _connect(node, inputs, outputs))

    def swap(self, owner: Any, attribute: str, value: Any) -> None:
        """Replace `owner.attribute` (a whole-graph pass swapping the model's graph)."""
        old = getattr(owner, attribute)
        self._do(lambda: setattr(owner, attribute, value), lambda: setattr(owner, attribute, old))

    def append_node(self, graph: Graph, node: Node) -> None:
        self.remember_nodes(graph)
        graph.nodes.append(node)

    @property
    def changed(self) -> bool:
        return bool(self._steps)

    def undo(self) -> None:
        for _, undo in reversed(self._steps):
            undo()
        for graph, nodes in self._lists_before.values():
            graph.nodes = list(nodes)
        self.undone = True

    def redo(self) -> None:
        for redo, _ in self._steps:
            redo()
        for graph, nodes in self._lists_after.values():
            graph.nodes = list(nodes)
        self.undone = False


def _connect(node: Node, inputs: Iterable[Tensor], outputs: Iterable[Tensor]) -> None:
    node.inputs.extend(inputs)
    node.outputs.extend(outputs)


def _disconnect(node: Node) -> None:
    for tensor in node.inputs:
        _unlink(tensor.outputs, node)
    for tensor in node.outputs:
        _unlink(tensor.inputs, node)
    list.clear(node.inputs)
    list.clear(node.outputs)


def _set_edge(edges: Any, index: int, tensor: Tensor) -> None:
    """`edges[index] = tensor` on a node's graphsurgeon input or output list, by identity."""
    _unlink(getattr(edges[index], edges.field_name), edges.parent_obj)
    list.__setitem__(edges, index, tensor)
    list.append(getattr(tensor, edges.field_name), edges.parent_obj)


def _unlink(back_edges: list, node: Node) -> None:
    """Remove one occurrence of `node` from a tensor's producer or consumer list.

    graphsurgeon's own removal (list.remove) compares with Node.__eq__, which formats a log
    line per comparison and can take out an equal twin: on a tensor with thousands of consumers
    undoing a pass became quadratic. The newest edge is the likeliest, so search from the end.
    """
    for position in range(len(back_edges) - 1, -1, -1):
        if back_edges[position] is node:
            list.__delitem__(back_edges, position)
            return
