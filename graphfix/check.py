"""`graphfix check`: what a TensorRT target cannot parse or silently mis-computes, and the rule that fixes it.

`check` is a pure function of (model, target, rules): it reads the working graph (main graph and
every If/Loop/Scan body), builds the `NodeFacts` that `graphfix.targets` evaluates, adds the
model-level facts (opset, INT64 weights outside INT32) and names, for each finding, the rules
whose limitation keys cover it. `with_parser` joins the verdict of a real TensorRT parser, when
one is installed, to an offline report.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from graphfix import ir
from graphfix.rule import Rule
from graphfix.targets import Finding, InputFacts, NodeFacts, Target

__all__ = [
    "ERROR_KINDS",
    "KIND_LABELS",
    "CheckFinding",
    "CheckReport",
    "ParserVerdict",
    "check",
    "int64_out_of_range",
    "node_facts",
    "describe_node",
    "with_parser",
]

# Kinds that make a model unclean. A "plugin" finding parses (the node resolves by name to a
# standard TensorRT plugin); it is reported so the application knows to load the plugin library.
ERROR_KINDS = frozenset({"unsupported", "silent"})
KIND_LABELS: Mapping[str, str] = {"unsupported": "unsupported", "silent": "silent mismatch", "plugin": "plugin"}

# Weights up to this many elements travel with their InputFacts (TopK's K, Reduce axes...);
# larger ones are never read by a restriction and are not copied.
_VALUE_LIMIT = 64
_INT32 = np.iinfo(np.int32)


@dataclass(frozen=True)
class CheckFinding:
    """A target finding joined to the rules that fix it.

    Attributes:
        node: Node name ("(model)" for a model-level fact, the tensor name for an INT64 weight).
        op_type: The node's op type ("(model)", "(initializer)" for model-level facts).
        kind: "unsupported", "silent" (parsed, computes something else) or "plugin".
        limitation: The key of graphfix.targets.LIMITATIONS it runs into.
        reason: What the node breaks, concretely.
        advice: What to do when no rule fixes it.
        rules: Every rule whose limitations contain `limitation` (opt-in rules included).
        fix: One line for the table: the rules, "opt-in: --enable NAME", or "no rule".
        in_subgraph: The node is inside an If/Loop/Scan body.
    """

    node: str
    op_type: str
    kind: str
    limitation: str
    reason: str
    advice: str
    rules: tuple[str, ...] = ()
    fix: str = "no rule"
    in_subgraph: bool = False

    @property
    def is_error(self) -> bool:
        return self.kind in ERROR_KINDS

    def remaining(self) -> dict[str, Any]:
        """The entry of ApplyReport.remaining: node, op_type, kind, reason, rule."""
        return {"node": self.node, "op_type": self.op_type, "kind": self.kind, "reason": self.reason, "rule": self.fix}


@dataclass(frozen=True)
class ParserVerdict:
    """What an installed TensorRT parser said about the model file.

    Attributes:
        version: tensorrt.__version__.
        target: The graphfix target that version resolves to.
        errors: (node, message) pairs; empty when the parser took the model.
        compared: The installed version is the checked target, so `disagreements` was computed.
        disagreements: Where the parser and the offline profile disagree, one sentence each.
    """

    version: str
    target: str
    errors: tuple[tuple[str, str], ...]
    compared: bool
    disagreements: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckReport:
    """The findings of one model on one target, grouped by op.

    Attributes:
        model: Path of the model ("<memory>" when checked in memory).
        target: Target name ("trt8.6").
        target_label: Its human label ("TensorRT 8.6").
        nodes: Nodes checked (subgraphs included).
        findings: Model-level findings first, then by op type, in graph order within an op.
        parser: The installed parser's verdict, when tensorrt imports.
    """

    model: str
    target: str
    target_label: str
    nodes: int
    findings: tuple[CheckFinding, ...]
    parser: ParserVerdict | None = None

    @property
    def errors(self) -> tuple[CheckFinding, ...]:
        """Unsupported nodes and silent mismatches (plugin notes left out)."""
        return tuple(f for f in self.findings if f.is_error)

    @property
    def clean(self) -> bool:
        """No error finding, and no disagreement with a parser of the same version."""
        return not self.errors and not (self.parser and self.parser.disagreements)

    @property
    def counts(self) -> dict[str, int]:
        """Findings per kind (every kind present, zeros included)."""
        return {kind: sum(1 for f in self.findings if f.kind == kind) for kind in KIND_LABELS}

    @property
    def by_op(self) -> dict[str, tuple[CheckFinding, ...]]:
        """Findings grouped by op type, in the order of `findings`."""
        groups: dict[str, list[CheckFinding]] = {}
        for finding in self.findings:
            groups.setdefault(finding.op_type, []).append(finding)
        return {op: tuple(found) for op, found in groups.items()}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of `graphfix check --json`."""
        return {
            "model": self.model,
            "target": self.target,
            "target_label": self.target_label,
            "clean": self.clean,
            "nodes": self.nodes,
            "counts": self.counts,
            "ops": {op: [asdict(f) for f in found] for op, found in self.by_op.items()},
            "parser": asdict(self.parser) if self.parser else None,
        }


# ----------------------------------------------------------------------------- facts


def node_facts(model: ir.Model) -> Iterator[NodeFacts]:
    """What TensorRT's parser sees of each node: main graph, then every subgraph body."""
    for node, opset, in_subgraph in _walk(model):
        yield describe_node(node, opset, in_subgraph)


def _walk(model: ir.Model) -> Iterator[tuple[ir.Node, int, bool]]:
    """Every node with its domain's opset and whether it is in a subgraph body."""
    opsets = _opsets(model)
    for graph in ir.iter_graphs(model.graph):
        in_subgraph = graph is not model.graph
        for node in graph.nodes:
            yield node, opsets.get(node.domain or "", 1), in_subgraph


def _opsets(model: ir.Model) -> dict[str, int]:
    """Opset per domain ("" for the default domain, whatever its spelling)."""
    declared = {("" if o.domain == "ai.onnx" else o.domain): int(o.version) for o in model.source.opset_import}
    return {**declared, "": model.opset}


def describe_node(node: ir.Node, opset: int, in_subgraph: bool = False) -> NodeFacts:
    """A node as graphfix.targets describes nodes (what `Target.evaluate` reads)."""
    return NodeFacts(
        name=_label(node),
        op_type=node.op,
        domain="" if node.domain in (None, "ai.onnx") else node.domain,
        opset=opset,
        attrs=_plain_attrs(node.attrs),
        inputs=tuple(_input_facts(k, t) for k, t in enumerate(node.inputs)),
        output_dtypes=tuple(ir.dtype_name(t) for t in node.outputs),
        in_subgraph=in_subgraph,
        output_names=tuple("" if ir.is_empty(t) else t.name for t in node.outputs),
    )


def _label(node: ir.Node) -> str:
    """The node's name; an unnamed node (valid ONNX) is named by its op and first output."""
    if node.name:
        return node.name
    output = next((t.name for t in node.outputs if not ir.is_empty(t)), "")
    return f"<{node.op} -> {output}>"


def _plain_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes as Python values. Subgraphs and tensor values are left out: no restriction
    reads them (a Constant node's value reaches its consumers' InputFacts)."""
    plain = {}
    for name, value in attrs.items():
        if isinstance(value, (ir.Graph, ir.Tensor)):
            continue
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, (list, tuple)):
            value = [v.decode() if isinstance(v, bytes) else v for v in value]
        plain[name] = value
    return plain


def _input_facts(index: int, tensor: ir.Tensor) -> InputFacts:
    if ir.is_empty(tensor):
        return InputFacts(index=index, name="")
    dims = ir.shape(tensor)
    weights, value = _weights(tensor)
    node = ir.producer(tensor)
    return InputFacts(
        index=index,
        name=tensor.name,
        dtype=ir.dtype_name(tensor),
        rank=None if dims is None else len(dims),
        shape=dims,
        is_weights=weights,
        producer=None if node is None else _label(node),
        producer_op=None if node is None else node.op,
        value=value,
    )


def _weights(tensor: ir.Tensor) -> tuple[bool, np.ndarray | None]:
    """Whether the parser sees weights, and their value when small."""
    if isinstance(tensor, ir.Constant):
        # An initializer: weights by definition; its values are read only when small, so large
        # weights are not materialised.
        small = _elements(tensor.shape) <= _VALUE_LIMIT
        return True, ir.literal_value(tensor) if small else None
    value = ir.literal_value(tensor)  # a Constant node's output (already in memory)
    if value is None:
        return False, None
    return True, value if value.size <= _VALUE_LIMIT else None


def _elements(dims: Sequence[Any] | None) -> int:
    if dims is None or not all(isinstance(d, (int, np.integer)) for d in dims):
        return _VALUE_LIMIT + 1
    return int(np.prod(dims, dtype=np.int64))


def int64_out_of_range(model: ir.Model) -> list[tuple[str, list[str]]]:
    """INT64 weights (initializers and Constant outputs) holding values outside INT32.

    Returns:
        (tensor name, ["<op> <node>" of each consumer]) per such tensor, in graph order.
    """
    found: dict[str, list[str]] = {}
    for graph in ir.iter_graphs(model.graph):
        for node in graph.nodes:
            for tensor in node.inputs:
                if ir.is_empty(tensor) or tensor.name in found or ir.dtype_name(tensor) != "int64":
                    continue
                value = ir.literal_value(tensor)
                if value is not None and value.size and (value.min() < _INT32.min or value.max() > _INT32.max):
                    found[tensor.name] = [f"{c.op} {_label(c)}" for c in ir.consumers(tensor)]
    return list(found.items())


# ----------------------------------------------------------------------------- check


def check(model: ir.Model, target: Target, rules: Iterable[Rule] = ()) -> CheckReport:
    """Evaluate every node of `model` and its model-level facts against `target`.

    Args:
        model: The working model (not modified).
        target: The target profile (graphfix.targets.resolve_target).
        rules: The rules that may fix findings (e.g. `load_rules().rules.values()`).

    Returns:
        The frozen report; `report.clean` says whether the target parses the model as ONNX means it.
    """
    rules = tuple(rules)
    joined: list[CheckFinding] = []
    nodes = 0
    concerned: dict[str, bool] = {}
    for node, opset, in_subgraph in _walk(model):
        nodes += 1
        if node.op not in concerned:
            concerned[node.op] = target.concerns(node.op)
        if concerned[node.op]:  # describing a node is most of the cost; most ops never flag
            facts = describe_node(node, opset, in_subgraph)
            joined += [_join(f, rules, in_subgraph) for f in target.evaluate(facts)]
    model_level = target.evaluate_model(model.opset, int64_out_of_range(model))
    findings = [_join(f, rules, False) for f in model_level] + _grouped(joined)
    return CheckReport(
        model=str(model.path) if model.path else "<memory>",
        target=target.name,
        target_label=target.label,
        nodes=nodes,
        findings=tuple(findings),
    )


def _join(finding: Finding, rules: Sequence[Rule], in_subgraph: bool) -> CheckFinding:
    fixing = [r for r in rules if finding.limitation in r.limitations]
    names = sorted(r.name for r in fixing if not r.opt_in)
    opt_in = sorted(r.name for r in fixing if r.opt_in)
    fix = ", ".join(names + [f"opt-in: --enable {n}" for n in opt_in]) or "no rule"
    return CheckFinding(
        node=finding.node,
        op_type=finding.op_type,
        kind=finding.kind,
        limitation=finding.limitation,
        reason=finding.reason,
        advice=finding.advice,
        rules=tuple(names + opt_in),
        fix=fix,
        in_subgraph=in_subgraph,
    )


def _grouped(findings: list[CheckFinding]) -> list[CheckFinding]:
    """By op type (alphabetical), keeping graph order within an op (a stable sort)."""
    return sorted(findings, key=lambda f: f.op_type.casefold())


# ----------------------------------------------------------------------------- a real parser

_NODE_INDEX = re.compile(r"^node #(\d+)$")


def with_parser(report: CheckReport, model: ir.Model, version: str, installed_target: str, errors: Sequence[tuple[str, str]]) -> CheckReport:
    """Join an installed parser's verdict (trt.parse_check) to an offline report.

    The parser stops at the first node it cannot import, so only two disagreements are
    certain: it refused a node the profile found nothing wrong with, or it took a model the
    profile says it refuses. Silent mismatches are invisible to it by nature.

    Args:
        report: The offline report of `model`.
        model: The checked model, as loaded (older parsers name a node by its index in the
            file's main graph: "node #12").
        version: tensorrt.__version__.
        installed_target: The target that version resolves to; disagreements are computed only
            when it is the report's target.
        errors: (node, message) pairs from trt.parse_check.
    """
    compared = installed_target == report.target
    main_nodes = [_label(node) for node in model.graph.nodes]
    named = tuple((_node_name(node, main_nodes), message) for node, message in errors)
    verdict = ParserVerdict(version, installed_target, named, compared, _disagreements(report, named) if compared else ())
    return replace(report, parser=verdict)


def _node_name(where: str, main_nodes: Sequence[str]) -> str:
    match = _NODE_INDEX.match(where)
    if match and int(match.group(1)) < len(main_nodes):
        return main_nodes[int(match.group(1))]
    return where


def _disagreements(report: CheckReport, errors: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    refused = {f.node for f in report.findings if f.kind == "unsupported"}
    if not errors:
        if not refused:
            return ()
        return (f"the parser took the model; the profile expected it to refuse {', '.join(sorted(refused))}",)
    # "subgraph k" rows (supports_model_v2) summarise node ranges already reported by name.
    return tuple(
        f"the parser refused {node} ({message}); the profile found nothing unsupported there"
        for node, message in errors
        if node not in refused and not node.startswith("subgraph ")
    )
