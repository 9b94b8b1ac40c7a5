"""Numerical verification: inputs, the reference run, local region checks, comparisons.

The pass manager calls this as a hook. The reference model runs once, capturing its outputs
and the tensors at the boundaries of the regions the passes rewrote. Each rewritten region
then runs alone on those captured boundary values and must reproduce the captured values of
the tensors it replaced; one final end-to-end run compares the outputs. Integer and boolean
tensors compare exactly, NaN and Inf positions must match, and outputs whose row order the
ONNX spec leaves open (NonMaxSuppression) compare as sets of rows.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from graphfix import execute, ir
from graphfix.driver import UNORDERED_OUTPUT_OPS, Region, TensorName
from graphfix.errors import InputError, UsageError
from graphfix.report import Comparison
from graphfix.rule import call_with_bindings

__all__ = [
    "Tolerance",
    "InputSpec",
    "model_inputs",
    "proto_inputs",
    "parse_input_shape",
    "parse_input_range",
    "load_inputs",
    "make_feeds",
    "compare",
    "Verifier",
    "RegionResult",
    "reference_reads",
    "unordered_outputs",
]

logger = logging.getLogger(__name__)

_SEED = 0
_SPATIAL_DEFAULT = 64
_OTHER_DEFAULT = 16


@dataclass(frozen=True)
class Tolerance:
    """Elementwise |actual - expected| <= atol + rtol * |expected|, loosened for 16-bit floats."""

    atol: float = 1e-5
    rtol: float = 1e-4

    def for_dtype(self, dtype: np.dtype) -> tuple[float, float]:
        if dtype == np.float16:
            return max(self.atol, 1e-3), max(self.rtol, 1e-3)
        if dtype.name == "bfloat16":
            return max(self.atol, 1e-2), max(self.rtol, 1e-2)
        return self.atol, self.rtol


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    dims: tuple[int | str | None, ...]


def model_inputs(graph: ir.Graph) -> list[InputSpec]:
    """The graph's inputs (initializers excluded) with dtype and dims."""
    specs = []
    for tensor in graph.inputs:
        dtype = ir.numpy_dtype(tensor)
        if dtype is None:
            raise InputError(f"input {tensor.name!r} has no element type graphfix can feed")
        specs.append(InputSpec(tensor.name, dtype, ir.shape(tensor) or ()))
    return specs


def proto_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The inputs of a ModelProto (initializers excluded), read without importing the graph."""
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"input {value.name!r} has no element type graphfix can feed") from None
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim)
        specs.append(InputSpec(value.name, dtype, dims))
    return specs


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """`name:1x3x800x1216` (name may contain ':'; a scalar is `name:`)."""
    name, _, dims = text.rpartition(":")
    if not name:
        raise UsageError(f"--input-shape {text!r}: expected NAME:DIMxDIM...")
    try:
        return name, tuple(int(d) for d in dims.split("x")) if dims else ()
    except ValueError:
        raise UsageError(f"--input-shape {text!r}: dims must be integers joined by 'x'") from None


def parse_input_range(text: str) -> tuple[str, tuple[float, float]]:
    """`name:LOW,HIGH` - values are drawn uniformly from [LOW, HIGH)."""
    match = re.fullmatch(r"(.+):(-?[\d.eE+-]+),(-?[\d.eE+-]+)", text)
    if not match:
        raise UsageError(f"--input-range {text!r}: expected NAME:LOW,HIGH")
    return match.group(1), (float(match.group(2)), float(match.group(3)))


def load_inputs(path: str | Path) -> dict[str, np.ndarray]:
    """Input arrays from an .npz file, by input name.

    Keys are input names; when any key has the `input:` prefix (graphfix's samples also store
    reference outputs in the same file), only those keys are inputs.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            prefixed = [key for key in data.files if key.startswith("input:")]
            keys = prefixed or data.files
            return {key.removeprefix("input:"): data[key] for key in keys}
    except (OSError, ValueError) as error:
        raise InputError(f"--inputs {path}: cannot read ({error})") from None


def make_feeds(
    specs: Sequence[InputSpec],
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    ranges: Mapping[str, tuple[float, float]] | None = None,
    data: Mapping[str, np.ndarray] | None = None,
    seed: int = _SEED,
) -> dict[str, np.ndarray]:
    """Seeded input arrays for every model input.

    Symbolic dims take one value per symbol: the first axis 1, the last two axes of a float
    input of rank >= 3 (image height and width) 64, others 16, unless `shapes` says otherwise.
    Floats are uniform in [-1, 1), integers in {0, 1} (safe as indices, ids and masks), booleans
    random; `ranges` overrides per input; `data` supplies arrays directly.
    """
    shapes, ranges, data = dict(shapes or {}), dict(ranges or {}), dict(data or {})
    unknown = sorted((set(shapes) | set(ranges) | set(data)) - {s.name for s in specs})
    if unknown:
        raise UsageError(f"the model has no input {unknown[0]!r} (inputs: {', '.join(s.name for s in specs)})")
    rng = np.random.default_rng(seed)
    symbols: dict[str, int] = {}
    feeds = {}
    for spec in specs:
        if spec.name in data:
            feeds[spec.name] = _checked_data(spec, data[spec.name])
            continue
        dims = shapes.get(spec.name) or _resolve_dims(spec, symbols)
        feeds[spec.name] = _random(spec.dtype, tuple(dims), ranges.get(spec.name), rng)
    return feeds


def _checked_data(spec: InputSpec, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != spec.dtype:
        raise InputError(f"--inputs: {spec.name} has dtype {array.dtype}, the model wants {spec.dtype}")
    if len(array.shape) != len(spec.dims) or any(
        isinstance(d, int) and d != a for d, a in zip(spec.dims, array.shape)
    ):
        raise InputError(f"--inputs: {spec.name} has shape {array.shape}, the model wants {spec.dims}")
    return array


def _resolve_dims(spec: InputSpec, symbols: dict[str, int]) -> list[int]:
    dims = []
    for axis, dim in enumerate(spec.dims):
        if isinstance(dim, (int, np.integer)) and dim >= 0:
            dims.append(int(dim))
            continue
        default = _default_dim(spec, axis)
        if isinstance(dim, str) and dim:
            dims.append(symbols.setdefault(dim, default))
        else:
            dims.append(default)
    return dims


def _default_dim(spec: InputSpec, axis: int) -> int:
    if axis == 0:
        return 1
    if spec.dtype.kind == "f" and len(spec.dims) >= 3 and axis >= len(spec.dims) - 2:
        return _SPATIAL_DEFAULT
    return _OTHER_DEFAULT


def _random(dtype: np.dtype, dims: tuple[int, ...], value_range: tuple[float, float] | None, rng: np.random.Generator) -> np.ndarray:
    if dtype == np.bool_:
        return rng.integers(0, 2, size=dims).astype(np.bool_)
    low, high = value_range or ((-1.0, 1.0) if dtype.kind == "f" else (0, 2))
    if dtype.kind in "iu":
        return rng.integers(int(low), max(int(high), int(low) + 1), size=dims).astype(dtype)
    return rng.uniform(low, high, size=dims).astype(dtype)


# ----------------------------------------------------------------------------- comparison


def compare(
    name: str,
    actual: np.ndarray,
    expected: np.ndarray,
    tolerance: Tolerance,
    *,
    unordered_rows: bool = False,
) -> Comparison:
    """Compare one tensor with its reference (see module docstring for the rules)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        return Comparison(name, False, float("inf"), float("inf"), f"shape {actual.shape} != reference {expected.shape}")
    if actual.dtype != expected.dtype:
        return Comparison(name, False, float("inf"), float("inf"), f"dtype {actual.dtype} != reference {expected.dtype}")
    if unordered_rows and actual.ndim == 2:
        actual, expected = _sorted_rows(actual), _sorted_rows(expected)
    if actual.dtype.kind not in "fc":
        differ = int(np.count_nonzero(actual != expected))
        if not differ:
            return Comparison(name, True)
        diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64)) if actual.dtype != np.bool_ else (actual != expected)
        return Comparison(name, False, float(np.max(diff)), float("inf"), f"{differ} of {actual.size} values differ (exact comparison)")
    return _compare_floats(name, actual, expected, tolerance)


def _sorted_rows(array: np.ndarray) -> np.ndarray:
    if array.shape[0] == 0:
        return array
    return array[np.lexsort(array.T[::-1])]


def _compare_floats(name: str, actual: np.ndarray, expected: np.ndarray, tolerance: Tolerance) -> Comparison:
    atol, rtol = tolerance.for_dtype(expected.dtype)
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    if np.any(nan_a != nan_e):
        count = int(np.count_nonzero(nan_a != nan_e))
        return Comparison(name, False, float("inf"), float("inf"), f"NaN at {count} positions where the reference has none (or vice versa)")
    inf_a, inf_e = np.isinf(a), np.isinf(e)
    if np.any((inf_a | inf_e) & (a != e)):
        return Comparison(name, False, float("inf"), float("inf"), "Inf positions or signs differ from the reference")
    finite = ~(nan_a | inf_a)
    if not np.any(finite):
        return Comparison(name, True)
    diff = np.abs(a[finite] - e[finite])
    max_abs = float(diff.max())
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.abs(e[finite]))
    max_rel = float(rel.max())
    ok = bool(np.all(diff <= atol + rtol * np.abs(e[finite])))
    reason = "" if ok else f"exceeds atol={atol:g} rtol={rtol:g}"
    return Comparison(name, ok, max_abs, max_rel, reason)


# ----------------------------------------------------------------------------- the verifier


@dataclass
class RegionResult:
    """A region's local check: ok, comparisons, or why it could not run."""

    ok: bool
    comparisons: list[Comparison] = field(default_factory=list)
    unverified: str = ""

    @property
    def worst(self) -> Comparison | None:
        failing = [c for c in self.comparisons if not c.ok]
        pool = failing or self.comparisons
        return max(pool, key=lambda c: (c.max_abs, c.max_rel)) if pool else None


class Verifier:
    """Runs models and regions against the reference; counts the full onnxruntime runs.

    Args:
        feeds: the input arrays of every verification run.
        tolerance: atol/rtol for float comparisons.
        mode: "incremental" (regions + one final run) or "full" (a full run after every pass).
    """

    def __init__(self, feeds: Mapping[str, np.ndarray], tolerance: Tolerance = Tolerance(), mode: str = "incremental"):
        if mode not in ("incremental", "full"):
            raise UsageError(f"verification mode must be incremental or full, not {mode!r}")
        self.feeds = dict(feeds)
        self.tolerance = tolerance
        self.mode = mode
        self.full_runs = 0
        self.region_checks = 0
        self.captured: dict[str, np.ndarray] = {}
        self.produced: dict[str, np.ndarray] = {}

    def run(self, model: ir.Model, extra_outputs: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """One full run of the model as it is now; returns outputs and the extra tensors.

        Raises:
            execute.NotRunnable: onnxruntime (or a kernel) cannot run it; names the node.
        """
        proto = ir.to_proto(model)
        self.full_runs += 1
        return execute.run_model(proto, self.feeds, extra_outputs)

    def capture(self, model: ir.Model, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The reference run: outputs plus `names`, remembered for region checks."""
        values = self.run(model, names)
        self.captured.update(values)
        return values

    def lookup(self, name: str) -> np.ndarray | None:
        """A reference value: captured first, else produced by an earlier verified region."""
        if name in self.captured:
            return self.captured[name]
        if name in self.feeds:
            return self.feeds[name]
        return self.produced.get(name)

    def check_regions(self, regions: Sequence[Region], opsets: Sequence[onnx.OperatorSetIdProto], keep: set[str]) -> list[RegionResult]:
        """Check the regions of one pass: all in one onnxruntime session when possible.

        Each region's tensors are renamed apart, its inputs come from the reference (or from an
        earlier region of the batch, for tensors earlier rewrites created), and every region's
        outputs are compared with what it replaced. When the batch cannot run, each region runs
        alone so the failure is attributed to the right one.
        """
        batch = _Batch.plan(self, regions, opsets)
        if batch is not None:
            try:
                outputs = execute.evaluate(batch.program, batch.feeds, batch.wanted)
            except execute.NotRunnable:
                outputs = None
            if outputs is not None:
                return [self._judge(region, values, keep) for region, values in batch.split(outputs)]
        return [self.check_region(region, opsets, keep) for region in regions]

    def check_region(self, region: Region, opsets: Sequence[onnx.OperatorSetIdProto], keep: set[str]) -> RegionResult:
        """Run one rewritten region on reference boundary values; compare what it replaced."""
        feeds = {}
        for name in region.inputs:
            value = self.lookup(name)
            if value is None:
                return RegionResult(False, unverified=f"no reference value for {name!r}")
            feeds[name] = value
        program = execute.Program(nodes=region.nodes, initializers=_initializer_values(region), opsets=opsets)
        produced_names = [n for node in region.nodes for n in node.output if n]
        try:
            values = execute.evaluate(program, feeds, produced_names) if produced_names else {}
        except execute.NotRunnable as error:
            return RegionResult(False, unverified=str(error))
        return self._judge(region, {**feeds, **program.initializers, **values}, keep)

    def _judge(self, region: Region, values: Mapping[str, np.ndarray], keep: set[str]) -> RegionResult:
        """Compare a region's values with the reference (or the rule's reference semantics)."""
        try:
            expected = self._expected(region, {n: values[n] for n in region.inputs})
        except execute.NotRunnable as error:
            return RegionResult(False, unverified=str(error))
        self.region_checks += 1
        comparisons = [
            compare(reference, values[name], expected[reference], self.tolerance, unordered_rows=reference in region.unordered)
            for reference, name in region.compare
        ]
        ok = all(c.ok for c in comparisons)
        if ok:
            self.produced.update({n: v for n, v in values.items() if n in keep and n not in self.captured})
        return RegionResult(ok, comparisons)

    def _expected(self, region: Region, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if region.reference is None:
            found = {ref: self.lookup(ref) for ref, _ in region.compare}
            found.update({ref: feeds[ref] for ref, value in found.items() if value is None and ref in feeds})
            missing = [ref for ref, value in found.items() if value is None]
            if missing:
                raise execute.NotRunnable(region.root, "?", f"no reference value for {missing[0]!r}")
            return found
        rule, bindings = region.reference
        values = {key: self._binding_value(value) for key, value in bindings.items()}
        ctx = _ReferenceContext(options={**rule.option_defaults, **rule.options})
        result = call_with_bindings(rule.reference_fn, ctx, values)
        arrays = list(result) if isinstance(result, (tuple, list)) else [result]
        return {ref: np.asarray(array) for (ref, _), array in zip(region.compare, arrays)}

    def _binding_value(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self._binding_value(v) for v in value]
        if isinstance(value, ir.Constant):
            return np.asarray(value.values)
        if isinstance(value, TensorName):
            found = self.lookup(value)
            if found is None:
                raise execute.NotRunnable("?", "?", f"no reference value for {value!r}")
            return found
        return value

    def compare_outputs(
        self, actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], unordered: set[str]
    ) -> list[Comparison]:
        return [
            compare(name, actual[name], expected[name], self.tolerance, unordered_rows=name in unordered)
            for name in expected
        ]


def _initializer_values(region: Region) -> dict[str, np.ndarray]:
    return {n: np.asarray(c.values) for n, c in region.initializers.items()}


@dataclass
class _Batch:
    """The regions of one pass as one program: tensors renamed apart, inputs wired to the
    reference values or to the renamed outputs of earlier regions of the batch."""

    program: execute.Program
    feeds: dict[str, np.ndarray]
    wanted: list[str]
    plans: list[tuple[Region, dict[str, str]]]  # region, its tensor name -> batch name

    @classmethod
    def plan(cls, verifier: Verifier, regions: Sequence[Region], opsets: Sequence[onnx.OperatorSetIdProto]) -> _Batch | None:
        nodes: list[onnx.NodeProto] = []
        initializers: dict[str, np.ndarray] = {}
        feeds: dict[str, np.ndarray] = {}
        produced: dict[str, str] = {}  # tensors of earlier regions of this batch
        plans = []
        for index, region in enumerate(regions):
            if any(execute.has_subgraph(node) for node in region.nodes):
                return None
            names: dict[str, str] = {}
            for name in region.inputs:
                value = verifier.captured.get(name, verifier.feeds.get(name))
                if value is None and name in produced:
                    names[name] = produced[name]
                    continue
                value = value if value is not None else verifier.produced.get(name)
                if value is None:
                    return None
                feeds.setdefault(name, value)
                names[name] = name
            initializers.update(_initializer_values(region))
            names.update({n: n for n in region.initializers})
            for node in region.nodes:
                renamed = onnx.NodeProto()
                renamed.CopyFrom(node)
                renamed.input[:] = [names.get(n, n) if n else "" for n in node.input]
                for position, output in enumerate(node.output):
                    if output:
                        names[output] = f"{index}|{output}"
                        renamed.output[position] = names[output]
                nodes.append(renamed)
            produced.update({n: b for n, b in names.items() if b != n})
            plans.append((region, names))
        wanted = [b for _, names in plans for n, b in names.items() if b != n]
        return cls(execute.Program(nodes, initializers, opsets), feeds, list(dict.fromkeys(wanted)), plans)

    def split(self, outputs: Mapping[str, np.ndarray]) -> list[tuple[Region, dict[str, np.ndarray]]]:
        """Each region with its values under its own tensor names."""
        values = {**self.feeds, **self.program.initializers, **outputs}
        return [(region, {name: values[batch] for name, batch in names.items()}) for region, names in self.plans]


@dataclass(frozen=True)
class _ReferenceContext:
    """The `ctx` a rule's reference function receives."""

    options: Mapping[str, Any]


def reference_reads(regions: Sequence[Region]) -> set[str]:
    """Every tensor name some region reads or compares against."""
    names: set[str] = set()
    for region in regions:
        names.update(region.inputs)
        names.update(ref for ref, _ in region.compare)
    return names


def unordered_outputs(model: ir.Model) -> set[str]:
    """Graph outputs produced directly by ops whose row order is unspecified."""
    result = set()
    for tensor in model.graph.outputs:
        node = ir.producer(tensor)
        if node is not None and node.op in UNORDERED_OUTPUT_OPS:
            result.add(tensor.name)
    return result

