"""TensorRT target profiles as data: what each release's ONNX parser takes, refuses or mis-imports.

Pure module: imports nothing from graphfix (anything may import it). Facts come from
``shared/reference/trt-onnx-support.md`` and ``trt-notes.md``; each entry cites its source key
(S72 ... S1016 = onnx-tensorrt at the commit NVIDIA pins for that release, TXx = trtexec's
``sampleOptions.cpp``, PL-* = NVIDIA/TensorRT ``plugin/``, CL(x) = changelogs, CHK10 = 10.x static
checker). Facts checked against the sources while writing this module carry one of these extra keys:

* IMP(<commit>) - the ``DEFINE_BUILTIN_OP_IMPORTER`` list of onnx-tensorrt at that commit
  (builtin_op_importers.cpp for 7.2-8.6, onnxOpImporters.cpp for 10.x).
* REG(x) - the ``initializePlugin<...>`` registration list in NVIDIA/TensorRT ``release/x``
  ``plugin/api/inferPlugin.cpp`` (``plugin/InferPlugin.cpp`` before 8.4).
* CHK(dd0a3a9) - onnxOpCheckers.cpp at onnx-tensorrt dd0a3a9, a post-10.15 commit (it has the
  Attention and RMSNormalization checkers).
* FPI(dd0a3a9) - ``FallbackPluginImporter`` in onnxOpImporters.cpp at the same commit.

Model of a release: the set of op types with a builtin importer, per-op restrictions (data, see
``Restriction`` and its subclasses), the standard plugins resolvable by name, and a few global
facts. Releases are folded as deltas ("as 8.2, plus ..."): a target for version v is the fold of
every ``_Release`` at or below v on the TensorRT line.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

import numpy as np

__all__ = [
    "DEFAULT_TARGET",
    "EXPORT_REPAIRS",
    "LIMITATIONS",
    "OPT_IN_LIMITATIONS",
    "TRT_PLUGIN_DOMAIN",
    "TRT_PLUGIN_DOMAIN_VERSION",
    "TRT_PLUGIN_NODE_ATTRS",
    "Finding",
    "InputFacts",
    "NodeFacts",
    "OpSupport",
    "Restriction",
    "Target",
    "TargetSummary",
    "list_targets",
    "resolve_target",
    "targets_needing",
]

FindingKind = Literal["unsupported", "silent", "plugin"]

# --------------------------------------------------------------------------------------------
# Vocabulary of limitations. Keys are stable: rules declare the keys they fix and a target runs a
# rule iff one of its keys is active on it.
# --------------------------------------------------------------------------------------------

LIMITATIONS: Mapping[str, str] = MappingProxyType({
    "clip.bounds_not_weights": "Clip min/max must be initializers (7.2, 8.0 GA)",
    "clip.fp16_tensor_bounds": "Clip with tensor min/max only for FP32/INT32 input (8.0.3-8.4)",
    "cumsum.missing": "no CumSum importer (7.2)",
    "cumsum.axis_not_weights": "CumSum axis must be an initializer (8.0+)",
    "einsum.missing": "no Einsum importer (7.2, 8.0)",
    "einsum.ellipsis": "Einsum equation with '...' refused (8.2-8.6)",
    "einsum.more_than_two_operands": "Einsum with more than two operands refused (8.2-8.6)",
    "einsum.diagonal": "Einsum label repeated inside one operand (diagonal) refused (8.2-10.11)",
    "einsum.uppercase": "Einsum equation with uppercase labels refused (8.2+)",
    "einsum.broadcast": "Einsum broadcasting between operands refused (8.2-10.11)",
    "einsum.integer_inputs": "Einsum on integer tensors refused",
    "nonzero.missing": "no NonZero importer (<= 8.4) or no runner (TensorRT-RTX)",
    "topk.largest_ignored": "TopK largest=0 silently returns the largest values (7.2-8.4)",
    "topk.k_not_weights": "TopK K must be an initializer (7.2-8.5)",
    "topk.int32_input": "TopK on an INT32/INT64 input refused (7.2-8.5)",
    "topk.k_above_limit": "TopK K above the 3840 layer limit refused",
    "reduce.axes_input_ignored": "Reduce* axes given as input silently ignored: all axes reduced",
    "reduce.axes_not_weights": "Reduce* axes input must be an initializer",
    "reduce.bool_input": "Reduce* on a BOOL tensor refused",
    "opset.above_declared_range": "model opset above the parser's declared range: older semantics",
    "int64.clamped": "INT64 weights narrowed to INT32 and clamped (<= 8.6)",
    "layernorm.missing": "no LayerNormalization importer (<= 8.5)",
    "layernorm.extra_outputs": "LayerNormalization Mean/InvStdDev outputs not produced (8.6+)",
    "cast.to_bool": "Cast to BOOL impossible (<= 8.4)",
    "range.dtype": "Range only on FP32/INT32/INT64 inputs",
    "range.float_not_weights": "float Range needs start/limit/delta as initializers (7.2-8.2)",
    "gridsample.missing": "no GridSample importer (<= 8.4)",
    "gridsample.5d": "GridSample on 5-D tensors refused (8.5+)",
    "gridsample.mode_string_ignored": "GridSample mode other than nearest/bilinear/bicubic silently "
                                      "imported as nearest (8.5+)",
    "roialign.missing": "no RoiAlign importer (<= 8.4)",
    "roialign.sampling_ratio_default": "RoiAlign without sampling_ratio silently uses 1, not 0 (8.5+)",
    "roialign.coordinate_mode": "RoiAlign coordinate_transformation_mode other than half_pixel / "
                                "output_half_pixel mis-imported (8.5, 8.6) or refused (10.x)",
    "nms.missing": "no NonMaxSuppression importer (7.2) or no runner (TensorRT-RTX)",
    "nms.padded_plugin": "NonMaxSuppression imported as a padded EfficientNMS_ONNX_TRT plugin "
                         "(8.0-8.4)",
    "nms.params_not_weights": "NonMaxSuppression max/iou/score inputs must be initializers (8.0-8.4)",
    "scatter.reduction_ignored": "ScatterND/ScatterElements reduction silently ignored (8.0-8.6)",
    "scatter.reduction_refused": "ScatterND reduction attribute refused (10.x)",
    "maxpool.unbatched": "MaxPool/AveragePool on an unbatched tensor (rank != 2 + spatial dims): "
                         "ONNX/onnxruntime refuse it (export repair)",
    "eyelike.bool": "EyeLike producing BOOL: onnxruntime has no kernel (export repair)",
    "gridsample.double_grid": "GridSample with a DOUBLE grid on a FLOAT input: onnxruntime has no "
                              "kernel (export repair)",
    "custom_op.mmcv_grid_sampler": "mmcv/mmdeploy grid_sampler custom op (needs mmdeploy's plugin "
                                   "library); maps to ONNX GridSample",
    "custom_op.mmcv_roialign": "mmcv/mmdeploy MMCVRoiAlign custom op (needs mmdeploy's plugin "
                               "library); maps to ONNX RoiAlign",
    "mod.missing": "Mod has no importer (7.2-8.4)",
    "xor.missing": "Xor has no importer (7.2-8.2)",
    "custom_op.unknown": "op with no importer and no standard plugin of that name",
    "op.missing": "standard ONNX op with no importer in this release",
    "plugin.standard_library": "node resolved by name to a TensorRT standard plugin (the app loads "
                               "libnvinfer_plugin from 10.0)",
    "msda.unfused": "opt-in: pure-op multiscale deformable attention that "
                    "MultiscaleDeformableAttnPlugin_TRT can replace",
    "nms.merged_groups": "opt-in: NonMaxSuppression over concatenated groups",
})

# Keys a profile never activates by itself: performance / semantics choices the user asks for
# (Target.with_limitations). The value is the standard plugin the fix needs, if any.
OPT_IN_LIMITATIONS: Mapping[str, str | None] = MappingProxyType({
    "msda.unfused": "MultiscaleDeformableAttnPlugin_TRT",  # PL-README 8.4+ / REG(8.4)
    "nms.merged_groups": None,
})

# Export repairs block onnxruntime and TensorRT alike, so they are active on every target.
EXPORT_REPAIRS: frozenset[str] = frozenset({"maxpool.unbatched", "eyelike.bool", "gridsample.double_grid"})

# Which graphfix name `graphfix check` uses when neither --target nor an installed tensorrt says
# otherwise: the strictest pseudo-target, so a clean model parses on every profile.
DEFAULT_TARGET = "portable"

# --------------------------------------------------------------------------------------------
# Domain of the TensorRT plugin nodes graphfix emits (EfficientNMS_TRT, ROIAlign_TRT,
# MultiscaleDeformableAttnPlugin_TRT, ...).
#
# * Every parser dispatches on op_type alone: a builtin importer if one is registered, else the
#   plugin fallback (S72/S86 ModelImporter.cpp `opImporters.count(node.op_type())`).
# * The fallback looks the creator up by (op_type, attr plugin_version default "1", attr
#   plugin_namespace default "") in 7.2-10.9 (S72 / S86 / S101 FallbackPluginImporter). From
#   10.10 it tries that first and, only if nothing is found, retries with namespace = node.domain
#   (FPI(dd0a3a9); trt-onnx-support b "namespace falls back to node domain (10.10)").
#   The standard plugins are registered in namespace "" (initLibNvInferPlugins(logger, "")), so a
#   node WITHOUT a plugin_namespace attribute resolves on every release whatever its domain.
# * onnx.checker.check_model(full_check=True) rejects an unregistered op in the default domain
#   ("No Op registered for EfficientNMS_TRT with domain_version ...") but accepts any op in a
#   custom domain that the model declares in opset_import (checked with onnx 1.23).
# * onnxruntime's TensorRT execution provider exposes every registered TensorRT plugin as a custom
#   op of domain "trt.plugins" (onnxruntime tensorrt_execution_provider_custom_ops.cc), so the
#   same file also loads there.
# Hence: domain "trt.plugins", declared as opset_import ("trt.plugins", 1), and no
# plugin_namespace attribute (adding plugin_namespace="" would be harmless - it is the default -
# but unnecessary, so graphfix adds nothing).
# --------------------------------------------------------------------------------------------
TRT_PLUGIN_DOMAIN = "trt.plugins"
TRT_PLUGIN_DOMAIN_VERSION = 1
TRT_PLUGIN_NODE_ATTRS: Mapping[str, Any] = MappingProxyType({})

# --------------------------------------------------------------------------------------------
# Facts handed to Target.evaluate
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputFacts:
    """What the parser sees of one node input.

    Attributes:
        index: Input position on the node.
        name: Tensor name ("" for an omitted optional input).
        dtype: numpy dtype name ("float16", "int64", "bool", ...) or None if unknown.
        rank: Rank if known.
        shape: Dims if known (int for static, str/None for dynamic).
        is_weights: True for an initializer or a Constant-node output (what the parser calls
            "initializer"); a constant-foldable computed tensor is not weights.
        producer: Name of the producing node, None for a graph input or initializer.
        producer_op: op_type of the producing node.
        value: The value, only for small weights.
    """

    index: int
    name: str
    dtype: str | None = None
    rank: int | None = None
    shape: tuple | None = None
    is_weights: bool = False
    producer: str | None = None
    producer_op: str | None = None
    value: np.ndarray | None = field(default=None, compare=False)


@dataclass(frozen=True)
class NodeFacts:
    """What the parser sees of one node.

    Attributes:
        name: Node name.
        op_type: ONNX op type.
        domain: Node domain ("" for the default ONNX domain).
        opset: Opset of the node's domain in the model.
        attrs: Attribute values as Python values (int, float, str, lists).
        inputs: One InputFacts per input slot.
        output_dtypes: numpy dtype name per output slot (None if unknown).
        in_subgraph: True inside an If/Loop/Scan body.
        output_names: Output names per slot if known ("" for an omitted optional output); when
            empty, every slot of output_dtypes counts as used.
    """

    name: str
    op_type: str
    domain: str = ""
    opset: int = 17
    attrs: Mapping[str, Any] = field(default_factory=dict)
    inputs: tuple[InputFacts, ...] = ()
    output_dtypes: tuple[str | None, ...] = ()
    in_subgraph: bool = False
    output_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Finding:
    """One reason a node (or the model) does not parse as ONNX means on a target."""

    node: str
    op_type: str
    kind: FindingKind
    limitation: str
    reason: str
    advice: str


# Advice per limitation: what to do about it (one line).
_ADVICE: Mapping[str, str] = MappingProxyType({
    "clip.bounds_not_weights": "fold the bounds to constants (polygraphy surgeon sanitize "
                               "--fold-constants) or express Clip as Max/Min",
    "clip.fp16_tensor_bounds": "fold the bounds to constants or express Clip as Max/Min",
    "cumsum.missing": "rewrite CumSum as a MatMul with a triangular constant",
    "cumsum.axis_not_weights": "fold the axis to a constant",
    "einsum.missing": "rewrite Einsum as Transpose/Reshape/MatMul",
    "einsum.ellipsis": "rewrite the equation without '...' (batched MatMul / explicit labels)",
    "einsum.more_than_two_operands": "split the contraction into pairwise Einsum/MatMul",
    "einsum.diagonal": "extract the diagonal with Gather/Mul before contracting",
    "einsum.uppercase": "rename the labels to lowercase letters",
    "einsum.broadcast": "Expand the size-1 operand dims before the Einsum",
    "einsum.integer_inputs": "Cast the operands to float and the result back",
    "nonzero.missing": "avoid NonZero (mask arithmetic, TopK over the mask) or use a fixed-size "
                       "formulation",
    "topk.largest_ignored": "negate the input, take TopK(largest=1), negate the values",
    "topk.k_not_weights": "fold K to a constant",
    "topk.int32_input": "Cast the input to float32 around TopK",
    "topk.k_above_limit": "reduce K to at most 3840 or split the TopK",
    "reduce.axes_input_ignored": "move the axes into the attribute form of an older opset, or "
                                 "re-export below opset 18",
    "reduce.axes_not_weights": "fold the axes to a constant",
    "reduce.bool_input": "Cast to INT32/FP32 before the reduction (ReduceMax for any, ReduceMin "
                         "for all)",
    "opset.above_declared_range": "re-export at an opset inside the target's declared range or "
                                  "check every op whose semantics changed",
    "int64.clamped": "keep INT64 constants within INT32 (e.g. replace INT64_MAX slice ends)",
    "layernorm.missing": "decompose LayerNormalization (ReduceMean/Sub/Pow/Sqrt/Div)",
    "layernorm.extra_outputs": "drop the Mean/InvStdDev outputs or compute them separately",
    "cast.to_bool": "use Not(Equal(x, 0)) instead of Cast(to=BOOL)",
    "range.dtype": "compute Range in INT32/INT64/FP32 and Cast the result",
    "range.float_not_weights": "fold start/limit/delta to constants or compute Range in INT32",
    "gridsample.missing": "no native path before 8.5: use a plugin or a decomposition",
    "gridsample.5d": "use a plugin or decompose the volumetric grid sample",
    "gridsample.mode_string_ignored": "write the opset-16 spelling (bilinear/bicubic)",
    "roialign.missing": "use a plugin node (e.g. PyramidROIAlign_TRT) or a decomposition",
    "roialign.sampling_ratio_default": "write sampling_ratio explicitly",
    "roialign.coordinate_mode": "use half_pixel or output_half_pixel",
    "nms.missing": "replace NonMaxSuppression by a plugin node or a fixed-size formulation",
    "nms.padded_plugin": "emit an explicit EfficientNMS_TRT node with fixed-size outputs",
    "nms.params_not_weights": "fold max_output_boxes_per_class/iou/score to constants",
    "scatter.reduction_ignored": "rewrite the reduction (e.g. scatter into zeros then Add)",
    "scatter.reduction_refused": "drop the reduction attribute when it is 'none' or rewrite the "
                                 "reduction",
    "maxpool.unbatched": "Unsqueeze a batch dim before the pooling and Squeeze it after",
    "eyelike.bool": "build the EyeLike in a numeric type and Cast to BOOL",
    "mod.missing": "write the remainder with Div, Mul, Sub (and Where for fmod=0 signs)",
    "xor.missing": "write Xor as And(Or(a, b), Not(And(a, b)))",
    "gridsample.double_grid": "Cast the grid to FLOAT (the exporter's linspace made it DOUBLE)",
    "custom_op.mmcv_grid_sampler": "map it to ONNX GridSample (TensorRT >= 8.5 imports it)",
    "custom_op.mmcv_roialign": "map it to ONNX RoiAlign (TensorRT >= 8.5 imports it)",
    "custom_op.unknown": "replace the op with standard ops or load the plugin library that "
                         "registers it (trtexec --staticPlugins / --plugins)",
    "op.missing": "replace the op with standard ops the target imports, or provide a plugin",
    "plugin.standard_library": 'load the standard plugins before parsing: trt.init_libnvinfer_plugins('
                               'logger, "") / initLibNvInferPlugins (trtexec does it itself)',
    "msda.unfused": "replace the subgraph with a MultiscaleDeformableAttnPlugin_TRT node",
    "nms.merged_groups": "run one NonMaxSuppression over the merged groups",
})

assert set(_ADVICE) == set(LIMITATIONS)

# ONNX tensor type code for BOOL (Cast.to, EyeLike.dtype).
_ONNX_BOOL = 9
_INT_DTYPES = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"})


def _present(node: NodeFacts, index: int) -> InputFacts | None:
    if index < len(node.inputs) and node.inputs[index].name:
        return node.inputs[index]
    return None


def _origin(inp: InputFacts) -> str:
    if inp.producer:
        return f"computed by node {inp.producer} ({inp.producer_op or '?'})"
    return "a graph input"


# --------------------------------------------------------------------------------------------
# Conditions that gate a restriction (all must hold).
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MinOpset:
    """The node's opset is at least ``opset``."""

    opset: int

    def holds(self, node: NodeFacts) -> bool:
        return node.opset >= self.opset


@dataclass(frozen=True)
class AnyInputComputed:
    """At least one of ``indices`` is present and not weights."""

    indices: tuple[int, ...]

    def holds(self, node: NodeFacts) -> bool:
        return any((i := _present(node, k)) is not None and not i.is_weights for k in self.indices)


@dataclass(frozen=True)
class InputDtypeIs:
    """Input ``index`` has one of ``dtypes``."""

    index: int
    dtypes: frozenset[str]

    def holds(self, node: NodeFacts) -> bool:
        inp = _present(node, self.index)
        return inp is not None and inp.dtype in self.dtypes


Condition = MinOpset | AnyInputComputed | InputDtypeIs

# --------------------------------------------------------------------------------------------
# Restrictions: a handful of kinds, instantiated per op per release.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Restriction:
    """Base: a limitation key, a finding kind, gating conditions and a citation.

    Never used alone: each subclass defines ``_reasons(node) -> list[str]``, the concrete
    sentences (one per violation) once the conditions in ``when`` hold.
    """

    limitation: str
    kind: FindingKind = "unsupported"
    when: tuple[Condition, ...] = ()
    source: str = ""

    def reasons(self, node: NodeFacts) -> list[str]:
        """Return one concrete reason per violation of this restriction by ``node``."""
        if not all(c.holds(node) for c in self.when):
            return []
        return self._reasons(node)


@dataclass(frozen=True)
class Always(Restriction):
    """Fires whenever the op appears (no importer, no runner, a known silent lowering)."""

    message: str = ""

    def _reasons(self, node: NodeFacts) -> list[str]:
        return [self.message.format(op=node.op_type)]


@dataclass(frozen=True)
class InputIsWeights(Restriction):
    """Input ``index`` (if present) must be an initializer / Constant output."""

    index: int = 0
    role: str = ""

    def _reasons(self, node: NodeFacts) -> list[str]:
        inp = _present(node, self.index)
        if inp is None or inp.is_weights:
            return []
        return [f"input {self.index} ({self.role}) is {_origin(inp)}, not an initializer"]


@dataclass(frozen=True)
class InputDtype(Restriction):
    """Input ``index`` must have a dtype in ``allowed`` (or not in ``refused``)."""

    index: int = 0
    role: str = ""
    allowed: frozenset[str] | None = None
    refused: frozenset[str] | None = None
    why: str = "the importer rejects this type"

    def _reasons(self, node: NodeFacts) -> list[str]:
        inp = _present(node, self.index)
        if inp is None or inp.dtype is None:
            return []
        bad = (self.allowed is not None and inp.dtype not in self.allowed) or (
            self.refused is not None and inp.dtype in self.refused)
        if not bad:
            return []
        return [f"input {self.index} ({self.role}) is {inp.dtype}: {self.why}"]


@dataclass(frozen=True)
class AnyInputDtype(Restriction):
    """No present input may have a dtype in ``refused``."""

    refused: frozenset[str] = frozenset()
    why: str = "the importer rejects this type"

    def _reasons(self, node: NodeFacts) -> list[str]:
        return [f"input {i.index} is {i.dtype}: {self.why}" for i in node.inputs
                if i.name and i.dtype in self.refused]


@dataclass(frozen=True)
class AttrValue(Restriction):
    """Attribute ``attr`` (value or ``default`` when absent) must be in ``allowed`` / not in
    ``refused``; ``refuse_present`` refuses the attribute whatever its value."""

    attr: str = ""
    default: Any = None
    allowed: frozenset | None = None
    refused: frozenset | None = None
    refuse_present: bool = False
    message: str = '{attr}="{value}" is refused'
    hints: tuple[tuple[Any, str], ...] = ()

    def _reasons(self, node: NodeFacts) -> list[str]:
        present = self.attr in node.attrs
        value = node.attrs.get(self.attr, self.default)
        if isinstance(value, bytes):
            value = value.decode()
        if self.refuse_present:
            bad = present
        else:
            bad = (self.allowed is not None and value not in self.allowed) or (
                self.refused is not None and value in self.refused)
        if not bad:
            return []
        hint = dict(self.hints).get(value, "")
        return [self.message.format(attr=self.attr, value=value, hint=hint)]


@dataclass(frozen=True)
class AttrMissing(Restriction):
    """Attribute ``attr`` absent and the importer's default differs from ONNX's."""

    attr: str = ""
    trt_default: Any = None
    onnx_default: Any = None
    meaning: str = ""

    def _reasons(self, node: NodeFacts) -> list[str]:
        if self.attr in node.attrs:
            return []
        meaning = f" ({self.meaning})" if self.meaning else ""
        return [f"attribute {self.attr} absent: TensorRT uses {self.trt_default}, ONNX means "
                f"{self.onnx_default}{meaning}"]


@dataclass(frozen=True)
class InputRank(Restriction):
    """Inputs ``indices`` must not have a rank in ``refused_ranks``."""

    indices: tuple[int, ...] = (0,)
    roles: tuple[str, ...] = ("",)
    refused_ranks: frozenset[int] = frozenset()
    why: str = ""

    def _reasons(self, node: NodeFacts) -> list[str]:
        out = []
        for k, role in zip(self.indices, self.roles):
            inp = _present(node, k)
            if inp is not None and inp.rank in self.refused_ranks:
                out.append(f"input {k} ({role}) has rank {inp.rank}: {self.why}")
        return out


@dataclass(frozen=True)
class InputValueAbove(Restriction):
    """The (weights) value of input ``index`` or attribute ``attr`` must be <= ``limit``."""

    index: int = 1
    role: str = ""
    attr: str = ""
    limit: int = 0

    def _reasons(self, node: NodeFacts) -> list[str]:
        inp = _present(node, self.index)
        if inp is not None and inp.value is not None and inp.value.size:
            value = int(np.max(inp.value))
            where = f"input {self.index} ({self.role})"
        elif self.attr and isinstance(node.attrs.get(self.attr), int):
            value = node.attrs[self.attr]
            where = f"attribute {self.attr}"
        else:
            return []
        if value <= self.limit:
            return []
        return [f"{where} is {value}, above the layer limit {self.limit}"]


@dataclass(frozen=True)
class AxesInputIgnored(Restriction):
    """Reduce* with axes as input 1, on a parser that only reads the attribute form."""

    def _reasons(self, node: NodeFacts) -> list[str]:
        if _present(node, 1) is None:
            return []
        return [f"{node.op_type}-{node.opset} takes axes as input 1, which this parser ignores: "
                f"all axes are reduced"]


@dataclass(frozen=True)
class UsedOutputs(Restriction):
    """At most ``max_outputs`` outputs may be used."""

    max_outputs: int = 1
    produced: str = ""

    def _reasons(self, node: NodeFacts) -> list[str]:
        if node.output_names:
            used = sum(1 for n in node.output_names if n)
        else:
            used = len(node.output_dtypes)
        if used <= self.max_outputs:
            return []
        return [f"{used} outputs are declared: TensorRT produces only {self.produced}"]


_EINSUM_ALLOWED = set("abcdefghijklmnopqrstuvwxyz,->. ")
EinsumFeatureName = Literal["ellipsis", "more_than_two_operands", "diagonal", "uppercase",
                            "broadcast"]


@dataclass(frozen=True)
class EinsumFeature(Restriction):
    """One Einsum equation feature the parser refuses."""

    feature: EinsumFeatureName = "ellipsis"

    def _reasons(self, node: NodeFacts) -> list[str]:
        eq = node.attrs.get("equation", "")
        if isinstance(eq, bytes):
            eq = eq.decode()
        compact = eq.replace(" ", "")
        lhs = compact.split("->")[0]
        terms = lhs.split(",")
        if self.feature == "uppercase":
            bad = sorted({c for c in eq if c not in _EINSUM_ALLOWED})
            return [f'equation "{eq}" uses uppercase label(s) {"".join(bad)}'] if bad else []
        if self.feature == "ellipsis":
            return [f'equation "{eq}" uses ellipsis'] if "..." in compact else []
        if self.feature == "more_than_two_operands":
            n = len(terms)
            return [f'equation "{eq}" has {n} operands'] if n > 2 else []
        if self.feature == "diagonal":
            for term in terms:
                letters = term.replace("...", "")
                rep = sorted({c for c in letters if letters.count(c) > 1})
                if rep:
                    return [f'equation "{eq}" repeats label {"".join(rep)} inside operand '
                            f'"{term}" (diagonal)']
            return []
        return self._broadcast(node, eq, terms)

    @staticmethod
    def _broadcast(node: NodeFacts, eq: str, terms: list[str]) -> list[str]:
        sizes: dict[str, set[int]] = {}
        ellipsis_shapes: list[tuple] = []
        for k, term in enumerate(terms):
            inp = _present(node, k)
            if inp is None or inp.shape is None:
                continue
            shape = tuple(inp.shape)
            if "..." in term:
                head, tail = term.split("...")
                n_ell = len(shape) - len(head) - len(tail)
                if n_ell < 0:
                    continue
                ellipsis_shapes.append(shape[len(head):len(head) + n_ell])
                labelled = list(zip(head, shape[:len(head)])) + list(
                    zip(tail, shape[len(head) + n_ell:]))
            else:
                if len(term) != len(shape):
                    continue
                labelled = list(zip(term, shape))
            for label, dim in labelled:
                if isinstance(dim, (int, np.integer)):
                    sizes.setdefault(label, set()).add(int(dim))
        for label in sorted(sizes):
            dims = sizes[label]
            if 1 in dims and len(dims) > 1:
                other = max(dims)
                return [f'equation "{eq}" broadcasts label {label} (sizes 1 and {other}) '
                        f"between operands"]
        if len(ellipsis_shapes) > 1:
            width = max(len(s) for s in ellipsis_shapes)
            padded = [(1,) * (width - len(s)) + tuple(s) for s in ellipsis_shapes]
            for col in zip(*padded):
                ints = {int(d) for d in col if isinstance(d, (int, np.integer))}
                if 1 in ints and len(ints) > 1 or len({len(s) for s in ellipsis_shapes}) > 1:
                    return [f'equation "{eq}" broadcasts the ellipsis dims between operands']
        return []


# Export repairs, evaluated on every target before dispatch (they concern ONNX itself).
@dataclass(frozen=True)
class PoolUnbatched(Restriction):
    """Pooling whose input rank is not 2 + number of spatial dims of kernel_shape."""

    def _reasons(self, node: NodeFacts) -> list[str]:
        inp = _present(node, 0)
        ks = node.attrs.get("kernel_shape")
        if inp is None or inp.rank is None or not isinstance(ks, (list, tuple)):
            return []
        if inp.rank == len(ks) + 2:
            return []
        return [f"input 0 has rank {inp.rank} but kernel_shape {list(ks)} has {len(ks)} spatial "
                f"dims: pooling on an unbatched tensor"]


@dataclass(frozen=True)
class EyeLikeBool(Restriction):
    """EyeLike producing BOOL."""

    def _reasons(self, node: NodeFacts) -> list[str]:
        dtype = node.attrs.get("dtype")
        inp = _present(node, 0)
        if dtype == _ONNX_BOOL or (dtype is None and inp is not None and inp.dtype == "bool"):
            return ["EyeLike produces BOOL: onnxruntime has no BOOL EyeLike kernel"]
        return []


_EXPORT_REPAIRS: Mapping[str, tuple[Restriction, ...]] = MappingProxyType({
    # onnx shape inference: "Attribute kernel_shape has incorrect size" (checked onnxruntime 1.31)
    "MaxPool": (PoolUnbatched("maxpool.unbatched", source="onnx MaxPool shape inference"),),
    "AveragePool": (PoolUnbatched("maxpool.unbatched", source="onnx AveragePool shape inference"),),
    # onnxruntime 1.31: GridSample kernels need the grid in the input's type
    "GridSample": (InputDtype("gridsample.double_grid", index=1, role="grid", refused=frozenset({"float64"}),
                              why="onnxruntime has no kernel for a DOUBLE grid",
                              source="onnxruntime GridSample kernel types"),),
    # onnxruntime 1.31: "Could not find an implementation for EyeLike(9)" for dtype=BOOL
    "EyeLike": (EyeLikeBool("eyelike.bool", source="onnxruntime EyeLike kernel types"),),
})


# --------------------------------------------------------------------------------------------
# Restriction sets, named once and reused by the releases below.
# --------------------------------------------------------------------------------------------

_REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
               "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")

# ReduceSum took axes as an input at opset 13, the other Reduce* at opset 18.
_AXES_INPUT_OPSET = {op: (13 if op == "ReduceSum" else 18) for op in _REDUCE_OPS}


def _reduce(axes_rule: str, source: str) -> dict[str, tuple[Restriction, ...]]:
    """Reduce* restrictions; axes_rule: 'ignored', 'sum_weights_others_ignored' or 'weights'."""
    out = {}
    for op in _REDUCE_OPS:
        when = (MinOpset(_AXES_INPUT_OPSET[op]),)
        bool_input = InputDtype("reduce.bool_input", index=0, role="data",
                                refused=frozenset({"bool"}),
                                why="the reduce layer does not take BOOL", source=source)
        if axes_rule == "weights" or (axes_rule == "sum_weights_others_ignored"
                                      and op == "ReduceSum"):
            axes = InputIsWeights("reduce.axes_not_weights", when=when, index=1, role="axes",
                                  source=source)
        else:
            axes = AxesInputIgnored("reduce.axes_input_ignored", kind="silent", when=when,
                                    source=source)
        out[op] = (bool_input, axes)
    return out


def _topk(*, k_weights: bool, int32_refused: bool, largest_ignored: bool,
          source: str) -> tuple[Restriction, ...]:
    out: list[Restriction] = []
    if k_weights:
        out.append(InputIsWeights("topk.k_not_weights", when=(MinOpset(10),), index=1, role="K",
                                  source=source))
    if int32_refused:
        # INT64 is narrowed to INT32 on <= 8.6, so it meets the same refusal.
        out.append(InputDtype("topk.int32_input", index=0, role="X",
                              refused=frozenset({"int32", "int64"}),
                              why="TopK on integer input is refused", source=source))
    if largest_ignored:
        out.append(AttrValue("topk.largest_ignored", kind="silent", when=(MinOpset(11),),
                             attr="largest", default=1, refused=frozenset({0}),
                             message="largest=0 is ignored: TensorRT returns the k largest values",
                             source=source))
    # K <= 3840 in every version (H7.2/H10.16 ITopKLayer).
    out.append(InputValueAbove("topk.k_above_limit", index=1, role="K", attr="k", limit=3840,
                               source="H7.2, H10.16"))
    return tuple(out)


def _einsum(features: Sequence[str], *, integers: bool, source: str) -> tuple[Restriction, ...]:
    out: list[Restriction] = [EinsumFeature(f"einsum.{f}", feature=f, source=source)
                              for f in features]
    if integers:
        out.append(AnyInputDtype("einsum.integer_inputs", refused=_INT_DTYPES,
                                 why="Einsum takes floating-point operands only", source=source))
    return tuple(out)


def _scatter_ignored(source: str) -> tuple[Restriction, ...]:
    return (AttrValue("scatter.reduction_ignored", kind="silent", attr="reduction",
                      default="none", allowed=frozenset({"none"}),
                      message='reduction "{value}" is ignored: updates overwrite the data',
                      source=source),)


_RANGE_DTYPE = InputDtype("range.dtype", index=0, role="start",
                          allowed=frozenset({"float32", "int32", "int64"}),
                          why="Range is imported for FP32/INT32/INT64 only",
                          source="S72-S86 (INT64 narrowed), S100, S1016")

_CLIP_BOUNDS_WEIGHTS = (
    InputIsWeights("clip.bounds_not_weights", index=1, role="min", source="S72, S80GA"),
    InputIsWeights("clip.bounds_not_weights", index=2, role="max", source="S72, S80GA"),
)

_NMS_PLUGIN_80 = (
    Always("nms.padded_plugin", kind="silent",
           message="imported as the EfficientNMS_ONNX_TRT plugin: selected_indices becomes a padded "
                   "[batch*max_output_boxes_per_class, 3] tensor that ignores the number of "
                   "classes (boxes can be dropped)", source="S80-S84, PL-effnms"),
    InputIsWeights("nms.params_not_weights", index=2, role="max_output_boxes_per_class",
                   source="S80-S84"),
    InputIsWeights("nms.params_not_weights", index=3, role="iou_threshold", source="S80-S84"),
    InputIsWeights("nms.params_not_weights", index=4, role="score_threshold", source="S80-S84"),
)

_GRIDSAMPLE_85 = (
    InputRank("gridsample.5d", indices=(0, 1), roles=("X", "grid"), refused_ranks=frozenset({5}),
              why="only 4-D GridSample is imported", source="S85, H8.5, H10.16"),
    # Absent mode: the importer defaults to "bilinear" = ONNX default (opset 16) / "linear" (20).
    AttrValue("gridsample.mode_string_ignored", kind="silent", attr="mode", default="bilinear",
              allowed=frozenset({"nearest", "bilinear", "bicubic"}),
              message='mode "{value}"{hint} is imported as nearest',
              hints=(("linear", " (opset 20 spelling)"), ("cubic", " (opset 20 spelling)")),
              source="S85-S1016, ISS4646, PR1060, TORCH20"),
)


def _roialign(ctm_kind: FindingKind, source: str) -> tuple[Restriction, ...]:
    return (
        AttrMissing("roialign.sampling_ratio_default", kind="silent", attr="sampling_ratio",
                    trt_default=1, onnx_default=0, meaning="adaptive", source=source),
        AttrValue("roialign.coordinate_mode", kind=ctm_kind, when=(MinOpset(16),),
                  attr="coordinate_transformation_mode", default="half_pixel",
                  allowed=frozenset({"half_pixel", "output_half_pixel"}),
                  message='coordinate_transformation_mode "{value}" is not half_pixel / '
                          'output_half_pixel',
                  source=source),
    )


def _lowered(plugin: str) -> Restriction:
    """10.x importers that build a standard plugin the application must have loaded."""
    return Always("plugin.standard_library", kind="plugin",
                  message=f"{{op}} is imported through the standard plugin {plugin}",
                  source="support doc b (standard plugin library registration), S100, S1016")


_PLUGIN_SCATTER = (AttrValue("plugin.standard_library", kind="plugin", attr="reduction",
                             default="none", allowed=frozenset({"none"}),
                             message='reduction "{value}" is imported through the standard '
                                     'plugin ScatterElements (INT64 indices)',
                             source="S100, PL-scatterel"),)

_CAST_TO_BOOL = (AttrValue("cast.to_bool", attr="to", refused=frozenset({_ONNX_BOOL, "bool"}),
                           message="Cast to BOOL has no implementation before TensorRT 8.5",
                           source="S72-S84, H8.2 IIdentityLayer"),)

# --------------------------------------------------------------------------------------------
# Op types
# --------------------------------------------------------------------------------------------

# Standard ONNX ops (domains "" and ai.onnx.ml) known to onnx 1.23; an op type outside this set and
# outside the target's importers is a custom op.
_ONNX_OPS = frozenset("""
Abs Acos Acosh Add AffineGrid And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool
BatchNormalization Bernoulli BitCast BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor
BlackmanWindow Cast CastLike CausalConvWithState Ceil Celu CenterCropPad Clip Col2Im Compress Concat
ConcatFromSequence Constant ConstantOfShape Conv ConvInteger ConvTranspose Cos Cosh CumProd CumSum
DFT DeformConv DepthToSpace DequantizeLinear Det Div Dropout DynamicQuantizeLinear Einsum Elu Equal
Erf Exp Expand EyeLike Flatten Floor GRU Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization HammingWindow
HannWindow HardSigmoid HardSwish Hardmax Identity If ImageDecoder InstanceNormalization IsInf IsNaN
LRN LSTM LayerNormalization LeakyRelu Less LessOrEqual LinearAttention Log LogSoftmax Loop
LpNormalization LpPool MatMul MatMulInteger Max MaxPool MaxRoiPool MaxUnpool Mean
MeanVarianceNormalization MelWeightMatrix Min Mish Mod Mul Multinomial Neg NegativeLogLikelihoodLoss
NonMaxSuppression NonZero Not OneHot Optional OptionalGetElement OptionalHasElement Or PRelu Pad Pow
QLinearConv QLinearMatMul QuantizeLinear RMSNormalization RNN RandomNormal RandomNormalLike
RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare RegexFullMatch Relu Reshape
Resize ReverseSequence RoiAlign RotaryEmbedding Round STFT Scan Scatter ScatterElements ScatterND
Selu SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength
SequenceMap Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax SoftmaxCrossEntropyLoss Softplus
Softsign SpaceToDepth Split SplitToSequence Sqrt Squeeze StringConcat StringNormalizer StringSplit
Sub Sum SwiGLU Swish Tan Tanh TensorScatter TfIdfVectorizer ThresholdedRelu Tile TopK Transpose
Trilu Unique Unsqueeze Upsample Where Xor
ArrayFeatureExtractor Binarizer CastMap CategoryMapper DictVectorizer FeatureVectorizer Imputer
LabelEncoder LinearClassifier LinearRegressor Normalizer OneHotEncoder SVMClassifier SVMRegressor
Scaler TreeEnsemble TreeEnsembleClassifier TreeEnsembleRegressor ZipMap
ImageScaler ParametricSoftplus ScaledTanh
""".split())

# Builtin importers of the 7.2 parser (IMP(eb559b6), ONNX op types only; TRT_* serialization
# importers left out).
_IMPORTERS_72 = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil
Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh DepthToSpace DequantizeLinear Div
Dropout Elu Equal Erf Exp Expand Flatten Floor GRU Gather Gemm GlobalAveragePool GlobalLpPool
GlobalMaxPool Greater HardSigmoid Identity If ImageScaler InstanceNormalization LRN LSTM LeakyRelu
Less Log LogSoftmax Loop MatMul Max MaxPool Mean Min Mul Neg Not Or PRelu Pad ParametricSoftplus
Pow QuantizeLinear RNN RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2
ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare
Relu Reshape Resize ScaledTanh Scan Selu Shape Sigmoid Sin Sinh Size Slice Softmax Softplus Softsign
SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Unsqueeze
Upsample Where
""".split())

# Ops whose missing importer has its own limitation key (rules target them); any other standard op
# without an importer reports "op.missing".
_MISSING_KEYS: Mapping[str, str] = MappingProxyType({
    "CumSum": "cumsum.missing",
    "Einsum": "einsum.missing",
    "NonZero": "nonzero.missing",
    "LayerNormalization": "layernorm.missing",
    "GridSample": "gridsample.missing",
    "RoiAlign": "roialign.missing",
    "NonMaxSuppression": "nms.missing",
    "Mod": "mod.missing",
    "Xor": "xor.missing",
})

# mmcv/mmdeploy custom ops graphfix maps to standard ops: op type -> (limitation, ONNX op it maps
# to). The key is active only where that ONNX op has an importer (mmdeploy-ops.md).
_MMCV_OPS: Mapping[str, tuple[str, str]] = MappingProxyType({
    "grid_sampler": ("custom_op.mmcv_grid_sampler", "GridSample"),
    "MMCVRoiAlign": ("custom_op.mmcv_roialign", "RoiAlign"),
})
# Other mmdeploy ops: reported as custom_op.unknown with the library they need.
_MMDEPLOY_OTHER = frozenset({
    "TRTBatchedNMS", "TRTBatchedRotatedNMS", "MMCVMultiLevelRoiAlign",
    "MMCVMultiScaleDeformableAttention", "MMCVModulatedDeformConv2d", "MMCVDeformConv2d",
    "TRTInstanceNormalization", "GatherTopk", "GridPriorsTRT", "ScaledDotProductAttentionTRT",
    "TRTBicubicInterpolate", "MMCVMultiLevelRotatedRoiAlign", "cummax", "cummin",
})

# --------------------------------------------------------------------------------------------
# Standard plugins resolvable by name: (name, plugin_version, first release, last release or None)
# from PL-README and REG(x); only plugins relevant to exported vision/transformer models.
# --------------------------------------------------------------------------------------------
_PLUGINS: tuple[tuple[str, str, tuple[int, int], tuple[int, int] | None], ...] = (
    ("BatchedNMS_TRT", "1", (7, 2), (10, 16)),            # REG(7.2)..REG(10.16); gone REG(11.0)
    ("BatchedNMSDynamic_TRT", "1", (7, 2), (10, 16)),     # same
    ("NMS_TRT", "1", (7, 2), (10, 16)),                   # same
    ("NMSDynamic_TRT", "1", (8, 0), (10, 16)),            # REG(8.0)..REG(10.16)
    ("EfficientNMS_TRT", "1", (8, 0), None),              # REG(8.0)..REG(11.1); deprecated 10.12
    ("EfficientNMS_ONNX_TRT", "1", (8, 0), (10, 16)),     # REG(8.0)..REG(10.16); gone REG(11.0)
    ("PyramidROIAlign_TRT", "1", (7, 2), None),           # REG(7.2)..REG(11.1)
    ("MultilevelCropAndResize_TRT", "1", (7, 2), None),   # REG(7.2)..REG(11.1)
    ("CropAndResize", "1", (7, 2), (10, 16)),             # REG(7.2)..REG(10.16)
    ("CropAndResizeDynamic", "1", (8, 0), None),          # REG(8.0); legacy creator from 10.12
    ("CropAndResizeDynamic", "2", (10, 12), None),        # REG(10.12)
    ("ResizeNearest_TRT", "1", (7, 2), None),             # REG(7.2)..REG(11.1)
    ("ROIAlign_TRT", "1", (8, 5), None),                  # REG(8.5)..REG(11.1) (IPluginV2)
    ("ROIAlign_TRT", "2", (10, 1), None),                 # REG(10.1) ROIAlignV3PluginCreator
    ("MultiscaleDeformableAttnPlugin_TRT", "1", (8, 4), None),  # REG(8.4); legacy from 10.11
    ("MultiscaleDeformableAttnPlugin_TRT", "2", (10, 11), None),  # PL-README 10.11
    ("ModulatedDeformConv2d", "1", (8, 6), None),         # REG(8.6); legacy from 10.11
    ("ModulatedDeformConv2d", "2", (10, 11), None),       # PL-README 10.11
    ("ScatterND", "1", (8, 0), None),                     # REG(8.0)..REG(11.1)
    ("ScatterElements", "1", (10, 0), None),              # REG(10.0) ScatterElementsPluginV2Creator
    ("ScatterElements", "2", (10, 3), None),              # REG(10.3) ScatterElementsPluginV3Creator
    ("InstanceNormalization_TRT", "1", (7, 2), None),     # REG(7.2)
    ("InstanceNormalization_TRT", "2", (8, 6), None),     # REG(8.6) CreatorV2
    ("InstanceNormalization_TRT", "3", (10, 3), None),    # REG(10.3) V3PluginCreator
    ("GroupNormalizationPlugin", "1", (7, 2), None),      # PL-README 7.2
    ("DisentangledAttention_TRT", "1", (8, 4), None),     # PL-README 8.4
    ("DisentangledAttention_TRT", "2", (10, 11), None),   # PL-README 10.11
    ("Clip_TRT", "1", (8, 5), (10, 16)),                  # REG(8.5)..REG(10.16)
    ("LReLU_TRT", "1", (7, 2), (10, 16)),                 # REG(7.2)..REG(10.16)
    ("PillarScatterPlugin", "1", (8, 2), None),           # REG(8.2)
    ("VoxelGeneratorPlugin", "1", (8, 2), None),          # REG(8.2)
    ("DecodeBbox3DPlugin", "1", (8, 2), None),            # REG(8.2)
    ("TopkLastDim", "1", (11, 0), None),                  # REG(11.0) (support doc says 11.1)
)


def _plugins_at(version: tuple[int, int]) -> Mapping[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for name, ver, first, last in _PLUGINS:
        if first <= version and (last is None or version <= last):
            out.setdefault(name, []).append(ver)
    return MappingProxyType({k: tuple(v) for k, v in sorted(out.items())})


# --------------------------------------------------------------------------------------------
# Releases as deltas
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Release:
    version: tuple[int, int]
    source: str
    add_importers: frozenset[str] = frozenset()
    ops: Mapping[str, tuple[Restriction, ...]] = field(default_factory=dict)
    facts: Mapping[str, Any] = field(default_factory=dict)


_HISTORY: tuple[_Release, ...] = (
    _Release(
        (7, 2), "S72, IMP(eb559b6)",
        add_importers=_IMPORTERS_72,
        ops={
            "Clip": _CLIP_BOUNDS_WEIGHTS,
            "TopK": _topk(k_weights=True, int32_refused=True, largest_ignored=True, source="S72"),
            "Range": (_RANGE_DTYPE, *(
                InputIsWeights("range.float_not_weights", when=(InputDtypeIs(0, frozenset(
                    {"float32", "float16", "float64"})),), index=k, role=role, source="S72-S82")
                for k, role in enumerate(("start", "limit", "delta")))),
            # 7.2 reads only the attribute form of axes: ReduceSum-13 (S72) and, by the same
            # code, opset-18 Reduce* lose their axes input.
            **_reduce("ignored", "S72"),
            "Cast": _CAST_TO_BOOL,
        },
        facts={"opset_range": (7, 11), "int64_native": False, "bool_cast": False,
               "strongly_typed_available": False, "strongly_typed_only": False,
               "parser_registers_plugins": True, "plugin_namespace_from_domain": False},
    ),
    _Release(
        (8, 0), "S80, S80GA, IMP(4225037)",
        add_importers=frozenset({"Celu", "CumSum", "EyeLike", "GatherElements", "GreaterOrEqual",
                                 "LessOrEqual", "LpNormalization", "LpPool", "NonMaxSuppression",
                                 "ReverseSequence"}),
        ops={
            # 8.0.1 GA binary = 7.2 behaviour (S80GA); the later 8.0.3 OSS parser is laxer.
            "Clip": _CLIP_BOUNDS_WEIGHTS,
            "CumSum": (InputIsWeights("cumsum.axis_not_weights", index=1, role="axis",
                                      source="S80-S1016"),),
            "NonMaxSuppression": _NMS_PLUGIN_80,
            # No builtin importer: resolves by name to the ScatterND v1 plugin, which has no
            # fields, so a reduction attribute is dropped (S80 + PL-scatternd(8.0)).
            "ScatterND": _scatter_ignored("S80, PL-scatternd(8.0)"),
            **_reduce("sum_weights_others_ignored", "S80"),
        },
        facts={"opset_range": (7, 13)},
    ),
    _Release(
        (8, 2), "S82, IMP(4f54a19)",
        add_importers=frozenset({"Einsum", "GatherND", "IsNaN", "Round", "Scatter",
                                 "ScatterElements", "ScatterND", "Sign"}),
        ops={
            "Clip": (InputDtype("clip.fp16_tensor_bounds", when=(AnyInputComputed((1, 2)),),
                                index=0, role="input",
                                allowed=frozenset({"float32", "int32", "int64"}),
                                why="tensor min/max are imported only for FP32/INT32 input",
                                source="S80 (53ed9b3), S82, S84"),),
            "Einsum": _einsum(("uppercase", "ellipsis", "diagonal", "more_than_two_operands",
                               "broadcast"), integers=True, source="S82-S86, H8.2 IEinsumLayer"),
            "ScatterND": _scatter_ignored("S82-S86"),
            "ScatterElements": _scatter_ignored("S82-S86"),
            "Scatter": _scatter_ignored("S82-S86"),
        },
    ),
    _Release(
        (8, 4), "S84, IMP(9f82b2b)",
        add_importers=frozenset({"HardSwish", "Shrink", "Xor"}),
        # Dynamic float Range (CL 8.4): the weights requirement is gone.
        ops={"Range": (_RANGE_DTYPE,)},
        facts={"opset_range": (7, 17)},
    ),
    _Release(
        (8, 5), "S85, IMP(fd119fe)",
        add_importers=frozenset({"GridSample", "MeanVarianceNormalization", "Mod", "NonZero",
                                 "OneHot", "RandomNormal", "RandomNormalLike", "RoiAlign",
                                 "Trilu"}),
        ops={
            "Clip": (),
            "NonMaxSuppression": (),   # native NMS layer, runtime max/thresholds OK
            "Cast": (),
            "TopK": _topk(k_weights=True, int32_refused=True, largest_ignored=False, source="S85"),
            "GridSample": _GRIDSAMPLE_85,
            # Non half_pixel values are read as output_half_pixel (S85 RoiAlign importer).
            "RoiAlign": _roialign("silent", "S85, S86"),
        },
        facts={"bool_cast": True},
    ),
    _Release(
        (8, 6), "S86, IMP(6ba67d3)",
        add_importers=frozenset({"GroupNormalization", "IsInf", "LayerNormalization"}),
        ops={
            "TopK": _topk(k_weights=False, int32_refused=False, largest_ignored=False,
                          source="S86"),
            "LayerNormalization": (UsedOutputs("layernorm.extra_outputs", max_outputs=1,
                                               produced="Y (no Mean/InvStdDev)",
                                               source="S86, S100, CHK10"),),
        },
    ),
    _Release(
        (10, 0), "S100, CHK10, IMP(eb43908)",
        add_importers=frozenset({"CastLike", "Gelu", "Hardmax", "Mish"}),
        ops={
            # Any reduction attribute is refused, even "none" (S100).
            "ScatterND": (AttrValue("scatter.reduction_refused", attr="reduction",
                                    refuse_present=True,
                                    message='attribute reduction="{value}" is present: the '
                                            'ScatterND importer refuses any reduction attribute',
                                    source="S100"),),
            # reduction != none goes to the ScatterElements plugin (S100, PL-scatterel), which
            # the application must load from 10.0 on (support doc b, plugin registration).
            "ScatterElements": _PLUGIN_SCATTER,
            "Scatter": _PLUGIN_SCATTER,
            **_reduce("weights", "S100, S1016"),
            # The parser rewrites ellipsis and >2 operands itself since 9.x (S93).
            "Einsum": _einsum(("uppercase", "diagonal", "broadcast"), integers=True,
                              source="S100, CHK10, H10.0 IEinsumLayer"),
            "RoiAlign": _roialign("unsupported", "S100, CHK10") + (_lowered("ROIAlign_TRT"),),
        },
        facts={"opset_range": (9, 20), "int64_native": True, "strongly_typed_available": True,
               "parser_registers_plugins": False},
    ),
    _Release((10, 1), "CL(10.1), IMP(96e7811)", add_importers=frozenset({"DeformConv"}),
             ops={"DeformConv": (_lowered("ModulatedDeformConv2d"),)}),
    _Release((10, 4), "CL(10.4)",
             add_importers=frozenset({"BlackmanWindow", "HammingWindow", "HannWindow"})),
    _Release((10, 5), "CL(10.5)", add_importers=frozenset({"STFT"})),
    _Release(
        (10, 9), "CL(10.9)",
        ops={"ScatterND": (AttrValue("scatter.reduction_refused", attr="reduction",
                                     default="none", allowed=frozenset({"none"}),
                                     message='reduction "{value}" is refused by the ScatterND '
                                             'importer',
                                     source="S1016, CL(10.9)"),)},
    ),
    _Release((10, 10), "CL(10.10), FPI(dd0a3a9)",
             facts={"plugin_namespace_from_domain": True}),
    _Release(
        (10, 12), "CL(10.12), S1016, CHK(dd0a3a9)",
        # Ellipsis, diagonal and broadcasting native; the lowercase-only static check is still in
        # the post-10.15 checker (CHK(dd0a3a9)), integer operands still refused (S1016).
        ops={"Einsum": _einsum(("uppercase",), integers=True, source="S1016, CHK(dd0a3a9)")},
    ),
    _Release((10, 14), "CL(10.14), S1016", add_importers=frozenset({"Attention"})),
    _Release(
        (10, 15), "CL(10.15), S1016",
        add_importers=frozenset({"RMSNormalization", "RotaryEmbedding", "TensorScatter"}),
        # Declared 9-24 at 10.15/10.16 (support doc b). 10.1-10.14 are kept at 9-20: the
        # sources do not say when 21-23 were declared, and over-reporting is the safe side.
        facts={"opset_range": (9, 24)},
    ),
    _Release(
        (11, 0), "TX HEAD(11.1), REG(11.0), docs Builder page 11.0",
        facts={"strongly_typed_only": True},
    ),
    _Release((11, 5), "TRT 11.5 release notes (support doc b)", facts={"opset_range": (9, 25)}),
)

# TensorRT-RTX: the 10.x parser family, but no runner for NonZero and NonMaxSuppression (support
# doc b.3; NVIDIA/TensorRT-RTX issues #36, #5).
_RTX_OPS: Mapping[str, tuple[Restriction, ...]] = MappingProxyType({
    "NonZero": (Always("nonzero.missing",
                       message="TensorRT-RTX has no runner for {op}: the engine build fails",
                       source="support doc b.3"),),
    "NonMaxSuppression": (Always("nms.missing",
                                 message="TensorRT-RTX has no runner for {op}: the engine build "
                                         "fails", source="support doc b.3"),),
})
_RTX_BASE = (10, 16)  # RTX releases ship the 10.x parser of their time; the newest is modelled.

# Release lines `graphfix targets` lists; any other 10.x / 11.x minor resolves to its own fold.
_LINES: tuple[tuple[str, tuple[int, int]], ...] = (
    ("trt7.2", (7, 2)), ("trt8.0", (8, 0)), ("trt8.2", (8, 2)), ("trt8.4", (8, 4)),
    ("trt8.5", (8, 5)), ("trt8.6", (8, 6)), ("trt10.0", (10, 0)), ("trt10.16", (10, 16)),
    ("trt11", (11, 0)),
)
_NEWEST_MINOR = {7: 2, 8: 6, 10: 16}
_LINE_NOTES: Mapping[str, str] = MappingProxyType({
    "trt7.2": "opset <= 11; no CumSum/Einsum/NonZero/NMS/RoiAlign/GridSample; Clip bounds constant",
    "trt8.0": "opset <= 13; + CumSum, NMS as a padded plugin; Clip bounds constant (8.0.1 GA)",
    "trt8.2": "opset <= 13; + Einsum (restricted), ScatterND/ScatterElements (reduction ignored)",
    "trt8.4": "declares opset 17 but no LayerNormalization; TopK largest=0 still ignored",
    "trt8.5": "+ NonZero, native NMS, RoiAlign, GridSample; Cast to BOOL",
    "trt8.6": "+ LayerNormalization; last release narrowing INT64 to INT32",
    "trt10.0": "opset 9-20; INT64 native; the app loads libnvinfer_plugin; Einsum lowercase only",
    "trt10.16": "opset 9-24; Einsum ellipsis/diagonal native; weak typing deprecated",
    "trt11": "always strongly typed (no --fp16/--int8); legacy NMS plugins removed",
    "trt-rtx": "10.x parser; no NonZero / NonMaxSuppression runners",
})  # 11.x: any minor, folded at or below it

# --------------------------------------------------------------------------------------------
# Target
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpSupport:
    """How a target's parser handles one op type.

    Attributes:
        op_type: The op type.
        importer: True if a builtin importer exists.
        restrictions: Restrictions of that importer (empty = none relevant known).
        plugin_versions: Standard plugin versions resolvable under this name, if any.
    """

    op_type: str
    importer: bool
    restrictions: tuple[Restriction, ...] = ()
    plugin_versions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    """A TensorRT release (or the ``portable`` union) as data.

    Attributes:
        name: Canonical name ("trt8.6", "trt10.13", "trt-rtx", "portable").
        label: Human label ("TensorRT 8.6").
        version: (major, minor) of the TensorRT parser modelled; None for portable.
        family: "tensorrt", "tensorrt-rtx" or "portable".
        opset_range: Declared (min, max) default-domain opset.
        int64_native: INT64 without narrowing (9.0+).
        bool_cast: Cast to BOOL possible (8.5+).
        strongly_typed_only: Every network is strongly typed (11.x).
        strongly_typed_available: The strongly typed network flag exists (9.0+).
        plugins: Standard plugins the parser can resolve by name -> plugin versions.
        parser_registers_plugins: The parser initializes libnvinfer_plugin itself (<= 9.x); from
            10.0 the application must.
        plugin_namespace_from_domain: The plugin fallback retries with namespace = node domain
            (10.10+).
        importers: Op types with a builtin importer.
        op_restrictions: Restrictions per op type.
        limitations: Active limitation keys.
        notes: One-line notes for ``graphfix targets``.
        members: For ``portable``: the profiles it unites.
    """

    name: str
    label: str
    version: tuple[int, int] | None
    family: str
    opset_range: tuple[int, int]
    int64_native: bool
    bool_cast: bool
    strongly_typed_only: bool
    strongly_typed_available: bool
    plugins: Mapping[str, tuple[str, ...]] = field(repr=False)
    parser_registers_plugins: bool
    plugin_namespace_from_domain: bool
    importers: frozenset[str] = field(repr=False)
    op_restrictions: Mapping[str, tuple[Restriction, ...]] = field(repr=False)
    limitations: frozenset[str] = field(repr=False)
    notes: tuple[str, ...] = ()
    members: tuple[Target, ...] = field(default=(), repr=False)

    def __hash__(self) -> int:  # the mappings are read-only views; name + keys identify it
        return hash((self.name, self.version, self.limitations))

    # ---- queries ------------------------------------------------------------------------
    def op_support(self, op_type: str) -> OpSupport:
        """Return how this target's parser handles ``op_type``."""
        return OpSupport(op_type, op_type in self.importers,
                         self.op_restrictions.get(op_type, ()), self.plugins.get(op_type, ()))

    def is_active(self, limitation: str) -> bool:
        """True if ``limitation`` is active on this target."""
        return limitation in self.limitations

    def with_limitations(self, *keys: str) -> Target:
        """Return a copy with opt-in limitation keys enabled.

        Raises:
            ValueError: Unknown key, or the key needs a plugin this release lacks.
        """
        for key in keys:
            if key not in LIMITATIONS:
                raise ValueError(f"unknown limitation {key!r}")
            plugin = OPT_IN_LIMITATIONS.get(key)
            members = self.members or (self,)
            if plugin and any(plugin not in m.plugins for m in members):
                raise ValueError(f"{key} needs the {plugin} plugin, which {self.label} lacks")
        return replace(self, limitations=self.limitations | frozenset(keys),
                       members=tuple(m.with_limitations(*keys) for m in self.members))

    # ---- evaluation ---------------------------------------------------------------------
    def concerns(self, op_type: str) -> bool:
        """False when `evaluate` returns nothing for every node of this op type."""
        if self.members:
            return any(m.concerns(op_type) for m in self.members)
        return (op_type in _EXPORT_REPAIRS or op_type not in self.importers
                or bool(self.op_restrictions.get(op_type)))

    def evaluate(self, node: NodeFacts) -> list[Finding]:
        """Evaluate one node against this target.

        Returns:
            Findings for every active limitation the node runs into, with concrete reasons.
        """
        if self.members:
            return _merge([(m, m.evaluate(node)) for m in self.members])
        findings = [self._finding(node, r, reason)
                    for r in _EXPORT_REPAIRS.get(node.op_type, ())
                    for reason in r.reasons(node)]
        if node.op_type not in self.importers:
            findings += self._fallback(node)
        if node.op_type in self.importers or node.op_type in self.plugins:
            # Restrictions of the builtin importer, or of the plugin an ONNX op falls back to
            # (ScatterND on 8.0).
            findings += [self._finding(node, r, reason)
                         for r in self.op_restrictions.get(node.op_type, ())
                         for reason in r.reasons(node)]
        return [f for f in findings if f.limitation in self.limitations]

    def evaluate_model(self, opset: int,
                       int64_out_of_range: Sequence[tuple[str, list[str]]] = ()) -> list[Finding]:
        """Evaluate model-level facts.

        Args:
            opset: The model's default-domain opset.
            int64_out_of_range: (initializer name, consumer descriptions) for INT64 weights with
                values outside INT32.

        Returns:
            Findings for an opset above the declared range and for clamped INT64 weights.
        """
        if self.members:
            return _merge([(m, m.evaluate_model(opset, int64_out_of_range)) for m in self.members])
        out = []
        lo, hi = self.opset_range
        if opset > hi:
            # Support doc b "Opset enforcement": no upper bound enforced, importers branch on the
            # opset and fall back to older semantics.
            out.append(Finding("(model)", "(model)", "silent", "opset.above_declared_range",
                               f"model opset {opset} is above the declared range {lo}-{hi} of "
                               f"{self.label}: the parser does not refuse it and imports nodes "
                               f"with older semantics",
                               _ADVICE["opset.above_declared_range"]))
        if not self.int64_native:
            # S86 convertINT64: narrowed with a warning, out-of-range values clamped.
            for name, consumers in int64_out_of_range:
                used = f" (used by {', '.join(consumers)})" if consumers else ""
                out.append(Finding(name, "(initializer)", "silent", "int64.clamped",
                                   f"INT64 initializer {name} holds values outside INT32{used}: "
                                   f"{self.label} narrows it to INT32 and clamps them",
                                   _ADVICE["int64.clamped"]))
        return [f for f in out if f.limitation in self.limitations]

    # ---- internals ----------------------------------------------------------------------
    def _finding(self, node: NodeFacts, r: Restriction, reason: str) -> Finding:
        return Finding(node.name, node.op_type, r.kind, r.limitation, reason,
                       _ADVICE[r.limitation])

    def _fallback(self, node: NodeFacts) -> list[Finding]:
        """No builtin importer: the parser's plugin fallback (name, version, namespace)."""
        op = node.op_type
        if op in self.plugins:
            return self._plugin_finding(node)
        if op in _MMCV_OPS:
            key, onnx_op = _MMCV_OPS[op]
            if onnx_op in self.importers:
                return [Finding(node.name, op, "unsupported", key,
                                f"mmdeploy op {op} (domain \"{node.domain}\") needs "
                                f"libmmdeploy_tensorrt_ops.so, which TensorRT does not ship",
                                _ADVICE[key])]
            return [Finding(node.name, op, "unsupported", "custom_op.unknown",
                            f"mmdeploy op {op} needs libmmdeploy_tensorrt_ops.so, and "
                            f"{self.label} has no {onnx_op} importer to map it to",
                            _ADVICE["custom_op.unknown"])]
        if op in _ONNX_OPS and node.domain in ("", "ai.onnx", "ai.onnx.ml"):
            key = _MISSING_KEYS.get(op, "op.missing")
            return [Finding(node.name, op, "unsupported", key,
                            f"{self.label} has no importer for {op}; the plugin fallback finds "
                            f"no plugin named {op}", _ADVICE[key])]
        extra = (" (an mmdeploy op: needs libmmdeploy_tensorrt_ops.so)"
                 if op in _MMDEPLOY_OTHER else "")
        return [Finding(node.name, op, "unsupported", "custom_op.unknown",
                        f'no importer for op "{op}" (domain "{node.domain}") and no plugin of '
                        f"that name in {self.label}'s standard plugin library{extra}",
                        _ADVICE["custom_op.unknown"])]

    def _plugin_finding(self, node: NodeFacts) -> list[Finding]:
        op = node.op_type
        version = str(node.attrs.get("plugin_version", "1"))
        namespace = str(node.attrs.get("plugin_namespace", ""))
        versions = self.plugins[op]
        if version not in versions:
            return [Finding(node.name, op, "unsupported", "custom_op.unknown",
                            f"plugin {op} version {version} is not in {self.label}'s standard "
                            f"library (versions: {', '.join(versions)})",
                            _ADVICE["custom_op.unknown"])]
        if namespace and not (self.plugin_namespace_from_domain and node.domain == ""):
            return [Finding(node.name, op, "unsupported", "custom_op.unknown",
                            f'plugin_namespace="{namespace}": the standard plugins are registered '
                            f'in namespace ""', "remove the plugin_namespace attribute")]
        if self.parser_registers_plugins:
            advice = "nothing to load: this parser registers the standard plugins itself"
        else:
            advice = ('load the standard plugins before parsing: trt.init_libnvinfer_plugins('
                      'logger, "") / initLibNvInferPlugins (trtexec does it itself)')
        return [Finding(node.name, op, "plugin", "plugin.standard_library",
                        f"no builtin importer: resolved by name to the standard plugin {op} "
                        f"version {version}", advice)]


def _merge(per_member: list[tuple[Target, list[Finding]]]) -> list[Finding]:
    """Union of member findings: one per node and limitation, its reason (worded by the oldest
    release that has it, since reasons name the release) tagged with every release concerned."""
    grouped: dict[tuple, list[str]] = {}
    firsts: dict[tuple, Finding] = {}
    for member, findings in per_member:
        for f in findings:
            key = (f.node, f.op_type, f.kind, f.limitation)
            labels = grouped.setdefault(key, [])
            label = member.label.replace("TensorRT ", "")
            if label not in labels:
                labels.append(label)
            firsts.setdefault(key, f)
    out = []
    for key, labels in grouped.items():
        f = firsts[key]
        out.append(replace(f, reason=f"{f.reason} [{', '.join(labels)}]"))
    return out


def _limitations_of(importers: frozenset[str], ops: Mapping[str, tuple[Restriction, ...]],
                    facts: Mapping[str, Any], plugins: Mapping[str, tuple[str, ...]]
                    ) -> frozenset[str]:
    keys = {r.limitation for op, rs in ops.items() if op in importers or op in plugins
            for r in rs}
    keys |= {k for op, k in _MISSING_KEYS.items() if op not in importers}
    keys |= {k for op, (k, onnx_op) in _MMCV_OPS.items() if onnx_op in importers}
    keys |= EXPORT_REPAIRS | {"custom_op.unknown", "opset.above_declared_range"}
    if _ONNX_OPS - importers - set(plugins):
        keys.add("op.missing")
    if plugins:
        keys.add("plugin.standard_library")
    if not facts["int64_native"]:
        keys.add("int64.clamped")
    return frozenset(keys)


def _fold(version: tuple[int, int]) -> tuple[frozenset[str], dict, dict]:
    importers: set[str] = set()
    ops: dict[str, tuple[Restriction, ...]] = {}
    facts: dict[str, Any] = {}
    for rel in _HISTORY:
        if rel.version > version:
            break
        importers |= rel.add_importers
        ops.update(rel.ops)
        facts.update(rel.facts)
    return frozenset(importers), ops, facts


def _build(name: str, label: str, version: tuple[int, int], family: str = "tensorrt",
           extra_ops: Mapping[str, tuple[Restriction, ...]] | None = None,
           extra_notes: Sequence[str] = ()) -> Target:
    importers, ops, facts = _fold(version)
    if extra_ops:
        ops.update(extra_ops)
    plugins = _plugins_at(version)
    return Target(
        name=name, label=label, version=version, family=family,
        opset_range=facts["opset_range"], int64_native=facts["int64_native"],
        bool_cast=facts["bool_cast"], strongly_typed_only=facts["strongly_typed_only"],
        strongly_typed_available=facts["strongly_typed_available"], plugins=plugins,
        parser_registers_plugins=facts["parser_registers_plugins"],
        plugin_namespace_from_domain=facts["plugin_namespace_from_domain"],
        importers=importers, op_restrictions=MappingProxyType(dict(ops)),
        limitations=_limitations_of(importers, ops, facts, plugins),
        notes=tuple(extra_notes),
    )


@functools.lru_cache(maxsize=None)
def _tensorrt(version: tuple[int, int]) -> Target:
    major, minor = version
    name = "trt11" if version == (11, 0) else f"trt{major}.{minor}"
    note = _LINE_NOTES.get(name) or f"{major}.x with the deltas up to {major}.{minor}"
    return _build(name, f"TensorRT {major}.{minor}", version, extra_notes=(note,))


@functools.lru_cache(maxsize=None)
def _rtx() -> Target:
    return _build("trt-rtx", "TensorRT-RTX", _RTX_BASE, family="tensorrt-rtx",
                  extra_ops=_RTX_OPS, extra_notes=(_LINE_NOTES["trt-rtx"],))


@functools.lru_cache(maxsize=None)
def _portable() -> Target:
    members = tuple(_tensorrt(v) for _, v in _LINES) + (_rtx(),)
    plugins: dict[str, tuple[str, ...]] = {}
    for name, versions in members[0].plugins.items():
        common = [v for v in versions if all(v in m.plugins.get(name, ()) for m in members)]
        if common:
            plugins[name] = tuple(common)
    return Target(
        name="portable", label="portable (every profile)", version=None, family="portable",
        opset_range=(max(m.opset_range[0] for m in members),
                     min(m.opset_range[1] for m in members)),
        int64_native=False, bool_cast=False, strongly_typed_only=False,
        strongly_typed_available=False, plugins=MappingProxyType(plugins),
        parser_registers_plugins=False, plugin_namespace_from_domain=False,
        importers=frozenset.intersection(*(m.importers for m in members)),
        op_restrictions=MappingProxyType({}),
        limitations=frozenset().union(*(m.limitations for m in members)),
        notes=("union of every profile's limitations: clean here = parses on all",),
        members=members,
    )


# --------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------

_SPEC = re.compile(r"^(?:tensorrt\s*==\s*|trt\s*|tensorrt\s*)?(\d+)(?:\.(\d+))?(?:\.\d+)*$")
_RTX_SPECS = {"trt-rtx", "rtx", "tensorrt-rtx", "tensorrt_rtx", "trtrtx"}


def _known_names() -> list[str]:
    return [n for n, _ in _LINES] + ["trt10.N (N = 0..16)", "trt-rtx", "portable"]


def _version_target(major: int, minor: int | None, spec: str) -> Target:
    if major == 11:
        return _tensorrt((11, minor or 0))
    if minor is None or major not in _NEWEST_MINOR:
        raise ValueError(f"unknown TensorRT target {spec!r}; known targets: "
                         f"{', '.join(_known_names())}")
    if major == 10:
        return _tensorrt((10, min(minor, _NEWEST_MINOR[10])))
    lines = [v for _, v in _LINES if v[0] == major and v[1] <= minor]
    if not lines:
        raise ValueError(f"no profile for TensorRT {major}.{minor} ({spec!r}); known targets: "
                         f"{', '.join(_known_names())}")
    return _tensorrt(max(lines))


def resolve_target(spec: str | None, installed_version: str | None = None) -> Target:
    """Resolve a target spec to a Target.

    Accepted spellings: ``trt8.6``, ``TRT8.6``, ``8.6``, ``8.6.1.6``, ``tensorrt==8.6``,
    ``trt-rtx`` / ``rtx``, ``portable``. A version maps to the newest release line at or below
    it within its major (8.3 -> trt8.2); every 10.x minor has its own fold of the 10.x deltas
    (``10.13`` -> trt10.13, facts of 10.12), minors above 10.16 use 10.16; 11.x likewise
    (``trt11`` = 11.0).

    Args:
        spec: The target spec, or None.
        installed_version: ``tensorrt.__version__`` if tensorrt is importable; used when spec
            is None.

    Returns:
        The Target; without spec and installed version, ``DEFAULT_TARGET`` (portable).

    Raises:
        ValueError: Unknown spec; the message lists the known targets.
    """
    if spec is None:
        if installed_version is None:
            return resolve_target(DEFAULT_TARGET)
        spec = installed_version
    text = spec.strip().lower()
    if text == "portable":
        return _portable()
    if text in _RTX_SPECS:
        return _rtx()
    m = _SPEC.match(text)
    if not m:
        raise ValueError(f"unknown TensorRT target {spec!r}; known targets: "
                         f"{', '.join(_known_names())}")
    major = int(m.group(1))
    minor = int(m.group(2)) if m.group(2) is not None else None
    return _version_target(major, minor, spec)


class TargetSummary(NamedTuple):
    """One row of ``graphfix targets`` (iterable: name, label, opsets, notes)."""

    name: str
    label: str
    opsets: str
    notes: str


def _listed() -> list[Target]:
    return [_tensorrt(v) for _, v in _LINES] + [_rtx(), _portable()]


def list_targets() -> list[TargetSummary]:
    """Return the release lines, trt-rtx and portable, for ``graphfix targets``."""
    return [TargetSummary(t.name, t.label, f"{t.opset_range[0]}-{t.opset_range[1]}",
                          "; ".join(t.notes)) for t in _listed()]


def targets_needing(limitations: Iterable[str]) -> str:
    """Say on which listed targets any of ``limitations`` is active (for ``graphfix rules``).

    Returns:
        "all", "none", or the comma-separated target names (portable left out).
    """
    keys = set(limitations)
    if not keys:
        return "all"
    listed = [t for t in _listed() if t.family != "portable"]
    names = [t.name for t in listed if keys & t.limitations]
    if len(names) == len(listed):
        return "all"
    return ", ".join(names) or "none"
