"""Rewrite CumSum as a triangular MatMul or a log-step prefix sum of Slice/Concat/Add."""

from __future__ import annotations

import numpy as np

import graphfix as gf

# A dynamic integer axis gets enough doubling steps for every length below 2**31, the largest
# dimension TensorRT indexes with 32-bit dims (7.2-8.6); longer steps see empty slices.
_DYNAMIC_STEPS = 31
# The float32 MatMul form sums 0/1-valued integers exactly while partial sums stay below 2**24.
_FLOAT32_EXACT_COUNT = 1 << 24


@gf.rule(limitation=("cumsum.missing", "cumsum.axis_not_weights"), options={"matmul_max_length": 128})
class DecomposeCumsum:
    """Rewrite CumSum (any axis, exclusive, reverse) into MatMul or Slice/Concat/Add.

    TensorRT limitation: TensorRT 7.2 has no CumSum importer (S72; SuperGlue's `arange_like`
    and every position-ids-from-mask text model use it); 8.0 to 10.x import it only with the
    axis as an initializer, lower it to a loop, and list FP32/FP16 as its only types
    (S80-S86, S100, S1016; onnx-tensorrt operators.md). Keys `cumsum.missing`,
    `cumsum.axis_not_weights`. On targets that import CumSum, a float CumSum whose axis is
    already an initializer is left alone; an integer one is still rewritten (exactly, see below).

    Rewrite: the axis must fold to a constant (a runtime axis is a near miss). The length of
    the axis is read from the runtime shape, so dynamic lengths work. Two forms, both built from
    ops every TensorRT release imports:

    * Triangular MatMul (float inputs when the axis is dynamic or at most the option
      `matmul_max_length` = 128 long): `y = x @ M` with the 0/1 matrix `M[i, j]` = "input i
      counts for output j" (i <= j, i < j when exclusive, mirrored when reverse) built in-graph
      from `Range(0, n)`, `Less`/`Greater` and `Where` (no Trilu: 7.2-8.4 lack it); an axis
      other than the last is moved there and back with two Transposes. The
      sums are the same as CumSum's up to float rounding order. Not exact for Inf/NaN inputs:
      the masked-off terms are 0 * Inf = NaN. onnxruntime 1.31 fuses the Transpose into its
      MatMul and that kernel fails when another dimension is empty (an onnxruntime defect;
      the graph is valid).
    * Log-step prefix sum (Hillis-Steele), for integers and for float axes longer than the
      threshold: ceil(log2 n) rounds of `y = Concat(y[:d], y[d:] + y[:-d])` with d = 1, 2, 4, ...
      (mirrored for reverse; exclusive shifts the input by one with a zero first). Only Slice
      with constant bounds, Concat and Add: exact for integers, overflow wrapping included
      (addition mod 2**k is associative). A dynamic integer axis gets 31 rounds, enough for any
      length below 2**31; rounds past the length see empty slices and copy y unchanged.

    Integers never take a float round trip, with one exactly provable exception: an integer
    input that is a Cast from BOOL or a ConstantOfShape of 0 or 1 (mask counts, `arange_like`)
    has partial sums at most n, exact in float32 below 2**24, and a MatMul form that long would
    need an n x n mask of 2**48 elements, so the float32 MatMul form (cast back) is exact
    wherever it runs. MatMul is not used on integers otherwise: TensorRT's MatMul takes
    FP32/FP16/BF16 only (onnxruntime has int32/int64 MatMul, TensorRT does not).

    Speed in onnxruntime (CPU, one thread): with 64 rows the MatMul form runs as fast as
    onnxruntime's CumSum kernel up to n = 128 (hence the default threshold) and 5x slower at
    n = 512; the log-step form takes 2-4x the kernel's time (one pass per doubling). The
    committed samples take 0.94-1.07x their original time after the rewrite: where slower, it
    is the ~10 small nodes that build the mask from the runtime length (about 1 us each),
    visible only on tiny models. A dynamic integer axis that is not a 0/1 count takes 31
    log-step rounds, 1.4-1.7x the whole-model time had the samples taken that path. On
    TensorRT the MatMul is one GEMM and the log-step rounds fuse into few layers.
    """

    def pattern(self, op, x, axis, exclusive, reverse):
        return op.CumSum(x, axis, exclusive=exclusive, reverse=reverse)

    def check(self, ctx, x, axis, exclusive, reverse):
        rank, dtype = ctx.rank(x), ctx.numpy_dtype(x)
        if rank is None or dtype is None:
            return gf.reject("the input's rank or element type is unknown", x)
        axis_value = ctx.constant(axis)
        if axis_value is None:
            return gf.reject(
                "the axis is computed at run time: TensorRT needs it constant and the rewrite "
                "must know which axis to sum (fold the axis, or fix the input shapes)", axis)
        imported = ctx.target is not None and not ctx.target.is_active("cumsum.missing")
        if imported and ctx.is_weights(axis) and np.issubdtype(dtype, np.floating):
            return gf.reject("the target imports CumSum with an initializer axis", ctx.root)
        position = int(np.asarray(axis_value).reshape(-1)[0])
        if not -rank <= position < rank:
            return gf.reject(f"axis {position} is out of range for rank {rank}", axis)
        position %= rank
        length = (ctx.shape(x) or (None,) * rank)[position]
        length = length if isinstance(length, (int, np.integer)) else None
        form = _choose_form(ctx, x, dtype, length)
        return gf.accept(position=position, length=length, form=form)

    def rewrite(self, op, x, exclusive, reverse, position, length, form):
        scan = _Scan(op, position, bool(exclusive), bool(reverse))
        if form == "log_step":
            steps = _DYNAMIC_STEPS if length is None else max(length - 1, 0).bit_length()  # ceil(log2 n)
            return scan.log_step(x, steps)
        dtype = op.ctx.numpy_dtype(x)
        if _is_float(dtype):
            return scan.triangle_matmul(x, length)
        return op.cast(scan.triangle_matmul(op.cast(x, np.float32), length), dtype)


def _choose_form(ctx, x, dtype: np.dtype, length: int | None) -> str:
    """'matmul' for floats (and 0/1 integers) unless the axis is static and long, else 'log_step'."""
    moderate = length is None or length <= int(ctx.options["matmul_max_length"])
    if _is_float(dtype):
        return "matmul" if moderate else "log_step"
    counts = _is_zero_one(ctx, x) and (length is None or length < _FLOAT32_EXACT_COUNT)
    return "matmul" if counts and moderate else "log_step"


def _is_float(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype.name == "bfloat16"  # ml_dtypes' bfloat16 has kind "V"


def _is_zero_one(ctx, x) -> bool:
    """The integer tensor provably holds only 0 and 1: a Cast from BOOL or a 0/1 ConstantOfShape."""
    node = ctx.producer(x)
    if node is None:
        return False
    if node.op == "Cast":
        return ctx.dtype(node.inputs[0]) == "bool"
    if node.op == "ConstantOfShape":
        value = ctx.attr(node, "value")
        fill = 0 if value is None else np.asarray(getattr(value, "values", value)).reshape(-1)[0]
        return fill in (0, 1)
    return False


class _Scan:
    """Builds one CumSum's replacement: the axis, the flags, and the builder."""

    def __init__(self, op, axis: int, exclusive: bool, reverse: bool):
        self.op, self.axis, self.exclusive, self.reverse = op, axis, exclusive, reverse

    # -- triangular MatMul
    def triangle_matmul(self, x, length: int | None):
        """y[..., j] = sum_i x[..., i] M[i, j] over the last axis (a Transpose brings the axis there:
        onnxruntime 1.31 refuses a 2-D left MatMul operand against an empty batch dimension)."""
        op, rank = self.op, self.op.ctx.rank(x)
        mask = self._mask(x, length, op.ctx.numpy_dtype(x))
        if self.axis == rank - 1:
            return op.MatMul(x, mask)
        perm = [d for d in range(rank) if d != self.axis] + [self.axis]
        summed = op.MatMul(op.Transpose(x, perm=perm), mask)
        return op.Transpose(summed, perm=[int(p) for p in np.argsort(perm)])

    def _mask(self, x, length: int | None, dtype: np.dtype):
        """The n x n 0/1 matrix: entry (i, j) is 1 when input i counts for output j."""
        op = self.op
        n = op.int64(length) if length is not None else op.Gather(op.Shape(x), op.int64(self.axis), axis=0)
        positions = op.Range(op.int64(0), n, op.int64(1))
        inputs, outputs = op.unsqueeze(positions, [1]), op.unsqueeze(positions, [0])
        # In scan order, input i comes before output j when first < second.
        first, second = (inputs, outputs) if not self.reverse else (outputs, inputs)
        one, zero = np.ones((), dtype), np.zeros((), dtype)
        if self.exclusive:  # strictly before
            return op.Where(op.Less(first, second), one, zero)
        return op.Where(op.Less(second, first), zero, one)  # not after: before or the same

    # -- log-step prefix sum
    def log_step(self, x, steps: int):
        y = self._shifted_by_one(x) if self.exclusive else x
        for k in range(steps):
            d = 1 << k
            # Slices past either end are empty: rounds with d >= n copy y unchanged.
            head, tail = self._slice(y, 0, -d), self._slice(y, d, gf.SLICE_TO_END)  # y[:-d], y[d:]
            if self.reverse:  # y[j] += y[j + d] where j + d < n
                y = self._concat(self.op.Add(head, tail), self._slice(y, -d, gf.SLICE_TO_END))
            else:  # y[j] += y[j - d] where j >= d
                y = self._concat(self._slice(y, 0, d), self.op.Add(tail, head))
        return y

    def _shifted_by_one(self, x):
        """x moved one step along the scan with a zero entering: the exclusive sum's input."""
        op = self.op
        first = self._slice(x, 0, 1)
        zero = op.Expand(np.zeros((), op.ctx.numpy_dtype(x)), op.Shape(first))
        if self.reverse:
            return self._concat(self._slice(x, 1, gf.SLICE_TO_END), zero)
        return self._concat(zero, self._slice(x, 0, -1))

    def _slice(self, x, start: int, end: int):
        return self.op.slice(x, [start], [end], [self.axis])

    def _concat(self, first, second):
        return self.op.Concat(first, second, axis=self.axis)
