"""The debugging commands of the `graphfix` command line: `fp16-guard` and `bisect`.

`COMMANDS` has the shape of `graphfix.cli._COMMANDS` (name, help, configure); `cli.py` adds
them to its parser and runs their handlers with its error handling (GraphfixError -> one line
and an exit code).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graphfix.errors import InputError, UsageError, VerificationError

if TYPE_CHECKING:  # the command line imports numpy and onnx only when a command runs
    import numpy as np
    import onnx

__all__ = ["COMMANDS"]

_DEFAULT_BUDGET = "2GiB"
_PATH_ROWS = 10  # a longer path shows its first and last five steps


# ----------------------------------------------------------------------------- shared


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _add_input_options(parser: argparse.ArgumentParser, *, several: bool) -> None:
    if several:
        parser.add_argument("--inputs", action="append", default=[], metavar="NPZ",
                            help="an input set by input name, .npz with keys NAME or input:NAME (repeatable: one set per file)")
        parser.add_argument("--input-sets", type=int, default=1, metavar="N",
                            help="without --inputs: synthesise N input sets (seeds SEED..SEED+N-1; default 1)")
    else:
        parser.add_argument("--inputs", metavar="NPZ", help="the input arrays by input name (.npz with keys NAME or input:NAME)")
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME:DIMS", help="shape of a synthesised input, e.g. images:1x3x800x1216 (repeatable)")
    parser.add_argument("--input-range", action="append", default=[], metavar="NAME:LOW,HIGH", help="value range of a synthesised input (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed of synthesised inputs (default 0)")
    parser.add_argument("--budget", default=_DEFAULT_BUDGET, metavar="SIZE", help=f"most bytes of intermediate tensors held at once, e.g. 512MiB (default {_DEFAULT_BUDGET})")
    parser.add_argument("--json", metavar="FILE", help="write the report as JSON to FILE ('-': print it instead of the table)")


def _read(path: str) -> onnx.ModelProto:
    from graphfix import ir

    return ir.read_model(path)[0]


def _feed_sets(model: onnx.ModelProto, args: argparse.Namespace) -> list[dict[str, np.ndarray]]:
    """One feed set per --inputs file (arrays the model has no input for are left out), else
    `--input-sets` synthesised ones."""
    from graphfix import verify

    from graphfix.verify import proto_inputs

    specs = proto_inputs(model)
    names = {s.name for s in specs}
    shapes = dict(verify.parse_input_shape(t) for t in args.input_shape)
    ranges = dict(verify.parse_input_range(t) for t in args.input_range)
    files = args.inputs if isinstance(args.inputs, list) else [args.inputs] if args.inputs else []
    if files:
        return [verify.make_feeds(specs, shapes=shapes, ranges=ranges, seed=args.seed,
                                  data={k: v for k, v in verify.load_inputs(f).items() if k in names}) for f in files]
    count = getattr(args, "input_sets", 1)
    if count < 1:
        raise UsageError("--input-sets must be at least 1")
    return [verify.make_feeds(specs, shapes=shapes, ranges=ranges, seed=args.seed + k) for k in range(count)]


def _budget(args: argparse.Namespace) -> int:
    from graphfix.bisect import parse_size

    return parse_size(args.budget)


def _tolerance(args: argparse.Namespace, default: Any) -> Any:
    from graphfix.verify import Tolerance

    return Tolerance(default.atol if args.atol is None else args.atol, default.rtol if args.rtol is None else args.rtol)


def _running(label: str, action: Callable[[], Any]) -> Any:
    """Run `action`; a node onnxruntime cannot run becomes a one-line input error."""
    from graphfix.execute import NotRunnable

    try:
        return action()
    except NotRunnable as error:
        raise InputError(f"cannot run {label}: {error}") from None


def _check_json_path(args: argparse.Namespace) -> None:
    """Refuse an unwritable --json before the (long) run rather than after it."""
    if args.json not in (None, "-") and not Path(args.json).parent.is_dir():
        raise UsageError(f"--json {args.json}: its folder does not exist")


def _emit(report: Any, args: argparse.Namespace, render: Callable[[Any, Any], None]) -> None:
    """The table on stdout, and the JSON where --json says ('-': JSON instead of the table)."""
    from graphfix.report import to_json

    if args.json == "-":
        print(to_json(report))
        return
    render(report, _console())
    if args.json:
        from graphfix.ir import write_text

        write_text(Path(args.json), to_json(report))


def _size(count: float) -> str:
    units = ("B", "KiB", "MiB", "GiB")
    power = 0
    while count >= 1024 and power < len(units) - 1:
        count, power = count / 1024, power + 1
    return f"{count:.0f} B" if power == 0 else f"{count:.1f} {units[power]}"


def _error(comparison: Any) -> str:
    if comparison.reason and comparison.max_abs == float("inf"):
        return comparison.reason
    return f"{comparison.max_abs:.3g}" + ("" if comparison.ok else " (fails)")


# ----------------------------------------------------------------------------- fp16-guard


def _configure_fp16_guard(parser: argparse.ArgumentParser) -> None:
    from graphfix.fp16 import DEFAULT_MARGIN, DEFAULT_MAX_STEPS, FP16_TOLERANCE

    parser.add_argument("model", help="the FP32 ONNX model")
    _add_input_options(parser, several=True)
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help=f"flag |x| above 65504 x MARGIN (default {DEFAULT_MARGIN})")
    parser.add_argument("--atol", type=float, default=None, help=f"absolute tolerance of the mixed model's outputs (default {FP16_TOLERANCE.atol:g})")
    parser.add_argument("--rtol", type=float, default=None, help=f"tolerance relative to each output's largest magnitude (default {FP16_TOLERANCE.rtol:g})")
    parser.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS, help=f"most nodes-to-FP32 growth steps (default {DEFAULT_MAX_STEPS})")
    parser.add_argument("--write-mixed", metavar="OUT", help="write the FP16 model with the FP32 set kept in FP32 (strongly typed builds: TensorRT 10.x --stronglyTyped, 11.x)")
    parser.add_argument("--target", metavar="TRT", help="TensorRT release of the weakly typed flags (default: the installed tensorrt, else the newest 10.x)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the mixed model misses the tolerance (it is still written)")
    parser.set_defaults(handler=_run_fp16_guard)


def _run_fp16_guard(args: argparse.Namespace) -> int:
    from graphfix import fp16

    if not 0 < args.margin <= 1:
        raise UsageError(f"--margin must be in (0, 1], not {args.margin}")
    _check_json_path(args)
    if args.write_mixed and Path(args.write_mixed).resolve() == Path(args.model).resolve():
        raise UsageError(f"refusing to overwrite the input {args.model}")
    model = _read(args.model)
    feed_sets = _feed_sets(model, args)
    guarded = _running(args.model, lambda: fp16.guard(
        model, feed_sets, margin=args.margin, tolerance=_tolerance(args, fp16.FP16_TOLERANCE), budget=_budget(args),
        target=_guard_target(args.target), model_path=args.model, max_steps=args.max_steps))
    report = guarded.report
    if args.write_mixed:
        from dataclasses import replace

        import onnx

        from graphfix.ir import write_model

        write_model(guarded.mixed, args.write_mixed, check=lambda staged: onnx.checker.check_model(str(staged), full_check=True))
        report = replace(report, written=args.write_mixed)
    _emit(report, args, _render_guard)
    if args.strict and not report.mixed_ok:
        raise VerificationError(f"--strict: the mixed model's outputs miss the tolerance "
                                f"({', '.join(c.tensor for c in report.mixed if not c.ok)})")
    return 0


def _guard_target(spec: str | None) -> Any:
    """The target of the flags: as given, else the installed tensorrt, else the newest release
    with per-layer precisions (a weakly typed 10.x)."""
    from graphfix import targets
    from graphfix.api import resolve_target

    chosen = resolve_target(spec)
    if spec is not None or chosen.family == "tensorrt":
        return chosen
    releases = [targets.resolve_target(t.name) for t in targets.list_targets()]
    return [t for t in releases if t.family == "tensorrt" and not t.strongly_typed_only][-1]


def _render_guard(report: Any, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    console.print(escape(f"graphfix fp16-guard {report.model} [{report.input_sets} input set(s), |x| > {report.threshold:g} "
                         f"= 65504 x {report.margin:g}]"))
    if report.flags:
        table = Table(title="nodes that break in FP16", title_justify="left")
        for column in ("node", "op", "why", "detail"):
            table.add_column(column, overflow="fold")
        by_node: dict[str, list[Any]] = {}
        for flag in report.flags:
            by_node.setdefault(flag.node, []).append(flag)
        for node, flags in by_node.items():
            table.add_row(escape(node), flags[0].op, ", ".join(dict.fromkeys(f.kind for f in flags)),
                          escape("; ".join(f.detail for f in flags)))
        console.print(table)
    else:
        console.print("no node overflows, underflows where it matters or loses precision alone in FP16")
    console.print(escape(f"FP32 set: {len(report.fp32_nodes)} of {report.convertible} FP16-capable nodes"
                         + (f": {', '.join(report.fp32_nodes)}" if report.fp32_nodes else "")))
    for step in report.search:
        console.print(escape(f"  {step}"))
    table = Table(title=f"outputs against FP32 (FP16 storage emulated; atol {report.atol:g} + rtol {report.rtol:g} x max|x|)",
                  title_justify="left")
    for column in ("output", "all FP16", "mixed", "mixed in onnxruntime*"):
        table.add_column(column, overflow="fold")
    naive = {c.tensor: c for c in report.naive}
    ort = {c.tensor: c for c in report.onnxruntime}
    for c in report.mixed:
        table.add_row(escape(c.tensor), *(escape(_error(x)) if x else "-" for x in (naive.get(c.tensor), c, ort.get(c.tensor))),
                      style="" if c.ok else "red")
    console.print(table)
    console.print("* onnxruntime's CPU provider runs many FP16 nodes in FP32: this column checks that the file runs")
    console.print("mixed model: " + ("within tolerance" if report.mixed_ok else "[red]NOT within tolerance[/]"))
    if report.written:
        console.print(escape(f"wrote {report.written} (for strongly typed builds: TensorRT 10.x --stronglyTyped, 11.x)"))
    if report.trtexec:
        console.print(escape(f"weakly typed build [target {report.target}]: {report.trtexec}"))
    for note in report.notes:
        console.print(f"[yellow]note[/]: {escape(note)}")
    console.print(f"capture held at most {_size(report.peak_bytes)} (budget {_size(report.budget)}); {report.seconds:.1f}s")


# ----------------------------------------------------------------------------- bisect


def _configure_bisect(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_a", metavar="A", help="the reference model")
    parser.add_argument("model_b", metavar="B", nargs="?", help="the model to compare with it (omit with --fp16)")
    parser.add_argument("--fp16", action="store_true", help="compare A with its FP16 form (every float32 tensor stored as float16, emulated)")
    _add_input_options(parser, several=False)
    parser.add_argument("--atol", type=float, default=None, help="absolute tolerance (default 1e-5; with --fp16 1e-3)")
    parser.add_argument("--rtol", type=float, default=None, help="relative tolerance (default 1e-4; with --fp16 1e-2 of each tensor's largest magnitude)")
    parser.add_argument("--show", type=int, default=5, metavar="N", help="divergences to list (default 5)")
    parser.set_defaults(handler=_run_bisect)


def _run_bisect(args: argparse.Namespace) -> int:
    from graphfix import bisect, fp16
    from graphfix.verify import Tolerance

    if args.fp16 == (args.model_b is not None):
        raise UsageError("give two models (A B) or one model and --fp16")
    _check_json_path(args)
    model_a = _read(args.model_a)
    [feeds] = _feed_sets(model_a, args)
    budget = _budget(args)
    if args.fp16:
        model_b = _running(args.model_a, lambda: fp16.emulated_fp16(model_a, feeds, budget=budget))
        labels = (args.model_a, f"{args.model_a} in FP16 (emulated)")
    else:
        model_b = _read(args.model_b)
        labels = (args.model_a, args.model_b)
    tolerance = _tolerance(args, fp16.FP16_TOLERANCE if args.fp16 else Tolerance())
    report = _running(" and ".join(labels), lambda: bisect.bisect(
        model_a, model_b, feeds, tolerance, budget=budget, scaled=args.fp16, labels=labels))
    _emit(report, args, lambda r, console: _render_bisect(r, console, args.show))
    return 0


def _render_bisect(report: Any, console: Any, show: int) -> None:
    from rich.markup import escape

    console.print(escape(f"graphfix bisect {report.model_a} vs {report.model_b} [atol {report.atol:g}, rtol {report.rtol:g}]"))
    console.print(f"paired {report.paired_by_name} tensors by name and {report.paired_by_structure} by structure; "
                  f"unpaired {report.unpaired_a} in A, {report.unpaired_b} in B; compared {report.compared}, "
                  f"{report.differing} differ" + ("" if report.complete else " (stopped early)"))
    if not report.divergences:
        console.print("no tensor differs beyond tolerance")
    for rank, divergence in enumerate(report.divergences[:show]):
        title = "first divergence" if rank == 0 else f"divergence {rank + 1} (independent of the earlier ones)"
        console.print(_path_table(divergence, title))
    if len(report.divergences) > show:
        console.print(f"... and {len(report.divergences) - show} more independent divergence(s) (--show N)")
    console.print(_outputs_table(report.outputs))
    console.print(f"{report.windows} capture window(s), held at most {_size(report.peak_bytes)} "
                  f"(budget {_size(report.budget)}); {report.seconds:.1f}s")


def _path_table(divergence: Any, title: str) -> Any:
    from rich.markup import escape
    from rich.table import Table

    d = divergence.diff
    heading = f"{title}: {d.tensor_a}" + (f" (in B: {d.tensor_b}, {d.node_b} {d.op_b})" if d.tensor_b != d.tensor_a else "")
    table = Table(title=escape(heading), title_justify="left")
    for column, justify in (("tensor (path from the inputs)", "left"), ("node", "left"), ("op", "left"), ("shape", "left"),
                            ("max abs err", "right"), ("max rel err", "right"), ("paired by", "left")):
        table.add_column(column, justify=justify, overflow="fold")
    path = divergence.path
    if len(path) > _PATH_ROWS:
        shown = _PATH_ROWS // 2
        path = [*path[:shown], None, *path[-shown:]]
    for step in path:
        if step is None:
            table.add_row(f"... {len(divergence.path) - 2 * (_PATH_ROWS // 2)} more", "", "", "", "", "", "")
            continue
        table.add_row(escape(step.tensor_a), escape(step.node_a or "(input)"), step.op_a, "x".join(map(str, step.shape)),
                      f"{step.max_abs:.3g}", f"{step.max_rel:.3g}", step.paired_by, style="" if step.ok else "red")
    return table


def _outputs_table(outputs: Sequence[Any]) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="outputs", title_justify="left")
    for column in ("output", "max abs err", "max rel err", "result"):
        table.add_column(column, overflow="fold")
    for o in outputs:
        table.add_row(escape(o.tensor_a), f"{o.max_abs:.3g}", f"{o.max_rel:.3g}", "ok" if o.ok else escape(f"differs: {o.reason}"),
                      style="" if o.ok else "red")
    return table


COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None]]] = [
    ("fp16-guard", "find the nodes that overflow or lose precision in FP16; write a mixed model and TensorRT precision flags", _configure_fp16_guard),
    ("bisect", "find the first tensor where two models (or a model and its FP16 form) part ways", _configure_bisect),
]
