"""Decompose Einsum into Transpose / Reshape / MatMul / Mul / ReduceSum (Gather for diagonals)."""

from __future__ import annotations

import functools
import itertools
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import numpy as np

import graphfix as gf

if TYPE_CHECKING:
    from graphfix.ir import Tensor

# A contraction tree: an operand index, or the pair of subtrees contracted into one tensor.
Tree = Union[int, tuple["Tree", "Tree"]]

# Planning estimate of a dim that is not static: the order search needs a number.
_UNKNOWN_DIM = 64
# The contraction order is searched exhaustively (3^n subsets) up to this many operands and
# chosen greedily beyond.
_EXHAUSTIVE_OPERANDS = 8
# Reshape's "copy this dim from the input" marker.
_COPY = "copy"


@gf.rule(
    limitation=("einsum.missing", "einsum.ellipsis", "einsum.more_than_two_operands",
                "einsum.diagonal", "einsum.uppercase", "einsum.broadcast", "einsum.integer_inputs"),
    stage="lower",
    options={"keep_supported": True},
)
class DecomposeEinsum:
    """Rewrite Einsum as Transpose / Reshape / MatMul (Mul + ReduceSum for integers, Gather for diagonals).

    TensorRT limitation: TensorRT 7.2 and 8.0 have no Einsum importer. 8.2 to 8.6 import it
    with restrictions: lowercase labels only, no ellipsis, no label repeated inside one operand
    (diagonal), at most two operands, no broadcasting between operands, FP32/FP16 only. 10.0
    to 10.11 rewrite ellipsis and more than two operands themselves but still refuse
    diagonals, broadcasting and uppercase labels; 10.12+ handle ellipsis, diagonals and
    broadcasting natively and still refuse integer operands (and, in the static checker,
    uppercase labels). Source keys S82-S86, S93, S100, CHK10, S1016, H8.2/H10.0/H10.16
    (IEinsumLayer) and CL(10.12) of trt-onnx-support.md (Einsum row).

    Rewrite: exact, up to the summation order of floats (MatMul adds in another order than
    onnxruntime's Einsum). The equation is labelled against the operand ranks (ellipsis dims
    become labels, right-aligned as numpy broadcasts them; the implicit output is the ellipsis
    dims, then the labels seen once, in ASCII order). Each operand is prepared alone: a static
    size-1 dim of a summed label that broadcasts against a larger one is squeezed (the operand
    is constant along it); a repeated label becomes its diagonal, the repeated axes moved
    last, flattened and Gather'ed at i * (1 + n + ... + n^(k-1)), a copy of the elements (a
    0/1 mask would turn an infinity off the diagonal into NaN); labels nothing else needs are
    summed by ReduceSum. The operands are then contracted pairwise in the order with the
    fewest intermediate elements (static dims, 64 for the others; exhaustive search up to 8
    operands, greedy beyond).

    A float pair is one MatMul when it has labels to sum, and for an outer product (k = 1: one
    product per element, still exact) when that costs at most one node more than a
    broadcasting Mul, which onnxruntime runs slower. Shared labels the result keeps are batch
    dims, labels of the left operand alone may stay leading dims (MatMul broadcasts both,
    static or at run time), the rest is merged into [.., m, k] x [batch, k, n]; of the layouts
    and operand orders, the one with the fewest Transpose / Reshape / (Un)Squeeze nodes is
    written, so SuperGlue's attention equations become Transpose + MatMul (+ Transpose). The
    second MatMul input is never 1-D: onnxruntime 1.31 at its default ORT_ENABLE_ALL fuses a
    Transpose of the first input into the MatMul and then computes wrong values (graphfix
    verifies without graph transforms and would not see it). Other pairs are a broadcasting Mul.
    Integers always take Mul + ReduceSum, exact in integer arithmetic while the sums fit the
    type: TensorRT's MatMul importer refuses INT32 and a float round trip loses integers
    above 2^24; the cost is the broadcast product in memory. (onnxruntime 1.31's CPU
    ReduceSum accumulates integers in double: int64 sums beyond 2^53 lose low bits there, and
    an overflowing int32 sum saturates where Einsum wraps around.)

    Dynamic dims: Reshape targets copy leading dims (0), write static dims as constants, let one
    merged dim be -1 and build the others from Shape -> Gather (-> Mul) -> Concat of the
    run-time shapes, so one rewritten model serves every size. Left alone (near miss), or
    failing loudly, never silently: static zero-size dims; an output whose recorded type
    contradicts broadcasting (ONNX's Einsum inference takes a label's first dim, ignoring
    size-1 broadcasting, and a rewrite keeps the recorded type); a summed label that
    broadcasts only at run time (Reshape / MatMul refuse the mismatch); a run-time zero-size
    dim beside a -1. ReduceSum / Squeeze / Unsqueeze follow the model's opset (axes as an
    input from 13; TensorRT 7.2 ignores a ReduceSum axes input, but Einsum needs opset 12 and
    7.2 declares up to 11, so such models go through the opset and Reduce-axes rules anyway).

    Option keep_supported (default true): leave an Einsum alone when the target (ctx.target)
    imports that equation with those input types; with no target, decompose every Einsum.
    """

    def pattern(self, op, operands, equation):
        return op.Einsum(gf.variadic("operands", 1), equation=equation)

    def check(self, ctx, operands, equation):
        dtype = next((d for d in map(ctx.numpy_dtype, [*operands, *ctx.root.outputs]) if d is not None), None)
        if dtype is None:
            return gf.reject("the element type of the operands is unknown", ctx.root)
        shapes = [ctx.shape(t) for t in operands]
        if any(d == 0 for shape in shapes for d in shape or ()):
            return gf.reject("an operand has a zero-size dim: nothing to contract", ctx.root)
        try:
            parsed = parse_equation(equation, [None if s is None else len(s) for s in shapes])
            plan = plan_einsum(parsed, shapes, integer=dtype.kind in "iu")
        except ValueError as error:
            return gf.reject(f"equation {equation!r}: {error}", ctx.root)
        mistyped = _mistyped_output(parsed, shapes, ctx.shape(ctx.root.outputs[0]))
        if mistyped:
            return gf.reject(mistyped, ctx.root.outputs[0])
        if ctx.options["keep_supported"] and ctx.target is not None:
            if not ctx.target.evaluate(ctx.node_facts()):
                return gf.reject(
                    f"{ctx.target.label} imports this Einsum as it is (keep_supported)", ctx.root
                )
        return gf.accept(plan=plan)

    def rewrite(self, op, operands, plan):
        return _Emitter(op, plan).emit(operands)


# ----------------------------------------------------------------------------- the equation


@dataclass(frozen=True)
class Equation:
    """An Einsum equation with every operand axis labelled.

    Ellipsis dims get the labels '.0', '.1', ... (right-aligned across operands, as numpy
    broadcasts them), so the rest of the rule sees one kind of label.
    """

    inputs: tuple[tuple[str, ...], ...]
    output: tuple[str, ...]


def parse_equation(text: str, ranks: Sequence[int | None]) -> Equation:
    """Label every axis of every operand and of the output.

    Args:
        text: the equation.
        ranks: the rank of each operand, None when unknown (then the term must say it: a term
            without ellipsis has one label per axis).

    Raises:
        ValueError: the equation does not fit the operand ranks or is not valid Einsum.
    """
    compact = "".join(text.split())
    lhs, arrow, rhs = compact.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ValueError(f"{len(terms)} operand terms for {len(ranks)} inputs")
    split = [_split_term(term) for term in terms]
    widths = []
    for index, ((head, has_ellipsis, tail), rank) in enumerate(zip(split, ranks)):
        if rank is None and has_ellipsis:
            raise ValueError(f"the rank of operand {index} is unknown, so its ellipsis is too")
        width = 0 if rank is None else rank - len(head) - len(tail)
        if width < 0 or (width and not has_ellipsis):
            raise ValueError(f"term {head}{'...' if has_ellipsis else ''}{tail} does not fit rank {rank}")
        widths.append(width)
    ellipsis = tuple(f".{i}" for i in range(max(widths, default=0)))
    inputs = tuple(
        tuple(head) + ellipsis[len(ellipsis) - width:] + tuple(tail)
        for (head, _, tail), width in zip(split, widths)
    )
    if arrow:
        head, has_ellipsis, tail = _split_term(rhs)
        if ellipsis and not has_ellipsis:
            raise ValueError("the output leaves out the ellipsis dims")
        output = tuple(head) + ellipsis + tuple(tail)
        letters = head + tail
        if len(set(letters)) != len(letters):
            raise ValueError("a label repeats in the output")
        unknown = sorted(set(letters) - set("".join(h + t for h, _, t in split)))
        if unknown:
            raise ValueError(f"output label {unknown[0]!r} is in no operand")
    else:
        counts = Counter("".join(h + t for h, _, t in split))
        output = ellipsis + tuple(sorted(label for label, count in counts.items() if count == 1))
    return Equation(inputs, output)


def _split_term(term: str) -> tuple[str, bool, str]:
    head, dots, tail = term.partition("...")
    for label in head + tail:
        if not ("a" <= label <= "z" or "A" <= label <= "Z"):
            raise ValueError(f"{label!r} is not a label (letters a-z, A-Z)")
    return head, bool(dots), tail


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """What the rewrite emits, decided from the equation and the static dims.

    Attributes:
        equation: the labelled equation.
        squeezed: per operand, the axes whose static size-1 dim broadcasts against a larger
            dim of a summed label (squeezed first: the operand is constant along them).
        labels: per operand, its distinct labels once squeezed and diagonalized.
        tree: the pairwise contraction order.
        integer: integer operands (Mul + ReduceSum instead of MatMul).
    """

    equation: Equation
    squeezed: tuple[tuple[int, ...], ...]
    labels: tuple[frozenset[str], ...]
    tree: Tree
    integer: bool

    def kept(self, operands: frozenset[int]) -> frozenset[str]:
        """Labels of `operands` still needed after contracting them: by the output or the rest."""
        inside = frozenset().union(*(self.labels[i] for i in operands))
        outside = frozenset(self.equation.output).union(
            *(self.labels[i] for i in range(len(self.labels)) if i not in operands)
        )
        return inside & outside


def plan_einsum(equation: Equation, shapes: Sequence[Sequence[Any] | None], *, integer: bool) -> Plan:
    """Choose the squeezes and the contraction order (`shapes`: each operand's dims or None).

    Raises:
        ValueError: two static dims of one label differ (and neither is 1), or a diagonal's
            dims differ.
    """
    occurrences: dict[str, list[tuple[int, int, int | None]]] = {}
    for index, (labels, shape) in enumerate(zip(equation.inputs, shapes)):
        dims = shape if shape is not None else (None,) * len(labels)
        for axis, (label, dim) in enumerate(zip(labels, dims)):
            static = int(dim) if isinstance(dim, (int, np.integer)) else None
            occurrences.setdefault(label, []).append((index, axis, static))
    sizes = {label: _label_size(label, found) for label, found in occurrences.items()}
    squeezed: list[list[int]] = [[] for _ in equation.inputs]
    for label, found in occurrences.items():
        if label in equation.output:
            continue  # kept labels broadcast in MatMul / Mul as they are
        for index, axis, dim in found:
            if dim == 1 and any(other != index and d != 1 for other, _, d in found):
                squeezed[index].append(axis)
    labels = tuple(
        frozenset(label for axis, label in enumerate(term) if axis not in squeezed[index])
        for index, term in enumerate(equation.inputs)
    )
    tree = _contraction_tree(labels, frozenset(equation.output), sizes)
    return Plan(equation, tuple(tuple(axes) for axes in squeezed), labels, tree, integer)


def _mistyped_output(
    equation: Equation, shapes: Sequence[Sequence[Any] | None], recorded: Sequence[Any] | None
) -> str:
    """Why the output's recorded type contradicts broadcasting ('' when it does not).

    ONNX's Einsum shape inference gives an output label the dim of its first occurrence, so a
    size-1 dim that broadcasts yields a wrong static 1 (or a wrong size). onnxruntime's Einsum
    allocates its own output and only warns; the rewrite keeps the recorded type, which
    onnxruntime's memory planner then trusts, so such a node is left alone.
    """
    if recorded is None:
        return ""
    occurrences: dict[str, list[int | None]] = {}
    for labels, shape in zip(equation.inputs, shapes):
        for label, dim in zip(labels, shape if shape is not None else (None,) * len(labels)):
            occurrences.setdefault(label, []).append(int(dim) if isinstance(dim, (int, np.integer)) else None)
    expected: list[int | None] = []
    contradiction = False
    for label, dim in zip(equation.output, recorded):
        found = occurrences[label]
        larger = [d for d in found if d is not None and d != 1]
        size = larger[0] if larger else (1 if None not in found else None)
        expected.append(size)
        if isinstance(dim, (int, np.integer)):
            guessed_one = size is None and dim == 1 and 1 in found  # a broadcast 1 against a dynamic dim
            contradiction |= (size is not None and dim != size) or guessed_one
    if not contradiction:
        return ""
    shown = ", ".join("?" if d is None else str(d) for d in expected)
    return (f"the model types the output {list(recorded)} but broadcasting makes it [{shown}] (ONNX's "
            "Einsum shape inference takes a label's dim from its first operand); a rewrite keeps "
            "that type, which onnxruntime trusts, so the Einsum is left alone")


def _label_size(label: str, found: list[tuple[int, int, int | None]]) -> int:
    """The label's size for planning (broadcast 1s aside; _UNKNOWN_DIM when dynamic)."""
    static = {dim for _, _, dim in found if dim is not None}
    if len(static - {1}) > 1:
        raise ValueError(f"label {label!r} has dims {sorted(static)}")
    for index in {i for i, _, _ in found}:
        own = {dim for i, _, dim in found if i == index and dim is not None}
        if len(own) > 1:
            raise ValueError(f"the diagonal of label {label!r} in operand {index} has dims {sorted(own)}")
    if static - {1}:
        return max(static)
    return 1 if len(static) == 1 and all(dim is not None for _, _, dim in found) else _UNKNOWN_DIM


def _contraction_tree(labels: Sequence[frozenset[str]], output: frozenset[str], sizes: dict[str, int]) -> Tree:
    """The pairwise order with the fewest intermediate elements (then the fewest products)."""
    count = len(labels)
    if count == 1:
        return 0
    if count > _EXHAUSTIVE_OPERANDS:
        return _greedy_tree(labels, output, sizes)
    every = (1 << count) - 1

    def kept(mask: int) -> frozenset[str]:
        inside = frozenset().union(*(labels[i] for i in range(count) if mask >> i & 1))
        outside = output.union(*(labels[i] for i in range(count) if not mask >> i & 1))
        return inside & outside

    kept_of = {mask: kept(mask) for mask in range(1, every + 1)}
    best: dict[int, tuple[int, int, Tree]] = {1 << i: (0, 0, i) for i in range(count)}
    for mask in sorted(range(1, every + 1), key=lambda m: bin(m).count("1")):
        if mask in best:
            continue
        lowest = mask & -mask
        created = 0 if mask == every else _elements(kept_of[mask], sizes)
        for part in _submasks(mask):
            if not part & lowest or part == mask:
                continue
            rest = mask ^ part
            elements = best[part][0] + best[rest][0] + created
            products = best[part][1] + best[rest][1] + _elements(kept_of[part] | kept_of[rest], sizes)
            if mask not in best or (elements, products) < best[mask][:2]:
                best[mask] = (elements, products, (best[part][2], best[rest][2]))
    return best[every][2]


def _submasks(mask: int) -> Iterator[int]:
    part = mask
    while part:
        yield part
        part = (part - 1) & mask


def _greedy_tree(labels: Sequence[frozenset[str]], output: frozenset[str], sizes: dict[str, int]) -> Tree:
    """Contract the pair whose result is smallest, until one tensor is left."""
    pending: list[tuple[Tree, frozenset[str]]] = [(i, frozenset(l)) for i, l in enumerate(labels)]
    while len(pending) > 1:
        def result(i: int, j: int) -> frozenset[str]:
            others = output.union(*(l for k, (_, l) in enumerate(pending) if k not in (i, j)))
            return (pending[i][1] | pending[j][1]) & others

        i, j = min(
            itertools.combinations(range(len(pending)), 2),
            key=lambda p: (_elements(result(*p), sizes), _elements(pending[p[0]][1] | pending[p[1]][1], sizes)),
        )
        merged = ((pending[i][0], pending[j][0]), result(i, j))
        pending = [entry for k, entry in enumerate(pending) if k not in (i, j)] + [merged]
    return pending[0][0]


def _elements(labels: frozenset[str], sizes: dict[str, int]) -> int:
    return math.prod(sizes[label] for label in labels)


def _leaves(tree: Tree) -> frozenset[int]:
    if isinstance(tree, int):
        return frozenset({tree})
    return _leaves(tree[0]) | _leaves(tree[1])


# ----------------------------------------------------------------------------- emission


@dataclass(frozen=True)
class _Operand:
    """A tensor and the label of each of its axes."""

    tensor: Tensor
    labels: tuple[str, ...]


@dataclass(frozen=True)
class _Side:
    """One MatMul input: the operand, its axes in MatMul order, how many leading axes it has
    (broadcast by MatMul), the two label groups merged into its last two dims, and whether it
    is MatMul's 1-D vector form."""

    operand: _Operand
    axes: tuple[str, ...]
    leading: int
    groups: tuple[tuple[str, ...], tuple[str, ...]]
    vector: bool

    def fit(self) -> str:
        """How the transposed operand becomes MatMul's input: 'none', 'unsqueeze' or 'reshape'."""
        first, second = (len(g) for g in self.groups)
        if self.vector:  # [k]: one summed dim, or several merged
            return "none" if first + second == 1 else "reshape"
        if first == 1 and second == 1:
            return "none"
        return "unsqueeze" if first + second == 1 else "reshape"


@dataclass(frozen=True)
class _MatMulLayout:
    """One way to write a contraction as MatMul: left [lead, batch, m, k] x right [batch, k, n].

    `lead` are labels only the left operand has, kept as leading dims that MatMul broadcasts
    against the right operand (numpy broadcasting aligns dims from the right), so they need no
    Reshape; `m` and `n` are merged into one dim each, `k` (the summed labels, possibly none:
    an outer product) too.
    """

    left: _Operand
    right: _Operand
    lead: tuple[str, ...]
    batch: tuple[str, ...]
    m: tuple[str, ...]
    k: tuple[str, ...]
    n: tuple[str, ...]

    def sides(self) -> tuple[_Side, _Side]:
        """The two inputs. A left side with no leading dims and nothing kept is a vector (1-D
        [k]); the right side never is: onnxruntime 1.31 at ORT_ENABLE_ALL fuses a Transpose
        feeding the left input into the MatMul and then computes wrong values when the right
        input is 1-D (a Transpose from the model itself triggers it too), so an empty n group
        is a size-1 axis, squeezed after."""
        leading = len(self.lead) + len(self.batch)
        return (
            _Side(self.left, self.lead + self.batch + self.m + self.k, leading, (self.m, self.k),
                  not leading and not self.m),
            _Side(self.right, self.batch + self.k + self.n, len(self.batch), (self.k, self.n), False),
        )

    @property
    def result(self) -> tuple[str, ...]:
        return self.lead + self.batch + self.m + self.n

    def result_fit(self) -> str:
        """How MatMul's [lead, batch, m, n] becomes the result: 'none', 'squeeze' or 'reshape'."""
        left, right = self.sides()
        kept = [len(g) for g, side in ((self.m, left), (self.n, right)) if not side.vector]
        if any(size > 1 for size in kept):
            return "reshape"
        return "squeeze" if 0 in kept else "none"

    def cost(self, order: tuple[str, ...] | None) -> int:
        """Nodes emitted besides the MatMul (a final Transpose to `order` included)."""
        nodes = sum(int(side.operand.labels != side.axes) + int(side.fit() != "none") for side in self.sides())
        nodes += int(self.result_fit() != "none")
        return nodes + int(order is not None and self.result != order)


def _ordered(labels: Sequence[str], reference: Sequence[str]) -> tuple[str, ...]:
    """`labels` in the order they have in `reference`."""
    return tuple(label for label in reference if label in labels)


class _Emitter:
    """Writes one Einsum's plan with the builder."""

    def __init__(self, op: Any, plan: Plan):
        self.op = op
        self.plan = plan
        self._shapes: dict[int, Tensor] = {}

    def emit(self, tensors: Sequence[Tensor]) -> Tensor:
        output = self.plan.equation.output
        prepared = [self._prepare(i, t) for i, t in enumerate(tensors)]
        result = self._contract_tree(self.plan.tree, prepared, root=True)
        return self._permute(result, output).tensor

    # -- one operand alone
    def _prepare(self, index: int, tensor: Tensor) -> _Operand:
        squeezed = self.plan.squeezed[index]
        labels = tuple(l for axis, l in enumerate(self.plan.equation.inputs[index]) if axis not in squeezed)
        operand = _Operand(self.op.squeeze(tensor, list(squeezed)) if squeezed else tensor, labels)
        for label, count in Counter(labels).items():
            if count > 1:
                operand = self._diagonal(operand, label)
        keep = self.plan.kept(frozenset({index}))
        return self._sum(operand, [l for l in operand.labels if l not in keep])

    def _diagonal(self, operand: _Operand, label: str) -> _Operand:
        """The elements where every axis labelled `label` has the same index, on one last axis."""
        op = self.op
        axes = [axis for axis, l in enumerate(operand.labels) if l == label]
        others = [axis for axis, l in enumerate(operand.labels) if l != label]
        moved = self._transpose(operand.tensor, others + axes)
        flat = op.Reshape(moved, op.int64([0] * len(others) + [-1]))
        size = self._static_dims(operand, axes)
        if size is not None:
            stride = sum(size**power for power in range(len(axes)))
            indices = op.int64(np.arange(size, dtype=np.int64) * stride)
        else:
            n = op.Gather(self._shape(operand.tensor), op.int64(axes[0]), axis=0)
            stride = op.Add(n, op.int64(1))
            for _ in range(len(axes) - 2):
                stride = op.Add(op.Mul(stride, n), op.int64(1))
            indices = op.Mul(op.Range(op.int64(0), n, op.int64(1)), stride)
        gathered = op.Gather(flat, indices, axis=len(others))
        return _Operand(gathered, tuple(operand.labels[a] for a in others) + (label,))

    def _sum(self, operand: _Operand, labels: Sequence[str]) -> _Operand:
        if not labels:
            return operand
        axes = [operand.labels.index(l) for l in labels]
        reduced = self.op.reduce("ReduceSum", operand.tensor, axes, keepdims=0)
        return _Operand(reduced, tuple(l for l in operand.labels if l not in labels))

    # -- contractions
    def _contract_tree(self, tree: Tree, prepared: Sequence[_Operand], root: bool) -> _Operand:
        if isinstance(tree, int):
            return prepared[tree]
        left = self._contract_tree(tree[0], prepared, root=False)
        right = self._contract_tree(tree[1], prepared, root=False)
        keep = self.plan.kept(_leaves(tree))
        order = self.plan.equation.output if root else None
        return self._contract(left, right, keep, order)

    def _contract(self, x: _Operand, y: _Operand, keep: frozenset[str], order: tuple[str, ...] | None) -> _Operand:
        shared = [l for l in x.labels if l in y.labels]
        summed = tuple(l for l in shared if l not in keep)
        product, product_cost = _mul_layout(x, y, summed, order)
        if self.plan.integer:
            return self._multiply(x, y, product, summed)
        batch = tuple(l for l in shared if l in keep)
        matmul = _cheapest_matmul(x, y, batch, summed, order)
        # An outer product (each side keeps labels of its own) is a MatMul with k = 1 too:
        # exact (one product per element) and faster than onnxruntime's broadcasting Mul, which
        # is worth one more small node.
        outer = len(shared) < len(x.labels) and len(shared) < len(y.labels)
        if summed or (outer and matmul.cost(order) <= product_cost + 1):
            return self._matmul(matmul)
        return self._multiply(x, y, product, summed)

    def _multiply(self, x: _Operand, y: _Operand, layout: tuple[str, ...], summed: tuple[str, ...]) -> _Operand:
        """Broadcasting Mul over `layout` (the union of the labels), then ReduceSum over `summed`."""
        product = _Operand(self.op.Mul(self._aligned(x, layout), self._aligned(y, layout)), layout)
        return self._sum(product, summed)

    def _aligned(self, operand: _Operand, layout: tuple[str, ...]) -> Tensor:
        """`operand` transposed to `layout`'s order, with size-1 axes for the labels it lacks."""
        tensor = self._permute(operand, _ordered(operand.labels, layout)).tensor
        missing = _missing_axes(operand, layout)
        return self.op.unsqueeze(tensor, missing) if missing else tensor

    def _matmul(self, layout: _MatMulLayout) -> _Operand:
        left, right = layout.sides()
        product = self.op.MatMul(self._matmul_input(left), self._matmul_input(right))
        fit = layout.result_fit()
        if fit == "reshape":
            parts = [_COPY] * left.leading
            parts += [[(layout.left, l)] for l in layout.m] + [[(layout.right, l)] for l in layout.n]
            product = self.op.Reshape(product, self._dims(parts))
        elif fit == "squeeze":  # an empty m or n group left a size-1 axis
            axes = []
            if not left.vector and not layout.m:
                axes.append(left.leading)
            if not right.vector and not layout.n:
                axes.append(left.leading + int(not left.vector))
            product = self.op.squeeze(product, axes)
        return _Operand(product, layout.result)

    def _matmul_input(self, side: _Side) -> Tensor:
        """The side's operand transposed and brought to [leading, first, second] (or a vector)."""
        tensor = self._permute(side.operand, side.axes).tensor
        fit = side.fit()
        if fit == "none":
            return tensor
        if fit == "unsqueeze":  # one group is empty: a size-1 axis where it goes
            return self.op.unsqueeze(tensor, [side.leading + (1 if side.groups[0] else 0)])
        merged = [[(side.operand, l) for l in group] for group in side.groups]
        parts = [merged[0] + merged[1]] if side.vector else [_COPY] * side.leading + merged
        return self.op.Reshape(tensor, self._dims(parts))

    # -- layout helpers
    def _permute(self, operand: _Operand, labels: Sequence[str]) -> _Operand:
        labels = tuple(labels)
        perm = [operand.labels.index(l) for l in labels]
        return _Operand(self._transpose(operand.tensor, perm), labels)

    def _transpose(self, tensor: Tensor, perm: list[int]) -> Tensor:
        if perm == sorted(perm):
            return tensor
        return self.op.Transpose(tensor, perm=perm)

    # -- Reshape targets from static dims and run-time shapes
    def _shape(self, tensor: Tensor) -> Tensor:
        if id(tensor) not in self._shapes:
            self._shapes[id(tensor)] = self.op.Shape(tensor)
        return self._shapes[id(tensor)]

    def _static_dims(self, operand: _Operand, axes: Sequence[int]) -> int | None:
        """The common static size of `axes` of the operand, None when none of them is static."""
        dims = self.op.ctx.shape(operand.tensor) or ()
        static = [dims[a] for a in axes if a < len(dims) and isinstance(dims[a], (int, np.integer))]
        return int(static[0]) if static else None

    def _dims(self, parts: Sequence[Any]) -> Tensor:
        """An int64 shape: _COPY -> 0, a list of (operand, label) -> the product of those dims.

        Static products are constants; the last run-time product is -1 (Reshape infers it);
        the others come from Shape -> Gather -> Mul of the operands they belong to.
        """
        static = [None if part == _COPY else self._static_product(part) for part in parts]
        dynamic = [i for i, part in enumerate(parts) if part != _COPY and static[i] is None]
        values: list[int | Tensor] = []
        for i, part in enumerate(parts):
            if part == _COPY:
                values.append(0)
            elif static[i] is not None:
                values.append(static[i])
            elif i == dynamic[-1]:
                values.append(-1)
            else:
                values.append(self._runtime_product(part))
        return self._concat(values)

    def _static_product(self, factors: Sequence[tuple[_Operand, str]]) -> int | None:
        sizes = [self._static_dims(o, [o.labels.index(l)]) for o, l in factors]
        return None if None in sizes else math.prod(sizes)

    def _runtime_product(self, factors: Sequence[tuple[_Operand, str]]) -> Tensor:
        op = self.op
        product, constant = None, 1
        for operand, label in factors:
            axis = operand.labels.index(label)
            size = self._static_dims(operand, [axis])
            if size is not None:
                constant *= size
                continue
            dim = op.Gather(self._shape(operand.tensor), op.int64([axis]), axis=0)
            product = dim if product is None else op.Mul(product, dim)
        return product if constant == 1 else op.Mul(product, op.int64([constant]))

    def _concat(self, values: Sequence[int | Tensor]) -> Tensor:
        pieces: list[Tensor] = []
        run: list[int] = []
        for value in values:
            if isinstance(value, int):
                run.append(value)
                continue
            if run:
                pieces.append(self.op.int64(run))
                run = []
            pieces.append(value)
        if run:
            pieces.append(self.op.int64(run))
        return pieces[0] if len(pieces) == 1 else self.op.Concat(*pieces, axis=0)


def _mul_layout(
    x: _Operand, y: _Operand, summed: tuple[str, ...], order: tuple[str, ...] | None
) -> tuple[tuple[str, ...], int]:
    """The label order for a broadcasting Mul of x and y, and its Transpose / Unsqueeze count."""
    candidates = [
        x.labels + tuple(l for l in y.labels if l not in x.labels),
        y.labels + tuple(l for l in x.labels if l not in y.labels),
    ]
    if order is not None:
        candidates.append(order + summed)

    def cost(layout: tuple[str, ...]) -> int:
        transposes = sum(_ordered(o.labels, layout) != o.labels for o in (x, y))
        unsqueezes = sum(bool(_missing_axes(o, layout)) for o in (x, y))
        result = tuple(l for l in layout if l not in summed)
        return transposes + unsqueezes + int(order is not None and result != order)

    layout = min(candidates, key=cost)
    return layout, cost(layout)


def _missing_axes(operand: _Operand, layout: tuple[str, ...]) -> list[int]:
    """Unsqueeze axes that make `operand` (in `layout`'s order) broadcast against `layout`.

    Labels missing before the operand's first label need no axis: broadcasting prepends them.
    """
    present = [i for i, l in enumerate(layout) if l in operand.labels]
    if not present:
        return []
    return [i for i, l in enumerate(layout[present[0]:]) if l not in operand.labels]


def _cheapest_matmul(
    x: _Operand, y: _Operand, batch: tuple[str, ...], summed: tuple[str, ...], order: tuple[str, ...] | None
) -> _MatMulLayout:
    swapped, lead, batch, m, k, n = _cheapest_layout(x.labels, y.labels, batch, summed, order)
    left, right = (y, x) if swapped else (x, y)
    return _MatMulLayout(left, right, lead=lead, batch=batch, m=m, k=k, n=n)


@functools.lru_cache(maxsize=4096)
def _cheapest_layout(
    x_labels: tuple[str, ...], y_labels: tuple[str, ...], batch: tuple[str, ...], summed: tuple[str, ...],
    order: tuple[str, ...] | None,
) -> tuple[bool, tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The cheapest layout, by labels alone (the cost never reads the tensors): a model with a
    thousand attention blocks searches each kind of contraction once."""
    x, y = _Operand(None, x_labels), _Operand(None, y_labels)
    best = min(_matmul_layouts(x, y, batch, summed, order), key=lambda c: c.cost(order))
    return best.left is y, best.lead, best.batch, best.m, best.k, best.n


def _matmul_layouts(
    x: _Operand, y: _Operand, batch: tuple[str, ...], summed: tuple[str, ...], order: tuple[str, ...] | None
) -> Iterator[_MatMulLayout]:
    """Every MatMul layout worth comparing: both operand orders; each label group in the order
    of an operand or of the wanted output; none, all but one, or all of the left operand's own
    labels as leading dims."""
    wanted = (order,) if order is not None else ()
    for left, right in ((x, y), (y, x)):
        own = tuple(l for l in left.labels if l not in right.labels)
        n = tuple(l for l in right.labels if l not in left.labels)
        for b_ref, m_ref, n_ref, k_ref in itertools.product(
            (left.labels, right.labels, *wanted), (left.labels, *wanted), (right.labels, *wanted),
            (left.labels, right.labels),
        ):
            ordered = _ordered(own, m_ref)
            for split in sorted({0, max(len(ordered) - 1, 0), len(ordered)}):
                yield _MatMulLayout(
                    left, right, lead=ordered[:split], batch=_ordered(batch, b_ref), m=ordered[split:],
                    k=_ordered(summed, k_ref), n=_ordered(n, n_ref),
                )
