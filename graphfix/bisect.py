"""Where two models part ways: pair their intermediate tensors and find the first that differs.

Both models run in onnxruntime (graphfix kernels for custom ops) on the same inputs, segment by
segment, so that intermediate tensors can be captured without holding all of them: the
capture keeps model A's tensors of one *window* (a prefix, in A's topological order, that fits
in half the memory budget), then runs model B up to the last tensor of the window and compares
each of B's tensors with its partner the moment B produces it, releasing A's copy. Windows
follow each other until every pair is compared, so a model whose intermediates exceed the
budget costs more runs, never more memory. Segment sizes (nodes per onnxruntime session) come
from the budget and the tensor sizes ONNX shape inference predicts for the given inputs.

Pairing: tensors produced in both models under one name pair by name (graphfix rewrites keep
the names of the tensors they replace). Where names changed, pairs come from structure:
forward, a node of B pairs with an unpaired node of A of the same op, attributes and arity
whose inputs pair with its inputs (constants pair by dtype and shape, so a changed weight still
pairs); backward, two paired nodes of the same op pair their unpaired inputs position by
position (this reaches past a rewritten region, e.g. an Add swapped for a Sub). Graph inputs
and outputs whose names differ pair by position. A structural pair whose runtime shapes or
dtypes differ is dropped, never reported as a difference.

A divergence is an *origin*: a tensor that differs beyond tolerance while none of the compared
inputs of its producer do. The earliest origin in A's topological order is the first
divergence; its path is the chain of compared tensors from a model input, following at each
node the input that differs most.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx

from graphfix import execute
from graphfix.driver import UNORDERED_OUTPUT_OPS
from graphfix.errors import UsageError
from graphfix.report import Comparison
from graphfix.verify import Tolerance, compare

__all__ = [
    "BY_NAME",
    "BY_STRUCTURE",
    "DEFAULT_BUDGET",
    "BisectReport",
    "CaptureMeter",
    "Divergence",
    "TensorDiff",
    "bisect",
    "compare_to_scale",
    "first_divergence",
    "parse_size",
    "stop_capture",
    "stream_tensors",
]

logger = logging.getLogger(__name__)

DEFAULT_BUDGET = 2 << 30
_MAX_CHUNK_NODES = 256
_SMALL_ELEMENTS = 4096  # weights this small are digested for pairing and kept for shape inference

BY_NAME = "name"
BY_STRUCTURE = "structure"


# ----------------------------------------------------------------------------- bounded-memory capture


@dataclass
class CaptureMeter:
    """Bytes a capture holds at once: tensors it keeps plus the segment it was just handed.

    `peak` is the most it ever held.
    """

    budget: int = DEFAULT_BUDGET
    kept: int = 0
    peak: int = 0

    def keep(self, nbytes: int) -> None:
        self.kept += nbytes

    def release(self, nbytes: int) -> None:
        self.kept -= nbytes

    def handed(self, segment_bytes: int) -> None:
        self.peak = max(self.peak, self.kept + segment_bytes)

    @property
    def store_limit(self) -> int:
        """What a window may keep: the other half of the budget is for the segment in flight."""
        return self.budget // 2


class _Stop(Exception):
    """Raised by a capture callback to end a run early (the rest of the model is not needed)."""


def stream_tensors(
    model: onnx.ModelProto,
    feeds: Mapping[str, np.ndarray],
    on_tensor: Callable[[str, np.ndarray], None],
    meter: CaptureMeter,
    *,
    chunk_nodes: int | None = None,
) -> None:
    """Run `model`, handing every tensor its nodes produce to `on_tensor` in topological order.

    Segments hold `chunk_nodes` nodes (default: sized from `meter.budget`), and tensors nobody
    needs later are dropped as the run goes, so only the live set, one segment's outputs and
    whatever `on_tensor` keeps are in memory. `on_tensor` may call `stop_capture()` to end the
    run early.

    Raises:
        execute.NotRunnable: a node cannot run; names it.
    """
    program = execute.Program.from_model(model)
    chunk = chunk_nodes or _chunk_nodes(model, feeds, meter.budget)

    def segment(values: dict[str, np.ndarray]) -> None:
        meter.handed(sum(v.nbytes for v in values.values()))
        for name, value in values.items():
            on_tensor(name, value)

    try:
        execute.evaluate(program, feeds, [], on_values=segment, chunk_nodes=chunk)
    except _Stop:
        pass


def stop_capture() -> None:
    """End the current `stream_tensors` run from inside its callback."""
    raise _Stop


def _chunk_nodes(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], budget: int) -> int:
    """Nodes per segment such that no run of that many nodes outputs more than half `budget`.

    Output sizes come from ONNX shape inference with the actual input shapes; a node whose
    outputs it cannot size counts as the largest one it could (or the largest input).
    """
    sizes = _predicted_output_bytes(model, feeds)
    known = [s for s in sizes if s is not None]
    fallback = max(known, default=max((v.nbytes for v in feeds.values()), default=1))
    filled = np.array([fallback if s is None else s for s in sizes] or [0], dtype=np.int64)
    prefix = np.concatenate([[0], np.cumsum(filled)])
    limit = budget // 2
    low, high = 1, min(_MAX_CHUNK_NODES, len(filled))
    while low < high:  # the largest window whose every placement fits
        middle = (low + high + 1) // 2
        if int(np.max(prefix[middle:] - prefix[:-middle])) <= limit:
            low = middle
        else:
            high = middle - 1
    return low


def _predicted_output_bytes(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[int | None]:
    """Bytes each node outputs on `feeds`, per ONNX shape inference (None where unknown).

    Inference runs on a light copy: the inputs take the feeds' shapes and initializers above
    _SMALL_ELEMENTS elements become typed inputs, so a model's weights are never copied (its
    nodes are, Constant-node values included).
    """
    graph = model.graph
    small = [t for t in graph.initializer if _element_count(t) <= _SMALL_ELEMENTS]
    large = [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
             for t in graph.initializer if _element_count(t) > _SMALL_ELEMENTS]
    inputs = [onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape))
              for name, value in feeds.items()]
    probe = onnx.helper.make_model(
        onnx.helper.make_graph(list(graph.node), "probe", inputs + large, [], initializer=small),
        opset_imports=list(model.opset_import), functions=list(model.functions))
    probe.ir_version = model.ir_version
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
    except Exception as error:  # inference raises several types on models it cannot follow
        logger.debug("shape inference for segment sizes failed: %s", error)
        return [None] * len(graph.node)
    sizes = {v.name: _value_info_bytes(v) for v in inferred.graph.value_info}
    result: list[int | None] = []
    for node in graph.node:
        per_output = [sizes.get(name) for name in node.output if name]
        result.append(None if any(s is None for s in per_output) else sum(per_output))
    return result


def _element_count(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1


def _value_info_bytes(value: onnx.ValueInfoProto) -> int | None:
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    if any(d is None for d in dims):
        return None
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    return int(np.prod(dims, dtype=np.int64)) * itemsize


_SIZE = re.compile(r"\s*([\d.]+)\s*([kmgt]?)(i?b?)\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes of `2GiB`, `512MiB`, `1.5G`, `64k` or a plain number (binary units)."""
    match = _SIZE.fullmatch(text)
    if not match:
        raise UsageError(f"{text!r} is not a size (e.g. 2GiB, 512MiB, 1048576)")
    unit = match.group(2).lower()
    scale = 1024 ** ("kmgt".index(unit) + 1) if unit else 1
    size = int(float(match.group(1)) * scale)
    if size <= 0:
        raise UsageError(f"size {text!r} must be positive")
    return size


# ----------------------------------------------------------------------------- graph facts


@dataclass
class _Graph:
    """What pairing needs to know of one model's main graph."""

    nodes: list[onnx.NodeProto]
    producer: dict[str, tuple[int, int]]  # tensor -> (node index, output index)
    consumers: dict[str, list[tuple[int, int]]]  # tensor -> [(node index, input index)]
    constants: dict[str, tuple[Any, ...]]  # constant-like tensor -> fingerprint
    inputs: list[str]
    outputs: list[str]

    @classmethod
    def of(cls, model: onnx.ModelProto) -> _Graph:
        graph = model.graph
        producer, consumers = {}, {}
        for index, node in enumerate(graph.node):
            for k, name in enumerate(node.output):
                if name:
                    producer[name] = (index, k)
            for k, name in enumerate(node.input):
                if name:
                    consumers.setdefault(name, []).append((index, k))
        initializers = {t.name for t in graph.initializer}
        return cls(
            nodes=list(graph.node),
            producer=producer,
            consumers=consumers,
            constants=_constant_fingerprints(graph),
            inputs=[i.name for i in graph.input if i.name not in initializers],
            outputs=[o.name for o in graph.output],
        )

    def op(self, tensor: str) -> tuple[str, str]:
        """(node name, op type) of the tensor's producer; ("", "input") for inputs."""
        if tensor not in self.producer:
            return "", "input"
        node = self.nodes[self.producer[tensor][0]]
        return node.name, node.op_type


def _constant_fingerprints(graph: onnx.GraphProto) -> dict[str, tuple[Any, ...]]:
    """Tensors computed from weights alone, each as (dtype, dims, small-value digest).

    Initializers and Constant outputs are ("value", dtype, dims, digest of the bytes when
    small); outputs of a node whose inputs are all constant-like are ("folded", op, output
    index, the inputs' fingerprints).
    """
    found: dict[str, tuple[Any, ...]] = {}
    for tensor in graph.initializer:
        found[tensor.name] = _fingerprint(tensor)
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None:
            found[node.output[0]] = _fingerprint(value)
        elif node.input and all(not name or name in found for name in node.input) and not execute.has_subgraph(node):
            inputs = tuple(found[name] if name else None for name in node.input)
            for k, name in enumerate(node.output):
                found[name] = ("folded", node.op_type, k, inputs)
    return found


def _fingerprint(tensor: onnx.TensorProto) -> tuple[Any, ...]:
    small = _element_count(tensor) <= _SMALL_ELEMENTS
    digest = hash(onnx.numpy_helper.to_array(tensor).tobytes()) if small else None
    return ("value", tensor.data_type, tuple(tensor.dims), digest)


def _loose(fingerprint: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    """A fingerprint without value digests: what a changed weight keeps."""
    if fingerprint is None or fingerprint[0] == "value":
        return fingerprint and fingerprint[:3]
    kind, op, index, inputs = fingerprint
    return (kind, op, index, tuple(_loose(f) for f in inputs))




# ----------------------------------------------------------------------------- pairing


@dataclass(frozen=True)
class _Pair:
    a: str
    b: str
    how: str
    position: int  # index of A's producer: the order divergences are reported in


class _Pairing:
    """Tensor pairs of two graphs: by name, then by structure to a fixpoint (module docstring)."""

    def __init__(self, a: _Graph, b: _Graph):
        self.a, self.b = a, b
        self.b_to_a: dict[str, str] = {}
        self.a_to_b: dict[str, str] = {}
        self.how: dict[str, str] = {}
        self.matched_a_nodes: set[int] = set()

    def run(self) -> list[_Pair]:
        self._by_name()
        self._by_position(self.a.inputs, self.b.inputs)
        self._by_position(self.a.outputs, self.b.outputs)
        changed = True
        while changed:
            changed = self._forward() | self._backward()
        pairs = [
            _Pair(a, b, self.how[b], self.a.producer[a][0])
            for b, a in self.b_to_a.items()
            if a in self.a.producer and b in self.b.producer
        ]
        return sorted(pairs, key=lambda p: (p.position, p.a))

    def _link(self, a: str, b: str, how: str) -> bool:
        if a in self.a_to_b or b in self.b_to_a:
            return False
        self.a_to_b[a], self.b_to_a[b], self.how[b] = b, a, how
        if a in self.a.producer:
            self.matched_a_nodes.add(self.a.producer[a][0])
        return True

    def _by_name(self) -> None:
        for name in list(self.b.inputs) + list(self.b.producer):
            if name in self.a.producer or name in self.a.inputs:
                self._link(name, name, BY_NAME)

    def _by_position(self, a_names: Sequence[str], b_names: Sequence[str]) -> None:
        a_left = [n for n in a_names if n not in self.a_to_b]
        b_left = [n for n in b_names if n not in self.b_to_a]
        if len(a_left) == len(b_left):
            for a, b in zip(a_left, b_left):
                self._link(a, b, BY_STRUCTURE)

    def _forward(self) -> bool:
        changed = False
        for node in self.b.nodes:
            if all(not name or name in self.b_to_a for name in node.output):
                continue
            partner = self._partner_of(node)
            if partner is None:
                continue
            for b_out, a_out in zip(node.output, self.a.nodes[partner].output):
                if b_out and a_out:
                    changed |= self._link(a_out, b_out, BY_STRUCTURE)
        return changed

    def _partner_of(self, node: onnx.NodeProto) -> int | None:
        """The earliest unmatched node of A that computes what `node` computes from paired inputs."""
        anchors = [(k, name) for k, name in enumerate(node.input) if name in self.b_to_a and name not in self.b.constants]
        if not anchors:
            return None
        position, name = anchors[0]
        candidates = [
            index for index, k in self.a.consumers.get(self.b_to_a[name], ())
            if k == position and index not in self.matched_a_nodes and _same_computation(self.a.nodes[index], node)
        ]
        exact = [i for i in candidates if self._inputs_correspond(self.a.nodes[i], node, loose=False)]
        loose = [i for i in candidates if self._inputs_correspond(self.a.nodes[i], node, loose=True)]
        found = exact or loose
        return min(found) if found else None

    def _inputs_correspond(self, a_node: onnx.NodeProto, b_node: onnx.NodeProto, loose: bool) -> bool:
        for a_in, b_in in zip(a_node.input, b_node.input):
            if not a_in or not b_in:
                if a_in or b_in:
                    return False
                continue
            if b_in in self.b.constants and a_in in self.a.constants:
                a_print, b_print = self.a.constants[a_in], self.b.constants[b_in]
                if (_loose(a_print) != _loose(b_print)) if loose else (a_print != b_print):
                    return False
            elif self.b_to_a.get(b_in) != a_in:
                return False
        return True

    def _backward(self) -> bool:
        changed = False
        for b_name, a_name in list(self.b_to_a.items()):
            if a_name not in self.a.producer or b_name not in self.b.producer:
                continue
            (a_index, a_k), (b_index, b_k) = self.a.producer[a_name], self.b.producer[b_name]
            a_node, b_node = self.a.nodes[a_index], self.b.nodes[b_index]
            if a_k != b_k or not _same_computation(a_node, b_node):
                continue
            for a_in, b_in in zip(a_node.input, b_node.input):
                if a_in and b_in and a_in not in self.a.constants and b_in not in self.b.constants:
                    changed |= self._link(a_in, b_in, BY_STRUCTURE)
        return changed


def _same_computation(a: onnx.NodeProto, b: onnx.NodeProto) -> bool:
    return (
        a.op_type == b.op_type
        and a.domain == b.domain
        and len(a.input) == len(b.input)
        and len(a.output) == len(b.output)
        and _attributes(a) == _attributes(b)
    )


def _attributes(node: onnx.NodeProto) -> list[tuple[str, bytes]]:
    return sorted((a.name, a.SerializeToString()) for a in node.attribute)


# ----------------------------------------------------------------------------- comparing


def compare_to_scale(name: str, actual: np.ndarray, expected: np.ndarray, tolerance: Tolerance, *,
                     unordered_rows: bool = False) -> Comparison:
    """Compare with rtol relative to the tensor's largest finite magnitude, not to each element.

    |actual - expected| <= atol + rtol * max|expected|, and max_rel is reported against that
    scale too. Reduced-precision storage errs in proportion to the magnitudes a value was
    computed from, so an element near zero in a tensor of hundreds (a cancellation) is held to
    the tensor's scale, not to its own. Integers and booleans still compare exactly.
    """
    expected = np.asarray(expected)
    if expected.dtype.kind != "f" or not expected.size:
        return compare(name, actual, expected, tolerance, unordered_rows=unordered_rows)
    finite = np.abs(expected[np.isfinite(expected)])
    scale = float(finite.max()) if finite.size else 0.0
    result = compare(name, actual, expected, Tolerance(tolerance.atol + tolerance.rtol * scale, 0.0),
                     unordered_rows=unordered_rows)
    relative = result.max_abs / scale if scale else (0.0 if result.max_abs == 0 else float("inf"))
    reason = result.reason and result.reason.replace(
        f"exceeds atol={tolerance.atol + tolerance.rtol * scale:g} rtol=0",
        f"exceeds atol={tolerance.atol:g} + rtol={tolerance.rtol:g} x max|x| {scale:.3g}")
    return replace(result, max_rel=relative, reason=reason)


@dataclass(frozen=True)
class TensorDiff:
    """One pair of tensors compared: where they come from, how they were paired, the error.

    Attributes:
        tensor_a, tensor_b: the tensor's name in A and in B.
        node_a, op_a, node_b, op_b: their producers (name, op type); op "input" for inputs.
        position: index of A's producer in A's topological order.
        shape: the runtime shape.
        paired_by: "name" or "structure".
        ok: within tolerance.
        max_abs, max_rel: the largest errors (the tolerance that would have passed).
        reason: why not ok (NaN/Inf positions, shapes, tolerance).
    """

    tensor_a: str
    tensor_b: str
    node_a: str
    op_a: str
    node_b: str
    op_b: str
    position: int
    shape: tuple[int, ...]
    paired_by: str
    ok: bool
    max_abs: float
    max_rel: float
    reason: str = ""


@dataclass(frozen=True)
class Divergence:
    """A tensor that differs while its producer's compared inputs do not, and the path to it.

    Attributes:
        diff: the divergent tensor.
        path: compared tensors from the first node after a model input to `diff` (inclusive),
            following at each node the input that differs most.
    """

    diff: TensorDiff
    path: tuple[TensorDiff, ...]

    def describe(self) -> str:
        """One line for logs and blame messages."""
        d = self.diff
        if d.op_a == "input":
            where = f"input {d.tensor_a!r}"
        else:
            ops = d.op_a if d.op_b in (d.op_a, "") else f"{d.op_a} in A, {d.op_b} in B"
            where = f"node {d.node_a!r} ({ops})"
        renamed = f" (named {d.tensor_b!r} in B, paired by {d.paired_by})" if d.tensor_b != d.tensor_a else ""
        return (f"first divergence at tensor {d.tensor_a!r}{renamed} of {where}: "
                f"max abs err {d.max_abs:.3g}, rel {d.max_rel:.3g}" + (f" ({d.reason})" if d.reason else ""))


@dataclass(frozen=True)
class BisectReport:
    """Two models compared tensor by tensor.

    Attributes:
        model_a, model_b: labels (paths) of the models.
        atol, rtol: the tolerance.
        paired_by_name, paired_by_structure: pair counts by how they were found.
        unpaired_a, unpaired_b: computed tensors (not weights or constants) of one model with no
            partner in the other.
        compared: pairs compared (fewer than paired when the search stopped at a divergence
            or a structural pair's runtime shapes differed).
        differing: compared pairs beyond tolerance.
        divergences: the origins (see the module docstring), earliest first.
        outputs: the graph outputs' comparisons.
        complete: every pair was compared.
        windows: capture windows (each runs both models once).
        budget, peak_bytes: the memory budget and the most the capture held.
        seconds: wall time.
    """

    model_a: str
    model_b: str
    atol: float
    rtol: float
    paired_by_name: int
    paired_by_structure: int
    unpaired_a: int
    unpaired_b: int
    compared: int
    differing: int
    divergences: tuple[Divergence, ...]
    outputs: tuple[TensorDiff, ...]
    complete: bool
    windows: int
    budget: int
    peak_bytes: int
    seconds: float

    @property
    def first(self) -> Divergence | None:
        return self.divergences[0] if self.divergences else None


class _Comparer:
    """Compares pairs window by window within a memory budget (module docstring)."""

    def __init__(self, model_a: onnx.ModelProto, model_b: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                 graphs: tuple[_Graph, _Graph], tolerance: Tolerance, scaled: bool, meter: CaptureMeter):
        self.models = (model_a, model_b)
        self.feeds = feeds
        self.a, self.b = graphs
        self.tolerance = tolerance
        self.compare = compare_to_scale if scaled else compare
        self.meter = meter
        self.chunks = tuple(_chunk_nodes(m, feeds, meter.budget) for m in self.models)
        self.results: dict[str, TensorDiff] = {}  # by A's name
        self.values: dict[str, np.ndarray] = {}  # A's tensors of the current window
        self.windows = 0

    def run(self, pairs: Sequence[_Pair], enough: Callable[[], bool]) -> bool:
        """Compare `pairs` in windows until done or `enough()`; returns True when all were."""
        pending = list(pairs)
        while pending:
            window = self._fill_window(pending)
            self._compare_window(window)
            done = {p.a for p in window}
            pending = [p for p in pending if p.a not in done]
            self.windows += 1
            if enough():
                return not pending
        return True

    def _fill_window(self, pending: Sequence[_Pair]) -> list[_Pair]:
        """Run A and keep the values of the longest prefix of `pending` that fits."""
        by_a = {p.a: p for p in pending}
        window: list[_Pair] = []

        def keep(name: str, value: np.ndarray) -> None:
            pair = by_a.get(name)
            if pair is None:
                return
            if window and self.meter.kept + value.nbytes > self.meter.store_limit:
                stop_capture()
            window.append(pair)
            self.values[name] = value
            self.meter.keep(value.nbytes)
            if len(window) == len(pending):
                stop_capture()

        stream_tensors(self.models[0], self.feeds, keep, self.meter, chunk_nodes=self.chunks[0])
        return window

    def _compare_window(self, window: Sequence[_Pair]) -> None:
        by_b = {p.b: p for p in window}
        left = set(by_b)

        def check(name: str, value: np.ndarray) -> None:
            pair = by_b.get(name)
            if pair is None:
                return
            expected = self.values.pop(pair.a)
            self.meter.release(expected.nbytes)
            diff = self._diff(pair, value, expected)
            if diff is not None:
                self.results[pair.a] = diff
            left.discard(name)
            if not left:
                stop_capture()

        stream_tensors(self.models[1], self.feeds, check, self.meter, chunk_nodes=self.chunks[1])
        for name in self.values:
            self.meter.release(self.values[name].nbytes)
        self.values = {}

    def _diff(self, pair: _Pair, actual: np.ndarray, expected: np.ndarray) -> TensorDiff | None:
        actual, expected = np.asarray(actual), np.asarray(expected)
        if pair.how == BY_STRUCTURE and (actual.shape != expected.shape or actual.dtype.kind != expected.dtype.kind):
            return None  # a structural guess the runtime refutes is no pair at all
        if actual.dtype != expected.dtype and actual.dtype.kind == expected.dtype.kind == "f":
            actual = actual.astype(expected.dtype)  # an FP16 model against its FP32 original
        node_a, op_a = self.a.op(pair.a)
        node_b, op_b = self.b.op(pair.b)
        result = self.compare(pair.a, actual, expected, self.tolerance, unordered_rows=op_a in UNORDERED_OUTPUT_OPS)
        return TensorDiff(pair.a, pair.b, node_a, op_a, node_b, op_b, pair.position, tuple(expected.shape),
                          pair.how, result.ok, result.max_abs, result.max_rel, result.reason)

    def origins(self) -> list[TensorDiff]:
        """Differing tensors none of whose producer's compared inputs differ, in A's order."""
        found = []
        for diff in sorted(self.results.values(), key=lambda d: (d.position, d.tensor_a)):
            if diff.ok:
                continue
            node = self.a.nodes[self.a.producer[diff.tensor_a][0]]
            if not any(name in self.results and not self.results[name].ok for name in node.input):
                found.append(diff)
        return found

    def path(self, diff: TensorDiff) -> tuple[TensorDiff, ...]:
        steps = [diff]
        current = diff.tensor_a
        while current in self.a.producer:
            node = self.a.nodes[self.a.producer[current][0]]
            compared = [self.results[n] for n in node.input if n in self.results]
            if not compared:
                break
            worst = max(compared, key=lambda d: (not d.ok, d.max_rel, d.max_abs))
            steps.append(worst)
            current = worst.tensor_a
        return tuple(reversed(steps))


def bisect(
    model_a: onnx.ModelProto,
    model_b: onnx.ModelProto,
    feeds: Mapping[str, np.ndarray],
    tolerance: Tolerance = Tolerance(),
    *,
    budget: int = DEFAULT_BUDGET,
    stop_after: int | None = None,
    scaled: bool = False,
    labels: tuple[str, str] = ("A", "B"),
) -> BisectReport:
    """Compare two models tensor by tensor on `feeds` (see the module docstring).

    Args:
        model_a: the reference model.
        model_b: the model to check against it (a rewrite, a conversion).
        feeds: the inputs of both models, by name.
        tolerance: elementwise atol/rtol; integers and booleans compare exactly.
        budget: bytes of tensors the capture may hold at once.
        stop_after: stop once this many divergences are found (None: compare everything).
        scaled: rtol relative to each tensor's largest magnitude (`compare_to_scale`), the
            right measure for a reduced-precision model against its FP32 original.
        labels: how the report names the models.

    Raises:
        execute.NotRunnable: a node of either model cannot run; names it.
    """
    start = time.perf_counter()
    graphs = (_Graph.of(model_a), _Graph.of(model_b))
    pairs = _Pairing(*graphs).run()
    feeds = _inputs_of(feeds, graphs)
    meter = CaptureMeter(budget)
    comparer = _Comparer(model_a, model_b, feeds, graphs, tolerance, scaled, meter)
    complete = comparer.run(pairs, lambda: stop_after is not None and len(comparer.origins()) >= stop_after)
    origins = comparer.origins()[:stop_after] if stop_after else comparer.origins()
    results = comparer.results
    a_paired = {p.a for p in pairs}
    b_paired = {p.b for p in pairs}
    return BisectReport(
        model_a=labels[0],
        model_b=labels[1],
        atol=tolerance.atol,
        rtol=tolerance.rtol,
        paired_by_name=sum(p.how == BY_NAME for p in pairs),
        paired_by_structure=sum(p.how == BY_STRUCTURE for p in pairs),
        unpaired_a=len(set(graphs[0].producer) - a_paired - set(graphs[0].constants)),
        unpaired_b=len(set(graphs[1].producer) - b_paired - set(graphs[1].constants)),
        compared=len(results),
        differing=sum(not d.ok for d in results.values()),
        divergences=tuple(Divergence(d, comparer.path(d)) for d in origins),
        outputs=tuple(results[name] for name in graphs[0].outputs if name in results),
        complete=complete,
        windows=comparer.windows,
        budget=budget,
        peak_bytes=meter.peak,
        seconds=time.perf_counter() - start,
    )


def _inputs_of(feeds: Mapping[str, np.ndarray], graphs: tuple[_Graph, _Graph]) -> dict[str, np.ndarray]:
    """Feeds for both models: A's names, plus B's names for inputs B renamed."""
    a, b = graphs
    result = dict(feeds)
    for a_name, b_name in zip(a.inputs, b.inputs):
        if b_name not in result and a_name in feeds:
            result[b_name] = feeds[a_name]
    return result


def first_divergence(
    model_a: onnx.ModelProto,
    model_b: onnx.ModelProto,
    feeds: Mapping[str, np.ndarray],
    tolerance: Tolerance = Tolerance(),
    *,
    budget: int = DEFAULT_BUDGET,
    scaled: bool = False,
) -> Divergence | None:
    """The earliest tensor (in A's topological order) where `model_b` departs from `model_a`.

    For the pass manager's blame message: `first_divergence(before, after, feeds, tolerance)`
    names the node where a rolled-back pass first changed values. Stops comparing at the first
    window that holds a divergence. `scaled` as for `bisect`.

    Raises:
        execute.NotRunnable: a node of either model cannot run; names it.
    """
    return bisect(model_a, model_b, feeds, tolerance, budget=budget, stop_after=1, scaled=scaled).first

