"""The `graphfix` command line."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from graphfix.errors import GraphfixError

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
    if args.report:
        _write_text(args.report, to_json(report))
    return 0


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


_COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None]]] = [
    ("apply", "rewrite a model for TensorRT, verifying every pass with onnxruntime", _configure_apply),
    ("rules", "list the rules (built-in, installed packs, --rules files)", _configure_rules),
    ("explain", "say why a rule does or does not fire on a model (its matches and nearest miss)", _configure_explain),
    ("targets", "list the TensorRT targets", _configure_targets),
]


if __name__ == "__main__":
    sys.exit(main())
