"""Build plans and the hand-off to TensorRT: trtexec command lines and the tensorrt Python API.

Pure module: imports stdlib only (``tensorrt`` lazily inside the functions that call it) and
nothing from graphfix at run time. Every decision lives in ``BuildPlan`` (made and validated by
``make_plan`` against a target); ``trtexec_argv`` and ``build_engine`` only translate it.

Flag spellings per release come from trtexec's option parser (TXx = NVIDIA/TensorRT ``release/x``
``samples/common/sampleOptions.cpp``); API names from the Python bindings (PYx =
``python/src/infer/pyCore.cpp`` / ``python/src/parsers/pyOnnx.cpp`` at ``release/x``).
"""

from __future__ import annotations

import ctypes
import fnmatch
import logging
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # type hints only: trt.py stays free of graphfix imports at run time
    from graphfix.targets import Target

__all__ = [
    "BATCH_DIM_NAMES",
    "SEQUENCE_DIM_NAMES",
    "BuildError",
    "BuildPlan",
    "InputSpec",
    "ParseError",
    "PlanError",
    "ShapeRange",
    "TensorRTUnavailable",
    "TrtexecError",
    "TrtexecNotFound",
    "build_engine",
    "default_profile",
    "format_command",
    "make_plan",
    "parse_check",
    "parse_shape_range",
    "parse_shape_spec",
    "run_trtexec",
    "trtexec_argv",
]

log = logging.getLogger(__name__)

Dim = int | str | None
Version = tuple[int, int]


class PlanError(ValueError):
    """The requested build cannot be expressed for this target (the message says what to do)."""


class TensorRTUnavailable(RuntimeError):
    """The tensorrt Python package cannot be imported."""


class ParseError(RuntimeError):
    """TensorRT's ONNX parser refused the model; ``errors`` holds (node, message) pairs."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        lines = "; ".join(f"{n}: {m}" for n, m in errors) or "no error recorded"
        super().__init__(f"TensorRT's ONNX parser refused the model: {lines}")


class BuildError(RuntimeError):
    """The builder returned no engine."""


class TrtexecNotFound(RuntimeError):
    """trtexec is not on PATH; ``command`` is the command to run by hand."""

    def __init__(self, command: str):
        self.command = command
        super().__init__(f"trtexec is not on PATH; run it where TensorRT is installed: {command}")


class TrtexecError(RuntimeError):
    """trtexec exited with a non-zero status."""

    def __init__(self, command: str, returncode: int, output_tail: str):
        self.command, self.returncode, self.output_tail = command, returncode, output_tail
        super().__init__(f"trtexec exited with status {returncode}: {command}\n{output_tail}")


# --------------------------------------------------------------------------------------------
# Inputs and shapes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, numpy dtype name and dims (int static, str symbolic, None unknown)."""

    name: str
    dtype: str
    dims: tuple[Dim, ...]

    @property
    def is_dynamic(self) -> bool:
        """True if any dim is not a static int."""
        return any(not isinstance(d, int) or d < 0 for d in self.dims)


@dataclass(frozen=True)
class ShapeRange:
    """min/opt/max dims of one input in an optimization profile."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        if not (len(self.min) == len(self.opt) == len(self.max)):
            raise PlanError(f"shape range of {self.name!r}: min/opt/max have different ranks")
        for lo, mid, hi in zip(self.min, self.opt, self.max):
            if not 0 <= lo <= mid <= hi:
                raise PlanError(f"shape range of {self.name!r}: need 0 <= min <= opt <= max in "
                                f"every dim, got {_dims(self.min)} / {_dims(self.opt)} / "
                                f"{_dims(self.max)}")

    @classmethod
    def fixed(cls, name: str, dims: Sequence[int]) -> ShapeRange:
        """A range with min = opt = max."""
        t = tuple(int(d) for d in dims)
        return cls(name, t, t, t)


def _dims(dims: Sequence[int]) -> str:
    return "x".join(str(d) for d in dims)


_DIMS_RE = re.compile(r"^(\d+(x\d+)*|scalar|)$")


def _parse_dims(text: str) -> tuple[int, ...]:
    text = text.strip()
    if text in ("", "scalar"):
        return ()
    return tuple(int(t) for t in text.split("x"))


def _split_spec(text: str) -> tuple[str | None, list[str]]:
    """Split ``name:f1[:f2...]``; a name in single quotes may contain ':' (trtexec's rule)."""
    text = text.strip()
    if text.startswith("'"):
        end = text.find("'", 1)
        if end < 0 or not text[end + 1:].startswith(":"):
            raise PlanError(f"bad shape spec {text!r}: expected 'name':dims")
        return text[1:end], text[end + 2:].split(":")
    return None, text.split(":")


def parse_shape_spec(text: str) -> ShapeRange:
    """Parse ``name:1x3x224x224`` into a fixed ShapeRange.

    As in trtexec, the dims follow the last ':' and a name containing ':' may be quoted
    (``'input:0':1x3``). ``name:`` or ``name:scalar`` is a 0-D shape.

    Raises:
        PlanError: Malformed spec.
    """
    quoted, parts = _split_spec(text)
    if quoted is not None:
        name, fields = quoted, parts
    else:
        name, fields = ":".join(parts[:-1]), parts[-1:]
    if not name or len(fields) != 1 or not _DIMS_RE.match(fields[0].strip()):
        raise PlanError(f"bad shape spec {text!r}: expected NAME:AxBxC")
    return ShapeRange.fixed(name, _parse_dims(fields[0]))


def parse_shape_range(text: str) -> ShapeRange:
    """Parse ``name:MIN:OPT:MAX`` (each ``AxBxC``) or ``name:AxBxC`` (min = opt = max).

    Names containing ':' must be quoted when the text could also be read as a range
    (``'x:0':1x3:2x3:4x3``).

    Raises:
        PlanError: Malformed spec or min > opt > max.
    """
    quoted, parts = _split_spec(text)
    trailing = 0  # dims-looking fields at the end, the name keeps at least one field
    while trailing < len(parts) - 1 and _DIMS_RE.match(parts[-1 - trailing].strip()):
        trailing += 1
    if quoted is not None:
        name, fields = quoted, parts
    elif trailing >= 3:
        name, fields = ":".join(parts[:-3]), parts[-3:]
    elif trailing == 2:
        raise PlanError(f"bad shape range {text!r}: give one shape or three (MIN:OPT:MAX); "
                        f"quote a name that contains ':'")
    else:
        name, fields = ":".join(parts[:-1]), parts[-1:]
    if not name or len(fields) not in (1, 3) or not all(_DIMS_RE.match(f.strip()) for f in fields):
        raise PlanError(f"bad shape range {text!r}: expected NAME:MIN:OPT:MAX or NAME:AxBxC")
    dims = [_parse_dims(f) for f in fields]
    if len(dims) == 1:
        return ShapeRange.fixed(name, dims[0])
    return ShapeRange(name, *dims)


# Symbolic dim names read as a batch dim (case-insensitive). torch.onnx dynamic_axes usually say
# "batch" / "batch_size"; tf2onnx / unnamed exports leave dim 0 unnamed.
BATCH_DIM_NAMES = frozenset({"batch", "batch_size", "batchsize", "bs", "b", "n", "nb",
                             "n_batch", "num_batch", "batch_dim", "dynamic_batch"})
# Sequence-length names (transformers exports): 1..max_sequence, opt min(128, max_sequence).
SEQUENCE_DIM_NAMES = frozenset({"sequence", "sequence_length", "seq", "seq_len", "seqlen",
                                "sequence_len", "max_seq_len", "num_tokens", "tokens"})


def _conventional(dim: Dim, index: int, *, max_batch: int, opt_batch: int,
                  max_sequence: int) -> tuple[int, int, int] | None:
    label = dim.lower() if isinstance(dim, str) else None
    if label in BATCH_DIM_NAMES or (index == 0 and (dim is None or (
            label is not None and re.fullmatch(r"unk__\d+|\?", label)))):
        return 1, min(max(opt_batch, 1), max_batch), max_batch
    if label in SEQUENCE_DIM_NAMES:
        return 1, min(128, max_sequence), max_sequence
    return None


def default_profile(inputs: Sequence[InputSpec], overrides: Iterable[ShapeRange] = (), *,
                    max_batch: int = 8, opt_batch: int = 1,
                    max_sequence: int = 512) -> tuple[ShapeRange, ...]:
    """Make one optimization profile for the dynamic inputs.

    Static inputs are left out (their dims are fixed). A dynamic dim gets, in order: the user's
    override for that input; the range an override gave the same symbolic name on another
    input; a batch-like default (names in BATCH_DIM_NAMES, or an unnamed dim 0): 1..max_batch
    with opt ``opt_batch``; a sequence default (SEQUENCE_DIM_NAMES): 1..max_sequence, opt 128.

    Args:
        inputs: The model inputs.
        overrides: User ranges (``--shapes``), per input.
        max_batch: Largest batch of the profile.
        opt_batch: Batch the kernels are tuned for.
        max_sequence: Largest sequence length.

    Returns:
        One ShapeRange per dynamic input.

    Raises:
        PlanError: Unknown override input, override contradicting a static dim or rank, or
            a dynamic dim with no default; the message names the input and dim.
    """
    by_name = {i.name: i for i in inputs}
    given: dict[str, ShapeRange] = {}
    for r in overrides:
        spec = by_name.get(r.name)
        if spec is None:
            raise PlanError(f"--shapes names {r.name!r}, which is not a model input "
                            f"(inputs: {', '.join(by_name) or 'none'})")
        if len(r.min) != len(spec.dims):
            raise PlanError(f"--shapes for {r.name!r} has rank {len(r.min)}, the input has rank "
                            f"{len(spec.dims)} ({_show(spec.dims)})")
        for k, d in enumerate(spec.dims):
            if isinstance(d, int) and d >= 0 and not (r.min[k] == r.opt[k] == r.max[k] == d):
                raise PlanError(f"--shapes for {r.name!r} changes static dim {k} (= {d})")
        given[r.name] = r
    symbols: dict[str, tuple[int, int, int]] = {}
    for name, r in given.items():
        for k, d in enumerate(by_name[name].dims):
            if isinstance(d, str):
                symbols.setdefault(d, (r.min[k], r.opt[k], r.max[k]))

    profile, problems = [], []
    for spec in inputs:
        if not spec.is_dynamic:
            continue
        if spec.name in given:
            profile.append(given[spec.name])
            continue
        lo, mid, hi = [], [], []
        for k, d in enumerate(spec.dims):
            if isinstance(d, int) and d >= 0:
                rng: tuple[int, int, int] | None = (d, d, d)
            elif isinstance(d, str) and d in symbols:
                rng = symbols[d]
            else:
                rng = _conventional(d, k, max_batch=max_batch, opt_batch=opt_batch,
                                    max_sequence=max_sequence)
            if rng is None:
                what = f"'{d}'" if isinstance(d, str) else "unnamed"
                problems.append(f"input {spec.name!r} dim {k} ({what}) of {_show(spec.dims)}")
                continue
            lo.append(rng[0])
            mid.append(rng[1])
            hi.append(rng[2])
        if len(lo) == len(spec.dims):
            profile.append(ShapeRange(spec.name, tuple(lo), tuple(mid), tuple(hi)))
    if problems:
        raise PlanError("no default range for " + "; ".join(problems) +
                        ": give it with --shapes NAME:MIN:OPT:MAX (e.g. "
                        f"{_example(inputs, problems)})")
    return tuple(profile)


def _show(dims: Sequence[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _example(inputs: Sequence[InputSpec], problems: list[str]) -> str:
    spec = next(i for i in inputs if f"input {i.name!r}" in problems[0])
    one = "x".join(str(d) if isinstance(d, int) and d >= 0 else "1" for d in spec.dims)
    big = "x".join(str(d) if isinstance(d, int) and d >= 0 else "N" for d in spec.dims)
    return f"{spec.name}:{one}:{big}:{big}"


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------

# Precision tokens trtexec accepts in --layerPrecisions / --layerOutputTypes (TX8.4, TX8.6: fp32
# fp16 int32 int8; TX10.0+: + bf16).
_PRECISIONS_84 = frozenset({"fp32", "fp16", "int32", "int8"})
_PRECISIONS_10 = _PRECISIONS_84 | {"bf16"}


@dataclass(frozen=True)
class BuildPlan:
    """Everything decided about one engine build (pure data).

    Attributes:
        onnx_path: Model to parse.
        engine_path: Where the serialized engine goes.
        target_name: Target the plan was validated for ("trt8.6").
        target_version: (major, minor) of that target.
        profiles: Optimization profiles, each a tuple of ShapeRange (dynamic inputs only).
        fp16, bf16, int8: Weakly typed reduced-precision builder flags.
        strongly_typed: Create a strongly typed network.
        explicit_batch: Pass the EXPLICIT_BATCH creation flag (<= 9.x; ignored in 10.x, gone
            in 11).
        precision_constraints: "none", "obey" or "prefer" (binding layer precisions).
        layer_precisions: (layer name, precision) pairs; names are ONNX node names.
        layer_output_types: (layer name, output types) pairs.
        plugins: Plugin libraries to load before parsing.
        workspace_mib: Workspace pool limit in MiB (None = TensorRT's default).
        timing_cache: Timing cache file (read if present, written after the build).
        warnings: Things the user should know (INT8 without calibration, deprecations).
    """

    onnx_path: str
    engine_path: str
    target_name: str
    target_version: Version
    profiles: tuple[tuple[ShapeRange, ...], ...] = ()
    fp16: bool = False
    bf16: bool = False
    int8: bool = False
    strongly_typed: bool = False
    explicit_batch: bool = True
    precision_constraints: str = "none"
    layer_precisions: tuple[tuple[str, str], ...] = ()
    layer_output_types: tuple[tuple[str, tuple[str, ...]], ...] = ()
    plugins: tuple[str, ...] = ()
    workspace_mib: int | None = None
    timing_cache: str | None = None
    warnings: tuple[str, ...] = field(default=(), compare=False)


def _pairs(items: Iterable[Any], what: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        if isinstance(item, str):
            name, sep, value = item.rpartition(":")
            if not sep or not name:
                raise PlanError(f"bad {what} {item!r}: expected NAME:PRECISION")
            out.append((name.strip("'"), value))
        else:
            name, value = item
            out.append((str(name), value))
    return out


def make_plan(model_path: str | os.PathLike, inputs: Sequence[InputSpec], target: Target, *,
              fp16: bool = False, bf16: bool = False, int8: bool = False,
              shapes: Iterable[str | ShapeRange] = (), plugins: Iterable[str | os.PathLike] = (),
              workspace_mib: int | None = None,
              layer_precisions: Iterable[str | tuple[str, str]] = (),
              layer_output_types: Iterable[str | tuple[str, str | Sequence[str]]] = (),
              precision_constraints: str = "obey", strongly_typed: bool | None = None,
              timing_cache: str | os.PathLike | None = None,
              engine_path: str | os.PathLike | None = None, max_batch: int = 8,
              opt_batch: int = 1) -> BuildPlan:
    """Decide a build and validate it against the target.

    Args:
        model_path: The ONNX file.
        inputs: The model inputs (for the optimization profile).
        target: A concrete TensorRT target (not portable / trt-rtx).
        fp16, bf16, int8: Reduced precisions of a weakly typed build.
        shapes: ``NAME:MIN:OPT:MAX`` / ``NAME:AxB`` strings or ShapeRange overrides.
        plugins: Plugin libraries to load.
        workspace_mib: Workspace limit in MiB.
        layer_precisions: ``NAME:fp32`` strings or (name, precision) pairs, ONNX node names.
        layer_output_types: ``NAME:fp32[+fp32]`` strings or (name, types) pairs.
        precision_constraints: "obey" or "prefer", used when layer precisions are given.
        strongly_typed: Strongly typed network; None = the target's default (True on 11.x).
        timing_cache: Timing cache file.
        engine_path: Output; default ``<model stem>.<target>.engine`` next to the model.
        max_batch, opt_batch: Batch range of dynamic batch dims.

    Returns:
        The validated BuildPlan.

    Raises:
        PlanError: The target cannot build this (the message says what to do instead).
    """
    if target.family != "tensorrt" or target.version is None:
        raise PlanError(f"{target.label} is not a single TensorRT release: pick one to build for "
                        f"(e.g. --target trt10.16)" if target.family == "portable" else
                        f"{target.label} builds use its own tools (tensorrt_rtx); graphfix plans "
                        f"TensorRT builds only")
    v, label = target.version, target.label
    warnings: list[str] = []
    if strongly_typed is None:
        strongly_typed = target.strongly_typed_only
    if strongly_typed and not target.strongly_typed_available:
        raise PlanError(f"{label} has no strongly typed networks (the flag exists from 9.0)")
    if not strongly_typed and target.strongly_typed_only:
        raise PlanError(f"{label} builds strongly typed networks only")
    reduced = [n for n, on in (("fp16", fp16), ("bf16", bf16), ("int8", int8)) if on]
    if bf16 and v < (9, 0):
        raise PlanError(f"{label} has no BF16 (BF16 exists from TensorRT 9.0): use fp16")
    if reduced and strongly_typed:
        if target.strongly_typed_only:
            raise PlanError(f"{label} is strongly typed only: there is no --{reduced[0]}; the ONNX "
                            f"dtypes decide precision, so convert the model to FP16/BF16 with "
                            f"deliberate FP32 islands (Cast nodes, e.g. ModelOpt AutoCast)")
        raise PlanError(f"--{reduced[0]} has no effect on a strongly typed network (trtexec drops "
                        f"it): convert the ONNX to the precision you want, or build weakly typed")

    precs = _pairs(layer_precisions, "layer precision")
    outs = [(n, tuple(t.split("+")) if isinstance(t, str) else tuple(t))
            for n, t in _pairs(layer_output_types, "layer output type")]
    if precs or outs:
        if target.strongly_typed_only:
            raise PlanError(f"{label} has no per-layer precisions (strongly typed only): use a "
                            f"mixed-precision ONNX instead (Cast nodes around the layers to keep "
                            f"in FP32)")
        if strongly_typed:
            raise PlanError("strongly typed networks reject per-layer precisions: express them "
                            "with Cast nodes in the ONNX or build weakly typed")
        if v < (8, 4):
            raise PlanError(f"{label}: trtexec has no --layerPrecisions/--layerOutputTypes before "
                            f"8.4 (8.2 has --precisionConstraints only); target trt8.4+ or put "
                            f"Cast nodes in the ONNX")
        allowed = _PRECISIONS_10 if v >= (10, 0) else _PRECISIONS_84
        for name, p in precs + [(n, t) for n, ts in outs for t in ts]:
            if p not in allowed:
                raise PlanError(f"precision {p!r} for {name!r}: {label} takes "
                                f"{', '.join(sorted(allowed))}")
        for name, _ in precs + outs:
            if "," in name or "'" in name:
                raise PlanError(f"layer name {name!r} contains ',' or a quote, which trtexec's "
                                f"--layerPrecisions cannot carry: rename the node")
            if name.count("*") > 1:
                raise PlanError(f"layer name {name!r}: at most one '*' wildcard")
        if precision_constraints not in ("obey", "prefer"):
            raise PlanError("precision_constraints must be 'obey' or 'prefer' with layer "
                            "precisions")
        if not reduced:
            warnings.append("layer precisions without --fp16/--bf16/--int8 change nothing: the "
                            "build is FP32")
    else:
        precision_constraints = "none"
    if int8:
        warnings.append("INT8 without calibration: unless the ONNX carries Q/DQ nodes, TensorRT "
                        "uses placeholder scales and the engine's accuracy is meaningless")
    if v >= (10, 12) and (reduced or precs or outs):
        warnings.append("weak typing (reduced-precision flags, precision constraints) is "
                        "deprecated since TensorRT 10.12 (TX10.16): prefer a strongly typed "
                        "build of a mixed-precision ONNX")
    if timing_cache is not None and v < (8, 0):
        raise PlanError(f"{label} has no timing cache file (trtexec --timingCacheFile and "
                        f"IBuilderConfig timing caches start at 8.0)")
    if workspace_mib is not None and (not isinstance(workspace_mib, int) or workspace_mib <= 0):
        raise PlanError(f"workspace must be a positive number of MiB, got {workspace_mib!r}")

    overrides = [s if isinstance(s, ShapeRange) else parse_shape_range(s) for s in shapes]
    profile = default_profile(inputs, overrides, max_batch=max_batch, opt_batch=opt_batch)
    model = Path(model_path)
    engine = Path(engine_path) if engine_path is not None else model.with_name(
        f"{model.stem}.{target.name}.engine")
    return BuildPlan(
        onnx_path=str(model), engine_path=str(engine), target_name=target.name,
        target_version=v, profiles=(profile,) if profile else (), fp16=fp16, bf16=bf16,
        int8=int8, strongly_typed=bool(strongly_typed), explicit_batch=v < (10, 0),
        precision_constraints=precision_constraints, layer_precisions=tuple(precs),
        layer_output_types=tuple(outs), plugins=tuple(str(p) for p in plugins),
        workspace_mib=workspace_mib, timing_cache=None if timing_cache is None else
        str(timing_cache), warnings=tuple(warnings))


# --------------------------------------------------------------------------------------------
# trtexec
# --------------------------------------------------------------------------------------------


def _quote_name(name: str) -> str:
    # trtexec splits pairs on ',' and the name from the value on the last ':'; a name may be
    # wrapped in single quotes (TX8.4 splitNameAndValue / removeSingleQuotationMarks).
    if "," in name or "'" in name:
        raise PlanError(f"name {name!r} contains ',' or a quote, which trtexec cannot carry")
    return f"'{name}'" if ":" in name else name


def _shapes_arg(profile: Sequence[ShapeRange], which: str) -> str:
    return ",".join(f"{_quote_name(r.name)}:{_dims(getattr(r, which))}" for r in profile)


def trtexec_argv(plan: BuildPlan, target: Target) -> list[str]:
    """Return the trtexec command that performs ``plan``, in the flag spelling of ``target``.

    * ``--explicitBatch`` on 7.x only (TX7.2; deprecated no-op 8.2+, gone in TX10.0).
    * ``--minShapes/--optShapes/--maxShapes=name:AxB,...`` (same grammar since 7.x).
    * ``--fp16/--bf16/--int8`` (absent in TX11.0); ``--stronglyTyped`` on 10.x (TX10.0); a no-op
      on 11.x, so omitted.
    * ``--precisionConstraints=obey|prefer`` + ``--layerPrecisions`` + ``--layerOutputTypes``
      (TX8.4+).
    * ``--workspace=N`` through 8.2, ``--memPoolSize=workspace:N`` from 8.4 (TX8.4 deprecates
      --workspace, TX10.0 drops it). N is MiB without a suffix: the unit every version assumes.
    * ``--plugins=lib`` through 8.5, ``--staticPlugins=lib`` from 8.6 (TX8.6 deprecates
      --plugins).
    * ``--timingCacheFile=path`` (TX8.0+).

    Raises:
        PlanError: The plan was made for another target or needs what this trtexec lacks.
    """
    if plan.target_name != target.name or target.version is None:
        raise PlanError(f"the plan was made for {plan.target_name}, not {target.name}")
    v = target.version
    argv = ["trtexec", f"--onnx={plan.onnx_path}", f"--saveEngine={plan.engine_path}"]
    if v < (8, 0):
        argv.append("--explicitBatch")
    if len(plan.profiles) > 1:
        raise PlanError("trtexec_argv expresses one optimization profile; this plan has "
                        f"{len(plan.profiles)}")
    if plan.profiles and plan.profiles[0]:
        for flag, which in (("--minShapes", "min"), ("--optShapes", "opt"), ("--maxShapes", "max")):
            argv.append(f"{flag}={_shapes_arg(plan.profiles[0], which)}")
    if not target.strongly_typed_only:
        argv += [f"--{p}" for p, on in (("fp16", plan.fp16), ("bf16", plan.bf16),
                                        ("int8", plan.int8)) if on]
        if plan.strongly_typed:
            argv.append("--stronglyTyped")
    if plan.layer_precisions or plan.layer_output_types:
        if v < (8, 4) or target.strongly_typed_only:
            raise PlanError(f"{target.label}: trtexec has no --layerPrecisions")
        argv.append(f"--precisionConstraints={plan.precision_constraints}")
        if plan.layer_precisions:
            argv.append("--layerPrecisions=" + ",".join(
                f"{_quote_name(n)}:{p}" for n, p in plan.layer_precisions))
        if plan.layer_output_types:
            argv.append("--layerOutputTypes=" + ",".join(
                f"{_quote_name(n)}:{'+'.join(t)}" for n, t in plan.layer_output_types))
    if plan.workspace_mib is not None:
        argv.append(f"--workspace={plan.workspace_mib}" if v < (8, 4)
                    else f"--memPoolSize=workspace:{plan.workspace_mib}")
    flag = "--plugins" if v < (8, 6) else "--staticPlugins"
    argv += [f"{flag}={p}" for p in plan.plugins]
    if plan.timing_cache is not None:
        if v < (8, 0):
            raise PlanError(f"{target.label}: trtexec has no --timingCacheFile")
        argv.append(f"--timingCacheFile={plan.timing_cache}")
    return argv


def format_command(argv: Sequence[str]) -> str:
    """Return ``argv`` as one shell command line (POSIX quoting)."""
    return shlex.join(argv)


def run_trtexec(plan: BuildPlan, target: Target, *, timeout: float | None = None
                ) -> subprocess.CompletedProcess:
    """Run the trtexec command of ``plan``.

    Raises:
        TrtexecNotFound: trtexec is not on PATH (carries the command).
        TrtexecError: trtexec failed (carries the command and the end of its output).
    """
    argv = trtexec_argv(plan, target)
    command = format_command(argv)
    exe = shutil.which("trtexec")
    if exe is None:
        raise TrtexecNotFound(command)
    log.info("running %s", command)
    proc = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=timeout,
                          check=False)
    for line in proc.stdout.splitlines():
        log.debug("trtexec: %s", line)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise TrtexecError(command, proc.returncode, tail)
    return proc


# --------------------------------------------------------------------------------------------
# tensorrt Python API (lazy import; nothing is decided here)
# --------------------------------------------------------------------------------------------


def _tensorrt() -> Any:
    try:
        import tensorrt
    except Exception as exc:  # ImportError, or OSError/RuntimeError when NVIDIA's libraries are missing
        raise TensorRTUnavailable(
            f"the tensorrt Python package does not load ({type(exc).__name__}: {exc}); "
            "`graphfix trtexec-args` prints the equivalent trtexec command") from exc
    return tensorrt


def _installed_version(trt: Any) -> Version:
    major, minor = (int(x) for x in trt.__version__.split(".")[:2])
    return major, minor


def _prepare(trt: Any, plugins: Sequence[str]) -> Any:
    """Logger, standard plugins and plugin libraries, in the order the parser needs them."""
    logger = trt.Logger(trt.Logger.WARNING)
    # 10.x parsers no longer register the standard plugins themselves (S100 ModelImporter);
    # calling it on older versions is harmless.
    trt.init_libnvinfer_plugins(logger, "")
    for path in plugins:
        # Same as trtexec --plugins/--staticPlugins: the library's static creators
        # self-register. (registry.load_library, 8.6+, is --dynamicPlugins and needs the
        # library to export getCreators.)
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    return logger


def _network(trt: Any, builder: Any, *, explicit_batch: bool, strongly_typed: bool) -> Any:
    flags = 0
    names = trt.NetworkDefinitionCreationFlag
    if explicit_batch and hasattr(names, "EXPLICIT_BATCH"):
        flags |= 1 << int(names.EXPLICIT_BATCH)
    if strongly_typed:
        flags |= 1 << int(names.STRONGLY_TYPED)
    return builder.create_network(flags)


def _errors(parser: Any) -> list[tuple[str, str]]:
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        # node_name()/node_operator() exist from 9.1 (PY10.0); older errors only carry the index.
        name = err.node_name() if hasattr(err, "node_name") else ""
        op = err.node_operator() if hasattr(err, "node_operator") else ""
        where = name or (f"node #{err.node()}" if err.node() >= 0 else "(model)")
        out.append((where, f"[{op}] {err.desc()}" if op else err.desc()))
    return out


_TRT_TYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int32": "int32",
              "int8": "int8"}


def _matches(pattern: str, name: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) if "*" in pattern else name == pattern


def _apply_layer_types(trt: Any, network: Any, plan: BuildPlan) -> None:
    used = set()
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for pattern, prec in plan.layer_precisions:
            if _matches(pattern, layer.name):
                layer.precision = getattr(trt, _TRT_TYPES[prec])
                used.add(pattern)
        for pattern, types in plan.layer_output_types:
            if _matches(pattern, layer.name):
                for k, t in enumerate(types[:layer.num_outputs]):
                    layer.set_output_type(k, getattr(trt, _TRT_TYPES[t]))
                used.add(pattern)
    for pattern in {n for n, _ in plan.layer_precisions + plan.layer_output_types} - used:
        log.warning("no TensorRT layer is named %r: its precision constraint does nothing", pattern)


def _configure(trt: Any, builder: Any, plan: BuildPlan) -> Any:
    config = builder.create_builder_config()
    flags = trt.BuilderFlag
    for name, on in (("FP16", plan.fp16), ("BF16", plan.bf16), ("INT8", plan.int8)):
        if on:
            config.set_flag(getattr(flags, name))
    if plan.precision_constraints != "none":
        wanted = ("OBEY_PRECISION_CONSTRAINTS" if plan.precision_constraints == "obey"
                  else "PREFER_PRECISION_CONSTRAINTS")
        # kSTRICT_TYPES is the <= 8.0 spelling (H7.2, H8.0); gone in 10.0 (PY10.0).
        config.set_flag(getattr(flags, wanted) if hasattr(flags, wanted) else flags.STRICT_TYPES)
    if plan.workspace_mib is not None:
        size = plan.workspace_mib << 20
        if hasattr(config, "set_memory_pool_limit"):  # 8.4+ (PY8.4)
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, size)
        else:
            config.max_workspace_size = size
    for ranges in plan.profiles:
        profile = builder.create_optimization_profile()
        for r in ranges:
            profile.set_shape(r.name, r.min, r.opt, r.max)
        config.add_optimization_profile(profile)
    return config


def build_engine(plan: BuildPlan) -> bytes:
    """Build the serialized engine of ``plan`` with the tensorrt Python API.

    Returns:
        The serialized engine (the caller writes it to ``plan.engine_path``).

    Raises:
        TensorRTUnavailable: tensorrt cannot be imported.
        ParseError: The parser refused the model (per-node errors).
        BuildError: The builder returned no engine.
    """
    trt = _tensorrt()
    if _installed_version(trt) != plan.target_version:
        log.warning("the plan targets TensorRT %d.%d but tensorrt %s is installed",
                    *plan.target_version, trt.__version__)
    logger = _prepare(trt, plan.plugins)
    builder = trt.Builder(logger)
    network = _network(trt, builder, explicit_batch=plan.explicit_batch,
                       strongly_typed=plan.strongly_typed)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(plan.onnx_path):
        raise ParseError(_errors(parser))
    config = _configure(trt, builder, plan)
    _apply_layer_types(trt, network, plan)
    cache_path = Path(plan.timing_cache) if plan.timing_cache else None
    if cache_path is not None:
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    if hasattr(builder, "build_serialized_network"):  # 8.0+ (PY8.0)
        serialized = builder.build_serialized_network(network, config)
    else:
        engine = builder.build_engine(network, config)
        serialized = engine.serialize() if engine is not None else None
    if serialized is None:
        raise BuildError("TensorRT's builder returned no engine (see the TensorRT log above)")
    if cache_path is not None:
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def parse_check(model_path: str | os.PathLike, plugins: Sequence[str] = ()
                ) -> list[tuple[str, str]]:
    """Ask the installed TensorRT parser about a model (for ``graphfix check``).

    Parses the file; if that fails and the parser has ``supports_model_v2`` (10.1+), also asks it
    for every unsupported subgraph, since parsing stops at the first failing node.

    Returns:
        (node, message) pairs; empty when the parser takes the model.

    Raises:
        TensorRTUnavailable: tensorrt cannot be imported.
    """
    trt = _tensorrt()
    logger = _prepare(trt, plugins)
    builder = trt.Builder(logger)
    explicit = _installed_version(trt) < (10, 0)
    parser = trt.OnnxParser(_network(trt, builder, explicit_batch=explicit, strongly_typed=False),
                            logger)
    if parser.parse_from_file(str(model_path)):
        return []
    problems = _errors(parser)
    if hasattr(parser, "supports_model_v2"):
        checker = trt.OnnxParser(
            _network(trt, builder, explicit_batch=explicit, strongly_typed=False), logger)
        data = Path(model_path).read_bytes()
        if not checker.supports_model_v2(data, str(model_path)):
            problems += [p for p in _errors(checker) if p not in problems]
            for i in range(checker.num_subgraphs):
                if not checker.is_subgraph_supported(i):
                    nodes = list(checker.get_subgraph_nodes(i))
                    span = f"#{nodes[0]}..#{nodes[-1]}" if nodes else "(empty)"
                    problems.append((f"subgraph {i}", f"unsupported: {len(nodes)} nodes {span}"))
    return problems

