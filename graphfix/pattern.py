"""The pattern language: what a rule looks for in a graph, and the matcher that finds it.

A pattern is written as a function of a builder `op` and variables, in the style of
onnxscript's rewriter:

    def pattern(op, x, lo, hi):
        return op.Clip(x, lo.optional(), hi.optional())

Variables match any tensor and bind it by name; `.constant()`, `.initializer()`, `.where()`,
`.dtype()` and `.optional()` constrain them. A variable given as an attribute binds the
attribute's value (the schema default when the node omits it). Op types can be a set
(`op.node({"ReduceMax", "ReduceMin"}, x)`) or any op (`op.node(None, x)`); `op.domain("mmdeploy")`
matches custom domains; `variadic("parts")` binds the remaining inputs as a list. Inputs of
commutative ops (Add, Mul, ...) match in either order. This module knows nothing about rules.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from graphfix import ir

__all__ = [
    "Var",
    "Variadic",
    "variadic",
    "NodePattern",
    "NodeOutput",
    "PatternBuilder",
    "Pattern",
    "Match",
    "MatchFailure",
    "OpIndex",
    "COMMUTATIVE_OPS",
]

COMMUTATIVE_OPS = frozenset(
    {"Add", "Mul", "Max", "Min", "Sum", "Mean", "And", "Or", "Xor", "Equal", "BitwiseAnd",
     "BitwiseOr", "BitwiseXor"}
)
_DEFAULT_DOMAINS = ("", "ai.onnx")


# ----------------------------------------------------------------------------- pattern objects


@dataclass(frozen=True)
class Var:
    """A tensor variable: matches a tensor (or, as an attribute, a value) and binds it by name."""

    name: str
    is_optional: bool = False
    must_be_weights: bool = False
    must_be_initializer: bool = False
    dtypes: frozenset[str] | None = None
    predicates: tuple[Callable[[Any], bool], ...] = ()
    value_predicates: tuple[Callable[[np.ndarray], bool], ...] = ()

    def optional(self) -> Var:
        """Also match an omitted optional input (binds None)."""
        return replace(self, is_optional=True)

    def constant(self, value: Callable[[np.ndarray], bool] | Any = None) -> Var:
        """Only weights: an initializer or a Constant node's output; `value` checks the array."""
        var = replace(self, must_be_weights=True)
        if value is None:
            return var
        check = value if callable(value) else _equals(value)
        return replace(var, value_predicates=var.value_predicates + (check,))

    def initializer(self) -> Var:
        """Only a graph initializer (not a Constant node's output)."""
        return replace(self, must_be_weights=True, must_be_initializer=True)

    def dtype(self, *names: str) -> Var:
        """Only tensors whose element type is one of `names` ('float16', 'int64', ...)."""
        return replace(self, dtypes=frozenset(names))

    def where(self, predicate: Callable[[Any], bool]) -> Var:
        """Only tensors for which `predicate(tensor)` holds."""
        return replace(self, predicates=self.predicates + (predicate,))


def _equals(expected: Any) -> Callable[[np.ndarray], bool]:
    expected = np.asarray(expected)

    def check(value: np.ndarray) -> bool:
        return value.shape == expected.shape and bool(np.all(value == expected))

    return check


@dataclass(frozen=True)
class Variadic:
    """The remaining inputs of a node, bound as a list under `name` (at least `min_count`)."""

    name: str
    min_count: int = 0


def variadic(name: str, min_count: int = 0) -> Variadic:
    return Variadic(name, min_count)


@dataclass(eq=False)
class NodePattern:
    """A node to match: op types (None = any), domain, inputs, attributes, capture name."""

    op_types: frozenset[str] | None
    domain: str | frozenset[str]
    inputs: tuple[Any, ...]
    attrs: Mapping[str, Any]
    capture: str | None = None
    commutative: bool = False
    allow_extra_inputs: bool = False
    num_outputs: int = 1

    def describe(self) -> str:
        ops = "*" if self.op_types is None else "|".join(sorted(self.op_types))
        domains = _domains(self.domain)
        return ops if domains == _DEFAULT_DOMAINS else f"{'|'.join(sorted(domains))}::{ops}"


@dataclass(frozen=True, eq=False)
class NodeOutput:
    """Output `index` of a node pattern: what an input sub-pattern refers to."""

    node: NodePattern
    index: int = 0


class PatternBuilder:
    """The `op` of pattern functions: `op.Add(a, b)`, `op.node({...}, x)`, `op.domain("d").Op(x)`."""

    def __init__(self, domain: str | frozenset[str] = ""):
        self._domain = domain

    def domain(self, name: str | Iterable[str]) -> PatternBuilder:
        """Patterns in another domain, or in any of several (mmcv ops come as mmdeploy or mmcv)."""
        return PatternBuilder(name if isinstance(name, str) else frozenset(name))

    def node(
        self,
        op_types: str | Iterable[str] | None,
        *inputs: Any,
        _domain: str | Iterable[str] | None = None,
        _outputs: int = 1,
        _capture: str | None = None,
        _allow_extra_inputs: bool = False,
        _commutative: bool | None = None,
        **attrs: Any,
    ) -> NodeOutput | tuple[NodeOutput, ...]:
        """A node pattern; returns its output (or a tuple of `_outputs` outputs)."""
        if op_types is None or op_types == "*":
            ops = None
        elif isinstance(op_types, str):
            ops = frozenset({op_types})
        else:
            ops = frozenset(op_types)
        for value in inputs[:-1]:
            if isinstance(value, Variadic):
                raise ValueError("variadic() must be the last input of a pattern node")
        commutative = _commutative
        if commutative is None:
            commutative = ops is not None and ops <= COMMUTATIVE_OPS and len(inputs) == 2
        pattern = NodePattern(
            op_types=ops,
            domain=self._domain if _domain is None else (_domain if isinstance(_domain, str) else frozenset(_domain)),
            inputs=tuple(inputs),
            attrs=dict(attrs),
            capture=_capture,
            commutative=commutative,
            allow_extra_inputs=_allow_extra_inputs,
            num_outputs=_outputs,
        )
        if _outputs == 1:
            return NodeOutput(pattern, 0)
        return tuple(NodeOutput(pattern, i) for i in range(_outputs))

    def __getattr__(self, op_type: str) -> Callable[..., Any]:
        if op_type.startswith("_"):
            raise AttributeError(op_type)
        return lambda *inputs, **attrs: self.node(op_type, *inputs, **attrs)


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class MatchFailure:
    """Why a candidate did not match: `depth` ranks near misses (deeper = nearer)."""

    reason: str
    node: str
    depth: int

    def __bool__(self) -> bool:
        return False


@dataclass
class Match:
    """A successful match: the root node, every matched node, and the bindings by name."""

    root: ir.Node
    nodes: list[ir.Node]
    bindings: dict[str, Any] = field(default_factory=dict)


class _Failed(Exception):
    def __init__(self, failure: MatchFailure):
        self.failure = failure


# ----------------------------------------------------------------------------- the pattern


class Pattern:
    """A compiled pattern: the root node pattern and the outputs the pattern function returned."""

    def __init__(self, outputs: NodeOutput | Sequence[NodeOutput]):
        outs = (outputs,) if isinstance(outputs, NodeOutput) else tuple(outputs)
        if not outs or not all(isinstance(o, NodeOutput) for o in outs):
            raise TypeError("a pattern function must return a node pattern output (or a tuple of them)")
        roots = {id(o.node) for o in outs}
        if len(roots) != 1:
            raise TypeError("all outputs a pattern returns must come from the same (root) node")
        self.root = outs[0].node
        self.size = sum(1 for _ in _walk(self.root))

    @property
    def root_op_types(self) -> frozenset[str] | None:
        return self.root.op_types

    def match(
        self,
        node: ir.Node,
        *,
        graph_nodes: set[int],
        graph_outputs: set[int],
        opset: int,
        exclusive: bool = True,
    ) -> Match | MatchFailure:
        """Match the pattern with `node` as its root.

        Args:
            node: the candidate root.
            graph_nodes: ids of the nodes of the graph being matched (producers elsewhere,
                e.g. in an outer graph, do not match sub-patterns).
            graph_outputs: ids of the graph's output tensors.
            opset: default-domain opset, for attribute defaults.
            exclusive: require that interior (non-root) nodes have no consumers outside the match.
        """
        state = _State(graph_nodes, opset)
        try:
            state.match_node(self.root, node, depth=0)
            if exclusive:
                state.check_exclusive(node, graph_outputs)
        except _Failed as failed:
            return failed.failure
        return Match(root=node, nodes=list(state.nodes.values()), bindings=state.bindings)


def _walk(pattern: NodePattern) -> Iterator[NodePattern]:
    seen: set[int] = set()
    stack = [pattern]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(i.node for i in current.inputs if isinstance(i, NodeOutput))


class _State:
    def __init__(self, graph_nodes: set[int], opset: int):
        self.graph_nodes = graph_nodes
        self.opset = opset
        self.bindings: dict[str, Any] = {}
        self.nodes: dict[int, ir.Node] = {}  # id(pattern) -> node

    # -- snapshots for the commutative alternatives
    def save(self) -> tuple[dict[str, Any], dict[int, ir.Node]]:
        return dict(self.bindings), dict(self.nodes)

    def restore(self, saved: tuple[dict[str, Any], dict[int, ir.Node]]) -> None:
        self.bindings, self.nodes = dict(saved[0]), dict(saved[1])

    def fail(self, reason: str, node: ir.Node, depth: int) -> None:
        raise _Failed(MatchFailure(reason, node.name, depth))

    def bind(self, name: str, value: Any, node: ir.Node, depth: int) -> None:
        if name in self.bindings and not _same(self.bindings[name], value):
            self.fail(f"{name!r} is bound twice to different values", node, depth)
        self.bindings[name] = value

    def match_node(self, pattern: NodePattern, node: ir.Node, depth: int) -> None:
        bound = self.nodes.get(id(pattern))
        if bound is not None:
            if bound is not node:
                self.fail(f"{pattern.describe()} pattern must be the same node", node, depth)
            return
        if pattern.op_types is not None and node.op not in pattern.op_types:
            self.fail(f"expected {pattern.describe()}, found {node.op} ({node.name})", node, depth)
        if (node.domain or "") not in _domains(pattern.domain):
            self.fail(f"{node.name} is in domain {node.domain!r}, expected {pattern.describe()}", node, depth)
        if node in self.nodes.values():
            self.fail(f"{node.name} would match two pattern nodes", node, depth)
        self.nodes[id(pattern)] = node
        self.match_attrs(pattern, node, depth)
        if pattern.capture:
            self.bind(pattern.capture, node, node, depth)
        if pattern.commutative:
            self.match_commutative(pattern, node, depth)
        else:
            self.match_inputs(pattern.inputs, pattern, node, depth)

    def match_attrs(self, pattern: NodePattern, node: ir.Node, depth: int) -> None:
        for name, spec in pattern.attrs.items():
            value = _plain(ir.attribute(node, name, self.opset))
            if isinstance(spec, Var):
                self.bind(spec.name, value, node, depth)
            elif callable(spec):
                if value is None or not spec(value):
                    self.fail(f"attribute {name}={value!r} of {node.name} is rejected", node, depth)
            elif not _same(value, _plain(spec)):
                self.fail(f"attribute {name} of {node.name} is {value!r}, expected {spec!r}", node, depth)

    def match_commutative(self, pattern: NodePattern, node: ir.Node, depth: int) -> None:
        saved = self.save()
        try:
            self.match_inputs(pattern.inputs, pattern, node, depth)
            return
        except _Failed as first:
            self.restore(saved)
            swapped = (pattern.inputs[1], pattern.inputs[0])
            try:
                self.match_inputs(swapped, pattern, node, depth)
            except _Failed as second:
                raise max(first, second, key=lambda f: f.failure.depth) from None

    def match_inputs(
        self, specs: Sequence[Any], pattern: NodePattern, node: ir.Node, depth: int
    ) -> None:
        actual = [None if ir.is_empty(t) else t for t in node.inputs]
        while actual and actual[-1] is None:
            actual.pop()
        fixed = list(specs)
        rest: Variadic | None = fixed.pop() if fixed and isinstance(fixed[-1], Variadic) else None
        if rest is None and len(actual) > len(fixed) and not pattern.allow_extra_inputs:
            self.fail(f"{node.name} has {len(actual)} inputs, the pattern {len(fixed)}", node, depth)
        for index, spec in enumerate(fixed):
            tensor = actual[index] if index < len(actual) else None
            self.match_value(spec, tensor, node, index, depth + 1)
        if rest is not None:
            remaining = actual[len(fixed):]
            if len(remaining) < rest.min_count:
                self.fail(f"{node.name} has fewer than {rest.min_count} variadic inputs", node, depth)
            self.bind(rest.name, remaining, node, depth)

    def match_value(self, spec: Any, tensor: ir.Tensor | None, node: ir.Node, index: int, depth: int) -> None:
        if isinstance(spec, Var):
            self.match_var(spec, tensor, node, index, depth)
        elif isinstance(spec, NodeOutput):
            if tensor is None:
                self.fail(f"input {index} of {node.name} is missing", node, depth)
            producer = ir.producer(tensor)
            if producer is None or id(producer) not in self.graph_nodes:
                self.fail(
                    f"input {index} of {node.name} ({tensor.name}) is not produced by "
                    f"{spec.node.describe()} here",
                    node,
                    depth,
                )
            if producer.outputs.index(tensor) != spec.index:
                self.fail(f"{tensor.name} is output {producer.outputs.index(tensor)}, expected {spec.index}", node, depth)
            self.match_node(spec.node, producer, depth)
        else:
            raise TypeError(f"pattern input must be a variable or a node pattern, got {spec!r}")

    def match_var(self, var: Var, tensor: ir.Tensor | None, node: ir.Node, index: int, depth: int) -> None:
        where = f"input {index} ({var.name}) of {node.name}"
        if tensor is None:
            if not var.is_optional:
                self.fail(f"{where} is missing", node, depth)
            self.bind(var.name, None, node, depth)
            return
        if var.must_be_initializer and not isinstance(tensor, ir.Constant):
            self.fail(f"{where} is not an initializer", node, depth)
        if var.must_be_weights:
            value = ir.literal_value(tensor)
            if value is None:
                self.fail(f"{where} is {_origin(tensor)}, not a constant", node, depth)
            for check in var.value_predicates:
                if not check(value):
                    self.fail(f"{where} has a rejected value {value!r}", node, depth)
        if var.dtypes is not None and ir.dtype_name(tensor) not in var.dtypes:
            self.fail(f"{where} has type {ir.dtype_name(tensor)}, expected one of {sorted(var.dtypes)}", node, depth)
        for predicate in var.predicates:
            if not predicate(tensor):
                self.fail(f"{where} is rejected by a predicate", node, depth)
        self.bind(var.name, tensor, node, depth)

    def check_exclusive(self, root: ir.Node, graph_outputs: set[int]) -> None:
        matched = {id(n) for n in self.nodes.values()}
        for node in self.nodes.values():
            if node is root:
                continue
            for tensor in node.outputs:
                if id(tensor) in graph_outputs:
                    self.fail(f"interior node {node.name} produces graph output {tensor.name}", node, len(matched))
                outside = [c for c in tensor.outputs if id(c) not in matched]
                if outside:
                    self.fail(
                        f"interior node {node.name} output {tensor.name} is also used by "
                        f"{outside[0].name} outside the match",
                        node,
                        len(matched),
                    )


def _domains(domain: str | frozenset[str]) -> tuple[str, ...]:
    if isinstance(domain, str):
        return _DEFAULT_DOMAINS if domain in _DEFAULT_DOMAINS else (domain,)
    return tuple(sorted({d for name in domain for d in _domains(name)}))


def _origin(tensor: ir.Tensor) -> str:
    node = ir.producer(tensor)
    return "a graph input" if node is None else f"computed by node {node.name} ({node.op})"


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (ir.Tensor, ir.Node)) or isinstance(b, (ir.Tensor, ir.Node)):
        return a is b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


# ----------------------------------------------------------------------------- index


class OpIndex:
    """Nodes of one graph by op type, so matching visits only candidates (linear overall)."""

    def __init__(self, graph: ir.Graph):
        self._by_op: dict[str, list[ir.Node]] = defaultdict(list)
        for node in graph.nodes:
            self._by_op[node.op].append(node)
        self._all = list(graph.nodes)

    def candidates(self, op_types: frozenset[str] | None) -> list[ir.Node]:
        if op_types is None:
            return list(self._all)
        if len(op_types) == 1:
            return list(self._by_op.get(next(iter(op_types)), ()))
        wanted = [n for n in self._all if n.op in op_types]
        return wanted
