"""`graphfix fp16-guard`: the nodes that break in FP16, a mixed-precision model and TensorRT flags.

The model runs in FP32 on one or more input sets while a bounded-memory capture (see
`graphfix.bisect`) records, per float32 tensor, its largest magnitude and how many of its
non-zero values FP16 flushes to zero. Nodes are flagged when

* **overflow**: an output exceeds 65504 x margin (FP16's largest finite value, with headroom
  for inputs not seen), or the node reads such a computed tensor (it cannot read it in FP16
  either; weights and constants beyond the range are clamped instead, see below);
* **underflow**: an output has values that become 0 in FP16 and feeds a divisor, Reciprocal,
  Log, the base of Pow or Sqrt (flagged with that consumer);
* **precision**: running the node alone in FP16 (everything else FP32) moves the model
  outputs beyond the tolerance. Candidates are reductions (GlobalAveragePool and
  LpNormalization included), CumSum, Exp, Pow, producers of Softmax inputs, and arithmetic
  (Add, Sub, Mul, Div, Sum, MatMul, Gemm, Conv, ConvTranspose, Einsum) reading or writing
  values of magnitude >= 1024, where FP16's spacing is 1 or more (large sums, box decoding in
  pixels); they are tested in groups that are split only when they fail.

Outputs compare with rtol relative to each output's largest magnitude (`FP16_TOLERANCE`,
`bisect.compare_to_scale`): FP16 errs in proportion to the magnitudes a value came from.

The FP32 set then starts from the flagged nodes. While the mixed model misses the tolerance it
grows by the node at the first divergence between the FP32 model and the emulated mixed one,
or, when that node is FP32 already, once by its nearest FP16 ancestors. It stops when a
discrete result (TopK/ArgMax indices, masks) flips on inputs that are within tolerance (FP16
reorders near-equal values: only FP32 for the whole input cone would fix that), when a
divergence persists after its ancestors moved, or after `max_steps`. Once the model passes,
the precision flags and grown nodes are dropped one at a time while it still passes. Overflow
and underflow flags are never dropped: the margin is there for inputs the search did not see.

FP16 emulation. onnxruntime's CPU provider cannot show FP16 behaviour: it runs FP16 nodes that
lack an FP16 kernel in FP32 between Casts and removes back-to-back Casts, so whole FP16 regions
run in FP32. The guard therefore evaluates FP16 models as FP32 graphs (`emulate_fp16`) in which
every tensor the FP16 model stores as float16 is rounded through float16 right after its
producer (Cast to FLOAT16 and back): storage rounding (round to nearest even), overflow to
+-Inf, underflow to subnormals and zero, and the NaN that Inf - Inf or 0 x Inf then produce
are reproduced exactly (onnxruntime run one node per session, where FP16 tensors really are
stored as float16 between nodes, gives the same outputs on samples/fp16_overflow.onnx).
Weights and constants that FP16 nodes read become float16 with finite values beyond +-65504
clamped, as TensorRT converts weights (+-Inf and NaN stay). What it does NOT model: the
precision *inside* a node (every node computes in FP32 from FP16-rounded inputs, so a Conv,
MatMul or reduction that accumulates in FP16, or a Softmax/LayerNormalization kernel whose
internal sums overflow, is more accurate in the emulation than on the GPU), TensorRT's layer
fusion (fused layers store fewer intermediates, so the emulation rounds more often than the
engine), tactic choice and reduced-precision math libraries (exp/log/rsqrt approximations,
TF32), and float64 tensors (left as they are). Treat its verdict as storage-exact and
accumulation-optimistic: an overflow it shows happens on the GPU too; a model it passes should
still be checked on the target GPU (`trtexec --fp16`, or the strongly typed mixed model).

Outputs, always by ONNX node name: the mixed model (`to_fp16`: float32 tensors become float16
except in the FP32 set; Cast nodes at every precision boundary; graph inputs and outputs keep
their types) for strongly typed builds (TensorRT 10.x `--stronglyTyped`, 11.x), and for weakly
typed builds (8.4-10.x) the `--fp16 --precisionConstraints=obey --layerPrecisions=...:fp32
--layerOutputTypes=...:fp32` flags and the same layer precisions as a `graphfix.trt` BuildPlan.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from graphfix import execute, ir, trt
from graphfix.bisect import DEFAULT_BUDGET, CaptureMeter, Divergence, compare_to_scale, first_divergence, stream_tensors
from graphfix.errors import UsageError
from graphfix.report import Comparison
from graphfix.verify import Tolerance, proto_inputs

__all__ = [
    "DEFAULT_MARGIN",
    "DEFAULT_MAX_STEPS",
    "FP16_MAX",
    "FP16_TOLERANCE",
    "Guarded",
    "GuardReport",
    "KIND_OVERFLOW",
    "KIND_PRECISION",
    "KIND_READS_OVERFLOW",
    "KIND_UNDERFLOW",
    "NodeFlag",
    "emulate_fp16",
    "emulated_fp16",
    "guard",
    "to_fp16",
]

logger = logging.getLogger(__name__)

FP16_MAX = 65504.0
DEFAULT_MARGIN = 0.5
# FP16 keeps 11 significant bits (relative spacing 2**-10 ~ 1e-3); after a few dozen layers of
# storage rounding, errors of a few 1e-3 of a tensor's magnitude are FP16 working as designed.
# rtol is relative to each tensor's largest magnitude (bisect.compare_to_scale).
FP16_TOLERANCE = Tolerance(atol=1e-3, rtol=1e-2)
DEFAULT_MAX_STEPS = 8

_FLOAT = onnx.TensorProto.FLOAT
_FLOAT16 = onnx.TensorProto.FLOAT16
_COARSE = 1024.0  # from here on FP16's spacing is >= 1
_SHAPE_READERS = frozenset({"Shape", "Size"})
_REDUCTIONS = frozenset({
    "ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceProd", "CumSum", "GlobalAveragePool", "LpNormalization",
})
_ALWAYS_SENSITIVE = _REDUCTIONS | {"Exp", "Pow"}
_COARSE_ARITHMETIC = frozenset({"Add", "Sub", "Mul", "Div", "Sum", "MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum"})
_SOFTMAX = frozenset({"Softmax", "LogSoftmax"})
# Inputs where a value FP16 flushes to zero turns into Inf/NaN downstream: (op, input index).
_ZERO_SENSITIVE = {("Div", 1), ("Reciprocal", 0), ("Log", 0), ("Pow", 0), ("Sqrt", 0)}
# Attributes that carry an element type, retyped when their node runs in FP16.
_DTYPE_ATTRIBUTES = {
    "Cast": "to", "EyeLike": "dtype", "RandomNormal": "dtype", "RandomUniform": "dtype",
    "RandomNormalLike": "dtype", "RandomUniformLike": "dtype", "Bernoulli": "dtype",
}

KIND_OVERFLOW = "overflow"
KIND_READS_OVERFLOW = "reads overflow"
KIND_UNDERFLOW = "underflow"
KIND_PRECISION = "precision"


# ----------------------------------------------------------------------------- report


@dataclass(frozen=True)
class NodeFlag:
    """Why a node must stay in FP32.

    Attributes:
        node: the ONNX node name ("#12 (Mul)" for an unnamed node).
        op: its op type.
        kind: "overflow", "reads overflow", "underflow" or "precision".
        tensor: the tensor that shows it.
        value: the largest magnitude (overflow), the count of values flushed to zero
            (underflow), or the largest output error when the node alone runs in FP16.
        detail: one sentence.
    """

    node: str
    op: str
    kind: str
    tensor: str
    value: float
    detail: str


@dataclass(frozen=True)
class GuardReport:
    """What `graphfix fp16-guard` found and emitted.

    Attributes:
        model: the model's path (or label).
        input_sets: how many input sets were run.
        margin, threshold: the overflow margin and 65504 x margin.
        atol, rtol: the tolerance of the mixed model's outputs against FP32.
        flags: every flagged node, in topological order.
        fp32_nodes: the final FP32 set (ONNX node names, topological order).
        convertible: nodes that can run in FP16 (float compute nodes of standard ops).
        search: the grow / shrink steps taken.
        naive: all-FP16 (emulated) outputs against FP32, the worst over the input sets.
        mixed: the mixed model (emulated) outputs against FP32, the worst over the input sets.
        mixed_ok: `mixed` is within tolerance and free of NaN/Inf that FP32 does not have.
        onnxruntime: the mixed model run as written by onnxruntime (which runs many FP16 nodes
            in FP32 on CPU: a check that the file runs, not of FP16 numerics).
        target: the TensorRT target of the flags.
        layer_precisions, layer_output_types: the build plan's per-layer constraints.
        trtexec: the trtexec command for the FP32 model with those constraints, or "".
        written: where the mixed model was written, or "".
        peak_bytes, budget: the most the capture held and its budget.
        seconds: wall time.
        notes: what the user should know (unnamed nodes, clamped weights, plan errors).
    """

    model: str
    input_sets: int
    margin: float
    threshold: float
    atol: float
    rtol: float
    flags: tuple[NodeFlag, ...]
    fp32_nodes: tuple[str, ...]
    convertible: int
    search: tuple[str, ...]
    naive: tuple[Comparison, ...]
    mixed: tuple[Comparison, ...]
    mixed_ok: bool
    onnxruntime: tuple[Comparison, ...] = ()
    target: str = ""
    layer_precisions: tuple[tuple[str, str], ...] = ()
    layer_output_types: tuple[tuple[str, tuple[str, ...]], ...] = ()
    trtexec: str = ""
    written: str = ""
    peak_bytes: int = 0
    budget: int = DEFAULT_BUDGET
    seconds: float = 0.0
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Guarded:
    """The guard's report, the mixed FP16 model and the weakly typed build plan (or None)."""

    report: GuardReport
    mixed: onnx.ModelProto
    plan: trt.BuildPlan | None = field(default=None, compare=False)


# ----------------------------------------------------------------------------- types and schemas


def _elem_type(dtype: np.dtype) -> int:
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


@dataclass(frozen=True)
class _Slot:
    """How one input or output of a node is typed by its schema."""

    param: str  # a type parameter ("T") or a fixed type ("tensor(float)")
    takes_fp16: bool


def _schema_slots(node: onnx.NodeProto, opset: int) -> tuple[list[_Slot], list[_Slot]] | None:
    """The node's input and output slots per its ONNX schema; None for ops ONNX does not define."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return None
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}

    def slots(formals: Sequence[Any], count: int) -> list[_Slot]:
        found = []
        for k in range(count):
            formal = formals[min(k, len(formals) - 1)]
            types = allowed.get(formal.type_str, {formal.type_str})
            found.append(_Slot(formal.type_str, "tensor(float16)" in types))
        return found

    if (node.input and not schema.inputs) or not schema.outputs:
        return None
    return slots(schema.inputs, len(node.input)), slots(schema.outputs, len(node.output))


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


# ----------------------------------------------------------------------------- node classes


@dataclass
class _Plan:
    """Per node of the FP32 model: can it run in FP16, and what the mixed model realizes."""

    model: onnx.ModelProto
    dtypes: Mapping[str, np.dtype]  # every tensor's FP32 dtype
    fixed: set[str]  # tensors computed from weights and shapes alone
    convertible: list[int]  # nodes that may run in FP16

    @classmethod
    def of(cls, model: onnx.ModelProto, dtypes: Mapping[str, np.dtype]) -> _Plan:
        fixed = _fixed_tensors(model.graph)
        opset = _opset(model)
        inner_reads = _subgraph_reads(model.graph)  # subgraphs read outer tensors by name and type
        convertible = [
            index for index, node in enumerate(model.graph.node)
            if _may_run_fp16(node, opset, dtypes, fixed) and not inner_reads & set(node.output)
        ]
        return cls(model, dtypes, fixed, convertible)

    def label(self, index: int) -> str:
        node = self.model.graph.node[index]
        return node.name or f"#{index} ({node.op_type})"

    def indices(self, labels: Iterable[str]) -> set[int]:
        """Node indices of ONNX node names (or `label`s of unnamed nodes)."""
        by_label = {self.label(i): i for i in range(len(self.model.graph.node))}
        unknown = [name for name in labels if name not in by_label]
        if unknown:
            raise UsageError(f"the model has no node named {unknown[0]!r}")
        return {by_label[name] for name in labels}


def _fixed_tensors(graph: onnx.GraphProto) -> set[str]:
    """Weights, constants, shapes, and whatever is computed from them alone."""
    fixed = {t.name for t in graph.initializer}
    for node in graph.node:
        # A body may read computed tensors of the outer graph: a node with one is never fixed.
        if node.op_type in _SHAPE_READERS or node.op_type == "Constant" or (
                node.input and all(not name or name in fixed for name in node.input)
                and not execute.has_subgraph(node)):
            fixed.update(name for name in node.output if name)
    return fixed


def _may_run_fp16(node: onnx.NodeProto, opset: int, dtypes: Mapping[str, np.dtype], fixed: set[str]) -> bool:
    """A standard node that computes on float32 data and whose schema takes float16 for it."""
    if node.domain not in ("", "ai.onnx") or node.op_type in _SHAPE_READERS or execute.has_subgraph(node):
        return False
    if all(not name or name in fixed for name in node.output):
        return False
    slots = _schema_slots(node, opset)
    if slots is None:
        return False
    inputs, outputs = slots
    float_inputs = [slot for name, slot in zip(node.input, inputs) if name and dtypes.get(name) == np.float32]
    float_outputs = [slot for name, slot in zip(node.output, outputs) if name and dtypes.get(name) == np.float32]
    if float_inputs:
        return any(slot.takes_fp16 for slot in float_inputs)
    # No float input: a float output comes from an element-type attribute that can say float16.
    return bool(float_outputs) and (node.op_type in _DTYPE_ATTRIBUTES or node.op_type == "ConstantOfShape")


# ----------------------------------------------------------------------------- conversion


class _Names:
    """Fresh tensor and node names for one model."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.used = {t.name for t in graph.initializer} | {v.name for v in graph.input} | {
            v.name for v in graph.output} | {n for node in graph.node for n in [*node.input, *node.output, node.name]}

    def fresh(self, wanted: str) -> str:
        name, k = wanted, 1
        while name in self.used:
            name, k = f"{wanted}_{k}", k + 1
        self.used.add(name)
        return name


class _Converter:
    """Writes the mixed model: FP16 everywhere except `keep` (see `to_fp16`)."""

    def __init__(self, plan: _Plan, keep: set[int]):
        self.plan = plan
        self.fp16 = set(plan.convertible) - keep
        self.model = plan.model
        self.opset = _opset(plan.model)
        self.names = _Names(plan.model)
        self.realized: dict[str, int] = {}
        self.converted: dict[tuple[str, int], str] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.clamped: list[str] = []
        graph = plan.model.graph
        self.weights = {t.name: t for t in graph.initializer}
        self.constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output}
        self.graph_outputs = {o.name for o in graph.output}

    def run(self) -> onnx.ModelProto:
        graph = self.model.graph
        for tensor in graph.initializer:
            self.realized[tensor.name] = tensor.data_type
        for value in graph.input:
            self.realized[value.name] = value.type.tensor_type.elem_type
        for index, node in enumerate(graph.node):
            self._convert(index, node)
        return self._model()

    def _original(self, name: str) -> int:
        dtype = self.plan.dtypes.get(name)
        return _elem_type(dtype) if dtype is not None else self.realized.get(name, 0)

    def _convert(self, index: int, node: onnx.NodeProto) -> None:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        if index in self.fp16:
            converted_params = self._fp16_inputs(node, new)
            retyped = self._retype_attributes(new)
            _, outputs = _schema_slots(node, self.opset)
            out_types = [
                _FLOAT16 if name and self._original(name) == _FLOAT and (slot.param in converted_params or retyped) else self._original(name)
                for name, slot in zip(node.output, outputs)
            ]
        else:
            for k, name in enumerate(node.input):
                if name and node.op_type not in _SHAPE_READERS and self.realized.get(name) != self._original(name):
                    new.input[k] = self._as(name, self._original(name))
            out_types = [self._original(name) for name in node.output]
        self.nodes.append(new)
        for k, (name, elem) in enumerate(zip(node.output, out_types)):
            if name:
                self._realize(new, k, name, elem)

    def _fp16_inputs(self, node: onnx.NodeProto, new: onnx.NodeProto) -> set[str]:
        inputs, _ = _schema_slots(node, self.opset)
        params = {slot.param for name, slot in zip(node.input, inputs)
                  if name and slot.takes_fp16 and self._original(name) == _FLOAT and not slot.param.startswith("tensor(")}
        for k, (name, slot) in enumerate(zip(node.input, inputs)):
            if not name:
                continue
            want = _FLOAT16 if slot.param in params else self._original(name)
            if self.realized.get(name) != want:
                new.input[k] = self._as(name, want)
        return params

    def _retype_attributes(self, node: onnx.NodeProto) -> bool:
        retyped = False
        for attr in node.attribute:
            if attr.name == _DTYPE_ATTRIBUTES.get(node.op_type) and attr.i == _FLOAT:
                attr.i, retyped = _FLOAT16, True
            elif node.op_type == "ConstantOfShape" and attr.name == "value" and attr.t.data_type == _FLOAT:
                attr.t.CopyFrom(self._fp16_tensor(attr.t, attr.t.name, node.name))
                retyped = True
        return retyped

    def _realize(self, node: onnx.NodeProto, k: int, name: str, elem: int) -> None:
        """Record the output's type; a graph output computed in FP16 gets a Cast back."""
        original = self._original(name)
        if name in self.graph_outputs and elem != original:
            internal = self.names.fresh(f"{name}/fp16")
            node.output[k] = internal
            self.realized[internal] = elem
            self.converted[(name, elem)] = internal
            self.nodes.append(onnx.helper.make_node("Cast", [internal], [name], self.names.fresh(f"{name}/to_output_type"), to=original))
            self.converted[(internal, original)] = name
            self.realized[name] = original
            return
        self.realized[name] = elem

    def _as(self, name: str, elem: int) -> str:
        """`name` as type `elem`: a converted copy of a weight or constant, else a Cast node."""
        key = (name, elem)
        if key in self.converted:
            return self.converted[key]
        suffix = "fp16" if elem == _FLOAT16 else "fp32"
        value = self._literal(name)
        if elem == _FLOAT16 and value is not None:
            converted = self._fp16_tensor(value, self.names.fresh(f"{name}/{suffix}"), name)
            self.initializers.append(converted)
            result = converted.name
        else:
            result = self.names.fresh(f"{name}/{suffix}")
            self.nodes.append(onnx.helper.make_node("Cast", [name], [result], self.names.fresh(f"{name}/to_{suffix}"), to=elem))
        self.converted[key] = result
        self.realized[result] = elem
        return result

    def _literal(self, name: str) -> onnx.TensorProto | None:
        """The value of a weight or of a Constant node's `value`, else None."""
        if name in self.weights:
            return self.weights[name]
        node = self.constants.get(name)
        return next((a.t for a in node.attribute if a.name == "value"), None) if node is not None else None

    def _fp16_tensor(self, tensor: onnx.TensorProto, name: str, owner: str) -> onnx.TensorProto:
        values = onnx.numpy_helper.to_array(tensor)
        beyond = np.isfinite(values) & (np.abs(values) > FP16_MAX)  # +-Inf and NaN stay as they are
        if np.any(beyond):
            self.clamped.append(owner)
        return onnx.numpy_helper.from_array(np.where(beyond, np.sign(values) * FP16_MAX, values).astype(np.float16), name)

    def _model(self) -> onnx.ModelProto:
        """The converted graph without the weights and constants only FP32 copies used to read,
        typed with the realized element types (emulation reads them)."""
        graph = self.model.graph
        read = {name for node in self.nodes for name in node.input} | {o.name for o in graph.output} | _subgraph_reads(graph)
        nodes = [n for n in self.nodes if n.op_type != "Constant" or n.output[0] in read]
        initializers = [t for t in [*graph.initializer, *self.initializers] if t.name in read]
        types = [onnx.helper.make_empty_tensor_value_info(name) for node in nodes for name in node.output if name]
        for value in types:
            value.type.tensor_type.elem_type = self.realized[value.name]
        new_graph = onnx.helper.make_graph(nodes, graph.name, list(graph.input), list(graph.output),
                                           initializer=initializers, value_info=[v for v in types if v.type.tensor_type.elem_type])
        result = onnx.helper.make_model(new_graph, opset_imports=list(self.model.opset_import),
                                        functions=list(self.model.functions))
        result.ir_version = self.model.ir_version
        for name in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
            setattr(result, name, getattr(self.model, name))
        return _with_types(result)


def to_fp16(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], keep_fp32: Iterable[str] = (), *,
            budget: int = DEFAULT_BUDGET) -> onnx.ModelProto:
    """The FP16 form of an FP32 model with the nodes named in `keep_fp32` left in FP32.

    Every node that computes on float32 data with a standard op whose schema takes float16
    runs in FP16 (its float32 inputs become float16, Cast/EyeLike/ConstantOfShape types with
    them); other nodes (custom ops, subgraphs, shape arithmetic, ops without an FP16 form)
    keep their types. Weights and constants FP16 nodes read get a float16 copy clamped to
    +-65504; a Cast sits on every other precision boundary. Graph inputs and outputs keep
    their types. One FP32 run on `feeds` (bounded by `budget`) gives every tensor's dtype.

    Args:
        model: the FP32 model (topologically sorted).
        feeds: inputs to run it on.
        keep_fp32: ONNX node names (or "#index (Op)" labels of unnamed nodes) to keep in FP32.
        budget: bytes of tensors the dtype run may hold at once.

    Raises:
        execute.NotRunnable: a node cannot run; names it.
        UsageError: `keep_fp32` names a node the model does not have.
    """
    plan = _Plan.of(model, _scan(model, [feeds], CaptureMeter(budget)).dtypes)
    return _Converter(plan, plan.indices(keep_fp32)).run()


def emulated_fp16(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], keep_fp32: Iterable[str] = (), *,
                  budget: int = DEFAULT_BUDGET) -> onnx.ModelProto:
    """`emulate_fp16(to_fp16(...))`: what `graphfix bisect --fp16` compares the model with."""
    return emulate_fp16(to_fp16(model, feeds, keep_fp32, budget=budget))


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Every name a node inside a subgraph (If branch, Loop/Scan body) reads, at any depth."""
    names: set[str] = set()
    stack = [attr_graph for node in graph.node for a in node.attribute for attr_graph in [*([a.g] if a.HasField("g") else []), *a.graphs]]
    while stack:
        inner = stack.pop()
        for node in inner.node:
            names.update(node.input)
            stack.extend(g for a in node.attribute for g in [*([a.g] if a.HasField("g") else []), *a.graphs])
    return names


# ----------------------------------------------------------------------------- emulation


def emulate_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """An FP32 model that stores every float16 tensor of `model` as float16 would.

    Each node computes in FP32 (float16 weights, constants and types become float32, Casts to
    float16 become Casts to float32), and each output that is float16 in `model` is rounded
    right after its producer by a Cast to FLOAT16 and back, keeping the tensor's name. Float16
    graph inputs and outputs become float32 (feed float16 values as float32). See the module
    docstring for what this does not model.
    """
    typed = _with_types(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*typed.graph.value_info, *typed.graph.input, *typed.graph.output]}
    names = _Names(model)
    nodes = []
    for node in model.graph.node:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for attr in new.attribute:
            _upcast_attribute(node.op_type, attr)
        nodes.append(new)
        if node.op_type == "Constant":
            continue  # its float16 values are exactly representable in float32
        for k, name in enumerate(node.output):
            if name and types.get(name) == _FLOAT16:
                unrounded, stored = names.fresh(f"{name}/unrounded"), names.fresh(f"{name}/fp16")
                new.output[k] = unrounded
                nodes.append(onnx.helper.make_node("Cast", [unrounded], [stored], names.fresh(f"{name}/store_fp16"), to=_FLOAT16))
                nodes.append(onnx.helper.make_node("Cast", [stored], [name], names.fresh(f"{name}/load_fp16"), to=_FLOAT))
    graph = onnx.helper.make_graph(
        nodes, model.graph.name, [_upcast_value(v) for v in model.graph.input], [_upcast_value(v) for v in model.graph.output],
        initializer=[_upcast_tensor(t) for t in model.graph.initializer])
    result = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), functions=list(model.functions))
    result.ir_version = model.ir_version
    return _with_types(result)  # onnxruntime creates sessions several times faster with them


def _with_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with the value_info shape inference finds (best effort), inferred on a view
    without the large weights so that they are not serialized for it."""
    typed = ir.with_inferred_types(model)
    return ir.with_weights(typed.proto, typed.weights)


def _upcast_attribute(op_type: str, attr: onnx.AttributeProto) -> None:
    if attr.name == _DTYPE_ATTRIBUTES.get(op_type) and attr.i == _FLOAT16:
        attr.i = _FLOAT
    elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == _FLOAT16:
        attr.t.CopyFrom(_upcast_tensor(attr.t))


def _upcast_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    if tensor.data_type != _FLOAT16:
        return tensor
    return onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor).astype(np.float32), tensor.name)


def _upcast_value(value: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    if value.type.tensor_type.elem_type != _FLOAT16:
        return value
    result = onnx.ValueInfoProto()
    result.CopyFrom(value)
    result.type.tensor_type.elem_type = _FLOAT
    return result


# ----------------------------------------------------------------------------- the FP32 scan


@dataclass
class _TensorStats:
    """One float32 tensor over every input set."""

    absmax: float = 0.0
    flushed: int = 0  # non-zero values that FP16 rounds to zero

    def add(self, values: np.ndarray) -> None:
        finite = values[np.isfinite(values)]
        if finite.size:
            self.absmax = max(self.absmax, float(np.max(np.abs(finite))))
        with np.errstate(over="ignore"):  # overflow is measured by absmax; this counts flushes only
            self.flushed += int(np.count_nonzero((values != 0) & (values.astype(np.float16) == 0)))


@dataclass
class _Scan:
    """What the FP32 runs showed: dtypes, statistics and outputs per input set."""

    dtypes: dict[str, np.dtype]
    stats: dict[str, _TensorStats]
    outputs: list[dict[str, np.ndarray]]


def _scan(model: onnx.ModelProto, feed_sets: Sequence[Mapping[str, np.ndarray]], meter: CaptureMeter) -> _Scan:
    """Run the FP32 model on every input set, keeping statistics and the outputs only."""
    graph = model.graph
    dtypes: dict[str, np.dtype] = {}
    stats: dict[str, _TensorStats] = {}
    wanted = {o.name for o in graph.output}

    def record(name: str, values: np.ndarray) -> None:
        dtypes[name] = values.dtype
        if values.dtype == np.float32:
            stats.setdefault(name, _TensorStats()).add(values)

    for tensor in graph.initializer:
        record(tensor.name, onnx.numpy_helper.to_array(tensor))
    outputs = []
    for feeds in feed_sets:
        kept: dict[str, np.ndarray] = {}
        for name, values in feeds.items():
            record(name, np.asarray(values))

        def on_tensor(name: str, values: np.ndarray) -> None:
            record(name, values)
            if name in wanted:
                kept[name] = values
                meter.keep(values.nbytes)

        stream_tensors(model, feeds, on_tensor, meter)
        outputs.append(kept)
    return _Scan(dtypes, stats, outputs)


# ----------------------------------------------------------------------------- flags


def _flags(plan: _Plan, scan: _Scan, threshold: float) -> dict[int, list[NodeFlag]]:
    """Overflow and underflow flags per node index (module docstring)."""
    graph = plan.model.graph
    convertible = set(plan.convertible)
    literals = {t.name for t in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant" and n.output}
    found: dict[int, list[NodeFlag]] = {}

    def flag(index: int, kind: str, tensor: str, value: float, detail: str) -> None:
        node = graph.node[index]
        found.setdefault(index, []).append(NodeFlag(plan.label(index), node.op_type, kind, tensor, value, detail))

    for index in plan.convertible:
        node = graph.node[index]
        for name in node.output:
            stats = scan.stats.get(name)
            if stats is not None and stats.absmax > threshold:
                flag(index, KIND_OVERFLOW, name, stats.absmax,
                     f"{name} reaches {stats.absmax:.4g} > {threshold:g} (FP16 max 65504 x margin)")
        for name in node.input:
            stats = scan.stats.get(name)
            # Weights and constants beyond the range are clamped (see the notes); computed
            # tensors that overflow make their readers overflow too.
            if stats is not None and stats.absmax > threshold and name not in literals:
                flag(index, KIND_READS_OVERFLOW, name, stats.absmax, f"reads {name}, which reaches {stats.absmax:.4g}")
    producers = {name: index for index, node in enumerate(graph.node) for name in node.output if name}
    for index, node in enumerate(graph.node):
        for k, name in enumerate(node.input):
            stats = scan.stats.get(name)
            if stats is None or not stats.flushed or (node.op_type, k) not in _ZERO_SENSITIVE:
                continue
            detail = f"{stats.flushed} non-zero values of {name} become 0 in FP16 and feed {node.op_type} {plan.label(index)}"
            if index in convertible:
                flag(index, KIND_UNDERFLOW, name, stats.flushed, detail)
            if producers.get(name) in convertible:
                flag(producers[name], KIND_UNDERFLOW, name, stats.flushed, detail)
    return found


def _precision_candidates(plan: _Plan, scan: _Scan, exclude: set[int]) -> list[int]:
    graph = plan.model.graph
    softmax_inputs = {n.input[0] for n in graph.node if n.op_type in _SOFTMAX and n.input}
    candidates = []
    for index in plan.convertible:
        node = graph.node[index]
        if index in exclude:
            continue
        touched = [scan.stats[n].absmax for n in [*node.input, *node.output] if n in scan.stats]
        coarse = node.op_type in _COARSE_ARITHMETIC and max(touched, default=0.0) >= _COARSE
        if node.op_type in _ALWAYS_SENSITIVE or coarse or softmax_inputs & set(node.output):
            candidates.append(index)
    return candidates


# ----------------------------------------------------------------------------- evaluating a choice


class _Evaluator:
    """Runs the emulated mixed model for a choice of FP32 nodes and compares with FP32."""

    def __init__(self, plan: _Plan, scan: _Scan, feed_sets: Sequence[Mapping[str, np.ndarray]], tolerance: Tolerance):
        self.plan, self.scan, self.feed_sets, self.tolerance = plan, scan, feed_sets, tolerance
        self.seen: dict[frozenset[int], list[list[Comparison]]] = {}
        self._last: tuple[frozenset[int], onnx.ModelProto] | None = None

    def emulated(self, keep: set[int]) -> onnx.ModelProto:
        """The emulated mixed model; the last one is kept, as the search asks for it again
        right after comparing its outputs (one model, not one per candidate)."""
        key = frozenset(keep)
        if self._last is None or self._last[0] != key:
            self._last = (key, emulate_fp16(_Converter(self.plan, keep).run()))
        return self._last[1]

    def outputs(self, keep: set[int]) -> list[list[Comparison]]:
        """Per input set, the outputs of the emulated mixed model against FP32 (remembered)."""
        key = frozenset(keep)
        if key not in self.seen:
            model = self.emulated(keep)
            self.seen[key] = [
                [compare_to_scale(name, actual[name], expected[name], self.tolerance) for name in expected]
                for actual, expected in ((execute.run_model(model, feeds), expected)
                                         for feeds, expected in zip(self.feed_sets, self.scan.outputs))
            ]
        return self.seen[key]

    def passes(self, keep: set[int]) -> bool:
        return all(c.ok for per_set in self.outputs(keep) for c in per_set)

    def failing_set(self, keep: set[int]) -> int | None:
        for position, per_set in enumerate(self.outputs(keep)):
            if not all(c.ok for c in per_set):
                return position
        return None


def _worst(per_set: Sequence[Sequence[Comparison]]) -> tuple[Comparison, ...]:
    """Per output, the comparison with the largest error over the input sets (failures first)."""
    by_name: dict[str, Comparison] = {}
    for comparisons in per_set:
        for c in comparisons:
            held = by_name.get(c.tensor)
            if held is None or (not c.ok, c.max_abs) > (not held.ok, held.max_abs):
                by_name[c.tensor] = c
    return tuple(by_name.values())


# ----------------------------------------------------------------------------- the search


class _Search:
    """Grows and shrinks the FP32 set (module docstring); logs each step."""

    def __init__(self, plan: _Plan, evaluator: _Evaluator, budget: int, max_steps: int):
        self.plan, self.evaluator, self.budget, self.max_steps = plan, evaluator, budget, max_steps
        self.producers = {name: i for i, node in enumerate(plan.model.graph.node) for name in node.output if name}
        self.steps: list[str] = []

    def sensitive(self, group: Sequence[int]) -> list[int]:
        """Members of `group` that break the outputs when they alone run in FP16 (group tests)."""
        if not group:
            return []
        everything_else = set(self.plan.convertible) - set(group)
        if self.evaluator.passes(everything_else):
            return []
        if len(group) == 1:
            return list(group)
        half = len(group) // 2
        return self.sensitive(group[:half]) + self.sensitive(group[half:])

    def grow(self, keep: set[int]) -> tuple[set[int], bool]:
        """Add nodes at first divergences until the outputs pass; returns the set and whether they do."""
        climbed: set[str] = set()
        for _ in range(self.max_steps):
            failing = self.evaluator.failing_set(keep)
            if failing is None:
                return keep, True
            divergence = first_divergence(self.plan.model, self.evaluator.emulated(keep), self.evaluator.feed_sets[failing],
                                          self.evaluator.tolerance, budget=self.budget, scaled=True)
            added, why_not = self._fix_for(divergence, keep, climbed)
            if not added:
                self.steps.append(f"grow: stopped: {why_not}")
                return keep, False
            keep = keep | added
            self.steps.append(f"grow: + {', '.join(self.plan.label(i) for i in sorted(added))} ({divergence.describe()})")
        self.steps.append(f"grow: stopped after {self.max_steps} steps (--max-steps)")
        return keep, self.evaluator.failing_set(keep) is None

    def _fix_for(self, divergence: Divergence | None, keep: set[int], climbed: set[str]) -> tuple[set[int], str]:
        """Nodes to move to FP32 for a divergence, or none and why.

        A discrete output (indices, masks) that differs while its inputs are within tolerance
        is FP16 rounding reordering near-equal values, which no small FP32 set fixes. Otherwise
        an FP16 node at the divergence moves itself; an FP32 node there amplifies input errors
        that are within tolerance, so its nearest FP16 ancestors move and it reads unrounded
        values, once (`climbed`): if it still diverges, the error builds up further upstream.
        """
        if divergence is None:
            return set(), "no intermediate tensor differs (only the outputs' comparison fails)"
        diff = divergence.diff
        if self.plan.dtypes.get(diff.tensor_a, np.dtype(np.float32)).kind != "f":
            return set(), (f"{divergence.describe()}: a discrete result of {diff.op_a} flips although its inputs are "
                           f"within tolerance (FP16 reorders near-equal values); only FP32 for its whole input cone "
                           f"would make it exact")
        fp16 = set(self.plan.convertible) - keep
        if diff.position in fp16:
            return {diff.position}, ""
        if diff.tensor_a in climbed:
            return set(), (f"{divergence.describe()}: it still diverges with its nearest FP16 producers in FP32 "
                           f"(the error builds up further upstream; its input cone would need FP32)")
        climbed.add(diff.tensor_a)
        ancestors = self._nearest_fp16_ancestors(diff.position, fp16)
        return ancestors, "" if ancestors else f"{divergence.describe()}: no FP16 node feeds it"

    def _nearest_fp16_ancestors(self, index: int, fp16: set[int]) -> set[int]:
        nodes = self.plan.model.graph.node
        found: set[int] = set()
        seen = {index}
        stack = [index]
        while stack:
            for name in nodes[stack.pop()].input:
                producer = self.producers.get(name)
                if producer is None or producer in seen or name in self.plan.fixed:
                    continue
                seen.add(producer)
                (found.add if producer in fp16 else stack.append)(producer)
        return found

    def shrink(self, keep: set[int], pinned: set[int]) -> set[int]:
        for index in sorted(keep - pinned, reverse=True):
            trial = keep - {index}
            if self.evaluator.passes(trial):
                keep = trial
                self.steps.append(f"shrink: - {self.plan.label(index)} (outputs stay within tolerance)")
        return keep


# ----------------------------------------------------------------------------- TensorRT


def _weakly_typed_plan(plan: _Plan, keep: Sequence[int], feed_sets: Sequence[Mapping[str, np.ndarray]],
                       target: Any, model_path: str) -> tuple[trt.BuildPlan | None, str, list[str]]:
    """The BuildPlan and trtexec command pinning `keep` to FP32 on a weakly typed target."""
    graph = plan.model.graph
    notes = []
    named = [i for i in keep if graph.node[i].name]
    unnamed = [plan.label(i) for i in keep if not graph.node[i].name]
    if unnamed:
        notes.append(f"{len(unnamed)} FP32 node(s) have no ONNX name, so TensorRT cannot be told their precision "
                     f"({', '.join(unnamed[:5])}): name them, or use the mixed model")
    precisions = [(graph.node[i].name, "fp32") for i in named]
    output_types = [(graph.node[i].name, tuple("fp32" for n in graph.node[i].output if n)) for i in named
                    if all(plan.dtypes.get(n) == np.float32 for n in graph.node[i].output if n)]
    try:
        build = trt.make_plan(model_path, _trt_inputs(plan.model), target, fp16=True, layer_precisions=precisions,
                              layer_output_types=output_types, precision_constraints="obey",
                              shapes=_profile(plan.model, feed_sets))
        command = trt.format_command(trt.trtexec_argv(build, target))
    except trt.PlanError as error:
        notes.append(f"no weakly typed build for {target.label}: {error}")
        return None, "", notes
    return build, command, notes + list(build.warnings)


def _trt_inputs(model: onnx.ModelProto) -> list[trt.InputSpec]:
    return [trt.InputSpec(spec.name, spec.dtype.name, spec.dims) for spec in proto_inputs(model)]


def _profile(model: onnx.ModelProto, feed_sets: Sequence[Mapping[str, np.ndarray]]) -> list[trt.ShapeRange]:
    """Shape ranges spanning the input sets (TensorRT needs one for every dynamic input)."""
    ranges = []
    for spec in _trt_inputs(model):
        shapes = [tuple(feeds[spec.name].shape) for feeds in feed_sets if spec.name in feeds]
        if spec.is_dynamic and shapes:
            low = tuple(int(min(s[k] for s in shapes)) for k in range(len(shapes[0])))
            high = tuple(int(max(s[k] for s in shapes)) for k in range(len(shapes[0])))
            ranges.append(trt.ShapeRange(spec.name, low, shapes[0], high))
    return ranges


# ----------------------------------------------------------------------------- the guard


def guard(
    model: onnx.ModelProto,
    feed_sets: Sequence[Mapping[str, np.ndarray]],
    *,
    margin: float = DEFAULT_MARGIN,
    tolerance: Tolerance = FP16_TOLERANCE,
    budget: int = DEFAULT_BUDGET,
    target: Any = None,
    model_path: str = "model.onnx",
    max_steps: int = DEFAULT_MAX_STEPS,
) -> Guarded:
    """Find the nodes that break in FP16 and keep a minimal set of them in FP32.

    Args:
        model: the FP32 model (topologically sorted).
        feed_sets: one or more input sets, by input name.
        margin: overflow threshold as a fraction of 65504.
        tolerance: how far the mixed model's outputs may be from FP32's.
        budget: bytes of tensors the capture may hold at once.
        target: a `graphfix.targets.Target` for the weakly typed flags (None: no flags).
        model_path: the model's path, named in the trtexec command and the report.
        max_steps: most grow steps.

    Returns:
        The report, the mixed FP16 model and the weakly typed build plan.

    Raises:
        execute.NotRunnable: a node cannot run in onnxruntime; names it.
    """
    start = time.perf_counter()
    threshold = FP16_MAX * margin
    meter = CaptureMeter(budget)
    scan = _scan(model, feed_sets, meter)
    plan = _Plan.of(model, scan.dtypes)
    evaluator = _Evaluator(plan, scan, feed_sets, tolerance)
    search = _Search(plan, evaluator, budget, max_steps)

    flags = _flags(plan, scan, threshold)
    pinned = set(flags)
    for index in search.sensitive(_precision_candidates(plan, scan, pinned)):
        error = max((c.max_abs for c in _worst(evaluator.outputs(set(plan.convertible) - {index}))), default=0.0)
        node = model.graph.node[index]
        flags.setdefault(index, []).append(NodeFlag(plan.label(index), node.op_type, KIND_PRECISION, node.output[0], error,
                                                    f"alone in FP16 it moves the outputs by up to {error:.3g}"))
    keep, passing = search.grow(set(flags))
    if passing:
        keep = search.shrink(keep, pinned)
    final_keep = sorted(keep)
    converter = _Converter(plan, set(final_keep))
    mixed = converter.run()
    mixed_results = _worst(evaluator.outputs(set(final_keep)))
    naive = _worst(evaluator.outputs(set()))
    build, command, notes = (None, "", []) if target is None else _weakly_typed_plan(plan, final_keep, feed_sets, target, model_path)
    report = GuardReport(
        model=model_path,
        input_sets=len(feed_sets),
        margin=margin,
        threshold=threshold,
        atol=tolerance.atol,
        rtol=tolerance.rtol,
        flags=tuple(f for index in sorted(flags) for f in flags[index]),
        fp32_nodes=tuple(plan.label(i) for i in final_keep),
        convertible=len(plan.convertible),
        search=tuple(search.steps),
        naive=naive,
        mixed=mixed_results,
        mixed_ok=all(c.ok for c in mixed_results),
        onnxruntime=_worst([_run_as_written(mixed, feeds, expected, tolerance) for feeds, expected in zip(feed_sets, scan.outputs)]),
        target=target.name if target is not None else "",
        layer_precisions=build.layer_precisions if build else (),
        layer_output_types=build.layer_output_types if build else (),
        trtexec=command,
        peak_bytes=meter.peak,
        budget=budget,
        seconds=time.perf_counter() - start,
        notes=tuple(notes + _clamp_notes(converter.clamped)),
    )
    return Guarded(report, mixed, build)


def _run_as_written(mixed: onnx.ModelProto, feeds: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray],
                    tolerance: Tolerance) -> list[Comparison]:
    actual = execute.run_model(mixed, feeds)
    return [compare_to_scale(name, actual[name], expected[name], tolerance) for name in expected]


def _clamp_notes(clamped: Sequence[str]) -> list[str]:
    if not clamped:
        return []
    return [f"weights or constants beyond 65504 read by FP16 nodes were clamped to +-65504 (as TensorRT does): "
            f"{', '.join(sorted(set(clamped))[:5])}"]
