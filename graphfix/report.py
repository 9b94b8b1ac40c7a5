"""Results of `graphfix apply` as frozen data, rendered as a table or JSON.

Imports nothing from graphfix, so any module may build these records.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "Comparison",
    "RewriteEntry",
    "PassReport",
    "VerificationSummary",
    "ApplyReport",
    "STATUS_VERIFIED",
    "STATUS_ROLLED_BACK",
    "STATUS_UNVERIFIED",
    "STATUS_UNCHANGED",
    "STATUS_NOT_VERIFIED",
    "STATUS_DRY_RUN",
    "render_apply",
    "to_json",
]

STATUS_VERIFIED = "verified"
STATUS_ROLLED_BACK = "rolled back"
STATUS_UNVERIFIED = "unverified"
STATUS_UNCHANGED = "unchanged"
STATUS_NOT_VERIFIED = "not verified"
STATUS_DRY_RUN = "dry run"


@dataclass(frozen=True)
class Comparison:
    """One tensor compared with its reference; max errors say what tolerance would have passed."""

    tensor: str
    ok: bool
    max_abs: float = 0.0
    max_rel: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class RewriteEntry:
    """One rewrite: the rule, the matched root and nodes, the nodes it added."""

    rule: str
    root: str
    root_op: str
    matched: tuple[str, ...]
    added: tuple[str, ...]
    added_ops: tuple[str, ...]


@dataclass(frozen=True)
class PassReport:
    """What one pass did and how its verification went."""

    name: str
    rules: tuple[str, ...]
    matches: int
    nodes_removed: int
    nodes_added: int
    seconds: float
    status: str
    detail: str = ""
    max_abs: float = 0.0
    max_rel: float = 0.0
    rewrites: tuple[RewriteEntry, ...] = ()
    near_misses: tuple[tuple[str, str, str], ...] = ()  # (rule, node, reason)
    converged: bool = True
    still_firing: tuple[str, ...] = ()
    stage_seconds: dict[str, float] = field(default_factory=dict)  # match / rewrite / tidy


@dataclass(frozen=True)
class VerificationSummary:
    enabled: bool
    mode: str = "incremental"
    full_runs: int = 0
    region_checks: int = 0
    regions_in_final_run: int = 0
    reference_state: str = "input model"
    final: tuple[Comparison, ...] = ()
    note: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class ApplyReport:
    """The whole run: passes in order, verification, provenance of new nodes, what remains."""

    input: str
    output: str | None
    target: str
    passes: tuple[PassReport, ...]
    verification: VerificationSummary
    nodes_before: int
    nodes_after: int
    seconds: float
    provenance: dict[str, str] = field(default_factory=dict)  # new node -> rule
    remaining: tuple[dict[str, Any], ...] = ()  # findings of `check` on the result
    stages: dict[str, float] = field(default_factory=dict)  # load/apply/save seconds
    warnings: tuple[str, ...] = ()

    @property
    def rolled_back(self) -> tuple[PassReport, ...]:
        return tuple(p for p in self.passes if p.status == STATUS_ROLLED_BACK)

    @property
    def unverified(self) -> tuple[PassReport, ...]:
        return tuple(p for p in self.passes if p.status == STATUS_UNVERIFIED)


def to_json(report: Any) -> str:
    """JSON of any report dataclass (stable key order); infinite and NaN errors become the
    strings "inf", "-inf" and "nan", since JSON has no such numbers."""
    return json.dumps(_finite(asdict(report)), indent=2, sort_keys=True, default=str, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _error(p: PassReport) -> str:
    if p.status in (STATUS_UNCHANGED, STATUS_NOT_VERIFIED, STATUS_DRY_RUN) or (not p.max_abs and not p.max_rel):
        return "-"
    return f"{p.max_abs:.2e} / {p.max_rel:.2e}"


_TABLE_DETAIL = 48


def _short(detail: str) -> str:
    """Details longer than a table cell are printed whole below the table."""
    return detail if len(detail) <= _TABLE_DETAIL else detail[: _TABLE_DETAIL - 3] + "..."


def render_apply(report: ApplyReport, console: Any = None) -> None:
    """Print the pass table, verification and failures with rich (to `console` or stdout)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console(highlight=False)
    table = Table(title=escape(f"graphfix apply [target {report.target}]"), title_justify="left")
    for column, justify in (
        ("pass", "left"),
        ("matches", "right"),
        ("nodes -/+", "right"),
        ("max abs / rel err", "right"),
        ("time", "right"),
        ("result", "left"),
    ):
        table.add_column(column, justify=justify)
    for p in report.passes:
        if p.status == STATUS_UNCHANGED and not p.matches:
            continue
        style = {STATUS_ROLLED_BACK: "red", STATUS_UNVERIFIED: "yellow"}.get(p.status, "")
        table.add_row(
            escape(p.name),
            str(p.matches),
            f"-{p.nodes_removed}/+{p.nodes_added}",
            _error(p),
            f"{p.seconds:.2f}s",
            escape(p.status + (f": {_short(p.detail)}" if p.detail else "")),
            style=style,
        )
    console.print(table)
    for p in report.passes:
        if p.status in (STATUS_ROLLED_BACK, STATUS_UNVERIFIED) and len(p.detail) > _TABLE_DETAIL:
            console.print(f"{escape(p.name)} {p.status}: {escape(p.detail)}", style="red" if p.status == STATUS_ROLLED_BACK else "yellow")
    quiet = [p.name for p in report.passes if p.status == STATUS_UNCHANGED and not p.matches]
    if quiet:
        console.print(f"no match: {', '.join(quiet)}")
    _render_verification(report.verification, console)
    console.print(
        f"nodes {report.nodes_before} -> {report.nodes_after}, {report.seconds:.2f}s"
        + (f", wrote {report.output}" if report.output else "")
    )
    for warning in report.warnings:
        console.print(f"[yellow]warning[/]: {escape(warning)}")
    for (op_type, kind, fix), findings in _grouped(report.remaining).items():
        first = findings[0]
        more = f" (and {len(findings) - 1} more {op_type})" if len(findings) > 1 else ""
        where = str(first.get("node")) if first.get("node") == op_type else f"{first.get('node')} ({op_type})"
        console.print(f"[yellow]remains[/] {kind}: " + escape(f"{where}: {first.get('reason')}{more} [{fix}]"))


def _grouped(findings: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for finding in findings:
        key = (str(finding.get("op_type")), str(finding.get("kind")), str(finding.get("rule") or "no rule"))
        groups.setdefault(key, []).append(finding)
    return groups


def _render_verification(summary: VerificationSummary, console: Any) -> None:
    if not summary.enabled:
        console.print("verification: off (--no-verify)")
        return
    failed = [c for c in summary.final if not c.ok]
    worst = max((c.max_abs for c in summary.final), default=0.0)
    console.print(
        f"verification: {summary.mode}, {summary.full_runs} full onnxruntime run(s), "
        + (f"{summary.regions_in_final_run} rewritten region(s) compared inside the final run, "
           if summary.regions_in_final_run else f"{summary.region_checks} region check(s), ")
        + f"reference = {summary.reference_state}; "
        + ("final outputs match" if summary.final and not failed else "")
        + (f"final outputs differ: {', '.join(c.tensor for c in failed)}" if failed else "")
        + (f" (max abs err {worst:.2e})" if summary.final else "")
    )
    if summary.note:
        console.print(summary.note, markup=False)


def summarize_failures(passes: Sequence[PassReport]) -> list[str]:
    """One line per rolled-back or unverified pass, for logs and exceptions."""
    return [f"{p.name}: {p.status}: {p.detail}" for p in passes if p.status in (STATUS_ROLLED_BACK, STATUS_UNVERIFIED)]
