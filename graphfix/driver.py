"""Applies a rule set to a graph: match -> check -> rewrite -> splice -> tidy, to a fixpoint.

Matching visits only candidate roots (nodes indexed by op type), and after the first round only
the nodes near what the previous round changed, so a pass costs time in proportion to the
model plus the changes. Every edit goes through the pass's `ir.Journal`; each rewrite leaves a
`Region` (the new nodes, what they read, what they replace) that the verifier checks locally.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx

from graphfix import ir
from graphfix.builder import Builder, PendingNode
from graphfix.context import Context
from graphfix.errors import RuleError
from graphfix.pattern import Match, MatchFailure, OpIndex, Pattern
from graphfix.report import RewriteEntry
from graphfix.rule import Accept, Reject, Rule, call_with_bindings

__all__ = [
    "Region",
    "NearMiss",
    "DriverResult",
    "TensorName",
    "apply_rules",
    "UNORDERED_OUTPUT_OPS",
]

logger = logging.getLogger(__name__)

# Ops whose outputs list rows in an order the spec leaves open: verified as sets of rows.
UNORDERED_OUTPUT_OPS = frozenset({"NonMaxSuppression"})


@dataclass
class Region:
    """What one rewrite put in the graph, for local verification.

    Attributes:
        nodes: the new nodes as they were spliced (NodeProtos, so later edits cannot change them).
        initializers: the initializers the new nodes read.
        inputs: tensors the new nodes read from the rest of the graph.
        compare: (reference tensor, region tensor) pairs that must be equal.
        unordered: reference tensors compared as sets of rows.
        in_subgraph: the rewrite is inside an If/Loop/Scan body (verified end to end instead).
        reference: for rules with their own semantics, the rule and its bindings (tensor names).
    """

    rule: str
    root: str
    nodes: list[onnx.NodeProto]
    initializers: dict[str, ir.Constant]
    inputs: list[str]
    compare: list[tuple[str, str]]
    unordered: frozenset[str] = frozenset()
    in_subgraph: bool = False
    reference: tuple[Rule, dict[str, Any]] | None = None


@dataclass(frozen=True)
class NearMiss:
    """The nearest a rule came to firing: the node, the reason, and how far matching got."""

    rule: str
    node: str
    reason: str
    depth: int


@dataclass
class DriverResult:
    rewrites: list[RewriteEntry] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    near_misses: dict[str, NearMiss] = field(default_factory=dict)
    rounds: int = 0
    converged: bool = True
    still_firing: tuple[str, ...] = ()
    removed: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {"match": 0.0, "rewrite": 0.0, "tidy": 0.0})

    @property
    def added(self) -> int:
        return sum(len(r.added) for r in self.rewrites)


def apply_rules(
    model: ir.Model,
    rules: Sequence[Rule],
    journal: ir.Journal,
    *,
    names: ir.NameRegistry,
    target: Any = None,
    max_rounds: int = 10,
    dry_run: bool = False,
) -> DriverResult:
    """Apply `rules` to the model (and its subgraphs) until nothing fires or `max_rounds`.

    Args:
        model: the model; its graph is edited in place through `journal`.
        rules: the rules, tried in this order on each candidate.
        journal: records every edit (undo/redo).
        names: fresh-name registry of the model.
        target: the TensorRT target handed to checks (`ctx.target`).
        max_rounds: the iteration cap; hitting it is reported with the rules that kept firing.
        dry_run: find and describe matches, change nothing.

    Raises:
        RuleError: a rule raised; the message names the rule and the node.
    """
    applier = _Applier(model, rules, journal, names, target, dry_run)
    result = applier.result
    seeds: dict[int, list[ir.Node]] | None = None
    for round_number in range(1, max_rounds + 1):
        result.rounds = round_number
        fired_rules, seeds = applier.round(seeds)
        if not fired_rules or dry_run:
            break
        if round_number == max_rounds:
            result.converged = False
            result.still_firing = tuple(sorted(fired_rules))
            logger.warning("rules %s still fire after %d rounds", ", ".join(result.still_firing), max_rounds)
    if not dry_run and journal.changed:
        start = time.perf_counter()
        for graph in ir.iter_graphs(model.graph):
            journal.remember_nodes(graph)
        result.removed = ir.remove_dead_nodes(model.graph, journal)
        ir.toposort(model.graph)
        journal.seal()
        result.seconds["tidy"] += time.perf_counter() - start
    return result


class _Applier:
    def __init__(
        self,
        model: ir.Model,
        rules: Sequence[Rule],
        journal: ir.Journal,
        names: ir.NameRegistry,
        target: Any,
        dry_run: bool,
    ):
        self.model = model
        self.rules = list(rules)
        self.journal = journal
        self.names = names
        self.target = target
        self.dry_run = dry_run
        self.result = DriverResult()
        self.patterns = {r.name: _compile(r) for r in self.rules}
        self.depth = max((_pattern_depth(p) for p in self.patterns.values()), default=1)
        self.opset_imports = _opset_imports(model.graph)
        self.shared_constants: dict[int, dict[tuple, ir.Constant]] = {}  # per graph, see Builder

    def round(self, seeds: dict[int, list[ir.Node]] | None) -> tuple[set[str], dict[int, list[ir.Node]]]:
        """One pass over the candidates; returns the rules that fired and the next round's seeds."""
        fired: set[str] = set()
        next_seeds: dict[int, list[ir.Node]] = {}
        for graph in list(ir.iter_graphs(self.model.graph)):
            if seeds is not None and id(graph) not in seeds:
                continue
            scope = _GraphScope(graph, graph is not self.model.graph)
            nearby = None if seeds is None else _downstream(seeds[id(graph)], self.depth)
            index = OpIndex(graph)
            for rule in self.rules:
                pattern = self.patterns[rule.name]
                for node in index.candidates(pattern.root_op_types):
                    if nearby is not None and id(node) not in nearby:
                        continue
                    if scope.is_dead(node):
                        continue
                    added = self.try_rule(rule, pattern, node, scope)
                    if added is not None:
                        fired.add(rule.name)
                        next_seeds.setdefault(id(graph), []).extend(added)
        return fired, next_seeds

    def try_rule(self, rule: Rule, pattern: Pattern, node: ir.Node, scope: _GraphScope) -> list[ir.Node] | None:
        start = time.perf_counter()
        try:
            found = self.match(rule, pattern, node, scope)
        finally:
            self.result.seconds["match"] += time.perf_counter() - start
        if found is None:
            return None
        start = time.perf_counter()
        try:
            return self.rewrite(rule, node, scope, *found)
        finally:
            self.result.seconds["rewrite"] += time.perf_counter() - start

    def match(self, rule: Rule, pattern: Pattern, node: ir.Node, scope: _GraphScope) -> tuple[Match, Context, Mapping[str, Any]] | None:
        """Pattern and check; None (and a near miss recorded) when the rule does not apply."""
        match = self.guard(rule, node, "matching", lambda: pattern.match(
            node,
            graph_nodes=scope.node_ids,
            graph_outputs=scope.output_ids,
            opset=self.model.opset,
            exclusive=rule.exclusive,
        ))
        if isinstance(match, MatchFailure):
            self.near_miss(rule, match.node, match.reason, match.depth)
            return None
        ctx = Context(
            root=node,
            nodes=match.nodes,
            graph=scope.graph,
            opset=self.model.opset,
            opset_imports=self.opset_imports,
            target=self.target,
            options={**rule.option_defaults, **rule.options},
            in_subgraph=scope.in_subgraph,
            graph_node_ids=scope.node_ids,
        )
        values: Mapping[str, Any] = {}
        if rule.check_fn is not None:
            verdict = self.guard(rule, node, "checking", lambda: call_with_bindings(rule.check_fn, ctx, match.bindings))
            if isinstance(verdict, Reject) or verdict is False:
                reason = verdict.reason if isinstance(verdict, Reject) else "check returned False"
                where = verdict.where if isinstance(verdict, Reject) and verdict.where else node.name
                quiet = isinstance(verdict, Reject) and verdict.quiet
                self.near_miss(rule, where, reason, 0 if quiet else pattern.size + 1)
                return None
            if isinstance(verdict, Accept):
                values = verdict.values
        return match, ctx, values

    def rewrite(self, rule: Rule, node: ir.Node, scope: _GraphScope, match: Match, ctx: Context, values: Mapping[str, Any]) -> list[ir.Node]:
        """Build the replacement and splice it in (or only record it, in a dry run)."""
        shared = self.shared_constants.setdefault(id(scope.graph), {})
        builder = Builder(rule.name, node.name, self.names, self.model.opset, ctx, shared)
        arguments = {**match.bindings, **values, "ctx": ctx}
        replacement = self.guard(rule, node, "rewriting", lambda: call_with_bindings(rule.rewrite_fn, builder, arguments))
        record = RewriteEntry(
            rule=rule.name,
            root=node.name,
            root_op=node.op,
            matched=tuple(n.name for n in match.nodes),
            added=tuple(p.name for p in builder.nodes),
            added_ops=tuple(p.op for p in builder.nodes),
        )
        self.result.rewrites.append(record)
        scope.dead.add(id(node))
        if self.dry_run:
            return []
        splice = self.guard(
            rule, node, "splicing",
            lambda: _Splice(self.journal, scope, self.names, node, builder.nodes, replacement, rule.has_reference),
        )
        self.result.regions.append(splice.region(rule, {**match.bindings, **values}, scope.in_subgraph))
        return splice.new_nodes

    def guard(self, rule: Rule, node: ir.Node, stage: str, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except RuleError:
            raise
        except Exception as error:  # a user's rule may raise anything; we name it
            raise RuleError(
                f"rule {rule.name} raised {type(error).__name__} while {stage} node "
                f"{node.name!r} ({node.op}): {error}"
            ) from error

    def near_miss(self, rule: Rule, node: str, reason: str, depth: int) -> None:
        best = self.result.near_misses.get(rule.name)
        if best is None or depth > best.depth:  # the first of equally near misses stays
            self.result.near_misses[rule.name] = NearMiss(rule.name, node, reason, depth)


class _GraphScope:
    """One graph being rewritten: membership and output sets kept current as nodes are added."""

    def __init__(self, graph: ir.Graph, in_subgraph: bool):
        self.graph = graph
        self.in_subgraph = in_subgraph
        self.node_ids = {id(n) for n in graph.nodes}
        self.output_ids = {id(t) for t in graph.outputs}
        self.dead: set[int] = set()

    def is_dead(self, node: ir.Node) -> bool:
        if id(node) in self.dead or not node.outputs:
            return True
        return not any(t.outputs or id(t) in self.output_ids for t in node.outputs)


def _compile(rule: Rule) -> Pattern:
    try:
        return rule.build_pattern()
    except Exception as error:  # a user's pattern function may raise anything; we name it
        raise RuleError(f"rule {rule.name}: its pattern function raised {type(error).__name__}: {error}") from error


def _pattern_depth(pattern: Pattern) -> int:
    from graphfix.pattern import NodeOutput

    def depth(node: Any, seen: frozenset[int]) -> int:
        if id(node) in seen:
            return 0
        inner = [depth(i.node, seen | {id(node)}) for i in node.inputs if isinstance(i, NodeOutput)]
        return 1 + max(inner, default=0)

    return depth(pattern.root, frozenset())


def _downstream(seeds: Sequence[ir.Node], depth: int) -> set[int]:
    """Nodes within `depth` consumer hops of `seeds` (where a new match may now be rooted)."""
    reached = {id(n) for n in seeds}
    frontier = list(seeds)
    for _ in range(depth):
        following = []
        for node in frontier:
            for tensor in node.outputs:
                for consumer in tensor.outputs:
                    if id(consumer) not in reached:
                        reached.add(id(consumer))
                        following.append(consumer)
        frontier = following
    return reached


def _opset_imports(graph: ir.Graph) -> list[onnx.OperatorSetIdProto]:
    domains = dict(getattr(graph, "import_domains", None) and [(o.domain, o.version) for o in graph.import_domains] or [])
    domains[""] = int(graph.opset)
    return [onnx.helper.make_opsetid(domain, version) for domain, version in sorted(domains.items())]


class _Splice:
    """Puts a rewrite's nodes in place of the matched root, through the journal."""

    def __init__(
        self,
        journal: ir.Journal,
        scope: _GraphScope,
        names: ir.NameRegistry,
        root: ir.Node,
        pending: list[PendingNode],
        replacement: Any,
        changes_shapes: bool = False,
    ):
        self.journal = journal
        self.scope = scope
        self.names = names
        # A rule with its own reference semantics may change output shapes on purpose.
        self.changes_shapes = changes_shapes
        self.root = root
        self.pending = pending
        self.compare: list[tuple[str, str]] = []
        self.new_nodes: list[ir.Node] = []
        originals = list(root.outputs)
        replacements = self._aligned(replacement, originals)
        produced = {id(t): p for p in pending for t in p.outputs}
        journal.detach(root)
        for subgraph in root.subgraphs(recursive=True):
            for inner in list(subgraph.nodes):
                journal.detach(inner)
        self.rewired: list[tuple[ir.Tensor, ir.Tensor]] = []
        taken: set[int] = set()
        for original, new in zip(originals, replacements):
            if new is None or original.is_empty():
                continue
            if id(new) in produced and id(new) not in taken:
                taken.add(id(new))
                self._rename(new, original)
                self.compare.append((original.name, original.name))
            elif id(original) in scope.output_ids or id(new) in taken:
                self._identity(new, original)
                self.compare.append((original.name, original.name))
            else:
                self.rewired.append((original, new))
                self.compare.append((original.name, new.name))
        self._attach()
        for original, new in self.rewired:
            for consumer in list(original.outputs):
                for index, tensor in enumerate(consumer.inputs):
                    if tensor is original:
                        journal.set_input(consumer, index, new)

    def _aligned(self, replacement: Any, originals: list[ir.Tensor]) -> list[ir.Tensor | None]:
        values = list(replacement) if isinstance(replacement, (tuple, list)) else [replacement]
        if len(values) != len(originals):
            raise TypeError(
                f"the rewrite returned {len(values)} value(s) for a node with {len(originals)} output(s)"
            )
        for original, new in zip(originals, values):
            if new is original:
                raise TypeError("the rewrite returned the matched node's own output")
            if new is None and not original.is_empty() and (original.outputs or id(original) in self.scope.output_ids):
                raise TypeError(f"the rewrite returned None for output {original.name}, which is used")
            if new is not None and not isinstance(new, ir.Tensor):
                raise TypeError(f"the rewrite returned {type(new).__name__}, not a tensor")
        return values

    def _rename(self, new: ir.Tensor, original: ir.Tensor) -> None:
        """Make the new producer produce `original` itself, keeping its name and type (the new
        tensor's where only it is known, or where the recorded shape contradicts it)."""
        if (original.dtype is None and new.dtype is not None) or self.changes_shapes:
            original.dtype, original.shape = new.dtype or original.dtype, new.shape
        elif id(original) in self.scope.output_ids:
            original.shape = _reconciled(original.shape, new.shape)  # the model's interface
        else:
            original.shape = new.shape if new.shape is not None else original.shape
        for node in self.pending:
            node.outputs = [original if t is new else t for t in node.outputs]
            node.inputs = [original if t is new else t for t in node.inputs]

    def _identity(self, new: ir.Tensor, original: ir.Tensor) -> None:
        prefix = self.pending[0].name if self.pending else self.root.name
        name = self.names.fresh(f"{prefix}/identity")
        self.pending.append(PendingNode("Identity", "", name, {}, [new], [original]))

    def _attach(self) -> None:
        for spec in self.pending:
            node = ir.Node(op=spec.op, name=spec.name, attrs=dict(spec.attrs), domain=spec.domain or None)
            self.journal.attach(node, spec.inputs, spec.outputs)
            self.journal.append_node(self.scope.graph, node)
            self.scope.node_ids.add(id(node))
            self.new_nodes.append(node)

    def region(self, rule: Rule, bindings: Mapping[str, Any], in_subgraph: bool) -> Region:
        """The region record; `bindings` are the match's and the check's accepted values."""
        produced = {t.name for n in self.new_nodes for t in n.outputs}
        initializers: dict[str, ir.Constant] = {}
        inputs: dict[str, None] = {}
        for node in self.new_nodes:
            for tensor in list(node.inputs) + ir.free_tensors(node):
                if tensor.is_empty() or tensor.name in produced:
                    continue
                if isinstance(tensor, ir.Constant):
                    initializers[tensor.name] = tensor
                else:
                    inputs[tensor.name] = None
        for _, new in self.rewired:
            if isinstance(new, ir.Constant):
                initializers[new.name] = new
            elif new.name not in produced:
                inputs[new.name] = None
        unordered = frozenset(
            original for original, _ in self.compare if self.root.op in UNORDERED_OUTPUT_OPS
        )
        reference = None
        if rule.has_reference:
            reference = (rule, {k: _binding_name(v) for k, v in bindings.items() if not isinstance(v, ir.Node)})
            for value in reference[1].values():
                for name in value if isinstance(value, list) else [value]:
                    if isinstance(name, TensorName) and name not in produced:
                        inputs[str(name)] = None
        return Region(
            rule=rule.name,
            root=self.root.name,
            nodes=[ir.node_to_proto(n) for n in self.new_nodes],
            initializers=initializers,
            inputs=list(inputs),
            compare=self.compare,
            unordered=unordered,
            in_subgraph=in_subgraph,
            reference=reference,
        )


def _reconciled(recorded: Any, inferred: Any) -> Any:
    """The recorded shape, with the inferred dims where the two contradict each other.

    Shapes recorded at load come from the exporter or from ONNX shape inference, which is
    sometimes wrong (Einsum takes a broadcast size 1 from the first operand); the replacement's
    inferred dims are never worse: a static dim that differs, or a symbolic dim against a
    static one, wins. A rank mismatch keeps whatever the inference says.
    """
    if inferred is None:
        return recorded
    if recorded is None or len(recorded) != len(inferred):
        return list(inferred)
    merged = []
    for old, new in zip(recorded, inferred):
        contradicts = isinstance(old, int) and new is not None and new != old
        merged.append(new if contradicts else old)
    return merged


class TensorName(str):
    """A binding that named a tensor (as opposed to an attribute string)."""


def _binding_name(value: Any) -> Any:
    if isinstance(value, ir.Constant):
        return value
    if isinstance(value, ir.Tensor):
        return TensorName(value.name)
    if isinstance(value, list):
        return [_binding_name(v) for v in value]
    return value
