"""Decompose GridSample into Gather-based interpolation that every TensorRT release imports."""

from __future__ import annotations

from typing import Any

import numpy as np

import graphfix as gf

__all__ = ["CANONICAL_MODES", "PADDING_MODES", "DecomposeGridsample", "decomposition_problem", "sample_grid"]

# Every interpolation spelling (GridSample-16 and -20) -> the one the decomposition uses.
CANONICAL_MODES = {"bilinear": "linear", "linear": "linear", "nearest": "nearest", "bicubic": "cubic", "cubic": "cubic"}
PADDING_MODES = ("zeros", "border", "reflection")
_FLOAT_TYPES = frozenset({"float16", "float32", "float64"})
# Keys' cubic convolution coefficient A of onnxruntime's and PyTorch's bicubic GridSample.
_CUBIC_A = -0.75


@gf.rule(limitation=("gridsample.missing", "gridsample.5d"))
class DecomposeGridsample:
    """Rewrite GridSample as Gather-based nearest/bilinear/bicubic interpolation.

    TensorRT limitation: TensorRT 7.2 to 8.4 have no GridSample importer (S72-S84), and 8.5
    to 10.x import only 4-D GridSample: the volumetric (5-D) form is refused (S85, S86, S100,
    S1016; H8.5, H10.16 IGridSampleLayer). Keys `gridsample.missing`, `gridsample.5d`; on
    targets that import GridSample a 4-D node is left alone.

    Rewrite: onnxruntime's GridSample (which the ONNX backend tests and PyTorch agree with),
    written with ops every release imports (Gather, Floor, Where, Min/Max, Pad, arithmetic;
    no GatherElements, Round, Mod or Trilu). Each grid coordinate is mapped to pixel space as
    the spec says for both `align_corners`; each axis contributes its taps (nearest: the
    coordinate rounded half to even, computed exactly from Floor and comparisons of 2u with
    2 floor(u) + 1; linear: floor(u) and floor(u) + 1 with weights 1 - frac and frac; cubic,
    4-D only: floor(u) - 1 .. floor(u) + 2 with Keys coefficients, A = -0.75). Padding acts on
    each tap's integer index, as in the spec: zeros reads a 1-pixel zero border added with Pad
    (indices clamped to [-1, size]), border clamps the index, reflection reflects it about
    [-0.5, size - 0.5] (about [0, size - 1] with align_corners) in exact float arithmetic on
    integer-valued indices, then truncates and clamps. The image is transposed to rows of
    channels, [N * D * H * W, C], and every tap combination is one Gather of rows at
    n * S + flat index; sums run innermost axis first like onnxruntime's, so results agree to
    float rounding. All shapes are read at run time (dynamic N, C, sizes and grid sizes
    work). Float16 inputs are computed in float32 (as onnxruntime does) and cast back.
    Indices are int64 (narrowed to INT32 by TensorRT <= 8.6: exact below 2**31 elements).
    Cost: 4 (8 for 5-D, 16 for bicubic) row gathers of C values per output point, which is
    what a native kernel reads as well, plus elementwise work on [N, points].

    NaN or infinite grid coordinates have no meaning in the spec; onnxruntime's kernel turns
    them into whatever its integer casts give, while here the index cast of a NaN falls outside
    the image and the Gather fails. Verification then rolls the pass back (seen on Grounding
    DINO with synthesised inputs, whose fully masked text rows give NaN offsets); with real
    inputs (`--inputs`) the same model verifies.
    """

    def pattern(self, op, x, grid, mode, padding_mode, align_corners):
        return op.GridSample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)

    def check(self, ctx, x, grid, mode, padding_mode):
        imports_gridsample = ctx.target is not None and not ctx.target.is_active("gridsample.missing")
        if imports_gridsample and ctx.rank(x) == 4:
            return gf.reject("the target imports 4-D GridSample", ctx.root)
        problem = decomposition_problem(ctx, x, grid, mode, padding_mode)
        return problem if problem is not None else gf.accept()

    def rewrite(self, op, x, grid, mode, padding_mode, align_corners):
        return sample_grid(op, x, grid, mode, padding_mode, bool(align_corners))


def decomposition_problem(ctx: gf.Context, x: Any, grid: Any, mode: str, padding_mode: str) -> gf.Reject | None:
    """Why `sample_grid` cannot express this grid sample, or None when it can.

    Args:
        ctx: The check's context.
        x: The sampled image [N, C, (D,) H, W].
        grid: The sampling locations [N, (Do,) Ho, Wo, k].
        mode: Any GridSample mode spelling.
        padding_mode: zeros, border or reflection.

    Returns:
        A rejection naming the problem, or None.
    """
    rank, grid_rank = ctx.rank(x), ctx.rank(grid)
    if rank not in (4, 5) or grid_rank != rank:
        return gf.reject(f"GridSample needs 4-D or 5-D input and grid of the same rank (ranks {rank}, {grid_rank})", x)
    if ctx.dtype(x) not in _FLOAT_TYPES or ctx.dtype(grid) not in _FLOAT_TYPES:
        return gf.reject(f"input/grid types {ctx.dtype(x)}/{ctx.dtype(grid)} are not float16/32/64", x)
    canonical = CANONICAL_MODES.get(mode)
    if canonical is None:
        return gf.reject(f"unknown GridSample mode {mode!r}", ctx.root)
    if canonical == "cubic" and rank == 5:
        return gf.reject("bicubic GridSample is defined for 4-D inputs only", ctx.root)
    if padding_mode not in PADDING_MODES:
        return gf.reject(f"unknown GridSample padding_mode {padding_mode!r}", ctx.root)
    return None


def sample_grid(op: Any, x: Any, grid: Any, mode: str, padding_mode: str, align_corners: bool) -> Any:
    """GridSample(x, grid) from Gather and elementwise ops (see DecomposeGridsample's docstring).

    Args:
        op: The rewrite's builder.
        x: Image [N, C, (D,) H, W], float.
        grid: Locations [N, (Do,) Ho, Wo, k], float; grid[..., 0] indexes W.
        mode: Any GridSample mode spelling (see `CANONICAL_MODES`).
        padding_mode: zeros, border or reflection.
        align_corners: Whether -1 and 1 are the centres of the corner pixels.

    Returns:
        [N, C, (Do,) Ho, Wo] in x's dtype.
    """
    sampler = _Sampler(op, x, grid, padding_mode, align_corners)
    result = sampler.sample(CANONICAL_MODES[mode])
    out_dtype = op.ctx.numpy_dtype(x)
    return result if sampler.dtype == out_dtype else op.cast(result, out_dtype)


class _Sampler:
    """Builds one grid sample: compute type, per-axis sizes, the row image and the gathers."""

    def __init__(self, op: Any, x: Any, grid: Any, padding_mode: str, align_corners: bool):
        self.op, self.padding_mode, self.align_corners = op, padding_mode, align_corners
        self.dtype = np.result_type(op.ctx.numpy_dtype(x), op.ctx.numpy_dtype(grid), np.float32)
        self.spatial = op.ctx.rank(x) - 2
        self._constants: dict[float, Any] = {}
        self.x = self._computed(x)
        self.grid = self._computed(grid)
        self.x_shape = op.Shape(x)
        # Spatial sizes innermost first (W, H, D), as [1] int64 and [1] float, and size - 1.
        dims = [self.spatial + 1 - axis for axis in range(self.spatial)]
        self.sizes = [op.slice(self.x_shape, [d], [d + 1]) for d in dims]
        self.float_sizes = [op.cast(s, self.dtype) for s in self.sizes]
        self.lasts = [op.Sub(size, self._scalar(1)) for size in self.float_sizes]
        if padding_mode == "reflection":
            self.mirrors = [self._mirror(axis) for axis in range(self.spatial)]

    # -- the whole sample
    def sample(self, mode: str) -> Any:
        op, k = self.op, self.spatial
        points = op.Reshape(self.grid, op.int64([0, -1, k]))  # [N, P, k]
        taps = []
        for axis in range(k):
            u = self._denormalized(op.Gather(points, op.int64(axis), axis=2), axis)
            taps.append(self._taps(u, mode))
        image, padded_sizes = self._row_image()
        strides = self._strides(padded_sizes)
        resolved = [
            [(self._index(index, axis, strides[axis]), None if weight is None else op.unsqueeze(weight, [2]))
             for index, weight in axis_taps]
            for axis, axis_taps in enumerate(taps)
        ]
        values = self._combine(image, resolved, k - 1, self._batch_offsets(strides[-1]))  # [N, P, C]
        output_shape = op.Concat(op.slice(self.x_shape, [0], [2]), op.slice(op.Shape(self.grid), [1], [1 + k]), axis=0)
        return op.Reshape(op.Transpose(values, perm=[0, 2, 1]), output_shape)

    def _combine(self, image: Any, resolved: list, axis: int, offset: Any) -> Any:
        """Weighted sum over the taps of `axis` and, recursively, the inner axes (innermost first)."""
        op, total = self.op, None
        for index, weight in resolved[axis]:
            flat = op.Add(offset, index)
            value = op.Gather(image, flat, axis=0) if axis == 0 else self._combine(image, resolved, axis - 1, flat)
            term = value if weight is None else op.Mul(weight, value)
            total = term if total is None else op.Add(total, term)
        return total

    # -- coordinates and taps
    def _denormalized(self, n: Any, axis: int) -> Any:
        """Grid value in [-1, 1] to pixel coordinate, in onnxruntime's operation order."""
        op, one, two = self.op, self._scalar(1), self._scalar(2)
        if self.align_corners:
            return op.Mul(op.Div(op.Add(n, one), two), self.lasts[axis])
        return op.Div(op.Sub(op.Mul(op.Add(n, one), self.float_sizes[axis]), one), two)

    def _taps(self, u: Any, mode: str) -> list[tuple[Any, Any]]:
        """(integer-valued float index, weight or None) per tap of one axis."""
        op, one = self.op, self._scalar(1)
        if mode == "nearest":
            return [(self._rounded_half_to_even(u), None)]
        low = op.Floor(u)
        if mode == "linear":
            high = op.Add(low, one)
            return [(low, op.Sub(high, u)), (high, op.Sub(u, low))]
        t = op.Sub(u, low)
        first = op.Sub(low, one)
        indices = [first, low, op.Add(low, one), op.Add(low, self._scalar(2))]
        return list(zip(indices, self._cubic_coefficients(t)))

    def _rounded_half_to_even(self, u: Any) -> Any:
        """nearbyint(u) without Round (no importer before TensorRT 8.2): compare 2u with 2 floor(u) + 1,
        all exact in floating point, and round a tie up only from an odd floor."""
        op, one, two, half = self.op, self._scalar(1), self._scalar(2), self._scalar(0.5)
        low = op.Floor(u)
        twice, middle = op.Mul(u, two), op.Add(op.Mul(low, two), one)
        low_is_odd = op.Not(op.Equal(op.Mul(op.Floor(op.Mul(low, half)), two), low))
        up = op.Or(op.Greater(twice, middle), op.And(op.Equal(twice, middle), low_is_odd))
        return op.Where(up, op.Add(low, one), low)

    def _cubic_coefficients(self, t: Any) -> list[Any]:
        """The four Keys weights of taps floor - 1 .. floor + 2 (GsGetCubicCoeffs' formulas)."""
        op, a = self.op, _CUBIC_A
        one, two = self._scalar(1), self._scalar(2)

        def outer(s: Any) -> Any:  # ((A s - 5A) s + 8A) s - 4A, for s = t + 1 and 2 - t
            inner = op.Sub(op.Mul(self._scalar(a), s), self._scalar(5 * a))
            return op.Sub(op.Mul(op.Add(op.Mul(inner, s), self._scalar(8 * a)), s), self._scalar(4 * a))

        def central(s: Any) -> Any:  # ((A + 2) s - (A + 3)) s s + 1, for s = t and 1 - t
            inner = op.Sub(op.Mul(self._scalar(a + 2), s), self._scalar(a + 3))
            return op.Add(op.Mul(op.Mul(inner, s), s), one)

        return [outer(op.Add(t, one)), central(t), central(op.Sub(one, t)), outer(op.Sub(two, t))]

    # -- padding and flat indices
    def _index(self, index: Any, axis: int, stride: Any) -> Any:
        """A tap's index after padding, as int64 rows of the row image, times the axis stride."""
        op, zero, last = self.op, self._scalar(0), self.lasts[axis]
        if self.padding_mode == "zeros":  # -1 and size land on the zero border of the padded image
            index = op.Add(op.Min(op.Max(index, self._scalar(-1)), self.float_sizes[axis]), self._scalar(1))
        elif self.padding_mode == "border":
            index = op.Min(op.Max(index, zero), last)
        else:
            index = op.Min(op.Max(op.Floor(self._reflected(index, *self.mirrors[axis])), zero), last)
        rows = op.cast(index, np.int64)
        return rows if stride is None else op.Mul(rows, stride)

    def _mirror(self, axis: int) -> tuple[Any, Any, Any]:
        """The reflection borders of an axis and their distance: [0, size - 1] with align_corners,
        else [-0.5, size - 0.5]. The span is taken as at least 1: it is 0 only for a 1-pixel
        axis with align_corners, where the final clamp maps every index to pixel 0 anyway (the
        spec's formula would divide by zero)."""
        op = self.op
        if self.align_corners:
            low, high = self._scalar(0), self.lasts[axis]
        else:
            low, high = self._scalar(-0.5), op.Sub(self.float_sizes[axis], self._scalar(0.5))
        return low, high, op.Max(op.Sub(high, low), self._scalar(1))

    def _reflected(self, x: Any, low: Any, high: Any, span: Any) -> Any:
        """GsReflect of an integer-valued index: reflect by the nearer border, floor(distance / span)
        times (exact: only halves and integers). Floor equals the spec's trunc afterwards because
        the reflected value is >= -0.5 and the result is clamped at 0."""
        op, half = self.op, self._scalar(0.5)
        below, above = op.Less(x, low), op.Greater(x, high)
        distance = op.Where(below, op.Sub(low, x), op.Sub(x, high))
        folds = op.Floor(op.Div(distance, span))
        rest = op.Sub(distance, op.Mul(folds, span))
        half_folds = op.Mul(folds, half)
        odd = op.Not(op.Equal(op.Floor(half_folds), half_folds))
        from_below = op.Where(odd, op.Sub(high, rest), op.Add(low, rest))
        from_above = op.Where(odd, op.Add(low, rest), op.Sub(high, rest))
        return op.Where(below, from_below, op.Where(above, from_above, x))

    def _row_image(self) -> tuple[Any, list[Any]]:
        """The image as rows of channels [N * S, C] (with a zero border for zeros padding) and
        its spatial sizes innermost first."""
        op, k = self.op, self.spatial
        image, sizes = self.x, self.sizes
        if self.padding_mode == "zeros":
            border = [0, 0] + [1] * k
            image = op.Pad(image, op.int64(border + border))
            two = op.int64([2])
            sizes = [op.Add(s, two) for s in sizes]
        rows = op.Flatten(op.Transpose(image, perm=[0, *range(2, k + 2), 1]), axis=k + 1)
        return rows, sizes

    def _strides(self, sizes: list[Any]) -> list[Any]:
        """Row strides per axis (None for the innermost: 1) and, last, the image's row count."""
        strides: list[Any] = [None]
        for size in sizes:
            strides.append(size if strides[-1] is None else self.op.Mul(strides[-1], size))
        return strides

    def _batch_offsets(self, rows_per_item: Any) -> Any:
        """n * rows_per_item for each batch item n, as [N, 1] int64."""
        op = self.op
        count = op.Reshape(op.slice(self.x_shape, [0], [1]), op.int64([]))
        items = op.Range(op.int64(0), count, op.int64(1))
        return op.unsqueeze(op.Mul(items, rows_per_item), [1])

    # -- helpers
    def _computed(self, tensor: Any) -> Any:
        return tensor if self.op.ctx.numpy_dtype(tensor) == self.dtype else self.op.cast(tensor, self.dtype)

    def _scalar(self, value: float) -> Any:
        """A scalar initializer of the compute type, one per value."""
        if value not in self._constants:
            self._constants[value] = self.op.constant(np.asarray(value, self.dtype))
        return self._constants[value]
