"""Opt-in: fuse pure-op multi-scale deformable attention into MultiscaleDeformableAttnPlugin_TRT."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import graphfix as gf
from graphfix.rules.emit_efficient_nms import plugin_missing
from graphfix.targets import TRT_PLUGIN_DOMAIN

PLUGIN = "MultiscaleDeformableAttnPlugin_TRT"
# GridSample's bilinear mode is spelled "linear" from opset 20.
_LINEAR_SPELLING_SINCE = 20

# A symbolic dim: coefficient times the product of named unknown dims ((5, ()) is the number 5).
Dim = tuple[int, tuple[str, ...]]
_ONE: Dim = (1, ())


@gf.rule(limitation="msda.unfused", opt_in=True, stage="fuse", exclusive=False)
class FuseMultiscaleDeformableAttention:
    """Opt-in: one MultiscaleDeformableAttnPlugin_TRT node instead of Deformable-DETR's pure-op attention.

    TensorRT limitation: not a parse failure but speed: Deformable-DETR / Grounding DINO exports
    (transformers' `multi_scale_deformable_attention` without custom kernels) spell the attention
    as per-level Slice/Reshape/Transpose, one GridSample per level, Unsqueeze+Concat, a weighted
    ReduceSum: about 150 nodes per attention (shape arithmetic included) and a [N*M, D, Lq,
    L*P] intermediate, where the plugin computes the same in one kernel. On 8.4, which has no
    GridSample importer, the fusion is also what makes the attention parse at all. The plugin is in
    TensorRT's standard library from 8.4 (v1; v2 from 10.11, v1 kept), absent from 7.2, 8.0
    and 8.2 (trt-onnx-support.md section c, MultiscaleDeformableAttnPlugin_TRT row: PL-README,
    REG(8.4)); key `msda.unfused`, an opt-in limitation no profile activates by itself.
    When to enable it: a TensorRT >= 8.4 target whose application loads the standard plugin
    library: `graphfix apply --enable fuse_multiscale_deformable_attention --target trt8.6`.
    `graphfix build` and trtexec need nothing extra (8.x parsers register the plugins
    themselves, trtexec loads them); 10.x applications must call
    `trt.init_libnvinfer_plugins(logger, "")` before parsing.

    Rewrite: value [N, S, M, D] (the tensor the levels are sliced from), spatial_shapes [L, 2]
    and level_start_index [L] (int32 constants: each level's (H, W) from its [N*M, D, H, W]
    reshape, its first row from its Slice), sampling_locations [N, Lq, M, L, P, 2] (the tensor
    the grids are 2 * loc - 1 of) and attention_weights [N, Lq, M, L, P] (before their
    transpose) feed one plugin node (domain trt.plugins, no fields); its [N, Lq, M, D] output
    is reshaped to the [N, Lq, M*D] the subgraph produced. The plugin samples at loc * size -
    0.5 with bilinear weights and zero padding (multiscaleDeformableIm2ColCuda.cuh), which is
    GridSample bilinear / zeros / align_corners=0 on 2 * loc - 1 (grid -> ((g + 1) * size - 1)
    / 2), and sums weights * samples over levels and points: the subgraph's computation in
    another float order (differences of a few ulps). A DOUBLE location tensor (exports whose
    grids narrow_double_grid cast to FLOAT) is cast to the value's type first.
    The match must be exact, else a near miss says why: every stacked level is GridSample
    (bilinear, zeros, align_corners=0) of Slice(value, axis 1) -> Reshape [N, HW, M*D] ->
    Transpose -> Reshape [N*M, D, H, W] and of level l of the grids (Gather axis 3, index l ->
    Transpose -> Reshape [N*M, Lq, P, 2]); as many levels as the locations have; weights
    Transpose [0, 2, 1, 3, 4] -> Reshape [N*M, 1, Lq, L*P]; ReduceSum over the last axis ->
    Reshape [N, M*D, Lq] -> Transpose. Shapes are checked symbolically (dims read through the
    exporter's Shape/Gather/Concat arithmetic), so dynamic batch and query counts fuse too. An
    intermediate that something else reads (besides Shape) blocks the fusion: the pure-op
    subgraph would stay alive next to the plugin.
    """

    def pattern(self, op, weights, stack_shape, weights_shape, axes, sum_shape):
        stacked = op.Reshape(op.Concat(gf.variadic("levels", 1), _capture="stack"), stack_shape, _capture="stack_flat")
        scaled = op.Reshape(op.Transpose(weights, _capture="weights_perm"), weights_shape, _capture="weights_flat")
        total = op.ReduceSum(op.Mul(stacked, scaled), axes.optional(), _capture="total")
        return op.Transpose(op.Reshape(total, sum_shape, _capture="unflatten"), _capture="output")

    def check(self, ctx, levels, weights, stack, stack_flat, weights_perm, weights_flat, total, unflatten, output):
        missing = plugin_missing(ctx, PLUGIN, "8.4")
        if missing is not None:
            return missing
        dims = _Dims(ctx)
        found = [_level(ctx, dims, index, tensor) for index, tensor in enumerate(levels)]
        failed = next((f for f in found if isinstance(f, gf.Reject)), None)
        if failed is not None:
            return failed
        value, locations = found[0].value, found[0].locations
        for level in found[1:]:
            if level.value is not value or level.locations is not locations:
                return gf.reject("the levels do not sample one value tensor with one set of grids", level.sample)
        shapes = _shapes(dims, value, locations, weights, len(found))
        if isinstance(shapes, gf.Reject):
            return shapes
        n, m, d, queries, points = shapes
        heads, samples = _product(n, m), _product((len(found), ()), points)
        expected = [
            *(check for level in found for check in _level_checks(dims, level, n, m, d, queries, points)),
            (stack_flat.outputs[0], [heads, d, queries, samples]),
            (weights_flat.outputs[0], [heads, _ONE, queries, samples]),
            (unflatten.outputs[0], [n, _product(m, d), queries]),
        ]
        mismatch = _first_mismatch(dims, expected)
        if mismatch is not None:
            return mismatch
        structure = _tail_structure(ctx, stack, weights_perm, total, output)
        if structure is not None:
            return structure
        shared = _used_outside(ctx, [*ctx.nodes, *(node for level in found for node in level.nodes)], output)
        if shared is not None:
            return shared
        return gf.accept(value=value, locations=locations,
                         spatial_shapes=np.array([[lv.height, lv.width] for lv in found], np.int32),
                         level_starts=np.array([lv.start for lv in found], np.int32))

    def rewrite(self, op, weights, value, locations, spatial_shapes, level_starts):
        dtype = op.ctx.numpy_dtype(value)
        sampled = op.node(
            PLUGIN, value, op.constant(spatial_shapes), op.constant(level_starts), _as(op, locations, dtype),
            _as(op, weights, dtype), _domain=TRT_PLUGIN_DOMAIN,
        )
        sampled.dtype, sampled.shape = dtype, [None] * 4  # ONNX cannot infer a plugin's output
        return op.Reshape(sampled, op.int64([0, 0, -1]))  # [N, Lq, M, D] -> [N, Lq, M*D]


@dataclass
class _Level:
    """One stacked level: where it reads the value and the grids, and the nodes it consists of."""

    sample: Any  # the GridSample node
    value: Any  # the [N, S, M, D] tensor the level is sliced from
    locations: Any  # the [N, Lq, M, L, P, 2] tensor the grids are 2 * loc - 1 of
    start: int
    height: int
    width: int
    slice_out: Any  # [N, HW, M, D]
    flat: Any  # [N, HW, M*D]
    image: Any  # [N*M, D, H, W]
    grid: Any  # [N*M, Lq, P, 2]
    nodes: list[Any]


def _level(ctx, dims, index: int, tensor):
    """Parse stacked level `index`: Unsqueeze(GridSample(value image, level grid)), or why not."""
    unsqueeze = ctx.producer(tensor)
    if unsqueeze is None or unsqueeze.op != "Unsqueeze" or ctx.axes(unsqueeze) not in ([3], [-2]):
        return gf.reject(f"stacked input {index} is not Unsqueeze(axis -2) of a GridSample", tensor)
    sample = ctx.producer(unsqueeze.inputs[0])
    if sample is None or sample.op != "GridSample":
        return gf.reject(f"stacked input {index} does not come from a GridSample", unsqueeze)
    bilinear = "linear" if ctx.opset >= _LINEAR_SPELLING_SINCE else "bilinear"
    for attr, wanted in (("mode", bilinear), ("padding_mode", "zeros"), ("align_corners", 0)):
        if ctx.attr(sample, attr) != wanted:
            return gf.reject(f"GridSample {sample.name} has {attr}={ctx.attr(sample, attr)!r}; the plugin "
                             f"samples with {attr}={wanted!r}", sample)
    image = _value_chain(ctx, dims, sample)
    if isinstance(image, gf.Reject):
        return image
    grid = _grid_chain(ctx, sample, index)
    if isinstance(grid, gf.Reject):
        return grid
    slice_node, first_reshape, transpose, second_reshape, start, height, width = image
    locations, grid_nodes = grid
    return _Level(sample, slice_node.inputs[0], locations, start, height, width, slice_node.outputs[0],
                  first_reshape.outputs[0], second_reshape.outputs[0], grid_nodes[0].outputs[0],
                  [unsqueeze, sample, slice_node, first_reshape, transpose, second_reshape, *grid_nodes])


def _value_chain(ctx, dims, sample):
    """Reshape(Transpose(Reshape(Slice(value, axis 1)), [0, 2, 1]), [N*M, D, H, W]) -> the nodes."""
    second = ctx.producer(sample.inputs[0])
    transpose = _producer_if(ctx, second, "Reshape", 0, "Transpose")
    first = _producer_if(ctx, transpose, "Transpose", 0, "Reshape")
    slice_node = _producer_if(ctx, first, "Reshape", 0, "Slice")
    if slice_node is None or list(ctx.attr(transpose, "perm") or []) != [0, 2, 1]:
        return gf.reject(f"the image of {sample.name} is not Reshape(Transpose(Reshape(Slice(value)), "
                         "[0, 2, 1])) (the per-level split of value)", sample)
    target = dims.value(second.inputs[1])
    if target is None or len(target) != 4 or any(d[1] or d[0] <= 0 for d in target[2:]):
        return gf.reject(f"{second.name} does not reshape to a constant (H, W)", second)
    start = _slice_start(ctx, slice_node)
    if start is None:
        return gf.reject(f"{slice_node.name} is not a constant step-1 slice along axis 1 of value", slice_node)
    return slice_node, first, transpose, second, start, target[2][0], target[3][0]


def _grid_chain(ctx, sample, index: int):
    """[Cast](Reshape(Transpose(Gather(2 * loc - 1, index, axis 3), [0, 2, 1, 3, 4]))) -> (loc, nodes)."""
    node = ctx.producer(sample.inputs[1])
    nodes = []
    if node is not None and node.op == "Cast":  # a DOUBLE grid narrowed by narrow_double_grid
        nodes.append(node)
        node = ctx.producer(node.inputs[0])
    reshape = node if node is not None and node.op == "Reshape" else None
    transpose = _producer_if(ctx, reshape, "Reshape", 0, "Transpose")
    gather = _producer_if(ctx, transpose, "Transpose", 0, "Gather")
    if gather is None or list(ctx.attr(transpose, "perm") or []) != [0, 2, 1, 3, 4]:
        return gf.reject(f"the grid of {sample.name} is not Reshape(Transpose(Gather(grids), [0, 2, 1, 3, 4]))",
                         sample)
    picked = ctx.constant(gather.inputs[1])
    if ctx.attr(gather, "axis") not in (3, -3) or picked is None or picked.shape != () or int(picked) != index:
        return gf.reject(f"{gather.name} does not pick level {index} (axis 3) of the grids for stacked "
                         f"level {index}", gather)
    locations = _unnormalized(ctx, gather.inputs[0])
    if locations is None:
        return gf.reject(f"the grids {gather.inputs[0].name} are not 2 * sampling_locations - 1", gather)
    return locations, [*nodes, reshape, transpose, gather]


def _producer_if(ctx, node, op_type: str, index: int, wanted: str):
    """The producer of input `index` of `node` when `node` is an `op_type` and it is a `wanted`."""
    if node is None or node.op != op_type:
        return None
    found = ctx.producer(node.inputs[index])
    return found if found is not None and found.op == wanted else None


def _unnormalized(ctx, grids):
    """loc when `grids` is Sub(Mul(loc, 2), 1) (either Mul operand order), else None."""
    sub = ctx.producer(grids)
    if sub is None or sub.op != "Sub" or not _is_scalar(ctx, sub.inputs[1], 1.0):
        return None
    mul = ctx.producer(sub.inputs[0])
    if mul is None or mul.op != "Mul":
        return None
    for loc, two in (mul.inputs, mul.inputs[::-1]):
        if _is_scalar(ctx, two, 2.0):
            return loc
    return None


def _is_scalar(ctx, tensor, number: float) -> bool:
    value = ctx.constant(tensor)
    return value is not None and value.size == 1 and float(value.reshape(-1)[0]) == number


def _slice_start(ctx, node) -> int | None:
    """The start row of a constant Slice of axis 1 with step 1, else None."""
    values = [ctx.constant(t) if not t.is_empty() else None for t in node.inputs[1:5]]
    starts, ends, axes, steps = (values + [None] * 4)[:4]
    if starts is None or ends is None or starts.size != 1 or axes is None or axes.size != 1:
        return None
    if int(axes.reshape(-1)[0]) not in (1, -3) or (steps is not None and int(steps.reshape(-1)[0]) != 1):
        return None
    start = int(starts.reshape(-1)[0])
    return start if start >= 0 else None


def _shapes(dims, value, locations, weights, levels: int):
    """(N, M, D, Lq, P) when value, locations and weights agree, else a Reject."""
    v, loc, w = dims.of(value), dims.of(locations), dims.of(weights)
    if v is None or loc is None or w is None or len(v) != 4 or len(loc) != 6 or len(w) != 5:
        return gf.reject("value, sampling locations or attention weights are not of rank 4, 6 and 5", value)
    n, _, m, d = v
    queries, points = loc[1], loc[4]
    expected = [(locations, [n, queries, m, (levels, ()), points, (2, ())]),
                (weights, [n, queries, m, (levels, ()), points])]
    mismatch = _first_mismatch(dims, expected)
    return (n, m, d, queries, points) if mismatch is None else mismatch


def _level_checks(dims, level: _Level, n: Dim, m: Dim, d: Dim, queries: Dim, points: Dim):
    """(tensor, expected dims) pairs of one level's value and grid chains."""
    sliced = dims.of(level.slice_out)
    rows = sliced[1] if sliced is not None and len(sliced) == 4 else None
    if rows is None or not rows[1]:  # a static row count must be H*W; an unknown one is forced to it
        rows = (level.height * level.width, ())  # at run time by the reshape to [N*M, D, H, W]
    return [
        (level.slice_out, [n, rows, m, d]),
        (level.flat, [n, rows, _product(m, d)]),
        (level.image, [_product(n, m), d, (level.height, ()), (level.width, ())]),
        (level.grid, [_product(n, m), queries, points, (2, ())]),
    ]


def _first_mismatch(dims, expected) -> gf.Reject | None:
    for tensor, wanted in expected:
        got = dims.of(tensor)
        if got is None or len(got) != len(wanted) or any(w is None or g != w for g, w in zip(got, wanted)):
            shown = "unknown" if got is None else f"[{', '.join(_text(g) for g in got)}]"
            return gf.reject(f"{tensor.name} has shape {shown}, the attention needs "
                             f"[{', '.join(_text(w) for w in wanted)}]", tensor)
    return None


def _tail_structure(ctx, stack, weights_perm, total, output) -> gf.Reject | None:
    """The attributes of stack, weight transpose, sum and output transpose."""
    if ctx.attr(stack, "axis") not in (3, -2):
        return gf.reject(f"{stack.name} does not stack the levels on axis -2", stack)
    if list(ctx.attr(weights_perm, "perm") or []) != [0, 2, 1, 3, 4]:
        return gf.reject(f"{weights_perm.name} is not the [0, 2, 1, 3, 4] transpose of the weights", weights_perm)
    if ctx.axes(total) not in ([3], [-1]) or ctx.attr(total, "keepdims") != 0:
        return gf.reject(f"{total.name} does not sum the last axis away", total)
    if list(ctx.attr(output, "perm") or []) != [0, 2, 1]:
        return gf.reject(f"{output.name} is not the [0, 2, 1] transpose to [N, Lq, M*D]", output)
    return None


def _used_outside(ctx, nodes: list, root) -> gf.Reject | None:
    """An intermediate read outside the fused nodes (Shape nodes aside), or a graph output."""
    fused = {id(node) for node in nodes}
    for node in nodes:
        if node is root:
            continue
        for tensor in node.outputs:
            if ctx.is_graph_output(tensor):
                return gf.reject(f"{tensor.name} inside the attention is a graph output", node)
            other = [c for c in ctx.consumers(tensor) if id(c) not in fused and c.op != "Shape"]
            if other:
                return gf.reject(f"{tensor.name} inside the attention is also read by {other[0].name}", node)
    return None


def _as(op, tensor, dtype):
    return tensor if op.ctx.numpy_dtype(tensor) == dtype else op.cast(tensor, dtype)


def _product(a: Dim | None, b: Dim | None) -> Dim | None:
    if a is None or b is None:
        return None
    return a[0] * b[0], tuple(sorted(a[1] + b[1]))


def _quotient(a: Dim, b: Dim) -> Dim | None:
    if b[0] == 0 or a[0] % b[0]:
        return None
    rest = list(a[1])
    for name in b[1]:
        if name not in rest:
            return None
        rest.remove(name)
    return a[0] // b[0], tuple(rest)


def _text(dim: Dim | None) -> str:
    if dim is None:
        return "?"
    coefficient, names = dim
    parts = ([str(coefficient)] if coefficient != 1 or not names else []) + list(names)
    return "*".join(parts)


class _Dims:
    """Symbolic dims of tensors: ONNX shape inference, then the ops between the tensors.

    Exports compute reshape targets from Shape/Gather/Concat of other tensors, which ONNX shape
    inference leaves unknown; here a dim is a coefficient times named unknowns (the inferred
    dim_param, or "tensor#axis"), propagated through the ops of the attention and through such
    shape arithmetic, so "dim 0 of value times dim 2 of locations" compares with "N * M".
    """

    def __init__(self, ctx):
        self.ctx = ctx
        self._dims: dict[int, list | None] = {}
        self._values: dict[int, list | None] = {}

    def of(self, tensor) -> list[Dim] | None:
        """The dims of `tensor`, or None when even its rank is unknown."""
        key = id(tensor)
        if key not in self._dims:
            self._dims[key] = None  # cycles (impossible in a sorted graph) end as unknown
            self._dims[key] = self._dims_of(tensor)
        return self._dims[key]

    def value(self, tensor) -> list[Dim] | None:
        """The elements of a 1-D (or scalar) integer shape tensor, or None."""
        key = id(tensor)
        if key not in self._values:
            self._values[key] = None
            self._values[key] = self._value_of(tensor)
        return self._values[key]

    # -- dims
    def _dims_of(self, tensor) -> list[Dim] | None:
        declared = self._declared(tensor)
        node = self.ctx.producer(tensor)
        derived = None if node is None else self._derived(node)
        if derived is None or (declared is not None and len(declared) != len(derived)):
            return declared
        if declared is None:
            return derived
        return [d if not d[1] else g for d, g in zip(declared, derived)]  # static declared dims win

    def _declared(self, tensor) -> list[Dim] | None:
        shape = self.ctx.shape(tensor)
        if shape is None:
            return None
        out = []
        for axis, dim in enumerate(shape):
            if isinstance(dim, (int, np.integer)) and dim >= 0:
                out.append((int(dim), ()))
            else:
                out.append((1, (dim if isinstance(dim, str) and dim else f"{tensor.name}#{axis}",)))
        return out

    def _derived(self, node) -> list[Dim] | None:
        op, inputs = node.op, node.inputs
        if op in ("Cast", "Softmax", "Identity", "Sigmoid", "Relu", "Not", "Neg", "Exp"):
            return self.of(inputs[0])
        if op in ("Add", "Sub", "Mul", "Div", "Where", "Equal", "Greater", "Less", "And", "Or", "Pow"):
            return _broadcast([self.of(t) for t in inputs])
        if op == "Transpose":
            return self._transposed(node)
        if op == "Reshape":
            return self._reshaped(node)
        if op == "Slice":
            return self._sliced(node)
        if op == "Gather":
            data, index = self.of(inputs[0]), self.of(inputs[1])
            if data is None or index is None:
                return None
            axis = int(self.ctx.attr(node, "axis")) % len(data)
            return data[:axis] + index + data[axis + 1:]
        if op == "Unsqueeze":
            return self._unsqueezed(node)
        if op == "Concat":
            return self._concatenated(node)
        if op == "ReduceSum":
            dims, axes = self.of(inputs[0]), self.ctx.axes(node)
            if dims is None or axes is None:
                return None
            summed, keep = {a % len(dims) for a in axes}, self.ctx.attr(node, "keepdims")
            return [_ONE if axis in summed else dim for axis, dim in enumerate(dims) if keep or axis not in summed]
        if op == "MatMul":
            a, b = self.of(inputs[0]), self.of(inputs[1])
            if a is None or b is None or len(a) < 2 or len(b) < 2:
                return None
            batch = _broadcast([a[:-2], b[:-2]])
            return None if batch is None else batch + [a[-2], b[-1]]
        if op == "GridSample":
            image, grid = self.of(inputs[0]), self.of(inputs[1])
            if image is None or grid is None or len(image) != 4 or len(grid) != 4:
                return None
            return [image[0], image[1], grid[1], grid[2]]
        return None

    def _transposed(self, node) -> list[Dim] | None:
        dims = self.of(node.inputs[0])
        if dims is None:
            return None
        perm = self.ctx.attr(node, "perm")
        return [dims[p] for p in (list(perm) if perm is not None else range(len(dims) - 1, -1, -1))]

    def _reshaped(self, node) -> list[Dim] | None:
        target, source = self.value(node.inputs[1]), self.of(node.inputs[0])
        if target is None:
            return None
        copy_zeros = not self.ctx.attr(node, "allowzero")
        out = []
        for axis, dim in enumerate(target):
            if dim == (0, ()) and copy_zeros:
                if source is None or axis >= len(source):
                    return None
                dim = source[axis]
            out.append(dim)
        if (-1, ()) not in out:
            return out
        if source is None:
            return None
        total, known = _ONE, _ONE
        for dim in source:
            total = _product(total, dim)
        for dim in out:
            if dim != (-1, ()):
                known = _product(known, dim)
        inferred = _quotient(total, known)
        return None if inferred is None else [inferred if d == (-1, ()) else d for d in out]

    def _sliced(self, node) -> list[Dim] | None:
        dims = self.of(node.inputs[0])
        values = [self.ctx.constant(t) if not t.is_empty() else None for t in node.inputs[1:5]]
        starts, ends, axes, steps = (values + [None] * 4)[:4]
        if dims is None or starts is None or ends is None:
            return None
        axes = range(starts.size) if axes is None else [int(a) % len(dims) for a in axes.reshape(-1)]
        out = list(dims)
        for k, axis in enumerate(axes):
            step = 1 if steps is None else int(steps.reshape(-1)[k])
            size = dims[axis]
            if size[1]:  # an unknown length: only the slice's own tensor names it
                out[axis] = (1, (f"{node.outputs[0].name}#{axis}",))
            else:
                cut = slice(int(starts.reshape(-1)[k]), int(ends.reshape(-1)[k]), step)
                out[axis] = (len(range(*cut.indices(size[0]))), ())
        return out

    def _unsqueezed(self, node) -> list[Dim] | None:
        dims, axes = self.of(node.inputs[0]), self.ctx.axes(node)
        if dims is None or axes is None:
            return None
        rank = len(dims) + len(axes)
        out = list(dims)
        for axis in sorted(a % rank for a in axes):
            out.insert(axis, _ONE)
        return out

    def _concatenated(self, node) -> list[Dim] | None:
        parts = [self.of(t) for t in node.inputs]
        if any(p is None or len(p) != len(parts[0]) for p in parts):
            return None
        axis = int(self.ctx.attr(node, "axis")) % len(parts[0])
        sizes = [p[axis] for p in parts]
        if all(not size[1] for size in sizes):
            total = (sum(size[0] for size in sizes), ())
        elif all(size[1] == sizes[0][1] for size in sizes):
            total = (sum(size[0] for size in sizes), sizes[0][1])
        else:
            total = (1, (f"{node.outputs[0].name}#{axis}",))
        return parts[0][:axis] + [total] + parts[0][axis + 1:]

    # -- values of shape tensors
    def _value_of(self, tensor) -> list[Dim] | None:
        constant = self.ctx.constant(tensor)
        if constant is not None:
            return [(int(v), ()) for v in np.asarray(constant).reshape(-1)]
        node = self.ctx.producer(tensor)
        if node is None:
            return None
        op, inputs = node.op, node.inputs
        if op == "Shape":
            dims = self.of(inputs[0])
            if dims is None:
                return None
            end = self.ctx.attr(node, "end")
            return dims[self.ctx.attr(node, "start") or 0:end]
        if op in ("Cast", "Unsqueeze", "Squeeze", "Identity"):
            return self.value(inputs[0])
        if op == "Concat":
            parts = [self.value(t) for t in inputs]
            return None if any(p is None for p in parts) else [d for p in parts for d in p]
        if op == "Gather":
            return self._gathered_value(inputs)
        if op == "Slice":
            return self._sliced_value(inputs)
        if op == "Mul":
            a, b = self.value(inputs[0]), self.value(inputs[1])
            if a is None or b is None or len(a) != len(b):
                return None
            return [_product(x, y) for x, y in zip(a, b)]
        return None

    def _gathered_value(self, inputs: Sequence) -> list[Dim] | None:
        data, index = self.value(inputs[0]), self.ctx.constant(inputs[1])
        if data is None or index is None:
            return None
        return [data[int(i)] for i in np.asarray(index).reshape(-1)]

    def _sliced_value(self, inputs: Sequence) -> list[Dim] | None:
        data = self.value(inputs[0])
        bounds = [self.ctx.constant(t) if not t.is_empty() else None for t in inputs[1:5]]
        starts, ends, _, steps = (bounds + [None] * 4)[:4]
        if data is None or starts is None or ends is None:
            return None
        step = 1 if steps is None else int(steps.reshape(-1)[0])
        return data[int(starts.reshape(-1)[0]):int(ends.reshape(-1)[0]):step]


def _broadcast(shapes: list[list[Dim] | None]) -> list[Dim] | None:
    """Numpy broadcasting of symbolic dims, where it is certain: a 1 yields to the other dim, a
    static dim wins (an unknown one is 1 or equal to it); two different unknowns give None."""
    if any(s is None for s in shapes):
        return None
    rank = max(len(s) for s in shapes)
    out = []
    for axis in range(rank):
        present = {s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0} - {_ONE}
        static = [d for d in present if not d[1]]
        if static or len(present) <= 1:
            out.append(static[0] if static else next(iter(present), _ONE))
        else:
            return None
    return out
