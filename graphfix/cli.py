"""The `graphfix` command line."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from graphfix.cli_debug import COMMANDS as DEBUG_COMMANDS
from graphfix.errors import BuilderUnavailableError, EngineBuildError, GraphfixError, InputError, UsageError

__all__ = ["main"]

logger = logging.getLogger("graphfix")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # SIGTERM becomes SystemExit so that cleanup (temporary files) runs as for Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return args.handler(args)
    except GraphfixError as error:
        print(f"graphfix: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("graphfix: interrupted; nothing written", file=sys.stderr)
        return 130
    except Exception as error:  # the last line of defence: one line, a distinct code
        if args.verbose:
            raise
        print(f"graphfix: internal error: {type(error).__name__}: {error} (run with -v for the traceback)", file=sys.stderr)
        return 3


def _parser() -> argparse.ArgumentParser:
    from graphfix import __version__

    parser = argparse.ArgumentParser(prog="graphfix", description="Repair exported ONNX models so that TensorRT takes them.")
    parser.add_argument("--version", action="version", version=f"graphfix {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, configure in _COMMANDS:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        configure(sub)
    return parser


# ----------------------------------------------------------------------------- shared options


def _add_rule_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rules", action="append", default=[], metavar="FILE", help="load rules from a Python file (repeatable)")
    parser.add_argument("--target", metavar="TRT", help="TensorRT target: trt8.6, 8.6, tensorrt==8.6, trt-rtx, portable (default: installed tensorrt, else portable)")


def _add_input_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME:DIMS", help="shape of an input, e.g. images:1x3x800x1216 (repeatable)")
    parser.add_argument("--input-range", action="append", default=[], metavar="NAME:LOW,HIGH", help="value range of a synthesised input (repeatable)")
    parser.add_argument("--inputs", metavar="NPZ", help="input arrays by name (.npz)")
    parser.add_argument("--seed", type=int, default=0, help="seed of synthesised inputs (default 0)")
    parser.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance for float32 outputs (default 1e-5)")
    parser.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance for float32 outputs (default 1e-4)")


def _options(args: argparse.Namespace, **overrides: Any) -> Any:
    from graphfix.api import ApplyOptions

    values = dict(
        rule_files=tuple(args.rules),
        only=tuple(getattr(args, "only", ())),
        skip=tuple(getattr(args, "skip", ())),
        enable=tuple(getattr(args, "enable", ())),
        rule_options=tuple(getattr(args, "rule_option", ())),
        target=args.target,
        verify=not getattr(args, "no_verify", False),
        verify_mode=getattr(args, "verify_mode", "incremental"),
        strict=getattr(args, "strict", False),
        simplify=getattr(args, "simplify", False),
        dry_run=getattr(args, "dry_run", False),
        force=getattr(args, "force", False),
        atol=getattr(args, "atol", 1e-5),
        rtol=getattr(args, "rtol", 1e-4),
        input_shapes=tuple(getattr(args, "input_shape", ())),
        input_ranges=tuple(getattr(args, "input_range", ())),
        inputs=getattr(args, "inputs", None),
        seed=getattr(args, "seed", 0),
    )
    values.update(overrides)
    return ApplyOptions(**values)


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _write_text(path: str, text: str) -> None:
    from graphfix.ir import write_text

    write_text(Path(path), text)


# ----------------------------------------------------------------------------- apply


def _configure_apply(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the exported ONNX model")
    parser.add_argument("-o", "--output", help="where to write the result (default: MODEL.fixed.onnx next to it)")
    _add_rule_options(parser)
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run only these rules (repeatable)")
    parser.add_argument("--skip", action="append", default=[], metavar="NAME", help="do not run these rules (repeatable)")
    parser.add_argument("--enable", action="append", default=[], metavar="NAME", help="also run these opt-in rules (repeatable)")
    parser.add_argument("--rule-option", action="append", default=[], metavar="RULE.KEY=VALUE", help="set a rule option (repeatable)")
    parser.add_argument("--no-verify", action="store_true", help="do not check passes with onnxruntime")
    parser.add_argument("--verify-mode", choices=("incremental", "full"), default="incremental", help="incremental: rewritten regions + one final run (default); full: a run after every pass")
    parser.add_argument("--strict", action="store_true", help="fail (exit 1, nothing written) when a pass is rolled back or unverified")
    parser.add_argument("--simplify", action="store_true", help="run onnxsim after the export repairs")
    parser.add_argument("--dry-run", action="store_true", help="list every match and near miss; change and write nothing")
    parser.add_argument("--force", action="store_true", help="proceed when the input fails onnx.checker")
    parser.add_argument("--report", metavar="JSON", help="write the report as JSON")
    _add_input_options(parser)
    parser.set_defaults(handler=_run_apply)


def _run_apply(args: argparse.Namespace) -> int:
    from graphfix.api import apply_file
    from graphfix.report import render_apply, to_json

    report = apply_file(args.model, args.output, _options(args))
    console = _console()
    if args.dry_run:
        _render_dry_run(report, console)
    else:
        render_apply(report, console)
        console.print(_remaining_line(report), markup=False)
    if args.report:
        _write_text(args.report, to_json(report))
    return 0


def _remaining_line(report: Any) -> str:
    """One line on what `graphfix check` still finds on the written model."""
    if not report.remaining:
        return f"check [target {report.target}]: clean"
    where = report.output or report.input
    return f"check [target {report.target}]: {len(report.remaining)} finding(s) remain (graphfix check {where} --target {report.target})"


def _render_dry_run(report: Any, console: Any) -> None:
    console.print(f"dry run [target {report.target}]: nothing is changed or written")
    for p in report.passes:
        for rewrite in p.rewrites:
            console.print(
                f"  {rewrite.rule}: {rewrite.root} ({rewrite.root_op}) -> {', '.join(rewrite.added_ops) or 'rewired'}"
                f"  [matched: {', '.join(rewrite.matched)}]"
            )
        if not p.rewrites:
            for rule, node, reason in p.near_misses:
                console.print(f"  {rule}: no match; nearest: {node}: {reason}")
            if not p.near_misses:
                console.print(f"  {p.name}: no candidate node in the model")


# ----------------------------------------------------------------------------- rules / explain


def _configure_rules(parser: argparse.ArgumentParser) -> None:
    _add_rule_options(parser)
    parser.set_defaults(handler=_run_rules)


def _run_rules(args: argparse.Namespace) -> int:
    from rich.table import Table

    from graphfix import targets
    from graphfix._loader import load_rules
    from graphfix.api import resolve_target

    rule_set = load_rules(args.rules)
    selected = resolve_target(args.target) if args.target else None
    table = Table(title="graphfix rules" + (f" for {selected.name}" if selected else ""), title_justify="left")
    for column in ("rule", "stage", "needed by", "summary", "from"):
        table.add_column(column)
    for name in sorted(rule_set.rules):
        rule = rule_set.rules[name]
        if selected is not None and not rule.opt_in and rule.limitations and not set(rule.limitations) & set(selected.limitations):
            continue
        needed = "opt-in" if rule.opt_in else targets.targets_needing(rule.limitations)
        table.add_row(name, rule.stage, needed, rule.summary, rule_set.origins[name])
    console = _console()
    console.print(table)
    for warning in rule_set.warnings:
        console.print(f"[yellow]warning[/]: {warning}")
    return 0


def _configure_explain(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model")
    parser.add_argument("rule", help="the rule to explain")
    _add_rule_options(parser)
    parser.set_defaults(handler=_run_explain)


def _run_explain(args: argparse.Namespace) -> int:
    from graphfix.api import apply_file

    report = apply_file(args.model, None, _options(args, only=(args.rule,), dry_run=True))
    _render_dry_run(report, _console())
    return 0


# ----------------------------------------------------------------------------- targets


def _configure_targets(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(handler=_run_targets)


def _run_targets(args: argparse.Namespace) -> int:
    from rich.table import Table

    from graphfix import targets

    table = Table(title=f"TensorRT targets (default: {targets.DEFAULT_TARGET})", title_justify="left")
    for column in ("target", "TensorRT", "opsets", "notes"):
        table.add_column(column)
    for info in targets.list_targets():
        table.add_row(*(str(v) for v in info))
    _console().print(table)
    return 0


# ----------------------------------------------------------------------------- check


def _configure_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the ONNX model")
    _add_rule_options(parser)
    parser.add_argument("--json", action="store_true", help="print the report as JSON (for CI)")
    parser.set_defaults(handler=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    from graphfix import ir
    from graphfix._loader import load_rules
    from graphfix.api import resolve_target
    from graphfix.check import check

    target = resolve_target(args.target)
    rule_set = load_rules(args.rules)
    model = ir.load(args.model)
    report = _ask_parser(check(model, target, rule_set.rules.values()), model)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _render_check(report, _console())
    return 0 if report.clean else 1


def _ask_parser(report: Any, model: Any) -> Any:
    """Add the installed TensorRT parser's verdict to the report, when tensorrt imports."""
    from graphfix import trt
    from graphfix.check import with_parser

    try:
        errors = trt.parse_check(model.path)
    except trt.TensorRTUnavailable:
        return report
    except Exception as error:  # tensorrt imports but cannot run here (no GPU, driver mismatch)
        logger.warning("could not ask the installed TensorRT parser: %s: %s", type(error).__name__, error)
        return report
    import tensorrt

    return with_parser(report, model, tensorrt.__version__, _profile_name(tensorrt.__version__), errors)


def _profile_name(version: str) -> str:
    """The target an installed TensorRT version resolves to (9.x has no profile)."""
    from graphfix import targets

    try:
        return targets.resolve_target(version).name
    except ValueError:
        return f"TensorRT {version} (no profile)"


_KIND_STYLES = {"unsupported": "red", "silent": "bold red", "plugin": "dim"}


def _render_check(report: Any, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    from graphfix.check import KIND_LABELS

    title = escape(f"graphfix check {report.model} [target {report.target}: {report.target_label}]")
    if report.findings:
        table = Table(title=title, title_justify="left")
        for column in ("op", "node", "kind", "reason", "fixing rule"):
            table.add_column(column, overflow="fold")  # node names are never cut short
        for op, found in report.by_op.items():
            for index, finding in enumerate(found):
                # Like the op, the fix is written once per run of the same limitation.
                same = index > 0 and found[index - 1].limitation == finding.limitation
                table.add_row(
                    escape(op) if index == 0 else "",
                    escape(finding.node + (" (in a subgraph)" if finding.in_subgraph else "")),
                    KIND_LABELS[finding.kind],
                    escape(finding.reason),
                    "" if same else escape(finding.fix if finding.rules else f"no rule: {finding.advice}"),
                    style=_KIND_STYLES[finding.kind],
                )
            table.add_section()
        console.print(table)
    else:
        console.print(title)
    if report.parser:
        _render_parser(report, console)
    console.print(escape(_check_summary(report)))


def _render_parser(report: Any, console: Any) -> None:
    from rich.markup import escape

    verdict = report.parser
    said = "took the model" if not verdict.errors else f"refused it: {'; '.join(f'{n}: {m}' for n, m in verdict.errors)}"
    console.print(escape(f"installed TensorRT {verdict.version} parser ({verdict.target}) {said}"))
    if not verdict.compared:
        console.print(escape(f"not compared with the {report.target} profile: the installed TensorRT is another release"))
    for disagreement in verdict.disagreements:
        console.print(f"[red]disagreement[/]: {escape(disagreement)}")


def _check_summary(report: Any) -> str:
    counts = report.counts
    notes = f"; {counts['plugin']} plugin note(s)" if counts["plugin"] else ""
    if report.clean:
        return f"{report.target}: clean ({report.nodes} nodes checked{notes})"
    disagreements = len(report.parser.disagreements) if report.parser else 0
    return (
        f"{report.target}: not clean: {counts['unsupported']} unsupported, {counts['silent']} silent mismatch(es)"
        + (f", {disagreements} disagreement(s) with the parser" if disagreements else "")
        + f"{notes} ({report.nodes} nodes checked)"
    )


# ----------------------------------------------------------------------------- build / trtexec-args


def _configure_build(parser: argparse.ArgumentParser) -> None:
    _add_build_options(parser)
    parser.set_defaults(handler=_run_build)


def _configure_trtexec_args(parser: argparse.ArgumentParser) -> None:
    _add_build_options(parser)
    parser.set_defaults(handler=_run_trtexec_args)


def _add_build_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the ONNX model (e.g. what graphfix apply wrote)")
    parser.add_argument("-o", "--output", metavar="ENGINE", help="the engine file (default: MODEL_STEM.TARGET.engine next to the model)")
    parser.add_argument("--target", metavar="TRT", help="TensorRT release to build for: trt8.6, 10.16, tensorrt==8.6 (default: the installed tensorrt)")
    parser.add_argument("--fp16", action="store_true", help="allow FP16 kernels (weakly typed builds; not on 11.x)")
    parser.add_argument("--bf16", action="store_true", help="allow BF16 kernels (10.x)")
    parser.add_argument("--int8", action="store_true", help="allow INT8 kernels (needs Q/DQ nodes or calibration)")
    parser.add_argument("--shapes", action="append", default=[], metavar="NAME:MIN:OPT:MAX", help="optimization profile of an input, dims as AxBxC (repeatable or comma-separated; default: from the symbolic dims)")
    parser.add_argument("--plugins", action="append", default=[], metavar="LIB", help="plugin library to load before parsing (repeatable)")
    parser.add_argument("--workspace", type=int, metavar="MiB", help="workspace memory pool limit in MiB")
    parser.add_argument("--layer-precisions", action="append", default=[], metavar="NAME:PREC,...", help="per-layer precision by ONNX node name, e.g. /head/Softmax:fp32 (repeatable or comma-separated)")
    parser.add_argument("--timing-cache", metavar="FILE", help="timing cache file, read if present and written after the build")


def _build_plan(args: argparse.Namespace) -> tuple[Any, Any]:
    """The validated build plan of the command line, and its target."""
    from graphfix import trt
    from graphfix.api import resolve_target

    target = resolve_target(args.target)
    inputs = _input_specs(args.model)
    try:
        plan = trt.make_plan(
            args.model,
            inputs,
            target,
            fp16=args.fp16,
            bf16=args.bf16,
            int8=args.int8,
            shapes=_comma_separated(args.shapes),
            plugins=args.plugins,
            workspace_mib=args.workspace,
            layer_precisions=_comma_separated(args.layer_precisions),
            timing_cache=args.timing_cache,
            engine_path=args.output,
        )
    except trt.PlanError as error:
        raise UsageError(str(error)) from None
    for warning in plan.warnings:
        print(f"graphfix: warning: {warning}", file=sys.stderr)
    return plan, target


def _input_specs(path: str) -> list[Any]:
    """The model's graph inputs: name, dtype and dims (symbolic dims by name)."""
    from graphfix import ir, trt

    specs = []
    for tensor in ir.load(path).graph.inputs:
        dims, dtype = ir.shape(tensor), ir.dtype_name(tensor)
        if dims is None or dtype is None:
            raise InputError(f"{path}: input {tensor.name!r} has no {'rank' if dims is None else 'element type'}; TensorRT needs both")
        specs.append(trt.InputSpec(tensor.name, dtype, dims))
    return specs


def _comma_separated(items: Sequence[str]) -> list[str]:
    # trtexec's own list syntax: names cannot contain commas there either.
    return [part for item in items for part in item.split(",") if part]


def _trtexec_command(plan: Any, target: Any) -> str:
    from graphfix import trt

    try:
        return trt.format_command(trt.trtexec_argv(plan, target))
    except trt.PlanError as error:
        raise UsageError(str(error)) from None


def _run_trtexec_args(args: argparse.Namespace) -> int:
    plan, target = _build_plan(args)
    print(_trtexec_command(plan, target))
    print(f"graphfix: trtexec flags of {target.label} (target {target.name})", file=sys.stderr)
    return 0


def _run_build(args: argparse.Namespace) -> int:
    from graphfix import trt

    plan, target = _build_plan(args)
    if not Path(plan.engine_path).parent.is_dir():
        raise InputError(f"{plan.engine_path}: its folder does not exist")
    try:
        engine = trt.build_engine(plan)
    except trt.TensorRTUnavailable:
        return _build_with_trtexec(plan, target)
    except (trt.ParseError, trt.BuildError) as error:
        raise EngineBuildError(str(error)) from None
    from graphfix.ir import write_bytes

    write_bytes(Path(plan.engine_path), engine)
    print(f"built {plan.engine_path} with the tensorrt Python API [target {target.name}]")
    return 0


def _build_with_trtexec(plan: Any, target: Any) -> int:
    from graphfix import trt

    command = _trtexec_command(plan, target)
    try:
        trt.run_trtexec(plan, target)
    except trt.TrtexecNotFound:
        print(command)
        raise BuilderUnavailableError(
            f"not built: the tensorrt Python package does not import and trtexec is not on PATH; "
            f"run the command above where {target.label} is installed"
        ) from None
    except trt.TrtexecError as error:
        print(error.output_tail, file=sys.stderr)
        raise EngineBuildError(f"trtexec exited with status {error.returncode}: {error.command}") from None
    print(f"built {plan.engine_path} with trtexec [target {target.name}]: {command}")
    return 0


_COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None]]] = [
    ("apply", "rewrite a model for TensorRT, verifying every pass with onnxruntime", _configure_apply),
    ("rules", "list the rules (built-in, installed packs, --rules files)", _configure_rules),
    ("explain", "say why a rule does or does not fire on a model (its matches and nearest miss)", _configure_explain),
    ("targets", "list the TensorRT targets", _configure_targets),
    ("check", "list what a TensorRT target cannot parse or silently computes differently, and the rules that fix it", _configure_check),
    ("build", "build a TensorRT engine (tensorrt Python API, else trtexec, else print the trtexec command)", _configure_build),
    ("trtexec-args", "print the trtexec command that builds the model, in the target's flag spelling", _configure_trtexec_args),
]
_COMMANDS += DEBUG_COMMANDS


if __name__ == "__main__":
    sys.exit(main())
