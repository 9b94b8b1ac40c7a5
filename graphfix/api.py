"""`graphfix.apply`: load a model, choose rules for a target, run the passes, verify, save."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from graphfix import execute, ir
from graphfix._loader import RuleSet, load_rules
from graphfix.check import check
from graphfix.errors import InputError, UsageError, first_line
from graphfix.passes import ModelRulePass, Pass, PassManager, RulePass, SimplifyPass, raise_if_strict
from graphfix.report import ApplyReport, VerificationSummary
from graphfix.rule import STAGES, Rule
from graphfix.verify import (
    Tolerance,
    Verifier,
    load_inputs,
    make_feeds,
    model_inputs,
    parse_input_range,
    parse_input_shape,
)

__all__ = ["ApplyOptions", "apply", "apply_file", "select_rules", "build_passes", "default_output_path", "validate"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApplyOptions:
    """Everything `graphfix apply` takes besides the paths.

    Attributes:
        rule_files: `--rules FILE` (any number).
        only: run only these rules (opt-in rules included).
        skip: never run these rules.
        enable: opt-in rules to add to the target's selection.
        rule_options: `name.key=value` settings of rule options.
        target: TensorRT target spec (`trt8.6`, `8.6`, `tensorrt==8.6`, `trt-rtx`, `portable`);
            None: the installed tensorrt's version, else targets.DEFAULT_TARGET.
        verify: check every pass numerically with onnxruntime.
        verify_mode: "incremental" (regions + one final run) or "full" (a run after each pass).
        strict: a rolled-back or unverified pass fails the run.
        simplify: run onnxsim after the export repairs.
        dry_run: list matches, change and write nothing.
        force: proceed when the input fails onnx.checker.
    """

    rule_files: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    enable: tuple[str, ...] = ()
    rule_options: tuple[str, ...] = ()
    target: str | None = None
    verify: bool = True
    verify_mode: str = "incremental"
    strict: bool = False
    simplify: bool = False
    dry_run: bool = False
    force: bool = False
    atol: float = 1e-5
    rtol: float = 1e-4
    input_shapes: tuple[str, ...] = ()
    input_ranges: tuple[str, ...] = ()
    inputs: str | None = None
    seed: int = 0
    max_rounds: int = 10
    entry_points: bool = True
    extra_rules: tuple[Rule, ...] = field(default=(), compare=False)


def resolve_target(spec: str | None) -> Any:
    """The target profile for `spec` (see ApplyOptions.target)."""
    from graphfix import targets

    installed = None
    if spec is None:
        try:
            import tensorrt

            installed = tensorrt.__version__
        except Exception:  # tensorrt absent, or present but its runtime libraries are not
            installed = None
    try:
        return targets.resolve_target(spec, installed)
    except ValueError as error:
        raise UsageError(str(error)) from None


def select_rules(rule_set: RuleSet, options: ApplyOptions, target: Any) -> list[Rule]:
    """The rules to run: the target's (or `only`), plus `enable`, minus `skip`, with options.

    A rule runs on a target when one of its limitation keys is active there (rules that name
    none run everywhere); opt-in rules run only when named. Order: see `_order`.
    """
    known = rule_set.rules
    for name in (*options.only, *options.skip, *options.enable):
        if name not in known:
            raise UsageError(f"no rule named {name!r} (see `graphfix rules`)")
    if options.only:
        chosen = [known[n] for n in options.only]
    else:
        active = set(getattr(target, "limitations", ()) or ())
        chosen = [
            r for r in known.values()
            if not r.opt_in and (not r.limitations or active.intersection(r.limitations))
        ]
        chosen += [known[n] for n in options.enable if known[n] not in chosen]
    chosen = [r for r in chosen if r.name not in set(options.skip)]
    settings = _rule_settings(options.rule_options, known)
    chosen = [r.with_options(**settings.get(r.name, {})) for r in chosen]
    return sorted(chosen, key=lambda r: _order(r, r.name in options.enable))


def _order(rule: Rule, enabled: bool) -> tuple[int, int, str]:
    """Stage by stage, by name. A rule the user enabled runs before the target's default
    lowerings (an explicit EfficientNMS_TRT or plugin fusion must find the op that a default
    decomposition would otherwise replace), but after the export repairs and folds."""
    stage = STAGES.index(rule.stage)
    if enabled:
        stage = min(stage, STAGES.index("lower"))
    return stage, 0 if enabled else 1, rule.name


def _rule_settings(items: Sequence[str], known: dict[str, Rule]) -> dict[str, dict[str, str]]:
    settings: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        name, dot, option = key.partition(".")
        if not sep or not dot:
            raise UsageError(f"--rule-option {item!r}: expected RULE.OPTION=VALUE")
        if name not in known:
            raise UsageError(f"--rule-option {item!r}: no rule named {name!r}")
        try:
            known[name].with_options(**{option: value})
        except ValueError as error:
            raise UsageError(f"--rule-option {item!r}: {error}") from None
        settings.setdefault(name, {})[option] = value
    return settings


def build_passes(rules: Sequence[Rule], *, simplify: bool = False, max_rounds: int = 10) -> list[Pass]:
    """One pass per rule, in the given order (select_rules sorts them); onnxsim, when asked,
    right after the export repairs."""
    passes: list[Pass] = [ModelRulePass(r) if r.is_model_rule else RulePass([r], max_rounds=max_rounds) for r in rules]
    if simplify:
        repairs = sum(1 for r in rules if r.stage == "repair")
        passes.insert(repairs, SimplifyPass())
    return passes


def validate(proto: onnx.ModelProto, *, verify: bool, force: bool, source: Path) -> str:
    """Refuse inputs graphfix cannot handle; returns a warning line ('' when clean).

    Raises:
        InputError: opset newer than onnxruntime runs (when verifying), or onnx.checker fails
            (unless `force`).
    """
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise InputError(f"{source}: the model imports no default-domain opset")
    if verify:
        newest = execute.onnxruntime_max_opset()
        if opset > newest:
            raise InputError(
                f"{source}: opset {opset} is newer than onnxruntime runs (up to {newest}); "
                "verification is impossible (use --no-verify, or convert the model down)"
            )
    try:
        # A model over 2 GB cannot be one protobuf message: the checker reads it from its file.
        onnx.checker.check_model(str(source) if ir.is_huge(proto) else proto)
    except onnx.checker.ValidationError as error:
        first = first_line(error)
        if not force:
            raise InputError(f"{source}: fails onnx.checker before any rule: {first} (--force proceeds)") from None
        return f"input fails onnx.checker (proceeding with --force): {first}"
    return ""


def default_output_path(source: Path) -> Path:
    """`model.onnx` -> `model.fixed.onnx` next to it."""
    return source.with_name(f"{source.stem}.fixed{source.suffix or '.onnx'}")


def apply(model: ir.Model, options: ApplyOptions = ApplyOptions(), *, rule_set: RuleSet | None = None) -> ApplyReport:
    """Run the selected passes on `model` in place (verifying them); returns the report."""
    start = time.perf_counter()
    target = resolve_target(options.target)
    rule_set = rule_set or load_rules(options.rule_files, entry_points=options.entry_points)
    for extra in options.extra_rules:
        rule_set.add(extra, "API")
    rules = select_rules(rule_set, options, target)
    verifier = _verifier(model, options) if options.verify and not options.dry_run else None
    nodes_before = _count_nodes(model.graph)
    manager = PassManager(build_passes(rules, simplify=options.simplify, max_rounds=options.max_rounds),
                          verifier=verifier, target=target, dry_run=options.dry_run)
    reports = manager.run(model)
    return ApplyReport(
        input=str(model.path) if model.path else "<memory>",
        output=None,
        target=getattr(target, "name", str(target)),
        passes=tuple(reports),
        verification=manager.summary if verifier else VerificationSummary(enabled=False),
        nodes_before=nodes_before,
        nodes_after=_count_nodes(model.graph),
        seconds=time.perf_counter() - start,
        provenance=_provenance(model, reports),
        remaining=() if options.dry_run else _remaining(model, target, rule_set),
        warnings=tuple(rule_set.warnings),
    )


def _remaining(model: ir.Model, target: Any, rule_set: RuleSet) -> tuple[dict[str, Any], ...]:
    """What `graphfix check` still finds on the result (errors only: plugin notes parse)."""
    return tuple(f.remaining() for f in check(model, target, rule_set.rules.values()).errors)


def _verifier(model: ir.Model, options: ApplyOptions) -> Verifier:
    shapes = dict(parse_input_shape(s) for s in options.input_shapes)
    ranges = dict(parse_input_range(s) for s in options.input_ranges)
    data = load_inputs(options.inputs) if options.inputs else {}
    feeds = make_feeds(model_inputs(model.graph), shapes=shapes, ranges=ranges, data=data, seed=options.seed)
    return Verifier(feeds, Tolerance(options.atol, options.rtol), options.verify_mode)


def _count_nodes(graph: ir.Graph) -> int:
    return sum(len(g.nodes) for g in ir.iter_graphs(graph))


def _provenance(model: ir.Model, reports: Sequence[Any]) -> dict[str, str]:
    alive = {n.name for g in ir.iter_graphs(model.graph) for n in g.nodes}
    return {
        name: rewrite.rule
        for report in reports if report.status != "rolled back"
        for rewrite in report.rewrites
        for name in rewrite.added
        if name in alive
    }


def apply_file(source: str | Path, output: str | Path | None = None, options: ApplyOptions = ApplyOptions()) -> ApplyReport:
    """Load `source`, apply, check and write the result atomically (nothing on failure).

    Raises:
        InputError: bad input, or an output path equal to the input.
        VerificationError: `--strict` and a pass was rolled back or unverified.
    """
    source = Path(source)
    target_path = Path(output) if output else default_output_path(source)
    if target_path.exists() and source.exists() and target_path.resolve() == source.resolve():
        raise InputError(f"{target_path}: refusing to overwrite the input model")
    started = time.perf_counter()
    proto, external = ir.read_model(source)
    warnings = [validate(proto, verify=options.verify and not options.dry_run, force=options.force, source=source)]
    typed = ir.with_inferred_types(proto)
    if typed.problem and not warnings[0]:
        warnings.append(f"input fails onnx shape inference: {typed.problem}")
    warnings = [w for w in warnings if w]
    model = ir.from_proto(proto, path=source, external_data=external, typed=typed)
    del proto, typed
    if not ir.is_sorted(model.graph):  # only reachable with --force: the checker refuses it
        ir.toposort(model.graph)
    loaded = time.perf_counter()
    report = apply(model, options)
    report = _replace(report, warnings=report.warnings + tuple(warnings))
    if options.strict:
        raise_if_strict(report.passes)
    stages = {"load": loaded - started, "apply": report.seconds}
    if options.dry_run:
        return _replace(report, stages=stages)
    saving = time.perf_counter()
    ir.write_model(
        ir.to_proto(model),
        target_path,
        external_data=model.external_data,
        check=lambda staged: _check_output(staged, input_was_valid=not warnings),
    )
    stages["save"] = time.perf_counter() - saving
    return _replace(report, output=str(target_path), stages=stages)


def _replace(report: ApplyReport, **changes: Any) -> ApplyReport:
    from dataclasses import replace

    return replace(report, **changes)


def _check_output(staged: Path, *, input_was_valid: bool) -> None:
    """The output must pass onnx.checker's full check (with shape inference)."""
    try:
        onnx.checker.check_model(str(staged), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        first = first_line(error)
        if input_was_valid:
            raise InputError(f"the rewritten model fails onnx.checker (not written): {first}") from None
        logger.warning("the rewritten model fails onnx.checker like its input: %s", first)
