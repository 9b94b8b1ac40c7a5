"""Running graphs and parts of graphs: onnxruntime for standard nodes, numpy kernels for the rest.

One mechanism serves every caller: the reference run (with extra outputs captured), local
checks of rewritten regions on captured boundary values, constant folding of small
subgraphs, and bounded-memory capture of every intermediate tensor in chunks. Nodes of custom
domains (mmdeploy ops, TensorRT plugins graphfix emits) run on the reference kernels of
`graphfix.kernels`; everything else is cut into segments that onnxruntime runs.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from graphfix import ir
from graphfix.errors import first_line
from graphfix.kernels import find_kernel

__all__ = [
    "NotRunnable",
    "Program",
    "run_model",
    "evaluate",
    "fold",
    "has_subgraph",
    "onnxruntime_max_opset",
    "onnxruntime_max_ir_version",
]

logger = logging.getLogger(__name__)

# Domains onnxruntime's CPU provider implements; nodes elsewhere need a graphfix kernel.
_ORT_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc"})
_FOLD_NODE_LIMIT = 64
_FOLD_ELEMENT_LIMIT = 1 << 20


class NotRunnable(Exception):
    """Neither onnxruntime nor a graphfix kernel can run a node; names it and says why."""

    def __init__(self, node: str, op: str, reason: str):
        super().__init__(f"node {node!r} ({op}): {reason}")
        self.node, self.op, self.reason = node, op, reason


@dataclass
class Program:
    """What to run: nodes in topological order, their initializers, opsets and functions."""

    nodes: Sequence[onnx.NodeProto]
    initializers: Mapping[str, onnx.TensorProto | np.ndarray]
    opsets: Sequence[onnx.OperatorSetIdProto]
    ir_version: int = 8
    functions: Sequence[onnx.FunctionProto] = field(default_factory=tuple)

    @classmethod
    def from_model(cls, model: onnx.ModelProto) -> Program:
        return cls(
            nodes=list(model.graph.node),
            initializers={t.name: t for t in model.graph.initializer},
            opsets=list(model.opset_import),
            ir_version=model.ir_version,
            functions=list(model.functions),
        )


# ----------------------------------------------------------------------------- onnxruntime


def _session(model: onnx.ModelProto) -> Any:
    import onnxruntime as ort

    newest = onnxruntime_max_ir_version()
    if model.ir_version > newest:
        # The onnx package stamps its newest IR version; nothing graphfix runs needs more.
        model = _with_ir_version(model, newest)

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Fusions change accumulation order between the original and the rewritten graph; compare
    # graphs, not fusions. Without graph transforms, session creation (which dominates a
    # verification run) also takes half the time: 0.48 s against 1.09 s on a 10k-node model.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if ir.is_huge(model):
        return _session_from_file(model, options)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _session_from_file(model: onnx.ModelProto, options: Any) -> Any:
    """Over 2 GB a model cannot be one protobuf message: onnxruntime reads it from files.

    The (freshly exported) proto's initializers are moved to external data in place.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="graphfix-session-") as folder:
        path = Path(folder) / "model.onnx"
        onnx.save_model(model, str(path), save_as_external_data=True, location="model.onnx.data")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _blamed_node(message: str, nodes: Sequence[onnx.NodeProto]) -> onnx.NodeProto | None:
    """The node onnxruntime's message names (it quotes names as 'x', (x), Name:'x', ...)."""
    named = [n for n in nodes if n.name and n.name in message]
    return max(named, key=lambda n: len(n.name), default=None)


def _with_ir_version(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    stamped = onnx.ModelProto()
    stamped.CopyFrom(model)
    stamped.ir_version = version
    return stamped


@functools.cache
def onnxruntime_max_ir_version() -> int:
    """The newest IR version the installed onnxruntime reads (probed once)."""
    import onnxruntime as ort

    for version in range(onnx.IR_VERSION, 3, -1):
        try:
            ort.InferenceSession(_identity_model(13, version).SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception:  # onnxruntime raises several exception types for a refused version
            continue
        return version
    return 3


def _identity_model(opset: int, ir_version: int) -> onnx.ModelProto:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


@functools.cache
def onnxruntime_max_opset() -> int:
    """The newest default-domain opset the installed onnxruntime loads (probed once)."""
    import onnxruntime as ort

    for opset in range(onnx.defs.onnx_opset_version(), 6, -1):
        try:
            ort.InferenceSession(_identity_model(opset, 8).SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception:  # onnxruntime raises several exception types for a refused opset
            continue
        return opset
    return 6


# ----------------------------------------------------------------------------- running

# The most nodes one onnxruntime session runs. Session creation grows faster than the node
# count (onnxruntime 1.31, no graph transforms, the benchmark's block models: 1.2 s for 10k
# nodes, 13 s for 50k, 30 s for 100k) while a run hands tensors between sessions for almost
# nothing, so a model runs as a chain of sessions of this size: 0.7 s, 4.7 s and 6.6 s, with
# bit-identical results (the same kernels run the same nodes).
SESSION_NODES = 1000


def run_model(
    model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], extra_outputs: Iterable[str] = ()
) -> dict[str, np.ndarray]:
    """Run a whole model; returns its outputs plus `extra_outputs` (intermediate tensors) by name."""
    wanted = [o.name for o in model.graph.output]
    wanted += [n for n in dict.fromkeys(extra_outputs) if n not in set(wanted)]
    program = Program.from_model(model)
    if len(program.nodes) <= SESSION_NODES and all(_runs_in_onnxruntime(n) for n in program.nodes):
        return _run_whole(model, feeds, wanted)
    return evaluate(program, feeds, wanted)


def _run_whole(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], wanted: Sequence[str]) -> dict[str, np.ndarray]:
    declared = {o.name for o in model.graph.output}
    extra = [n for n in wanted if n not in declared]
    if extra:
        outputs = list(model.graph.output)
        model.graph.output.extend(ir.value_info(n, None) for n in extra)
    try:
        session = _session(model)
        inputs = {i.name for i in session.get_inputs()}
        results = session.run(wanted, {k: v for k, v in feeds.items() if k in inputs})
    except Exception as error:  # onnxruntime's exceptions have no common base we can name
        raise _not_runnable(error, model.graph.node) from None
    finally:
        if extra:
            del model.graph.output[:]
            model.graph.output.extend(outputs)
    return dict(zip(wanted, results))


def _not_runnable(error: Exception, nodes: Sequence[onnx.NodeProto]) -> NotRunnable:
    message = first_line(error)
    node = _blamed_node(message, nodes)
    if node is None:
        return NotRunnable("?", "?", f"onnxruntime: {message}")
    return NotRunnable(node.name, node.op_type, f"onnxruntime: {message}")


def _runs_in_onnxruntime(node: onnx.NodeProto) -> bool:
    if node.domain not in _ORT_DOMAINS:
        return False
    # A plugin node written in the default domain (graphsurgeon scripts do that) is not ONNX.
    return not (
        node.domain in ("", "ai.onnx")
        and not onnx.defs.has(node.op_type)
        and find_kernel(node.domain, node.op_type) is not None
    )


def evaluate(
    program: Program,
    feeds: Mapping[str, np.ndarray],
    wanted: Sequence[str],
    on_values: Callable[[dict[str, np.ndarray]], None] | None = None,
    chunk_nodes: int | None = SESSION_NODES,
) -> dict[str, np.ndarray]:
    """Run `program` on `feeds`, cut into segments; returns the `wanted` tensors.

    Segments end at nodes that need a graphfix kernel, and after `chunk_nodes` nodes (one
    onnxruntime session each, see SESSION_NODES). With `on_values`, every tensor a segment
    produces is passed to it right after the segment runs, and tensors nobody needs later are
    dropped, so memory stays near the live set.

    Raises:
        NotRunnable: a node has no onnxruntime kernel and no graphfix kernel, or failed.
    """
    segments = _segments(program.nodes, chunk_nodes)
    last_use = _last_uses(segments, wanted)
    env: dict[str, np.ndarray] = dict(feeds)
    keep = set(wanted)
    for position, segment in enumerate(segments):
        produced = _run_segment(program, segment, env, position, last_use, keep, capture=on_values is not None)
        env.update(produced)
        if on_values is not None:
            on_values(produced)
        for name in [n for n in env if last_use.get(n, -1) <= position and n not in keep]:
            del env[name]
    missing = [n for n in wanted if n not in env]
    if missing:
        raise NotRunnable("?", "?", f"tensor {missing[0]!r} is not produced by the program")
    return {n: env[n] for n in wanted}


def _segments(nodes: Sequence[onnx.NodeProto], chunk_nodes: int | None) -> list[list[onnx.NodeProto]]:
    segments: list[list[onnx.NodeProto]] = []
    current: list[onnx.NodeProto] = []
    for node in nodes:
        if not _runs_in_onnxruntime(node):
            if current:
                segments.append(current)
                current = []
            segments.append([node])
            continue
        current.append(node)
        if chunk_nodes and len(current) >= chunk_nodes:
            segments.append(current)
            current = []
    if current:
        segments.append(current)
    return segments


def _last_uses(segments: Sequence[Sequence[onnx.NodeProto]], wanted: Sequence[str]) -> dict[str, int]:
    last: dict[str, int] = {}
    for position, segment in enumerate(segments):
        for node in segment:
            for name in _reads(node):
                last[name] = position
    for name in wanted:
        last[name] = len(segments)
    return last


def _reads(node: onnx.NodeProto) -> set[str]:
    """Names a node reads: its inputs and what its subgraphs take from the outer scope."""
    names = {n for n in node.input if n}
    for attr in node.attribute:
        for graph in _attribute_graphs(attr):
            names |= _free_names(graph)
    return names


def has_subgraph(node: onnx.NodeProto) -> bool:
    """The node carries a body (If, Loop, Scan, or a custom op with a graph attribute)."""
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _attribute_graphs(attr: onnx.AttributeProto) -> list[onnx.GraphProto]:
    if attr.type == onnx.AttributeProto.GRAPH:
        return [attr.g]
    if attr.type == onnx.AttributeProto.GRAPHS:
        return list(attr.graphs)
    return []


def _free_names(graph: onnx.GraphProto) -> set[str]:
    local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used |= _reads(node)
        local |= set(node.output)
    used |= {o.name for o in graph.output}
    return used - local


def _run_segment(
    program: Program,
    segment: Sequence[onnx.NodeProto],
    env: Mapping[str, np.ndarray],
    position: int,
    last_use: Mapping[str, int],
    keep: set[str],
    capture: bool,
) -> dict[str, np.ndarray]:
    if len(segment) == 1 and not _runs_in_onnxruntime(segment[0]):
        return _run_kernel(program, segment[0], env)
    produced = [n for node in segment for n in node.output if n]
    if capture:
        outputs = produced
    else:
        outputs = [n for n in produced if last_use.get(n, -1) > position or n in keep]
    if not outputs:
        return {}
    reads = set().union(*(_reads(n) for n in segment)) - set(produced)
    model = _segment_model(program, segment, reads, env, outputs)
    try:
        results = _session(model).run(outputs, {n: env[n] for n in reads if n in env and n not in program.initializers})
    except Exception as error:  # onnxruntime's exceptions have no common base we can name
        raise _not_runnable(error, segment) from None
    return dict(zip(outputs, results))


def _segment_model(
    program: Program,
    segment: Sequence[onnx.NodeProto],
    reads: set[str],
    env: Mapping[str, np.ndarray],
    outputs: Sequence[str],
) -> onnx.ModelProto:
    inputs = sorted(n for n in reads if n in env and n not in program.initializers)
    missing = sorted(n for n in reads if n not in env and n not in program.initializers)
    if missing:
        raise NotRunnable(segment[0].name, segment[0].op_type, f"input {missing[0]!r} has no value")
    initializers = [_as_tensor_proto(n, program.initializers[n]) for n in sorted(reads) if n in program.initializers]
    graph = onnx.helper.make_graph(
        list(segment),
        "segment",
        [ir.value_info(n, np.asarray(env[n])) for n in inputs],
        [ir.value_info(n, None) for n in outputs],
        initializer=initializers,
    )
    model = onnx.helper.make_model(graph, opset_imports=list(program.opsets), functions=list(program.functions))
    model.ir_version = program.ir_version
    return model


def _as_tensor_proto(name: str, value: onnx.TensorProto | np.ndarray) -> onnx.TensorProto:
    if isinstance(value, onnx.TensorProto):
        return value
    return onnx.numpy_helper.from_array(np.asarray(value), name)


def _run_kernel(program: Program, node: onnx.NodeProto, env: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    kernel = find_kernel(node.domain, node.op_type)
    if kernel is None:
        raise NotRunnable(
            node.name,
            f"{node.domain}::{node.op_type}" if node.domain else node.op_type,
            "no onnxruntime kernel and no graphfix reference kernel for this custom op",
        )
    inputs = [_value(program, env, name) if name else None for name in node.input]
    attrs = {a.name: _attribute(a) for a in node.attribute}
    try:
        results = kernel(inputs, attrs)
    except Exception as error:  # a kernel refusing its inputs is reported like an ORT failure
        raise NotRunnable(node.name, node.op_type, f"reference kernel failed: {error}") from None
    return {name: np.asarray(value) for name, value in zip(node.output, results) if name}


def _value(program: Program, env: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    if name in env:
        return env[name]
    value = program.initializers.get(name)
    if value is None:
        raise NotRunnable("?", "?", f"tensor {name!r} has no value")
    return onnx.numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)


def _attribute(attr: onnx.AttributeProto) -> Any:
    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    return value


# ----------------------------------------------------------------------------- folding


def fold(
    tensor: ir.Tensor,
    graph: ir.Graph,
    opset_imports: Sequence[onnx.OperatorSetIdProto],
    graph_node_ids: set[int] | None = None,
) -> np.ndarray | None:
    """The value of `tensor` when it is computable from constants alone, else None.

    Follows producers back to literals and to Shape/Size of tensors whose shape is static, up
    to a small cone (shape arithmetic, casts of constants); evaluates the cone in onnxruntime.
    Producers outside `graph` (an outer scope) stop the cone; `graph_node_ids`, the ids of
    `graph.nodes`, spares a rebuild of that set per call when the caller keeps one.
    """
    literal = ir.literal_value(tensor)
    if literal is not None:
        return literal
    cone = _constant_cone(tensor, {id(n) for n in graph.nodes} if graph_node_ids is None else graph_node_ids)
    if cone is None:
        return None
    nodes, known = cone
    program = Program(
        nodes=[ir.node_to_proto(n) for n in nodes],
        initializers={**known},
        opsets=list(opset_imports),
    )
    try:
        value = evaluate(program, {}, [tensor.name])[tensor.name]
    except NotRunnable as error:
        logger.debug("cannot fold %s: %s", tensor.name, error)
        return None
    return value if value.size <= _FOLD_ELEMENT_LIMIT else None


def _constant_cone(
    tensor: ir.Tensor, graph_nodes: set[int]
) -> tuple[list[ir.Node], dict[str, np.ndarray]] | None:
    order: list[ir.Node] = []
    known: dict[str, np.ndarray] = {}
    seen: set[int] = set()

    def visit(current: ir.Tensor) -> bool:
        if current.is_empty() or current.name in known:
            return True
        literal = ir.literal_value(current)
        if literal is not None:
            known[current.name] = literal
            return True
        node = ir.producer(current)
        if node is None or id(node) not in graph_nodes or node.domain not in ("", "ai.onnx", None):
            return False
        if id(node) in seen:
            return True
        if node.op in ("Shape", "Size"):
            static = _static_shape_value(node)
            if static is None:
                return False
            known[current.name] = static
            return True
        if any(isinstance(v, ir.Graph) for v in node.attrs.values()) or len(seen) >= _FOLD_NODE_LIMIT:
            return False
        seen.add(id(node))
        if not all(visit(t) for t in node.inputs):
            return False
        order.append(node)
        return True

    return (order, known) if visit(tensor) else None


def _static_shape_value(node: ir.Node) -> np.ndarray | None:
    dims = ir.shape(node.inputs[0])
    if dims is None or not all(isinstance(d, (int, np.integer)) for d in dims):
        return None
    if node.op == "Size":
        return np.asarray(int(np.prod(dims)), dtype=np.int64)
    start = int(node.attrs.get("start", 0))
    end = node.attrs.get("end")
    return np.asarray(dims, dtype=np.int64)[start:None if end is None else int(end)]
